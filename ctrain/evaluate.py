"""The paper's evaluation protocol: bootstrap rounds of test-time counterfactuals, and model robustness.

`evaluate_explainability` runs J rounds; each draws a factual class a and a target t ≠ a, then for
every model samples (with replacement) test points that *this model* predicts as a, generates their
counterfactuals with the test-time ECCo generator for each λ_energy, keeps the valid ones
(argmax = t), and averages cost, IP and IP* per round (first per λ_energy, then over λ_energy). IP*
compares at most `mmd_samples` valid counterfactuals, drawn without replacement, with `mmd_samples`
target-class test points, as the reference subsamples both sides to 100.
`compare` turns two models' per-round means into the paper's "% reduction ± s.e." with a 99%
percentile-bootstrap CI of the difference: that re-samples one test set for fixed trained models, so it says
nothing about another training seed. `compare_seeds` gives the claim about training: per seed the reduction of
that seed's CT against its BL (both the paper's mean of per-round reductions and the ratio of means), and a
Student-t interval of their mean over seeds. Everything returns plain
dicts; `write_records` stores them.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np
import scipy.stats

from ctrain import attacks, constraints as cons, metrics
from ctrain.progress import progress as progress_display
from ctrain.storage import write_atomic, write_json
from ctrain.search import SearchConfig, explain, get_generator, predict, search_units

# The reference's test-time search (§4.1): ECCo, T = 50 SGD steps of 0.1 on the raw input gradient in the data's
# units, τ = 0.95, no cost penalty, relaxed one-hot groups, stopping at τ. Pinned field by field rather than inherited
# from SearchConfig's defaults, so a change of the library's training-time defaults never changes what the protocol
# measures; an explanation stops at τ, whatever training does.
PROTOCOL_SEARCH = SearchConfig(generator="ecco", max_steps=50, step_size=0.1, threshold=0.95, lambda_cost=0.0,
                               categorical="relaxed", units="absolute", step_rule="gradient", convergence="threshold")
MEDIAN = "median"  # ProtocolConfig.mmd_length_scale: the median heuristic, per target class
# Pairs grow quadratically; 1000 rows (~500k pairs) pin the median of a class down to well under 1%.
MEDIAN_HEURISTIC_MAX_SAMPLES = 1000


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
    """Settings of `evaluate_explainability` (defaults: reference §4.1, synthetic data); checked on construction."""

    n_rounds: int = 100
    n_individuals: int = 250  # per round and per λ_energy
    # The λ_energy values the protocol sweeps: each replaces `search.lambda_energy` in turn (`search_config`).
    lambda_energy: tuple[float, ...] = (0.1, 0.5, 1.0, 5.0, 10.0)
    # The test-time search (generator, T, step, τ of validity, one-hot mode, units, step rule, stopping rule).
    search: SearchConfig = PROTOCOL_SEARCH
    ip_samples: int = 1000  # target-class test points (drawn with replacement) for IP
    mmd_samples: int = 100  # per side for IP*: target-class test points, and at most this many valid CFs
    # ℓ > 0 of IP*'s Gaussian kernel, or "median": per target class t, the median pairwise distance of (up to
    # MEDIAN_HEURISTIC_MAX_SAMPLES of) the class-t test points, computed once per evaluation.
    mmd_length_scale: float | str = metrics.DEFAULT_LENGTH_SCALE
    chunk_size: int = 1024
    seed: int = 0

    def __post_init__(self):
        def bad(name, requirement):
            return ValueError(f"ProtocolConfig.{name} must be {requirement}, got {getattr(self, name)!r}")

        for name in ("n_rounds", "n_individuals", "ip_samples", "chunk_size"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise bad(name, "an integer >= 1")
        if not _is_int(self.mmd_samples) or self.mmd_samples < 2:
            raise bad("mmd_samples", "an integer >= 2 (the unbiased MMD² needs two rows a side)")
        if not _is_int(self.seed) or self.seed < 0:
            raise bad("seed", "an integer >= 0")
        if isinstance(self.lambda_energy, (str, bytes)) or not isinstance(self.lambda_energy, Iterable):
            raise bad("lambda_energy", "a non-empty sequence of finite numbers >= 0")
        lambdas = tuple(self.lambda_energy)
        if not lambdas:
            raise bad("lambda_energy", "a non-empty sequence of finite numbers >= 0 (it lists no value)")
        for value in lambdas:
            if not (_is_real(value) and math.isfinite(value) and value >= 0):
                raise ValueError(f"ProtocolConfig.lambda_energy must hold finite numbers >= 0, got {value!r} "
                                 f"in {self.lambda_energy!r}")
        # Plain floats keep the config hashable and its JSON form independent of how the values were given.
        object.__setattr__(self, "lambda_energy", tuple(float(v) for v in lambdas))
        if not isinstance(self.search, SearchConfig):
            raise bad("search", "a ctrain.search.SearchConfig (e.g. PROTOCOL_SEARCH.replace(threshold=0.9))")
        try:
            get_generator(self.search.generator)
        except ValueError as err:
            raise ValueError(f"ProtocolConfig.search.generator: {err}") from None
        # Fields of the search that the protocol sets itself, or that a test-time search does not read: a value
        # other than PROTOCOL_SEARCH's would change nothing, so it is refused instead of ignored.
        for name, why in (("lambda_energy", "set ProtocolConfig.lambda_energy, the values the protocol sweeps"),
                          ("epsilon", "it bounds training's adversarial example, which the protocol does not make")):
            if getattr(self.search, name) != getattr(PROTOCOL_SEARCH, name):
                raise ValueError(f"ProtocolConfig.search.{name} must stay {getattr(PROTOCOL_SEARCH, name)!r} "
                                 f"({why}), got {getattr(self.search, name)!r}")
        scale = self.mmd_length_scale
        if isinstance(scale, str):
            if scale != MEDIAN:
                raise bad("mmd_length_scale", f"a finite number > 0 or {MEDIAN!r}")
        elif not (_is_real(scale) and math.isfinite(scale) and scale > 0):
            raise bad("mmd_length_scale", f"a finite number > 0 or {MEDIAN!r}")
        else:
            object.__setattr__(self, "mmd_length_scale", float(scale))

    def search_config(self, lambda_energy: float) -> SearchConfig:
        """Returns the SearchConfig of the test-time generator at one λ_energy: `search` with that λ_energy."""
        return self.search.replace(lambda_energy=lambda_energy)


# "violations" is the mean count of broken constraints per counterfactual over all of a round's counterfactuals
# (valid or not: a returned counterfactual must be actionable either way); the others average valid ones only.
ROUND_METRICS = ("validity", "validity_strict", "cost", "ip", "ip_star", "energy_differential", "violations")


def _draw_rounds(rng: np.random.Generator, n_rounds: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    factual = rng.integers(0, num_classes, n_rounds)
    target = (factual + rng.integers(1, num_classes, n_rounds)) % num_classes  # uniform over t ≠ a
    return factual, target


def subsample_mask(rng: np.random.Generator, mask, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (J, k) row indices and their (J, k) bool mask: per row of mask (J, n), min(k, #True) True positions.

    The positions are drawn uniformly without replacement when a row has more than k of them and all
    taken otherwise; unused slots hold index 0 with mask False, so every round has the same shape.
    """
    mask = np.asarray(mask, bool)
    if mask.ndim != 2 or k < 1:
        raise ValueError(f"mask must be (J, n) and k >= 1, got shape {mask.shape} and k={k}")
    index = np.zeros((mask.shape[0], k), np.int64)
    keep = np.zeros((mask.shape[0], k), bool)
    for r, row in enumerate(mask):
        chosen = rng.permutation(np.flatnonzero(row))[:k]
        index[r, :len(chosen)] = chosen
        keep[r, :len(chosen)] = True
    return index, keep


# Module level, so repeated evaluations (models, seeds, datasets of the same shapes) share one compilation.
_round_mmd2 = jax.jit(jax.vmap(lambda xs, mask, ys, length_scale: metrics.mmd2_unbiased_masked(
    xs, mask, ys, length_scale=length_scale)))


def _length_scales(protocol: ProtocolConfig, x_test: np.ndarray, by_class: Mapping[int, np.ndarray],
                   classes: Iterable[int]) -> dict[int, float]:
    if protocol.mmd_length_scale != MEDIAN:
        return {int(t): float(protocol.mmd_length_scale) for t in classes}
    # Its own stream, so choosing "median" leaves every other draw of the protocol as it was.
    rng = np.random.default_rng([protocol.seed, 1])
    scales = {}
    for t in sorted(int(c) for c in classes):
        rows = by_class[t]
        if len(rows) > MEDIAN_HEURISTIC_MAX_SAMPLES:
            rows = rng.choice(rows, MEDIAN_HEURISTIC_MAX_SAMPLES, replace=False)
        if len(rows) < 2:
            raise ValueError(f"mmd_length_scale='median' needs at least 2 test samples of class {t}, got {len(rows)}")
        scale = float(metrics.median_heuristic_length_scale(x_test[rows]))
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"mmd_length_scale='median': the median distance between test samples of class {t} "
                             f"is {scale}, which is no kernel length scale; pass a number instead")
        scales[t] = scale
    return scales


def _unpack_model(name: str, model) -> tuple[Any, Any, Any]:
    if not isinstance(model, (tuple, list)) or len(model) not in (2, 3):
        raise ValueError(f"model {name!r} must be a tuple (apply_fn, params) or (apply_fn, params, aux), "
                         f"got {type(model).__name__} {model!r:.80}")
    return (*model, None) if len(model) == 2 else tuple(model)


def _no_nan(record: Mapping, context: str) -> None:
    for key, value in record.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{context}: metric {key!r} came out {value}; report this as a bug")


def evaluate_explainability(models: Mapping[str, tuple], x_test, y_test, *, num_classes: int,
                            protocol: ProtocolConfig = ProtocolConfig(),
                            constraints: cons.Constraints | None = None, progress: bool = False) -> dict:
    """Returns {"rounds": per-(model, round, λ) records, "summary": per-(model, round) means, "protocol", ...}.

    models: name -> (apply_fn, params), or (apply_fn, params, aux) for generators that need `aux` (eccco,
    revise). x_test (N, D), y_test (N,). Every metric is a finite float or None, never NaN: a round in which a
    model predicts no test point as the factual class, or finds no valid counterfactual (fewer than 2 for
    IP*), gets None ("n/a"). A counterfactual with a non-finite entry or output is invalid. "mmd_length_scales"
    maps each target class to the ℓ its IP* used.
    """
    x_test = np.asarray(x_test, np.float32)
    y_test = np.asarray(y_test)
    if x_test.ndim != 2 or y_test.shape != x_test.shape[:1]:
        raise ValueError(f"x_test must be (N, D) and y_test (N,), got {x_test.shape} and {y_test.shape}")
    if not models:
        raise ValueError("pass at least one model")
    unpacked = {name: _unpack_model(name, model) for name, model in models.items()}
    width = x_test.shape[1]
    constraints = cons.unconstrained(width) if constraints is None else constraints
    cons.check_width(constraints, width)
    # Distances (cost, IP, IP*) are measured in the protocol's units: x / unit.
    unit = np.asarray(search_units(protocol.search_config(protocol.lambda_energy[0]), constraints), np.float32)
    rng = np.random.default_rng(protocol.seed)
    factual_class, target_class = _draw_rounds(rng, protocol.n_rounds, num_classes)
    by_class = {k: np.flatnonzero(y_test == k) for k in range(num_classes)}
    for t in np.unique(target_class):
        if len(by_class[t]) == 0:
            raise ValueError(f"the test set has no samples of target class {t}: IP and IP* are undefined")
    # Fixed reference samples per target class, shared by all models so their scores are comparable.
    ip_ref = {t: x_test[rng.choice(by_class[t], protocol.ip_samples, replace=True)]
              for t in by_class if len(by_class[t])}
    mmd_ref = np.stack([x_test[rng.choice(by_class[t], protocol.mmd_samples,
                                          replace=len(by_class[t]) < protocol.mmd_samples)]
                        for t in target_class]) / unit  # (J, m, D)
    scales = _length_scales(protocol, x_test / unit, by_class, np.unique(target_class))
    round_scale = np.array([scales[int(t)] for t in target_class], np.float32)
    n, j = protocol.n_individuals, protocol.n_rounds
    k_mmd = min(n, protocol.mmd_samples)

    records, summary, done = [], [], 0
    bar = progress_display(progress, len(models) * len(protocol.lambda_energy), "evaluate", unit="search")
    for name, (apply_fn, params, aux) in unpacked.items():
        predicted = predict(apply_fn, params, x_test, chunk_size=protocol.chunk_size)
        pools = [np.flatnonzero(predicted == a) for a in factual_class]
        has_pool = np.array([len(p) > 0 for p in pools])
        # Rounds without candidates still get rows (the factual itself) so shapes stay fixed; they are masked out.
        idx = np.stack([rng.choice(p, n, replace=True) if len(p) else np.zeros(n, int) for p in pools])  # (J, n)
        x = x_test[idx.reshape(-1)]
        targets = np.repeat(target_class, n).astype(np.int32)
        per_lambda = []
        for lam in protocol.lambda_energy:
            e = explain(apply_fn, params, x, targets, key=jax.random.key(int(rng.integers(2 ** 31))),
                        config=protocol.search_config(lam), constraints=constraints, chunk_size=protocol.chunk_size,
                        allow_same_class=True, aux=aux)
            # A diverged search (non-finite x' or model output) is no counterfactual, whatever argmax says of NaN
            # logits: invalid, and replaced by its factual inside every metric, since one inf would make IP and
            # the masked MMD² (0·inf) NaN for the whole round.
            finite = np.all(np.isfinite(e.x_cf), axis=-1) & np.isfinite(e.p_target)
            x_cf = np.where(finite[:, None], e.x_cf, e.x)
            valid = (e.valid & finite).reshape(j, n) & has_pool[:, None]
            cost = (np.abs(x_cf - e.x) / unit).sum(-1).reshape(j, n)
            ip = np.zeros(j * n, np.float32)
            energy_diff = np.zeros(j * n, np.float32)
            for t in np.unique(target_class):
                rows = targets == t
                ip[rows] = np.asarray(metrics.implausibility(x_cf[rows] / unit, ip_ref[t] / unit))
                energy_diff[rows] = np.asarray(metrics.energy_differential(
                    apply_fn, params, x_cf[rows], targets[rows], ip_ref[t][:50]))
            # Both sides of IP* hold at most mmd_samples rows, as in the reference.
            pick, picked = subsample_mask(rng, valid, k_mmd)
            x_mmd = np.take_along_axis(x_cf.reshape(j, n, width) / unit, pick[:, :, None], axis=1)
            ip_star = np.asarray(_round_mmd2(x_mmd, picked, mmd_ref, round_scale))
            broken = np.asarray(cons.violations(e.x_cf, e.x, constraints)["total"]).reshape(j, n)
            strict = ((e.p_target >= protocol.search.threshold) & finite).reshape(j, n)
            for r in range(j):
                v = valid[r]
                rec = {"model": name, "round": r, "lambda_energy": lam, "factual_class": int(factual_class[r]),
                       "target_class": int(target_class[r]), "n": n if has_pool[r] else 0, "n_valid": int(v.sum()),
                       "validity": float(v.mean()) if has_pool[r] else None,
                       "validity_strict": float(strict[r].mean()) if has_pool[r] else None,
                       "cost": metrics.mean_or_none(cost[r], v),
                       "ip": metrics.mean_or_none(ip.reshape(j, n)[r], v),
                       # Clamped at 0 as the reference does.
                       "ip_star": float(max(ip_star[r], 0.0)) if picked[r].sum() >= 2 else None,
                       "energy_differential": metrics.mean_or_none(energy_diff.reshape(j, n)[r], v),
                       "violations": float(broken[r].mean()) if has_pool[r] else None}
                _no_nan(rec, f"model {name!r}, round {r}, lambda_energy {lam}")
                per_lambda.append(rec)
            if bar is not None:
                done += 1
                bar.update(done, {"model": name, "λ_energy": f"{lam:g}"})
        records.extend(per_lambda)
        for r in range(j):
            rows = [rec for rec in per_lambda if rec["round"] == r]
            row = {"model": name, "round": r}
            for m in ROUND_METRICS:
                vals = [rec[m] for rec in rows if rec[m] is not None]
                row[m] = float(np.mean(vals)) if vals else None
            summary.append(row)
    if bar is not None:
        bar.close()
    return {"rounds": records, "summary": summary, "protocol": dataclasses.asdict(protocol),
            "mmd_length_scales": {str(t): v for t, v in scales.items()}}


def bootstrap_mean_ci(values, *, level: float = 0.99, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Returns the `level` percentile-bootstrap CI (low, high) of the mean of `values` (n,), n >= 2."""
    values = np.asarray(values, np.float64)
    if values.ndim != 1 or len(values) < 2:
        raise ValueError(f"a bootstrap CI needs at least two values in a 1-D array, got shape {values.shape}")
    boot = values[np.random.default_rng(seed).integers(0, len(values), (n_boot, len(values)))].mean(1)
    lo, hi = np.percentile(boot, [50 * (1 - level), 100 - 50 * (1 - level)])
    return float(lo), float(hi)


# Below this many paired rounds a 99% percentile-bootstrap interval of a mean does not hold its level: on null data
# (both models' values from one normal distribution) it excludes 0 in 49% of trials at 2 rounds, 12% at 5, 2% at
# 20 and 1% from 30 on (tests/test_evaluate.py checks the rate at this bound and at the protocol's 100 rounds).
MIN_BOOTSTRAP_ROUNDS = 30


def seed_interval(values, *, level: float = 0.99) -> dict:
    """Returns {"n", "mean", "sd", "low", "high", "level", "significant", "note"} of per-seed values (S,).

    low/high: the Student-t `level` interval of the mean over seeds (exact for normal values, and honest for a
    handful of seeds where a bootstrap is not); significant: it excludes 0. Non-finite values are left out; with
    fewer than two seeds left there is no interval and `significant` is None.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    values = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    out = {"n": int(values.size), "mean": None, "sd": None, "low": None, "high": None, "level": level,
           "significant": None, "note": ""}
    if values.size == 0:
        out["note"] = "no seed has a value"
        return out
    out["mean"] = float(values.mean())
    if values.size < 2:
        out["note"] = "one seed: no interval over seeds, so no significance"
        return out
    sd = float(values.std(ddof=1))
    half = float(scipy.stats.t.ppf(0.5 + level / 2, values.size - 1)) * sd / math.sqrt(values.size)
    out.update(sd=sd, low=out["mean"] - half, high=out["mean"] + half)
    out["significant"] = bool(out["low"] > 0 or out["high"] < 0)
    return out


def compare_seeds(per_seed: Sequence[Sequence[Mapping]], metric: str, *, treatment: str = "CT",
                  baseline: str = "BL", level: float = 0.99) -> dict:
    """Returns the seed-level comparison of `metric`: per seed its reductions and difference, and intervals over seeds.

    `per_seed` holds one round summary per training seed (the rows `evaluate_explainability` returns for that
    seed's treatment and baseline models). Per seed s, over the rounds j where both models have a value:
    round_reduction_s = mean_j −(T_j / B_j − 1)·100 (the paper's estimator; rounds with B_j = 0 left out),
    reduction_s = −(mean_j T_j / mean_j B_j − 1)·100 (the ratio of means) and difference_s = mean_j T_j − mean_j B_j.
    "round_reduction", "reduction" and "difference" are `seed_interval`s of those (S,) values; "significant" is the
    ratio-of-means reduction's (kept so that stored results read the same); "round_significant" is the paper
    estimator's. "per_seed_n_rounds" counts each seed's paired rounds.
    """
    reductions, round_reductions, differences, n_rounds = [], [], [], []
    for summary in per_seed:
        paired = list(paired_rounds(summary, metric, treatment=treatment, baseline=baseline).values())
        n_rounds.append(len(paired))
        if not paired:
            reductions.append(None)
            round_reductions.append(None)
            differences.append(None)
            continue
        a, b = np.asarray(paired, np.float64).T
        differences.append(float(a.mean() - b.mean()))
        reductions.append(float(-(a.mean() / b.mean() - 1) * 100) if b.mean() != 0 else None)
        nonzero = b != 0
        round_reductions.append(float(-(np.mean(a[nonzero] / b[nonzero]) - 1) * 100) if nonzero.any() else None)
    reduction = seed_interval(reductions, level=level)
    round_reduction = seed_interval(round_reductions, level=level)
    return {"metric": metric, "treatment": treatment, "baseline": baseline, "n_seeds": len(per_seed),
            "per_seed_reduction_pct": reductions, "per_seed_round_reduction_pct": round_reductions,
            "per_seed_n_rounds": n_rounds, "per_seed_difference": differences, "reduction": reduction,
            "round_reduction": round_reduction, "difference": seed_interval(differences, level=level),
            "significant": reduction["significant"], "round_significant": round_reduction["significant"],
            "level": level}


def paired_rounds(summary: Sequence[Mapping], metric: str, *, treatment: str = "CT",
                  baseline: str = "BL") -> dict:
    """Returns {round: (treatment value, baseline value)} of `metric` for the rounds where both models have one."""
    values = {}
    for row in summary:
        if row["model"] in (treatment, baseline):
            values.setdefault(row["round"], {})[row["model"]] = row[metric]
    return {r: (v[treatment], v[baseline]) for r, v in values.items()
            if v.get(treatment) is not None and v.get(baseline) is not None}


def compare(summary: Sequence[Mapping], metric: str, *, treatment: str = "CT", baseline: str = "BL",
            n_boot: int = 2000, level: float = 0.99, seed: int = 0) -> dict:
    """Returns the paper's comparison of `metric` between two models over paired rounds, as plain data.

    reduction_pct = −(mean_j r_j − 1)·100 with r_j = treatment_j / baseline_j; se_pct = 100·sd_j(r_j);
    ci = the `level` percentile-bootstrap CI of mean_j(treatment_j − baseline_j); significant if it
    excludes 0, and None (with a note) below MIN_BOOTSTRAP_ROUNDS paired rounds, where such an interval does not
    hold its level. Rounds where either model has no value (or the baseline is 0) are left out; with no
    rounds left every figure is None and "note" says why. One paired round gives means and a reduction
    but no CI (a bootstrap of one value is that value) and so no significance. The rounds re-sample the test
    set for fixed models: for a claim about training, use `compare_seeds`.
    """
    paired = list(paired_rounds(summary, metric, treatment=treatment, baseline=baseline).values())
    out = {"metric": metric, "treatment": treatment, "baseline": baseline, "n_rounds": len(paired),
           "treatment_mean": None, "baseline_mean": None, "reduction_pct": None, "se_pct": None,
           "ci_low": None, "ci_high": None, "level": level, "significant": None, "note": ""}
    if not paired:
        out["note"] = "no round where both models have valid counterfactuals"
        return out
    a, b = np.array(paired, dtype=np.float64).T
    out.update(treatment_mean=float(a.mean()), baseline_mean=float(b.mean()))
    diff = a - b
    if len(diff) > 1:
        lo, hi = bootstrap_mean_ci(diff, level=level, n_boot=n_boot, seed=seed)
        out.update(ci_low=lo, ci_high=hi)
        if len(diff) >= MIN_BOOTSTRAP_ROUNDS:
            out["significant"] = bool(lo > 0 or hi < 0)
        else:
            out["note"] = (f"too few rounds ({len(diff)} < {MIN_BOOTSTRAP_ROUNDS}) for a percentile-bootstrap "
                           f"interval to hold its level: no significance")
    else:
        out["note"] = "one paired round: no confidence interval, so no significance"
    nonzero = b != 0
    if nonzero.any():
        ratio = a[nonzero] / b[nonzero]
        out["reduction_pct"] = float(-(ratio.mean() - 1) * 100)
        out["se_pct"] = float(100 * ratio.std(ddof=1)) if len(ratio) > 1 else None
    else:
        out["note"] = "the baseline is 0 in every round: no ratio"
    return out


def evaluate_model(apply_fn, params, x_test, y_test, *, key: jax.Array, epsilons: Sequence[float] | None = None,
                   attacks_to_run: Iterable[str] = ("fgsm", "pgd"), max_samples: int | None = 1000) -> dict:
    """Returns accuracy, F1 and robust-accuracy curves ({attack: {"epsilon": [...], "accuracy": [...]}})."""
    x_test = np.asarray(x_test, np.float32)
    y_test = np.asarray(y_test)
    if max_samples is not None and len(x_test) > max_samples:
        keep = np.random.default_rng(0).choice(len(x_test), max_samples, replace=False)
        x_test, y_test = x_test[keep], y_test[keep]
    out = {"accuracy": float(metrics.accuracy(apply_fn, params, x_test, y_test)),
           "f1": float(metrics.f1_score(apply_fn, params, x_test, y_test)), "n": int(len(x_test))}
    eps = attacks.DEFAULT_EPSILONS if epsilons is None else tuple(epsilons)
    for i, attack in enumerate(attacks_to_run):
        res = attacks.robust_accuracy(apply_fn, params, x_test, y_test, jax.random.fold_in(key, i), epsilons=eps,
                                      attack=attack)
        out[attack] = {"epsilon": [float(e) for e in res["epsilon"]], "accuracy": [float(a) for a in res["accuracy"]]}
    return out


def write_records(path: str, records: Sequence[Mapping]) -> str:
    """Writes records (list of flat dicts) to `path` as CSV (".csv") or JSON (otherwise) atomically; returns the path.

    A failed write (e.g. a full disk) raises `ctrain.storage.StorageError` and leaves the previous file whole.
    """
    if path.endswith(".csv"):
        fields = list(dict.fromkeys(k for r in records for k in r))
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: ("n/a" if v is None else v) for k, v in r.items()} for r in records)
        write_atomic(path, text.getvalue())
    else:
        write_json(path, list(records), indent=1, default=_json_default)
    return path


def _json_default(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    raise TypeError(f"cannot write {type(v).__name__} as JSON")
