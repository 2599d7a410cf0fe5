"""Orbax checkpoints of a TrainState plus the epoch counter and logs (the only module that touches orbax)."""
from __future__ import annotations

import os

import orbax.checkpoint as ocp


class Manager:
    """Saves and restores (state, epoch, history) under `workdir/checkpoints/<epoch>`."""

    def __init__(self, workdir: str, max_to_keep: int = 2):
        os.makedirs(workdir, exist_ok=True)
        self._mngr = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                                           options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep))

    def latest_epoch(self) -> int | None:
        """Returns the epoch of the newest checkpoint, or None."""
        return self._mngr.latest_step()

    def save(self, state, epoch: int, history: list[dict]) -> None:
        """Writes the state's array leaves and the logs for `epoch` (blocking, so a crash cannot corrupt it)."""
        self._mngr.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave({"epoch": epoch, "history": history})))
        self._mngr.wait_until_finished()

    def restore(self, like):
        """Returns (state, epoch, history) from the newest checkpoint; `like` gives the structure and static fields."""
        epoch = self._mngr.latest_step()
        out = self._mngr.restore(epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(like),
                                                                meta=ocp.args.JsonRestore()))
        return out["state"], out["meta"]["epoch"], out["meta"]["history"]

    def close(self) -> None:
        self._mngr.close()
