"""Checkpoints that know their run: orbax state checkpoints plus `run.json`, the identity of the run that wrote them.

A workdir holds `run.json` (the effective TrainConfig, loss weights, optimiser, model, parameter shapes,
dataset name and a fingerprint of its training arrays and constraints, package version),
`checkpoints/<epoch>/` (orbax: the TrainState's arrays, the epoch and the logs) and `history.jsonl`.
`fit` resumes a workdir only when the run it is asked for is the run recorded there; this is the only
module that touches orbax.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import sys
import time
import warnings

import jax
import numpy as np

import ctrain
from ctrain import sharding, storage

RUN_FILE = "run.json"
HISTORY_FILE = "history.jsonl"  # one JSON log per finished epoch, rewritten whole after each
MANIFEST_FILE = "ctrain_manifest.json"  # per checkpoint: sha256 of every file orbax wrote
# Settings that may change between a run and its resumption without changing what the finished epochs did.
_RESUMABLE_FIELDS = ("config.epochs", "config.checkpoint_every", "config.burnin", "burnin_epochs")


LOCK_FILE = "ctrain.lock"  # JSON {"pid", "host", "started"} of the process that holds the workdir


class RunMismatchError(ValueError):
    """The workdir holds checkpoints of a different run than the one asked for."""


class WorkdirLockedError(RuntimeError):
    """Another live process holds the workdir's lock."""


def resolve_workdir(workdir) -> str:
    """Returns `workdir` (a str or path) as an absolute path with a leading ~ expanded."""
    return os.path.abspath(os.path.expanduser(os.fspath(workdir)))


# Lock files this process holds: a lock naming our own pid that is not in here was left by an earlier process
# that had the same pid (pids restart in every container), so it is stale rather than ours.
_HELD: set[str] = set()


class WorkdirLock:
    """An exclusive claim on a workdir by one process: the file workdir/ctrain.lock, created atomically.

    Two runs writing one workdir would interleave their checkpoints and history, and each would pass the
    run.json identity check the other wrote. The lock records the holder's pid and host; a lock whose holder
    (same host) is no longer running is taken over with a warning, any other is refused with
    `WorkdirLockedError`. A lock on another host cannot be checked and is always refused.
    """

    def __init__(self, workdir):
        self.workdir = resolve_workdir(workdir)
        self.path = os.path.join(self.workdir, LOCK_FILE)
        self.held = False

    def _read(self) -> dict | None:
        """Returns the holder recorded in the lock file, {} if it is unreadable, None if there is no lock file."""
        try:
            with open(self.path) as f:
                holder = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def _create(self, record: dict) -> bool:
        """Returns True if this call created the lock file holding `record`, False if a lock file exists."""
        # Written whole under a private name, then hard-linked into place: link fails if the lock exists, and a
        # reader never sees a half-written lock.
        tmp = f"{self.path}.{os.getpid()}.{time.monotonic_ns()}.tmp"
        with open(tmp, "w") as f:
            json.dump(record, f)
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: fall back to an exclusive create
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            return True
        finally:
            os.unlink(tmp)

    def _is_stale(self, holder: dict, host: str) -> bool:
        pid = holder.get("pid")
        if holder.get("host") != host or not isinstance(pid, int) or pid <= 0:
            return False  # another host's process cannot be checked from here, and a bad pid proves nothing
        if pid == os.getpid():
            return self.path not in _HELD
        return not storage.pid_alive(pid)

    def _refuse(self, holder: dict) -> WorkdirLockedError:
        if not holder:
            return WorkdirLockedError(
                f"{self.workdir} is locked by {self.path}, which names no holder (it may be being written); if no "
                f"run is using this workdir, delete {self.path}")
        started = holder.get("started")
        since = f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}" if isinstance(
            started, (int, float)) else ""
        return WorkdirLockedError(
            f"{self.workdir} is in use by pid {holder.get('pid')} on host {holder.get('host')}{since}: two runs "
            f"must not write one workdir. Wait for that run to end or use another workdir; if that process is "
            f"gone, delete {self.path}")

    def acquire(self) -> "WorkdirLock":
        """Returns self after taking the lock; raises WorkdirLockedError, naming the holder, if it is busy."""
        os.makedirs(self.workdir, exist_ok=True)
        host = socket.gethostname()
        record = {"pid": os.getpid(), "host": host, "started": time.time()}
        for _ in range(5):
            if self._create(record):
                _HELD.add(self.path)
                self.held = True
                return self
            holder = self._read()
            if holder == {}:  # the exclusive-create fallback writes after creating: give it a moment
                time.sleep(0.05)
                holder = self._read()
            if holder is None:  # released between our attempt and the read: try again
                continue
            if not self._is_stale(holder, host):
                raise self._refuse(holder)
            # Moved aside before deletion, and only deleted if it still names the dead holder, so that two
            # processes breaking the same stale lock cannot delete the fresh lock one of them has just made.
            aside = f"{self.path}.stale.{os.getpid()}"
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                continue
            with open(aside) as f:
                try:
                    moved = json.load(f)
                except ValueError:
                    moved = {}
            if moved != holder:
                os.rename(aside, self.path)  # someone else's fresh lock: put it back and look again
                continue
            os.unlink(aside)
            warnings.warn(f"{self.workdir}: took over a stale lock of pid {holder.get('pid')} on host {host}, which "
                          f"is no longer running (it ended without releasing the workdir)", RuntimeWarning,
                          stacklevel=2)
        raise WorkdirLockedError(f"could not take the lock {self.path}: it kept changing hands; try again")

    def release(self) -> None:
        """Returns None after deleting the lock file, if this object holds it and it still names this process."""
        if not self.held:
            return
        self.held = False
        _HELD.discard(self.path)
        holder = self._read()
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def fingerprint(*trees) -> str:
    """Returns a short sha256 hex digest of the arrays (dtype, shape and bytes) in the given pytrees."""
    h = hashlib.sha256()
    for tree in trees:
        for leaf in jax.tree.leaves(tree):
            if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                leaf = jax.random.key_data(leaf)
            a = np.ascontiguousarray(np.asarray(leaf))
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()[:16]


def _describe_model(apply_fn) -> str:
    module = getattr(apply_fn, "module", None)
    if module is not None:
        return repr(module)
    return f"{getattr(apply_fn, '__module__', '?')}.{getattr(apply_fn, '__qualname__', type(apply_fn).__name__)}"


def _plain(value):
    """Returns `value` as JSON-ready data (floats for scalar arrays, lists for vectors)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.ndarray, jax.Array, np.generic)):
        a = np.asarray(value)
        return a.item() if a.ndim == 0 else a.tolist()
    return value


def optimizer_description(opt_state) -> dict:
    """Returns {"structure": the optimiser state's tree structure, "hyperparams": injected values} of an opt_state."""
    hyper = {}
    for node in jax.tree.leaves(opt_state, is_leaf=lambda n: hasattr(n, "hyperparams")):
        if hasattr(node, "hyperparams"):
            hyper.update({k: _plain(v) for k, v in node.hyperparams.items()})
    return {"structure": str(jax.tree.structure(opt_state)), "hyperparams": hyper}


def run_identity(state, dataset, config, constraints=None, aux=None) -> dict:
    """Returns the JSON-ready identity of a `fit` run: what must match for a checkpoint to be resumed.

    A field whose value is None matches a recorded identity that lacks it (`identity_differences`), so a setting
    added later with a None default (off) leaves the identities of earlier runs resumable.
    """
    burnin_epochs = round(config.burnin * config.epochs)
    shapes = {jax.tree_util.keystr(path): [list(np.shape(leaf)), str(np.asarray(leaf).dtype)]
              for path, leaf in jax.tree_util.tree_leaves_with_path(state.params)}
    stateful = {}
    if getattr(state, "model_state", None) is not None:  # pure models keep the identity they always had
        stateful["model_state"] = {jax.tree_util.keystr(path): [list(np.shape(leaf)), str(np.asarray(leaf).dtype)]
                                   for path, leaf in jax.tree_util.tree_leaves_with_path(state.model_state)}
    return {
        "ctrain_version": ctrain.__version__,
        "dataset": dataset.name,
        "data_fingerprint": fingerprint(dataset.x_train, dataset.y_train),
        "num_classes": int(dataset.num_classes),
        "constraints_fingerprint": fingerprint(constraints) if constraints is not None else None,
        "aux_fingerprint": fingerprint(aux) if aux is not None else None,
        "config": _plain(dataclasses.asdict(config)),
        "burnin_epochs": burnin_epochs,
        "model": _describe_model(state.apply_fn),
        "params": shapes,
        "weights": {k: _plain(v) for k, v in dataclasses.asdict(state.weights).items()},
        "optimizer": optimizer_description(state.opt_state),
        **stateful,
    }


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def identity_differences(recorded: dict, current: dict) -> dict[str, tuple]:
    """Returns {dotted field: (recorded, current)} for every identity field that differs (resumable ones excluded)."""
    a, b = _flatten(recorded), _flatten(current)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not k.startswith(_RESUMABLE_FIELDS)}


def _fix(workdir: str) -> str:
    return f"use another workdir, or delete {workdir} to start over"


def check_same_run(recorded: dict, current: dict, workdir: str) -> None:
    """Raises RunMismatchError naming every identity field in which `current` differs from the `recorded` run."""
    diff = identity_differences(recorded, current)
    if diff:
        lines = "; ".join(f"{k}: checkpoint has {v[0]!r}, this run has {v[1]!r}" for k, v in diff.items())
        raise RunMismatchError(f"{workdir} holds checkpoints of a different run ({len(diff)} field(s) differ: "
                               f"{lines}); {_fix(workdir)}")


def check_continuation(recorded: dict, current: dict, checkpoint_epoch: int, workdir: str) -> None:
    """Raises RunMismatchError unless `current` may continue the `recorded` run from its checkpoint at that epoch."""
    fix = _fix(workdir)
    epochs = current["config"]["epochs"]
    if checkpoint_epoch > epochs:
        raise RunMismatchError(f"{workdir} holds a checkpoint at epoch {checkpoint_epoch} but this run asks for "
                               f"epochs={epochs}; ask for at least {checkpoint_epoch} epochs, or {fix}")
    # The finished epochs must have used the same burn-in split as this run would have.
    done_then = min(recorded["burnin_epochs"], checkpoint_epoch)
    done_now = min(current["burnin_epochs"], checkpoint_epoch)
    if done_then != done_now:
        raise RunMismatchError(
            f"{workdir}: the checkpointed run trained its first {done_then} of {checkpoint_epoch} epochs without "
            f"counterfactuals (burn-in), this run would have trained {done_now}; keep burnin·epochs the same "
            f"({recorded['burnin_epochs']} burn-in epochs), or {fix}")


def _file_digests(folder: str) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if rel in (MANIFEST_FILE, MANIFEST_FILE + ".tmp") or (  # the manifest, or a temporary of it
                    storage.is_temporary(name) and name.startswith(f".{MANIFEST_FILE}.") and rel == name):
                continue
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            out[rel] = h.hexdigest()
    return out


def _short(err: BaseException) -> str:
    """Returns the first line of an error, without tensorstore's long spec dump, at most 300 characters."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text.split(" [tensorstore_spec")[0][:300]


def _silence_closed_loop_callbacks() -> None:
    # After a failed orbax restore, tensorstore still delivers callbacks to the asyncio loop orbax has
    # closed; each surfaces as an unraisable "Event loop is closed" traceback. Drop exactly those.
    previous = sys.unraisablehook
    if getattr(previous, "_ctrain_filter", False):
        return

    def hook(unraisable):
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return
        previous(unraisable)

    hook._ctrain_filter = True
    sys.unraisablehook = hook


def _saved_fields(state) -> dict:
    """Returns the state's array fields as a dict, leaving out the None ones (a pure model's model_state and rng).

    A dict of the fields, rather than the TrainState itself, so that a pure model's checkpoint has exactly the
    tree it had before TrainState grew model_state and rng, and checkpoints written then still restore.
    """
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
            if f.metadata.get("pytree_node", True) and getattr(state, f.name) is not None}


class Manager:
    """Saves and restores (state, epoch, history) under `workdir/checkpoints/<epoch>`, next to `run.json`."""

    def __init__(self, workdir: str, max_to_keep: int = 2):
        # Imported here, not with the module: orbax (and tensorstore) take seconds to import, and only a run with
        # a workdir needs them.
        import orbax.checkpoint as ocp
        self._ocp = ocp
        self.workdir = resolve_workdir(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self._mngr = ocp.CheckpointManager(os.path.join(self.workdir, "checkpoints"),
                                           options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep))

    @property
    def run_file(self) -> str:
        return os.path.join(self.workdir, RUN_FILE)

    def latest_epoch(self) -> int | None:
        """Returns the epoch of the newest checkpoint, or None."""
        return self._mngr.latest_step()

    def recorded_identity(self) -> dict | None:
        """Returns the run identity stored in run.json, or None if there is none."""
        if not os.path.exists(self.run_file):
            return None
        try:
            with open(self.run_file) as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise RunMismatchError(f"{self.run_file} is unreadable ({err}); delete {self.workdir} to start over") from None

    def write_identity(self, identity: dict) -> None:
        """Writes run.json (process 0 only; `storage.write_json`, so a crash or full disk cannot leave half a file)."""
        if jax.process_index() != 0:
            return
        storage.write_json(self.run_file, identity, indent=1, sort_keys=True)

    @property
    def history_file(self) -> str:
        return os.path.join(self.workdir, HISTORY_FILE)

    def write_history(self, history: list[dict]) -> None:
        """Writes history.jsonl, one JSON log per epoch, whole and atomically (`storage.write_atomic`)."""
        storage.write_atomic(self.history_file, "".join(json.dumps(h) + "\n" for h in history))

    def save(self, state, epoch: int, history: list[dict]) -> None:
        """Writes the state's array leaves and the logs for `epoch` (blocking, so a crash cannot corrupt it)."""
        ocp = self._ocp
        # orbax's save is collective: a peer that died would be noticed only by JAX's heartbeat, or by a
        # collective's "connection reset" that does not say who; meeting here first names it, within the timeout.
        sharding.wait_for_peers(f"the checkpoint of epoch {epoch}")
        self._mngr.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(_saved_fields(state)),
                                                        meta=ocp.args.JsonSave({"epoch": epoch, "history": history})))
        self._mngr.wait_until_finished()
        if jax.process_index() == 0:
            folder = self._step_dir(epoch)
            storage.write_json(os.path.join(folder, MANIFEST_FILE), _file_digests(folder))

    def _step_dir(self, epoch: int) -> str:
        return os.path.join(self.workdir, "checkpoints", str(epoch))

    def _verify(self, epoch: int) -> None:
        """Raises a ValueError if checkpoint `epoch` lacks its manifest or a file differs from it."""
        folder = self._step_dir(epoch)
        manifest = os.path.join(folder, MANIFEST_FILE)
        if not os.path.exists(manifest):
            raise ValueError(f"{manifest} is missing (the checkpoint was not completed)")
        with open(manifest) as f:
            expected = json.load(f)
        found = _file_digests(folder)
        bad = sorted(k for k in set(expected) | set(found) if expected.get(k) != found.get(k))
        if bad:
            raise ValueError(f"{len(bad)} file(s) differ from the manifest written with it, e.g. "
                             f"{os.path.join(folder, bad[0])}")

    def restore(self, like):
        """Returns (state, epoch, history) from the newest intact checkpoint; `like` gives structure and static fields.

        A checkpoint that cannot be read (corrupt or partly written) is skipped with a warning in favour of
        the next older one; if none can be read, a ValueError names the workdir and the failing folder.
        """
        ocp = self._ocp
        steps = sorted(self._mngr.all_steps(), reverse=True)
        errors = []
        for epoch in steps:
            try:
                self._verify(epoch)
            except (OSError, ValueError) as err:
                errors.append(f"{self._step_dir(epoch)}: {_short(err)}")
                continue
            try:
                out = self._mngr.restore(epoch, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(_saved_fields(like)), meta=ocp.args.JsonRestore()))
                meta = out["meta"]
                if meta is None or meta.get("epoch") != epoch or len(meta.get("history", ())) != epoch:
                    raise ValueError("its logs do not match its epoch")
            except Exception as err:  # orbax/tensorstore raise many types for a damaged folder
                _silence_closed_loop_callbacks()
                errors.append(f"{self._step_dir(epoch)}: {_short(err)}")
                continue
            if errors:
                warnings.warn(f"skipped unreadable checkpoint(s) ({'; '.join(errors)}); resuming from epoch {epoch}")
            return like.replace(**out["state"]), epoch, meta["history"]
        raise ValueError(f"no intact checkpoint in {self.workdir}: {'; '.join(errors)}. Delete the damaged folder(s) "
                         f"to start over from an older one, or delete {self.workdir} to start from scratch")

    def close(self) -> None:
        """Waits for pending writes and releases orbax's threads."""
        self._mngr.wait_until_finished()
        self._mngr.close()
