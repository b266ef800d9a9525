"""Bad-file rows for the bad-input table: every loader must name the file and what is wrong.

Each row copies a real, small, good folder (a transformers folder written by
`save_hf_checkpoint`, a tokenizer folder written by `LongformerTokenizer.save`) into its tmp
folder, breaks one file the way disks, downloads and editors break them, and calls the loader.
The good folders are built once per process, since a model init is the slow part.
"""

from __future__ import annotations

import functools
import json
import pathlib
import shutil
import tempfile
import zipfile

import ml_collections

from longformer import convert, data, evaluation, generate
from longformer.files import FileFormatError
from longformer.tasks import charlm, finetune, init_from, qa
from tests.cases import Case

TINY = dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=40, attention_window=4)
TEXTS = ["the cat sat on the mat", "a dog ate the bone", "the fox ran over the hill"] * 10


@functools.cache
def _hf_folder() -> pathlib.Path:
    import jax

    from longformer import LongformerConfig, hf_checkpoint, save_hf_checkpoint
    model = hf_checkpoint.model_class("masked_lm")(LongformerConfig(**TINY))
    params = hf_checkpoint.init_params(model, jax.random.key(0))
    folder = pathlib.Path(tempfile.mkdtemp(prefix="cases_files_hf_"))
    save_hf_checkpoint(folder, model, params)
    return folder


@functools.cache
def _tokenizer_folder() -> pathlib.Path:
    from longformer import LongformerTokenizer
    folder = pathlib.Path(tempfile.mkdtemp(prefix="cases_files_tok_"))
    LongformerTokenizer.train(TEXTS, vocab_size=300, min_frequency=1, save_dir=folder)
    return folder


def _copy(source: pathlib.Path, tmp: pathlib.Path, name: str) -> pathlib.Path:
    dst = tmp / name
    shutil.copytree(source, dst)
    return dst


def hf(tmp: pathlib.Path, **files) -> pathlib.Path:
    """A good transformers folder in tmp/hf, with `files` ({name: bytes, str or None}) replaced
    (None deletes the file)."""
    folder = _copy(_hf_folder(), tmp, "hf")
    for name, content in files.items():
        name = name.replace("__", ".")
        if content is None:
            (folder / name).unlink()
        elif isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            (folder / name).write_text(content)
    return folder


def tok(tmp: pathlib.Path, **files) -> pathlib.Path:
    """A good tokenizer folder in tmp/tok, with `files` replaced or (None) deleted."""
    folder = _copy(_tokenizer_folder(), tmp, "tok")
    for name, content in files.items():
        name = name.replace("__", ".")
        if content is None:
            (folder / name).unlink()
        elif isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            (folder / name).write_text(content)
    return folder


def load_hf(folder):
    from longformer import load_hf_checkpoint
    return load_hf_checkpoint(folder)


def load_tok(folder):
    from longformer import LongformerTokenizer
    return LongformerTokenizer.from_pretrained(folder)


def _truncated_weights(tmp):
    folder = hf(tmp)
    raw = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    return load_hf(folder)


def _no_weights(tmp):
    return load_hf(hf(tmp, model__safetensors=None))


def _sharded(tmp, index):
    folder = hf(tmp, model__safetensors=None)
    (folder / "model.safetensors.index.json").write_text(index)
    return load_hf(folder)


def _missing_shard(tmp):
    shard = "model-00001-of-00002.safetensors"
    folder = hf(tmp)
    (folder / "model.safetensors").rename(folder / shard)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": shard, "b": "model-00002-of-00002.safetensors"}}))
    return load_hf(folder)


def _torch_bin(tmp):
    folder = hf(tmp, model__safetensors=None)
    (folder / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not really a torch zip")
    return load_hf(folder)


def _weights_file_as_folder(tmp):
    return load_hf(hf(tmp) / "model.safetensors")


def _hf_config(tmp, text):
    return load_hf(hf(tmp, config__json=text))


def _vocab_merges(tmp, **files):
    return load_tok(tok(tmp, tokenizer__json=None, **files))


def _run_workdir(tmp, **files):
    workdir = tmp / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    for name, text in files.items():
        (workdir / name.replace("__", ".")).write_text(text)
    return workdir


def _jsonl(tmp, raw: bytes):
    path = tmp / "train.jsonl"
    path.write_bytes(raw)
    return finetune.read_jsonl(str(path))


def _records(tmp):
    config = ml_collections.ConfigDict({"data": {"train_file": str(tmp / "nothing_*.jsonl")}})
    return finetune.load_records(config, "train", lambda n, seed: [])


def _corpus(tmp, raw: bytes, name="enwik8.zip"):
    path = tmp / name
    path.write_bytes(raw)
    return charlm.read_corpus(str(path))


def _truncated_zip(tmp):
    src = tmp / "enwik8"
    src.write_bytes(b"some text " * 500)
    with zipfile.ZipFile(tmp / "full.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.write(src, "enwik8")
    raw = (tmp / "full.zip").read_bytes()
    return _corpus(tmp, raw[: len(raw) - 40])


def _all_bad_documents(tmp):
    (tmp / "a.txt").write_bytes(b"\xff\xfe not utf-8")
    (tmp / "b.txt").write_text("  \n")
    return data.load_documents({"train_files": str(tmp / "*.txt")})


def _config(tmp, text):
    from longformer import LongformerConfig
    return LongformerConfig.from_pretrained(hf(tmp, config__json=text))


def _squad(tmp, doc, name="squad.json"):
    """read_squad on `doc` (bytes or str as is, anything else as JSON), then every record's
    answer check, which is where a record's own faults are found."""
    path = tmp / name
    if isinstance(doc, bytes):
        path.write_bytes(doc)
    else:
        path.write_text(doc if isinstance(doc, str) else json.dumps(doc, indent=2))
    return [qa.answer_spans(r) for r in qa.read_squad(str(path))]


def _paragraph(**para):
    return {"data": [{"title": "t", "paragraphs": [para]}]}


_QUESTION = {"id": "q1", "question": "who?", "answers": [{"text": "Bob", "answer_start": 8}]}


def _p(*parts):
    """`says` for a row: the path tmp/<parts...> followed by fixed words."""
    *names, words = parts
    return lambda tmp: [str(tmp.joinpath(*names))] + list(words)


FILE_CASES: list[Case] = [
    # --------------------------------------------------------------- transformers folders
    Case("hf config.json not JSON", lambda t: _hf_config(t, "{not json"), FileFormatError,
         _p("hf", "config.json", ["not valid JSON (line 1 column 2", "config.json"])),
    Case("hf config.json missing", lambda t: load_hf(hf(t, config__json=None)),
         FileNotFoundError, _p("hf", "config.json", ["missing"])),
    Case("hf config.json not an object", lambda t: _hf_config(t, "[1, 2]"), FileFormatError,
         _p("hf", "config.json", ["holds an array, not an object"])),
    Case("hf config.json without sizes", lambda t: _hf_config(t, '{"model_type": "longformer"}'),
         FileFormatError, _p("hf", "config.json", ["missing required field(s) vocab_size"])),
    Case("hf config.json bad value",
         lambda t: _hf_config(t, json.dumps({**TINY, "hidden_size": -16})), FileFormatError,
         _p("hf", "config.json", ["hidden_size must be a positive int"])),
    Case("hf model.safetensors truncated", _truncated_weights, FileFormatError,
         _p("hf", "model.safetensors", ["truncated", "safetensors"])),
    Case("hf model.safetensors not safetensors",
         lambda t: load_hf(hf(t, model__safetensors=b"{not json" * 10)), FileFormatError,
         _p("hf", "model.safetensors", ["not a safetensors file"])),
    Case("hf model.safetensors empty", lambda t: load_hf(hf(t, model__safetensors=b"")),
         FileFormatError, _p("hf", "model.safetensors", ["empty"])),
    Case("hf no weights", _no_weights, FileNotFoundError,
         _p("hf", ["no weights", "model.safetensors"])),
    Case("hf index not JSON", lambda t: _sharded(t, '{"weight_map": '), FileFormatError,
         _p("hf", "model.safetensors.index.json", ["not valid JSON"])),
    Case("hf index without weight_map", lambda t: _sharded(t, '{"metadata": {}}'),
         FileFormatError, _p("hf", "model.safetensors.index.json", ['no "weight_map"'])),
    Case("hf index names a missing shard", _missing_shard, FileNotFoundError,
         _p("hf", "model-00002-of-00002.safetensors", ["missing", "index.json"])),
    Case("hf pytorch_model.bin corrupt", _torch_bin, FileFormatError,
         _p("hf", "pytorch_model.bin", ["not a readable torch checkpoint"])),
    Case("hf path is a file", _weights_file_as_folder, FileFormatError,
         _p("hf", "model.safetensors", ["a file, not a folder"])),
    Case("hf path missing", lambda t: load_hf(t / "nowhere"), FileNotFoundError,
         _p("nowhere", ["no such folder"])),
    # --------------------------------------------------------------- tokenizer folders
    Case("tokenizer.json not JSON", lambda t: load_tok(tok(t, tokenizer__json="{not json")),
         FileFormatError, _p("tok", "tokenizer.json", ["not valid JSON"])),
    Case("tokenizer.json not a tokenizer", lambda t: load_tok(tok(t, tokenizer__json='{"a": 1}')),
         FileFormatError, _p("tok", "tokenizer.json", ["not a tokenizers file"])),
    Case("vocab.json not JSON", lambda t: _vocab_merges(t, vocab__json='{"a": 0,'),
         FileFormatError, _p("tok", "vocab.json", ["not valid JSON"])),
    Case("merges.txt corrupt", lambda t: _vocab_merges(t, merges__txt="#version: 0.2\nab\n"),
         FileFormatError, _p("tok", "merges.txt", ["Merges text file invalid", "vocab.json"])),
    Case("merges.txt missing", lambda t: _vocab_merges(t, merges__txt=None), FileNotFoundError,
         _p("tok", "merges.txt", ["missing"])),
    Case("tokenizer_config.json not JSON",
         lambda t: load_tok(tok(t, tokenizer_config__json="{'single': 'quotes'}")),
         FileFormatError, _p("tok", "tokenizer_config.json", ["not valid JSON"])),
    Case("tokenizer_config.json not UTF-8",
         lambda t: load_tok(tok(t, tokenizer_config__json=b'{"a": "\xff"}')), FileFormatError,
         _p("tok", "tokenizer_config.json", ["not UTF-8"])),
    Case("special_tokens_map.json bad token",
         lambda t: load_tok(tok(t, special_tokens_map__json='{"mask_token": 5}')),
         FileFormatError, _p("tok", "special_tokens_map.json", ["mask_token is a number"])),
    # --------------------------------------------------------------- init_from / eval.py / convert
    Case("init_from config.json not JSON",
         lambda t: init_from.source_kind(str(hf(t, config__json="{not json"))), FileFormatError,
         _p("hf", "config.json", ["not valid JSON"])),
    Case("run model_config.json not JSON",
         lambda t: init_from.run_model_config(str(_run_workdir(t, model_config__json="{"))),
         FileFormatError, _p("run", "model_config.json", ["not valid JSON"])),
    Case("run config.json without model",
         lambda t: init_from.run_model_config(str(_run_workdir(t, config__json="{}"))),
         FileFormatError, _p("run", "config.json", ['no "model" object'])),
    Case("eval run config.json not JSON",
         lambda t: evaluation.load_run_config(str(_run_workdir(t, config__json="{\n  'task'"))),
         FileFormatError, _p("run", "config.json", ["not valid JSON (line 2 column 3"])),
    Case("convert RoBERTa config.json not JSON",
         lambda t: convert.load_roberta_as_longformer(
             hf(t, config__json="{not json"), max_length=64, attention_window=4),
         FileFormatError, _p("hf", "config.json", ["not valid JSON", "RoBERTa"])),
    Case("LongformerConfig config.json not JSON", lambda t: _config(t, '{"vocab_size": 64,,}'),
         FileFormatError, _p("hf", "config.json", ["not valid JSON (line 1 column 19"])),
    Case("LongformerConfig config.json missing",
         lambda t: _config(t, None), FileNotFoundError, _p("hf", "config.json", ["missing"])),
    Case("LongformerConfig config.json not an object", lambda t: _config(t, '"longformer"'),
         FileFormatError, _p("hf", "config.json", ["holds a string, not an object"])),
    Case("LongformerConfig config.json bad value",
         lambda t: _config(t, json.dumps({**TINY, "attention_window": 3})), FileFormatError,
         _p("hf", "config.json", ["attention_window for layer 0 must be an even positive int"])),
    Case("generate run config.json not JSON",
         lambda t: generate.run_config(str(_run_workdir(t, config__json='{"task": "charlm"'))),
         FileFormatError, _p("run", "config.json", ["not valid JSON", "charlm"])),
    Case("generate run config.json of another task",
         lambda t: generate.run_config(str(_run_workdir(t, config__json='{"task": "mlm"}'))),
         FileFormatError, _p("run", "config.json", ["task is 'mlm', not 'charlm'"])),
    # --------------------------------------------------------------- data files
    Case("finetune jsonl not UTF-8", lambda t: _jsonl(t, b'{"text": "ok"}\n{"text": "\xff"}\n'),
         finetune.DataError, _p("train.jsonl:2", ["not UTF-8"])),
    Case("finetune jsonl is a folder",
         lambda t: finetune.read_jsonl(str(t)), finetune.DataError, lambda t: [str(t), "folder"]),
    Case("finetune glob matches nothing", _records, FileNotFoundError,
         _p("nothing_*.jsonl", ["matched no files"])),
    Case("charlm zip truncated", _truncated_zip, FileFormatError,
         _p("enwik8.zip", ["corrupt or truncated zip"])),
    Case("charlm corpus empty", lambda t: _corpus(t, b"", "text8"), FileFormatError,
         _p("text8", ["empty"])),
    Case("qa SQuAD file not JSON", lambda t: _squad(t, json.dumps(_paragraph(), indent=2)[:-9]),
         finetune.DataError, _p("squad.json", ["not valid JSON (line 8 column 3", "SQuAD"])),
    Case("qa SQuAD file not UTF-8", lambda t: _squad(t, b'{"data": []}\n\xff'), FileFormatError,
         _p("squad.json", ["not UTF-8 text (line 2"])),
    Case("qa SQuAD file without data", lambda t: _squad(t, {"version": "1.1"}),
         finetune.DataError, _p("squad.json", ['top-level "data" list', "keys ['version']"])),
    Case("qa SQuAD article without paragraphs", lambda t: _squad(t, {"data": [{"title": "t"}]}),
         finetune.DataError, _p("squad.json", ["data[0].paragraphs is missing"])),
    Case("qa SQuAD paragraph not an object",
         lambda t: _squad(t, {"data": [{"paragraphs": [{"context": "x", "qas": []}, "text"]}]}),
         finetune.DataError, _p("squad.json", ["data[0].paragraphs[1] is a string, not an object"])),
    Case("qa SQuAD paragraph without context", lambda t: _squad(t, _paragraph(qas=[_QUESTION])),
         finetune.DataError, _p("squad.json", ["data[0].paragraphs[0].context is missing"])),
    Case("qa SQuAD qas not a list",
         lambda t: _squad(t, _paragraph(context="Ann met Bob.", qas=_QUESTION)),
         finetune.DataError, _p("squad.json", ["data[0].paragraphs[0].qas is an object, not a "
                                               "list"])),
    Case("qa SQuAD question without answers",
         lambda t: _squad(t, _paragraph(context="Ann met Bob.", qas=[
             {"id": "q1", "question": "who?"}])), finetune.DataError,
         _p("squad.json:10", ["data[0].paragraphs[0].qas[0], id 'q1'", "missing field 'answers'"])),
    Case("qa SQuAD answer past the context",
         lambda t: _squad(t, _paragraph(context="Ann met Bob.", qas=[{**_QUESTION, "answers": [
             {"text": "Bob", "answer_start": 20}]}])), finetune.DataError,
         _p("squad.json:10", ["id 'q1'", "answer_start=20 runs past the end of the context (12 "
                             "characters)"])),
    Case("qa JSON list item not an object", lambda t: _squad(t, [{**_QUESTION, "context": "c"}, 3]),
         finetune.DataError, _p("squad.json", ["item 1 is a number, not an object"])),
    Case("mlm glob matches nothing",
         lambda t: data.load_documents({"train_files": str(t / "nope_*.txt")}),
         FileNotFoundError, _p("nope_*.txt", ["matched no files"])),
    Case("mlm every file bad", _all_bad_documents, ValueError,
         lambda t: [f"train_files={str(t / '*.txt')!r}", str(t / "a.txt"), "No usable documents"]),
]

assert len({c.name for c in FILE_CASES}) == len(FILE_CASES)
