"""RoBERTa -> Longformer conversion (the authors' recipe) against transformers, on tiny random models.

A random RobertaForMaskedLM (32 learned positions) is converted to a Longformer for 96 tokens:
inside RoBERTa's range, with a window covering the whole input, the Longformer must compute exactly
what RoBERTa computes; the converted folder must load in transformers' LongformerForMaskedLM and
agree with our model on inputs longer than RoBERTa ever saw; plus the position table, the global
projections, config.json, tokenizer files, the in-memory path, the command line and bad input.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import longformer as L
from longformer import convert, hf_checkpoint
from longformer.tokenizer import LongformerTokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 5e-5
VOCAB, PAD = 100, 1
ROBERTA_POSITIONS = 34  # 32 learned positions after <pad> (row 1) and the unused row 0
MAX_LENGTH = 96
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def roberta_config(**overrides):
  kw = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=ROBERTA_POSITIONS,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, type_vocab_size=1,
            layer_norm_eps=1e-5, pad_token_id=PAD, bos_token_id=0, eos_token_id=2)
  kw.update(overrides)
  return transformers.RobertaConfig(**kw)


def random_roberta(cls, seed=0):
  """Every parameter perturbed, so zero biases, unit LayerNorms and the zero padding row of the
  position table cannot hide a wrong copy."""
  torch.manual_seed(seed)
  model = cls(roberta_config()).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model


def write_tokenizer(folder):
  corpus = ["the quick brown fox jumps over the lazy dog", "long documents need long models"] * 4
  tok = LongformerTokenizer.train(corpus, vocab_size=280, min_frequency=1)
  tok.save(folder)
  path = os.path.join(folder, "tokenizer_config.json")
  with open(path) as f:
    config = json.load(f)
  config.update(model_max_length=ROBERTA_POSITIONS - 2, tokenizer_class="RobertaTokenizer")
  with open(path, "w") as f:
    json.dump(config, f)


def batch(rng, length, n=3):
  """<s> ... </s> with padding in two of the examples."""
  ids = rng.randint(3, VOCAB, (n, length))
  mask = np.ones((n, length), np.int64)
  mask[1, length - 7:] = 0
  mask[2, length - 2:] = 0
  ids[:, 0] = 0
  ids[np.arange(n), mask.sum(1) - 1] = 2
  ids[mask == 0] = PAD
  return ids, mask


def diff(ours, ref, mask=None):
  ours = np.asarray(ours, np.float64)
  ref = ref.detach().numpy().astype(np.float64) if hasattr(ref, "detach") else np.asarray(ref)
  d = np.abs(ours - ref)
  if mask is not None:  # padded positions are not outputs anyone reads (Longformer zeroes them)
    d = d[np.asarray(mask) > 0]
  return float(d.max())


def run(model, params, ids, **arrays):
  """model.apply under jit (much faster than eager op-by-op on CPU), with hidden states."""
  names = sorted(arrays)
  fn = jax.jit(lambda p, i, *a: model.apply(p, i, output_hidden_states=True,
                                             **dict(zip(names, a))))
  return fn(params, ids, *(arrays[n] for n in names))


@pytest.fixture(scope="module")
def roberta(tmp_path_factory):
  """(torch RobertaForMaskedLM, its folder with a tokenizer)."""
  model = random_roberta(transformers.RobertaForMaskedLM)
  folder = str(tmp_path_factory.mktemp("roberta"))
  model.save_pretrained(folder)
  write_tokenizer(folder)
  return model, folder


@pytest.fixture(scope="module")
def converted_wide(roberta, tmp_path_factory):
  """Window 64: a 32-token input sees every other token, as in RoBERTa."""
  dst = str(tmp_path_factory.mktemp("longformer_w64"))
  info = convert.convert_roberta_checkpoint(roberta[1], dst, max_length=MAX_LENGTH,
                                            attention_window=64)
  return dst, info


@pytest.fixture(scope="module")
def converted_narrow(roberta, tmp_path_factory):
  dst = str(tmp_path_factory.mktemp("longformer_w8"))
  convert.convert_roberta_checkpoint(roberta[1], dst, max_length=MAX_LENGTH, attention_window=8)
  return dst


# ----------------------------------------------------------------------------- numerics
def test_short_inputs_match_roberta(roberta, converted_wide):
  ref_model, _ = roberta
  dst, info = converted_wide
  assert info["architectures"] == ["LongformerForMaskedLM"]
  ids, mask = batch(np.random.RandomState(0), ROBERTA_POSITIONS - 2)  # RoBERTa's longest input
  with torch.no_grad():
    ref = ref_model(torch.tensor(ids), attention_mask=torch.tensor(mask),
                    output_hidden_states=True)

  model, params = L.load_hf_checkpoint(dst, max_global_tokens=2)
  assert isinstance(model, L.LongformerForMaskedLM)
  out = run(model, params, ids, attention_mask=mask)
  logits = diff(out.logits, ref.logits, mask)
  hidden = max(diff(a, b, mask) for a, b in zip(out.hidden_states, ref.hidden_states))
  print(f"\nconverted vs RoBERTa (no global tokens): logits {logits:.2e}, hidden {hidden:.2e}")
  assert logits <= TOL and hidden <= TOL

  # The bare encoder on the same file (RobertaForMaskedLM has no pooler, so none is built;
  # load_hf_checkpoint(task='base') would call the missing pooler an error).
  base = L.LongformerModel(model.config, add_pooling_layer=False)
  base_params, _ = hf_checkpoint.params_from_state_dict(base, hf_checkpoint.read_state_dict(dst))
  last = run(base, base_params, ids, attention_mask=mask).last_hidden_state
  assert diff(last, ref.hidden_states[-1], mask) <= TOL


def test_transformers_longformer_loads_converted_folder(converted_narrow):
  hf, info = transformers.LongformerForMaskedLM.from_pretrained(converted_narrow,
                                                               output_loading_info=True)
  hf.eval()
  for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
    assert not info.get(kind), (kind, info[kind])
  assert hf.config.attention_window == [8, 8]
  assert hf.config.max_position_embeddings == MAX_LENGTH + 2

  length = 80  # far beyond RoBERTa's 32 positions, and not a multiple of the window
  ids, mask = batch(np.random.RandomState(1), length)
  glob = np.zeros_like(mask)
  glob[0, [0, 40]] = 1  # two global tokens in one example, one in another, none in the third
  glob[1, 0] = 1
  with torch.no_grad():
    ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask),
             global_attention_mask=torch.tensor(glob), output_hidden_states=True)

  model, params = L.load_hf_checkpoint(converted_narrow, max_global_tokens=4)
  out = run(model, params, ids, attention_mask=mask, global_attention_mask=glob)
  assert not np.asarray(out.global_overflow).any()
  logits = diff(out.logits, ref.logits, mask)
  hidden = max(diff(a, b, mask) for a, b in zip(out.hidden_states, ref.hidden_states))
  print(f"\nours vs transformers Longformer on the converted folder (length {length}, window 8): "
        f"logits {logits:.2e}, hidden {hidden:.2e}")
  assert logits <= TOL and hidden <= TOL


# ----------------------------------------------------------------------------- the recipe
def test_position_table_global_projections_and_config(roberta, converted_wide):
  ref_model, src = roberta
  dst, _ = converted_wide
  old = {k: v.numpy() for k, v in ref_model.state_dict().items()}
  new = hf_checkpoint.read_state_dict(dst)

  table, old_table = (new["longformer.embeddings.position_embeddings.weight"],
                      old["roberta.embeddings.position_embeddings.weight"])
  assert table.shape == (MAX_LENGTH + 2, 32)
  np.testing.assert_array_equal(table[:2], old_table[:2])
  learned = ROBERTA_POSITIONS - 2
  for row in range(2, MAX_LENGTH + 2):
    np.testing.assert_array_equal(table[row], old_table[2 + (row - 2) % learned])

  for layer in range(2):
    prefix = f"longformer.encoder.layer.{layer}.attention.self."
    for which in ("query", "key", "value"):
      for leaf in ("weight", "bias"):
        np.testing.assert_array_equal(new[f"{prefix}{which}_global.{leaf}"],
                                      new[f"{prefix}{which}.{leaf}"])
        np.testing.assert_array_equal(new[f"{prefix}{which}.{leaf}"],
                                      old[f"roberta.encoder.layer.{layer}.attention.self."
                                          f"{which}.{leaf}"])
  # Everything else is carried over unchanged, under the new prefix.
  for key, value in old.items():
    if key.endswith("position_embeddings.weight") or key.startswith("lm_head.decoder."):
      continue
    np.testing.assert_array_equal(new[key.replace("roberta.", "longformer.", 1)], value)
  assert not any(k.endswith("position_ids") or k.startswith("roberta.") for k in new)
  assert "lm_head.dense.weight" in new and "lm_head.bias" in new
  # As transformers' save_pretrained: the tied decoder copies are not in the file.
  assert not any(k.startswith("lm_head.decoder.") for k in new)
  from safetensors import safe_open
  with safe_open(os.path.join(dst, "model.safetensors"), "np") as f:
    assert f.metadata() == {"format": "pt"}

  with open(os.path.join(src, "config.json")) as f:
    src_config = json.load(f)
  with open(os.path.join(dst, "config.json")) as f:
    config = json.load(f)
  assert config["model_type"] == "longformer"
  assert config["attention_window"] == [64, 64]
  assert config["max_position_embeddings"] == MAX_LENGTH + 2
  assert config["architectures"] == ["LongformerForMaskedLM"]
  for key, value in src_config.items():
    if key not in ("model_type", "max_position_embeddings", "architectures",
                   "transformers_version"):
      assert config[key] == value, key


def test_state_conversion_in_memory_generic_padding_and_untied_heads():
  """Any pad_token_id (pad + 1 leading rows), a bare RobertaModel state, window lists."""
  rng = np.random.RandomState(0)
  pad, learned, hidden = 3, 5, 4
  table = rng.randn(pad + 1 + learned, hidden).astype(np.float32)
  state = {"embeddings.position_embeddings.weight": table,
           "embeddings.position_ids": np.arange(pad + 1 + learned)[None],
           "embeddings.word_embeddings.weight": rng.randn(10, hidden).astype(np.float32),
           "encoder.layer.0.attention.self.query.weight": rng.randn(hidden, hidden),
           "encoder.layer.0.attention.self.query.bias": rng.randn(hidden),
           "pooler.dense.weight": rng.randn(hidden, hidden)}
  config = {"model_type": "roberta", "num_hidden_layers": 2, "hidden_size": hidden,
            "num_attention_heads": 2, "intermediate_size": 8, "vocab_size": 10,
            "pad_token_id": pad, "max_position_embeddings": pad + 1 + learned,
            "architectures": ["RobertaModel"], "some_custom_field": "kept"}
  cfg, out = convert.roberta_state_to_longformer(state, config, max_position_embeddings=pad + 13,
                                                 attention_window=[2, 6])
  assert isinstance(cfg, L.LongformerConfig)
  assert cfg.attention_window == (2, 6) and cfg.max_position_embeddings == pad + 13
  new = out["embeddings.position_embeddings.weight"]
  assert new.shape == (pad + 13, hidden) and new.dtype == table.dtype
  np.testing.assert_array_equal(new[:pad + 1], table[:pad + 1])
  expected = np.concatenate([table[pad + 1:]] * 3)[:12]  # 12 rows = 5 + 5 + 2 (cut short)
  np.testing.assert_array_equal(new[pad + 1:], expected)
  np.testing.assert_array_equal(out["encoder.layer.0.attention.self.query_global.weight"],
                                state["encoder.layer.0.attention.self.query.weight"])
  assert "embeddings.position_ids" not in out and "pooler.dense.weight" in out
  assert not any(k.startswith("longformer.") for k in out)
  hf = convert.longformer_hf_config(config, max_position_embeddings=pad + 13, attention_window=4)
  assert hf["some_custom_field"] == "kept" and hf["attention_window"] == [4, 4]
  assert hf["sep_token_id"] == 2  # RoBERTa's </s>
  # Unchanged length is allowed (a plain renaming plus global copies).
  _, same = convert.roberta_state_to_longformer(
      state, config, max_position_embeddings=pad + 1 + learned, attention_window=2)
  np.testing.assert_array_equal(same["embeddings.position_embeddings.weight"], table)


def test_bare_roberta_model_checkpoint(tmp_path):
  ref_model = random_roberta(transformers.RobertaModel, seed=1)
  src, dst = str(tmp_path / "roberta"), str(tmp_path / "longformer")
  ref_model.save_pretrained(src)
  info = convert.convert_roberta_checkpoint(src, dst, max_length=64, attention_window=64)
  assert info["architectures"] == ["LongformerModel"]
  assert info["tokenizer_files"] == []
  state = hf_checkpoint.read_state_dict(dst)
  assert "pooler.dense.weight" in state and "embeddings.position_embeddings.weight" in state
  assert "encoder.layer.1.attention.self.value_global.bias" in state

  hf, loading = transformers.LongformerModel.from_pretrained(dst, output_loading_info=True)
  assert not loading["missing_keys"] and not loading["unexpected_keys"]

  ids, mask = batch(np.random.RandomState(2), 20)
  with torch.no_grad():
    ref = ref_model(torch.tensor(ids), attention_mask=torch.tensor(mask))
  model, params = L.load_hf_checkpoint(dst, max_global_tokens=1)
  out = run(model, params, ids, attention_mask=mask)
  assert diff(out.last_hidden_state, ref.last_hidden_state, mask) <= TOL
  assert diff(out.pooler_output, ref.pooler_output) <= TOL


def test_load_roberta_as_longformer_in_memory(roberta, converted_wide):
  _, src = roberta
  dst, _ = converted_wide
  model, params, report = convert.load_roberta_as_longformer(
      src, max_length=MAX_LENGTH, attention_window=64, max_global_tokens=3, return_report=True)
  assert isinstance(model, L.LongformerForMaskedLM)
  assert model.config.max_global_tokens == 3 and model.config.max_sequence_length == MAX_LENGTH
  assert not report["initialised"] and not report["unexpected"]
  _, from_file = L.load_hf_checkpoint(dst)
  same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), params, from_file)
  assert all(jax.tree.leaves(same))
  assert jax.tree.structure(params) == jax.tree.structure(from_file)


def test_tokenizer_files_copied_with_new_length(roberta, converted_wide):
  _, src = roberta
  dst, info = converted_wide
  names = sorted(os.path.basename(p) for p in info["tokenizer_files"])
  assert names == sorted(["tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                          "special_tokens_map.json"])
  with open(os.path.join(dst, "tokenizer_config.json")) as f:
    config = json.load(f)
  assert config["model_max_length"] == MAX_LENGTH
  assert config["tokenizer_class"] == "LongformerTokenizer"
  for name in ("vocab.json", "merges.txt", "tokenizer.json"):
    with open(os.path.join(src, name), "rb") as a, open(os.path.join(dst, name), "rb") as b:
      assert a.read() == b.read()
  tok = LongformerTokenizer.from_pretrained(dst)
  assert tok.model_max_length == MAX_LENGTH
  assert tok.get_vocab() == LongformerTokenizer.from_pretrained(src).get_vocab()


# ----------------------------------------------------------------------------- command line
def test_command_line(roberta, tmp_path):
  _, src = roberta
  dst = tmp_path / "cli"
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
  result = subprocess.run(
      [sys.executable, "-m", "longformer.convert", f"--roberta={src}", f"--out={dst}",
       "--max_length=64", "--attention_window=16"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert "model.safetensors" in result.stdout and "config.json" in result.stdout
  with open(dst / "config.json") as f:
    config = json.load(f)
  assert config["attention_window"] == [16, 16] and config["max_position_embeddings"] == 66
  assert (dst / "model.safetensors").is_file() and (dst / "vocab.json").is_file()

  # Errors come back as a message and exit status 2 (run in-process: no second interpreter).
  assert convert.main([f"--roberta={src}", f"--out={tmp_path / 'bad'}",
                       "--attention_window=7"]) == 2
  assert convert.main([f"--roberta={src}", f"--out={tmp_path / 'per_layer'}", "--max_length=40",
                       "--attention_window=4,8"]) == 0
  with open(tmp_path / "per_layer" / "config.json") as f:
    assert json.load(f)["attention_window"] == [4, 8]


# ----------------------------------------------------------------------------- bad input
def test_bad_input(roberta, tmp_path):
  _, src = roberta
  longformer_dir = str(tmp_path / "already_longformer")
  transformers.LongformerModel(transformers.LongformerConfig(
      vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
      intermediate_size=37, max_position_embeddings=ROBERTA_POSITIONS,
      attention_window=8)).save_pretrained(longformer_dir)
  out = str(tmp_path / "out")
  with pytest.raises(convert.ConversionError, match="not a RoBERTa checkpoint.*'longformer'"):
    convert.convert_roberta_checkpoint(longformer_dir, out, max_length=64, attention_window=8)
  with pytest.raises(convert.ConversionError, match="not a RoBERTa checkpoint"):
    convert.load_roberta_as_longformer(longformer_dir, max_length=64, attention_window=8)
  with pytest.raises(convert.ConversionError, match="no config.json"):
    convert.convert_roberta_checkpoint(str(tmp_path), out, max_length=64, attention_window=8)
  with pytest.raises(convert.ConversionError, match="even"):
    convert.convert_roberta_checkpoint(src, out, max_length=64, attention_window=7)
  with pytest.raises(convert.ConversionError, match="even"):
    convert.load_roberta_as_longformer(src, max_length=64, attention_window=[8, 5])
  with pytest.raises(convert.ConversionError, match="2 layers"):
    convert.convert_roberta_checkpoint(src, out, max_length=64, attention_window=[8, 8, 8])
  with pytest.raises(convert.ConversionError, match="smaller than RoBERTa's 32"):
    convert.convert_roberta_checkpoint(src, out, max_length=16, attention_window=8)
  with pytest.raises(convert.ConversionError, match="must differ"):
    convert.convert_roberta_checkpoint(src, src, max_length=64, attention_window=8)
  assert not os.path.exists(out)  # nothing written on any error
