"""Fine-tuning datasets as they are distributed, read into the records the tasks check and encode.

The tasks read JSON lines (and SQuAD JSON); the collections the paper fine-tunes on come in other
shapes, and converting them by hand is where labels get flipped and documents lost unnoticed.
So they are read as downloaded, into the same records (each with `_where`, so a bad one is named
by file and row), and everything after that is the tasks' own unchanged path:

* `config.data.format` '' picks the reader by file extension: `.parquet` and `.arrow` (a Hugging
  Face download: Parquet, or the Arrow IPC stream format `datasets` writes its cache in; the IPC
  file format, Feather v2, also reads) through pyarrow, anything else through the task's own
  reader (JSON lines; SQuAD JSON for qa). 'imdb' and 'hyperpartisan' read those native layouts.
* `config.data.fields` ("text=review,label=sentiment") renames a dataset's fields onto the ones
  the task reads (classification: text, label; token_classification: tokens, tags;
  multiple_choice: question, context or contexts, choices, label; qa: id, question, context,
  answers), for every format. A mapped column absent from a Parquet/Arrow file is an error naming
  the file and its columns.
* Hugging Face `ClassLabel` columns hold ints; they are read as their names (from the features
  in the file's `huggingface` schema metadata, as `datasets` writes it; also inside lists, e.g.
  `ner_tags`), so labels mean what the dataset says whatever the int order. An int -1 (the
  "no label" of unlabelled splits) is an error. Without that metadata ints stay ints, and the
  classification label set is `data.labels` or the sorted values. A bool `label` (in any
  format) reads as 'true'/'false', the SemEval XML's spelling.
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from longformer import data as data_lib
from longformer.files import FileFormatError, read_text
from longformer.tasks import finetune  # its DataError; finetune.load_records calls `read`

FORMATS = ("", "imdb", "hyperpartisan")
COLUMNAR = (".parquet", ".arrow")


def _bad(message: str) -> Exception:
    """The tasks' DataError (looked up when raised: finetune imports this module)."""
    return finetune.DataError(message)


def parse_fields(spec: str) -> dict[str, str]:
    """"text=review,label=sentiment" -> {"text": "review", "label": "sentiment"}."""
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, sep, column = (s.strip() for s in item.partition("="))
        if not (sep and name and column):
            raise ValueError(f"data.fields={spec!r}: {item!r} is not task_field=dataset_field")
        if name in out:
            raise ValueError(f"data.fields={spec!r}: {name!r} is mapped twice")
        out[name] = column
    return out


def _rename(rec: dict, fields: dict[str, str]) -> dict:
    """The record with its fields renamed; a bool `label` as 'true'/'false' (two label names)."""
    values = {name: rec.pop(column) for name, column in fields.items() if column in rec}
    rec.update(values)
    if isinstance(rec.get("label"), bool):
        rec["label"] = "true" if rec["label"] else "false"
    return rec


def source_files(pattern: str, fmt: str, split: str) -> list[str]:
    """The files a split is read from (what a checkpoint fingerprints)."""
    if fmt == "imdb":
        return [path for root in _imdb_roots(pattern, split) for path, _ in _imdb_reviews(root)]
    return data_lib.find_files(pattern)


def read(pattern: str, *, fmt: str, fields: str, split: str,
         default: Callable[[str], list[dict]]) -> list[dict]:
    """Every record of `pattern` (comma-separated globs or folders) in format `fmt`."""
    if fmt not in FORMATS:
        raise ValueError(f"data.format {fmt!r} is not one of {FORMATS}")
    mapping = parse_fields(fields)
    if fmt == "imdb":
        return [_rename(r, mapping) for root in _imdb_roots(pattern, split)
                for r in read_imdb(root)]
    if fmt == "hyperpartisan":
        return [_rename(r, mapping) for r in read_hyperpartisan(data_lib.find_files(pattern))]
    records = []
    for path in data_lib.find_files(pattern):
        if path.lower().endswith(COLUMNAR):
            records.extend(read_columnar(path, mapping))  # checks the mapped columns exist
        else:
            records.extend(_rename(r, mapping) for r in default(path))
    return records


# ----------------------------------------------------------------------------- IMDB
_REVIEW = re.compile(r"(\d+)_(\d+)\.txt")
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
IMDB_SPLITS = {"train": "train", "eval": "test"}  # aclImdb has no dev set


def _is_imdb_split(path: str) -> bool:
    return all(os.path.isdir(os.path.join(path, label)) for label in ("pos", "neg"))


def _imdb_roots(pattern: str, split: str) -> list[str]:
    """aclImdb/train (pos/ and neg/ inside), or aclImdb itself: then its train or test folder."""
    roots = []
    for path in filter(None, (os.path.expanduser(p.strip()) for p in pattern.split(","))):
        if not _is_imdb_split(path) and _is_imdb_split(os.path.join(path, IMDB_SPLITS[split])):
            path = os.path.join(path, IMDB_SPLITS[split])
        if not _is_imdb_split(path):
            raise _bad(f"{path}: not an aclImdb split folder (expected pos/ and neg/ "
                       f"inside it, or {IMDB_SPLITS[split]}/pos and "
                       f"{IMDB_SPLITS[split]}/neg)")
        roots.append(path)
    return roots


def _imdb_reviews(root: str) -> Iterator[tuple[str, str]]:
    """(path, label) of every review file of a split folder, in (label, id) order."""
    for label in ("neg", "pos"):
        folder = os.path.join(root, label)
        numbered = []
        for name in os.listdir(folder):
            match = _REVIEW.fullmatch(name)
            if not match:
                raise _bad(f"{os.path.join(folder, name)}: not an aclImdb review "
                           "(file names are <id>_<rating>.txt)")
            numbered.append((int(match[1]), name))
        for _, name in sorted(numbered):
            yield os.path.join(folder, name), label


def read_imdb(root: str) -> list[dict]:
    """`{"text", "label": "pos"|"neg", "id": "pos/<id>_<rating>"}` of an aclImdb split folder.

    The reviews hold HTML line breaks (`<br />`), each read as a newline: markup the model would
    otherwise spend 3 tokens a break on, and that no other text it sees has. Everything else is
    kept as written. `unsup/` and the bag-of-words files beside pos/ and neg/ are not read.
    """
    out = []
    for path, label in _imdb_reviews(root):
        text = read_text(path, "an aclImdb review (UTF-8 text)")
        stem = os.path.basename(path)[:-len(".txt")]
        out.append({"text": _BREAK.sub("\n", text), "label": label, "id": f"{label}/{stem}",
                    "_where": path})
    return out


# ----------------------------------------------------------------------------- Hyperpartisan
_HP_WHAT = ("SemEval-2019 Task 4 XML: <articles><article id=... title=...>...</article>"
            "</articles>, or its ground truth <article id=... hyperpartisan=\"true|false\"/>")


def _articles(path: str) -> Iterator[ET.Element]:
    """Each <article> element of a file, streamed: cleared once used, so a 750K-article file
    never sits in memory as a tree."""
    try:
        context = ET.iterparse(path, events=("start", "end"))
        _, root = next(context)
        if root.tag != "articles":
            raise _bad(f"{path}: the root element is <{root.tag}>, not <articles>; "
                       f"expected {_HP_WHAT}")
        for event, element in context:
            if event == "end" and element.tag == "article":
                yield element
                root.clear()
    except ET.ParseError as e:  # "mismatched tag: line 5, column 37"
        raise FileFormatError(f"{path}: not valid XML ({e}); expected {_HP_WHAT}") from None


def _is_ground_truth(path: str) -> bool:
    articles = _articles(path)
    first = next(articles, None)
    articles.close()
    if first is None:
        raise _bad(f"{path}: no <article> elements; expected {_HP_WHAT}")
    return "hyperpartisan" in first.attrib


def article_text(article: ET.Element) -> str:
    """The title, then each paragraph's text (the text of nested <a>, <q>, ... included), one
    per line."""
    parts = [article.get("title", ""), article.text or ""]
    for child in article:
        parts += ["".join(child.itertext()), child.tail or ""]
    return "\n".join(p.strip() for p in parts if p.strip())


def _article_id(path: str, article: ET.Element) -> str:
    if not article.get("id"):
        raise _bad(f"{path}: an <article> without an id attribute")
    return article.get("id")


def read_hyperpartisan(paths: list[str]) -> list[dict]:
    """`{"text", "label": "true"|"false", "id"}` of SemEval-2019 Task 4 articles files joined by
    id with their ground-truth files (told apart by the `hyperpartisan` attribute), in the order
    of the articles. An article without ground truth, or ground truth without its article, is an
    error naming the file and the id."""
    truth_files = [p for p in paths if _is_ground_truth(p)]
    article_files = [p for p in paths if p not in truth_files]
    if not truth_files or not article_files:
        raise _bad(f"{', '.join(paths)}: Hyperpartisan needs an articles file and its "
                   "ground-truth file; found only "
                   f"{'ground truth' if truth_files else 'articles'}")
    truth: dict[str, tuple[str, str]] = {}  # id -> (label, ground-truth file)
    for path in truth_files:
        for article in _articles(path):
            key, label = _article_id(path, article), article.get("hyperpartisan")
            if label not in ("true", "false"):
                raise _bad(f"{path}: article id {key!r} has hyperpartisan={label!r}, not "
                           "'true' or 'false'")
            if key in truth:
                raise _bad(f"{path}: article id {key!r} has ground truth twice")
            truth[key] = (label, path)
    out, seen = [], set()
    for path in article_files:
        for article in _articles(path):
            key = _article_id(path, article)
            if key not in truth:
                raise _bad(f"{path}: article id {key!r} has no ground truth in "
                           f"{', '.join(truth_files)}")
            if key in seen:
                raise _bad(f"{path}: article id {key!r} occurs twice")
            seen.add(key)
            out.append({"text": article_text(article), "label": truth[key][0], "id": key,
                        "_where": f"{path} (article id {key!r})"})
    for key, (_, path) in truth.items():
        if key not in seen:
            raise _bad(f"{path}: article id {key!r} has ground truth but no article in "
                       f"{', '.join(article_files)}")
    return out


# ----------------------------------------------------------------------------- Parquet / Arrow
def _open_columnar(path: str) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """(schema, record batches) of a Parquet file or an Arrow IPC stream or file."""
    with open(path, "rb") as f:
        magic = f.read(6)
    try:
        if path.lower().endswith(".parquet"):
            what = "a Parquet file"
            reader = pq.ParquetFile(path)
            return reader.schema_arrow, reader.iter_batches(batch_size=1024)
        what = "an Arrow IPC stream or file"
        if magic == b"ARROW1":  # the IPC file format (Feather v2) starts with its magic
            reader = ipc.open_file(pa.memory_map(path))
            return reader.schema, (reader.get_batch(i) for i in range(reader.num_record_batches))
        reader = ipc.open_stream(pa.memory_map(path))
        return reader.schema, iter(reader)
    except (pa.ArrowInvalid, OSError) as e:
        raise FileFormatError(f"{path}: not {what} ({e})") from None


def class_label_names(schema: pa.Schema) -> dict[str, list[str]]:
    """column -> ClassLabel names, from the features `datasets` stores in the schema metadata
    (a ClassLabel column, or a list of them)."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return {}
    try:
        features = json.loads(raw).get("info", {}).get("features", {})
    except (ValueError, AttributeError):
        return {}
    out = {}
    for column, feature in (features or {}).items():
        while isinstance(feature, dict) and feature.get("_type") in ("Sequence", "List"):
            feature = feature.get("feature")
        if isinstance(feature, dict) and feature.get("_type") == "ClassLabel":
            out[column] = [str(n) for n in feature.get("names", [])]
    return out


def read_columnar(path: str, fields: dict[str, str] | None = None) -> list[dict]:
    """The rows of a Parquet or Arrow file as records, fields renamed by `fields`,
    `_where` = "path:row N" (rows counted from 0, as pyarrow and pandas count them)."""
    fields = fields or {}
    schema, batches = _open_columnar(path)
    missing = [(name, column) for name, column in fields.items() if column not in schema.names]
    if missing:
        named = ", ".join(f"{column!r} (data.fields maps it to {name!r})"
                          for name, column in missing)
        raise _bad(f"{path}: no column {named}; the columns are {schema.names}")
    names = class_label_names(schema)
    out = []
    try:
        for batch in batches:
            for rec in batch.to_pylist():
                where = f"{path}:row {len(out)}"
                for column, labels in names.items():
                    if column in rec:
                        rec[column] = _label_name(rec[column], labels, where, column)
                rec = _rename(rec, fields)
                rec["_where"] = where
                out.append(rec)
    except (pa.ArrowInvalid, OSError) as e:
        raise FileFormatError(f"{path}: unreadable after row {len(out)} ({e})") from None
    return out


def _label_name(value, labels: list[str], where: str, column: str):
    if isinstance(value, list):
        return [_label_name(v, labels, where, column) for v in value]
    if not isinstance(value, int):
        return value  # None, or not a class index: the task's own check names what is wrong
    if not 0 <= value < len(labels):
        raise _bad(f"{where}: {column} {value} is not a class of {labels}"
                   + (" (-1: the example is unlabelled)" if value == -1 else ""))
    return labels[value]
