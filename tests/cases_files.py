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


# --------------------------------------------------------------- the readers and tasks of issue 14
def _file(tmp, name, content) -> str:
    path = tmp / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(
        content if isinstance(content, str) else json.dumps(content))
    return str(path)


def _hyperpartisan(tmp, truth: str, articles: str = '<articles><article id="1">a</article>'
                   '</articles>'):
    """read_hyperpartisan on a ground-truth file and an articles file (XML bodies as given)."""
    from longformer import readers
    return readers.read_hyperpartisan([_file(tmp, "truth.xml", truth),
                                       _file(tmp, "articles.xml", articles)])


_TRUTH = '<articles><article id="1" hyperpartisan="true"/></articles>'
_TQ = {"Question": "which city", "QuestionId": "tq_1",
       "Answer": {"Value": "Lima", "Aliases": ["Lima"], "NormalizedAliases": ["lima"]},
       "EntityPages": [{"Filename": "Lima.txt"}]}


def _triviaqa(tmp, data=None, evidence=b"Lima is a city", **top):
    """read_wikipedia on a release laid out in tmp (qa/dev.json, evidence/wikipedia/Lima.txt)."""
    from longformer.tasks import triviaqa
    (tmp / "qa").mkdir()
    (tmp / "evidence" / "wikipedia").mkdir(parents=True)
    (tmp / "evidence" / "wikipedia" / "Lima.txt").write_bytes(evidence)
    doc = {"Domain": "Wikipedia", **({} if data is None else {"Data": data}), **top}
    return triviaqa.read_wikipedia(_file(tmp, "qa/dev.json", doc))


def _wikihop(tmp, **changes):
    """read_wikihop and every record's check, on one record with `changes`."""
    from longformer.tasks import wikihop
    rec = {"id": "WH_1", "query": "located_in rome", "answer": "italy",
           "candidates": ["italy", "spain"], "supports": ["rome is in italy ."], **changes}
    return [wikihop.check_record(r) for r in wikihop.read_wikihop(_file(tmp, "dev.json", [rec]))]


def _hotpot(tmp, *items):
    """read_hotpot and every record's check (labels needed, as for training)."""
    from longformer.tasks import hotpotqa
    return [hotpotqa.check_record(r, need_labels=True)
            for r in hotpotqa.read_hotpot(_file(tmp, "train.json", list(items)))]


_HQ = {"_id": "h1", "question": "who?", "answer": "Ann", "supporting_facts": [["Ann", 0]],
       "context": [["Ann", ["Ann met Bob ."]]]}


def _task_config(**data):
    return ml_collections.ConfigDict({"data": data})


def _readers(call):
    from longformer import readers
    return call(readers)


FILE_CASES += [
    Case("data.fields maps a field twice",
         lambda t: _readers(lambda r: r.parse_fields("text=body,text=title")), ValueError,
         ["data.fields='text=body,text=title'", "'text' is mapped twice"]),
    Case("data.format unknown",
         lambda t: _readers(lambda r: r.read(str(t), fmt="csv", fields="", split="train",
                                             default=finetune.read_jsonl)), ValueError,
         ["data.format 'csv' is not one of"]),
    Case("hyperpartisan root not <articles>",
         lambda t: _hyperpartisan(t, '<docs><article id="1" hyperpartisan="true"/></docs>'),
         finetune.DataError, _p("truth.xml", ["the root element is <docs>, not <articles>"])),
    Case("hyperpartisan no articles", lambda t: _hyperpartisan(t, "<articles></articles>"),
         finetune.DataError, _p("truth.xml", ["no <article> elements"])),
    Case("hyperpartisan article without id",
         lambda t: _hyperpartisan(t, '<articles><article hyperpartisan="true"/></articles>'),
         finetune.DataError, _p("truth.xml", ["an <article> without an id attribute"])),
    Case("hyperpartisan label not true/false",
         lambda t: _hyperpartisan(t, '<articles><article id="1" hyperpartisan="yes"/></articles>'),
         finetune.DataError, _p("truth.xml", ["article id '1' has hyperpartisan='yes', not 'true' "
                                              "or 'false'"])),
    Case("hyperpartisan ground truth twice",
         lambda t: _hyperpartisan(t, _TRUTH.replace("</articles>", '<article id="1" '
                                                    'hyperpartisan="false"/></articles>')),
         finetune.DataError, _p("truth.xml", ["article id '1' has ground truth twice"])),
    Case("hyperpartisan article twice",
         lambda t: _hyperpartisan(t, _TRUTH, '<articles><article id="1">a</article>'
                                  '<article id="1">b</article></articles>'),
         finetune.DataError, _p("articles.xml", ["article id '1' occurs twice"])),
    Case("triviaqa file without Data", lambda t: _triviaqa(t), finetune.DataError,
         _p("qa", "dev.json", ['"Data" is missing'])),
    Case("triviaqa question not an object", lambda t: _triviaqa(t, [_TQ, 7]), finetune.DataError,
         _p("qa", "dev.json", ["(Data[1]): a number, not a question object"])),
    Case("triviaqa question empty", lambda t: _triviaqa(t, [{**_TQ, "Question": " "}]),
         finetune.DataError, _p("qa", "dev.json", ["(Data[0], QuestionId 'tq_1'): the question "
                                                   "is empty"])),
    Case("triviaqa aliases not strings",
         lambda t: _triviaqa(t, [{**_TQ, "Answer": {**_TQ["Answer"], "Aliases": [3]}}]),
         finetune.DataError, _p("qa", "dev.json", ["QuestionId 'tq_1'", "Answer.Aliases must be "
                                                   "a string or a list of strings"])),
    Case("triviaqa answer without normalized aliases",
         lambda t: _triviaqa(t, [{**_TQ, "Answer": {"Value": "Lima"}}]), finetune.DataError,
         _p("qa", "dev.json", ["QuestionId 'tq_1'", "the Answer has no NormalizedAliases"])),
    Case("triviaqa page not an object",
         lambda t: _triviaqa(t, [{**_TQ, "EntityPages": ["Lima.txt"]}]), finetune.DataError,
         _p("qa", "dev.json", ["QuestionId 'tq_1', EntityPages[0]): a string, not a page "
                               "object"])),
    Case("triviaqa evidence not UTF-8", lambda t: _triviaqa(t, [_TQ], evidence=b"Lima \xff"),
         finetune.DataError,
         lambda t: [str(t / "qa" / "dev.json"), "EntityPages[0]", "evidence file 'Lima.txt'",
                    str(t / "evidence" / "wikipedia" / "Lima.txt"), "not UTF-8 text (byte 5"]),
    Case("triviaqa max_answer_spans 0",
         lambda t: _triviaqa_config(max_answer_spans=0, max_doc_tokens=0), ValueError,
         ["data.max_answer_spans=0 must be >= 1"]),
    Case("triviaqa max_doc_tokens negative",
         lambda t: _triviaqa_config(max_answer_spans=1, max_doc_tokens=-1), ValueError,
         ["data.max_doc_tokens=-1 must be >= 0"]),
    Case("wikihop query empty", lambda t: _wikihop(t, query=""), finetune.DataError,
         _p("dev.json", ["(record 0, id 'WH_1'): the query is empty"])),
    Case("wikihop support not a string", lambda t: _wikihop(t, supports=["a", ["b"]]),
         finetune.DataError, _p("dev.json", ["id 'WH_1'", "supports must be strings"])),
    Case("wikihop max_chunks 0", lambda t: _wikihop_config(max_chunks=0), ValueError,
         ["data.max_chunks=0 must be at least 1"]),
    Case("hotpotqa item not an object", lambda t: _hotpot(t, _HQ, "text"), finetune.DataError,
         _p("train.json", ["(item 1): a string, not an object"])),
    Case("hotpotqa question empty", lambda t: _hotpot(t, {**_HQ, "question": ""}),
         finetune.DataError, _p("train.json", ["(item 0, _id 'h1'): the question is empty"])),
    Case("hotpotqa paragraph malformed",
         lambda t: _hotpot(t, {**_HQ, "context": [["Ann", "Ann met Bob ."]]}), finetune.DataError,
         _p("train.json", ["_id 'h1'", "context[0] must be [title, [sentence, ...]]"])),
]


def _triviaqa_config(**data):
    from longformer.tasks import triviaqa
    return triviaqa.check_config(_task_config(**data))


def _wikihop_config(**data):
    from longformer.tasks import wikihop
    return wikihop.check_config(_task_config(**data))


assert len({c.name for c in FILE_CASES}) == len(FILE_CASES)
