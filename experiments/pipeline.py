"""One dataset's reproduction: train BL and CT (and optionally CD, AR) for every seed, evaluate, write files.

`train_and_evaluate(config, workdir)` is the library behind `python -m experiments.reproduce` and
the grid driver. It checks the config against the loaded data (`check_run`) before any training,
then writes, under `workdir`: config.json, histories.json, per-seed protocol records (rounds.csv,
summary.csv), robustness.json (every seed), ig_rounds.json (the IG sensitivity rounds of Table 2),
plots (training curves, decision surfaces, robust accuracy over seeds, image counterfactuals and IG maps),
and returns a `results` dict with the comparison rows the tables are made of.

With `generator=revise` a VAE of the reference's architecture is trained on the training inputs first
(`train_vae_aux`) and passed to every counterfactual-training run as `aux={"vae_params": ...}`; the
test-time protocol searches with ECCo (the reference's), which needs no VAE.

Every JSON file is strict JSON: a figure that cannot be computed (a comparison with no usable round, a
non-finite value) is null, and a comparison's "note" (or the results' "notes") says why.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from ctrain.data import Dataset, load_dataset
from ctrain import metrics, storage
from ctrain.evaluate import (ProtocolConfig, compare, compare_seeds, evaluate_explainability, evaluate_model,
                             seed_interval, write_records)
from ctrain.models import make_model, train_vae
from ctrain.objective import LossWeights
from ctrain.search import SearchConfig
from ctrain.train import TrainConfig, create_train_states, fit_many

from experiments import figures
from experiments import paper_results
from experiments.configs import ExperimentConfig, replace_path

LABELS = {"vanilla": "BL", "full": "CT", "energy": "CD", "adversarial": "AR", "pgd_at": "PGD-AT", "jem": "JEM"}
# Baselines beyond the paper (`train_and_evaluate(baselines=True)`, `reproduce --baselines`): Madry et al.'s PGD
# adversarial training at CT's ε and T, and JEM-style training on conditional-SGLD samples (ctrain.objective).
BASELINES = ("pgd_at", "jem")
# Models whose training runs no counterfactual search, so the mechanism's health does not apply to them.
NO_SEARCH_LABELS = ("BL", "PGD-AT", "JEM")
# What CT is compared with each baseline on (rounds paired within a seed, as CT vs BL).
VERSUS_METRICS = ("ip", "ip_star", "cost", "validity")


def free_schema(data: Dataset) -> Dataset:
    """Returns the dataset with every feature mutable (bounds kept): the plausibility experiment's setting."""
    return data.with_mutability(**{name: "free" for name in data.schema.names})


def protected_names(config: ExperimentConfig, data: Dataset) -> tuple[str, ...]:
    """Returns the features protected in the actionability experiment (the loader's immutables if none are set)."""
    if config.data.protected:
        return config.data.protected
    return tuple(f.name for f in data.schema.features if f.mutability == "immutable")


def loss_weights(config: ExperimentConfig, *, mutability: bool = False) -> LossWeights:
    """Returns the λ's of a run: `config.weights`, or for the actionability runs `config.actionability_weights()`."""
    return config.actionability_weights() if mutability else config.weights


def vae_architecture(num_features: int) -> tuple[int, int]:
    """Returns the reference's REVISE VAE (latent, hidden) for data of num_features: (2, 16) if 2-D, else (4, 32)."""
    return (2, 16) if num_features == 2 else (4, 32)  # paper/experiments/dev/train_vae.jl


def search_config(config: ExperimentConfig, num_features: int | None = None) -> SearchConfig:
    """Returns `config.train.search`, with REVISE's VAE architecture for data of num_features when it searches so."""
    search = config.train.search
    if search.generator == "revise" and num_features is not None:
        search = search.replace(**dict(zip(("vae_latent", "vae_hidden"), vae_architecture(num_features))))
    return search


def train_config(config: ExperimentConfig, objective: str, num_features: int | None = None) -> TrainConfig:
    """Returns the TrainConfig of one objective (the λ's and learning rate go on the state: `loss_weights`)."""
    return config.train.replace(objective=objective, search=search_config(config, num_features))


def train_vae_aux(config: ExperimentConfig, data: Dataset) -> dict | None:
    """Returns {"vae_params": VAE params} for `generator=revise` (else None): one VAE per dataset, as the reference.

    The VAE has the reference's architecture (`vae_architecture`), is fitted to the training inputs with
    `ctrain.models.train_vae`'s defaults (50 epochs, batch 64, Adam 1e-3) and seeded by the config's first seed.
    """
    if config.train.search.generator != "revise":
        return None
    latent, hidden = vae_architecture(data.num_features)
    params = train_vae(data.x_train, jax.random.key(config.seeds[0]), latent=latent, hidden=hidden,
                       batch_size=min(64, len(data.x_train)))
    return {"vae_params": params}


def seeds_text(seeds) -> str:
    """Returns how progress names a run's seeds: "seed 3", "seeds 0-4" (a run of consecutive seeds), "seeds 0,2"."""
    seeds = list(seeds)
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"seeds {seeds[0]}-{seeds[-1]}"
    return "seeds " + ",".join(map(str, seeds))


class LabelledLines:
    """A text stream that writes to `stream` with `label` at the start of every line (for progress in a log)."""

    def __init__(self, stream, label: str):
        self.stream, self.label, self._line_start = stream, label, True

    def write(self, text: str) -> int:
        """Returns len(text) after writing it with the label before each line it starts."""
        out = []
        for piece in text.splitlines(keepends=True):
            out.append(f"{self.label} {piece}" if self._line_start else piece)
            self._line_start = piece.endswith("\n")
        self.stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False


def stage_progress(progress, label: str):
    """Returns the progress setting for one stage named `label` (dataset, model, seeds, stage): on a terminal or in
    a notebook the same setting, after a header line naming the stage; in a log, a stream that puts the label at the
    start of each of its lines. False stays False."""
    if progress is None or progress is False:
        return progress
    stream = sys.stderr if progress is True else progress
    if (getattr(stream, "isatty", None) and stream.isatty()) or "ipykernel" in sys.modules:
        stream.write(f"== {label}\n")
        return progress
    return LabelledLines(stream, f"[{label}]")


def train_seeds(config: ExperimentConfig, data: Dataset, objective: str, *, mutability: bool = False,
                progress: bool = True, aux: dict | None = None, search: SearchConfig | None = None,
                model_kwargs: dict | None = None,
                label: str | None = None) -> tuple[list[tuple], list[list[dict]], float]:
    """Returns ([(apply_fn, params)] per seed, histories, wall seconds): all seeds trained as one vmapped program.

    `aux` reaches the training search (REVISE's {"vae_params": ...}); the vanilla objective searches nothing.
    `search` replaces the config's training search (`search_config`), e.g. to compare training searches.
    `model_kwargs` go to `make_model` (e.g. the units study's `input_stats`). `label` names the model in the
    progress (default: the objective's, e.g. CT; "CT_mut" for the protected-feature run).
    """
    tc = train_config(config, objective, data.num_features)
    if search is not None:
        tc = tc.replace(search=search)
    extra = {"image_shape": data.image_shape} if config.model == "lenet5" and data.image_shape else {}
    extra.update(model_kwargs or {})
    apply_fn, _ = make_model(config.model, data.num_features, data.num_classes, jax.random.key(0), **extra)
    inits = [make_model(config.model, data.num_features, data.num_classes, jax.random.key(s), **extra)[1]
             for s in config.seeds]
    states = create_train_states(apply_fn, jax.tree.map(lambda *a: jnp.stack(a), *inits),
                                 learning_rate=config.learning_rate,
                                 weights=loss_weights(config, mutability=mutability))
    t0 = time.perf_counter()
    label = label or LABELS.get(objective, objective)
    shown = stage_progress(progress, f"{data.name} {label} {seeds_text(config.seeds)} train")
    states, histories = fit_many(states, data, tc, seeds=config.seeds, constraints=data.constraints(),
                                 progress=shown, aux=aux if tc.needs_counterfactuals else None)
    jax.block_until_ready(states.params)
    wall = time.perf_counter() - t0
    models = [(apply_fn, jax.tree.map(lambda a, i=i: a[i], states.params)) for i in range(len(config.seeds))]
    return models, histories, wall


def protocol_config(config: ExperimentConfig, *, seed: int, actionability: bool = False) -> ProtocolConfig:
    """Returns `config.protocol` seeded by a training seed; for the cost experiment at `actionability.threshold`."""
    threshold = config.actionability.threshold if actionability else config.protocol.search.threshold
    search = config.protocol.search.replace(threshold=threshold)
    return dataclasses.replace(config.protocol, search=search, seed=seed)


def pool_rounds(summaries: list[list[dict]], n_rounds: int) -> list[dict]:
    """Returns the per-seed round summaries as one list, round numbers offset by seed so rounds pair within a seed."""
    return [{**row, "round": i * n_rounds + row["round"]} for i, rows in enumerate(summaries) for row in rows]


def load_data(config: ExperimentConfig) -> Dataset:
    """Returns the config's dataset, loaded with its data.kwargs and checked against the config (`check_run`)."""
    data = load_dataset(config.data.name, **dict(config.data.kwargs))
    check_run(config, data)
    return data


def check_run(config: ExperimentConfig, data: Dataset) -> None:
    """Raises ValueError naming the config field that does not fit the loaded data; trains nothing."""
    names = list(data.schema.names)
    missing = [p for p in config.data.protected if p not in names]
    if missing:
        shown = names if len(names) <= 30 else names[:30] + [f"... ({len(names)} in all)"]
        raise ValueError(f"ExperimentConfig.data.protected names {missing}, which {data.name} does not have; "
                         f"its features: {shown} (or set data.protected= to use the loader's immutable features)")
    extra = {"image_shape": data.image_shape} if config.model == "lenet5" and data.image_shape else {}
    try:
        make_model(config.model, data.num_features, data.num_classes, jax.random.key(0), **extra)
    except ValueError as err:
        raise ValueError(f"ExperimentConfig.model {config.model!r} does not fit {data.name}: {err}") from err
    if config.train.batch_size > len(data.x_train):
        raise ValueError(f"ExperimentConfig.train.batch_size {config.train.batch_size} exceeds the "
                         f"{len(data.x_train)} training samples of {data.name}; lower it or load more data "
                         "(data.kwargs)")
    for split in ("train", "test"):
        y = np.asarray(getattr(data, f"y_{split}"))
        absent = [k for k in range(data.num_classes) if not (y == k).any()]
        if absent:
            raise ValueError(f"the {split} split of {data.name} has no samples of class(es) {absent}: training "
                             "and the evaluation's IP / IP* need every class; load more data (data.kwargs)")


def json_safe(obj, notes: list[str] | None = None, path: str = ""):
    """Returns obj as strict-JSON data: numpy scalars as Python numbers, NaN/inf as None (each path added to notes)."""
    if isinstance(obj, dict):
        return {k: json_safe(v, notes, f"{path}/{k}" if path else str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v, notes, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        if not math.isfinite(obj):
            if notes is not None:
                notes.append(f"{path}: {float(obj)} cannot be computed; written as null")
            return None
        return float(obj)
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist(), notes, path)
    return obj


def write_json(path: str, obj) -> list[str]:
    """Writes obj to path as strict JSON (NaN/inf as null); returns the notes on the values nulled."""
    notes: list[str] = []
    storage.write_json(path, json_safe(obj, notes), indent=1, allow_nan=False)
    return notes


# Why a comparison has no reduction when no round pairs a value of both models ({t}: treatment, {b}: baseline).
UNDEFINED = {
    "ip_star": "undefined: in every round {t} or {b} had fewer than 2 valid counterfactuals (IP* needs 2)",
    "ip": "undefined: no round in which both {t} and {b} found a valid counterfactual",
    "cost": "undefined: no round in which both {t} and {b} found a valid counterfactual",
    "validity": "undefined: no round in which both {t} and {b} predicted a test point as the factual class",
}


def comparison(summary: list[dict], metric: str, *, treatment: str, baseline: str = "BL") -> dict:
    """Returns `ctrain.evaluate.compare` over the rounds with finite values; its "note" says why a figure is null."""
    rows = _finite_rows(summary, metric)
    dropped = sum(row is not original for row, original in zip(rows, summary))
    out = compare(rows, metric, treatment=treatment, baseline=baseline, seed=0)
    reasons = [f"{dropped} model-round value(s) of {metric} were not finite and were left out"] if dropped else []
    if out["n_rounds"] == 0:
        reasons.append(UNDEFINED[metric].format(t=treatment, b=baseline) if metric in UNDEFINED else out["note"])
    elif out["note"]:
        reasons.append(out["note"])
    nulled: list[str] = []
    out = json_safe(out, nulled)
    reasons += [f"{n.split(':')[0]} is not finite" for n in nulled]
    out["note"] = "; ".join(reasons)
    return out


def not_run(metric: str, treatment: str, reason: str) -> dict:
    """Returns an all-null comparison whose note says why it was not run."""
    return {**compare([], metric, treatment=treatment, seed=0), "note": reason,
            "seeds": compare_seeds([], metric, treatment=treatment)}


def _finite_rows(summary: list[dict], metric: str) -> list[dict]:
    return [{**row, metric: None} if row.get(metric) is not None and not math.isfinite(row[metric]) else row
            for row in summary]


def compared_over_rounds_and_seeds(per_seed: list[list[dict]], n_rounds: int, metric: str, *, treatment: str,
                                   baseline: str = "BL") -> dict:
    """Returns `comparison` over the seeds' pooled rounds (the paper's statistic) with `compare_seeds` under "seeds".

    The pooled rounds re-sample the test set for the fixed models of every seed; "seeds" is the claim about
    training: each seed's reduction, and the Student-t 99% interval of their mean over seeds.
    """
    out = comparison(pool_rounds(per_seed, n_rounds), metric, treatment=treatment, baseline=baseline)
    out["seeds"] = json_safe(compare_seeds([_finite_rows(rows, metric) for rows in per_seed], metric,
                                           treatment=treatment, baseline=baseline))
    return out


MECHANISM = ("converged", "search_steps", "ae_moved", "cf_in_ball")


def skipped_updates(runs: list[list[dict]]) -> list[int]:
    """Returns, per seed's run (a list of epoch logs), the updates skipped for a non-finite loss or gradient."""
    return [int(sum(epoch.get("nonfinite", 0) for epoch in run)) for run in runs]


def mechanism_health(histories: dict[str, list[list[dict]]]) -> dict:
    """Returns, per CF-trained model and seed, the last epoch's mechanism means and the run's skipped updates.

    "converged" is the share of training counterfactuals that reached τ, "search_steps" their mean
    number of search steps, "ae_moved" / "cf_in_ball" the adversarial-example diagnostics of the epoch
    log, and "nonfinite" the total of updates skipped over the run for non-finite loss or gradients.
    """
    out = {}
    for label, runs in histories.items():
        if label in NO_SEARCH_LABELS:  # BL, PGD-AT and JEM train on no counterfactuals
            continue
        out[label] = {key: [run[-1].get(key) for run in runs] for key in MECHANISM}
        out[label]["nonfinite"] = skipped_updates(runs)
    return out


CATEGORICAL_LABELS = {"relaxed": "relaxed", "straight_through": "straight-through", "snap_state": "snap-state"}


MODEL_LABELS = {"lenet5": "LeNet-5", "linear": "linear"}  # the row label's name of a model other than the paper's MLP


def run_label(config: ExperimentConfig, data: Dataset) -> str:
    """Returns the row label of a run: the dataset, with the one-hot search mode when the data has one-hot groups
    and the model when it is not the paper's MLP ("mnist_5k (LeNet-5)")."""
    parts = []
    if data.schema.groups:
        trained, tested = config.train.search.categorical, config.protocol.search.categorical
        mode = CATEGORICAL_LABELS.get(trained, trained)
        if tested != trained:
            mode += f", tested {CATEGORICAL_LABELS.get(tested, tested)}"
        parts.append(mode)
    if config.model != paper_results.PAPER_MODEL:
        parts.append(MODEL_LABELS.get(config.model, config.model))
    return f"{config.data.name} ({', '.join(parts)})" if parts else config.data.name


def robust_spread(per_seed: list[dict]) -> dict:
    """Returns the seeds' robustness curves summarised: accuracy and, per attack, mean/std/min/max over seeds per ε."""
    out = {"n_seeds": len(per_seed), "accuracy": _spread([r["accuracy"] for r in per_seed])}
    for attack in ("fgsm", "pgd"):
        curves = [r[attack] for r in per_seed if attack in r]
        if curves:
            values = np.array([c["accuracy"] for c in curves], np.float64)  # (seeds, ε)
            out[attack] = {"epsilon": curves[0]["epsilon"], "mean": values.mean(0).tolist(),
                           "std": values.std(0).tolist(), "min": values.min(0).tolist(), "max": values.max(0).tolist()}
    return out


def _spread(values) -> dict:
    values = np.asarray(values, np.float64)
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
            "max": float(values.max())}


def robustness_over_seeds(config: ExperimentConfig, data: Dataset, trained: dict, labels) -> dict:
    """Returns {label: robust_spread(...) with "per_seed"}: every seed's FGSM/PGD curves on the same test rows."""
    x_r, y_r = data.x_test[: config.robustness.samples], data.y_test[: config.robustness.samples]
    out = {}
    for label in labels:
        per_seed = [evaluate_model(apply_fn, params, x_r, y_r, key=jax.random.key(seed),
                                   max_samples=config.robustness.samples)
                    for (apply_fn, params), seed in zip(trained[label], config.seeds)]
        out[label] = {**robust_spread(per_seed), "per_seed": per_seed}
    return out


def ig_sensitivity(config: ExperimentConfig, data: Dataset, models: dict[str, list[tuple]],
                   protected_mask) -> tuple[dict, dict]:
    """Returns ({label: {"median", "ci_low", "ci_high", "n_rounds"}}, {label: per-round values}): the paper's Table 2.

    Per seed, every model is scored on the same bootstrap rounds and baselines (the reference draws the
    rounds' rows once per dataset): `ctrain.metrics.ig_sensitivity_rounds` on the test set, with the
    seed's key; the rounds of all seeds are pooled and summarised by their median and 2.5%/97.5% quantiles.
    Each label's entry also holds "seed_medians" (S,), the median of each seed's own rounds.
    """
    rounds: dict[str, list[float]] = {label: [] for label in models}
    seed_medians: dict[str, list[float]] = {label: [] for label in models}
    for i, seed in enumerate(config.seeds):
        key = jax.random.fold_in(jax.random.key(seed), 2)  # its own stream: the protocol's draws stay as they were
        for label, per_seed in models.items():
            apply_fn, params = per_seed[i]
            _, values = metrics.ig_sensitivity_rounds(apply_fn, params, data.x_test, data.y_test, protected_mask, key,
                                                      n_rounds=config.sensitivity.rounds, n_samples=config.sensitivity.samples,
                                                      n_steps=config.sensitivity.steps)
            rounds[label] += np.asarray(values, np.float64).tolist()
            seed_medians[label].append(float(np.median(np.asarray(values, np.float64))))
    return {label: {**median_ci(values), "seed_medians": seed_medians[label]} for label, values in rounds.items()}, \
        rounds


def median_ci(values) -> dict:
    """Returns {"median", "ci_low", "ci_high", "n_rounds", "n_infinite"} of per-round values: median and 95% quantiles.

    Quantiles interpolate linearly, as Julia's `quantile` (the reference); a round whose standardised
    sensitivity is infinite (zero spread of its mean attributions) counts, and then the quantiles take the
    nearest round instead, since interpolating between two infinite rounds is undefined.
    """
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return {"median": None, "ci_low": None, "ci_high": None, "n_rounds": 0, "n_infinite": 0,
                "note": "no rounds"}
    n_inf = int(np.isinf(v).sum())
    method = "linear" if n_inf == 0 else "nearest"
    low, median, high = (float(q) for q in np.quantile(v, [0.025, 0.5, 0.975], method=method))
    out = {"median": median, "ci_low": low, "ci_high": high, "n_rounds": int(v.size), "n_infinite": n_inf}
    if n_inf:
        out["note"] = (f"{n_inf} of {v.size} rounds had the same mean attribution on every feature (zero spread), "
                       "so their standardised sensitivity is infinite")
    return out


def train_and_evaluate(config: ExperimentConfig, workdir: str, *, data: Dataset | None = None, ablation: bool = False,
                       baselines: bool = False, progress: bool = True, plots: bool = True) -> dict:
    """Returns the results dict of one dataset (comparisons, accuracies, IG, robustness, timings) and writes its files.

    `data` is the config's dataset already loaded (e.g. by `load_data` while validating many configs);
    it is loaded here otherwise. The config is checked against the data before anything is trained or written.
    `ablation` adds CD and AR (paper Fig. 5); `baselines` adds PGD-AT and JEM (`BASELINES`), trained with the same
    seeds and initial weights, scored by the same protocol rounds, with robustness curves for every model, and
    compared with CT in `results["versus"]`.
    """
    t_start = time.perf_counter()
    loaded = load_data(config) if data is None else data
    if data is not None:
        check_run(config, loaded)
    os.makedirs(workdir, exist_ok=True)
    write_json(os.path.join(workdir, "config.json"), config.to_dict())
    data = free_schema(loaded)
    protected = protected_names(config, loaded)
    data_protected = data.with_mutability(**{p: "immutable" for p in protected})

    timings = {}
    t0 = time.perf_counter()
    aux = train_vae_aux(config, data)  # None unless generator=revise; one VAE serves every run of the dataset
    if aux is not None:
        timings["train_vae_s"] = time.perf_counter() - t0
    objectives = ["vanilla", "full"] + (["energy", "adversarial"] if ablation else []) + (
        list(BASELINES) if baselines else [])
    trained, histories = {}, {}
    for objective in objectives:
        label = LABELS[objective]
        trained[label], histories[label], timings[f"train_{label}_s"] = train_seeds(config, data, objective,
                                                                                    progress=progress, aux=aux)
    if protected:
        trained["CT_mut"], histories["CT_mut"], timings["train_CT_mut_s"] = train_seeds(
            config, data_protected, "full", mutability=True, progress=progress, aux=aux, label="CT_mut")
    history_notes = write_json(os.path.join(workdir, "histories.json"), histories)

    t0 = time.perf_counter()
    plaus, cost = [], []
    labels = [LABELS[o] for o in objectives]
    for i, seed in enumerate(config.seeds):
        seed_dir = os.path.join(workdir, f"seed_{seed}")
        models = {label: trained[label][i] for label in labels}
        res = evaluate_explainability(models, data.x_test, data.y_test, num_classes=data.num_classes,
                                      protocol=protocol_config(config, seed=seed), constraints=data.constraints(),
                                      progress=stage_progress(progress, f"{data.name} seed {seed} "
                                                                        f"{'/'.join(models)} evaluate"))
        write_records(os.path.join(seed_dir, "plausibility_rounds.csv"), res["rounds"])
        write_records(os.path.join(seed_dir, "plausibility_summary.csv"), res["summary"])
        plaus.append(res["summary"])
        if protected:
            res_mut = evaluate_explainability({"BL": trained["BL"][i], "CT": trained["CT_mut"][i]}, data.x_test,
                                              data.y_test, num_classes=data.num_classes,
                                              protocol=protocol_config(config, seed=seed, actionability=True),
                                              constraints=data_protected.constraints(),
                                              progress=stage_progress(progress, f"{data.name} seed {seed} BL/CT_mut "
                                                                                "evaluate protected"))
            write_records(os.path.join(seed_dir, "actionability_summary.csv"), res_mut["summary"])
            cost.append(res_mut["summary"])
    timings["evaluate_s"] = time.perf_counter() - t0

    pooled, pooled_cost = pool_rounds(plaus, config.protocol.n_rounds), pool_rounds(cost, config.protocol.n_rounds)
    comparisons = {}
    for label in labels[1:]:
        comparisons[label] = {m: compared_over_rounds_and_seeds(plaus, config.protocol.n_rounds, m, treatment=label)
                              for m in ("ip", "ip_star", "cost", "validity")}
    comparisons["CT"]["cost_protected"] = (
        compared_over_rounds_and_seeds(cost, config.protocol.n_rounds, "cost", treatment="CT") if cost
        else not_run("cost", "CT", "not run: the dataset has no protected features (set data.protected=NAME,...)"))
    accuracy = {label: [h[-1]["test_accuracy"] for h in histories[label]] for label in histories}
    validity = {label: mean_metric(pooled, label, "validity") for label in labels}
    means = {label: {m: mean_metric(pooled, label, m) for m in VERSUS_METRICS} for label in labels}
    versus = {LABELS[o]: {m: compared_over_rounds_and_seeds(plaus, config.protocol.n_rounds, m, treatment="CT",
                                                            baseline=LABELS[o]) for m in VERSUS_METRICS}
              for o in objectives if o in BASELINES}
    validity_protected = {label: mean_metric(pooled_cost, label, "validity") for label in ("CT", "BL")} if cost else {}

    ig, ig_over_seeds = {}, None
    if protected:
        # The reference scores the models of its mutability runs: BL and CT trained with the features protected.
        t0 = time.perf_counter()
        ig, ig_rounds = ig_sensitivity(config, data, {"CT": trained["CT_mut"], "BL": trained["BL"]},
                                       data_protected.schema.protected())
        # Paired by seed: each seed's CT_mut and BL share initial weights and IG rounds.
        ig_over_seeds = seed_interval(np.subtract(ig["CT"]["seed_medians"], ig["BL"]["seed_medians"]).tolist())
        write_json(os.path.join(workdir, "ig_rounds.json"), ig_rounds)
        timings["ig_s"] = time.perf_counter() - t0

    robustness = {}
    if config.robustness.enabled or baselines:  # the baselines' claim is robustness: measure it on every dataset
        t0 = time.perf_counter()
        robustness = robustness_over_seeds(config, data, trained, labels)
        timings["robustness_s"] = time.perf_counter() - t0
        write_json(os.path.join(workdir, "robustness.json"), robustness)
    figures = {}
    if plots:
        t0 = time.perf_counter()
        figures = _plots(config, data, data_protected, trained, labels, robustness, histories, workdir)
        timings["plots_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    mechanism = mechanism_health(histories)
    robust_summary = {label: {k: v for k, v in r.items() if k != "per_seed"} for label, r in robustness.items()}
    results = {"dataset": config.data.name, "label": run_label(config, data),
               "categorical": config.train.search.categorical, "one_hot_groups": len(data.schema.groups),
               "generator": config.train.search.generator, "model": config.model,
               "paper_row": paper_results.row({"dataset": config.data.name, "model": config.model}), "seeds": list(config.seeds), "protected": list(protected),
               "ablation": ablation, "comparisons": comparisons, "accuracy": accuracy, "validity": validity,
               "validity_protected": validity_protected, "means": means, "versus": versus,
               "skipped_updates": {label: skipped_updates(runs) for label, runs in histories.items()},
               "ig": ig, "ig_difference_over_seeds": ig_over_seeds, "mmd_length_scale": config.protocol.mmd_length_scale,
               "robustness": robust_summary, "figures": figures, "timings": timings,
               "convergence": {label: mechanism[label]["converged"] for label in mechanism}, "mechanism": mechanism}
    notes = [f"histories.json: {n}" for n in history_notes]
    results = json_safe(results, notes)
    results["notes"] = notes
    write_json(os.path.join(workdir, "results.json"), results)
    return results


def mean_metric(summary: list[dict], model: str, metric: str) -> float | None:
    """Returns the mean of `model`'s finite `metric` values over the round summary's rows, or None if none."""
    vals = [r[metric] for r in summary if r["model"] == model and r[metric] is not None and math.isfinite(r[metric])]
    return float(np.mean(vals)) if vals else None


def _plots(config, data, data_protected, trained, labels, robustness, histories, workdir) -> dict[str, str]:
    """Writes the dataset's figures; returns {figure: path}."""
    from experiments import plots
    out = {}
    first = {label: trained[label][0] for label in labels}
    out["training_curves"] = plots.plot_training_curves(os.path.join(workdir, "training_curves.png"),
                                                        {label: histories[label][0] for label in labels})
    # The test-time search of the protocol (ECCo, λ_energy 1, the protocol's τ and one-hot mode): what is evaluated.
    search = protocol_config(config, seed=config.seeds[0]).search_config(1.0)
    if data.num_features == 2:
        out["decision_surfaces"] = plots.plot_decision_surfaces(
            os.path.join(workdir, "decision_surfaces.png"), data, first, key=jax.random.key(0), search_config=search,
            constraints=data.constraints())
    if robustness:
        out["robust_accuracy"] = plots.plot_robust_accuracy(
            os.path.join(workdir, "robust_accuracy.png"), robustness,
            title=f"{config.data.name}: robust accuracy, mean and range over seeds {list(config.seeds)}")
    if data.image_shape:
        from ctrain.search import explain, predict
        x = data.x_test[:10]
        targets = (predict(*first["BL"], x) + 1) % data.num_classes
        cfs = {label: explain(*first[label], x, targets, key=jax.random.key(1), config=search,
                              constraints=data.constraints(), allow_same_class=True).x_cf for label in labels}
        out["counterfactual_grid"] = plots.plot_counterfactual_grid(
            os.path.join(workdir, "counterfactual_grid.png"), x, cfs, image_shape=data.image_shape, targets=targets,
            factual_labels=data.y_test[:10])
        if "CT_mut" in trained:
            out["ig_maps"] = figures.ig_maps_figure(
                os.path.join(workdir, "ig_maps.png"), data, {"BL": trained["BL"][0], "CT": trained["CT_mut"][0]},
                protected_mask=data_protected.schema.protected(), key=jax.random.key(config.seeds[0]),
                n_steps=config.sensitivity.steps, title=f"{config.data.name}: mean integrated gradients per class "
                                               f"(seed {config.seeds[0]}; CT trained with the protected rows)")
    return out


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



# --------------------------------------------------------------------------------------------------
# Command-line checks shared by the experiment scripts: each runs before anything trains, so a bad argument
# fails at once instead of after hours of training (or, worse, trains something other than what was asked).


class CommandError(ValueError):
    """A mistake in a command's settings or its --out folder, said in one line with its fix; the command exits 2."""


@contextlib.contextmanager
def command_checks() -> Iterator[None]:
    """Yields once; a ValueError, TypeError, KeyError or FileNotFoundError raised inside is marked a command mistake.

    Wraps the checks a script runs before it trains, so the mistakes found there reach `run_command` as one line
    (a caller of `main` still gets the error's own type); an error of the same kind raised later, while training,
    keeps its traceback.
    """
    try:
        yield
    except (ValueError, TypeError, KeyError, FileNotFoundError) as err:
        err.command_mistake = True
        raise


def _one_line(err: BaseException) -> str:
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(str(text).split())


def run_command(main: Callable, argv=None, prog: str | None = None) -> int:
    """Returns the exit status of `main(argv)`: its own if it returns an int, else 0; 2 after a CommandError, 1 after
    a failed write (StorageError), each failure printed as one line on stderr with no traceback."""
    prog = prog or os.path.basename(sys.argv[0])
    try:
        status = main(argv)
    except storage.StorageError as err:
        print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except Exception as err:
        if not (isinstance(err, CommandError) or getattr(err, "command_mistake", False)):
            raise
        print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    # A main that returns an int returns its own exit status (a benchmark whose figures miss their goal, say).
    return status if isinstance(status, int) and not isinstance(status, bool) else 0


def check_flags(config: ExperimentConfig, flags: dict[str, tuple[str, object]]) -> ExperimentConfig:
    """Returns `config` with each flag's value set at its dotted path ({flag: (path, value)}), checked by the
    config's own rules (the ones --set goes through); raises ValueError naming the flag of the first bad value."""
    for flag, (path, value) in flags.items():
        try:
            config = replace_path(config, path, value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{flag} {value!r}: {err}") from None
    return config


def check_distinct(flag: str, values) -> None:
    """Returns None; raises ValueError naming the values given more than once to `flag` (each would run twice)."""
    seen, repeated = set(), []
    for v in values:
        if v in seen and v not in repeated:
            repeated.append(v)
        seen.add(v)
    if repeated:
        raise ValueError(f"{flag} gives {', '.join(map(str, repeated))} more than once: a repeated value would "
                         "train the same runs twice (into the same folder); give each value once")


def check_output_file(flag: str, path: str | None) -> None:
    """Returns None; raises ValueError if the file `path` (None: not asked for) could not be written at the end."""
    if path is None:
        return
    folder = os.path.dirname(path) or "."
    if os.path.isdir(path) or not os.path.isdir(folder):
        raise ValueError(f"{flag} {path!r} cannot be written: "
                         + ("it is a folder" if os.path.isdir(path) else f"its folder {folder!r} does not exist"))


def refuse_overwrite(out: str, finished, how: str = "pass --overwrite to replace them, or choose another --out") -> None:
    """Returns None if nothing is `finished`; raises ValueError naming the finished runs in `out` a new run would replace."""
    finished = list(finished)
    if finished:
        raise ValueError(f"{out!r} already holds finished results for {', '.join(map(str, finished))}; nothing was "
                         f"trained: {how}")


def train_figure1(path, config, data: Dataset, *, progress: bool = False) -> dict:
    """Returns {"path", "protected", "sensitivity": {panel model: shares}} after saving the paper's Figure 1.

    `config` is an ExperimentConfig of a 2-D dataset whose first protected feature is protected; the models
    are linear and trained with the config's settings on its first seed (the protected-feature CT run with
    the mutability λ's, as in the actionability experiment). `data` is the loaded dataset.
    """
    if data.num_features != 2:
        raise ValueError(f"Figure 1 needs 2-D data; {data.name!r} has {data.num_features} features")
    linear = config.replace(model="linear", seeds=config.seeds[:1])
    free = free_schema(data)
    protected = protected_names(linear, data)[:1]
    if not protected:
        raise ValueError(f"Figure 1 protects one feature; the config of {data.name!r} names none (set data.protected=)")
    held = free.with_mutability(**{protected[0]: "immutable"})
    models = {}
    for label, objective, train_data, mutability in (("BL", "vanilla", free, False), ("CT", "full", free, False),
                                                     ("CT_mut", "full", held, True)):
        trained, _, _ = train_seeds(linear, train_data, objective, mutability=mutability, progress=progress)
        models[label] = trained[0]
    search = protocol_config(linear, seed=linear.seeds[0]).search_config(1.0)
    name = protected[0]
    panels = {"(a) BL, all mutable": models["BL"], "(b) CT, all mutable": models["CT"],
              f"(c) BL, {name} immutable": models["BL"], f"(d) CT, {name} protected": models["CT_mut"]}
    constraints = dict(zip(panels, (free.constraints(), free.constraints(), held.constraints(), held.constraints())))
    from experiments import plots
    plots.plot_decision_surfaces(path, free, panels, key=jax.random.key(linear.seeds[0]), search_config=search,
                                 constraints=constraints, ncols=2, boundary=True, target_class=1, show="train",
                                 n_factuals=10, grid_size=150)
    return {"path": str(path), "protected": name, "dataset": data.name,
            "class_mean_gap_sigma": data.class_mean_gaps().tolist(),
            "sensitivity": {label: figures.linear_sensitivities(*model, data.num_features) for label, model in models.items()}}
