"""Multi-host `fit` on one machine: two CPU processes joined by `jax.distributed.initialize` (gloo collectives),
2 devices each, train on one 4-device mesh. Checks that they reach the parameters of a one-process run on 4
devices, that only process 0 reports and writes ctrain's files (each through a temporary), that a two-process
resume is bit-identical, and that a process whose peer was killed stops with an error naming it.

Each pair of processes runs tests/multihost_worker.py under a timeout, so a hung collective fails the test.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

import multihost_worker as worker
from ctrain import checkpoint, storage
from ctrain import sharding
from ctrain.sharding import data_mesh
from ctrain.train import fit

EPOCHS = 4
LOCAL_DEVICES = 2
TIMEOUT_S = 120
PROGRESS_LINE = re.compile(r"epoch \d+/\d+")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start_pair(tmp_path, name: str, workdir, epochs: int, timeout_s: float, extra=None) -> tuple[list, list]:
    """Returns (the two worker processes, their (stdout, stderr)) of one two-process fit, run to its end.

    `extra` maps a process index to more keys of its spec (e.g. peer_timeout_s, die_at_epoch).
    """
    extra = extra or {}
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={LOCAL_DEVICES}",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(__file__)),
                                                                  os.environ.get("PYTHONPATH", "")])}
    port, procs = _free_port(), []
    for i in range(2):
        spec = {"process_id": i, "num_processes": 2, "port": port, "workdir": str(workdir), "epochs": epochs,
                "out": str(tmp_path / f"{name}-{i}.json"), **extra.get(i, {})}
        procs.append(subprocess.Popen([sys.executable, worker.__file__, json.dumps(spec)], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout_s))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        tails = [p.communicate()[1][-2000:] for p in procs]
        pytest.fail(f"{name}: the two processes did not finish within {timeout_s} s; stderr tails: {tails}")
    return procs, outs


def _run_pair(tmp_path, name: str, workdir, epochs: int) -> list[dict]:
    """Returns, per process, {"result": the worker's JSON, "stdout", "stderr"} of one two-process fit."""
    procs, outs = _start_pair(tmp_path, name, workdir, epochs, TIMEOUT_S)
    for i, (p, (out, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"{name}: process {i} exited with {p.returncode}:\n{err[-4000:]}"
    return [{"result": json.loads((tmp_path / f"{name}-{i}.json").read_text()), "stdout": out, "stderr": err}
            for i, (out, err) in enumerate(outs)]


def _atomic_targets(wrote: list[str]) -> set[str]:
    """Returns the paths written through ctrain.storage's temporaries (`.<name>.<random>.tmp` -> `<name>`)."""
    out = set()
    for path in wrote:
        folder, name = os.path.split(path)
        if storage.is_temporary(name):
            out.add(os.path.join(folder, name[1:].rsplit(".", 2)[0]))
    return out


def _params(result: dict) -> dict:
    return {k: np.asarray(v, np.float32) for k, v in result["params"].items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Returns {"straight", "half", "resumed": per-process outputs, "dirs": their workdirs} of three pairs."""
    tmp = tmp_path_factory.mktemp("multihost")
    straight_dir, resumed_dir = tmp / "straight", tmp / "resumed"
    return {"straight": _run_pair(tmp, "straight", straight_dir, EPOCHS),
            "half": _run_pair(tmp, "half", resumed_dir, EPOCHS // 2),
            "resumed": _run_pair(tmp, "resumed", resumed_dir, EPOCHS),
            "dirs": {"straight": straight_dir, "resumed": resumed_dir}}


def test_two_processes_see_one_mesh_and_agree(runs):
    for i, proc in enumerate(runs["straight"]):
        r = proc["result"]
        assert (r["process_index"], r["device_count"], r["local_device_count"]) == (i, 2 * LOCAL_DEVICES, LOCAL_DEVICES)
        assert len(r["history"]) == EPOCHS
    p0, p1 = (_params(p["result"]) for p in runs["straight"])
    chex.assert_trees_all_equal(p0, p1)  # the replicated state is one global array


def test_two_processes_match_a_one_process_run_on_as_many_devices(runs):
    assert jax.device_count() == 2 * LOCAL_DEVICES, "tests/conftest.py forces 4 CPU devices"
    state, data, config = worker.setup(EPOCHS)
    single, history = fit(state, data, config, mesh=data_mesh(), progress=False)
    expected = {jax.tree_util.keystr(p): np.asarray(v)
                for p, v in jax.tree_util.tree_leaves_with_path(jax.device_get(single.params))}
    # Same global batches and keys; only the all-reduce (in-process vs gloo across processes) may round apart
    # (about 1e-8 here).
    chex.assert_trees_all_close(_params(runs["straight"][0]["result"]), expected, atol=1e-6, rtol=1e-6)
    got = runs["straight"][0]["result"]["history"]
    np.testing.assert_allclose([h["loss"] for h in got], [h["loss"] for h in history], atol=1e-5)


def test_only_process_zero_reports_and_writes_ctrains_files(runs):
    zero, one = runs["straight"]
    assert len(PROGRESS_LINE.findall(zero["stderr"])) == EPOCHS  # PLAIN_LINES >= EPOCHS: one line per epoch
    for stream in ("stdout", "stderr"):
        assert not PROGRESS_LINE.search(one[stream]), one[stream]
    ours = {"run.json", "history.jsonl"} | {os.path.join("checkpoints", str(e), "ctrain_manifest.json")
                                            for e in range(2, EPOCHS + 1, 2)}
    assert ours <= _atomic_targets(zero["result"]["wrote"]), zero["result"]["wrote"]
    assert not ours & set(zero["result"]["wrote"]), "written in place rather than through a temporary"
    lock = getattr(checkpoint, "LOCK_FILE", None)  # the workdir lock, where this version has one
    if lock is not None:
        assert any(path.startswith(lock) for path in zero["result"]["wrote"]), zero["result"]["wrote"]
        assert not (runs["dirs"]["straight"] / lock).exists()  # released when fit returned
    # Process 1 opens (from Python) only orbax's own per-process metadata of the collective checkpoint: no
    # run.json, history, manifest or lock. (orbax's array shards, ocdbt.process_1/, are written by tensorstore.)
    assert one["result"]["wrote"], "the audit hook saw no writes at all"
    assert all(path.endswith(os.path.join("array_metadatas", "process_1")) for path in one["result"]["wrote"]), \
        one["result"]["wrote"]
    workdir = runs["dirs"]["straight"]
    assert len((workdir / "history.jsonl").read_text().splitlines()) == EPOCHS
    assert json.loads((workdir / "run.json").read_text())["config"]["epochs"] == EPOCHS


def test_a_two_process_resume_is_bit_identical(runs):
    assert len(runs["half"][0]["result"]["history"]) == EPOCHS // 2
    for i in range(2):
        resumed, straight = runs["resumed"][i]["result"], runs["straight"][i]["result"]
        chex.assert_trees_all_equal(_params(resumed), _params(straight))
        drop_time = lambda hs: [{k: v for k, v in h.items() if k != "time_s"} for h in hs]
        assert drop_time(resumed["history"]) == drop_time(straight["history"])
    # Process 0 picked up at the checkpoint: it reports only the epochs it trained.
    shown = PROGRESS_LINE.findall(runs["resumed"][0]["stderr"])
    assert shown == [f"epoch {e}/{EPOCHS}" for e in range(EPOCHS // 2 + 1, EPOCHS + 1)]


PEER_TIMEOUT_S = 5  # the test's setting; JAX's heartbeat becomes 10 s
LOST_PEER_LIMIT_S = 50  # both processes start (under load, ~20 s), and the survivor must have ended by then


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="this platform cannot kill a process outright (SIGKILL)")
def test_a_dead_peer_is_named_within_the_peer_timeout(tmp_path):
    spec = {"peer_timeout_s": PEER_TIMEOUT_S, "lose_peer": True}
    procs, outs = _start_pair(tmp_path, "lost", tmp_path / "lost", EPOCHS, LOST_PEER_LIMIT_S, {0: spec, 1: spec})
    assert procs[1].returncode == -signal.SIGKILL, outs[1][1][-2000:]
    survivor = outs[0][1]
    assert procs[0].returncode != 0
    # JAX's abort at exit (its shutdown barrier misses the dead peer) comes after ctrain's error, which names it.
    assert f"PeerLostError: process 1 of 2 did not reach the checkpoint of epoch 2 within {PEER_TIMEOUT_S} s" \
        in survivor, survivor[-4000:]
    assert not (tmp_path / "lost" / "checkpoints" / "2").exists()  # nobody wrote the checkpoint the peer missed


def test_lost_processes_reads_jaxs_barrier_and_heartbeat_messages():
    barrier = ("DEADLINE_EXCEEDED: Barrier timed out. Id: ctrain:1::0. This usually happens because a task "
               "triggered the barrier too early or too slowly.\n# of tasks that reached the barrier: 2/4.\n"
               "The first task at the barrier: 0. Some timed out task names:\n1\n3\n\n\nRPC: /xla.coordination")
    heartbeat = ("UNAVAILABLE: Task 2 heartbeat timeout. This indicates that the remote task has failed, got "
                 "preempted, or crashed unexpectedly.")
    assert sharding.lost_processes(barrier, 4, 0) == [1, 3]
    assert sharding.lost_processes(heartbeat, 4, 1) == [2]
    assert sharding.lost_processes("INTERNAL: something else", 3, 1) == [0, 2]  # names none: all the others


def test_the_peer_timeout_comes_from_the_keyword_else_the_environment(monkeypatch):
    monkeypatch.delenv(sharding.PEER_TIMEOUT_ENV, raising=False)
    assert sharding.resolve_peer_timeout() == sharding.PEER_TIMEOUT_S
    monkeypatch.setenv(sharding.PEER_TIMEOUT_ENV, "7.5")
    assert sharding.resolve_peer_timeout() == 7.5
    assert sharding.resolve_peer_timeout(3) == 3.0
    for bad in (0, -1, float("nan"), "10"):
        with pytest.raises(ValueError, match="peer_timeout_s"):
            sharding.resolve_peer_timeout(bad)
    monkeypatch.setenv(sharding.PEER_TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match=sharding.PEER_TIMEOUT_ENV):
        sharding.resolve_peer_timeout()


def test_wait_for_peers_is_a_no_op_in_one_process():
    assert jax.process_count() == 1
    assert sharding.wait_for_peers("a meeting", peer_timeout_s=1e-3) is None
