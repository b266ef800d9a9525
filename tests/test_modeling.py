"""The model against transformers' PyTorch Longformer on the same weights (float32).

Every head, per-layer windows, lengths that are not a multiple of the window, batch padding,
different numbers of global tokens per example, output_attentions and losses; then export back
to transformers, the parameter-name table, and bad input.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import longformer as L
from longformer import hf_checkpoint

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 5e-5
VOCAB, SEP, PAD = 99, 2, 1


def hf_config(**overrides):
  kw = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=130, attention_window=[4, 8, 8],
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, type_vocab_size=2,
            num_labels=3)
  kw.update(overrides)
  return transformers.LongformerConfig(**kw)


def save_reference(tmp_path, name, **overrides):
  torch.manual_seed(0)
  hf = getattr(transformers, name)(hf_config(**overrides)).eval()
  hf.save_pretrained(tmp_path)
  return hf


def batch(rng, shape=(3, 21), qa_layout=False):
  """Random ids with `<s>` first, padding in two examples, and (optionally) QA separators."""
  n = shape[-1]
  ids = rng.randint(3, VOCAB, shape).reshape(-1, n)
  ids[:, 0] = 0
  mask = np.ones(ids.shape, np.int64)
  mask[1, n - 6:] = 0
  mask[2, n - 2:] = 0
  if qa_layout:  # <s> q q q </s></s> context ... </s> [pad]
    ids[:, 4] = SEP
    ids[:, 5] = SEP
    last = mask.sum(-1) - 1
    ids[np.arange(len(ids)), last] = SEP
  ids[mask == 0] = PAD
  return ids.reshape(shape), mask.reshape(shape)


def global_mask(shape):
  g = np.zeros(shape, np.int64)
  g[..., 0, [0, 5, 20]] = 1  # three global tokens, one of them the last token
  g[..., 1, 3] = 1  # one
  return g  # example 2: none


def to_torch(x):
  return None if x is None else torch.tensor(np.asarray(x))


def max_diff(ours, ref):
  return float(np.max(np.abs(np.asarray(ours, np.float64) - ref.detach().numpy())))


def compare_outputs(out, ref, fields, windows=(4, 8, 8)):
  diffs = {}
  for f in fields:
    diffs[f] = max_diff(getattr(out, f), getattr(ref, f))
  diffs["hidden_states"] = max(max_diff(a, b) for a, b in zip(out.hidden_states,
                                                               ref.hidden_states))
  # Our global columns hold the static budget; the reference holds the batch maximum (or none).
  diffs["attentions"] = 0.0
  for a, b, w in zip(out.attentions, ref.attentions, windows):
    ours_g, ref_g = a.shape[-1] - (w + 1), b.shape[-1] - (w + 1)
    assert ours_g >= ref_g
    a = np.concatenate([np.asarray(a)[..., :ref_g], np.asarray(a)[..., ours_g:]], axis=-1)
    diffs["attentions"] = max(diffs["attentions"], max_diff(a, b))
  for f, d in diffs.items():
    assert d <= TOL, f"{f}: max abs diff {d:.2e}"
  return diffs


HEADS = [
    ("LongformerModel", ["last_hidden_state", "pooler_output"]),
    ("LongformerForMaskedLM", ["logits", "loss"]),
    ("LongformerForSequenceClassification", ["logits", "loss"]),
    ("LongformerForTokenClassification", ["logits", "loss"]),
    ("LongformerForQuestionAnswering", ["start_logits", "end_logits", "loss"]),
]


def labels_for(name, rng, ids, mask):
  b, n = ids.shape
  if name == "LongformerForMaskedLM":
    labels = np.where(rng.rand(b, n) < 0.3, ids, -100)
    return {"labels": labels}
  if name == "LongformerForSequenceClassification":
    return {"labels": rng.randint(0, 3, (b,))}
  if name == "LongformerForTokenClassification":
    return {"labels": np.where(mask > 0, rng.randint(0, 3, (b, n)), -100)}
  if name == "LongformerForQuestionAnswering":
    return {"start_positions": np.array([6, 30, 8]), "end_positions": np.array([9, 12, 40])}
  return {}


@pytest.mark.parametrize("name,fields", HEADS)
@pytest.mark.parametrize("explicit_global", [True, False])
def test_head_matches_reference(tmp_path, name, fields, explicit_global):
  qa = name == "LongformerForQuestionAnswering"
  overrides = {"num_labels": 2} if qa else {}
  hf = save_reference(tmp_path, name, **overrides)
  rng = np.random.RandomState(0)
  ids, mask = batch(rng, qa_layout=qa)
  gmask = global_mask(ids.shape) if explicit_global else None
  labels = labels_for(name, rng, ids, mask)
  if "loss" not in fields:
    labels = {}
  with torch.no_grad():
    ref = hf(input_ids=to_torch(ids), attention_mask=to_torch(mask),
             global_attention_mask=to_torch(gmask), output_attentions=True,
             output_hidden_states=True, **{k: to_torch(v) for k, v in labels.items()})
  model, params = L.load_hf_checkpoint(tmp_path, max_global_tokens=5)
  assert type(model).__name__ == name
  out = model.apply(params, jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                    global_attention_mask=None if gmask is None else jnp.asarray(gmask),
                    output_attentions=True, output_hidden_states=True,
                    **{k: jnp.asarray(v) for k, v in labels.items()})
  compare_outputs(out, ref, [f for f in fields if getattr(ref, f, None) is not None])
  if ref.global_attentions is not None:
    counts = (gmask if gmask is not None else np.asarray(
        L.modeling.classification_global_mask(ids) if "Sequence" in name else
        L.modeling.question_answering_global_mask(ids, SEP))) * mask
    counts = counts.sum(-1)
    for ours, theirs in zip(out.global_attentions, ref.global_attentions):
      for b, c in enumerate(counts):  # the reference's unused slots hold filler
        np.testing.assert_allclose(ours[b, :, :, :c], theirs[b, :, :ids.shape[1], :c].numpy(),
                                   atol=TOL)


def test_sequence_classification_losses(tmp_path):
  rng = np.random.RandomState(1)
  ids, mask = batch(rng)
  for num_labels, labels, kind in [
      (1, rng.randn(3).astype(np.float32), "regression"),
      (3, rng.randint(0, 2, (3, 3)).astype(np.float32), "multi_label_classification"),
  ]:
    path = tmp_path / kind
    hf = save_reference(path, "LongformerForSequenceClassification", num_labels=num_labels,
                        problem_type=kind)
    with torch.no_grad():
      ref = hf(input_ids=to_torch(ids), attention_mask=to_torch(mask), labels=to_torch(labels))
    model, params = L.load_hf_checkpoint(path)
    assert model.config.problem_type == kind
    out = model.apply(params, jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                      labels=jnp.asarray(labels))
    assert max_diff(out.logits, ref.logits) <= TOL
    assert max_diff(out.loss, ref.loss) <= TOL


@pytest.mark.parametrize("explicit_global", [True, False])
def test_multiple_choice_matches_reference(tmp_path, explicit_global):
  hf = save_reference(tmp_path, "LongformerForMultipleChoice")
  rng = np.random.RandomState(2)
  ids, mask = batch(rng, shape=(2, 3, 13), qa_layout=True)  # (2 examples, 3 choices)
  gmask = np.zeros(ids.shape, np.int64)
  gmask[:, :, 0] = 1
  gmask[0, 1, 7] = 1
  gmask = gmask if explicit_global else None
  labels = np.array([2, 0])
  with torch.no_grad():
    ref = hf(input_ids=to_torch(ids), attention_mask=to_torch(mask),
             global_attention_mask=to_torch(gmask), labels=to_torch(labels),
             output_attentions=True, output_hidden_states=True)
  model, params = L.load_hf_checkpoint(tmp_path, max_global_tokens=13)
  out = model.apply(params, jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                    global_attention_mask=None if gmask is None else jnp.asarray(gmask),
                    labels=jnp.asarray(labels), output_attentions=True,
                    output_hidden_states=True)
  assert out.logits.shape == (2, 3)
  compare_outputs(out, ref, ["logits", "loss"])


def test_inputs_embeds_and_position_ids(tmp_path):
  hf = save_reference(tmp_path, "LongformerModel")
  rng = np.random.RandomState(3)
  ids, mask = batch(rng)
  embeds = hf.embeddings.word_embeddings(to_torch(ids)).detach()
  pos = np.broadcast_to(np.arange(ids.shape[1]) + 5, ids.shape)
  with torch.no_grad():
    ref_e = hf(inputs_embeds=embeds, attention_mask=to_torch(mask))
    ref_p = hf(input_ids=to_torch(ids), attention_mask=to_torch(mask), position_ids=to_torch(pos))
  model, params = L.load_hf_checkpoint(tmp_path)
  out_e = model.apply(params, inputs_embeds=jnp.asarray(embeds.numpy()),
                      attention_mask=jnp.asarray(mask))
  out_p = model.apply(params, jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                      position_ids=jnp.asarray(pos))
  assert max_diff(out_e.last_hidden_state, ref_e.last_hidden_state) <= TOL
  assert max_diff(out_p.last_hidden_state, ref_p.last_hidden_state) <= TOL


def test_jit_grad_and_dropout(tmp_path):
  save_reference(tmp_path, "LongformerForMaskedLM")
  model, params = L.load_hf_checkpoint(tmp_path, hidden_dropout_prob=0.1,
                                       attention_probs_dropout_prob=0.1)
  rng = np.random.RandomState(4)
  ids, mask = batch(rng)
  gmask = jnp.asarray(global_mask(ids.shape))

  @jax.jit
  def loss(p, key):
    return model.apply(p, ids, attention_mask=mask, global_attention_mask=gmask, labels=ids,
                       deterministic=False, rngs={"dropout": key}).loss

  k1, k2 = jax.random.split(jax.random.key(0))
  assert loss(params, k1) == loss(params, k1)
  assert loss(params, k1) != loss(params, k2)
  grads = jax.grad(loss)(params, k1)
  norms = jax.tree.map(lambda g: float(jnp.linalg.norm(g)), grads)
  flat = jax.tree.leaves(norms)
  assert all(np.isfinite(flat)) and sum(flat) > 0
  # The global projections receive gradient when global tokens exist.
  qg = grads["params"]["longformer"]["encoder"]["layer_0"]["attention"]["self"]["query_global"]
  assert float(jnp.abs(qg["kernel"]).sum()) > 0


def test_export_round_trip(tmp_path):
  """Our params -> save_hf_checkpoint -> transformers.from_pretrained -> the same outputs."""
  for name in ["LongformerForMaskedLM", "LongformerForQuestionAnswering",
               "LongformerForMultipleChoice"]:
    cfg = L.LongformerConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4, intermediate_size=37,
                             max_position_embeddings=130, attention_window=(4, 8),
                             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                             max_global_tokens=13)
    model = getattr(L, name)(cfg)
    params = hf_checkpoint.init_params(model, jax.random.key(7))
    # Make every parameter informative (random biases and norms too).
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(8), len(leaves))
    params = jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape)
                                       for x, k in zip(leaves, keys)])
    path = tmp_path / name
    L.save_hf_checkpoint(path, model, params)
    hf = getattr(transformers, name).from_pretrained(path).eval()
    rng = np.random.RandomState(5)
    ids, mask = batch(rng, shape=(2, 3, 13) if "Multiple" in name else (3, 13), qa_layout=True)
    with torch.no_grad():
      ref = hf(input_ids=to_torch(ids), attention_mask=to_torch(mask))
    out = model.apply(params, jnp.asarray(ids), attention_mask=jnp.asarray(mask))
    field = "start_logits" if "Question" in name else "logits"
    assert max_diff(getattr(out, field), getattr(ref, field)) <= TOL, name
    # And it loads back into our model unchanged.
    model2, params2 = L.load_hf_checkpoint(path, max_global_tokens=13)
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, params2)
    assert all(jax.tree.leaves(same))


def test_authors_roberta_prefix_and_head_init(tmp_path, caplog):
  """A `roberta.`-prefixed MLM checkpoint loads; a new head is initialised and reported."""
  hf = save_reference(tmp_path / "src", "LongformerForMaskedLM")
  state = hf_checkpoint.read_state_dict(tmp_path / "src")
  renamed = {k.replace("longformer.", "roberta.", 1): v for k, v in state.items()}
  from safetensors.numpy import save_file
  os.makedirs(tmp_path / "roberta")
  save_file(renamed, str(tmp_path / "roberta" / "model.safetensors"), metadata={"format": "pt"})
  with open(tmp_path / "src" / "config.json") as f:
    config = json.load(f)
  config["architectures"] = ["RobertaForMaskedLM"]
  with open(tmp_path / "roberta" / "config.json", "w") as f:
    json.dump(config, f)
  model, params = L.load_hf_checkpoint(tmp_path / "roberta")
  assert type(model).__name__ == "LongformerForMaskedLM"
  ids, mask = batch(np.random.RandomState(6))
  with torch.no_grad():
    ref = hf(input_ids=to_torch(ids), attention_mask=to_torch(mask))
  out = model.apply(params, jnp.asarray(ids), attention_mask=jnp.asarray(mask))
  assert max_diff(out.logits, ref.logits) <= TOL

  model, params, report = L.load_hf_checkpoint(tmp_path / "roberta", task="question_answering",
                                               return_report=True)
  assert sorted(report["initialised"]) == ["qa_outputs.bias", "qa_outputs.weight"]
  assert "lm_head.dense.weight" in report["unexpected"]
  assert "qa_outputs" in params["params"]


def test_checkpoint_mismatch_is_refused(tmp_path):
  save_reference(tmp_path, "LongformerModel")
  with pytest.raises(hf_checkpoint.CheckpointMismatchError, match="shape mismatch"):
    L.load_hf_checkpoint(tmp_path, intermediate_size=40)
  state = hf_checkpoint.read_state_dict(tmp_path)
  del state["encoder.layer.1.attention.self.key_global.weight"]
  from safetensors.numpy import save_file
  save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(hf_checkpoint.CheckpointMismatchError,
                     match=r"missing: encoder\.layer\.1\.attention\.self\.key_global\.weight"):
    L.load_hf_checkpoint(tmp_path)


# Parameter names and shapes for a tiny config: catches accidental checkpoint-format changes.
GOLDEN = {
    "embeddings.word_embeddings.weight": (11, 8),
    "embeddings.position_embeddings.weight": (20, 8),
    "embeddings.token_type_embeddings.weight": (1, 8),
    "embeddings.LayerNorm.weight": (8,),
    "embeddings.LayerNorm.bias": (8,),
    **{f"encoder.layer.0.attention.self.{p}.{w}": (8, 8) if w == "weight" else (8,)
       for p in ["query", "key", "value", "query_global", "key_global", "value_global"]
       for w in ["weight", "bias"]},
    "encoder.layer.0.attention.output.dense.weight": (8, 8),
    "encoder.layer.0.attention.output.dense.bias": (8,),
    "encoder.layer.0.attention.output.LayerNorm.weight": (8,),
    "encoder.layer.0.attention.output.LayerNorm.bias": (8,),
    "encoder.layer.0.intermediate.dense.weight": (12, 8),
    "encoder.layer.0.intermediate.dense.bias": (12,),
    "encoder.layer.0.output.dense.weight": (8, 12),
    "encoder.layer.0.output.dense.bias": (8,),
    "encoder.layer.0.output.LayerNorm.weight": (8,),
    "encoder.layer.0.output.LayerNorm.bias": (8,),
    "pooler.dense.weight": (8, 8),
    "pooler.dense.bias": (8,),
}


def test_golden_parameter_table():
  cfg = L.LongformerConfig(vocab_size=11, hidden_size=8, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=12,
                           max_position_embeddings=20, type_vocab_size=1, attention_window=4)
  shapes = {hf_checkpoint.torch_name(p)[0]: tuple(s.shape[::-1] if hf_checkpoint.torch_name(p)[1]
                                                  else s.shape)
            for p, s in hf_checkpoint.abstract_params(L.LongformerModel(cfg)).items()}
  assert shapes == GOLDEN
  heads = {hf_checkpoint.torch_name(p)[0]
           for p in hf_checkpoint.abstract_params(L.LongformerForMaskedLM(cfg))}
  assert {"lm_head.dense.weight", "lm_head.layer_norm.weight", "lm_head.bias",
          "longformer.encoder.layer.0.attention.self.query_global.weight"} <= heads
  assert not any(n.startswith("longformer.pooler") for n in heads)


def tiny(**kw):
  base = dict(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
              intermediate_size=16, max_position_embeddings=34, attention_window=4,
              max_global_tokens=2)
  base.update(kw)
  return L.LongformerConfig(**base)


def test_bad_input_errors():
  model = L.LongformerModel(tiny())
  ids = jnp.ones((2, 8), jnp.int32)
  params = hf_checkpoint.init_params(model, jax.random.key(0))
  with pytest.raises(ValueError, match="longer than the position table"):
    model.apply(params, jnp.ones((1, 33), jnp.int32))
  model.apply(params, jnp.ones((1, 32), jnp.int32))  # exactly fits: 32 + pad + 1 = 34 rows
  with pytest.raises(ValueError, match="attention_mask has shape"):
    model.apply(params, ids, attention_mask=jnp.ones((2, 7)))
  with pytest.raises(ValueError, match="global_attention_mask has shape"):
    model.apply(params, ids, global_attention_mask=jnp.ones((8,)))
  with pytest.raises(ValueError, match="budget is max_global_tokens=2"):
    model.apply(params, ids, global_attention_mask=jnp.ones((2, 8), jnp.int32))
  # Under jit the values are unknown: the overflow is reported in the outputs instead.
  out = jax.jit(lambda g: model.apply(params, ids, global_attention_mask=g))(
      jnp.zeros((2, 8), jnp.int32).at[1, :3].set(1))
  assert out.global_overflow.tolist() == [False, True]
  qa = L.LongformerForQuestionAnswering(tiny(num_labels=2))
  qa_params = hf_checkpoint.init_params(qa, jax.random.key(0))
  with pytest.raises(ValueError, match="exactly three separator tokens"):
    qa.apply(qa_params, ids)


@pytest.mark.parametrize("kw,msg", [
    (dict(attention_window=5), "even positive"),
    (dict(attention_window=0), "even positive"),
    (dict(attention_window=(4, 8)), "2 entries but num_hidden_layers is 1"),
    (dict(hidden_size=15), "not a multiple of num_attention_heads"),
    (dict(remat="sometimes"), "remat"),
    (dict(max_global_tokens=-1), "max_global_tokens"),
])
def test_config_validation(kw, msg):
  with pytest.raises(ValueError, match=msg):
    tiny(**kw)


def test_config_json_round_trip(tmp_path):
  cfg = tiny(num_hidden_layers=3, attention_window=(4, 8, 6), num_labels=5)
  cfg.save_pretrained(tmp_path, architectures=["LongformerForTokenClassification"])
  assert L.LongformerConfig.from_pretrained(tmp_path, max_global_tokens=2) == cfg
  hf = transformers.LongformerConfig.from_pretrained(tmp_path)
  assert hf.attention_window == [4, 8, 6] and hf.num_labels == 5


def test_odd_per_layer_windows_run():
  """[4, 8, 6] (the reference crashes here) and window 2 both run and agree with themselves."""
  for windows in [(4, 8, 6), (2, 2, 2)]:
    model = L.LongformerModel(tiny(num_hidden_layers=3, attention_window=windows))
    params = hf_checkpoint.init_params(model, jax.random.key(0))
    ids = jnp.asarray(np.random.RandomState(0).randint(3, VOCAB, (2, 19)))
    out = model.apply(params, ids, output_attentions=True)
    assert [a.shape[-1] for a in out.attentions] == [2 + w + 1 for w in windows]
    assert np.isfinite(np.asarray(out.last_hidden_state)).all()


def test_scan_layers_equals_unrolled():
    """scan_layers (runs of equal windows) and remat give the unrolled model's loss and grads."""
    cfg = tiny(num_hidden_layers=5, attention_window=(4, 4, 8, 8, 8), max_global_tokens=3,
               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ids = jnp.asarray(np.random.RandomState(9).randint(3, VOCAB, (2, 29)))
    gm = jnp.zeros((2, 29), jnp.int32).at[0, 0].set(1).at[1, 5].set(1)
    plain = L.LongformerForMaskedLM(cfg)
    params = hf_checkpoint.init_params(plain, jax.random.key(0))

    def loss(model):
        """The loss and its gradients, one entry per layer (a scan model runs on the same
        weights, stacked)."""
        value, grads = jax.jit(jax.value_and_grad(
            lambda p: model.apply(p, ids, global_attention_mask=gm, labels=ids).loss))(
            L.stack_layers(params, cfg) if model.config.scan_layers else params)
        return value, L.unstack_layers(grads, cfg)

    ref_loss, ref_grads = loss(plain)
    for variant in [dict(scan_layers=True), dict(scan_layers=True, remat="dots"),
                    dict(scan_layers=True, remat="minimal"), dict(remat="full")]:
        value, grads = loss(L.LongformerForMaskedLM(cfg.replace(**variant)))
        assert abs(float(value) - float(ref_loss)) < 1e-6, variant
        diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), grads, ref_grads)
        assert max(jax.tree.leaves(diff)) < 1e-6, variant

    # bfloat16 compute: the scan stacks matrices already cast (the layers cast them anyway).
    bf16 = cfg.replace(dtype="bfloat16")
    ref_loss, ref_grads = loss(L.LongformerForMaskedLM(bf16))
    value, grads = loss(L.LongformerForMaskedLM(bf16.replace(scan_layers=True, remat="minimal")))
    assert abs(float(value) - float(ref_loss)) < 1e-3 * abs(float(ref_loss))
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        assert a.dtype == b.dtype == jnp.float32
        np.testing.assert_allclose(a, b, atol=2e-2 * float(jnp.max(jnp.abs(b))) + 1e-6)


@pytest.mark.parametrize("variant", [
    dict(max_global_tokens=13),  # global keys/values projected for every token
    dict(max_global_tokens=3),  # global rows factored through the input
    dict(max_global_tokens=3, attention_dilation=2, scan_layers=True, remat="minimal"),
])
def test_bfloat16_compute_follows_float32(variant):
    """bfloat16 compute (float32 parameters) runs forward and backward on CPU (some XLA:CPU
    kernels refuse bfloat16 x bfloat16 -> float32 layouts) and stays close to float32."""
    cfg = tiny(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=37,
               attention_window=8, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
               **variant)
    ids = jnp.asarray(np.random.RandomState(4).randint(3, VOCAB, (2, 29)))
    gm = jnp.zeros((2, 29), jnp.int32).at[:, :2].set(1)
    params = hf_checkpoint.init_params(L.LongformerForMaskedLM(cfg), jax.random.key(0))

    def run(dtype):
        model = L.LongformerForMaskedLM(cfg.replace(dtype=dtype))
        return jax.jit(jax.value_and_grad(
            lambda p: model.apply(p, ids, global_attention_mask=gm, labels=ids).loss))(params)

    (l32, g32), (l16, g16) = run("float32"), run("bfloat16")
    assert np.isfinite(float(l16)) and abs(float(l16) - float(l32)) < 0.02 * abs(float(l32))
    a, b = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]) for g in (g16, g32))
    assert np.isfinite(a).all()
    assert np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.99  # same direction


def test_scan_model_equals_unrolled_model():
    """A scan_layers model holds its layers stacked from init on (one entry per run of layers
    sharing a window) and, on the same weights (`stack_layers` of an unrolled model's), gives
    the unrolled model's outputs, hidden states, attentions and gradients; unstack_layers
    restores the unrolled tree exactly. With dropout, the scan's masks are fixed by the key."""
    cfg = tiny(num_hidden_layers=4, attention_window=(4, 4, 8, 8), max_global_tokens=2,
               remat="minimal")
    unrolled = L.LongformerForMaskedLM(cfg)
    scanned = L.LongformerForMaskedLM(cfg.replace(scan_layers=True))
    params = hf_checkpoint.init_params(unrolled, jax.random.key(0))
    own = hf_checkpoint.init_params(scanned, jax.random.key(0))["params"]["longformer"]["encoder"]
    assert sorted(own) == ["layers_0_1", "layers_2_3"]
    assert own["layers_2_3"]["intermediate"]["dense"]["kernel"].shape == (2, 16, 16)
    stacked = L.stack_layers(params, cfg)
    assert jax.tree.structure(stacked["params"]["longformer"]["encoder"]) == \
        jax.tree.structure(own)
    back = L.unstack_layers(stacked, cfg)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)))

    ids = jnp.asarray(np.random.RandomState(3).randint(3, VOCAB, (2, 23)))
    gm = jnp.zeros((2, 23), jnp.int32).at[:, 0].set(1)

    def loss(model, p, deterministic):
        return model.apply(p, ids, global_attention_mask=gm, labels=ids,
                           deterministic=deterministic, rngs={"dropout": jax.random.key(1)}).loss

    a, ga = jax.value_and_grad(lambda p: loss(unrolled, p, True))(params)
    b, gb = jax.value_and_grad(lambda p: loss(scanned, p, True))(stacked)
    assert abs(float(a) - float(b)) < 1e-6
    gb = L.unstack_layers(gb, cfg)
    assert max(float(jnp.max(jnp.abs(x - y)))
               for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb))) < 1e-6
    dropped = float(loss(scanned, stacked, False))
    assert dropped == float(loss(scanned, stacked, False)) and abs(dropped - float(b)) > 1e-4
    one = unrolled.apply(params, ids, global_attention_mask=gm, output_hidden_states=True,
                         output_attentions=True)
    two = scanned.apply(stacked, ids, global_attention_mask=gm, output_hidden_states=True,
                        output_attentions=True)
    assert len(two.hidden_states) == 5 and len(two.attentions) == 4
    for x, y in zip(one.hidden_states + one.attentions, two.hidden_states + two.attentions):
        np.testing.assert_allclose(x, y, atol=1e-6)
    with pytest.raises(ValueError, match=r"stack_layers\(params, config\)"):
        scanned.apply(params, ids)  # the other layout: an error that says how to convert
    with pytest.raises(ValueError, match=r"unstack_layers\(params, config\)"):
        unrolled.apply(stacked, ids)
