"""One thin wrapper over orbax: the train state, the data iterator and the config, saved together.

Orbax writes each step into a temporary folder and renames it only when complete, so a process
killed mid-save leaves the previous checkpoint as the latest one. The config saved beside the
state lets a restart refuse a checkpoint that belongs to another model.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointConfigMismatch(ValueError):
    """The workdir holds checkpoints of a differently configured model."""


def _diff(saved: dict, current: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: checkpoint has {a!r}, config has {b!r}")
    return out


class Checkpointer:
    """Saves every `every` steps (and when forced), keeps the last `keep`, asynchronously."""

    def __init__(self, directory: str, *, every: int, keep: int, async_save: bool = True,
                 identity: dict[str, Any] | None = None):
        self.directory = os.path.abspath(directory)
        self.identity = json.loads(json.dumps(identity or {}))  # plain JSON types only
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                save_interval_steps=every, max_to_keep=keep,
                enable_async_checkpointing=async_save, create=True))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iterator=None, *, force: bool = False) -> bool:
        items = {"state": ocp.args.StandardSave(state),
                 "identity": ocp.args.JsonSave(self.identity)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def check_identity(self, step: int) -> None:
        saved = self.manager.restore(
            step, args=ocp.args.Composite(identity=ocp.args.JsonRestore()))["identity"]
        problems = _diff(saved, self.identity)
        if problems:
            raise CheckpointConfigMismatch(
                f"{self.directory} holds a checkpoint (step {step}) of a different configuration;"
                f" use another --workdir or the original config:\n  " + "\n  ".join(problems))

    def restore(self, step: int, abstract_state: Any, data_iterator=None) -> Any:
        """Restores into the shapes and shardings of `abstract_state` (and the iterator)."""
        self.check_identity(step)
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs with shardings: the restore target for a state tree."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        state, shardings)
