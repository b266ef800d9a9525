"""The table of bad inputs and faults: each must give a clear error naming the problem, and no
fault may lose or alter a checkpoint that existed before it.

Three tables, one test each: bad inputs to the model and the pipelines (`MODEL_CASES`), bad
files to every loader (`tests/cases_files.py`), and faults during training (`FAULTS`). A row
names the words its message must contain, so a message regressing to a bare library error
(`IndexError` from a gather, `JSONDecodeError`, tensorstore's `Exception`) fails its row.

A fault row starts from a copy of one 6-step run (checkpoints at 2, 4, 6, on data files of its
own), does the damage, reruns to step 8, compares every file of the checkpoints from before the
fault with their copies from before it, then (after undoing the fault where there is one)
checks that the run ends bit for bit where an uninterrupted 8-step run ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import tempfile
from typing import Any, Callable, ContextManager, Optional

import jax
import numpy as np
import pytest
from etils import epath

from configs import mlm_tiny
from longformer import (
    LongformerConfig,
    LongformerForMaskedLM,
    LongformerForMultipleChoice,
    LongformerForSequenceClassification,
    LongformerModel,
    checkpoints,
    corpus,
    packing,
    tasks,
    train_lib,
)
from tests.cases import Case
from tests.cases_files import FILE_CASES

# ----------------------------------------------------------------------------- model inputs
TINY = LongformerConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=40, attention_window=4,
                        max_global_tokens=2)
IDS = np.full((2, 8), 5, np.int32)


@functools.cache
def _params(model_cls=LongformerModel, scan=False):
    model = model_cls(TINY.replace(scan_layers=scan))
    ids = IDS[:, None] if model_cls is LongformerForMultipleChoice else IDS
    return model, model.init(jax.random.key(0), ids, global_attention_mask=0 * ids)


def _apply(cls=LongformerModel, scan=False, **inputs):
    model, params = _params(cls, scan)
    return model.apply(params, **inputs)


def _with(value, at=(1, 3), base=IDS):
    x = base.copy()
    x[at] = value
    return x


def _config(**fields):
    return lambda tmp: TINY.replace(**fields)


def _too_many_globals(tmp):
    _apply(input_ids=IDS, global_attention_mask=np.ones_like(IDS))


def _other_layout(tmp):
    model, _ = _params(LongformerModel, scan=False)
    _, stacked = _params(LongformerModel, scan=True)
    model.apply(stacked, IDS)


def _too_many_segments(tmp):
    model = LongformerForSequenceClassification(TINY.replace(max_segments=2))
    seg = np.array([[1, 1, 2, 2, 3, 3, 0, 0]] * 2, np.int32)
    params = model.init(jax.random.key(0), IDS)
    model.apply(params, IDS, segment_ids=seg)


def _rows(lengths, globals_=0):
    mask = (np.arange(8)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    glob = np.zeros_like(mask)
    glob[:, :globals_] = 1
    return {"input_ids": np.where(mask > 0, 5, 1), "attention_mask": mask,
            "global_attention_mask": glob * mask, "labels": np.zeros(len(lengths), np.int32)}


def _example_longer_than_a_row(tmp):
    packing.pack(_rows([4, 8, 3]), seq_len=6, max_global_tokens=4, max_segments=4)


def _too_many_row_globals(tmp):
    packing.pack(_rows([4, 5], globals_=3), seq_len=8, max_global_tokens=2, max_segments=4)


def _mlm_config(tmp, **overrides):
    c = mlm_tiny.get_config()
    c.checkpoint.async_save = False
    c.data.max_documents = 40
    c.update_from_flattened_dict(overrides)
    return c


def _tokenizer_larger_than_model(tmp):
    config = _mlm_config(tmp, **{"model.vocab_size": 100,
                                 "tokenizer": str(_base_run() / "run" / "tokenizer")})
    train_lib.train_and_evaluate(config, str(tmp / "run"))


def _out_of_vocabulary_batch(tmp):
    task = tasks.build(_mlm_config(tmp), str(tmp / "run"))
    batch = dict(next(task.train_data))
    batch["input_ids"] = _with(task.model.config.vocab_size + 7, (2, 5), batch["input_ids"])
    task.check_batch(batch, "training batch of step 1: ")


def _unwritable_workdir(tmp):
    (tmp / "a_file").write_text("not a folder")
    train_lib.train_and_evaluate(_mlm_config(tmp), str(tmp / "a_file" / "run"))


MODEL_CASES = [
    Case("input id beyond the vocabulary", lambda tmp: _apply(input_ids=_with(64)), ValueError,
         ["input_ids holds 64 at position (1, 3)", "vocab_size=64", "tokenizer"]),
    Case("negative input id", lambda tmp: _apply(input_ids=_with(-1)), ValueError,
         ["input_ids holds -1 at position (1, 3)", "ids 0..63"]),
    Case("token type beyond its table",
         lambda tmp: _apply(input_ids=IDS, token_type_ids=_with(2, base=0 * IDS)), ValueError,
         ["token_type_ids holds 2", "type_vocab_size=2"]),
    Case("position id beyond the table",
         lambda tmp: _apply(input_ids=IDS, position_ids=_with(40, base=IDS)), ValueError,
         ["position_ids holds 40", "max_position_embeddings=40"]),
    Case("empty sequence", lambda tmp: _apply(input_ids=IDS[:, :0]), ValueError,
         ["(2, 0)", "at least one token"]),
    Case("empty batch", lambda tmp: _apply(input_ids=IDS[:0]), ValueError,
         ["(0, 8)", "at least one example"]),
    Case("inputs_embeds of the wrong width",
         lambda tmp: _apply(inputs_embeds=np.zeros((2, 8, 12), np.float32)), ValueError,
         ["inputs_embeds has width 12", "hidden_size is 16"]),
    Case("both input_ids and inputs_embeds",
         lambda tmp: _apply(input_ids=IDS, inputs_embeds=np.zeros((2, 8, 16), np.float32)),
         ValueError, ["exactly one of input_ids and inputs_embeds"]),
    Case("1-d input_ids", lambda tmp: _apply(input_ids=IDS[0]), ValueError,
         ["input_ids must be (batch, length)", "(8,)"]),
    Case("attention mask of another shape",
         lambda tmp: _apply(input_ids=IDS, attention_mask=IDS[:, :4]), ValueError,
         ["attention_mask has shape (2, 4)", "(2, 8)"]),
    Case("global mask of another shape",
         lambda tmp: _apply(input_ids=IDS, global_attention_mask=IDS[:1]), ValueError,
         ["global_attention_mask has shape (1, 8)"]),
    Case("more global tokens than the budget", _too_many_globals, ValueError,
         ["asks for 8 global tokens", "max_global_tokens=2"]),
    Case("sequence longer than the position table",
         lambda tmp: _apply(input_ids=np.full((1, 40), 5, np.int32)), ValueError,
         ["longer than the position table", "max_position_embeddings=40"]),
    Case("odd window", _config(attention_window=5), ValueError,
         ["attention_window for layer 0 must be an even positive int", "got 5"]),
    Case("missing window", _config(attention_window=[4]), ValueError,
         ["attention_window has 1 entries but num_hidden_layers is 2"]),
    Case("negative global budget", _config(max_global_tokens=-1), ValueError,
         ["max_global_tokens must be >= 0"]),
    Case("heads do not divide the hidden size", _config(hidden_size=15), ValueError,
         ["hidden_size (15) is not a multiple of num_attention_heads (2)"]),
    Case("unknown platform", _config(platform="npu"), ValueError,
         ["platform 'npu' is not one of"]),
    Case("multiple choice without a choices axis",
         lambda tmp: _apply(LongformerForMultipleChoice, input_ids=IDS), ValueError,
         ["multiple choice inputs must be (batch, choices, length)"]),
    Case("parameters of the other layer layout", _other_layout, ValueError,
         ["scan_layers=False", "unstack_layers"]),
    Case("segment_ids of another shape",
         lambda tmp: _apply(input_ids=IDS, segment_ids=IDS[:, :5]), ValueError,
         ["segment_ids has shape (2, 5)", "(2, 8)"]),
    Case("negative segment id",
         lambda tmp: _apply(input_ids=IDS, segment_ids=_with(-1, base=np.ones_like(IDS))),
         ValueError, ["segment_ids holds -1 at position (1, 3)", "0 for padding"]),
    Case("a global token in padding of a packed row",
         lambda tmp: _apply(input_ids=IDS, segment_ids=_with(0, base=np.ones_like(IDS)),
                            global_attention_mask=_with(1, base=0 * IDS)), ValueError,
         ["global_attention_mask marks position (1, 3) as global", "segment_ids is 0"]),
    Case("more sequences in a row than max_segments", _too_many_segments, ValueError,
         ["row 0 packs 3 sequences", "max_segments=2"]),
    Case("multiple choice on packed rows",
         lambda tmp: _apply(LongformerForMultipleChoice, input_ids=IDS[:, None],
                            segment_ids=np.ones_like(IDS)[:, None]), ValueError,
         ["multiple choice does not take packed rows"]),
    Case("an example longer than a packed row", _example_longer_than_a_row, ValueError,
         ["example 1 has 8 tokens but a packed row holds 6 (data.seq_len)"]),
    Case("an example with more global tokens than a packed row holds", _too_many_row_globals,
         ValueError, ["example 0 has 3 global tokens but a packed row holds 2"]),
    Case("tokenizer larger than the model's vocabulary", _tokenizer_larger_than_model,
         ValueError, ["the tokenizer has", "vocab_size is 100"]),
    Case("out-of-vocabulary id in a training batch", _out_of_vocabulary_batch, ValueError,
         ["training batch of step 1: input_ids holds 519 at position (2, 5)", "vocab_size=512"]),
    Case("workdir that cannot be written", _unwritable_workdir, train_lib.WorkdirError,
         lambda tmp: [f"the workdir {tmp / 'a_file' / 'run'} cannot be written"]),
]


@pytest.mark.parametrize("case", MODEL_CASES + FILE_CASES,
                         ids=[c.name for c in MODEL_CASES + FILE_CASES])
def test_bad_input_gives_a_clear_error(case, tmp_path):
    with pytest.raises(case.error) as e:
        case.run(tmp_path)
    message = str(e.value)
    for words in case.expected(tmp_path):
        assert words in message, f"{words!r} not in {message!r}"


def test_out_of_range_ids_under_jit_are_flagged():
    """Under jit the ids are not known: the output says which examples had a bad one."""
    model, params = _params()
    out = jax.jit(model.apply)(params, _with(64))
    np.testing.assert_array_equal(out.ids_out_of_range, [False, True])
    mlm = LongformerForMaskedLM(TINY)
    mlm_params = mlm.init(jax.random.key(0), IDS)
    out = jax.jit(mlm.apply)(mlm_params, IDS, token_type_ids=_with(-3, (0, 0), 0 * IDS))
    np.testing.assert_array_equal(out.ids_out_of_range, [True, False])


# ----------------------------------------------------------------------------- faults in training
STEPS = {"total_steps": 6, "checkpoint.every_steps": 2, "checkpoint.keep": 10,
         "logging.every_steps": 2, "logging.eval_every_steps": 100, "logging.eval_batches": 1}


def _write_data(folder: pathlib.Path) -> None:
    folder.mkdir(parents=True)
    docs = corpus.default_corpus_documents()[:60]
    for i, name in enumerate("abc"):
        (folder / f"{name}.txt").write_text("\n\n".join(docs[i::3]), encoding="utf-8")


def _train(tmp: pathlib.Path, total_steps: int, **overrides) -> dict:
    c = mlm_tiny.get_config()
    c.checkpoint.async_save = False
    c.update_from_flattened_dict({**STEPS, "total_steps": total_steps,
                                  "data.train_files": str(tmp / "data" / "*.txt"), **overrides})
    return train_lib.train_and_evaluate(c, str(tmp / "run"))


@functools.cache
def _base_run() -> pathlib.Path:
    """A 6-step run with checkpoints at 2, 4, 6."""
    base = pathlib.Path(tempfile.mkdtemp(prefix="fault_base_"))
    _write_data(base / "data")
    _train(base, 6)
    return base


@functools.cache
def _uninterrupted() -> list[np.ndarray]:
    """The parameters after 8 steps straight through."""
    ref = pathlib.Path(tempfile.mkdtemp(prefix="fault_reference_"))
    _write_data(ref / "data")
    return jax.tree.leaves(jax.device_get(_train(ref, 8)["params"]))


def _files(folder: pathlib.Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.blake2b(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _array_files(tmp, step):
    return sorted((tmp / "run" / "checkpoints" / str(step) / "state").rglob("d/*"),
                  key=lambda p: p.stat().st_size)


def _truncate(step: int):
    def damage(tmp):
        big = _array_files(tmp, step)[-1]
        big.write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    return damage


def _delete_array(tmp):
    _array_files(tmp, 6)[-1].unlink()


def _truncate_all(tmp):
    for step in (2, 4, 6):
        _truncate(step)(tmp)


def _restore_checkpoints(tmp):
    shutil.rmtree(tmp / "run" / "checkpoints")
    shutil.copytree(_base_run() / "run" / "checkpoints", tmp / "run" / "checkpoints")


def _edit_data(tmp):
    with open(tmp / "data" / "b.txt", "a", encoding="utf-8") as f:
        f.write("\n\nA paragraph that was not there when the run started.")


def _remove_data(tmp):
    (tmp / "data" / "c.txt").unlink()


def _restore_data(tmp):
    shutil.rmtree(tmp / "data")
    shutil.copytree(_base_run() / "data", tmp / "data")


@contextlib.contextmanager
def _disk_full_at_step_8(tmp):
    """Every write into step 8's checkpoint raises ENOSPC, as a full disk does."""
    cls = type(epath.Path(str(tmp)))
    original = cls.write_text

    def write_text(self, *args, **kwargs):
        if "/8.orbax-checkpoint-tmp" in str(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return original(self, *args, **kwargs)

    cls.write_text = write_text
    try:
        yield
    finally:
        cls.write_text = original


_MOUNTS: list[pathlib.Path] = []


def _small_filesystem(tmp):
    """The run moved onto a tmpfs with room for its files but not for another checkpoint."""
    run, real = tmp / "run", tmp / "run_files"
    run.rename(real)
    run.mkdir()
    used = sum(p.stat().st_size for p in real.rglob("*") if p.is_file())
    size_k = used // 1024 + 400  # a checkpoint of this model is about 700 KiB
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_k}k", "tmpfs", str(run)],
                             capture_output=True)
    if mounted.returncode:
        run.rmdir()
        real.rename(run)
        pytest.skip(f"cannot mount a small filesystem here ({mounted.stderr.decode().strip()})")
    _MOUNTS.append(run)
    shutil.copytree(real, run, dirs_exist_ok=True)


def _free_space(tmp):
    subprocess.run(["mount", "-o", "remount,size=64m", str(tmp / "run")], check=True)


@dataclasses.dataclass(frozen=True)
class Fault:
    name: str
    error: Optional[type]  # what the rerun raises; None: it goes on, with a warning
    says: list[str]  # in the error's message, or in the log when it goes on
    damage: Callable[[pathlib.Path], Any] = lambda tmp: None  # before the rerun
    during: Callable[[pathlib.Path], ContextManager] = lambda tmp: contextlib.nullcontext()
    overrides: dict = dataclasses.field(default_factory=dict)  # of the rerun's config
    damaged: tuple = ()  # steps the fault itself altered: kept, never deleted
    moved: bool = False  # whether those are moved to damaged_checkpoints/
    undo: Optional[Callable[[pathlib.Path], Any]] = None  # before the final rerun
    exact: bool = True  # whether the run must then end exactly as the uninterrupted one


FAULTS = [
    Fault("newest checkpoint truncated after it was written", None,
          ["checkpoint step 6", "cannot be read back", "moved to", "damaged_checkpoints/6",
           "not deleted"], damage=_truncate(6), damaged=(6,), moved=True),
    Fault("an array file of the newest checkpoint deleted", None,
          ["checkpoint step 6", "cannot be read back", "damaged_checkpoints/6"],
          damage=_delete_array, damaged=(6,), moved=True),
    Fault("every checkpoint damaged", checkpoints.CheckpointDamaged,
          ["none can be read back", "step 6:", "step 4:", "step 2:",
           "Nothing was moved or deleted"], damage=_truncate_all, damaged=(2, 4, 6),
          undo=_restore_checkpoints),
    Fault("disk full during a save", checkpoints.CheckpointSaveError,
          ["saving the checkpoint of step 8", "the disk is full", "intact (latest: step 6)",
           "rerun the same command"], during=_disk_full_at_step_8, undo=lambda tmp: None),
    Fault("disk full during a save (a real, small filesystem)", checkpoints.CheckpointSaveError,
          ["saving the checkpoint of step 8", "the disk is full", "intact (latest: step 6)"],
          damage=_small_filesystem, undo=_free_space),
    Fault("a data file changed before the resume", checkpoints.DataChanged,
          ["the data files changed since step 6", "b.txt: changed", "allow_data_change"],
          damage=_edit_data, undo=_restore_data),
    Fault("a data file removed before the resume", checkpoints.DataChanged,
          ["the data files changed since step 6", "c.txt: removed"], damage=_remove_data,
          undo=_restore_data),
    Fault("a data file changed, resumed on purpose", None,
          ["b.txt: changed", "resuming anyway"], damage=_edit_data,
          overrides={"checkpoint.allow_data_change": True}, exact=False),
    Fault("resumed with another model's config", checkpoints.CheckpointConfigMismatch,
          ["model.hidden_size: checkpoint has 32, config has 64"],
          overrides={"model.hidden_size": 64}, undo=lambda tmp: None),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_fault_gives_a_clear_error_and_loses_nothing(fault, tmp_path, caplog):
    base = _base_run()
    shutil.copytree(base / "run", tmp_path / "run")
    shutil.copytree(base / "data", tmp_path / "data")
    try:
        before = _files(tmp_path / "run" / "checkpoints")
        fault.damage(tmp_path)
        after_damage = _files(tmp_path / "run" / "checkpoints")

        with caplog.at_level(logging.WARNING), fault.during(tmp_path):
            if fault.error is None:
                last = _train(tmp_path, 8, **fault.overrides)
                message = caplog.text
            else:
                with pytest.raises(fault.error) as e:
                    _train(tmp_path, 8, **fault.overrides)
                message = str(e.value)
        for words in fault.says:
            assert words in message, f"{words!r} not in {message!r}"

        # Nothing that existed before the fault is lost or altered; what the fault damaged is
        # kept (in place, or moved aside) exactly as the fault left it.
        now = _files(tmp_path / "run" / "checkpoints")
        aside = _files(tmp_path / "run" / "damaged_checkpoints")
        for name, digest in before.items():
            step = int(name.split("/")[0])
            if step not in fault.damaged:
                assert now.get(name) == digest, f"checkpoint file {name} lost or altered"
            elif fault.moved:
                assert aside.get(name) == after_damage.get(name), f"damaged {name} not kept"
            else:
                assert now.get(name) == after_damage.get(name), f"damaged {name} not kept"

        if fault.undo is not None:
            fault.undo(tmp_path)
            last = _train(tmp_path, 8)
        assert last["step"] == 8
        if fault.exact:
            for got, want in zip(jax.tree.leaves(jax.device_get(last["params"])),
                                 _uninterrupted(), strict=True):
                np.testing.assert_array_equal(got, want)
    finally:
        while _MOUNTS:
            subprocess.run(["umount", str(_MOUNTS.pop())], capture_output=True)


def test_table_size_is_what_the_readme_says():
    """README.md states how many bad inputs and faults the tables try."""
    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    inputs = len(MODEL_CASES) + len(FILE_CASES)
    assert f"{inputs} bad inputs and {len(FAULTS)} faults" in readme
