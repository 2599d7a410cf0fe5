"""The search's warm start (x_init), which amortised chains (tests/test_chains.py) start from, and the cost benchmark."""
import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctrain import constraints as cons
from ctrain.search import SearchConfig, search_counterfactuals


def _linear(p, x):
    return x @ p["w"]


# --- the search's warm start ---------------------------------------------------------------------------------

def test_a_warm_start_that_is_already_mature_takes_no_step_and_is_returned_projected():
    # Class 1's logit is 2·x₀ (class 0's is 0); feature 2 is immutable and carries no weight.
    params = {"w": jnp.array([[0.0, 2.0], [0.0, 0.0], [0.0, 0.0]])}
    c = cons.make_constraints(3, immutable=(2,))
    config = SearchConfig(units="absolute", threshold=0.75, max_steps=10)
    x = jnp.array([[-1.0, 0.0, 5.0], [-0.5, 1.0, -2.0]])  # both predicted class 0
    x_init = jnp.array([[3.0, 1.0, -7.0], [2.0, 0.0, 9.0]])  # p(1) = σ(6), σ(4) >= τ; immutable column differs
    target = jnp.ones(2, jnp.int32)
    res = search_counterfactuals(_linear, params, x, target, jax.random.key(0), config, c, x_init=x_init)
    np.testing.assert_array_equal(res.steps, [0, 0])
    assert bool(res.converged.all())
    # Returned as given, with the immutable feature set back to the factual's.
    np.testing.assert_array_equal(res.x_cf, [[3.0, 1.0, 5.0], [2.0, 0.0, -2.0]])
    # The ε-ball of x_AE is the factual's: a start far outside it leaves x_AE at x.
    np.testing.assert_array_equal(res.x_ae, x)

    # From the factual (the default) the same search needs steps; x_init=x is exactly the default.
    cold = search_counterfactuals(_linear, params, x, target, jax.random.key(0), config, c)
    assert bool((cold.steps > 0).all())
    same = search_counterfactuals(_linear, params, x, target, jax.random.key(0), config, c, x_init=x)
    chex.assert_trees_all_equal(cold, same)
    with pytest.raises(ValueError, match="x_init"):
        search_counterfactuals(_linear, params, x, target, jax.random.key(0), config, c, x_init=x[:1])


# --- the cost benchmark --------------------------------------------------------------------------------------

def test_floor_ratio_counts_one_unit_per_bl_row_search_step_and_loss_pass():
    from experiments.benchmarks.ct_cost import floor_ratio
    # 250 counterfactuals per batch of 1,000, 8 search steps each plus 4 loss passes: 1 + 0.25·12 = 4 BL epochs.
    assert floor_ratio(250, 1000, 8.0) == pytest.approx(4.0)
    # no counterfactuals is BL itself; steps and counterfactuals add linearly
    assert floor_ratio(0, 1000, 30.0) == 1.0
    assert floor_ratio(500, 1000, 0.0) == pytest.approx(3.0)
    assert floor_ratio(100, 100, 26.0) - floor_ratio(100, 100, 16.0) == pytest.approx(10.0)


def test_ct_cost_quick_writes_its_json(tmp_path):
    out = tmp_path / "ct_cost.json"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # --quick with fewer epochs, rounds and variants still: the smoke run the benchmark suite makes, about a minute
    # on a quiet 2-core machine. The limit only stops a hung run: a loaded machine took more than 300 s.
    proc = subprocess.run([sys.executable, "-m", "experiments.benchmarks.ct_cost", "--quick", "--epochs", "2",
                           "--rounds", "1", "--individuals", "10", "--variants", "default", "amortised", "fewer",
                           "burnin",
                           "--json", str(out)], cwd=root, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [row["variant"] for row in result["rows"]] == ["default", "amortised", "fewer", "burnin"]
    # the amortised chains are advanced every epoch (their mean age grows past 1) and at most c steps each
    assert result["rows"][1]["chain_age"] > 1 and result["rows"][0]["chain_age"] is None
    assert result["rows"][1]["steps"] <= result["rows"][1]["chain_steps"] < result["rows"][0]["chain_steps"]
    # fewer searches a quarter of the default's counterfactuals per epoch; it is the default otherwise
    assert result["rows"][2]["n_ce"] == result["rows"][0]["n_ce"] // 4
    # burnin trains the first half of the epochs conventionally: those epochs search nothing
    assert [row["searched_epochs"] for row in result["rows"]] == [2, 2, 2, 1]
    for row in result["rows"]:
        # R*, from the row's own counts: m = ceil(n_ce / whole batches) counterfactuals per batch of B
        assert row["ce_per_batch"] >= 1 and row["batch_size"] > 0
        assert row["floor_ratio"] == pytest.approx(
            1 + row["ce_per_batch"] / row["batch_size"] * (row["steps"] + 4))
        # the last epoch's mature share is the last of the per-epoch shares, one per epoch
        assert len(row["mature_epochs"]) == row["epochs"] and row["mature_last"] == row["mature_epochs"][-1]
        assert 0 <= row["mature_last"] <= 1
        assert row["epoch_ratio"] > 0 and row["wall_s"] > 0 and 0 <= row["mature"] <= 1
        assert set(row["ip"]) >= {"mean", "low", "high"}
        assert len(row["skipped"]) == 2 and all(n == 0 for n in row["skipped"])
    assert "| dataset |" in proc.stdout and "| skipped |" in proc.stdout and "| R* |" in proc.stdout
    assert [entry["dataset"] for entry in result["load"]] == ["circles"]
    # the stored rows give the same table, and the trade-off figure, without training
    from experiments.benchmarks import ct_cost
    assert ct_cost.main(["--from-json", str(out), "--plot", str(tmp_path / "trade_off.png")]) == result
    assert (tmp_path / "trade_off.png").stat().st_size > 0
