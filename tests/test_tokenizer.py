"""Tests for longformer.tokenizer: a tiny BPE trained here, compared token-for-token with transformers."""

import json
import shutil

import numpy as np
import pytest

from longformer.tokenizer import (
    LongformerTokenizer,
    LongformerTokenizerFast,
    classification_global_mask,
    multiple_choice_global_mask,
    qa_global_mask,
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away into the forest.",
    "Longformer uses sliding window attention so that documents with thousands of tokens fit in memory.",
    "Global attention is given to a few tokens, such as the question tokens in question answering.",
    "Café, naïve, façade, résumé and jalapeño are words that keep their accents: é è ê ë ç ñ ü ö.",
    "Größe, Straße und Übermaß; Ελληνικά γράμματα; русский текст; 日本語の文章と中文句子。",
    "Emoji 🙂🚀 and symbols ∑ ∞ ≠ → € £ ¥ sit next to plain ASCII text in modern documents.",
    "Tabs\tand  double  spaces,\nnew lines,\r\nWindows line ends and\u00a0no-break\u3000spaces happen.",
    "   Leading spaces and trailing spaces   ",
    "Numbers like 3.14159, 2718 and 1,000,000 appear in scientific and financial text alike.",
    "The model reads the question, then the context, and predicts where the answer starts and ends.",
] * 4

# Texts with no special-token strings: byte-level BPE must round-trip them exactly.
PLAIN_TEXTS = [
    "The quick brown fox.",
    "unseen wordzz qwxj with Zebras!",
    "Café naïve Größe 日本語 🙂🚀",
    "Tabs\tand  double  spaces\n\nnew\r\nlines\u00a0nbsp\u3000ideographic",
    "   leading and trailing   ",
    " a",
    "",
]
MASK_TEXTS = ["The <mask> jumps.", "a<mask>b", "two  <mask> spaces", "<mask> first", "text with </s> inside"]
SINGLES = PLAIN_TEXTS + MASK_TEXTS
PAIRS = [
    ("What does the fox do?", "The quick brown fox jumps over the lazy dog and then runs away into the forest."),
    ("Größe?", "Straße und Übermaß 🙂"),
    ("Who <mask>?", "  spaced   out  "),
    ("", "empty first"),
]
WITH_OFFSETS = ("input_ids", "attention_mask", "offset_mapping")
ALL_KEYS = WITH_OFFSETS + ("special_tokens_mask",)
MAX_LEN = 24  # model_max_length written to the saved config, so truncation=True has something to do


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    tok = LongformerTokenizer.train(CORPUS, vocab_size=500, min_frequency=2, model_max_length=MAX_LEN)
    tok.save(folder)
    return folder


@pytest.fixture(scope="module")
def tok(saved):
    return LongformerTokenizer.from_pretrained(saved)


@pytest.fixture(scope="module")
def vocab_only(saved, tmp_path_factory):
    folder = tmp_path_factory.mktemp("vocab_only")
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(saved / name, folder / name)
    return folder


def _hf_class(name):
    transformers = pytest.importorskip("transformers")
    cls = getattr(transformers, name, None)
    if cls is None:
        pytest.skip(f"transformers has no {name}")
    return cls


# In transformers 5.x LongformerTokenizer is the same tokenizers-backed class as the Fast one; it is
# still loaded separately so a future divergence would show up here.
@pytest.fixture(scope="module", params=["LongformerTokenizerFast", "LongformerTokenizer", "AutoTokenizer"])
def hf(request, saved):
    return _hf_class(request.param).from_pretrained(str(saved))


def _same(ours, theirs, keys=("input_ids", "attention_mask")):
    for key in keys:
        a, b = ours[key], theirs[key]
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, np.asarray(b), err_msg=key)
        else:
            assert a == b, key


# --------------------------------------------------------------------------- own behaviour


def test_trained_special_ids_and_saved_files(saved, tok):
    assert LongformerTokenizerFast is LongformerTokenizer
    ids = (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.mask_token_id)
    assert ids == (0, 1, 2, 3, 4)
    assert tok.cls_token_id == 0 and tok.sep_token_id == 2
    assert tok.all_special_ids == [0, 2, 3, 1, 4]
    assert tok.model_max_length == MAX_LEN
    vocab = json.loads((saved / "vocab.json").read_text())
    assert tok.vocab_size == len(vocab) == len(tok) and 261 < tok.vocab_size <= 500
    config = json.loads((saved / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == MAX_LEN and config["mask_token"] == "<mask>"
    special_map = json.loads((saved / "special_tokens_map.json").read_text())
    assert special_map["mask_token"]["lstrip"] is True and special_map["bos_token"]["content"] == "<s>"
    assert (saved / "merges.txt").read_text().count("\n") >= tok.vocab_size - 261


def test_train_without_save_dir_matches_saved(tok):
    again = LongformerTokenizer.train(CORPUS, vocab_size=500, min_frequency=2, model_max_length=MAX_LEN)
    assert again.encode_plain(SINGLES) == tok.encode_plain(SINGLES)


def test_roberta_layout(tok):
    a, b = tok.encode_plain(["The quick brown fox.", " jumps over"])
    assert len(a) > 1 and len(b) > 1
    assert tok("The quick brown fox.")["input_ids"] == [0] + a + [2]
    assert tok("The quick brown fox.", " jumps over")["input_ids"] == [0] + a + [2, 2] + b + [2]
    assert tok("") == {"input_ids": [0, 2], "attention_mask": [1, 1]}
    assert tok("", "")["input_ids"] == [0, 2, 2, 2]


def test_mask_token_swallows_the_space_before_it(tok):
    the, jumps = tok.encode_plain(["The", " jumps."])
    out = tok("The <mask> jumps.", return_offsets_mapping=True, return_special_tokens_mask=True)
    assert out["input_ids"] == [0] + the + [4] + jumps + [2]
    assert out["offset_mapping"][len(the) + 1] == (4, 10)  # the span of "<mask>", not of the stripped space
    assert out["special_tokens_mask"] == [1] + [0] * len(the) + [0] + [0] * len(jumps) + [1]


def test_decode_round_trip(tok):
    for text, ids in zip(PLAIN_TEXTS, tok.encode_plain(PLAIN_TEXTS)):
        assert tok.decode(ids) == text
        assert tok.decode(np.asarray(tok(text)["input_ids"]), skip_special_tokens=True) == text
    assert tok.decode(tok("hi")["input_ids"]) == "<s>hi</s>"
    batch = tok(PLAIN_TEXTS, padding=True)["input_ids"]
    assert tok.batch_decode(batch, skip_special_tokens=True) == PLAIN_TEXTS


def test_numpy_output(tok):
    out = tok(["a b c d e", "a"], padding=True, return_tensors="np", return_offsets_mapping=True)
    assert out["input_ids"].dtype == np.int64 and out["input_ids"].shape == out["attention_mask"].shape
    assert out["offset_mapping"].shape == out["input_ids"].shape + (2,)
    np.testing.assert_array_equal(out["attention_mask"].sum(-1), [len(tok("a b c d e")["input_ids"]), 3])
    single = tok("a b", return_tensors="np")
    assert single["input_ids"].shape == (1, len(tok("a b")["input_ids"]))
    with pytest.raises(ValueError, match="padding"):
        tok(["a b c d e", "a"], return_tensors="np")


def test_argument_errors(tok):
    with pytest.raises(ValueError, match="Second sequence"):
        tok("only one text", truncation="only_second", max_length=3)
    with pytest.raises(ValueError, match="padding"):
        tok("x", padding="sideways")
    with pytest.raises(ValueError, match="truncation"):
        tok("x", truncation="middle")
    with pytest.raises(TypeError):
        tok(["a", "b"], "not a list")
    with pytest.raises(ValueError, match="2 entries"):
        tok(["a", "b"], ["c"])


def test_missing_files_error_names_folder(tmp_path):
    empty = tmp_path / "no_tokenizer_here"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no_tokenizer_here"):
        LongformerTokenizer.from_pretrained(empty)


def test_vocab_merges_only_matches_tokenizer_json(tok, vocab_only):
    plain = LongformerTokenizer.from_pretrained(vocab_only)
    assert plain.model_max_length == 4096  # no config: Longformer's pretraining length
    assert plain.vocab_size == tok.vocab_size and plain.mask_token_id == 4
    for text in SINGLES:
        assert plain(text, return_offsets_mapping=True) == tok(text, return_offsets_mapping=True)
    for a, b in PAIRS:
        assert plain(a, b) == tok(a, b)


def test_special_tokens_map_flags_are_honoured(tok, vocab_only, tmp_path):
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(vocab_only / name, tmp_path / name)
    no_lstrip = {"content": "<mask>", "lstrip": False, "rstrip": False, "normalized": False, "single_word": False}
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"mask_token": no_lstrip}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"mask_token": "<mask>", "model_max_length": 7}))
    loaded = LongformerTokenizer.from_pretrained(tmp_path)
    assert loaded.model_max_length == 7
    the, space = tok.encode_plain(["The", " "])
    assert loaded("The <mask>")["input_ids"] == [0] + the + space + [4, 2]


# --------------------------------------------------------------------------- against transformers


def test_hf_vocab_and_special_ids(tok, hf):
    assert len(hf) == tok.vocab_size
    assert hf.all_special_ids == tok.all_special_ids
    for name in ("bos", "eos", "sep", "cls", "pad", "unk", "mask"):
        assert getattr(hf, f"{name}_token_id") == getattr(tok, f"{name}_token_id"), name
    assert hf.model_max_length == tok.model_max_length == MAX_LEN


@pytest.mark.parametrize("text", SINGLES)
def test_hf_single(tok, hf, text):
    kw = dict(return_offsets_mapping=True, return_special_tokens_mask=True)
    _same(tok(text, **kw), hf(text, **kw), keys=ALL_KEYS)


@pytest.mark.parametrize("pair", PAIRS)
def test_hf_pair(tok, hf, pair):
    a, b = pair
    kw = dict(return_offsets_mapping=True)
    _same(tok(a, b, **kw), hf(a, b, **kw), keys=WITH_OFFSETS)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(padding=True),
        dict(padding="longest", return_offsets_mapping=True, return_special_tokens_mask=True),
        dict(padding="max_length", max_length=40, truncation=True),
        dict(padding="max_length", truncation=True),  # pads/truncates to model_max_length
        dict(truncation=True),
        dict(max_length=9),  # a bare max_length truncates
        dict(truncation=True, max_length=6, padding=True, return_tensors="np"),
    ],
)
def test_hf_batch(tok, hf, kwargs):
    keys = ["input_ids", "attention_mask"]
    if kwargs.get("return_offsets_mapping"):
        keys.append("offset_mapping")
    if kwargs.get("return_special_tokens_mask"):
        keys.append("special_tokens_mask")
    texts = SINGLES + [" ".join(CORPUS[:3])]
    ours, theirs = tok(texts, **kwargs), hf(texts, **kwargs)
    _same(ours, theirs, keys=keys)
    if kwargs.get("truncation") or "max_length" in kwargs:
        assert max(len(ids) for ids in ours["input_ids"]) == kwargs.get("max_length", MAX_LEN)


def test_hf_pad_to_max_length_beyond_longest(tok, hf):
    kw = dict(padding="max_length", max_length=40, return_offsets_mapping=True, return_special_tokens_mask=True)
    ours = tok(PLAIN_TEXTS, **kw)
    _same(ours, hf(PLAIN_TEXTS, **kw), keys=ALL_KEYS)
    assert PLAIN_TEXTS[-1] == ""
    assert ours["input_ids"][-1] == [0, 2] + [1] * 38
    assert ours["attention_mask"][-1] == [1, 1] + [0] * 38
    assert ours["offset_mapping"][-1] == [(0, 0)] * 40 and ours["special_tokens_mask"][-1] == [1] * 40
    assert tok("", padding="max_length")["input_ids"] == [0, 2] + [1] * (MAX_LEN - 2)  # model_max_length


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(truncation="only_second", max_length=14),
        dict(truncation="only_second", max_length=14, padding="max_length"),
        dict(truncation="only_first", max_length=45),
        dict(truncation="longest_first", max_length=12, padding=True),
        dict(truncation=True),
        dict(padding=True),
    ],
)
def test_hf_pair_batch(tok, hf, kwargs):
    first = [a for a, _ in PAIRS] + ["A much longer first segment that will need cutting somewhere " * 2]
    second = [b for _, b in PAIRS] + ["short"]
    if kwargs.get("truncation") == "only_second":  # the first segments must fit on their own
        first, second = first[:-1], second[:-1]
    kw = dict(kwargs, return_offsets_mapping=True)
    ours, theirs = tok(first, second, **kw), hf(first, second, **kw)
    _same(ours, theirs, keys=WITH_OFFSETS)
    if kwargs.get("truncation") == "only_second":
        for ids, a in zip(ours["input_ids"], first):
            assert ids[: 2 + len(tok.encode_plain([a])[0])] == [0] + tok.encode_plain([a])[0] + [2]


def test_hf_encode_plain_and_decode(tok, hf):
    assert tok.encode_plain(SINGLES) == hf(SINGLES, add_special_tokens=False)["input_ids"]
    batch = tok(SINGLES, padding=True)["input_ids"]
    for skip in (False, True):
        assert tok.batch_decode(batch, skip_special_tokens=skip) == hf.batch_decode(batch, skip_special_tokens=skip)
        assert tok.decode(batch[0], skip_special_tokens=skip) == hf.decode(batch[0], skip_special_tokens=skip)


@pytest.mark.parametrize("name", ["LongformerTokenizerFast", "LongformerTokenizer"])
def test_hf_loads_vocab_merges_only(tok, vocab_only, name):
    hf = _hf_class(name).from_pretrained(str(vocab_only))
    # transformers 5 gives <mask> lstrip=False when built from bare vocab/merges, so skip " <mask>" texts.
    texts = [t for t in SINGLES if "<mask>" not in t]
    ours = LongformerTokenizer.from_pretrained(vocab_only)
    kw = dict(return_offsets_mapping=True)
    _same(ours(texts, padding=True, **kw), hf(texts, padding=True, **kw), keys=WITH_OFFSETS)
    a, b = PAIRS[0]
    _same(ours(a, b, truncation="only_second", max_length=16), hf(a, b, truncation="only_second", max_length=16))


def test_reads_folder_written_by_transformers(tok, hf, tmp_path):
    hf.save_pretrained(str(tmp_path))
    back = LongformerTokenizer.from_pretrained(tmp_path)
    assert back.model_max_length == MAX_LEN and back.mask_token_id == 4
    for text in SINGLES:
        assert back(text, return_offsets_mapping=True) == tok(text, return_offsets_mapping=True)


# --------------------------------------------------------------------------- global attention masks

SEP = 2
QA_IDS = np.array(
    [
        [0, 10, 11, 2, 2, 20, 21, 22, 2, 1],
        [0, 10, 2, 2, 20, 2, 1, 1, 1, 1],
    ]
)


def test_classification_global_mask():
    np.testing.assert_array_equal(classification_global_mask(QA_IDS), [[1] + [0] * 9, [1] + [0] * 9])
    three_d = classification_global_mask(np.stack([QA_IDS, QA_IDS]))
    assert three_d.shape == (2, 2, 10) and three_d.sum() == 4 and (three_d[..., 0] == 1).all()
    as_method = LongformerTokenizer.classification_global_mask(QA_IDS)
    np.testing.assert_array_equal(as_method, classification_global_mask(QA_IDS))


def test_qa_global_mask():
    expected = [
        [1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
    ]
    np.testing.assert_array_equal(qa_global_mask(QA_IDS, SEP), expected)
    np.testing.assert_array_equal(qa_global_mask(QA_IDS.tolist(), SEP), expected)


def test_multiple_choice_global_mask():
    expected = [
        [0, 0, 0, 0, 0, 1, 1, 1, 1, 1],
        [0, 0, 0, 0, 1, 1, 1, 1, 1, 1],
    ]
    np.testing.assert_array_equal(multiple_choice_global_mask(QA_IDS, SEP), expected)
    choices = np.stack([QA_IDS, QA_IDS[::-1]])  # (batch=2, choices=2, seq=10)
    np.testing.assert_array_equal(multiple_choice_global_mask(choices, SEP), [expected, expected[::-1]])


@pytest.mark.parametrize("fn", [qa_global_mask, multiple_choice_global_mask])
def test_global_mask_separator_count_errors(fn):
    two = QA_IDS.copy()
    two[1, 5] = 30  # example 1 keeps only two separators
    with pytest.raises(ValueError, match=r"example 1 has 2 separator"):
        fn(two, SEP)
    four = QA_IDS.copy()
    four[0, 9] = SEP
    with pytest.raises(ValueError, match=r"example 0 has 4 separator"):
        fn(four, SEP)
    choices = np.stack([QA_IDS, two])
    with pytest.raises(ValueError, match=r"example \(1, 1\) has 2 separator"):
        fn(choices, SEP)
    with pytest.raises(ValueError, match="shape"):
        fn(QA_IDS[0], SEP)


def test_global_masks_match_reference_model(tok):
    torch = pytest.importorskip("torch")
    modeling = pytest.importorskip("transformers.models.longformer.modeling_longformer")
    questions = ["What does the fox do?", "Größe?", "Who wins?"]
    contexts = ["The quick brown fox jumps over the lazy dog.", "Straße und Übermaß 🙂", "Nobody."]
    ids = tok(questions, contexts, padding=True, return_tensors="np")["input_ids"]
    for before, ours in ((True, tok.qa_global_mask(ids)), (False, tok.multiple_choice_global_mask(ids))):
        ref = modeling._compute_global_attention_mask(torch.tensor(ids), tok.sep_token_id, before_sep_token=before)
        np.testing.assert_array_equal(ours, ref.numpy().astype(np.int32))
    assert ours.dtype == np.int32
