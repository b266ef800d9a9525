"""Datasets read as distributed (longformer/readers.py): aclImdb folders, SemEval-2019 Hyperpartisan
XML, Parquet and Arrow files with mapped field names; the records they give, the rows those
encode to, the metrics the classification configs report, and clear errors on bad files."""

import json

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from configs import imdb
from longformer import metrics, readers, seeds, tasks
from longformer.files import FileFormatError
from longformer.tasks import classification, finetune, qa
from longformer.tokenizer import LongformerTokenizer

REVIEW = "Amélie was wonderful.<br /><br />A film 🎬 to see again<br/>and again"
ARTICLES = """<?xml version="1.0" encoding="utf-8"?>
<articles>
<article id="0000001" published-at="2018-01-02" title="Grüße aus Köln">
<p>The mayor <a href="http://x.org" type="external">spoke</a> today.</p>
<p>He said: <q>never again</q> — twice.</p>
</article>
<article id="0000007" title="Second">
<p>Plain text, no tags.</p></article>
</articles>
"""
TRUTH = """<?xml version="1.0" encoding="utf-8"?>
<articles>
<article id="0000007" hyperpartisan="false" labeled-by="article"/>
<article id="0000001" hyperpartisan="true" labeled-by="article"/>
</articles>
"""


def _config(**data):
    return ml_collections.ConfigDict({"seed": 0, "data": {
        "train_file": "", "eval_file": "", "format": "", "fields": "", "seq_len": 32,
        "problem": "single_label", "labels": "", "window_overlap": 4, "max_question_tokens": 8,
        "synthetic": {"num_train": 2, "num_eval": 2}, **data}})


def _load(split="train", reader=finetune.read_jsonl, **data):
    return finetune.load_records(_config(**data), split, None, reader=reader)


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [REVIEW, "good film bad film the mayor spoke today", "who met whom ? Ann met Bob ."]
    return LongformerTokenizer.train(corpus * 4, vocab_size=400, min_frequency=1)


# ----------------------------------------------------------------------------- IMDB
def _imdb_tree(root):
    reviews = {("train", "pos", "10_9"): REVIEW, ("train", "pos", "2_7"): "Good.",
               ("train", "neg", "0_2"): "Bad<BR />film.", ("test", "pos", "5_10"): "Fine.",
               ("test", "neg", "3_1"): "Awful."}
    for (split, label, stem), text in reviews.items():
        folder = root / "aclImdb" / split / label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stem}.txt").write_text(text, encoding="utf-8")
    (root / "aclImdb" / "train" / "unsup").mkdir()
    (root / "aclImdb" / "train" / "unsup" / "0_0.txt").write_text("unlabelled")
    (root / "aclImdb" / "train" / "labeledBow.feat").write_text("0 9:1\n")
    return root / "aclImdb"


def test_imdb_folders(tmp_path):
    top = _imdb_tree(tmp_path)
    train = _load(train_file=str(top / "train"), format="imdb")
    # neg first, then pos; ids in numeric order (2 before 10); <br /> and <BR /> are newlines.
    assert [(r["id"], r["label"]) for r in train] == [("neg/0_2", "neg"), ("pos/2_7", "pos"),
                                                      ("pos/10_9", "pos")]
    assert train[0]["text"] == "Bad\nfilm."
    assert train[2]["text"] == "Amélie was wonderful.\n\nA film 🎬 to see again\nand again"
    assert train[2]["_where"] == str(top / "train" / "pos" / "10_9.txt")
    # The parent folder: train/ for training, test/ for evaluation; unsup/ is never read.
    evals = _load("eval", train_file=str(top), eval_file=str(top), format="imdb")
    assert [r["id"] for r in evals] == ["neg/3_1", "pos/5_10"]
    assert readers.source_files(str(top), "imdb", "train") == [
        str(top / "train" / "neg" / "0_2.txt"), str(top / "train" / "pos" / "2_7.txt"),
        str(top / "train" / "pos" / "10_9.txt")]
    (top / "train" / "pos" / "notes.txt").write_text("x")
    with pytest.raises(finetune.DataError, match=r"pos/notes.txt: not an aclImdb review"):
        _load(train_file=str(top / "train"), format="imdb")
    with pytest.raises(finetune.DataError, match=r"unsup: not an aclImdb split folder"):
        _load(train_file=str(top / "train" / "unsup"), format="imdb")


def test_imdb_config_builds_from_the_folders(tmp_path):
    """configs/imdb.py on an aclImdb tree: the labels it reads, the files a checkpoint
    fingerprints, and the global <s> of every row (tiny model, no training)."""
    top = _imdb_tree(tmp_path)
    c = imdb.get_config()
    c.data.update(train_file=str(top), eval_file=str(top), seq_len=64)
    c.model.update(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                   attention_window=(16,), max_position_embeddings=66)
    c.batch_size = 2
    task = tasks.build(c, str(tmp_path / "run"))
    assert task.info["labels"] == 2 and task.info["train examples"] == 3
    assert task.identity["labels"] == ["neg", "pos"]
    assert len(task.data_files) == 5 and not any("unsup" in p for p in task.data_files)
    batch = next(task.train_data)
    assert (batch["global_attention_mask"][:, 0] == 1).all()
    assert batch["global_attention_mask"][:, 1:].sum() == 0


# ----------------------------------------------------------------------------- Hyperpartisan
def _hp_files(tmp_path, articles=ARTICLES, truth=TRUTH):
    (tmp_path / "articles-training-byarticle.xml").write_text(articles, encoding="utf-8")
    (tmp_path / "ground-truth-training-byarticle.xml").write_text(truth, encoding="utf-8")
    return str(tmp_path / "*-training-byarticle.xml")


def test_hyperpartisan_xml_joined_with_ground_truth(tmp_path):
    records = _load(train_file=_hp_files(tmp_path), format="hyperpartisan")
    assert [(r["id"], r["label"]) for r in records] == [("0000001", "true"), ("0000007", "false")]
    # The title, then each paragraph on its line, nested <a>/<q> text included.
    assert records[0]["text"] == ("Grüße aus Köln\nThe mayor spoke today.\n"
                                  "He said: never again — twice.")
    assert records[1]["text"] == "Second\nPlain text, no tags."
    assert records[0]["_where"].endswith("articles-training-byarticle.xml (article id '0000001')")


def test_hyperpartisan_errors_name_the_file_and_id(tmp_path):
    no_truth = ARTICLES.replace('id="0000007"', 'id="0000008"')
    with pytest.raises(finetune.DataError,
                       match=r"articles-training-byarticle.xml: article id '0000008' has no "
                             r"ground truth in .*ground-truth-training-byarticle.xml"):
        _load(train_file=_hp_files(tmp_path, articles=no_truth), format="hyperpartisan")
    extra = TRUTH.replace("</articles>", '<article id="9" hyperpartisan="true"/></articles>')
    with pytest.raises(finetune.DataError, match=r"ground-truth-training-byarticle.xml: article "
                                                 r"id '9' has ground truth but no article"):
        _load(train_file=_hp_files(tmp_path, truth=extra), format="hyperpartisan")
    with pytest.raises(FileFormatError, match=r"articles-training-byarticle.xml: not valid XML "
                                              r"\(mismatched tag: line 5"):
        _load(train_file=_hp_files(tmp_path, articles=ARTICLES.replace("</q>", "")),
              format="hyperpartisan")
    _hp_files(tmp_path)
    (tmp_path / "ground-truth-training-byarticle.xml").unlink()
    with pytest.raises(finetune.DataError, match=r"needs an articles file and its ground-truth"):
        _load(train_file=str(tmp_path / "*.xml"), format="hyperpartisan")


# ----------------------------------------------------------------------------- Parquet / Arrow
def _hf_metadata(features: dict) -> dict:
    """The schema metadata `datasets` writes: its features under b"huggingface"."""
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def _classification_table():
    table = pa.table({"review": ["good film", "bad film", REVIEW], "sentiment": [1, 0, 1],
                      "stars": [9, 2, 10]})
    return table.replace_schema_metadata(_hf_metadata({
        "review": {"dtype": "string", "_type": "Value"},
        "sentiment": {"names": ["neg", "pos"], "_type": "ClassLabel"},
        "stars": {"dtype": "int64", "_type": "Value"}}))


def _write(table, path, kind):
    if kind == "parquet":
        pq.write_table(table, path)
    else:
        with (ipc.new_stream if kind == "stream" else ipc.new_file)(path, table.schema) as w:
            w.write_table(table)
    return str(path)


@pytest.mark.parametrize("kind", ["parquet", "stream", "file"])
def test_classification_columns_mapped_and_encoded(tmp_path, tokenizer, kind):
    name = "train.parquet" if kind == "parquet" else "train.arrow"
    path = _write(_classification_table(), tmp_path / name, kind)
    records = _load(train_file=path, fields="text=review,label=sentiment")
    # ClassLabel ints read as their names; unmapped columns stay as they are.
    assert [(r["text"], r["label"], r["stars"]) for r in records] == [
        ("good film", "pos", 9), ("bad film", "neg", 2), (REVIEW, "pos", 10)]
    assert records[1]["_where"] == f"{path}:row 1"
    c = _config(seq_len=8)
    facts = classification.prepare(c, records, None)
    assert facts["labels"] == ["neg", "pos"]
    rows, _ = classification.encode(c, tokenizer, records, facts, "cls")
    good = tokenizer("good film")["input_ids"]  # <s> good film </s>
    assert len(good) == 4 and good[0] == tokenizer.bos_token_id
    np.testing.assert_array_equal(rows["input_ids"][0], good + [tokenizer.pad_token_id] * 4)
    np.testing.assert_array_equal(rows["attention_mask"][0], [1, 1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(rows["global_attention_mask"][:, 0], [1, 1, 1])  # <s>
    assert rows["global_attention_mask"][:, 1:].sum() == 0
    np.testing.assert_array_equal(rows["label"], [1, 0, 1])
    assert rows["input_ids"][2, -1] == tokenizer.eos_token_id  # the long review is cut


def test_squad_style_arrow_stream_for_qa(tmp_path, tokenizer):
    context = "Ann met Bob ."
    table = pa.table({"id": ["q1"], "title": ["t"], "context": [context],
                      "question": ["who met whom ?"],
                      "answers": [{"text": ["Bob"], "answer_start": [8]}]})
    path = _write(table, tmp_path / "data-00000-of-00001.arrow", "stream")
    records = _load(train_file=path, reader=qa.read_squad)
    assert records == [{"id": "q1", "title": "t", "context": context,
                        "question": "who met whom ?",
                        "answers": {"text": ["Bob"], "answer_start": [8]},
                        "_where": f"{path}:row 0"}]
    c = _config(seq_len=24)
    rows, (examples, offsets, golds) = qa.encode(c, tokenizer, records, {}, "question")
    question = tokenizer("who met whom ?")["input_ids"][1:-1]
    first = len(question) + 3  # <s> question </s></s>
    s, e = rows["start_positions"][0], rows["end_positions"][0]
    assert s >= first and context[offsets[0][s, 0]:offsets[0][e, 1]] == "Bob"
    np.testing.assert_array_equal(rows["global_attention_mask"][0, :first + 1],
                                  [1] * (len(question) + 1) + [0, 0, 0])
    assert golds == [["Bob"]]


def test_bad_columnar_files_name_the_file_and_field(tmp_path):
    path = _write(_classification_table(), tmp_path / "train.parquet", "parquet")
    with pytest.raises(finetune.DataError, match=r"train.parquet: no column 'body' \(data."
                                                 r"fields maps it to 'text'\); the columns are "
                                                 r"\['review'"):
        _load(train_file=path, fields="text=body,label=sentiment")
    records = _load(train_file=path, fields="label=sentiment")  # text left unmapped
    with pytest.raises(finetune.DataError, match=r"train.parquet:row 0: missing field 'text'"):
        classification.prepare(_config(), records, None)
    (tmp_path / "fake.parquet").write_text("text,label\ngood,pos\n")
    with pytest.raises(FileFormatError, match=r"fake.parquet: not a Parquet file"):
        _load(train_file=str(tmp_path / "fake.parquet"))
    (tmp_path / "fake.arrow").write_bytes(b"PAR1 not arrow at all")
    with pytest.raises(FileFormatError, match=r"fake.arrow: not an Arrow IPC stream or file"):
        _load(train_file=str(tmp_path / "fake.arrow"))
    unlabelled = _classification_table().set_column(1, "sentiment", pa.array([1, -1, 0]))
    with pytest.raises(finetune.DataError, match=r"train.arrow:row 1: sentiment -1 is not a class "
                                                 r".*unlabelled"):
        _load(train_file=_write(unlabelled, tmp_path / "train.arrow", "stream"))
    with pytest.raises(ValueError, match=r"data.fields='text': 'text' is not task_field="):
        _load(train_file=path, fields="text")


def test_fields_rename_json_lines_too(tmp_path):  # and a bool label is a name
    (tmp_path / "t.jsonl").write_text(json.dumps({"review": "ok", "hyperpartisan": True}) + "\n")
    [rec] = _load(train_file=str(tmp_path / "t.jsonl"), fields="text=review,label=hyperpartisan")
    assert rec == {"text": "ok", "label": "true", "_where": f"{tmp_path / 't.jsonl'}:1"}


def test_bool_labels_and_class_label_lists(tmp_path):
    table = pa.table({"tokens": [["Ann", "sings"]], "ner_tags": [[1, 0]], "partisan": [True]})
    table = table.replace_schema_metadata(_hf_metadata({
        "ner_tags": {"feature": {"names": ["O", "B-PER"], "_type": "ClassLabel"},
                     "_type": "Sequence"}}))
    [rec] = _load(train_file=_write(table, tmp_path / "t.parquet", "parquet"),
                  fields="tags=ner_tags,label=partisan")
    assert rec["tags"] == ["B-PER", "O"] and rec["label"] == "true"


# ----------------------------------------------------------------------------- metrics
def test_binary_f1_and_the_seed_summary(tmp_path):
    predicted, gold = [1, 1, 0, 0, 1, 0], [1, 0, 0, 1, 1, 0]  # tp 2, fp 1, fn 1
    assert metrics.binary_f1(predicted, gold) == pytest.approx(2 / 3)
    assert metrics.binary_f1(predicted, gold, positive=0) == pytest.approx(2 / 3)
    assert metrics.binary_f1([0, 0], [0, 0]) == 0.0  # no positive anywhere
    runs = []
    for k, (acc, f1) in enumerate([(0.90, 0.80), (0.94, 0.90), (0.92, 1.00)]):
        run = tmp_path / f"seed_{k}"
        run.mkdir()
        lines = [{"step": 10, "train/loss": 1.0}, {"step": 10, "eval/accuracy": 0.5},
                 {"step": 20, "eval/accuracy": acc, "eval/f1": f1}]
        (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        runs.append(str(run))
    out = seeds.aggregate(runs)
    assert out["accuracy"]["mean"] == pytest.approx(0.92)
    assert out["accuracy"]["std"] == pytest.approx(0.02)  # sample std of .90 .94 .92
    assert out["f1"]["values"] == [0.80, 0.90, 1.00] and out["f1"]["min"] == 0.80
    assert out["runs"]["steps"] == [20, 20, 20]
