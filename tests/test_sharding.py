"""Data parallelism on 4 forced CPU devices (tests/conftest.py): pmap, jit + NamedSharding and one device agree,
the search runs per device without a per-iteration all-reduce, and the device benchmark writes its report."""
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from ctrain import sharding
from ctrain.models import make_model
from ctrain.objective import make_counterfactual_batch, positive_pool
from ctrain.search import SearchConfig, search_counterfactuals
from ctrain.sharding import (collective_counts, data_mesh, per_device_counterfactual_batch, per_device_search,
                             replicate, replicate_for_pmap, shard_batch, split_for_pmap, unreplicate)
from ctrain.train import TrainConfig, fit, make_train_epoch, make_train_step

SEARCH = SearchConfig(threshold=0.5, max_steps=20, step_size=0.5)
AXIS = "devices"


@pytest.fixture(autouse=True)
def _four_devices():
    assert jax.device_count() == 4, "tests/conftest.py forces 4 CPU devices"


def _max_diff(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# --- the train step on several devices -------------------------------------------------------------------------

def test_pmap_shard_map_sharded_and_single_device_steps_give_the_same_parameters(mlp_state, train_batch, moons):
    c = moons.constraints()
    pool = positive_pool(moons.x_train, moons.y_train, 2)
    config = TrainConfig(search=SEARCH)
    mesh = data_mesh()
    single_step = jax.jit(make_train_step(config, c))
    sharded_step = jax.jit(make_train_step(config, c, mesh=mesh))
    pmap_step = jax.pmap(make_train_step(config, c, axis_name=AXIS), axis_name=AXIS)
    # shard_map's own type checks (check_vma) would sum the gradient of the replicated params over the devices.
    shard_map_step = jax.jit(jax.shard_map(make_train_step(config, c, axis_name="data"), mesh=mesh,
                                           in_specs=(P(), P("data")), out_specs=P()))
    unsynced_step = jax.pmap(make_train_step(config, c), axis_name=AXIS)  # no axis name: replicas never average
    # Plain SGD: a gradient summed instead of averaged over the devices would move the parameters 4x as far
    # (Adam would hide that scale).
    new = lambda: mlp_state(tx=optax.sgd(0.5))
    single, sharded, mapped = new(), replicate(new(), mesh), new()
    replicas = unsynced = replicate_for_pmap(new(), 4)
    for i in range(3):
        batch = train_batch(moons, start=32 * i)
        # One precomputed counterfactual batch (16 factuals) for all paths, so they see the same data.
        cf = make_counterfactual_batch(single.apply_fn, single.params, batch["x"][:16], batch["y"][:16], pool,
                                       jax.random.key(i), SEARCH, c)
        assert float(cf.converged.mean()) > 0.2  # the counterfactual terms carry weight
        full = {**batch, "cf": cf}
        single, m1 = single_step(single, full)
        sharded, m4 = sharded_step(sharded, shard_batch(full, mesh))
        mapped, _ = shard_map_step(mapped, full)
        replicas, mp = pmap_step(replicas, split_for_pmap(full, 4))
        unsynced, _ = unsynced_step(unsynced, split_for_pmap(full, 4))
    assert _max_diff(single.params, new().params) > 1e-2  # the steps moved the parameters
    assert len(jax.tree.leaves(sharded.params)[0].sharding.device_set) == 4
    for params in (sharded.params, mapped.params, unreplicate(replicas.params)):
        chex.assert_trees_all_close(jax.device_get(params), jax.device_get(single.params), atol=1e-5)
    for name in ("loss", "clf", "div", "reg", "adv", "converged"):
        np.testing.assert_allclose(np.asarray(mp[name]), np.full(4, float(m1[name])), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(float(m4[name]), float(m1[name]), rtol=1e-5, atol=1e-6)
    for leaf in jax.tree.leaves(replicas.params):  # the replicas stay identical
        chex.assert_trees_all_equal(*[np.asarray(leaf)[d] for d in range(4)])
    # Without the axis name each replica follows its own shard's gradient: the issue this item fixes.
    assert max(_max_diff(unreplicate(unsynced.params), jax.tree.map(lambda a: a[d], unsynced.params))
               for d in range(1, 4)) > 1e-4


def test_pmap_per_batch_step_draws_per_device_and_keeps_replicas_identical(mlp_state, train_batch, moons):
    keys = jax.pmap(lambda i, k: jax.random.key_data(sharding.device_key(k, AXIS)), axis_name=AXIS,
                    in_axes=(0, None))(jnp.arange(4), jax.random.key(0))
    assert len({tuple(np.asarray(k)) for k in keys}) == 4  # four devices, four different keys
    pool = positive_pool(moons.x_train, moons.y_train, 2)
    step = jax.pmap(make_train_step(TrainConfig(search=SEARCH, ce_per_batch=4), moons.constraints(),
                                    axis_name=AXIS), axis_name=AXIS, in_axes=(0, {"x": 0, "y": 0, "pool": None}, None))
    replicas = replicate_for_pmap(mlp_state(), 4)
    for i in range(2):
        replicas, metrics = step(replicas, {**split_for_pmap(train_batch(moons, start=32 * i), 4), "pool": pool},
                                 jax.random.key(i))
    assert int(replicas.step[0]) == 2 and np.ptp(np.asarray(metrics["loss"])) == 0
    for leaf in jax.tree.leaves(replicas.params):
        chex.assert_trees_all_equal(*[np.asarray(leaf)[d] for d in range(4)])


def test_a_nonfinite_update_on_one_device_is_skipped_on_every_device(mlp_state, train_batch, moons):
    step = jax.pmap(make_train_step(TrainConfig(objective="vanilla"), axis_name=AXIS), axis_name=AXIS)
    batch = train_batch(moons)
    batch["x"] = batch["x"].at[20, 0].set(jnp.nan)  # row 20 lands on device 2 only
    replicas = replicate_for_pmap(mlp_state(), 4)
    new, metrics = step(replicas, split_for_pmap(batch, 4))
    np.testing.assert_array_equal(np.asarray(metrics["nonfinite"]), [1, 1, 1, 1])
    np.testing.assert_array_equal(np.asarray(new.skipped), [1, 1, 1, 1])
    chex.assert_trees_all_equal(jax.device_get(new.params), jax.device_get(replicas.params))


def test_pmap_helpers_and_their_errors():
    tree = {"a": jnp.arange(3.0)}
    assert replicate_for_pmap(tree, 4)["a"].shape == (4, 3)
    assert split_for_pmap({"x": jnp.zeros((8, 2))}, 4)["x"].shape == (4, 2, 2)
    assert unreplicate(replicate_for_pmap(tree, 4))["a"].shape == (3,)
    with pytest.raises(ValueError, match="does not split evenly over 4 devices"):
        split_for_pmap({"x": jnp.zeros((6, 2))}, 4)
    with pytest.raises(ValueError, match="axis_name .* or mesh .*not both"):
        make_train_step(TrainConfig(), axis_name=AXIS, mesh=data_mesh())
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        per_device_search("data")


def test_sharded_step_on_four_devices_matches_one_device(mlp_state, train_batch, moons):
    pool = positive_pool(moons.x_train, moons.y_train, 2)
    config = TrainConfig(search=SEARCH, ce_per_batch=16)
    mesh = data_mesh()
    step = jax.jit(make_train_step(config, moons.constraints()), donate_argnums=(0,))
    per_device = jax.jit(make_train_step(config, moons.constraints(), mesh=mesh), donate_argnums=(0,))
    single, sharded, searched_per_device = mlp_state(), replicate(mlp_state(), mesh), replicate(mlp_state(), mesh)
    pool_r = replicate(pool, mesh)
    for i in range(3):
        batch = train_batch(moons, start=32 * i)
        key = jax.random.key(i)
        single, m1 = step(single, {**batch, "pool": pool}, key)
        sharded, m4 = step(sharded, {**shard_batch(batch, mesh), "pool": pool_r}, key)
        searched_per_device, m5 = per_device(searched_per_device, {**shard_batch(batch, mesh), "pool": pool_r}, key)
    assert len(jax.tree.leaves(sharded.params)[0].sharding.device_set) == 4
    chex.assert_trees_all_close(jax.device_get(sharded.params), jax.device_get(single.params), atol=1e-5)
    chex.assert_trees_all_close(jax.device_get(searched_per_device.params), jax.device_get(single.params), atol=1e-5)
    np.testing.assert_allclose(m4["loss"], m1["loss"], atol=1e-5)
    np.testing.assert_allclose(m5["search_steps"], m1["search_steps"], atol=1e-6)
    with pytest.raises(ValueError, match="does not split evenly over 4 devices"):
        shard_batch(train_batch(moons, n=30), mesh)


@pytest.mark.parametrize("schedule,burnin", [("per_epoch", 0.0), ("per_batch", 0.5)])
def test_fit_sharded_matches_single_device(mlp_state, schedule, burnin, moons):
    small = moons.subsample(256, seed=0)
    cfg = TrainConfig(search=SEARCH, epochs=2, batch_size=32, n_ce=64, schedule=schedule, burnin=burnin)
    single, h1 = fit(mlp_state(), small, cfg, progress=False)
    sharded, h4 = fit(mlp_state(), small, cfg, progress=False, mesh=data_mesh())
    chex.assert_trees_all_close(jax.device_get(sharded.params), jax.device_get(single.params), atol=1e-5)
    assert h4[-1]["search_steps"] == pytest.approx(h1[-1]["search_steps"], abs=1e-6)


# --- the search on several devices -----------------------------------------------------------------------------

def _search_inputs(n=64, width=8):
    apply_fn, params = make_model("mlp", width, 2, jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(n, width)), jnp.float32)
    target = ((jnp.argmax(apply_fn(params, x), -1) + 1) % 2).astype(jnp.int32)
    return apply_fn, params, x, target


def test_per_device_search_equals_the_single_device_search():
    apply_fn, params, x, target = _search_inputs()
    config = SearchConfig(threshold=0.55, max_steps=60, step_size=0.5)
    mesh = data_mesh()
    one = search_counterfactuals(apply_fn, params, x, target, jax.random.key(0), config)
    steps = np.asarray(one.steps)
    # Rows stop at different steps and devices at different iterations: the case early exit is for.
    assert len(set(steps.tolist())) > 3 and len({steps[16 * d:16 * (d + 1)].max() for d in range(4)}) > 1
    search = per_device_search(mesh)
    jitted = jax.jit(lambda p, x, t, k: search(apply_fn, p, x, t, k, config))
    many = jitted(replicate(params, mesh), *shard_batch((x, target), mesh), jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(many.steps), steps)
    np.testing.assert_array_equal(np.asarray(many.converged), np.asarray(one.converged))
    chex.assert_trees_all_close(jax.device_get(many), jax.device_get(one), atol=1e-6)
    with pytest.raises(ValueError, match="rows of x.*does not split evenly over 4 devices"):
        search(apply_fn, params, x[:30], target[:30], jax.random.key(0), config)


def test_per_device_counterfactual_batch_equals_make_counterfactual_batch(mlp_state, train_batch, moons):
    # Guards the twin in ctrain.sharding against drifting from ctrain.objective.make_counterfactual_batch.
    state = mlp_state()
    pool = positive_pool(moons.x_train, moons.y_train, 2)
    batch = train_batch(moons, n=64)
    c = moons.constraints()
    args = (state.apply_fn, state.params, batch["x"], batch["y"], pool, jax.random.key(5), SEARCH, c)
    one = make_counterfactual_batch(*args)
    many = jax.jit(lambda *a: per_device_counterfactual_batch(data_mesh())(state.apply_fn, *a, SEARCH, c))(
        *args[1:6])
    chex.assert_trees_all_close(jax.device_get(many), jax.device_get(one), atol=1e-6)


def test_the_sharded_search_does_not_all_reduce_at_every_iteration(mlp_state, moons):
    apply_fn, params, x, target = _search_inputs()
    config = SearchConfig(threshold=0.6)
    mesh = data_mesh()
    args = (replicate(params, mesh), *shard_batch((x, target), mesh), jax.random.key(0))
    plain = jax.jit(lambda p, x, t, k: search_counterfactuals(apply_fn, p, x, t, k, config))
    search = per_device_search(mesh)
    ours = jax.jit(lambda p, x, t, k: search(apply_fn, p, x, t, k, config))
    before = collective_counts(plain.lower(*args).compile().as_text())
    after = collective_counts(ours.lower(*args).compile().as_text())
    assert before["in_loop_conditions"]["all-reduce"] >= 1  # "all converged?" all-reduced every iteration
    assert sum(after["total"].values()) == 0
    # The same inside a sharded CT epoch (per-epoch schedule). Left to XLA's partitioner, the epoch's search
    # runs whole on every device and each step gathers and permutes the counterfactual rows; per device, each
    # step's one collective is the all-reduce of its gradient and metrics.
    small = moons.subsample(256, seed=0)
    cfg = TrainConfig(search=SEARCH, epochs=1, batch_size=32, ce_per_batch=8)
    state, pool = replicate((mlp_state(), positive_pool(small.x_train, small.y_train, 2)), mesh)
    x_dev, y_dev = replicate((jnp.asarray(small.x_train), jnp.asarray(small.y_train)), mesh)
    epoch = jax.jit(make_train_epoch(cfg, small.constraints(), mesh=mesh), static_argnums=(6,))
    counts = collective_counts(epoch.lower(state, x_dev, y_dev, pool, jax.random.key(0), 0, True).compile().as_text())
    assert sum(counts["in_loop_conditions"].values()) == 0
    assert {op: n for op, n in counts["in_loop_bodies"].items() if n} == {"all-reduce": 1}


def test_collective_counts_reads_loop_conditions_and_bodies():
    text = """HloModule m

%cond (p: (s32[], f32[4])) -> pred[] {
  %ar = pred[] all-reduce(%x), to_apply=%and
  ROOT %r = pred[] and(%ar, %y)
}

%body (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %g = f32[4] all-gather(%v), dimensions={0}
  ROOT %t = (s32[], f32[4]) tuple(%i, %g)
}

%and (a: pred[], b: pred[]) -> pred[] {
  ROOT %c = pred[] and(%a, %b)
}

ENTRY %main (a: f32[4]) -> f32[4] {
  %w = (s32[], f32[4]) while(%init), condition=%cond, body=%body
  %s = f32[4] all-reduce-start(%a), to_apply=%and
  ROOT %o = f32[4] get-tuple-element(%w), index=1
}
"""
    counts = collective_counts(text)
    assert counts["total"]["all-reduce"] == 2 and counts["total"]["all-gather"] == 1
    assert counts["in_loop_conditions"]["all-reduce"] == 1 and counts["in_loop_conditions"]["all-gather"] == 0
    assert counts["in_loop_bodies"]["all-gather"] == 1 and counts["in_loop_bodies"]["all-reduce"] == 0


# --- the device benchmark --------------------------------------------------------------------------------------

def test_device_check_quick_writes_json_and_markdown_naming_the_device(tmp_path):
    from experiments.benchmarks import device_check
    out = device_check.main(["--quick", "--out", str(tmp_path), "--step-batch", "40", "--step-cases", "adult",
                             "--search-batch", "16", "--loop-samples", "2", "--matmul-n", "64",
                             "--widths", "2", "--ks", "2", "--many-epochs", "1", "--long-epochs", "2",
                             "--repeats", "1", "--subsample", "120", "--collective-programs", "search"])
    kind = jax.devices()[0].device_kind
    report = json.loads((tmp_path / "device_check.json").read_text())
    table = (tmp_path / "device_check.md").read_text()
    assert report["device"]["device_kind"] == kind and kind in table
    assert {"train_step", "search", "fit_many", "long_run", "collectives"} <= set(report)
    # The step is timed with both training searches; the default walk does T steps for every sample.
    assert [r["search"] for r in report["train_step"]] == ["stop at τ", "walk"]
    assert report["train_step"][1]["work_steps"] == TrainConfig().search.max_steps
    assert "| walk |" in table
    assert [r["k"] for r in report["fit_many"]] == [2] and report["long_run"]["epochs"] == 2
    assert report["collectives"]["search"]["per_device"]["in_loop_conditions"]["all-reduce"] == 0
    assert "| fit_many K |" in table and "| search | per device (shard_map) | none |" in table
    assert out["device"]["device_kind"] == kind
