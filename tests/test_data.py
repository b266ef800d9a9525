"""Tests of the MLM pretraining input pipeline (longformer/data.py)."""

import json
import logging
import os

import numpy as np
import pytest

from longformer import data
from longformer.tokenizer import LongformerTokenizer


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def corpus():
    return data.default_corpus_documents()


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return LongformerTokenizer.train(corpus[:300], vocab_size=1000, min_frequency=2)


def small_config(**overrides):
    cfg = data.default_data_config()
    cfg.seq_len = 64
    cfg.eval_fraction = 0.1
    cfg.max_documents = 150
    cfg.worker_threads = 2
    cfg.prefetch_batches = 4
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def originals(batch):
    """The unmasked token ids behind a masked batch."""
    return np.where(batch["labels"] != data.IGNORE_INDEX, batch["labels"], batch["input_ids"])


def random_docs(corpus, n, seed=0):
    """Documents of random words: their packed sequences are distinct, so sets of rows identify them."""
    words = sorted({w for doc in corpus[:50] for w in doc.split() if w.isalpha()})
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=int(rng.integers(20, 400)))) for _ in range(n)]


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


# ----------------------------------------------------------------------------- default corpus
def test_default_corpus_is_large_english_text(corpus):
    assert len(corpus) >= 300
    total = sum(len(doc.encode("utf-8")) for doc in corpus)
    assert total >= 500_000, total
    assert all(isinstance(doc, str) and doc.strip() for doc in corpus)
    joined = " ".join(corpus[:200]).lower()
    for word in (" the ", " function ", " object ", " statement "):
        assert word in joined
    files = data.default_corpus_files()
    assert files and all(os.path.isfile(f) for f in files)
    assert any(f.endswith(os.path.join("pydoc_data", "topics.py")) for f in files)
    assert data.default_corpus_documents() == corpus  # deterministic


def test_default_config_fields():
    cfg = data.default_data_config()
    assert cfg.train_files == "" and cfg.text_format == "auto" and cfg.text_field == "text"
    assert cfg.mlm_probability == pytest.approx(0.15)
    assert 0 < cfg.eval_fraction < 1 and cfg.seq_len > 2


# ----------------------------------------------------------------------------- files and reading
def test_find_files(tmp_path):
    (tmp_path / "b.txt").write_text("b")
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "c.jsonl").write_text("{}")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "d.txt").write_text("d")
    got = data.find_files(f"{tmp_path}/*.txt, {tmp_path}/*.jsonl")
    assert got == sorted([str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), str(tmp_path / "c.jsonl")])
    assert data.find_files([str(tmp_path / "**" / "*.txt")]) == sorted(
        [str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), str(sub / "d.txt")])
    assert data.find_files(str(sub)) == [str(sub / "d.txt")]  # a directory means its files
    missing = f"{tmp_path}/nothing_*.txt"
    with pytest.raises(FileNotFoundError, match="nothing_"):
        data.find_files(f"{tmp_path}/*.txt,{missing}")


def test_read_formats(tmp_path):
    (tmp_path / "doc.txt").write_text("first line\nsecond line\n\n")
    (tmp_path / "docs.jsonl").write_text(
        json.dumps({"body": "json one"}) + "\n\n" + json.dumps({"body": "json two", "x": 1}) + "\n")
    (tmp_path / "arr.json").write_text(json.dumps([{"body": "arr one"}, {"body": "arr two"}], indent=2))
    txt, jsonl, arr = (str(tmp_path / n) for n in ("doc.txt", "docs.jsonl", "arr.json"))
    assert data.read_documents([txt], "file") == ["first line\nsecond line\n\n"]
    assert data.read_documents([txt], "line") == ["first line", "second line"]
    assert data.read_documents([jsonl, arr, txt], "auto", "body") == [
        "json one", "json two", "arr one", "arr two", "first line\nsecond line\n\n"]
    with pytest.raises(ValueError, match="text_format"):
        data.read_documents([txt], "csv")


def test_bad_files_are_skipped_with_warnings(tmp_path, caplog):
    good = tmp_path / "good.txt"
    good.write_text("a good document")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    binary = tmp_path / "latin1.txt"
    binary.write_bytes(b"caf\xe9 \xff\xfe not utf-8")
    lines = tmp_path / "mixed.jsonl"
    lines.write_bytes(b'{"text": "json good"}\n{"text": broken\n{"other": 1}\n{"text": "bad \xff byte"}\n'
                      b'{"text": "json good 2"}\n')
    files = [str(p) for p in (good, empty, binary, lines)]
    with caplog.at_level(logging.WARNING, logger="longformer.data"):
        docs = data.read_documents(files)
    assert docs == ["a good document", "json good", "json good 2"]
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(empty) in m and "empty" in m for m in messages)
    assert any(str(binary) in m and "UTF-8" in m for m in messages)
    assert any(str(lines) in m and "line 2" in m and "JSON" in m for m in messages)
    assert any(str(lines) in m and "line 3" in m for m in messages)  # no 'text' field
    assert any(str(lines) in m and "line 4" in m and "UTF-8" in m for m in messages)


def test_all_bad_files_raise(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n{\"text\": 3}\n")
    with pytest.raises(ValueError) as err:
        data.read_documents([str(empty), str(bad)])
    assert str(empty) in str(err.value) and str(bad) in str(err.value)
    cfg = small_config(train_files=f"{tmp_path}/*.txt,{tmp_path}/*.jsonl")
    with pytest.raises(ValueError, match="bad.jsonl"):
        data.load_documents(cfg)
    with pytest.raises(FileNotFoundError, match="nope"):
        data.load_documents(small_config(train_files=f"{tmp_path}/nope*.txt"))


# ----------------------------------------------------------------------------- packing
def test_packing_keeps_every_token():
    rng = np.random.default_rng(0)
    docs = [rng.integers(5, 1000, size=rng.integers(1, 300)).astype(np.int32) for _ in range(60)]
    bos, eos, pad, seq_len = 0, 2, 1, 50
    packed = data.pack_sequences(docs, seq_len, bos_id=bos, eos_id=eos, pad_id=pad)
    stream = np.concatenate([np.append(d, eos) for d in docs])
    content = seq_len - 2
    assert packed.dtype == np.int32 and packed.shape == (len(stream) // content, seq_len)
    assert np.all(packed[:, 0] == bos) and np.all(packed[:, -1] == eos) and not np.any(packed == pad)
    flat = packed[:, 1:-1].reshape(-1)
    assert np.array_equal(flat, stream[:len(flat)])
    assert 0 <= len(stream) - len(flat) < content  # only a partial final chunk is dropped
    assert np.count_nonzero(flat == eos) == np.count_nonzero(stream[:len(flat)] == eos)

    padded = data.pack_sequences(docs, seq_len, bos_id=bos, eos_id=eos, pad_id=pad, pad_remainder=True)
    assert len(padded) == len(packed) + 1 and np.array_equal(padded[:-1], packed)
    last = padded[-1]
    tail = stream[len(flat):]
    assert last[0] == bos and np.array_equal(last[1:1 + len(tail)], tail) and last[1 + len(tail)] == eos
    assert np.all(last[2 + len(tail):] == pad)


def test_tokenize_documents_and_stream(tokenizer, corpus):
    docs = corpus[:20]
    arrays = data.tokenize_documents(tokenizer, docs)
    assert [a.tolist() for a in arrays] == tokenizer.encode_plain(docs)
    # literal special-token text never yields special ids inside the stream
    arrays = data.tokenize_documents(tokenizer, ["hello <pad> world <s> x </s> <mask>"])
    assert not np.isin(arrays[0], tokenizer.all_special_ids).any()


# ----------------------------------------------------------------------------- masking
def test_masking_rates_and_rules():
    vocab, pad, bos, eos, mask, unk = 500, 1, 0, 2, 4, 3
    specials = [bos, pad, eos, unk, mask]
    masking = data.MLMMasking(mask_token_id=mask, pad_token_id=pad, special_ids=specials,
                              vocab_size=vocab, mlm_probability=0.15)
    rng = np.random.default_rng(1)
    n_seq, seq_len = 300, 512
    orig = rng.integers(5, vocab, size=(n_seq, seq_len)).astype(np.int32)
    orig[:, 0], orig[:, 100], orig[:, 300] = bos, eos, eos
    orig[:, 200] = unk
    lengths = rng.integers(200, seq_len, size=n_seq)
    for i, length in enumerate(lengths):
        orig[i, length - 1] = eos
        orig[i, length:] = pad
    outs = [masking.random_map(row, np.random.default_rng([7, i])) for i, row in enumerate(orig)]
    ids = np.stack([o["input_ids"] for o in outs])
    labels = np.stack([o["labels"] for o in outs])
    attn = np.stack([o["attention_mask"] for o in outs])
    assert ids.dtype == labels.dtype == attn.dtype == np.int32
    assert np.array_equal(orig[:, :5], np.stack([r[:5] for r in orig]))  # input untouched

    is_special = np.isin(orig, specials)
    selected = labels != data.IGNORE_INDEX
    assert not np.any(selected & is_special)  # specials and pad never selected
    assert np.array_equal(labels[selected], orig[selected])
    assert np.all(labels[~selected] == data.IGNORE_INDEX)
    assert np.array_equal(ids[~selected], orig[~selected])  # nothing changes outside the selection
    assert np.array_equal(attn, (orig != pad).astype(np.int32))

    # per sequence: the count is mlm_probability * n rounded up or down
    candidates = (~is_special).sum(axis=1)
    counts = selected.sum(axis=1)
    assert np.all(counts >= np.floor(0.15 * candidates)) and np.all(counts <= np.ceil(0.15 * candidates))
    rate = selected.sum() / (~is_special).sum()
    assert abs(rate - 0.15) < 0.002, rate

    sel_in, sel_orig = ids[selected], orig[selected]
    frac_mask = np.mean(sel_in == mask)
    frac_same = np.mean(sel_in == sel_orig)
    frac_random = np.mean((sel_in != mask) & (sel_in != sel_orig))
    assert abs(frac_mask - 0.8) < 0.015, frac_mask
    assert abs(frac_same - 0.1) < 0.015, frac_same
    assert abs(frac_random - 0.1) < 0.015, frac_random
    replaced = sel_in[(sel_in != mask) & (sel_in != sel_orig)]
    assert not np.isin(replaced, specials).any() and replaced.max() < vocab
    assert len(np.unique(replaced)) > 300  # drawn across the whole non-special vocabulary

    # the randomness is a function of the rng: same seed -> same output, other seed -> different
    again = masking.random_map(orig[3], np.random.default_rng([7, 3]))
    other = masking.random_map(orig[3], np.random.default_rng([8, 3]))
    assert all(np.array_equal(again[k], outs[3][k]) for k in again)
    assert not np.array_equal(other["labels"], outs[3]["labels"])


# ----------------------------------------------------------------------------- pipeline
def test_pipeline_batches_and_resume_bit_exact(tokenizer):
    cfg = small_config()
    d = data.make_mlm_datasets(cfg, tokenizer, seed=3, global_batch_size=4)
    train_it = d.train
    first = take(train_it, 5)
    b = first[0]
    assert set(b) == {"input_ids", "attention_mask", "labels"}
    for v in b.values():
        assert v.shape == (4, 64) and v.dtype == np.int32
    orig = originals(b)
    assert np.all(orig[:, 0] == tokenizer.bos_token_id) and np.all(orig[:, -1] == tokenizer.eos_token_id)
    assert np.any(b["input_ids"] == tokenizer.mask_token_id)

    state = json.loads(json.dumps(train_it.get_state()))
    later = take(train_it, 7)
    assert not np.array_equal(later[0]["input_ids"], first[0]["input_ids"])

    fresh = data.make_mlm_datasets(cfg, tokenizer, seed=3, global_batch_size=4)
    fresh.train.set_state(state)
    resumed = take(fresh.train, 7)
    for x, y in zip(later, resumed):
        for key in x:
            assert np.array_equal(x[key], y[key]), key
    # restoring the same iterator back in time also replays exactly
    train_it.set_state(state)
    replay = take(train_it, 2)
    assert all(np.array_equal(later[i][k], replay[i][k]) for i in range(2) for k in later[i])
    # a different seed gives a different order / masks
    other = data.make_mlm_datasets(cfg, tokenizer, seed=4, global_batch_size=4)
    assert not np.array_equal(next(other.train)["input_ids"], first[0]["input_ids"])


def test_every_epoch_is_a_permutation_with_fresh_masks(tokenizer):
    cfg = small_config(num_epochs=2)
    d = data.make_mlm_datasets(cfg, tokenizer, seed=0, global_batch_size=2)
    batches = list(d.train)
    n = d.num_train_sequences
    assert len(batches) == (2 * n) // 2
    rows = np.concatenate([b["input_ids"] for b in batches])
    orig = np.concatenate([originals(b) for b in batches])
    epoch1, epoch2 = orig[:n], orig[n:2 * n]
    key = lambda a: sorted(r.tobytes() for r in a)
    assert key(epoch1) == key(epoch2)  # both epochs hold every sequence once
    assert not np.array_equal(epoch1, epoch2)  # ... in different orders
    # the same sequence is masked differently in the two epochs (dynamic masking)
    pos2 = {r.tobytes(): i for i, r in enumerate(epoch2)}
    diff = sum(not np.array_equal(rows[i], rows[n + pos2[epoch1[i].tobytes()]]) for i in range(n))
    assert diff > 0.9 * n


def test_host_sharding_disjoint_and_covering(tokenizer, corpus):
    cfg = small_config(num_epochs=1)
    docs = random_docs(corpus, 150)
    single = data.make_mlm_datasets(cfg, tokenizer, seed=5, global_batch_size=4, documents=docs)
    hosts = [data.make_mlm_datasets(cfg, tokenizer, seed=5, global_batch_size=4, process_index=p,
                                    process_count=2, documents=docs) for p in range(2)]
    single_batches = list(single.train)
    host_batches = [list(h.train) for h in hosts]
    assert len(host_batches[0]) == len(host_batches[1]) == len(single_batches) > 10
    assert all(b["input_ids"].shape == (2, 64) for hb in host_batches for b in hb)

    seen = [{r.tobytes() for b in hb for r in originals(b)} for hb in host_batches]
    assert seen[0] and seen[1] and not (seen[0] & seen[1])
    # together they cover every train sequence (up to the last partial global batch)
    train_docs, _ = data.split_documents(docs, cfg.eval_fraction, cfg.eval_seed)
    all_train = data.pack_sequences(data.tokenize_documents(tokenizer, train_docs), cfg.seq_len,
                                    bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id,
                                    pad_id=tokenizer.pad_token_id)
    all_set = {r.tobytes() for r in all_train}
    assert len(all_set) == len(all_train)  # sequences are distinct, so the set test is meaningful
    assert (seen[0] | seen[1]) <= all_set
    assert len(seen[0]) + len(seen[1]) == (len(all_train) // 4) * 4
    # global batch k is the union of the hosts' k-th batches: the stream is topology-independent
    for k in range(len(single_batches)):
        for key in ("input_ids", "labels", "attention_mask"):
            assert np.array_equal(single_batches[k][key][0::2], host_batches[0][k][key])
            assert np.array_equal(single_batches[k][key][1::2], host_batches[1][k][key])


def test_held_out_split_and_eval(tokenizer, corpus):
    docs = random_docs(corpus, 200, seed=1)
    train_docs, eval_docs = data.split_documents(docs, 0.1, seed=0)
    assert len(eval_docs) == 20 and len(train_docs) == 180
    assert data.split_documents(docs, 0.1, seed=0) == (train_docs, eval_docs)  # deterministic
    assert data.split_documents(docs, 0.1, seed=1)[1] != eval_docs
    idx = {id(d): i for i, d in enumerate(docs)}
    train_idx, eval_idx = {idx[id(d)] for d in train_docs}, {idx[id(d)] for d in eval_docs}
    assert not (train_idx & eval_idx) and train_idx | eval_idx == set(range(200))

    cfg = small_config(eval_fraction=0.1, max_documents=0)
    d = data.make_mlm_datasets(cfg, tokenizer, seed=0, global_batch_size=4, documents=docs)
    assert d.num_eval_documents == 20 and d.num_train_documents == 180
    ids = dict(bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id)
    eval_seqs = data.pack_sequences(data.tokenize_documents(tokenizer, eval_docs), 64, pad_remainder=True, **ids)
    train_seqs = data.pack_sequences(data.tokenize_documents(tokenizer, train_docs), 64, **ids)

    pass1, pass2 = list(d.eval), list(d.eval)
    assert len(pass1) == d.num_eval_batches == -(-len(eval_seqs) // 4)
    for x, y in zip(pass1, pass2):  # every pass is identical
        assert all(np.array_equal(x[k], y[k]) for k in x)
    eval_orig = np.concatenate([originals(b) for b in pass1])
    n_real = d.num_eval_sequences
    assert n_real == len(eval_seqs)
    assert np.array_equal(eval_orig[:n_real], eval_seqs)  # exactly the held-out documents, in order
    labels = np.concatenate([b["labels"] for b in pass1])
    assert np.all(labels[n_real:] == data.IGNORE_INDEX)  # filler rows carry no loss
    assert np.any(labels[:n_real] != data.IGNORE_INDEX)

    train_set = {r.tobytes() for r in train_seqs}
    seen_train = {r.tobytes() for b in take(d.train, 3 * len(train_seqs) // 4) for r in originals(b)}
    assert seen_train <= train_set and not (seen_train & {r.tobytes() for r in eval_seqs})
    # eval does not depend on the training seed
    other = data.make_mlm_datasets(cfg, tokenizer, seed=99, global_batch_size=4, documents=docs)
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(pass1, other.eval) for k in x)


def test_pipeline_reads_files(tokenizer, corpus, tmp_path, caplog):
    with open(tmp_path / "part1.jsonl", "w", encoding="utf-8") as f:
        for doc in corpus[:40]:
            f.write(json.dumps({"content": doc}) + "\n")
        f.write("{oops\n")
    (tmp_path / "part2.jsonl").write_text("")
    cfg = small_config(train_files=f"{tmp_path}/*.jsonl", text_field="content", eval_fraction=0.0)
    with caplog.at_level(logging.WARNING, logger="longformer.data"):
        d = data.make_mlm_datasets(cfg, tokenizer, seed=0, global_batch_size=2)
    assert d.num_train_documents == 40 and d.eval is None
    assert any("part1.jsonl line 41" in r.getMessage() for r in caplog.records)
    assert any("part2.jsonl" in r.getMessage() for r in caplog.records)
    assert next(d.train)["input_ids"].shape == (2, 64)


def test_bad_arguments(tokenizer):
    cfg = small_config()
    with pytest.raises(ValueError, match="multiple of process_count"):
        data.make_mlm_datasets(cfg, tokenizer, seed=0, global_batch_size=3, process_count=2)
    with pytest.raises(ValueError, match="no full training sequence"):
        data.make_mlm_datasets(small_config(seq_len=4096, eval_fraction=0.0), tokenizer, seed=0,
                               global_batch_size=2, documents=["a tiny document"])


def test_orbax_checkpoint_of_train_iterator(tokenizer, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    import grain

    cfg = small_config()
    d = data.make_mlm_datasets(cfg, tokenizer, seed=1, global_batch_size=4)
    take(d.train, 3)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(d.train)))
        mngr.wait_until_finished()
    want = take(d.train, 3)
    fresh = data.make_mlm_datasets(cfg, tokenizer, seed=1, global_batch_size=4)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.restore(3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(fresh.train)))
    got = take(fresh.train, 3)
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(want, got) for k in a)
