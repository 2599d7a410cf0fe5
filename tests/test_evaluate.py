import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctrain import constraints as cons
from ctrain import evaluate
from ctrain.evaluate import (MIN_BOOTSTRAP_ROUNDS, PROTOCOL_SEARCH, ProtocolConfig, compare, compare_seeds,
                             evaluate_explainability, evaluate_model, seed_interval, subsample_mask, write_records)
from ctrain.search import calibrate_conformal

SMALL = ProtocolConfig(n_rounds=6, n_individuals=8, lambda_energy=(0.1, 1.0),
                       search=PROTOCOL_SEARCH.replace(max_steps=30, threshold=0.6), ip_samples=50, mmd_samples=10)


def _data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 2)).astype(np.float32) + np.where(y[:, None] == 1, 2.0, -2.0)
    return x, y


@pytest.fixture(scope="module")
def linear_models(linear):
    return {"BL": (linear, {"w": jnp.array([[-1.0, 1.0], [-1.0, 1.0]])}),
           "CT": (linear, {"w": jnp.array([[-3.0, 3.0], [-3.0, 3.0]])})}


def test_compare_reproduces_a_hand_computed_table():
    summary = [{"model": "CT", "round": r, "ip": a} for r, a in enumerate([1.0, 2.0, 3.0, None])]
    summary += [{"model": "BL", "round": r, "ip": b} for r, b in enumerate([2.0, 4.0, 4.0, 1.0])]
    out = compare(summary, "ip", n_boot=4000)
    ratios = np.array([0.5, 0.5, 0.75])
    assert out["n_rounds"] == 3  # round 3 has no CT value and is left out
    assert out["reduction_pct"] == pytest.approx(-(ratios.mean() - 1) * 100)
    assert out["se_pct"] == pytest.approx(100 * ratios.std(ddof=1))
    assert out["treatment_mean"] == pytest.approx(2.0) and out["baseline_mean"] == pytest.approx(10 / 3)
    # Differences are −1, −2, −1: every bootstrap mean lies in [−2, −1]; but 3 rounds cannot carry a 99% level.
    assert -2.0 <= out["ci_low"] <= out["ci_high"] <= -1.0
    assert out["significant"] is None and "too few rounds" in out["note"]
    many = [{"model": m, "round": r, "ip": (1.0 if m == "CT" else 2.0) + (r % 2)} for m in ("CT", "BL")
            for r in range(MIN_BOOTSTRAP_ROUNDS)]
    assert compare(many, "ip")["significant"] is True
    same = compare([{"model": m, "round": r, "ip": 1.0 + (r % 2)} for m in ("CT", "BL")
                    for r in range(MIN_BOOTSTRAP_ROUNDS)], "ip")
    assert same["reduction_pct"] == 0.0 and same["significant"] is False


def _null_summary(rng, n_rounds):
    # CT and BL drawn from one distribution: any significance is a false positive.
    return [{"model": m, "round": r, "ip": float(v)} for m in ("CT", "BL")
            for r, v in enumerate(rng.normal(10.0, 1.0, n_rounds))]


@pytest.mark.parametrize("n_rounds", [MIN_BOOTSTRAP_ROUNDS, ProtocolConfig().n_rounds])
def test_compare_keeps_its_level_on_null_data(n_rounds):
    rng = np.random.default_rng(0)
    trials = [compare(_null_summary(rng, n_rounds), "ip", n_boot=1000, seed=i)["significant"] for i in range(400)]
    assert None not in trials
    assert np.mean(trials) <= 0.02


def test_compare_refuses_significance_below_the_round_count_where_its_level_holds():
    rng = np.random.default_rng(1)
    for n_rounds in (2, 3, 4, MIN_BOOTSTRAP_ROUNDS - 1):
        out = compare(_null_summary(rng, n_rounds), "ip")
        assert out["significant"] is None and "too few rounds" in out["note"]
        assert out["ci_low"] is not None  # the interval is still reported, only not read as a test


def test_seed_interval_is_the_student_t_interval_of_the_mean():
    out = seed_interval([1.0, 2.0, 3.0], level=0.95)
    half = 4.302652729911275 * 1.0 / np.sqrt(3)  # t quantile 0.975 with 2 degrees of freedom; sd = 1
    assert out["n"] == 3 and out["mean"] == pytest.approx(2.0) and out["sd"] == pytest.approx(1.0)
    assert (out["low"], out["high"]) == pytest.approx((2.0 - half, 2.0 + half))
    assert out["significant"] is False
    assert seed_interval([5.0, 5.1, 4.9, 5.2, 5.0])["significant"] is True
    one = seed_interval([3.0, float("nan"), None])
    assert one["n"] == 1 and one["mean"] == 3.0 and one["low"] is None and one["significant"] is None
    with pytest.raises(ValueError, match="level"):
        seed_interval([1.0, 2.0], level=99)


def test_compare_seeds_reduces_each_seed_then_takes_the_interval_over_seeds():
    # Seed 0: CT means 1 vs BL 2 (reduction 50%); seed 1: 3 vs 4 (25%); seed 2: 2 vs 2 (0%).
    per_seed = [[{"model": "CT", "round": r, "ip": ct + d}, {"model": "BL", "round": r, "ip": bl + d}]
                for ct, bl in ((1.0, 2.0), (3.0, 4.0), (2.0, 2.0)) for d in (0.0,) for r in (0,)]
    per_seed[0] += [{"model": "CT", "round": 1, "ip": 1.5}, {"model": "BL", "round": 1, "ip": 3.0}]
    out = compare_seeds(per_seed, "ip", level=0.95)
    assert out["per_seed_reduction_pct"] == pytest.approx([50.0, 25.0, 0.0])
    assert out["per_seed_difference"] == pytest.approx([-1.25, -1.0, 0.0])
    assert out["reduction"]["mean"] == pytest.approx(25.0) and out["n_seeds"] == 3
    assert out["significant"] is out["reduction"]["significant"] is False


def test_compare_seeds_gives_the_papers_round_estimator_beside_the_ratio_of_means():
    # Seed 0, heavy-tailed ratio: rounds (T, B) = (1, 10), (1, 10), (2, 0.1): per-round reductions 90, 90, −1900,
    # mean −573.3...; the ratio of means is −(4 / 20.1 − 1)·100 = 80.1. Seed 1: (1, 2) and (3, 2), B = 0 in round 2
    # (left out of the round estimator only): per-round reductions 50 and −50, mean 0; ratio of means
    # −(4 / 4 − 1)·100 = 0 with the B = 0 round's T = 0 in it as well.
    rounds = {0: [(1.0, 10.0), (1.0, 10.0), (2.0, 0.1)], 1: [(1.0, 2.0), (3.0, 2.0), (0.0, 0.0)]}
    per_seed = [[{"model": m, "round": r, "ip": v} for r, (t, b) in enumerate(rows) for m, v in (("CT", t), ("BL", b))]
                for rows in rounds.values()]
    out = compare_seeds(per_seed, "ip", level=0.95)
    seed0 = (90.0 + 90.0 + -(2.0 / 0.1 - 1) * 100) / 3
    assert out["per_seed_round_reduction_pct"] == pytest.approx([seed0, 0.0])
    assert out["per_seed_reduction_pct"] == pytest.approx([-(4.0 / 20.1 - 1) * 100, 0.0])
    assert out["per_seed_n_rounds"] == [3, 3]
    assert out["round_reduction"]["mean"] == pytest.approx(seed0 / 2)
    assert out["round_reduction"]["sd"] == pytest.approx(np.std([seed0, 0.0], ddof=1))
    assert out["round_significant"] is out["round_reduction"]["significant"]
    # One seed's rounds: its round estimator is `compare`'s reduction_pct over those rounds.
    assert out["per_seed_round_reduction_pct"][0] == pytest.approx(compare(per_seed[0], "ip")["reduction_pct"])


def test_compare_seeds_keeps_its_level_on_null_data():
    # Each seed's models differ by a seed-level effect that is zero on average, plus round noise.
    rng = np.random.default_rng(2)
    hits = []
    for _ in range(1000):
        per_seed = []
        for _seed in range(5):
            effect = rng.normal(0.0, 0.5)
            per_seed.append([{"model": m, "round": r, "ip": float(10.0 + (effect if m == "CT" else 0.0) + e)}
                             for m in ("CT", "BL") for r, e in enumerate(rng.normal(0.0, 1.0, 20))])
        hits.append(compare_seeds(per_seed, "ip")["significant"])
    assert np.mean(hits) <= 0.02


def test_compare_draws_no_significance_from_one_paired_round():
    out = compare([{"model": "CT", "round": 0, "ip": 1.0}, {"model": "BL", "round": 0, "ip": 2.0}], "ip")
    assert out["n_rounds"] == 1 and out["reduction_pct"] == pytest.approx(50.0)
    assert out["ci_low"] is None and out["significant"] is None and "one paired round" in out["note"]


def test_compare_without_paired_rounds_reports_na_not_nan():
    out = compare([{"model": "CT", "round": 0, "ip": None}, {"model": "BL", "round": 0, "ip": 1.0}], "ip")
    assert out["n_rounds"] == 0 and out["reduction_pct"] is None and "no round" in out["note"]


def test_protocol_scores_both_models_and_is_deterministic(linear_models):
    x, y = _data()
    a = evaluate_explainability(linear_models, x, y, num_classes=2, protocol=SMALL)
    b = evaluate_explainability(linear_models, x, y, num_classes=2, protocol=SMALL)
    assert a["summary"] == b["summary"]
    assert len(a["rounds"]) == 2 * SMALL.n_rounds * len(SMALL.lambda_energy)
    for row in a["summary"]:
        assert row["validity"] is not None and 0 <= row["validity"] <= 1
        if row["cost"] is not None:
            assert row["cost"] > 0 and row["ip"] > 0
    other = evaluate_explainability(linear_models, x, y, num_classes=2, protocol=SMALL.__class__(**{**SMALL.__dict__,
                                                                                              "seed": 1}))
    assert other["summary"] != a["summary"]


def test_rounds_without_valid_counterfactuals_are_na(linear_models):
    x, y = _data()
    # T = 1 step of 1e-6: no counterfactual can cross the boundary
    frozen = ProtocolConfig(**{**SMALL.__dict__, "search": SMALL.search.replace(max_steps=1, step_size=1e-6)})
    res = evaluate_explainability({"BL": linear_models["BL"]}, x, y, num_classes=2, protocol=frozen)
    assert all(r["cost"] is None and r["ip"] is None and r["ip_star"] is None for r in res["summary"])
    assert all(r["validity"] == 0.0 for r in res["summary"])


def test_bad_protocol_input_raises(linear, linear_models):
    x, y = _data()
    with pytest.raises(ValueError, match="no samples of target class"):
        evaluate_explainability(linear_models, x[y == 0], y[y == 0], num_classes=2, protocol=SMALL)
    with pytest.raises(ValueError, match=r"x_test must be \(N, D\) and y_test \(N,\)"):
        evaluate_explainability(linear_models, x, y[:-1], num_classes=2, protocol=SMALL)
    with pytest.raises(ValueError, match="n_rounds must be an integer >= 1, got 0"):
        ProtocolConfig(n_rounds=0)
    with pytest.raises(ValueError, match="model 'BL' must be a tuple"):
        evaluate_explainability({"BL": linear}, x, y, num_classes=2, protocol=SMALL)


@pytest.mark.parametrize("field, value, message", [
    ("mmd_length_scale", 0.0, r"mmd_length_scale must be a finite number > 0 or 'median', got 0\.0"),
    ("mmd_length_scale", -5.0, r"mmd_length_scale must be a finite number > 0 .*got -5\.0"),
    ("mmd_length_scale", math.nan, r"mmd_length_scale must be .*got nan"),
    ("mmd_length_scale", math.inf, r"mmd_length_scale must be .*got inf"),
    ("mmd_length_scale", "mean", r"mmd_length_scale must be .*got 'mean'"),
    ("lambda_energy", (0.1, math.nan), r"lambda_energy must hold finite numbers >= 0, got nan"),
    ("lambda_energy", (1.0, -1.0), r"lambda_energy must hold finite numbers >= 0, got -1\.0"),
    ("lambda_energy", (math.inf,), r"lambda_energy must hold .*got inf"),
    ("lambda_energy", (), r"lambda_energy must be a non-empty sequence.*got \(\)"),
    ("search", PROTOCOL_SEARCH.replace(generator="wachter"), r"search\.generator: unknown generator 'wachter'"),
    ("search", PROTOCOL_SEARCH.replace(lambda_energy=1.0), r"search\.lambda_energy must stay 5\.0 \(set "
                                                           r"ProtocolConfig\.lambda_energy"),
    ("search", PROTOCOL_SEARCH.replace(epsilon=0.1), r"search\.epsilon must stay 0\.3 .*got 0\.1"),
    ("search", {"threshold": 0.9}, r"search must be a ctrain\.search\.SearchConfig"),
    ("n_individuals", 2.5, r"n_individuals must be an integer >= 1, got 2\.5"),
    ("mmd_samples", 1, r"mmd_samples must be an integer >= 2.*got 1"),
    ("seed", -1, r"seed must be an integer >= 0, got -1"),
])
def test_protocol_config_rejects_bad_values_naming_the_field_and_the_value(field, value, message):
    with pytest.raises(ValueError, match=message):
        ProtocolConfig(**{field: value})


def test_protocol_config_accepts_and_normalises_good_values():
    config = ProtocolConfig(lambda_energy=[1, 2.5], mmd_length_scale=2,
                            search=PROTOCOL_SEARCH.replace(threshold=0.5, lambda_cost=0))
    assert config.lambda_energy == (1.0, 2.5) and type(config.mmd_length_scale) is float
    assert ProtocolConfig(mmd_length_scale="median").mmd_length_scale == "median"
    hash(config)  # hashable: it can key caches


def test_protocol_search_is_the_references_whatever_the_library_defaults(linear_models):
    # The training-time SearchConfig defaults (units-aware, normalised steps) must not leak into the protocol.
    search = ProtocolConfig().search_config(1.0)
    assert (search.step_rule, search.units, search.categorical) == ("gradient", "absolute", "relaxed")
    x, y = _data()
    base = {**SMALL.__dict__, "lambda_energy": (1.0,), "n_rounds": 2}
    runs = {rule: evaluate_explainability({"CT": linear_models["CT"]}, x, y, num_classes=2,
                                          protocol=ProtocolConfig(**{**base,
                                                                     "search": SMALL.search.replace(step_rule=rule)}))
            for rule in ("gradient", "normalized")}
    assert runs["gradient"]["summary"] != runs["normalized"]["summary"]  # the field reaches the search


def test_subsample_mask_takes_all_or_a_uniform_subset_without_replacement():
    mask = np.zeros((4, 12), bool)
    mask[0] = True                        # 12 candidates, k = 5: a subset of 5
    mask[1, [2, 7, 9]] = True             # 3 candidates: all of them
    mask[3, [0, 1, 4, 5, 11]] = True      # exactly k: all of them
    rng = np.random.default_rng(0)
    index, keep = subsample_mask(rng, mask, 5)
    assert index.shape == keep.shape == (4, 5)
    assert keep.sum(1).tolist() == [5, 3, 0, 5]
    for r in range(4):
        chosen = index[r][keep[r]]
        assert len(set(chosen.tolist())) == len(chosen)  # without replacement
        assert mask[r, chosen].all()
    assert set(index[1][keep[1]].tolist()) == {2, 7, 9}
    assert set(index[3][keep[3]].tolist()) == {0, 1, 4, 5, 11}
    # Uniform: each of 10 candidates enters a 5-subset with probability 1/2 (s.e. 0.008 over 4000 draws); taking
    # the first 5 would give frequencies 1 and 0.
    wide = np.zeros((4000, 10), bool)
    wide[:] = True
    index, keep = subsample_mask(rng, wide, 5)
    frequency = np.bincount(index[keep], minlength=10) / 4000
    np.testing.assert_allclose(frequency, 0.5, atol=0.04)


def _spy(monkeypatch):
    """Records the inputs of every round-batched IP* computation and every search of the protocol."""
    seen = {"mmd": [], "explain": []}
    original_mmd, original_explain = evaluate._round_mmd2, evaluate.explain

    def mmd_spy(xs, mask, ys, length_scale):
        seen["mmd"].append(tuple(np.asarray(a) for a in (xs, mask, ys, length_scale)))
        return original_mmd(xs, mask, ys, length_scale)

    def explain_spy(*args, **kwargs):
        e = original_explain(*args, **kwargs)
        seen["explain"].append(e)
        return e

    monkeypatch.setattr(evaluate, "_round_mmd2", mmd_spy)
    monkeypatch.setattr(evaluate, "explain", explain_spy)
    return seen


def test_ip_star_subsamples_the_valid_counterfactuals_to_mmd_samples(linear_models, naive_mmd2, monkeypatch):
    x, y = _data()
    protocol = ProtocolConfig(n_rounds=4, n_individuals=12, lambda_energy=(1.0,),
                              search=PROTOCOL_SEARCH.replace(max_steps=30, threshold=0.6), ip_samples=20,
                              mmd_samples=5, mmd_length_scale=2.0)
    seen = _spy(monkeypatch)
    res = evaluate_explainability({"CT": linear_models["CT"]}, x, y, num_classes=2, protocol=protocol)
    (xs, mask, ys, scale), = seen["mmd"]
    (e,), j, n = seen["explain"], protocol.n_rounds, protocol.n_individuals
    assert xs.shape == (j, 5, 2) and ys.shape == (j, 5, 2) and mask.shape == (j, 5)
    np.testing.assert_array_equal(scale, 2.0)
    assert sum(rec["n_valid"] > 5 for rec in res["rounds"]) >= 2  # rounds with more valid CFs than mmd_samples
    for r, rec in enumerate(res["rounds"]):
        kept = xs[r][mask[r]]
        assert len(kept) == min(rec["n_valid"], 5)
        # Every kept row is one of this round's valid counterfactuals (factuals repeat, so values may too).
        valid_here = e.x_cf.reshape(j, n, 2)[r][e.valid.reshape(j, n)[r]]
        assert all(any((row == v).all() for v in valid_here) for row in kept)
        expected = max(naive_mmd2(kept, ys[r], 2.0), 0.0) if len(kept) >= 2 else None
        assert rec["ip_star"] == (None if expected is None else pytest.approx(expected, rel=1e-4, abs=1e-6))


def test_median_length_scale_is_the_median_distance_of_each_target_class(linear_models, naive_mmd2, monkeypatch):
    # Class 0: the corners of a square of side 2 (4 sides of 2, 2 diagonals of 2√2): median 2.
    # Class 1: a unit square: median 1.
    x = np.array([[-4, -4], [-2, -4], [-4, -2], [-2, -2], [3, 3], [4, 3], [3, 4], [4, 4]], np.float32)
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    base = dict(n_rounds=6, n_individuals=4, lambda_energy=(1.0,), search=PROTOCOL_SEARCH.replace(threshold=0.6),
                ip_samples=4, mmd_samples=3)
    seen = _spy(monkeypatch)
    res = evaluate_explainability({"CT": linear_models["CT"]}, x, y, num_classes=2,
                                  protocol=ProtocolConfig(**base, mmd_length_scale="median"))
    assert res["mmd_length_scales"] == {"0": pytest.approx(2.0), "1": pytest.approx(1.0)}
    (xs, mask, ys, scale), = seen["mmd"]
    targets = np.array([rec["target_class"] for rec in res["rounds"]])
    assert set(targets.tolist()) == {0, 1}
    np.testing.assert_allclose(scale, np.where(targets == 0, 2.0, 1.0), rtol=1e-6)
    for r, rec in enumerate(res["rounds"]):
        if mask[r].sum() >= 2:
            assert rec["ip_star"] == pytest.approx(max(naive_mmd2(xs[r][mask[r]], ys[r], scale[r]), 0.0),
                                                   rel=1e-4, abs=1e-6)
    # The median's own random stream leaves every other draw of the protocol as it was.
    fixed = evaluate_explainability({"CT": linear_models["CT"]}, x, y, num_classes=2,
                                    protocol=ProtocolConfig(**base, mmd_length_scale=1.0))
    strip = lambda rows: [{k: v for k, v in row.items() if k != "ip_star"} for row in rows]
    assert strip(fixed["rounds"]) == strip(res["rounds"])
    assert fixed["mmd_length_scales"] == {"0": 1.0, "1": 1.0}
    # A class whose points coincide has median distance 0: no kernel length scale, a clear error.
    x_same = x.copy()
    x_same[4:] = x_same[4]
    with pytest.raises(ValueError, match="class 1 is 0.0"):
        evaluate_explainability({"CT": linear_models["CT"]}, x_same, y, num_classes=2,
                                protocol=ProtocolConfig(**base, mmd_length_scale="median"))


def test_protocol_with_constraints_never_changes_an_immutable_feature(linear_models, monkeypatch):
    # Both features push the score, so an unconstrained search moves feature 0 too (checked below).
    x, y = _data()
    c = cons.make_constraints(2, immutable=[0], lower=np.array([-np.inf, -8.0]), upper=np.array([np.inf, 8.0]))
    seen = _spy(monkeypatch)
    res = evaluate_explainability(linear_models, x, y, num_classes=2, protocol=SMALL, constraints=c)
    assert len(seen["explain"]) == len(linear_models) * len(SMALL.lambda_energy)
    for e in seen["explain"]:
        np.testing.assert_array_equal(e.x_cf[:, 0], e.x[:, 0])  # bit for bit, in every counterfactual
        assert int(np.asarray(cons.violations(e.x_cf, e.x, c)["total"]).sum()) == 0
    assert all(rec["violations"] == 0.0 for rec in res["rounds"])
    assert all(row["violations"] == 0.0 for row in res["summary"])
    assert any(row["validity"] > 0.5 for row in res["summary"])  # feature 1 alone still reaches the target
    seen["explain"].clear()
    evaluate_explainability(linear_models, x, y, num_classes=2, protocol=SMALL)
    assert any(np.any(e.x_cf[:, 0] != e.x[:, 0]) for e in seen["explain"])


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # the 1e39 step, on purpose
def test_records_never_hold_nan_even_when_the_search_diverges(linear_models, monkeypatch):
    # Logits are NaN beyond |x| = 6 and huge steps overshoot there: such counterfactuals are invalid (argmax of
    # NaN logits would call some of them valid), and every metric is a finite float or None.
    def cliff(p, x):
        return jnp.where(jnp.max(jnp.abs(x), -1, keepdims=True) > 6, jnp.nan, x @ p["w"])

    x, y = _data()
    keep = np.abs(x).max(1) < 5
    x, y = x[keep], y[keep]
    models = {"cliff": (cliff, linear_models["BL"][1]), "CT": linear_models["CT"]}
    protocols = [ProtocolConfig(**{**SMALL.__dict__, "search": SMALL.search.replace(step_size=5.0, max_steps=3)}),
                 # inf in float32: x' = ±inf or NaN
                 ProtocolConfig(**{**SMALL.__dict__, "search": SMALL.search.replace(step_size=1e39)})]
    for protocol in protocols:
        seen = _spy(monkeypatch)
        res = evaluate_explainability(models, x, y, num_classes=2, protocol=protocol)
        for row in res["rounds"] + res["summary"]:
            for key, value in row.items():
                assert value is None or not isinstance(value, float) or math.isfinite(value), (key, value)
        j, n = protocol.n_rounds, protocol.n_individuals
        explained = iter(seen["explain"])
        for rec in res["rounds"]:
            if rec["round"] == 0:
                e = next(explained)
                usable = (e.valid & np.isfinite(e.p_target) & np.isfinite(e.x_cf).all(1)).reshape(j, n)
            if rec["n"]:
                assert rec["n_valid"] == int(usable[rec["round"]].sum())
    assert sum(rec["n_valid"] for rec in res["rounds"]) == 0  # every search diverged under the inf step


def test_protocol_passes_each_models_aux_to_its_generator(linear, linear_models):
    x, y = _data()
    quantile = calibrate_conformal(linear, linear_models["CT"][1], jnp.asarray(x[:100]), jnp.asarray(y[:100]), alpha=0.1)
    protocol = ProtocolConfig(**{**SMALL.__dict__, "search": SMALL.search.replace(generator="eccco"),
                                 "lambda_energy": (1.0,)})
    res = evaluate_explainability({"CT": (*linear_models["CT"], {"conformal_quantile": quantile})}, x, y, num_classes=2,
                                  protocol=protocol)
    assert any(row["validity"] for row in res["summary"])
    with pytest.raises(ValueError, match="needs aux"):
        evaluate_explainability({"CT": linear_models["CT"]}, x, y, num_classes=2, protocol=protocol)


def test_evaluate_model_and_record_files(linear, tmp_path):
    # logits (0, x·w) with w = (1, −2): the worst L∞ step of ε moves x·w by ‖w‖₁·ε = 3ε towards the boundary,
    # so a point flips iff |x·w| < 3ε. |x·w| ∈ {0.03, 0.09, 0.3, 0.6} per class, 3ε ∈ {0.15, 0.45}: 4 then 6 of 8
    # flip. PGD's 40 steps of 0.01 reach the corner of any ball with 2ε ≤ 0.4 from its random start.
    z = np.array([0.03, -0.03, 0.09, -0.09, 0.3, -0.3, 0.6, -0.6], np.float32)
    x, y = np.stack([z, np.zeros_like(z)], 1), (z > 0).astype(np.int32)
    params = {"w": jnp.array([[0.0, 1.0], [0.0, -2.0]])}
    out = evaluate_model(linear, params, x, y, key=jax.random.key(0), epsilons=(0.0, 0.05, 0.15))
    assert out["accuracy"] == 1.0 and out["f1"] == 1.0 and out["n"] == 8
    for attack in ("fgsm", "pgd"):
        assert out[attack]["epsilon"] == pytest.approx([0.0, 0.05, 0.15])
        assert out[attack]["accuracy"] == [1.0, 4 / 8, 2 / 8], attack
    csv_path = write_records(str(tmp_path / "r.csv"), [{"a": 1, "b": None}, {"a": 2, "c": 3.5}])
    text = open(csv_path).read().splitlines()
    assert text[0] == "a,b,c" and text[1] == "1,n/a," and text[2] == "2,,3.5"
    json_path = write_records(str(tmp_path / "r.json"), [{"a": np.float32(1.5)}])
    assert open(json_path).read().replace(" ", "").replace("\n", "") == '[{"a":1.5}]'


def test_progress_into_a_log_file_is_plain_lines_not_carriage_return_frames(linear_models):
    import io
    from ctrain.progress import PLAIN_LINES
    x, y = _data()
    log = io.StringIO()
    many = ProtocolConfig(n_rounds=2, n_individuals=4, lambda_energy=tuple(0.1 * i for i in range(1, 13)),
                          search=PROTOCOL_SEARCH.replace(max_steps=5), ip_samples=10, mmd_samples=4)
    evaluate_explainability(linear_models, x, y, num_classes=2, protocol=many, progress=log)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and 1 <= len(lines) <= PLAIN_LINES + 1
    assert lines[-1].startswith("evaluate search 24/24")
    with pytest.raises(TypeError, match="progress must be True, False or a text stream"):
        evaluate_explainability(linear_models, x, y, num_classes=2, protocol=many, progress="yes")
