"""One thin wrapper over orbax: the train state, the data iterator, the config and the data files'
fingerprints, saved together, and the one way to read back only a run's parameters.

Orbax writes each step into a temporary folder and renames it only when complete, so a process
killed mid-save (or a save that fills the disk) leaves the previous checkpoint as the latest one.
The config saved beside the state lets a restart refuse a checkpoint of another model, the
fingerprints a resume on data that changed. A newest checkpoint damaged after it was written is
moved aside, never deleted, and the run resumes from the newest intact one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
from typing import Any, Sequence

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


class CheckpointConfigMismatch(ValueError):
    """The workdir holds checkpoints of a differently configured model."""


class CheckpointDamaged(RuntimeError):
    """No checkpoint in the workdir can be read back, though some exist."""


class CheckpointSaveError(RuntimeError):
    """A save failed (the disk full, a write refused); the earlier checkpoints are intact."""


class DataChanged(ValueError):
    """The data files differ from those the checkpoint was trained on."""


def _complete_steps(directory: str) -> list[int]:
    """Steps whose save finished (orbax renames a step's folder to its number when complete)."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def _disk_full(e: BaseException) -> bool:
    # tensorstore reports ENOSPC as a ValueError whose text carries the OS message.
    return ((isinstance(e, OSError) and e.errno == errno.ENOSPC)
            or "No space left on device" in str(e))


# ----------------------------------------------------------------------------- data identity
def file_fingerprints(paths: Sequence[str]) -> list[dict]:
    """[{path, size, blake2b}] of each file, in order: what a resume compares its data with.

    The whole content is hashed (the pipelines read all of it anyway), so a file edited in place
    with the same size and time stamp is still seen as changed.
    """
    out = []
    for path in paths:
        digest = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        out.append({"path": os.path.abspath(path), "size": os.path.getsize(path),
                    "blake2b": digest.hexdigest()})
    return out


def data_changes(saved: list[dict], current: list[dict]) -> list[str]:
    """What differs between two fingerprint lists; [] when the same contents are in the same
    order. Files are matched by their path under the folder that holds them all, so data
    moved or mounted elsewhere is the same data and an edit in it is named."""
    content = [(f["size"], f["blake2b"]) for f in saved]
    if content == [(f["size"], f["blake2b"]) for f in current]:
        return []
    (old_root, old), (new_root, new) = _by_name(saved), _by_name(current)
    changes = [f"{os.path.join(old_root, n)}: removed (or renamed)" for n in old if n not in new]
    changes += [f"{os.path.join(new_root, n)}: new" for n in new if n not in old]
    changes += [f"{os.path.join(new_root, n)}: changed ({old[n]['size']} -> {new[n]['size']} "
                f"bytes)" for n in old if n in new and old[n]["blake2b"] != new[n]["blake2b"]]
    return changes or ["the same files in a different order"]


def _by_name(files: list[dict]) -> tuple[str, dict[str, dict]]:
    if not files:
        return "", {}
    root = os.path.commonpath([os.path.dirname(f["path"]) for f in files])
    return root, {os.path.relpath(f["path"], root): f for f in files}


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
                 identity: dict[str, Any] | None = None, data_files: Sequence[str] = ()):
        self.directory = os.path.abspath(directory)
        self.identity = json.loads(json.dumps(identity or {}))  # plain JSON types only
        self.data_files = list(data_files)
        self._fingerprints = None  # computed at the first save or resume
        self._saving = None  # the step whose save may still be under way
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                save_interval_steps=every, max_to_keep=keep,
                enable_async_checkpointing=async_save, create=True))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def fingerprints(self) -> list[dict]:
        if self._fingerprints is None:
            self._fingerprints = file_fingerprints(self.data_files)
        return self._fingerprints

    def save(self, step: int, state: Any, data_iterator=None, *, force: bool = False) -> bool:
        items = {"state": ocp.args.StandardSave(state),
                 "identity": ocp.args.JsonSave(self.identity),
                 "data_files": ocp.args.JsonSave({"files": self.fingerprints()})}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        if self._saving is not None:
            with self._save_errors(self._saving):  # the previous (async) save's error, if any
                self.manager.check_for_errors()
        self._saving = step
        with self._save_errors(step):
            return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    @contextlib.contextmanager
    def _save_errors(self, step: int):
        """Any failure of the save of `step` as one clear error naming what is still intact."""
        try:
            yield
        except Exception as e:
            intact = [s for s in _complete_steps(self.directory) if s != step]
            what = "the disk is full" if _disk_full(e) else type(e).__name__
            raise CheckpointSaveError(
                f"saving the checkpoint of step {step} in {self.directory} failed: {what} "
                f"({str(e)[:300]}). The run stopped; the checkpoints saved before it are intact "
                f"(latest: step {intact[-1] if intact else 'none'}). Free space (or fix the "
                f"folder) and rerun the same command to resume from there.") from e

    def check_identity(self, step: int, *, unreadable_ok: bool = False) -> None:
        """Refuses a checkpoint of another configuration (`unreadable_ok`: one whose identity
        cannot be read passes, for `restore_latest` to deal with)."""
        try:
            saved = self.manager.restore(
                step, args=ocp.args.Composite(identity=ocp.args.JsonRestore()))["identity"]
        except Exception:
            if unreadable_ok:
                return
            raise
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

    def restore_latest(self, abstract_state: Any, data_iterator=None, *,
                       allow_data_change: bool = False) -> tuple[int | None, Any]:
        """(step, state) of the newest checkpoint that reads back whole, or (None, None) when
        there is none.

        A newer one that does not (an array file truncated or deleted after it was written) is
        moved to `<workdir>/damaged_checkpoints/<step>` with a warning naming it, so its step
        can be saved again; nothing is deleted. When checkpoints exist but none reads back, the
        run is refused rather than started again from step 0 over them. A checkpoint of
        another configuration is refused, never skipped.
        """
        damaged = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                self.check_identity(step)
                self.check_data(step, allow_change=allow_data_change)
                state = self.restore(step, abstract_state, data_iterator)
            except (CheckpointConfigMismatch, DataChanged):
                raise
            except Exception as e:  # orbax/tensorstore raise plain Exceptions for bad files
                log.warning("checkpoint step %d in %s cannot be read back (%s: %s); trying the "
                            "one before it", step, self.directory, type(e).__name__,
                            str(e)[:200])
                damaged.append((step, e))
                continue
            for bad, _ in damaged:
                self._move_aside(bad)
            return step, state
        if damaged:
            raise CheckpointDamaged(
                f"{self.directory} holds checkpoints, but none can be read back: "
                + "; ".join(f"step {s}: {type(e).__name__}: {str(e)[:160]}" for s, e in damaged)
                + ". Nothing was moved or deleted; restore them from a copy, or use another "
                  "--workdir to start afresh.")
        return None, None

    def _move_aside(self, step: int) -> None:
        if jax.process_index() == 0:
            aside = os.path.join(os.path.dirname(self.directory), "damaged_checkpoints")
            os.makedirs(aside, exist_ok=True)
            target = os.path.join(aside, str(step))
            n = 1
            while os.path.exists(target):
                target, n = os.path.join(aside, f"{step}.{n}"), n + 1
            shutil.move(os.path.join(self.directory, str(step)), target)
            log.warning("checkpoint step %d was damaged: moved to %s (kept, not deleted); "
                        "resuming from the newest intact checkpoint", step, target)
        if jax.process_count() > 1:  # every host sees the move before it lists the steps again
            multihost_utils.sync_global_devices(f"damaged checkpoint {step} moved")
        self.manager.reload()

    def check_data(self, step: int, *, allow_change: bool = False) -> None:
        """Refuses (or, with allow_change, warns) when the data files differ from the step's."""
        if not os.path.isdir(os.path.join(self.directory, str(step), "data_files")):
            return  # written before fingerprints were saved
        saved = self.manager.restore(step, args=ocp.args.Composite(
            data_files=ocp.args.JsonRestore()))["data_files"]["files"]
        changes = data_changes(saved, self.fingerprints())
        if not changes:
            return
        message = (f"the data files changed since step {step} was saved in {self.directory}, so "
                   f"resuming would not continue the same run:\n  " + "\n  ".join(changes[:20]))
        if not allow_change:
            raise DataChanged(message + "\nPut the original files back, or set "
                                        "--config.checkpoint.allow_data_change=True to resume "
                                        "on the new data (the data position is kept).")
        log.warning("%s\nresuming anyway (checkpoint.allow_data_change=True)", message)

    def close(self, *, quiet: bool = False) -> None:
        """Waits for a save under way; its failure raises, or with `quiet` (the run is already
        failing for another reason) is only logged."""
        try:
            if self._saving is not None:
                with self._save_errors(self._saving):
                    self.manager.wait_until_finished()
        except CheckpointSaveError as e:
            if not quiet:
                raise
            log.error("%s", e)
        finally:
            self.manager.close()


def abstract_like(state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs with shardings: the restore target for a state tree."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        state, shardings)


# ----------------------------------------------------------------------------- parameters only
def latest_step(workdir: str) -> int:
    """The newest complete step in `workdir/checkpoints` (a save under way is not a step yet)."""
    folder = os.path.join(workdir, "checkpoints")
    steps = _complete_steps(folder)
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
    try:
        return _restore_params(path, target)
    except Exception as e:  # orbax/tensorstore raise plain Exceptions for missing or bad files
        raise CheckpointDamaged(f"{path}: the parameters cannot be read back ({type(e).__name__}:"
                                f" {str(e)[:300]}): it is damaged, or of another model") from e


def _restore_params(path: str, target: Any) -> Any:
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
