"""One dataset's reproduction: train BL and CT (and optionally CD, AR) for every seed, evaluate, write files.

`train_and_evaluate(config, workdir)` is the library behind `python -m experiments.reproduce` and
the grid driver. It writes, under `workdir`: config.json, histories.json, per-seed protocol records
(rounds.csv, summary.csv), robustness.json, plots, and returns a `results` dict with the comparison
rows the tables are made of.
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from ctrain.data import Dataset, load_dataset
from ctrain.evaluate import ProtocolConfig, compare, evaluate_explainability, evaluate_model, write_records
from ctrain.models import make_model
from ctrain.search import SearchConfig
from ctrain.train import TrainConfig, create_train_states, fit_many
from experiments.configs import ExperimentConfig

LABELS = {"vanilla": "BL", "full": "CT", "energy": "CD", "adversarial": "AR"}


def free_schema(data: Dataset) -> Dataset:
    """Returns the dataset with every feature mutable (bounds kept): the plausibility experiment's setting."""
    return data.with_mutability(**{name: "free" for name in data.schema.names})


def protected_names(config: ExperimentConfig, data: Dataset) -> tuple[str, ...]:
    """Returns the features protected in the actionability experiment (the loader's immutables if none are set)."""
    if config.protected:
        return config.protected
    return tuple(f.name for f in data.schema.features if f.mutability == "immutable")


def train_config(config: ExperimentConfig, objective: str, *, mutability: bool = False) -> TrainConfig:
    """Returns the TrainConfig of one objective (the mutability runs may drop λ_adv / λ_reg, reference §3.3)."""
    lambda_adv = config.mutability_lambda_adv if mutability and config.mutability_lambda_adv is not None \
        else config.lambda_adv
    lambda_reg = config.mutability_lambda_reg if mutability and config.mutability_lambda_reg is not None \
        else config.lambda_reg
    search = SearchConfig(generator=config.generator, max_steps=config.max_steps, step_size=config.step_size,
                          threshold=config.tau, epsilon=config.epsilon, lambda_cost=config.lambda_cost,
                          lambda_energy=config.lambda_energy)
    return TrainConfig(objective=objective, search=search, lambda_clf=config.lambda_clf, lambda_div=config.lambda_div,
                       lambda_reg=lambda_reg, lambda_adv=lambda_adv, n_ce=config.n_ce, schedule=config.schedule,
                       burnin=config.burnin, epochs=config.epochs, batch_size=config.batch_size,
                       learning_rate=config.learning_rate, shuffle=config.shuffle)


def train_seeds(config: ExperimentConfig, data: Dataset, objective: str, *, mutability: bool = False,
                progress: bool = True) -> tuple[list[tuple], list[list[dict]], float]:
    """Returns ([(apply_fn, params)] per seed, histories, wall seconds): all seeds trained as one vmapped program."""
    tc = train_config(config, objective, mutability=mutability)
    extra = {"image_shape": data.image_shape} if config.model == "lenet5" and data.image_shape else {}
    apply_fn, _ = make_model(config.model, data.num_features, data.num_classes, jax.random.key(0), **extra)
    inits = [make_model(config.model, data.num_features, data.num_classes, jax.random.key(s), **extra)[1]
             for s in config.seeds]
    states = create_train_states(apply_fn, jax.tree.map(lambda *a: jnp.stack(a), *inits),
                                 learning_rate=config.learning_rate, weights=tc.loss_weights())
    t0 = time.perf_counter()
    states, histories = fit_many(states, data, tc, seeds=config.seeds, constraints=data.constraints(),
                                 progress=progress)
    jax.block_until_ready(states.params)
    wall = time.perf_counter() - t0
    models = [(apply_fn, jax.tree.map(lambda a, i=i: a[i], states.params)) for i in range(len(config.seeds))]
    return models, histories, wall


def protocol_config(config: ExperimentConfig, *, threshold: float, seed: int) -> ProtocolConfig:
    """Returns the test-time protocol settings of the config, with the given τ and seed."""
    return ProtocolConfig(n_rounds=config.eval_rounds, n_individuals=config.eval_individuals,
                          lambda_energy=config.eval_lambda_energy, max_steps=config.eval_max_steps,
                          threshold=threshold, ip_samples=config.ip_samples, mmd_samples=config.mmd_samples,
                          mmd_length_scale=config.mmd_length_scale, seed=seed)


def _pool(summaries: list[list[dict]], n_rounds: int) -> list[dict]:
    # Rounds of different seeds are independent draws: renumber them so they pair only within a seed.
    return [{**row, "round": i * n_rounds + row["round"]} for i, rows in enumerate(summaries) for row in rows]


def train_and_evaluate(config: ExperimentConfig, workdir: str, *, ablation: bool = False, progress: bool = True,
                       plots: bool = True) -> dict:
    """Returns the results dict of one dataset (comparisons, accuracies, timings) and writes its files."""
    os.makedirs(workdir, exist_ok=True)
    t_start = time.perf_counter()
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(config.to_dict(), f, indent=1)
    loaded = load_dataset(config.dataset, **dict(config.dataset_kwargs))
    data = free_schema(loaded)
    protected = protected_names(config, loaded)
    data_protected = data.with_mutability(**{p: "immutable" for p in protected})

    objectives = ["vanilla", "full"] + (["energy", "adversarial"] if ablation else [])
    trained, histories, timings = {}, {}, {}
    for objective in objectives:
        label = LABELS[objective]
        trained[label], histories[label], timings[f"train_{label}_s"] = train_seeds(config, data, objective,
                                                                                    progress=progress)
    if protected:
        trained["CT_mut"], histories["CT_mut"], timings["train_CT_mut_s"] = train_seeds(
            config, data_protected, "full", mutability=True, progress=progress)
    with open(os.path.join(workdir, "histories.json"), "w") as f:
        json.dump(histories, f)

    t0 = time.perf_counter()
    plaus, cost = [], []
    labels = [LABELS[o] for o in objectives]
    for i, seed in enumerate(config.seeds):
        seed_dir = os.path.join(workdir, f"seed_{seed}")
        models = {label: trained[label][i] for label in labels}
        res = evaluate_explainability(models, data.x_test, data.y_test, num_classes=data.num_classes,
                                      protocol=protocol_config(config, threshold=config.eval_tau, seed=seed),
                                      constraints=data.constraints(), progress=progress)
        write_records(os.path.join(seed_dir, "plausibility_rounds.csv"), res["rounds"])
        write_records(os.path.join(seed_dir, "plausibility_summary.csv"), res["summary"])
        plaus.append(res["summary"])
        if protected:
            res_mut = evaluate_explainability({"BL": trained["BL"][i], "CT": trained["CT_mut"][i]}, data.x_test,
                                              data.y_test, num_classes=data.num_classes,
                                              protocol=protocol_config(config, threshold=config.eval_cost_tau,
                                                                       seed=seed),
                                              constraints=data_protected.constraints(), progress=progress)
            write_records(os.path.join(seed_dir, "actionability_summary.csv"), res_mut["summary"])
            cost.append(res_mut["summary"])
    timings["evaluate_s"] = time.perf_counter() - t0

    pooled = _pool(plaus, config.eval_rounds)
    comparisons = {}
    for label in labels[1:]:
        comparisons[label] = {m: compare(pooled, m, treatment=label, baseline="BL", seed=0)
                              for m in ("ip", "ip_star", "cost", "validity")}
    if cost:
        comparisons["CT"]["cost_protected"] = compare(_pool(cost, config.eval_rounds), "cost", seed=0)
    accuracy = {label: [h[-1]["test_accuracy"] for h in histories[label]] for label in histories}
    validity = {label: _mean_metric(pooled, label, "validity") for label in labels}

    robustness = {}
    if config.robustness:
        t0 = time.perf_counter()
        x_r, y_r = data.x_test[: config.robust_samples], data.y_test[: config.robust_samples]
        for label in labels:
            robustness[label] = evaluate_model(*trained[label][0], x_r, y_r, key=jax.random.key(0),
                                               max_samples=config.robust_samples)
        timings["robustness_s"] = time.perf_counter() - t0
        with open(os.path.join(workdir, "robustness.json"), "w") as f:
            json.dump(robustness, f, indent=1)
    if plots:
        _plots(config, data, trained, labels, robustness, histories, workdir)
    timings["total_s"] = time.perf_counter() - t_start
    results = {"dataset": config.dataset, "seeds": list(config.seeds), "protected": list(protected),
               "comparisons": comparisons, "accuracy": accuracy, "validity": validity,
               "mmd_length_scale": config.mmd_length_scale, "robustness": robustness, "timings": timings,
               "convergence": {label: [h[-1].get("converged") for h in histories[label]] for label in histories}}
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    return results


def _mean_metric(summary: list[dict], model: str, metric: str) -> float | None:
    vals = [r[metric] for r in summary if r["model"] == model and r[metric] is not None]
    return float(np.mean(vals)) if vals else None


def _plots(config, data, trained, labels, robustness, histories, workdir) -> None:
    from experiments import plots
    first = {label: trained[label][0] for label in labels}
    plots.plot_training_curves(os.path.join(workdir, "training_curves.png"),
                               {label: histories[label][0] for label in labels})
    search = SearchConfig(generator=config.generator, max_steps=config.eval_max_steps, threshold=config.eval_tau,
                          lambda_cost=0.0, lambda_energy=1.0)
    if data.num_features == 2:
        plots.plot_decision_surfaces(os.path.join(workdir, "decision_surfaces.png"), data, first,
                                     key=jax.random.key(0), search_config=search, constraints=data.constraints())
    if robustness:
        plots.plot_robust_accuracy(os.path.join(workdir, "robust_accuracy.png"), robustness,
                                   title=f"{config.dataset}: robust accuracy (seed {config.seeds[0]})")
    if data.image_shape:
        from ctrain.search import explain, predict
        x = data.x_test[:10]
        targets = (predict(*first["BL"], x) + 1) % data.num_classes
        cfs = {label: explain(*first[label], x, targets, key=jax.random.key(1), config=search,
                              constraints=data.constraints(), allow_same_class=True).x_cf for label in labels}
        plots.plot_counterfactual_grid(os.path.join(workdir, "counterfactual_grid.png"), x, cfs,
                                       image_shape=data.image_shape, targets=targets, factual_labels=data.y_test[:10])


def run_metadata() -> dict:
    """Returns what is needed to re-run: package versions, git commit, device description."""
    import importlib.metadata as md
    import platform
    import subprocess
    versions = {}
    for pkg in ("jax", "jaxlib", "flax", "optax", "chex", "numpy", "orbax-checkpoint"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    dev = jax.devices()[0]
    return {"versions": versions, "git_commit": commit, "git_dirty": dirty, "python": platform.python_version(),
            "platform": platform.platform(), "cpu_count": os.cpu_count(), "backend": jax.default_backend(),
            "device": getattr(dev, "device_kind", str(dev)), "device_count": jax.device_count()}

