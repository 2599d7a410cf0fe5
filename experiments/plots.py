"""Figures for the experiments: decision surfaces with counterfactual paths, robust-accuracy curves,
image counterfactual grids and training curves.

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



def _save(fig, path):
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_decision_surfaces(path, dataset, models, *, key, search_config, constraints=None, n_factuals=12,
                           grid_size=200):
    """Returns `path` after saving one decision-surface panel per model with the same factuals' counterfactual paths.

    `models` is an ordered dict name -> (apply_fn, params); `constraints` defaults to `dataset.constraints()`.
    """
    if dataset.num_features != 2:
        raise ValueError(f"plot_decision_surfaces needs a 2-D dataset, {dataset.name!r} has "
                         f"{dataset.num_features} features")
    if not models:
        raise ValueError("models is empty: pass at least one name -> (apply_fn, params)")
    constraints = dataset.constraints() if constraints is None else constraints
    k = dataset.num_classes
    x_test, y_test = np.asarray(dataset.x_test, np.float32), np.asarray(dataset.y_test)
    f_key, t_key, s_key = jax.random.split(key, 3)
    idx = jax.random.choice(f_key, len(x_test), (min(n_factuals, len(x_test)),), replace=False)
    x_f = jnp.asarray(x_test[np.asarray(idx)])

    runs = {}
    for name, (apply_fn, params) in models.items():
        target = sample_targets(t_key, apply_fn(params, x_f).argmax(-1), k)
        res, path_cf = search_counterfactuals_jit(apply_fn, params, x_f, target, s_key, search_config, constraints,
                                        return_path=True)
        runs[name] = (np.asarray(path_cf), np.asarray(res.converged))

    shown = np.concatenate([np.asarray(dataset.x_train), x_test] + [p.reshape(-1, 2) for p, _ in runs.values()])
    lo, hi = shown.min(0), shown.max(0)
    lo, hi = lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo)
    g0, g1 = np.meshgrid(np.linspace(lo[0], hi[0], grid_size), np.linspace(lo[1], hi[1], grid_size))
    grid = jnp.asarray(np.stack([g0.ravel(), g1.ravel()], -1), jnp.float32)
    cmap = plt.get_cmap("RdBu_r") if k == 2 else plt.get_cmap("tab10" if k <= 10 else "turbo").resampled(k)
    levels = np.linspace(0, 1, 11) if k == 2 else np.arange(k + 1) - 0.5
    point_colors = cmap(y_test / (k - 1) if k == 2 else y_test)

    fig, axes = plt.subplots(1, len(models), figsize=(4.4 * len(models) + 0.8, 4.2), sharex=True, sharey=True,
                             squeeze=False)
    for ax, (name, (apply_fn, params)) in zip(axes[0], models.items()):
        probs = np.asarray(jax.nn.softmax(apply_fn(params, grid), -1))
        surface = probs[:, 1] if k == 2 else probs.argmax(-1)
        contour = ax.contourf(g0, g1, surface.reshape(g0.shape), levels=levels, cmap=cmap, alpha=0.55,
                              vmin=levels[0], vmax=levels[-1])
        ax.scatter(x_test[:, 0], x_test[:, 1], s=12, c=point_colors, alpha=0.6, edgecolors="w", linewidths=0.4)
        path_cf, converged = runs[name]
        for i in range(path_cf.shape[1]):
            ax.plot(path_cf[:, i, 0], path_cf[:, i, 1], "-", color="k", lw=1.1, alpha=0.8)
        ax.scatter(path_cf[0, :, 0], path_cf[0, :, 1], s=22, marker="o", color="k", zorder=3)
        end = path_cf[-1]
        ax.scatter(end[converged, 0], end[converged, 1], s=70, marker="*", color="gold", edgecolors="k",
                   linewidths=0.8, zorder=4)
        ax.scatter(end[~converged, 0], end[~converged, 1], s=70, marker="*", facecolors="none", edgecolors="k",
                   linewidths=0.8, zorder=4)
        ax.set_title(f"{name}: {converged.mean():.0%} of {len(converged)} counterfactuals converged", fontsize=10)
        ax.set_xlabel(dataset.schema.names[0])
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
    axes[0, 0].set_ylabel(dataset.schema.names[1])
    handles = [Line2D([], [], color="k", marker="o", ls="-", ms=4, label="factual → path"),
               Line2D([], [], color="gold", marker="*", mec="k", ls="", ms=10, label="counterfactual (converged)"),
               Line2D([], [], color="none", marker="*", mec="k", ls="", ms=10, label="counterfactual (not converged)")]
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=8, frameon=False)
    bar = fig.colorbar(contour, ax=axes[0].tolist(), fraction=0.03, pad=0.02)
    bar.set_label("p(class 1 | x)" if k == 2 else "predicted class")
    if k > 2:
        bar.set_ticks(np.arange(k))
    return _save(fig, path)


def plot_robust_accuracy(path, curves, *, title):
    """Returns `path` after saving accuracy-vs-ε curves, one subplot per attack and one line per model."""
    attacks = [a for a in ("fgsm", "pgd") if any(a in c for c in curves.values())]
    if not attacks:
        raise ValueError("curves holds neither 'fgsm' nor 'pgd' results")
    fig, axes = plt.subplots(1, len(attacks), figsize=(4.6 * len(attacks), 3.8), sharey=True, squeeze=False)
    for ax, attack in zip(axes[0], attacks):
        for name, by_attack in curves.items():
            if attack in by_attack:
                ax.plot(by_attack[attack]["epsilon"], by_attack[attack]["accuracy"], "o-", ms=4, label=name)
        ax.set_title(attack.upper())
        ax.set_xlabel("ε")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0, 0].set_ylabel("accuracy")
    fig.suptitle(title)
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
