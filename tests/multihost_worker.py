"""One process of a multi-host `fit` run for tests/test_multihost.py: `python multihost_worker.py SPEC_JSON`.

SPEC_JSON holds process_id, num_processes, port, workdir, epochs and out (a JSON file for the final parameters,
history and the workdir files this process opened for writing), and optionally peer_timeout_s and lose_peer: then
both build the run, process 1 kills itself (SIGKILL), and process 0, instead of training, saves the initial state
as the checkpoint of epoch 2 (as `fit` would), which must fail naming the lost peer. XLA_FLAGS in the environment
sets this process's CPU devices. `setup` builds the run, so the test's one-process reference is the same run.
"""
import json
import os
import signal
import sys

SAMPLES, BATCH = 128, 32


def setup(epochs: int):
    """Returns (state, dataset, config) of the tiny moons CT run every process trains."""
    import jax

    from ctrain.data import load_dataset
    from ctrain.models import make_model
    from ctrain.search import SearchConfig
    from ctrain.train import TrainConfig, create_train_state

    data = load_dataset("moons").subsample(SAMPLES, seed=0)
    apply_fn, params = make_model("mlp", 2, 2, jax.random.key(0))
    config = TrainConfig(search=SearchConfig(threshold=0.5, max_steps=10, step_size=0.5), epochs=epochs,
                         batch_size=BATCH, n_ce=BATCH, checkpoint_every=2)
    return create_train_state(apply_fn, params), data, config


def _record_writes(root: str) -> list[str]:
    """Returns a list that fills with the paths under `root` this process opens for writing (Python-level opens)."""
    root, wrote = os.path.realpath(root), []
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def hook(event, args):
        if event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        path, mode, flags = args
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & write_flags)
        full = os.path.realpath(os.fsdecode(path))
        if writing and full.startswith(root + os.sep):
            wrote.append(os.path.relpath(full, root))

    sys.addaudithook(hook)
    return wrote


def main(spec: dict) -> None:
    wrote = _record_writes(spec["workdir"])
    import jax
    # CPU devices in different processes reach each other only through a CPU collectives backend.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from ctrain import checkpoint
    from ctrain.sharding import data_mesh, initialize_processes, wait_for_peers
    from ctrain.train import fit

    initialize_processes(f"localhost:{spec['port']}", spec["num_processes"], spec["process_id"],
                         peer_timeout_s=spec.get("peer_timeout_s"), initialization_timeout=60)
    if spec.get("lose_peer"):  # cheaper than training to the checkpoint: the same save, with nothing compiled
        state, _, _ = setup(spec["epochs"])
        manager = checkpoint.Manager(spec["workdir"])
        wait_for_peers("the end of setup")  # so that the peer dies just before the save, not during a slow import
        if spec["process_id"] == 1:
            print("process 1 kills itself", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        manager.save(state, 2, [{"loss": 1.0}] * 2)
        raise AssertionError("the checkpoint was saved without the lost peer")

    state, data, config = setup(spec["epochs"])
    state, history = fit(state, data, config, mesh=data_mesh(), workdir=spec["workdir"], progress=True)
    params = jax.tree_util.tree_leaves_with_path(jax.device_get(state.params))
    with open(spec["out"], "w") as f:
        json.dump({"process_index": jax.process_index(), "device_count": jax.device_count(),
                   "local_device_count": jax.local_device_count(), "history": history, "wrote": sorted(set(wrote)),
                   "params": {jax.tree_util.keystr(p): v.tolist() for p, v in params}}, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
