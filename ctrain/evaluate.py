"""The paper's evaluation protocol: bootstrap rounds of test-time counterfactuals, and model robustness.

`evaluate_explainability` runs J rounds; each draws a factual class a and a target t ≠ a, then for
every model samples (with replacement) test points that *this model* predicts as a, generates their
counterfactuals with the test-time ECCo generator for each λ_energy, keeps the valid ones
(argmax = t), and averages cost, IP and IP* per round (first per λ_energy, then over λ_energy).
`compare` turns two models' per-round means into the paper's "% reduction ± s.e." with a 99%
percentile-bootstrap CI of the difference. Everything returns plain dicts; `write_records` stores them.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from typing import Iterable, Mapping, Sequence

import jax
import numpy as np

from ctrain import attacks, constraints as cons, metrics
from ctrain.search import SearchConfig, explain, predict


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
    """Settings of `evaluate_explainability` (defaults: reference §4.1, synthetic data)."""

    n_rounds: int = 100
    n_individuals: int = 250  # per round and per λ_energy
    lambda_energy: tuple[float, ...] = (0.1, 0.5, 1.0, 5.0, 10.0)
    generator: str = "ecco"
    lambda_cost: float = 0.0
    max_steps: int = 50
    step_size: float = 0.1
    threshold: float = 0.95
    ip_samples: int = 1000  # target-class test points (drawn with replacement) for IP
    mmd_samples: int = 100  # per side for IP*
    mmd_length_scale: float = 5.0  # the reference code's value (the paper's text says 0.5)
    chunk_size: int = 1024
    seed: int = 0

    def __post_init__(self):
        for name in ("n_rounds", "n_individuals", "max_steps", "ip_samples", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mmd_samples < 2:
            raise ValueError(f"mmd_samples must be >= 2, got {self.mmd_samples}")
        if not self.lambda_energy:
            raise ValueError("lambda_energy must list at least one value")

    def search_config(self, lambda_energy: float) -> SearchConfig:
        return SearchConfig(generator=self.generator, max_steps=self.max_steps, step_size=self.step_size,
                            threshold=self.threshold, lambda_cost=self.lambda_cost, lambda_energy=lambda_energy)


ROUND_METRICS = ("validity", "validity_strict", "cost", "ip", "ip_star", "energy_differential")


def _draw_rounds(rng: np.random.Generator, n_rounds: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    factual = rng.integers(0, num_classes, n_rounds)
    target = (factual + rng.integers(1, num_classes, n_rounds)) % num_classes  # uniform over t ≠ a
    return factual, target


def evaluate_explainability(models: Mapping[str, tuple], x_test, y_test, *, num_classes: int,
                            protocol: ProtocolConfig = ProtocolConfig(),
                            constraints: cons.Constraints | None = None, progress: bool = False) -> dict:
    """Returns {"rounds": per-(model, round, λ) records, "summary": per-(model, round) means, "protocol": ...}.

    models: name -> (apply_fn, params). x_test (N, D), y_test (N,). A round in which a model predicts
    no test point as the factual class, or finds no valid counterfactual, gets None ("n/a") for that
    model's metrics instead of NaN.
    """
    x_test = np.asarray(x_test, np.float32)
    y_test = np.asarray(y_test)
    if x_test.ndim != 2 or y_test.shape != x_test.shape[:1]:
        raise ValueError(f"x_test must be (N, D) and y_test (N,), got {x_test.shape} and {y_test.shape}")
    if not models:
        raise ValueError("pass at least one model")
    width = x_test.shape[1]
    constraints = cons.unconstrained(width) if constraints is None else constraints
    cons.check_width(constraints, width)
    rng = np.random.default_rng(protocol.seed)
    factual_class, target_class = _draw_rounds(rng, protocol.n_rounds, num_classes)
    by_class = {k: np.flatnonzero(y_test == k) for k in range(num_classes)}
    for t in np.unique(target_class):
        if len(by_class[t]) == 0:
            raise ValueError(f"the test set has no samples of target class {t}: IP and IP* are undefined")
    # Fixed reference samples per target class, shared by all models so their scores are comparable.
    ip_ref = {t: x_test[rng.choice(by_class[t], protocol.ip_samples, replace=True)] for t in by_class if len(by_class[t])}
    mmd_ref = np.stack([x_test[rng.choice(by_class[t], protocol.mmd_samples, replace=len(by_class[t]) < protocol.mmd_samples)]
                        for t in target_class])  # (J, m, D)
    n, j = protocol.n_individuals, protocol.n_rounds
    mmd_fn = jax.jit(jax.vmap(lambda xs, mask, ys: metrics.mmd2_unbiased_masked(
        xs, mask, ys, length_scale=protocol.mmd_length_scale)))

    records, summary = [], []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(models) * len(protocol.lambda_energy), desc="evaluate", unit="search")
    for name, (apply_fn, params) in models.items():
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
                        allow_same_class=True)
            valid = e.valid.reshape(j, n) & has_pool[:, None]
            cost = np.abs(e.x_cf - e.x).sum(-1).reshape(j, n)
            ip = np.zeros(j * n, np.float32)
            energy_diff = np.zeros(j * n, np.float32)
            for t in np.unique(target_class):
                rows = targets == t
                ip[rows] = np.asarray(metrics.implausibility(e.x_cf[rows], ip_ref[t]))
                energy_diff[rows] = np.asarray(metrics.energy_differential(
                    apply_fn, params, e.x_cf[rows], targets[rows], ip_ref[t][:50]))
            ip_star = np.asarray(mmd_fn(e.x_cf.reshape(j, n, width), valid, mmd_ref))
            strict = (e.p_target >= protocol.threshold).reshape(j, n)
            for r in range(j):
                v = valid[r]
                rec = {"model": name, "round": r, "lambda_energy": lam, "factual_class": int(factual_class[r]),
                       "target_class": int(target_class[r]), "n": n if has_pool[r] else 0, "n_valid": int(v.sum()),
                       "validity": float(v.mean()) if has_pool[r] else None,
                       "validity_strict": float(strict[r].mean()) if has_pool[r] else None,
                       "cost": metrics.mean_or_none(cost[r], v),
                       "ip": metrics.mean_or_none(ip.reshape(j, n)[r], v),
                       "ip_star": float(max(ip_star[r], 0.0)) if v.sum() >= 2 else None,  # clamped as the reference
                       "energy_differential": metrics.mean_or_none(energy_diff.reshape(j, n)[r], v)}
                per_lambda.append(rec)
            if bar is not None:
                bar.update(1)
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
    return {"rounds": records, "summary": summary, "protocol": dataclasses.asdict(protocol)}


def compare(summary: Sequence[Mapping], metric: str, *, treatment: str = "CT", baseline: str = "BL",
            n_boot: int = 2000, level: float = 0.99, seed: int = 0) -> dict:
    """Returns the paper's comparison of `metric` between two models over paired rounds, as plain data.

    reduction_pct = −(mean_j r_j − 1)·100 with r_j = treatment_j / baseline_j; se_pct = 100·sd_j(r_j);
    ci = the `level` percentile-bootstrap CI of mean_j(treatment_j − baseline_j); significant if it
    excludes 0. Rounds where either model has no value (or the baseline is 0) are left out; with no
    rounds left every figure is None and "note" says why.
    """
    values = {}
    for row in summary:
        if row["model"] in (treatment, baseline):
            values.setdefault(row["round"], {})[row["model"]] = row[metric]
    paired = [(v[treatment], v[baseline]) for v in values.values()
              if v.get(treatment) is not None and v.get(baseline) is not None]
    out = {"metric": metric, "treatment": treatment, "baseline": baseline, "n_rounds": len(paired),
           "treatment_mean": None, "baseline_mean": None, "reduction_pct": None, "se_pct": None,
           "ci_low": None, "ci_high": None, "significant": None, "note": ""}
    if not paired:
        out["note"] = "no round where both models have valid counterfactuals"
        return out
    a, b = np.array(paired, dtype=np.float64).T
    out.update(treatment_mean=float(a.mean()), baseline_mean=float(b.mean()))
    diff = a - b
    rng = np.random.default_rng(seed)
    boot = diff[rng.integers(0, len(diff), (n_boot, len(diff)))].mean(1)
    lo, hi = np.percentile(boot, [50 * (1 - level), 100 - 50 * (1 - level)])
    out.update(ci_low=float(lo), ci_high=float(hi), significant=bool(lo > 0 or hi < 0))
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
    """Writes records (list of flat dicts) to `path` as CSV (".csv") or JSON (otherwise); returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    if path.endswith(".csv"):
        fields = list(dict.fromkeys(k for r in records for k in r))
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows({k: ("n/a" if v is None else v) for k, v in r.items()} for r in records)
    else:
        with open(path, "w") as f:
            json.dump(list(records), f, indent=1, default=_json_default)
    return path


def _json_default(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    raise TypeError(f"cannot write {type(v).__name__} as JSON")
