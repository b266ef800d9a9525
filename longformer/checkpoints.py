"""One thin wrapper over orbax: the train state, the data iterator and the config, saved together,
and the one way to read back only a run's parameters.

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
import numpy as np
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
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except ValueError as e:
            if "Structure mismatch" not in str(e):
                raise
            raise CheckpointConfigMismatch(
                f"{self.directory} step {step} holds a state whose tree differs from this "
                f"model's ({str(e)[:300]}). Checkpoints hold the model's own parameter layout; "
                f"one written before that (a scan_layers model saved one entry per layer) "
                f"cannot be resumed: use another --workdir with "
                f"--config.init_from={os.path.dirname(self.directory)}, which reads either "
                f"layout (the optimizer state starts afresh).") from None
        return restored["state"]

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs with shardings: the restore target for a state tree."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        state, shardings)


# ----------------------------------------------------------------------------- parameters only
def latest_step(workdir: str) -> int:
    """The newest complete step in `workdir/checkpoints` (a save under way is not a step yet)."""
    folder = os.path.join(workdir, "checkpoints")
    steps = sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(
        folder) else []
    if not steps:
        raise FileNotFoundError(f"no complete checkpoint in {folder}")
    return steps[-1]


def restore_params(workdir: str, step: int | None = None, target: Any = None) -> Any:
    """Only the parameters of a train.py checkpoint (the latest step by default).

    The optimizer state is never read, so eval.py, exports, init_from and the next phase of a
    staged run can read a checkpoint whatever optimizer or data wrote it. `target`: a tree of
    ShapeDtypeStructs with shardings to restore into (sharded jax arrays); without it the saved
    tree comes back as host numpy arrays.
    """
    step = latest_step(workdir) if step is None else step
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no checkpoint state at {path}")
    checkpointer = ocp.PyTreeCheckpointer()
    if target is None:
        meta = checkpointer.metadata(path)
        tree = getattr(meta, "item_metadata", meta)
        tree = getattr(tree, "tree", tree)["params"]
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree)
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    else:
        restore_args = jax.tree.map(
            lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding, global_shape=s.shape,
                                           dtype=s.dtype), target)
    restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        item={"params": target}, restore_args={"params": restore_args}, partial_restore=True))
    return restored["params"]
