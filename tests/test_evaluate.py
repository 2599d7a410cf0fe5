import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctrain.evaluate import ProtocolConfig, compare, evaluate_explainability, evaluate_model, write_records

SMALL = ProtocolConfig(n_rounds=6, n_individuals=8, lambda_energy=(0.1, 1.0), max_steps=30, threshold=0.6,
                       ip_samples=50, mmd_samples=10)


def linear(p, x):
    return x @ p["w"]


def _data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 2)).astype(np.float32) + np.where(y[:, None] == 1, 2.0, -2.0)
    return x, y


MODELS = {"BL": (linear, {"w": jnp.array([[-1.0, 1.0], [-1.0, 1.0]])}),
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
    # Differences are −1, −2, −1: every bootstrap mean lies in [−2, −1], so the CI excludes 0.
    assert -2.0 <= out["ci_low"] <= out["ci_high"] <= -1.0 and out["significant"] is True
    same = compare([{"model": m, "round": r, "ip": 1.0 + (r % 2)} for m in ("CT", "BL") for r in range(6)], "ip")
    assert same["reduction_pct"] == 0.0 and same["significant"] is False


def test_compare_without_paired_rounds_reports_na_not_nan():
    out = compare([{"model": "CT", "round": 0, "ip": None}, {"model": "BL", "round": 0, "ip": 1.0}], "ip")
    assert out["n_rounds"] == 0 and out["reduction_pct"] is None and "no round" in out["note"]


def test_protocol_scores_both_models_and_is_deterministic():
    x, y = _data()
    a = evaluate_explainability(MODELS, x, y, num_classes=2, protocol=SMALL)
    b = evaluate_explainability(MODELS, x, y, num_classes=2, protocol=SMALL)
    assert a["summary"] == b["summary"]
    assert len(a["rounds"]) == 2 * SMALL.n_rounds * len(SMALL.lambda_energy)
    for row in a["summary"]:
        assert row["validity"] is not None and 0 <= row["validity"] <= 1
        if row["cost"] is not None:
            assert row["cost"] > 0 and row["ip"] > 0
    other = evaluate_explainability(MODELS, x, y, num_classes=2, protocol=SMALL.__class__(**{**SMALL.__dict__,
                                                                                              "seed": 1}))
    assert other["summary"] != a["summary"]


def test_rounds_without_valid_counterfactuals_are_na():
    x, y = _data()
    frozen = ProtocolConfig(**{**SMALL.__dict__, "max_steps": 1, "step_size": 1e-6})  # cannot cross the boundary
    res = evaluate_explainability({"BL": MODELS["BL"]}, x, y, num_classes=2, protocol=frozen)
    assert all(r["cost"] is None and r["ip"] is None and r["ip_star"] is None for r in res["summary"])
    assert all(r["validity"] == 0.0 for r in res["summary"])


def test_bad_protocol_input_raises():
    x, y = _data()
    with pytest.raises(ValueError, match="no samples of target class"):
        evaluate_explainability(MODELS, x[y == 0], y[y == 0], num_classes=2, protocol=SMALL)
    with pytest.raises(ValueError, match=r"x_test must be \(N, D\) and y_test \(N,\)"):
        evaluate_explainability(MODELS, x, y[:-1], num_classes=2, protocol=SMALL)
    with pytest.raises(ValueError, match="n_rounds must be >= 1"):
        ProtocolConfig(n_rounds=0)


def test_evaluate_model_and_record_files(tmp_path):
    x, y = _data()
    out = evaluate_model(*MODELS["CT"], x, y, key=jax.random.key(0), epsilons=(0.0, 0.5))
    assert out["fgsm"]["accuracy"][0] == pytest.approx(out["accuracy"])  # ε = 0 is clean accuracy
    assert out["pgd"]["accuracy"][1] <= out["accuracy"]
    csv_path = write_records(str(tmp_path / "r.csv"), [{"a": 1, "b": None}, {"a": 2, "c": 3.5}])
    text = open(csv_path).read().splitlines()
    assert text[0] == "a,b,c" and text[1] == "1,n/a," and text[2] == "2,,3.5"
    json_path = write_records(str(tmp_path / "r.json"), [{"a": np.float32(1.5)}])
    assert open(json_path).read().replace(" ", "").replace("\n", "") == '[{"a":1.5}]'
