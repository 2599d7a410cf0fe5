"""Figures for the experiments: decision surfaces with counterfactual paths, robust-accuracy curves (with
their spread over seeds), image counterfactual grids, integrated-gradient maps and training curves.

Every function writes one PNG to `path` (creating parent folders), closes its figure and returns `path`.
"""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from ctrain.search import sample_targets, search_counterfactuals_jit  # noqa: E402
from ctrain.storage import save_figure  # noqa: E402



def _save(fig, path):
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    save_figure(fig, path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _panel_constraints(constraints, models, dataset):
    # One Constraints for every panel, or a mapping name -> Constraints (e.g. a feature immutable in some panels).
    if constraints is None:
        return {name: dataset.constraints() for name in models}
    if isinstance(constraints, dict):
        missing = [name for name in models if name not in constraints]
        if missing:
            raise ValueError(f"constraints is a mapping but has no entry for the panel(s) {missing}")
        return constraints
    return {name: constraints for name in models}


def _factuals(key, x_test, y_test, n_factuals, target_class):
    pool = np.arange(len(x_test)) if target_class is None else np.flatnonzero(y_test != target_class)
    if len(pool) == 0:
        raise ValueError(f"no test point has a label other than target_class={target_class}")
    idx = jax.random.choice(key, len(pool), (min(n_factuals, len(pool)),), replace=False)
    return jnp.asarray(x_test[pool[np.asarray(idx)]])


def plot_decision_surfaces(path, dataset, models, *, key, search_config, constraints=None, n_factuals=12,
                           grid_size=200, ncols=None, boundary=False, target_class=None, show="test"):
    """Returns `path` after saving one decision-surface panel per model with the same factuals' counterfactual paths.

    `models` is an ordered dict panel name -> (apply_fn, params) (a model may appear in several panels);
    `constraints` is one `Constraints` for all panels or a dict panel name -> Constraints, and defaults to
    `dataset.constraints()`. `ncols` panels per row (default: all in one row); `boundary` draws the p = 0.5
    decision boundary in green (binary data); `target_class` draws every factual from the other classes and
    searches towards it (default: a random class ≠ the predicted one); `show` is the split drawn as points.
    """
    if dataset.num_features != 2:
        raise ValueError(f"plot_decision_surfaces needs a 2-D dataset, {dataset.name!r} has "
                         f"{dataset.num_features} features")
    if not models:
        raise ValueError("models is empty: pass at least one name -> (apply_fn, params)")
    if show not in ("train", "test"):
        raise ValueError(f"show must be 'train' or 'test', got {show!r}")
    panel_constraints = _panel_constraints(constraints, models, dataset)
    k = dataset.num_classes
    x_test, y_test = np.asarray(dataset.x_test, np.float32), np.asarray(dataset.y_test)
    x_show, y_show = (x_test, y_test) if show == "test" else (np.asarray(dataset.x_train), np.asarray(dataset.y_train))
    f_key, t_key, s_key = jax.random.split(key, 3)
    x_f = _factuals(f_key, x_test, y_test, n_factuals, target_class)

    runs = {}
    for name, (apply_fn, params) in models.items():
        if target_class is None:
            target = sample_targets(t_key, apply_fn(params, x_f).argmax(-1), k)
        else:
            target = jnp.full((x_f.shape[0],), target_class, jnp.int32)
        res, path_cf = search_counterfactuals_jit(apply_fn, params, x_f, target, s_key, search_config,
                                                  panel_constraints[name], return_path=True)
        runs[name] = (np.asarray(path_cf), np.asarray(res.converged))

    shown = np.concatenate([np.asarray(dataset.x_train), x_test] + [p.reshape(-1, 2) for p, _ in runs.values()])
    lo, hi = shown.min(0), shown.max(0)
    lo, hi = lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo)
    g0, g1 = np.meshgrid(np.linspace(lo[0], hi[0], grid_size), np.linspace(lo[1], hi[1], grid_size))
    grid = jnp.asarray(np.stack([g0.ravel(), g1.ravel()], -1), jnp.float32)
    cmap = plt.get_cmap("RdBu_r") if k == 2 else plt.get_cmap("tab10" if k <= 10 else "turbo").resampled(k)
    levels = np.linspace(0, 1, 11) if k == 2 else np.arange(k + 1) - 0.5
    point_colors = cmap(y_show / (k - 1) if k == 2 else y_show)

    ncols = len(models) if ncols is None else max(1, min(int(ncols), len(models)))
    nrows = -(-len(models) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols + 0.8, 4.2 * nrows), sharex=True, sharey=True,
                             squeeze=False)
    for ax in axes.ravel()[len(models):]:
        ax.set_visible(False)
    if nrows > 1:
        fig.subplots_adjust(hspace=0.35)  # room for the two-line titles under the row above
    for ax, (name, (apply_fn, params)) in zip(axes.ravel(), models.items()):
        probs = np.asarray(jax.nn.softmax(apply_fn(params, grid), -1))
        surface = probs[:, 1] if k == 2 else probs.argmax(-1)
        contour = ax.contourf(g0, g1, surface.reshape(g0.shape), levels=levels, cmap=cmap, alpha=0.55,
                              vmin=levels[0], vmax=levels[-1])
        if boundary and k == 2:
            ax.contour(g0, g1, surface.reshape(g0.shape), levels=[0.5], colors="green", linewidths=2.0)
        ax.scatter(x_show[:, 0], x_show[:, 1], s=12, c=point_colors, alpha=0.6, edgecolors="w", linewidths=0.4)
        path_cf, converged = runs[name]
        for i in range(path_cf.shape[1]):
            ax.plot(path_cf[:, i, 0], path_cf[:, i, 1], "-", color="k", lw=1.1, alpha=0.8)
        ax.scatter(path_cf[0, :, 0], path_cf[0, :, 1], s=22, marker="o", color="k", zorder=3)
        end = path_cf[-1]
        ax.scatter(end[converged, 0], end[converged, 1], s=70, marker="*", color="gold", edgecolors="k",
                   linewidths=0.8, zorder=4)
        ax.scatter(end[~converged, 0], end[~converged, 1], s=70, marker="*", facecolors="none", edgecolors="k",
                   linewidths=0.8, zorder=4)
        ax.set_title(f"{name}\n{converged.mean():.0%} of {len(converged)} counterfactuals converged", fontsize=10)
        ax.set_xlabel(dataset.schema.names[0])
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
    for row in axes:
        row[0].set_ylabel(dataset.schema.names[1])
    handles = [Line2D([], [], color="k", marker="o", ls="-", ms=4, label="factual → path"),
               Line2D([], [], color="gold", marker="*", mec="k", ls="", ms=10, label="counterfactual (converged)"),
               Line2D([], [], color="none", marker="*", mec="k", ls="", ms=10, label="counterfactual (not converged)")]
    if boundary and k == 2:
        handles.append(Line2D([], [], color="green", lw=2, label="decision boundary (p = 0.5)"))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(handles), fontsize=8,
               frameon=False)
    bar = fig.colorbar(contour, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02)
    bar.set_label("p(class 1 | x)" if k == 2 else "predicted class")
    if k > 2:
        bar.set_ticks(np.arange(k))
    return _save(fig, path)


def plot_robust_accuracy(path, curves, *, title):
    """Returns `path` after saving accuracy-vs-ε curves, one subplot per attack and one line per model.

    `curves[model][attack]` is {"epsilon", "accuracy"} for one model, or {"epsilon", "mean", "min", "max"}
    (`experiments.pipeline.robust_spread`) for several seeds: the mean is drawn with the min–max band shaded.
    """
    attacks = [a for a in ("fgsm", "pgd") if any(a in c for c in curves.values())]
    if not attacks:
        raise ValueError("curves holds neither 'fgsm' nor 'pgd' results")
    fig, axes = plt.subplots(1, len(attacks), figsize=(4.6 * len(attacks), 3.8), sharey=True, squeeze=False)
    for ax, attack in zip(axes[0], attacks):
        for name, by_attack in curves.items():
            if attack not in by_attack:
                continue
            c = by_attack[attack]
            if "mean" in c:
                line, = ax.plot(c["epsilon"], c["mean"], "o-", ms=4, label=name)
                ax.fill_between(c["epsilon"], c["min"], c["max"], color=line.get_color(), alpha=0.2, lw=0)
            elif "accuracy" in c:
                ax.plot(c["epsilon"], c["accuracy"], "o-", ms=4, label=name)
            else:
                raise ValueError(f"curves[{name!r}][{attack!r}] holds neither 'accuracy' nor 'mean'/'min'/'max'")
        ax.set_title(attack.upper())
        ax.set_xlabel("ε")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0, 0].set_ylabel("accuracy")
    fig.suptitle(title)
    return _save(fig, path)


def plot_ig_maps(path, maps, *, image_shape, protected_mask=None, class_names=None, title=""):
    """Returns `path` after saving integrated-gradient maps in [0, 1]: one row per model, one column per class.

    `maps[model]` is a (K, H·W) array; `protected_mask` (H·W,) bool outlines the protected pixels.
    """
    rows = {name: np.asarray(m) for name, m in maps.items()}
    if not rows:
        raise ValueError("maps is empty: pass at least one model -> (K, H*W) map")
    width = int(np.prod(image_shape))
    k = next(iter(rows.values())).shape[0]
    for name, m in rows.items():
        if m.shape != (k, width):
            raise ValueError(f"{name}: expected maps of shape ({k}, {width}) for images of shape "
                             f"{tuple(image_shape)}, got {m.shape}")
    fig, axes = plt.subplots(len(rows), k, figsize=(1.3 * k + 0.8, 1.4 * len(rows) + 0.4), squeeze=False)
    image = None
    for r, (name, m) in enumerate(rows.items()):
        for c in range(k):
            ax = axes[r, c]
            image = ax.imshow(m[c].reshape(image_shape), cmap="inferno", vmin=0, vmax=1)
            if protected_mask is not None:
                ax.contour(np.asarray(protected_mask, bool).reshape(image_shape).astype(float), levels=[0.5],
                           colors="cyan", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(str(class_names[c]) if class_names is not None else f"class {c}", fontsize=8)
        axes[r, 0].set_ylabel(name, fontsize=9)
    fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01, label="min–max normalised IG")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_counterfactual_grid(path, x_factual, counterfactuals, *, image_shape, targets=None, factual_labels=None):
    """Returns `path` after saving a grid of images in [-1, 1]: factuals on top, one row per counterfactual set."""
    x_factual = np.asarray(x_factual)
    n = x_factual.shape[0]
    rows = {"factual": x_factual, **{name: np.asarray(a) for name, a in counterfactuals.items()}}
    for name, a in rows.items():
        if a.shape != (n, int(np.prod(image_shape))):
            raise ValueError(f"{name}: expected shape ({n}, {int(np.prod(image_shape))}) for images of shape "
                             f"{tuple(image_shape)}, got {a.shape}")
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n + 0.6, 1.4 * len(rows)), squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(images[c].reshape(image_shape), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(name, fontsize=9)
    for c in range(n):
        parts = ([f"y={factual_labels[c]}"] if factual_labels is not None else []) + \
                ([f"t={targets[c]}"] if targets is not None else [])
        if parts:
            axes[0, c].set_title(" → ".join(parts), fontsize=8)
    return _save(fig, path)


def plot_training_curves(path, histories, *, keys=("loss", "test_accuracy")):
    """Returns `path` after saving per-epoch curves, one subplot per key present and one line per run."""
    keys = [k for k in keys if any(k in log for h in histories.values() for log in h)]
    if not keys:
        raise ValueError("none of the requested keys appear in the histories")
    fig, axes = plt.subplots(1, len(keys), figsize=(4.4 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, history in histories.items():
            points = [(log.get("epoch", i + 1), log[key]) for i, log in enumerate(history) if key in log]
            if points:
                ax.plot(*zip(*points), "o-" if len(points) <= 25 else "-", ms=3, label=name)
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_ablation(path, rows, *, models=("CD", "AR", "CT"), metrics=(("ip", "IP"), ("ip_star", "IP*"))):
    """Returns path after saving the paper's Figure 5: per dataset, each model's reduction vs BL in % with its
    interval over seeds. `rows` are (label, {model: {metric: seed_interval dict}}) pairs, or triples with the
    paper's values {model: {metric: reduction}} third, drawn as red diamonds."""
    rows = list(rows)
    if not rows:
        raise ValueError("plot_ablation needs at least one dataset row with CD, AR and CT comparisons")
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 0.55 * len(rows) * len(models) + 1.5),
                             squeeze=False)
    colors = dict(zip(models, ("tab:orange", "tab:green", "tab:blue")))
    height = 0.8 / len(models)
    for ax, (metric, name) in zip(axes[0], metrics):
        for j, model in enumerate(models):
            ys, means, lows, highs = [], [], [], []
            paper_y, paper_x = [], []
            for i, (_, stats, *paper) in enumerate(rows):
                value = (paper[0] if paper else {}).get(model, {}).get(metric)
                if value is not None:
                    paper_y.append(i + (j - (len(models) - 1) / 2) * height)
                    paper_x.append(value)
                stat = stats.get(model, {}).get(metric) or {}
                if stat.get("mean") is None:
                    continue
                ys.append(i + (j - (len(models) - 1) / 2) * height)
                means.append(stat["mean"])
                low, high = stat.get("low"), stat.get("high")
                lows.append(stat["mean"] - low if low is not None else 0.0)
                highs.append(high - stat["mean"] if high is not None else 0.0)
            ax.barh(ys, means, height=height, color=colors.get(model), label=model,
                    xerr=np.array([lows, highs]) if ys else None, capsize=2)
            ax.scatter(paper_x, paper_y, marker="D", s=22, color="crimson", zorder=3,
                       label="paper" if j == 0 and paper_x else None)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(range(len(rows)), [row[0] for row in rows])
        ax.invert_yaxis()
        ax.set_xlabel(f"{name} reduction vs BL (%), mean over seeds, 99% interval")
        ax.set_title(f"{name}: CD, AR and CT against BL")
    axes[0][0].legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_cost_trade_off(path, rows, *, metrics=(("ip", "IP"), ("ip_star", "IP*"))):
    """Returns path after saving CT's cost against its gains: per dataset (row) and metric (column), each training
    variant's reduction vs BL (mean over seeds, 99% interval) against the wall time of its training run over BL's
    (compilation included: what a researcher waits for, and what a burn-in saves); a dashed line marks 2×.
    `rows` are `experiments.benchmarks.ct_cost` rows: dataset, variant, wall_s, bl_wall_s and {metric: interval}."""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    if not datasets:
        raise ValueError("plot_cost_trade_off needs at least one ct_cost row")
    fig, axes = plt.subplots(len(datasets), len(metrics), figsize=(4.5 * len(metrics), 3.2 * len(datasets)),
                             squeeze=False)
    for axrow, dataset in zip(axes, datasets):
        mine = [r for r in rows if r["dataset"] == dataset]
        for ax, (metric, name) in zip(axrow, metrics):
            for r in mine:
                stat = r.get(metric) or {}
                if stat.get("mean") is None:
                    continue
                low, high = stat.get("low"), stat.get("high")
                err = None if low is None or high is None else [[stat["mean"] - low], [high - stat["mean"]]]
                ratio = r["wall_s"] / r["bl_wall_s"]
                ax.errorbar([ratio], [stat["mean"]], yerr=err, fmt="o", capsize=3)
                ax.annotate(r["variant"], (ratio, stat["mean"]), textcoords="offset points",
                            xytext=(5, 3), fontsize=8)
            ax.axhline(0, color="k", lw=0.8)
            ax.axvline(2, color="grey", ls="--", lw=0.8)  # issue 26's target: CT at most twice BL's time
            ax.set_xlim(left=0)
            ax.set_xlabel("CT/BL training wall time")
            ax.set_ylabel(f"{name} reduction vs BL (%)")
            ax.set_title(f"{dataset}: {name}")
    fig.tight_layout()
    return _save(fig, path)
