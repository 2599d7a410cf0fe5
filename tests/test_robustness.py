"""Issue 23, "Runs that cannot mix, numbers that cannot lie": the workdir lock, float64 standardisation,
non-finite logits in explanations, and the smaller guards (bounds that exclude the data, ~ in workdirs,
diverging losses, fit_many without runs, values that overflow float32)."""
import json
import os
import socket
import subprocess
import sys
import threading
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ctrain import checkpoint
from ctrain.data import from_arrays, prepare
from ctrain.models import make_model
from ctrain.search import SearchConfig, explain
from ctrain.objective import LossWeights
from ctrain.train import TrainConfig, create_train_state, create_train_states, fit, fit_many

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VANILLA = TrainConfig(objective="vanilla", epochs=2, batch_size=30)


@pytest.fixture(scope="module")
def small(moons):
    return moons.subsample(60, seed=0)


def _lock_holder(path):
    with open(path) as f:
        return json.load(f)


# --------------------------------------------------------------------------------------------------
# The workdir lock


def test_a_second_process_is_refused_a_busy_workdir_at_once_naming_the_holder(mlp_state, small, tmp_path):
    workdir = str(tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom ctrain.checkpoint import WorkdirLock\n"
         "WorkdirLock(sys.argv[1]).acquire()\nprint('held', flush=True)\ntime.sleep(120)\n", workdir],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    guard = threading.Timer(60, holder.kill)  # a holder that never says "held" must not hang the suite
    guard.start()
    try:
        line = holder.stdout.readline()
        assert line.strip() == "held", holder.stderr.read() if holder.poll() is not None else line
        t0 = time.perf_counter()
        with pytest.raises(checkpoint.WorkdirLockedError) as err:
            fit(mlp_state(), small, VANILLA, workdir=workdir, progress=False)
        assert time.perf_counter() - t0 < 10  # refused at once, not after waiting or training
        message = str(err.value)
        assert f"pid {holder.pid}" in message and socket.gethostname() in message and workdir in message
        assert isinstance(err.value, RuntimeError)
        # Refused before the identity check: the holder's workdir is untouched.
        assert not os.path.exists(os.path.join(workdir, checkpoint.RUN_FILE))
        assert _lock_holder(os.path.join(workdir, checkpoint.LOCK_FILE))["pid"] == holder.pid
    finally:
        guard.cancel()
        holder.kill()
        holder.wait()


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(mlp_state, small, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped, so its pid names no process
    workdir = tmp_path / "run"
    workdir.mkdir()
    lock = workdir / checkpoint.LOCK_FILE
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 0.0}))
    with pytest.warns(RuntimeWarning, match=f"stale lock of pid {dead.pid}"):
        _, history = fit(mlp_state(), small, VANILLA, workdir=str(workdir), progress=False)
    assert len(history) == VANILLA.epochs and (workdir / checkpoint.RUN_FILE).exists()
    assert not lock.exists()  # released at the end


def test_fit_holds_the_lock_while_it_runs_and_releases_it_when_interrupted(mlp_state, small, tmp_path):
    lock = tmp_path / checkpoint.LOCK_FILE
    seen = []

    def interrupt(log):
        seen.append(_lock_holder(lock))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(mlp_state(), small, VANILLA, workdir=str(tmp_path), progress=False, log_fn=interrupt)
    assert seen == [{"pid": os.getpid(), "host": socket.gethostname(), "started": seen[0]["started"]}]
    assert not lock.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # nothing stale to take over: the next run simply starts
        fit(mlp_state(), small, VANILLA, workdir=str(tmp_path), progress=False)


def test_a_lock_naming_this_pid_is_stale_unless_this_process_took_it(tmp_path):
    # Containers restart pids from 1, so a lock left by an earlier container can name this very process.
    lock = tmp_path / checkpoint.LOCK_FILE
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    with pytest.warns(RuntimeWarning, match="stale lock"):
        held = checkpoint.WorkdirLock(tmp_path).acquire()
    try:
        with pytest.raises(checkpoint.WorkdirLockedError, match=f"pid {os.getpid()}"):  # e.g. a nested fit
            checkpoint.WorkdirLock(tmp_path).acquire()
    finally:
        held.release()
    assert not lock.exists()
    lock.write_text("{not json")
    with pytest.raises(checkpoint.WorkdirLockedError, match="names no holder"):
        checkpoint.WorkdirLock(tmp_path).acquire()


def test_a_workdir_with_a_tilde_is_expanded(mlp_state, small, tmp_path, monkeypatch):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir(), cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    fit(mlp_state(), small, VANILLA.replace(epochs=1), workdir="~/run", progress=False)
    assert (home / "run" / checkpoint.RUN_FILE).exists()
    assert not (cwd / "~").exists()
    manager = checkpoint.Manager("~/other")
    try:
        assert manager.workdir == str(home / "other")
    finally:
        manager.close()


# --------------------------------------------------------------------------------------------------
# Data


def test_a_timestamp_column_keeps_its_values_and_spread_when_standardised():
    rng = np.random.default_rng(0)
    n = 200
    stamps = 1.7e9 + 30 * rng.standard_normal(n)
    x = np.c_[stamps, np.arange(n)]  # the row number, exact in float32, tells which rows went to training
    y = rng.integers(0, 2, n)
    ds = from_arrays(x, y, feature_names=["time", "row"])
    assert ds.x_train.dtype == np.float32
    standardised = np.concatenate([ds.x_train[:, 0], ds.x_test[:, 0]])
    assert len(np.unique(standardised)) >= n - 2
    train_rows = np.round(ds.standardizer.inverse(ds.x_train)[:, 1]).astype(int)
    np.testing.assert_allclose(ds.standardizer.scale[0], stamps[train_rows].std(), rtol=0.01)
    assert abs(ds.x_train[:, 0].mean()) < 1e-3 and abs(ds.x_train[:, 0].std() - 1) < 1e-3


def test_bounds_that_exclude_all_the_data_are_refused_naming_the_feature():
    rng = np.random.default_rng(0)
    x = np.c_[rng.normal(50_000, 5_000, 100), rng.normal(40, 10, 100)]
    y = np.arange(100) % 2
    with pytest.raises(ValueError, match=r"exclude every value of feature\(s\) 'income'"):
        from_arrays(x, y, feature_names=["income", "age"], bounds={"income": (100_000, 200_000)})
    with pytest.raises(ValueError, match="'income'"):  # one-sided bounds too
        from_arrays(x, y, feature_names=["income", "age"], bounds={"income": (0, 1_000)})
    ok = from_arrays(x, y, feature_names=["income", "age"], bounds={"income": (45_000, 200_000)})
    assert ok.num_features == 2


def test_a_value_that_overflows_float32_is_reported_as_such_naming_the_column():
    x = np.ones((20, 2))
    x[:, 0] = np.arange(20)
    x[3, 1] = 1e39
    with pytest.raises(ValueError, match=r"overflows float32") as err:
        from_arrays(x, np.arange(20) % 2, feature_names=["age", "debt"])
    assert "debt" in str(err.value) and "age" not in str(err.value) and "NaN" not in str(err.value)


# --------------------------------------------------------------------------------------------------
# Non-finite logits


def _nan_in_target_logit(p, x):
    # Class 1 wins once x0 > 0; for rows flagged by x1 > 0 its logit becomes NaN on the way (x0 > -0.5). argmax
    # takes NaN for the largest value, so a NaN logit in the target's column looks like a valid counterfactual.
    z = x[:, 0] * p
    nan = (x[:, 1] > 0) & (x[:, 0] > -0.5)
    return jnp.stack([-z, jnp.where(nan, jnp.nan, z)], -1)


def test_nan_logits_at_the_counterfactual_are_neither_valid_nor_converged_and_warn():
    x = np.array([[-1.0, 0.0]] * 5 + [[-1.0, 1.0]] * 3, np.float32)
    config = SearchConfig(threshold=0.6, max_steps=40, step_size=0.1)
    with pytest.warns(RuntimeWarning, match="3 of 8 counterfactuals have NaN/inf logits"):
        ex = explain(_nan_in_target_logit, jnp.float32(2.0), x, 1, key=jax.random.key(0), config=config)
    flagged = x[:, 1] > 0
    assert np.isnan(ex.p_target[flagged]).all()  # the search did end on NaN logits there
    assert not ex.valid[flagged].any() and not ex.converged[flagged].any()
    assert ex.valid[~flagged].all() and ex.converged[~flagged].all()
    summary = ex.summary()
    assert summary["valid"] == summary["converged"] == 5 / 8


# --------------------------------------------------------------------------------------------------
# Training guards


def _growing(p, x):
    # Loss softplus(w²) for class 0; SGD at rate 3 overshoots w = 0 by a factor of about 5 per step.
    return jnp.stack([jnp.zeros(x.shape[0]), jnp.full(x.shape[0], p["w"] ** 2)], -1)


@pytest.fixture(scope="module")
def all_class_zero():
    x = np.random.default_rng(0).normal(size=(30, 2))
    y = np.zeros(30, np.int32)
    y[0] = 1  # training needs both classes; this one row barely slows the overshoot
    return prepare("almost_all_zero", x, y, x, y, num_classes=2)


def _divergence_warnings(record):
    return [str(w.message) for w in record if issubclass(w.category, RuntimeWarning) and "diverging" in
            str(w.message)]


def test_a_diverging_loss_warns_once_naming_the_epoch(all_class_zero):
    state = create_train_state(_growing, {"w": jnp.float32(1.0)}, tx=optax.sgd(3.0))
    config = TrainConfig(objective="vanilla", epochs=6, batch_size=30)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _, history = fit(state, all_class_zero, config, progress=False)
    losses = [h["loss"] for h in history]
    first_over = next(i for i, v in enumerate(losses) if v > 1e3 * losses[0]) + 1
    assert first_over < config.epochs and len(history) == config.epochs  # warned, not aborted
    found = _divergence_warnings(record)
    assert len(found) == 1 and f"epoch {first_over}:" in found[0], found

    states = create_train_states(_growing, {"w": jnp.array([1.0, 0.0], jnp.float32)}, tx=optax.sgd(3.0))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _, histories = fit_many(states, all_class_zero, config, seeds=[0, 1], progress=False)
    found = _divergence_warnings(record)
    assert len(found) == 1 and "run 0" in found[0] and f"epoch {first_over}:" in found[0], found
    assert histories[1][-1]["loss"] == pytest.approx(np.log(2), rel=1e-5)  # w = 0 stays put: no warning


def test_fit_many_without_runs_is_a_clear_value_error(small):
    apply_fn, params = make_model("mlp", 2, 2, jax.random.key(0))
    none = create_train_states(apply_fn, jax.tree.map(lambda a: a[None][:0], params))
    with pytest.raises(ValueError, match="at least one run"):
        fit_many(none, small, VANILLA, seeds=[], progress=False)


def test_a_loss_diverging_from_the_first_epoch_warns_in_epoch_one(small):
    """learning_rate=1e6 gives losses of ~1e20 and more from epoch 1 on, which a bound relative to epoch 1 never sees."""
    from ctrain.train import DivergenceWarning, divergence_bound
    config = TrainConfig(objective="vanilla", epochs=2, batch_size=30)
    apply_fn, params = make_model("mlp", 2, 2, jax.random.key(0))
    with pytest.warns(DivergenceWarning, match="epoch 1:") as record:
        _, history = fit(create_train_state(apply_fn, params, learning_rate=1e6), small, config, progress=False)
    assert abs(history[0]["loss"]) > divergence_bound(2, LossWeights()) or not np.isfinite(history[0]["loss"])
    assert len([w for w in record if w.category is DivergenceWarning]) == 1
    states = create_train_states(apply_fn, jax.tree.map(lambda a: jnp.stack([a, a]), params),
                                 learning_rate=jnp.array([1e6, 1e-3]))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fit_many(states, small, config, seeds=[0, 1], progress=False)
    found = [str(w.message) for w in record if w.category is DivergenceWarning]
    assert len(found) == 1 and "run 0" in found[0] and "epoch 1:" in found[0], found  # the healthy run 1 is quiet
