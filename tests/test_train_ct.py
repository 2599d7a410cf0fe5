import io
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ctrain import constraints as cons
from ctrain.models import make_model
from ctrain.objective import (CounterfactualBatch, LossWeights, composite_loss, make_counterfactual_batch,
                              positive_pool, sample_positives)
from ctrain.search import SearchConfig
from ctrain.train import TrainConfig, create_train_state, fit, make_train_step

SEARCH = SearchConfig(threshold=0.5, max_steps=20, step_size=0.5)

SMALL_CFG = TrainConfig(search=SEARCH, epochs=3, batch_size=30, n_ce=60, shuffle=True)


@pytest.fixture(scope="module")
def small_moons():
    from ctrain.data import load_dataset
    return load_dataset("moons").subsample(240, seed=0)


def test_zero_ct_weights_equal_the_vanilla_step_exactly(mlp_state, train_batch, moons):
    zero = LossWeights(clf=1.0, div=0.0, reg=0.0, adv=0.0)
    c = moons.constraints()
    ct = jax.jit(make_train_step(TrainConfig(objective="full", search=SEARCH), c))
    vanilla = jax.jit(make_train_step(TrainConfig(objective="vanilla")))
    pool = positive_pool(moons.x_train, moons.y_train, 2)
    s_ct, s_bl, s_pb = mlp_state(weights=zero), mlp_state(weights=zero), mlp_state(weights=zero)
    for i in range(3):
        batch = train_batch(moons, start=32 * i)
        cf = make_counterfactual_batch(s_ct.apply_fn, s_ct.params, batch["x"], batch["y"], pool,
                                       jax.random.key(i), SEARCH, c)
        assert float(cf.converged.mean()) > 0  # there are counterfactual terms to ignore
        s_ct, m_ct = ct(s_ct, {**batch, "cf": cf}, None)
        s_bl, m_bl = vanilla(s_bl, batch)
        s_pb, m_pb = ct(s_pb, {**batch, "pool": pool}, jax.random.key(i))
        assert float(m_ct["loss"]) == float(m_bl["loss"]) == float(m_pb["loss"])
    # The losses are equal bit for bit; the parameters up to float32 rounding, because XLA orders the
    # bias-gradient sums differently when the program also holds the counterfactual forward pass.
    chex.assert_trees_all_close(s_ct.params, s_bl.params, rtol=1e-6, atol=1e-9)
    chex.assert_trees_all_close(s_pb.params, s_bl.params, rtol=1e-6, atol=1e-9)


def test_loss_terms_match_a_hand_computation(linear_apply):
    w = np.array([[1.0, -0.5], [0.25, 2.0]], np.float32)
    b = np.array([0.1, -0.2], np.float32)
    params = {"w": jnp.asarray(w), "b": jnp.asarray(b)}
    x, y = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32), np.array([0, 1])
    cf = CounterfactualBatch(
        x_cf=jnp.array([[0.5, 0.5], [1.0, 1.0]]), x_pos=jnp.array([[0.0, 2.0], [2.0, 0.0]]), target=jnp.array([1, 0]),
        x_ae=jnp.array([[0.9, 0.1], [0.1, 0.8]]), y=jnp.array([0, 1]), converged=jnp.ones(2, bool),
        steps=jnp.ones(2, jnp.int32), ae_moved=jnp.ones(2, bool), cf_in_ball=jnp.zeros(2, bool))
    weights = LossWeights(clf=1.0, div=0.5, reg=0.1, adv=0.25)
    loss, terms = composite_loss(params, linear_apply, jnp.asarray(x), jnp.asarray(y), cf, weights)

    def logits(v):
        return np.asarray(v) @ w + b

    def ce(lg, labels):
        lg = lg - lg.max(1, keepdims=True)
        return np.mean(np.log(np.exp(lg).sum(1)) - lg[np.arange(len(labels)), labels])

    t = np.array([1, 0])
    e_cf = -logits(cf.x_cf)[np.arange(2), t]
    e_pos = -logits(cf.x_pos)[np.arange(2), t]
    expected = {"clf": ce(logits(x), y), "div": np.mean(e_pos - e_cf), "reg": np.mean(e_pos ** 2 + e_cf ** 2),
                "adv": ce(logits(cf.x_ae), np.array([0, 1]))}
    for name, value in expected.items():
        np.testing.assert_allclose(terms[name], value, rtol=1e-5)
    total = expected["clf"] + 0.5 * expected["div"] + 0.1 * expected["reg"] + 0.25 * expected["adv"]
    np.testing.assert_allclose(loss, total, rtol=1e-5)


def test_protection_zeroes_the_divergence_gradient_on_protected_features(linear_apply):
    c = cons.make_constraints(3, immutable=[0], increase=[1])
    params = {"w": jnp.array([[1.0, -1.0], [0.5, 0.5], [2.0, 0.0]]), "b": jnp.zeros(2)}
    x_cf = jnp.array([[0.3, 1.0, 0.0], [0.2, 1.0, 1.0]])
    x_pos = cons.protect(jnp.array([[2.0, 3.0, 1.0], [-1.0, -2.0, 0.5]]), x_cf, c)
    np.testing.assert_array_equal(x_pos[:, 0], x_cf[:, 0])
    np.testing.assert_array_equal(x_pos[:, 1], [3.0, 1.0])  # increase-only: x⁺ := max(x', x⁺)
    cf = CounterfactualBatch(x_cf=x_cf, x_pos=x_pos, target=jnp.array([1, 1]), x_ae=x_cf, y=jnp.array([0, 0]),
                             converged=jnp.ones(2, bool), steps=jnp.ones(2, jnp.int32), ae_moved=jnp.ones(2, bool),
                             cf_in_ball=jnp.ones(2, bool))
    div_only = LossWeights(clf=0.0, div=1.0, reg=0.0, adv=0.0)
    div_grad = lambda batch: jax.grad(
        lambda p: composite_loss(p, linear_apply, x_cf, jnp.array([0, 0]), batch, div_only)[0])(params)["w"]
    grads = div_grad(cf)
    np.testing.assert_allclose(grads[0], 0.0, atol=1e-7)  # immutable feature: no pull (up to float rounding)
    assert float(jnp.abs(grads[2]).max()) > 0.1  # a free feature still carries the energy gap
    unprotected = div_grad(cf.replace(x_pos=jnp.array([[2.0, 3.0, 1.0], [-1.0, -2.0, 0.5]])))
    assert float(jnp.abs(unprotected[0]).max()) > 0.1  # without protection the immutable feature is pulled


def test_no_gradient_flows_through_the_search(mlp_state, train_batch, moons):
    state = mlp_state()
    pool = positive_pool(moons.x_train, moons.y_train, 2)
    batch = train_batch(moons)
    scan_search = SEARCH.replace(loop="scan")  # differentiable loop, so a leak would change the gradient
    c = moons.constraints()
    key = jax.random.key(3)

    def loss_with_search_inside(params):
        cf = make_counterfactual_batch(state.apply_fn, params, batch["x"], batch["y"], pool, key, scan_search, c)
        return composite_loss(params, state.apply_fn, batch["x"], batch["y"], cf, state.weights)[0]

    cf_const = make_counterfactual_batch(state.apply_fn, state.params, batch["x"], batch["y"], pool, key,
                                         scan_search, c)
    inside = jax.grad(loss_with_search_inside)(state.params)
    constant = jax.grad(lambda p: composite_loss(p, state.apply_fn, batch["x"], batch["y"], cf_const,
                                                 state.weights)[0])(state.params)
    chex.assert_trees_all_close(inside, constant, atol=0, rtol=0)


def test_same_seed_gives_identical_parameters_and_the_step_compiles_once(mlp_state, train_batch, moons):
    pool = positive_pool(moons.x_train, moons.y_train, 2)
    step = make_train_step(TrainConfig(search=SEARCH), moons.constraints())
    runs = []
    jitted = jax.jit(chex.assert_max_traces(step, n=1))
    init = mlp_state()
    for _ in range(2):
        state = init
        for i in range(5):
            state, _ = jitted(state, {**train_batch(moons, start=32 * i), "pool": pool}, jax.random.fold_in(
                jax.random.key(7), i))
        runs.append(state.params)
    chex.assert_trees_all_equal(*runs)
    other = mlp_state()
    jitted = jax.jit(step)
    for i in range(5):
        other, _ = jitted(other, {**train_batch(moons, start=32 * i), "pool": pool}, jax.random.fold_in(jax.random.key(8), i))
    assert not np.allclose(jax.tree.leaves(other.params)[0], jax.tree.leaves(runs[0])[0])


def test_resume_from_checkpoint_is_bit_identical(mlp_state, moons, tmp_path):
    small = moons.subsample(300, seed=0)
    cfg = TrainConfig(search=SEARCH, epochs=4, n_ce=100, checkpoint_every=1, shuffle=True)
    straight, hist = fit(mlp_state(), small, cfg, progress=False)
    fit(mlp_state(), small, cfg.replace(epochs=2), workdir=str(tmp_path), progress=False)
    resumed, hist2 = fit(mlp_state(), small, cfg, workdir=str(tmp_path), progress=False)
    chex.assert_trees_all_equal(resumed.params, straight.params)
    chex.assert_trees_all_equal(resumed.opt_state, straight.opt_state)
    assert [h["epoch"] for h in hist2] == [1, 2, 3, 4]
    assert (tmp_path / "history.jsonl").read_text().count("\n") == 4
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["dataset"] == small.name and run["config"]["seed"] == 0 and run["weights"]["reg"] == pytest.approx(0.1)
    assert run["optimizer"]["hyperparams"]["learning_rate"] == pytest.approx(1e-3) and "ctrain_version" in run


class _Interrupt(Exception):
    pass


def _interrupt_after(epoch):
    def log_fn(log):
        if log["epoch"] == epoch:
            raise _Interrupt
    return log_fn


def test_interrupted_run_with_burnin_resumes_bit_identically(mlp_state, small_moons, tmp_path):
    cfg = SMALL_CFG.replace(epochs=4, burnin=0.5, checkpoint_every=1)
    straight, _ = fit(mlp_state(), small_moons, cfg, progress=False)
    with pytest.raises(_Interrupt):
        fit(mlp_state(), small_moons, cfg, workdir=str(tmp_path), progress=False, log_fn=_interrupt_after(3))
    resumed, history = fit(mlp_state(), small_moons, cfg, workdir=str(tmp_path), progress=False)
    chex.assert_trees_all_equal(resumed.params, straight.params)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4] and "converged" not in history[0]
    # A shorter run would have ended its burn-in after 1 epoch, but the checkpoint trained 2 without CT.
    with pytest.raises(ValueError, match="burn-in"):
        fit(mlp_state(), small_moons, cfg.replace(epochs=4, burnin=0.25), workdir=str(tmp_path), progress=False)


@pytest.mark.parametrize("change,field", [
    (dict(config=SMALL_CFG.replace(seed=1)), "config.seed"),
    (dict(config=SMALL_CFG.replace(objective="energy")), "config.objective"),
    (dict(config=SMALL_CFG.replace(search=SEARCH.replace(threshold=0.9))), "config.search.threshold"),
    (dict(weights=LossWeights(reg=0.5)), "weights.reg"),
    (dict(learning_rate=1e-2), "optimizer.hyperparams.learning_rate"),
    (dict(data="other"), "data_fingerprint"),
    (dict(model_seed=1), None),  # other initial parameters of the same model: the same run may continue
])
def test_a_workdir_refuses_to_resume_a_different_run(mlp_state, change, field, small_moons, tmp_path):
    from ctrain.checkpoint import RunMismatchError
    fit(mlp_state(), small_moons, SMALL_CFG.replace(epochs=2), workdir=str(tmp_path), progress=False)
    change = dict(change)
    config = change.pop("config", SMALL_CFG)
    data = small_moons.subsample(240, seed=1) if change.pop("data", None) else small_moons
    state = mlp_state(seed=change.pop("model_seed", 0), **change)
    if field is None:
        fit(state, data, config, workdir=str(tmp_path), progress=False)
        return
    with pytest.raises(RunMismatchError, match=rf"different run .*{field}: checkpoint has"):
        fit(state, data, config, workdir=str(tmp_path), progress=False)


def test_asking_for_fewer_epochs_than_checkpointed_is_refused(mlp_state, small_moons, tmp_path):
    fit(mlp_state(), small_moons, SMALL_CFG, workdir=str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="checkpoint at epoch 3 but this run asks for epochs=2"):
        fit(mlp_state(), small_moons, SMALL_CFG.replace(epochs=2), workdir=str(tmp_path), progress=False)
    (tmp_path / "run.json").unlink()
    with pytest.raises(ValueError, match="no run.json"):
        fit(mlp_state(), small_moons, SMALL_CFG, workdir=str(tmp_path), progress=False)


def _damage(folder):
    files = [p for p in folder.rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    for p in files:
        p.write_bytes(b"\0" * 7)


def test_a_corrupt_latest_checkpoint_falls_back_to_the_older_intact_one(mlp_state, small_moons, tmp_path):
    cfg = SMALL_CFG.replace(epochs=4, checkpoint_every=1)
    straight, _ = fit(mlp_state(), small_moons, cfg, progress=False)
    fit(mlp_state(), small_moons, cfg.replace(epochs=3), workdir=str(tmp_path), progress=False)
    _damage(tmp_path / "checkpoints" / "3")
    with pytest.warns(UserWarning, match=r"skipped unreadable checkpoint.*checkpoints/3.*resuming from epoch 2"):
        resumed, history = fit(mlp_state(), small_moons, cfg, workdir=str(tmp_path), progress=False)
    chex.assert_trees_all_equal(resumed.params, straight.params)  # epochs 3 and 4 retrained from epoch 2
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    _damage(tmp_path / "checkpoints" / "4")
    _damage(tmp_path / "checkpoints" / "3")
    with pytest.raises(ValueError, match=rf"no intact checkpoint in {tmp_path}.*checkpoints/4"):
        fit(mlp_state(), small_moons, cfg, workdir=str(tmp_path), progress=False)


def test_resuming_a_damaged_workdir_prints_no_stray_tracebacks(tmp_path):
    import subprocess
    import sys
    script = f"""
import jax, warnings
from ctrain.data import load_dataset
from ctrain.models import make_model
from ctrain.search import SearchConfig
from ctrain.train import TrainConfig, create_train_state, fit
data = load_dataset("moons").subsample(120, seed=0)
cfg = TrainConfig(search=SearchConfig(threshold=0.5), epochs=2, n_ce=30, checkpoint_every=1)
new = lambda: create_train_state(*make_model("mlp", 2, 2, jax.random.key(0)))
fit(new(), data, cfg, workdir={str(tmp_path)!r}, progress=False)
import pathlib
for p in pathlib.Path({str(tmp_path)!r}, "checkpoints", "2").rglob("*"):
    if p.is_file() and p.parent.name == "d":
        p.write_bytes(b"0")
warnings.simplefilter("ignore")
fit(new(), data, cfg.replace(epochs=3), workdir={str(tmp_path)!r}, progress=False)
print("finished")
"""
    # The limit only stops a hung run; a loaded 2-core machine may take minutes.
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0 and "finished" in out.stdout, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]


def test_nan_input_is_reported_and_not_trained_on(mlp_state, train_batch, moons):
    pool = positive_pool(moons.x_train, moons.y_train, 2)
    step = jax.jit(make_train_step(TrainConfig(search=SEARCH), moons.constraints()))
    state = mlp_state()
    batch = train_batch(moons)
    batch["x"] = batch["x"].at[3, 1].set(jnp.nan)
    new, metrics = step(state, {**batch, "pool": pool}, jax.random.key(0))
    assert int(metrics["nonfinite"]) == 1 and int(new.skipped) == 1
    chex.assert_trees_all_equal(new.params, state.params)
    import dataclasses
    bad = dataclasses.replace(moons, x_train=moons.x_train.copy())
    object.__setattr__(bad, "x_train", np.where(np.arange(len(bad.x_train))[:, None] == 5, np.nan, bad.x_train))
    with pytest.raises(ValueError, match="NaN"):
        fit(mlp_state(), bad, TrainConfig(epochs=1), progress=False)


def test_positives_are_drawn_from_the_target_class(moons):
    pool = positive_pool(moons.x_train, moons.y_train, 2)
    target = jnp.array([0, 1] * 200)
    xp = sample_positives(jax.random.key(0), pool, target)
    members = {k: {tuple(r) for r in moons.x_train[moons.y_train == k]} for k in (0, 1)}
    assert all(tuple(np.asarray(r)) in members[int(t)] for r, t in zip(xp, target))
    assert len({tuple(np.asarray(r)) for r in xp}) > 300  # drawn with spread, not one fixed sample
    with pytest.raises(ValueError, match=r"classes \[2\] have no training samples"):
        positive_pool(moons.x_train, moons.y_train, 3)


def test_ablation_objectives_drop_their_terms(moons):
    from ctrain.objective import objective_weights
    w = LossWeights()
    assert float(objective_weights("energy", w).adv) == 0.0 and float(objective_weights("energy", w).div) == 0.5
    assert float(objective_weights("adversarial", w).div) == 0.0 and float(objective_weights("adversarial", w).reg) == 0
    assert float(objective_weights("adversarial", w).adv) == 0.25
    with pytest.raises(ValueError, match="unknown objective"):
        TrainConfig(objective="contrastive")


@pytest.mark.parametrize("schedule", ["per_epoch", "per_batch"])
def test_ct_on_circles_keeps_accuracy_within_two_points(mlp_state, schedule):
    from ctrain.data import load_dataset
    data = load_dataset("circles")
    base = TrainConfig(epochs=40, shuffle=True, search=SearchConfig(threshold=0.5))
    _, bl = fit(mlp_state(), data, base.replace(objective="vanilla"), progress=False)
    _, ct = fit(mlp_state(weights=LossWeights(reg=0.5)), data, base.replace(schedule=schedule), progress=False)
    assert ct[-1]["converged"] > 0.2 and ct[-1]["nonfinite"] == 0
    assert ct[-1]["test_accuracy"] >= bl[-1]["test_accuracy"] - 0.02


def test_many_runs_in_one_vmapped_program_match_single_runs(moons):
    from ctrain.train import create_train_states, fit_many
    small = moons.subsample(600, seed=1)
    cfg = TrainConfig(epochs=2, search=SEARCH, n_ce=200, shuffle=True)
    apply_fn, _ = make_model("mlp", 2, 2, jax.random.key(0))
    inits = [make_model("mlp", 2, 2, jax.random.key(s))[1] for s in (3, 4)]
    lambda_reg = jnp.array([0.1, 0.5])  # a hyperparameter grid rides along as a vmapped leaf
    states = create_train_states(apply_fn, jax.tree.map(lambda *a: jnp.stack(a), *inits),
                                 weights=LossWeights(reg=lambda_reg))
    many, histories = fit_many(states, small, cfg, seeds=[3, 4], progress=False)
    for i, seed in enumerate((3, 4)):
        one, history = fit(create_train_state(apply_fn, inits[i], weights=LossWeights(reg=float(lambda_reg[i]))),
                           small, cfg.replace(seed=seed), progress=False)
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[i], many.params), one.params, atol=1e-5)
        # Relative, as a float32 loss of about 0.5 accumulated over a vmapped and a single program can differ there.
        assert histories[i][-1]["loss"] == pytest.approx(history[-1]["loss"], rel=1e-4)
        assert histories[i][-1]["test_accuracy"] == pytest.approx(history[-1]["test_accuracy"], abs=1e-6)
    assert not np.allclose(jax.tree.leaves(many.params)[0][0], jax.tree.leaves(many.params)[0][1])
    with pytest.raises(ValueError, match="3 seeds given for 2 stacked states"):
        fit_many(states, small, cfg, seeds=[1, 2, 3], progress=False)


# --- every setting changes what runs ----------------------------------------------------------------------

def _fit_params(mlp_state, data, config=SMALL_CFG, **state_kwargs):
    state, history = fit(mlp_state(**state_kwargs), data, config, progress=False)
    return state.params, history


@pytest.fixture(scope="module")
def reference_run(mlp_state, small_moons):
    return _fit_params(mlp_state, small_moons)


SETTINGS = {
    "lambda_clf": dict(weights=LossWeights(clf=2.0)),
    "lambda_div": dict(weights=LossWeights(div=2.0)),
    "lambda_reg": dict(weights=LossWeights(reg=2.0)),
    "lambda_adv": dict(weights=LossWeights(adv=2.0)),
    "learning_rate": dict(learning_rate=1e-2),
    "objective": dict(config=SMALL_CFG.replace(objective="energy")),
    "schedule": dict(config=SMALL_CFG.replace(schedule="per_batch")),
    "burnin": dict(config=SMALL_CFG.replace(burnin=0.5)),
    "n_ce": dict(config=SMALL_CFG.replace(n_ce=120)),
    "batch_size": dict(config=SMALL_CFG.replace(batch_size=40)),
    "shuffle": dict(config=SMALL_CFG.replace(shuffle=False)),
    "seed": dict(config=SMALL_CFG.replace(seed=1)),
    "search.threshold": dict(config=SMALL_CFG.replace(search=SEARCH.replace(threshold=0.9))),
}


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_every_setting_changes_the_trained_parameters(mlp_state, setting, small_moons, reference_run):
    params, history = _fit_params(mlp_state, small_moons, **SETTINGS[setting])
    ref_params, ref_history = reference_run
    assert ref_history[-1]["converged"] > 0.2  # the reference run's counterfactuals mature: λ_div has work to do
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)))
    assert diff > 1e-4, f"{setting} did not change the trained parameters"


def test_train_config_refuses_the_settings_the_state_owns(mlp_state):
    with pytest.raises(TypeError, match=r"lambda_reg.*create_train_state\(\.\.\., weights=LossWeights\(reg="):
        TrainConfig(objective="full", lambda_reg=0.5)
    with pytest.raises(TypeError, match="learning_rate"):
        TrainConfig(learning_rate=1e-2)
    with pytest.raises(ValueError, match="λ_reg must be finite and >= 0"):
        mlp_state(weights=LossWeights(reg=float("nan")))
    with pytest.raises(ValueError, match="λ_div must be finite and >= 0"):
        mlp_state(weights=LossWeights(div=-1.0))
    with pytest.raises(ValueError, match="learning_rate must be finite and > 0"):
        mlp_state(learning_rate=float("inf"))
    with pytest.raises(ValueError, match="either tx .* or learning_rate"):
        mlp_state(learning_rate=0.1, tx=optax.sgd(0.1))
    for bad in (dict(epochs=0), dict(epochs=2.5), dict(batch_size=True), dict(burnin=1.0), dict(seed=-1),
                dict(n_ce=0), dict(schedule="per_step"), dict(shuffle="false")):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def test_a_hand_written_loop_trains_with_exactly_the_states_weights_and_optimiser(train_batch, moons):
    """One SGD step of make_train_step equals params − lr·∇(composite loss with the state's λ's), for two λ settings."""
    batch = train_batch(moons)
    pool = positive_pool(moons.x_train, moons.y_train, 2)
    c = moons.constraints()
    apply_fn, params = make_model("mlp", 2, 2, jax.random.key(0))
    cf = make_counterfactual_batch(apply_fn, params, batch["x"], batch["y"], pool, jax.random.key(1), SEARCH, c)
    assert float(cf.converged.mean()) > 0.2
    step = jax.jit(make_train_step(TrainConfig(search=SEARCH), c))
    results = []
    for weights, lr in ((LossWeights(reg=0.1), 0.05), (LossWeights(div=2.0, reg=5.0, adv=1.0), 0.2)):
        state = create_train_state(apply_fn, params, weights=weights, tx=optax.sgd(lr))
        new, _ = step(state, {**batch, "cf": cf})
        grads = jax.grad(lambda p: composite_loss(p, apply_fn, batch["x"], batch["y"], cf, weights)[0])(params)
        chex.assert_trees_all_close(new.params, jax.tree.map(lambda p, g: p - lr * g, params, grads),
                                    rtol=1e-5, atol=1e-6)
        results.append(new.params)
    assert not np.allclose(jax.tree.leaves(results[0])[0], jax.tree.leaves(results[1])[0])


def test_fit_many_varies_learning_rates_and_lambdas_per_run(small_moons):
    from ctrain.train import create_train_states, fit_many, learning_rate_of
    apply_fn, params = make_model("mlp", 2, 2, jax.random.key(0))
    stacked = jax.tree.map(lambda a: jnp.stack([a, a, a]), params)
    lrs = jnp.array([1e-3, 1e-2, 1e-3])
    weights = LossWeights(reg=jnp.array([0.1, 0.1, 2.0]))
    states = create_train_states(apply_fn, stacked, weights=weights, learning_rate=lrs)
    np.testing.assert_allclose(learning_rate_of(states), lrs)
    many, _ = fit_many(states, small_moons, SMALL_CFG, seeds=[0, 0, 0], progress=False)
    for i, (lr, reg) in enumerate(((1e-3, 0.1), (1e-2, 0.1), (1e-3, 2.0))):
        one, _ = fit(create_train_state(apply_fn, params, weights=LossWeights(reg=reg), learning_rate=lr),
                     small_moons, SMALL_CFG, progress=False)
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[i], many.params), one.params, atol=1e-5)
    first = jax.tree.leaves(many.params)[0]
    assert not np.allclose(first[0], first[1]) and not np.allclose(first[0], first[2])
    with pytest.raises(ValueError, match="λ_reg has 2 values for 3 stacked runs"):
        create_train_states(apply_fn, stacked, weights=LossWeights(reg=jnp.array([0.1, 0.2])))


# --- model, data and targets agree -----------------------------------------------------------------------

@pytest.mark.parametrize("outputs,classes", [(1, 2), (3, 2)])
def test_a_model_whose_outputs_differ_from_the_classes_is_refused_before_training(mlp_state, outputs, classes, small_moons):
    from ctrain.train import create_train_states, fit_many
    if outputs == 1:
        apply_fn, params = (lambda p, x: x @ p["w"]), {"w": jnp.ones((2, 1))}
        state = create_train_state(apply_fn, params)
        with pytest.raises(ValueError, match="1 logit per row; ctrain needs one logit per class"):
            fit(state, small_moons, SMALL_CFG, progress=False)
        return
    state = mlp_state(classes=outputs)
    with pytest.raises(ValueError, match="3 logits per row but the data has 2 classes"):
        fit(state, small_moons, SMALL_CFG, progress=False)
    apply_fn, params = make_model("mlp", 2, 3, jax.random.key(0))
    states = create_train_states(apply_fn, jax.tree.map(lambda a: a[None], params))
    with pytest.raises(ValueError, match="3 logits per row but the data has 2 classes"):
        fit_many(states, small_moons, SMALL_CFG, seeds=[0], progress=False)


def test_three_class_data_on_a_two_class_model_is_refused(mlp_state):
    from ctrain.data import from_arrays
    rng = np.random.default_rng(0)
    data = from_arrays(rng.normal(size=(150, 2)), np.arange(150) % 3, seed=0)
    with pytest.raises(ValueError, match="2 logits per row but the data has 3 classes"):
        fit(mlp_state(), data, SMALL_CFG.replace(epochs=1), progress=False)


def test_fit_handles_an_empty_test_split(mlp_state, small_moons):
    import dataclasses
    no_test = dataclasses.replace(small_moons, x_test=small_moons.x_test[:0], y_test=small_moons.y_test[:0])
    _, history = fit(mlp_state(), no_test, SMALL_CFG.replace(epochs=2), progress=True)
    assert "test_accuracy" not in history[-1] and "train_accuracy" in history[-1]


# --- many runs in chunks, progress without a terminal --------------------------------------------------------

def test_fit_many_in_chunks_equals_one_program(small_moons):
    from ctrain.train import create_train_states, fit_many
    apply_fn, _ = make_model("mlp", 2, 2, jax.random.key(0))
    inits = [make_model("mlp", 2, 2, jax.random.key(s))[1] for s in range(3)]
    states = create_train_states(apply_fn, jax.tree.map(lambda *a: jnp.stack(a), *inits),
                                 weights=LossWeights(reg=jnp.array([0.1, 0.5, 1.0])))
    cfg = SMALL_CFG.replace(epochs=2)
    whole, h_whole = fit_many(states, small_moons, cfg, seeds=[0, 1, 2], progress=False)
    chunked, h_chunked = fit_many(states, small_moons, cfg, seeds=[0, 1, 2], progress=False, max_runs_per_program=2)
    chex.assert_trees_all_close(chunked.params, whole.params, atol=1e-6)
    chex.assert_trees_all_equal(chunked.step, whole.step)
    assert jax.tree.leaves(chunked.params)[0].shape[0] == 3  # the padding run is dropped
    for a, b in zip(h_whole, h_chunked):
        assert [h["epoch"] for h in b] == [1, 2]
        assert b[-1]["loss"] == pytest.approx(a[-1]["loss"], abs=1e-6)
        assert b[-1]["converged"] == pytest.approx(a[-1]["converged"], abs=1e-6)
    with pytest.raises(ValueError, match="max_runs_per_program must be an integer >= 1"):
        fit_many(states, small_moons, cfg, seeds=[0, 1, 2], progress=False, max_runs_per_program=0)


def test_runs_per_program_halves_k_until_the_program_fits():
    from ctrain.train import runs_per_program
    per_run, fixed = 1_000, 500
    need = lambda c: fixed + per_run * c
    assert runs_per_program(1000, need, None) == 1000  # no memory limit reported (CPU): one program
    assert runs_per_program(1000, need, 10_000_000) == 1000
    c = runs_per_program(1000, need, 100_000)
    assert need(c) <= 0.9 * 100_000 and need(2 * c) > 0.9 * 100_000 and c == 63
    assert runs_per_program(1000, need, 10) == 1  # never below one run


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self._tty = tty

    def isatty(self):
        return self._tty


def test_progress_to_a_file_is_one_plain_line_per_due_epoch(mlp_state, small_moons):
    from ctrain.progress import PLAIN_LINES
    from ctrain.train import create_train_states, fit_many
    vanilla = SMALL_CFG.replace(objective="vanilla")
    log = _Stream(tty=False)
    fit(mlp_state(), small_moons, vanilla.replace(epochs=3), progress=log)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 3
    assert lines[0].startswith(f"{small_moons.name}/vanilla epoch 1/3  loss ") and "s/epoch" in lines[0]
    long = _Stream(tty=False)
    fit(mlp_state(), small_moons, vanilla.replace(epochs=25), progress=long)
    epochs = [int(line.split(" epoch ")[1].split("/")[0]) for line in long.getvalue().splitlines()]
    assert epochs == [3, 6, 9, 12, 15, 18, 21, 24, 25] and len(epochs) <= PLAIN_LINES + 1
    apply_fn, params = make_model("mlp", 2, 2, jax.random.key(0))
    many = _Stream(tty=False)
    fit_many(create_train_states(apply_fn, jax.tree.map(lambda a: jnp.stack([a, a]), params)), small_moons,
             vanilla.replace(epochs=2), seeds=[0, 1], progress=many)
    assert "\r" not in many.getvalue() and len(many.getvalue().splitlines()) == 2 and " x2 epoch 2/2" in many.getvalue()
    terminal = _Stream(tty=True)  # a terminal keeps the live bar
    fit(mlp_state(), small_moons, vanilla.replace(epochs=3), progress=terminal)
    assert "\r" in terminal.getvalue() and "3/3" in terminal.getvalue()
    with pytest.raises(TypeError, match="progress must be True, False or a text stream"):
        fit(mlp_state(), small_moons, vanilla, progress="log.txt")


def test_a_bare_search_config_trains_with_the_training_defaults_rule():
    # The trap of issue 24: a search built from a bare SearchConfig used to train with explain's rule while the
    # default trained with another. Training's default is explain's search now, so the two are one.
    from ctrain.search import TRAINING_SEARCH, WALK_PAST_TAU
    assert TrainConfig().search == TRAINING_SEARCH == SearchConfig()
    assert TrainConfig(search=SearchConfig(threshold=0.9)).search == TRAINING_SEARCH.replace(threshold=0.9)
    assert (TRAINING_SEARCH.convergence, TRAINING_SEARCH.step_rule) == ("threshold", "normalized_linf")
    assert (WALK_PAST_TAU.convergence, WALK_PAST_TAU.step_rule) == ("max_steps", "clipped")
