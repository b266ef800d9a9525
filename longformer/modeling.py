"""Longformer modules: RoBERTa embeddings, the encoder, the base model and the five heads.

Parameter names mirror the Hugging Face state dict (`embeddings/word_embeddings`,
`encoder/layer_3/attention/self/query_global`, `lm_head/decoder` is tied...), so checkpoint
conversion is a systematic renaming. Every parameter carries logical axis names for sharding.
The attention math lives in `attention.py` and the reusable layers in `layers.py`; modules here
only hold parameters, project and call them.
"""

from __future__ import annotations

from typing import Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from longformer import attention as attn_op
from longformer import global_attention, kernels
from longformer import segments as segments_lib
from longformer import sequence_parallel as sp
from longformer.config import PLATFORMS, LongformerConfig
from longformer.layers import (
    REMAT_POLICIES,
    Dense,
    DenseParams,
    Embed,
    LayerNorm,
    activation,
    concrete,
    gelu,
    linear,
    rotary,
)
from longformer.layout import layer_runs, run_name, with_layer_axis
from longformer.losses import (
    hotpotqa_losses,
    masked_cross_entropy,
    question_answering_loss,
    sequence_classification_loss,
)
from longformer.packing import NO_SCORE

Array = jax.Array


# ----------------------------------------------------------------------------- outputs
@flax.struct.dataclass
class LongformerOutput:
    """Base model outputs (Hugging Face field names); cut back to the input length."""
    last_hidden_state: Array
    pooler_output: Optional[Array] = None
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None
    global_attentions: Optional[tuple] = None
    global_overflow: Optional[Array] = None  # (batch,) more global tokens than the budget
    ids_out_of_range: Optional[Array] = None  # (batch,) an id outside its table (under jit)


@flax.struct.dataclass
class LongformerHeadOutput:
    """Head outputs: `logits` (or `start_logits`/`end_logits` for QA) and `loss` with labels."""
    logits: Optional[Array] = None
    loss: Optional[Array] = None
    start_logits: Optional[Array] = None
    end_logits: Optional[Array] = None
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None
    global_attentions: Optional[tuple] = None
    global_overflow: Optional[Array] = None
    ids_out_of_range: Optional[Array] = None
    segment_valid: Optional[Array] = None  # (batch, max_segments): packed rows' filled slots


class ResolvedModule(nn.Module):
    """A top-level model: its config's `platform` is resolved when it is built (`'auto'`: JAX's
    default devices), so what a traced function runs is fixed before tracing starts."""
    config: LongformerConfig

    def __post_init__(self):
        if self.config.platform not in PLATFORMS[1:]:  # 'auto', or an alias such as 'cuda'
            object.__setattr__(self, "config", self.config.resolve())
        super().__post_init__()


# ----------------------------------------------------------------------------- embeddings
class LongformerEmbeddings(nn.Module):
    config: LongformerConfig

    @nn.compact
    def __call__(self, input_ids, token_type_ids, position_ids, inputs_embeds=None,
                 deterministic=True):
        cfg = self.config
        if inputs_embeds is None:
            inputs_embeds = Embed(cfg.vocab_size, cfg, zero_row=cfg.pad_token_id,
                                  name="word_embeddings")(input_ids)
        pos = 0.0  # rotary positions are applied in attention, to queries and keys
        if not cfg.rotary:
            pos = Embed(cfg.max_position_embeddings, cfg, axes=("pos", "embed"),
                        zero_row=cfg.pad_token_id, name="position_embeddings")(position_ids)
        types = Embed(cfg.type_vocab_size, cfg, axes=("pos", "embed"),
                      name="token_type_embeddings")(token_type_ids)
        x = LayerNorm(cfg, name="LayerNorm")(inputs_embeds.astype(cfg.compute_dtype) + pos + types)
        return nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)


# ----------------------------------------------------------------------------- one layer
class LongformerSelfAttention(nn.Module):
    """The six projections of a layer; the math is `attention.longformer_attention`."""
    config: LongformerConfig
    layer_index: int

    @nn.compact
    def __call__(self, x, attention_mask, globals_, segment_ids=None, positions=None,
                 deterministic=True, output_attentions=False):
        cfg = self.config
        batch, length, hidden = x.shape
        heads, dim = cfg.num_attention_heads, cfg.head_dim
        left, right = cfg.layer_extents[self.layer_index]  # (w/2, w/2), or (w, 0) when causal
        use_global = globals_ is not None
        dtype = cfg.compute_dtype

        # The global rows need key_global / value_global of every token: they are handed to the
        # op unprojected (`attention.GlobalProjection`), which projects them only for a budget
        # at or above the head size. Rotary keys depend on their position: they cannot be
        # factored through the input, and ride along with the local projections in one matmul.
        factored = use_global and not cfg.rotary
        global_names = ["key_global", "value_global"] if use_global else []
        params = {n: DenseParams(hidden, cfg, ("embed", "heads"), name=n)(hidden)
                  for n in ["query", "key", "value"] + global_names}
        names = ["query", "key", "value"] + ([] if factored else global_names)
        kernel = jnp.concatenate([params[n][0].astype(dtype) for n in names], axis=1)
        bias = jnp.concatenate([params[n][1] for n in names])
        fused = checkpoint_name(linear(x, kernel, bias, cfg), "projections")
        split = jnp.split(fused, len(names), axis=-1)
        proj = {n: s.reshape(batch, length, heads, dim) for n, s in zip(names, split)}
        scale = 1.0 / np.sqrt(dim)
        if cfg.rotary:
            proj = {n: rotary(p, positions) if n.startswith(("query", "key")) else p
                    for n, p in proj.items()}
        q = (proj["query"].astype(jnp.float32) * scale).astype(dtype)

        q_global = k_global = v_global = None
        if use_global:
            qg_kernel, qg_bias = DenseParams(hidden, cfg, ("embed", "heads"),
                                             name="query_global")(hidden)
            x_global = _gather_rows(x, globals_.index).astype(dtype)
            q_global = linear(x_global, qg_kernel, qg_bias, cfg)
            q_global = (q_global.astype(jnp.float32) * scale).astype(dtype)
            q_global = q_global.reshape(batch, -1, heads, dim)
            if cfg.rotary:
                q_global = rotary(q_global, _gather_rows(positions, globals_.index))
            if factored:
                (k_kernel, k_bias), (v_kernel, v_bias) = params["key_global"], params["value_global"]
                k_global = attn_op.GlobalProjection(
                    x.astype(dtype), k_kernel.astype(dtype).reshape(hidden, heads, dim),
                    k_bias.reshape(heads, dim), v_kernel.astype(dtype).reshape(hidden, heads, dim),
                    v_bias.reshape(heads, dim))
            else:
                k_global, v_global = proj["key_global"], proj["value_global"]

        rate = cfg.attention_probs_dropout_prob
        rng = None if deterministic or rate == 0.0 else self.make_rng("dropout")
        impl = cfg.band_impl
        kwargs = dict(left=left, right=right, globals_=globals_, q_global=q_global,
                      k_global=k_global, v_global=v_global, block=cfg.attention_block_size or None,
                      dropout_rate=rate, dropout_rng=rng, return_probs=output_attentions,
                      upcast_global=cfg.on_cpu, segment_ids=segment_ids)
        budgets = (attn_op.budget_buckets(globals_.index.shape[1], cfg.global_budget_ratio)
                   if use_global else ())
        if impl == "dense":
            if sp.shards() > 1:
                raise ValueError("attention_impl='dense' does not split the sequence over the "
                                 "mesh's `sequence` axis; use 'auto'")
            result = attn_op.dense_longformer_attention(
                q, proj["key"], proj["value"], attention_mask, **kwargs)
        else:
            op = (attn_op.sharded_longformer_attention if sp.shards() > 1
                  else attn_op.longformer_attention)
            result = op(q, proj["key"], proj["value"], attention_mask,
                        dilation=cfg.layer_dilations[self.layer_index], loop=impl == "loop",
                        budgets=budgets, **kwargs)
        if not output_attentions:
            return result.reshape(batch, length, hidden), None, None
        out, probs, g_probs = result
        return out.reshape(batch, length, hidden), probs, g_probs


class LongformerLayer(nn.Module):
    config: LongformerConfig
    layer_index: int

    @nn.compact
    def __call__(self, x, attention_mask, globals_, segment_ids=None, positions=None,
                 deterministic=True, output_attentions=False):
        cfg = self.config
        x = nn.with_logical_constraint(x, ("batch", "length", None))  # hidden size replicated
        a, probs, g_probs = _AttentionBlock(cfg, self.layer_index, name="attention")(
            x, attention_mask, globals_, segment_ids, positions, deterministic, output_attentions)
        h = _Intermediate(cfg, name="intermediate")(a)
        out = _Output(cfg, name="output")(h, a, deterministic)
        return out, probs, g_probs


class _AttentionBlock(nn.Module):
    config: LongformerConfig
    layer_index: int

    @nn.compact
    def __call__(self, x, attention_mask, globals_, segment_ids, positions, deterministic,
                 output_attentions):
        a, probs, g_probs = LongformerSelfAttention(self.config, self.layer_index, name="self")(
            x, attention_mask, globals_, segment_ids, positions, deterministic, output_attentions)
        out = _Output(self.config, ("heads", "embed"), "attention_out", name="output")(
            a, x, deterministic)
        return out, probs, g_probs


class _Intermediate(nn.Module):
    config: LongformerConfig

    @nn.compact
    def __call__(self, x):
        h = Dense(self.config.intermediate_size, self.config, ("embed", "mlp"), name="dense")(x)
        h = checkpoint_name(h, "ffn_in")
        return activation(self.config.hidden_act, self.config)(h)


class _Output(nn.Module):
    """dense -> dropout -> LayerNorm(residual + .), the reference's SelfOutput and Output."""
    config: LongformerConfig
    axes: tuple[str, str] = ("mlp", "embed")
    name_out: str = "ffn_out"  # its checkpoint name (remat="minimal")

    @nn.compact
    def __call__(self, h, residual, deterministic):
        cfg = self.config
        h = checkpoint_name(Dense(cfg.hidden_size, cfg, self.axes, name="dense")(h), self.name_out)
        h = nn.Dropout(cfg.hidden_dropout_prob)(h, deterministic=deterministic)
        return LayerNorm(cfg, name="LayerNorm")(h + residual.astype(h.dtype))


# ----------------------------------------------------------------------------- the encoder
def _stacked_init(layer: LongformerLayer, count: int):
    """rng, *layer inputs -> the boxed parameters of `count` layers stacked on a leading
    `layers` axis (never sharded)."""
    def init(rng, *inputs):
        def one(key):
            return layer.init({"params": key}, *inputs)["params"]
        return with_layer_axis(jax.vmap(one)(jax.random.split(rng, count)))
    return init


class LongformerEncoder(nn.Module):
    """The layers, one path per setting of `scan_layers`:
    * unrolled: one submodule and one parameter entry per layer (`layer_3/...`);
    * scanned: one stacked entry per run of layers sharing a window and a dilation
      (`layers_0_11/...`, see `layout.py`), run as a `lax.scan` so that XLA compiles one layer
      per run; layer i's dropout key is `fold_in(key, i)`. Attentions and hidden states come out
      of the scan stacked.
    """
    config: LongformerConfig

    @nn.compact
    def __call__(self, x, attention_mask, globals_, segment_ids=None, positions=None,
                 deterministic=True, output_attentions=False, output_hidden_states=False):
        cfg = self.config
        self._check_layout()
        if not cfg.scan_layers:
            return self._unrolled(x, attention_mask, globals_, segment_ids, positions,
                                  deterministic, output_attentions, output_hidden_states)
        dropout_key = None if deterministic else self.make_rng("dropout")
        hidden, attentions, global_attentions = [], [], []
        for first, count in layer_runs(cfg):
            layer = LongformerLayer(cfg, first)  # a run shares first's window and dilation

            def body(h, xs, layer=layer):
                p, index = xs
                rngs = (None if dropout_key is None
                        else {"dropout": jax.random.fold_in(dropout_key, index)})
                out, probs, g_probs = layer.apply({"params": p}, h, attention_mask, globals_,
                                                  segment_ids, positions, deterministic,
                                                  output_attentions, rngs=rngs)
                return out, (h if output_hidden_states else None, probs, g_probs)

            if cfg.remat != "none":
                body = jax.checkpoint(body, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False)
            params = self.param(run_name(first, count), _stacked_init(layer, count), x,
                                attention_mask, globals_, segment_ids, positions)
            if not cfg.on_cpu:
                # Matrices in the compute dtype (the layer casts them anyway): with bfloat16
                # compute the scan's copy and its gradient take half the memory. Not on CPU:
                # XLA:CPU slices no bfloat16 array in a loop; its float normalisation rounds the
                # whole stack and widens it back to float32 before the scan, a pass over every
                # weight per call (11% of the bfloat16 forward at 4K), where each layer's slice
                # cast in the body costs nothing.
                params = jax.tree.map(
                    lambda p: p.astype(cfg.compute_dtype) if p.ndim >= 3 else p, params)
            indices = jnp.arange(first, first + count)
            if cfg.on_cpu and not (output_attentions or output_hidden_states):
                # The hand-written VJP of the scan (`kernels.scan`: XLA:CPU widens autodiff's
                # stacked bfloat16 residuals to float32).
                x = kernels.scan(lambda h, p, i, body=body: body(h, (p, i))[0], x, params,
                                 indices)
                inputs = probs = g_probs = None
            else:
                x, (inputs, probs, g_probs) = jax.lax.scan(body, x, (params, indices))
            for j in range(count):
                if output_hidden_states:
                    hidden.append(inputs[j])
                attentions.append(None if probs is None else probs[j])
                global_attentions.append(None if g_probs is None else g_probs[j])
        if output_hidden_states:
            hidden.append(x)
        return x, tuple(hidden), tuple(attentions), tuple(global_attentions)

    def _unrolled(self, x, attention_mask, globals_, segment_ids, positions, deterministic,
                  output_attentions, output_hidden_states):
        cfg = self.config
        layer_cls = LongformerLayer
        if cfg.remat != "none":
            # Arguments count `self` as 0: deterministic and output_attentions are static.
            layer_cls = nn.remat(LongformerLayer, policy=REMAT_POLICIES[cfg.remat],
                                 static_argnums=(6, 7))
        hidden, attentions, global_attentions = [], [], []
        for i in range(cfg.num_hidden_layers):
            if output_hidden_states:
                hidden.append(x)
            x, probs, g_probs = layer_cls(cfg, i, name=f"layer_{i}")(
                x, attention_mask, globals_, segment_ids, positions, deterministic,
                output_attentions)
            attentions.append(probs)
            global_attentions.append(g_probs)
        if output_hidden_states:
            hidden.append(x)
        return x, tuple(hidden), tuple(attentions), tuple(global_attentions)

    def _check_layout(self):
        """Parameters in the other layout get an error that says how to convert them."""
        if self.is_initializing():
            return
        cfg = self.config
        own = run_name(*layer_runs(cfg)[0]) if cfg.scan_layers else "layer_0"
        if own in self.variables.get("params", {}):
            return
        if cfg.scan_layers:
            raise ValueError("this model has scan_layers=True, so it holds its layers stacked "
                             "(encoder/layers_*), but the parameters have one entry per layer: "
                             "convert them with longformer.stack_layers(params, config)")
        raise ValueError("this model has scan_layers=False, so it holds one entry per layer "
                         "(encoder/layer_*), but the parameters are stacked: convert them with "
                         "longformer.unstack_layers(params, config)")


class LongformerPooler(nn.Module):
    config: LongformerConfig

    @nn.compact
    def __call__(self, x):
        return jnp.tanh(Dense(self.config.hidden_size, self.config, ("embed", "mlp"),
                              name="dense")(x[:, 0]))


# ----------------------------------------------------------------------------- input checks
_concrete = concrete  # the input checks below


def _check_shape(name: str, x, shape: tuple[int, ...]):
    if x is not None and tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(x.shape)} but the input has shape {tuple(shape)}")


def _tables(config: LongformerConfig) -> dict[str, tuple[int, str]]:
    """The inputs that index a table: name -> (table size, the config field that sets it)."""
    tables = {"input_ids": (config.vocab_size, "vocab_size"),
              "token_type_ids": (config.type_vocab_size, "type_vocab_size")}
    if not config.rotary:
        tables["position_ids"] = (config.max_position_embeddings, "max_position_embeddings")
    return tables


def check_input_ids(config: LongformerConfig, where: str = "", **inputs) -> None:
    """Raises a ValueError naming the first id outside its embedding table.

    JAX does not check the indices of a gather (an out-of-range or negative id reads a clamped,
    wrapped or NaN row and the model runs on), so the model calls this on every input whose
    values are known, and the train and eval loops on every host batch before it is sent.
    Under `jax.jit` the values are not known: the output field `ids_out_of_range` says which
    examples had such an id. `inputs`: any of input_ids, token_type_ids, position_ids.
    """
    for name, (size, field) in _tables(config).items():
        ids = concrete(inputs.get(name))
        if ids is None or ids.size == 0:
            continue
        bad = (ids < 0) | (ids >= size)
        if bad.any():
            at = tuple(int(i) for i in np.argwhere(bad)[0])
            hint = (" (a tokenizer that does not match the model?)" if name == "input_ids"
                    else "")
            raise ValueError(
                f"{where}{name} holds {int(ids[at])} at position {at}, outside the embedding "
                f"table of {size} rows ({field}={size}: ids 0..{size - 1}){hint}")


def _ids_out_of_range(config: LongformerConfig, **inputs) -> Array:
    """(batch,) whether an example has an id outside its table: the traced form of the check."""
    batch = next(x for x in inputs.values() if x is not None).shape[0]
    flag = jnp.zeros((batch,), bool)
    for name, (size, _) in _tables(config).items():
        ids = inputs.get(name)
        if ids is not None:
            flag |= jnp.any((ids < 0) | (ids >= size), axis=tuple(range(1, ids.ndim)))
    return flag


# The reference's default global attention rules (used when no global_attention_mask is given)
# and the losses have their own modules, shared with the tokenizer and the training objectives;
# their names stay importable from here.
classification_global_mask = global_attention.classification
question_answering_global_mask = global_attention.question_answering
multiple_choice_global_mask = global_attention.multiple_choice


def _check_segments(segment_ids, global_attention_mask) -> None:
    """Segment ids are >= 0, and no global token sits in padding (when the values are known)."""
    seg = concrete(segment_ids)
    if seg is None:
        return
    if not np.issubdtype(seg.dtype, np.integer):
        raise ValueError(f"segment_ids must be integers, got {seg.dtype}")
    if seg.size and seg.min() < 0:
        at = tuple(int(i) for i in np.argwhere(seg < 0)[0])
        raise ValueError(f"segment_ids holds {int(seg[at])} at position {at}; use 0 for padding "
                         f"and 1, 2, ... for the sequences of a row")
    glob = concrete(global_attention_mask)
    if glob is not None and np.any((glob > 0) & (seg == 0)):
        at = tuple(int(i) for i in np.argwhere((glob > 0) & (seg == 0))[0])
        raise ValueError(f"global_attention_mask marks position {at} as global, but "
                         f"segment_ids is 0 (padding) there")


def _gather_rows(x, index):
    """x's rows at positions index (B, G); from the shards that hold them when the sequence is
    split over the mesh."""
    if sp.shards() == 1:
        return attn_op.gather_rows(x, index)
    return sp.over_sequence(lambda xs, i: sp.gather_rows(xs, i, sp.AXIS, varying=False),
                            (sp.along(1), sp.P()), sp.P())(x, index)


def _global_token_indices(is_global, budget: int) -> attn_op.GlobalIndices:
    if sp.shards() == 1:
        return attn_op.global_token_indices(is_global, budget)
    return sp.over_sequence(lambda m: attn_op.global_token_indices(m, budget, sp.AXIS),
                            (sp.along(1),), sp.P())(is_global)


def _count_real(real, segment_ids):
    """The reference's position count (non-pad tokens so far), over the whole document."""
    if sp.shards() == 1:
        return segments_lib.count_within(real, segment_ids)
    return sp.over_sequence(lambda r: sp.cumsum(r, sp.AXIS), (sp.along(1),), sp.along(1))(real)


def _pad_to(x, length: int, value):
    if x is None or x.shape[1] == length:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, length - x.shape[1])
    return jnp.pad(x, widths, constant_values=value)


# ----------------------------------------------------------------------------- the base model
class LongformerModel(ResolvedModule):
    """The bare encoder. `model.apply(params, input_ids, attention_mask=..., ...)`."""
    config: LongformerConfig
    add_pooling_layer: bool = True

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, global_attention_mask=None,
                 token_type_ids=None, position_ids=None, inputs_embeds=None,
                 output_attentions=False, output_hidden_states=False, deterministic=True,
                 segment_ids=None):
        """`segment_ids` (batch, length) int packs several sequences in a row: 0 is padding,
        each other value one sequence (a contiguous run); attention stays within a sequence
        (band and global tokens) and positions restart at each, so every sequence gets what it
        gets alone (`packing.py` builds such rows)."""
        cfg = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        shape = tuple(input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1])
        if len(shape) != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {shape}")
        batch, length = shape
        if length == 0 or batch == 0:
            raise ValueError(f"the input has shape {shape}: it needs at least one example of at "
                             f"least one token")
        if inputs_embeds is not None and inputs_embeds.shape[-1] != cfg.hidden_size:
            raise ValueError(f"inputs_embeds has width {inputs_embeds.shape[-1]} but the model's "
                             f"hidden_size is {cfg.hidden_size}")
        if length > cfg.max_sequence_length:
            raise ValueError(
                f"sequence length {length} is longer than the position table allows: "
                f"max_position_embeddings={cfg.max_position_embeddings} holds "
                f"{cfg.max_sequence_length} tokens (positions start at pad_token_id + 1)")
        for name, x in (("attention_mask", attention_mask),
                        ("global_attention_mask", global_attention_mask),
                        ("token_type_ids", token_type_ids), ("position_ids", position_ids),
                        ("segment_ids", segment_ids)):
            _check_shape(name, x, shape)
        check_input_ids(cfg, input_ids=input_ids, token_type_ids=token_type_ids,
                        position_ids=position_ids)

        attention_mask = (jnp.ones(shape, jnp.int32) if attention_mask is None
                          else jnp.asarray(attention_mask).astype(jnp.int32))
        global_mask = (jnp.zeros(shape, jnp.int32) if global_attention_mask is None
                       else jnp.asarray(global_attention_mask).astype(jnp.int32))
        if segment_ids is not None:
            _check_segments(segment_ids, global_attention_mask)
            segment_ids = jnp.asarray(segment_ids).astype(jnp.int32)
            attention_mask = attention_mask * (segment_ids > 0)
        token_type_ids = (jnp.zeros(shape, jnp.int32) if token_type_ids is None
                          else jnp.asarray(token_type_ids))

        # Pad to a multiple of the largest window, as the reference does; cut back at the end.
        # A document split over the mesh's `sequence` axis is padded to whole windows per shard.
        shards = sp.shards()
        if shards > 1 and segment_ids is not None:
            raise ValueError("packed rows (segment_ids) are not split over the mesh's `sequence` "
                             "axis; pack short sequences with sequence=1")
        multiple = cfg.max_window * shards
        padded = -(-length // multiple) * multiple

        def along_length(x):  # (B, N[, E]) split over `sequence` when the mesh has one
            names = ("batch", "length") + (None,) * (x.ndim - 2)
            return None if x is None else nn.with_logical_constraint(x, names)

        attention_mask = along_length(_pad_to(attention_mask, padded, 0))
        global_mask = along_length(_pad_to(global_mask, padded, 0))
        token_type_ids = along_length(_pad_to(token_type_ids, padded, 0))
        segment_ids = _pad_to(segment_ids, padded, 0)
        if input_ids is not None:
            input_ids = along_length(_pad_to(jnp.asarray(input_ids), padded, cfg.pad_token_id))
            if position_ids is None:  # the reference's: count of non-pad tokens so far
                real = (input_ids != cfg.pad_token_id).astype(jnp.int32)
                position_ids = _count_real(real, segment_ids) * real + cfg.pad_token_id
        else:
            inputs_embeds = jnp.asarray(inputs_embeds)
            # Padding is never attended to.
            inputs_embeds = along_length(_pad_to(inputs_embeds, padded, 0))
            if position_ids is None:
                ones = along_length(_pad_to(jnp.ones(shape, jnp.int32), padded, 0))
                position_ids = (_count_real(ones, segment_ids) + cfg.pad_token_id)[:, :length]
        position_ids = along_length(_pad_to(jnp.asarray(position_ids), padded, cfg.pad_token_id))

        out_of_range = _ids_out_of_range(cfg, input_ids=input_ids, token_type_ids=token_type_ids,
                                         position_ids=position_ids)
        x = LongformerEmbeddings(cfg, name="embeddings")(
            input_ids, token_type_ids, position_ids, inputs_embeds, deterministic)

        is_real = attention_mask > 0
        is_global = is_real & (global_mask > 0)
        globals_, overflow = None, jnp.zeros((batch,), bool)
        known = _concrete(is_global)
        if cfg.max_global_tokens > 0:
            globals_ = _global_token_indices(is_global, cfg.max_global_tokens)
            overflow = globals_.overflow
        if known is not None and known.sum(1).max(initial=0) > cfg.max_global_tokens:
            counts = known.sum(1)
            raise ValueError(
                f"example {int(counts.argmax())} asks for {int(counts.max())} global tokens but "
                f"the budget is max_global_tokens={cfg.max_global_tokens}; raise it in the config")

        # Rotary positions count from 0 (the table's rows start after pad_token_id).
        positions = (jnp.maximum(position_ids - cfg.pad_token_id - 1, 0) if cfg.rotary
                     else None)
        x, hidden, attentions, global_attentions = LongformerEncoder(cfg, name="encoder")(
            x, is_real, globals_, segment_ids, positions, deterministic, output_attentions,
            output_hidden_states)
        x = along_length(x[:, :length])
        pooled = LongformerPooler(cfg, name="pooler")(x) if self.add_pooling_layer else None
        return LongformerOutput(
            last_hidden_state=x,
            pooler_output=pooled,
            hidden_states=tuple(h[:, :length] for h in hidden) if output_hidden_states else None,
            attentions=(tuple(a[:, :, :length] for a in attentions)
                        if output_attentions else None),
            global_attentions=(tuple(g[:, :, :length] for g in global_attentions)
                               if output_attentions and globals_ is not None else None),
            global_overflow=overflow,
            ids_out_of_range=out_of_range,
        )

    def _word_table(self):
        return nn.meta.unbox(self.variables["params"]["embeddings"]["word_embeddings"]["embedding"])


def _head_output(base: LongformerOutput, **fields) -> LongformerHeadOutput:
    return LongformerHeadOutput(hidden_states=base.hidden_states, attentions=base.attentions,
                                global_attentions=base.global_attentions,
                                global_overflow=base.global_overflow,
                                ids_out_of_range=base.ids_out_of_range, **fields)


# ----------------------------------------------------------------------------- heads
_INPUTS = ("input_ids", "attention_mask", "global_attention_mask", "token_type_ids",
           "position_ids", "inputs_embeds", "segment_ids")


def _rows_of(inputs: dict):
    """The array whose shape is the inputs' (batch, [choices,] length)."""
    if inputs["input_ids"] is not None:
        return inputs["input_ids"]
    return None if inputs["inputs_embeds"] is None else inputs["inputs_embeds"][..., 0]


class _Head(ResolvedModule):
    """The encoder under a task head, with the reference's signature. Each head gives its layer
    on top (`top`, the output fields), its `loss` of the labels, and, where the reference has
    one, its default global attention; the encoder, its outputs and the loss-only-with-labels
    rule are the same for all."""
    config: LongformerConfig
    pooling = False  # whether the encoder's pooler belongs to the model
    slotted = False  # whether packed rows give per-sequence outputs in max_segments slots

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, global_attention_mask=None,
                 token_type_ids=None, position_ids=None, inputs_embeds=None, labels=None,
                 output_attentions=False, output_hidden_states=False, deterministic=True,
                 segment_ids=None):
        given = dict(zip(_INPUTS, (input_ids, attention_mask, global_attention_mask,
                                   token_type_ids, position_ids, inputs_embeds, segment_ids)))
        inputs = self.flatten(given)
        if self.slotted and segment_ids is not None:
            segments_lib.check_count(segment_ids, self.config.max_segments)
        if inputs["global_attention_mask"] is None:
            inputs["global_attention_mask"] = self.default_global(inputs)
        base = LongformerModel(self.config, add_pooling_layer=self.pooling, name="longformer")
        out = base(**inputs, output_attentions=output_attentions,
                   output_hidden_states=output_hidden_states, deterministic=deterministic)
        fields = self.top(base, out, given, deterministic)
        if segment_ids is not None and "segment_valid" not in fields:
            fields["segment_valid"] = None
        loss = None if labels is None else self.loss(labels, **fields)
        return _head_output(out, loss=loss, **{k: v for k, v in fields.items()
                                               if not k.startswith("_")})

    def flatten(self, inputs: dict) -> dict:
        return dict(inputs)

    def default_global(self, inputs: dict):
        return None  # the reference's default for MLM and token classification: no global token


class LongformerForMaskedLM(_Head):
    """MLM head: dense, gelu, LayerNorm, decoder tied to the word embeddings, separate bias."""

    def top(self, base, out, given, deterministic):
        return {"logits": _LMHead(self.config, name="lm_head")(out.last_hidden_state,
                                                               base._word_table())}

    def loss(self, labels, logits, segment_valid=None):
        del segment_valid  # per token
        return masked_cross_entropy(logits, labels)


class _LMHead(nn.Module):
    config: LongformerConfig

    @nn.compact
    def __call__(self, x, word_table):
        cfg = self.config
        h = Dense(cfg.hidden_size, cfg, ("embed", "mlp"), name="dense")(x)
        h = LayerNorm(cfg, name="layer_norm")(gelu(h, cfg))
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                          (cfg.vocab_size,), cfg.params_dtype)
        logits = linear(h, word_table.T, bias, cfg)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


class LongformerForSequenceClassification(_Head):
    """Classification on token 0, which is global unless a global_attention_mask is given.

    Packed rows (`segment_ids`): one prediction per sequence, from its first token (`<s>`,
    global by default), in `max_segments` slots per row: logits (batch, max_segments, labels),
    `segment_valid` (batch, max_segments) says which slots hold a sequence, and labels are
    given per slot (filler slots are not counted).
    """
    slotted = True

    def default_global(self, inputs: dict):
        if inputs["segment_ids"] is not None:
            return segments_lib.starts(jnp.asarray(inputs["segment_ids"])).astype(jnp.int32)
        return classification_global_mask(_rows_of(inputs))

    def top(self, base, out, given, deterministic):
        head = _ClassificationHead(self.config, name="classifier")
        if given["segment_ids"] is None:
            return {"logits": head(out.last_hidden_state[:, 0], deterministic)}
        where, valid, _ = segments_lib.slot_positions(jnp.asarray(given["segment_ids"]),
                                                       self.config.max_segments)
        first = attn_op.gather_rows(out.last_hidden_state, where)
        return {"logits": head(first, deterministic), "segment_valid": valid}

    def loss(self, labels, logits, segment_valid=None):
        if segment_valid is None:
            return sequence_classification_loss(self.config, logits, labels)
        return sequence_classification_loss(
            self.config, logits.reshape(-1, logits.shape[-1]),
            labels.reshape((-1,) + labels.shape[2:]), valid=segment_valid.reshape(-1))


class _ClassificationHead(nn.Module):
    """dropout, dense, tanh, dropout, out_proj (no pooler), as the reference."""
    config: LongformerConfig

    @nn.compact
    def __call__(self, x, deterministic):
        cfg = self.config
        drop = nn.Dropout(cfg.hidden_dropout_prob)
        x = drop(x, deterministic=deterministic)
        x = jnp.tanh(Dense(cfg.hidden_size, cfg, ("embed", "mlp"), name="dense")(x))
        x = drop(x, deterministic=deterministic)
        return Dense(cfg.num_labels, cfg, ("mlp", "classes"), name="out_proj")(x)


class LongformerForTokenClassification(_Head):
    """dropout + linear per token; no default global attention."""

    def top(self, base, out, given, deterministic):
        cfg = self.config
        x = nn.Dropout(cfg.hidden_dropout_prob)(out.last_hidden_state, deterministic=deterministic)
        return {"logits": Dense(cfg.num_labels, cfg, ("embed", "classes"), name="classifier")(x)}

    def loss(self, labels, logits, segment_valid=None):
        del segment_valid  # per token: packed labels are per token too
        return masked_cross_entropy(logits, labels)


class LongformerForMultipleChoice(_Head):
    """Inputs (batch, choices, length); one score per choice from the pooled token 0.

    Default global attention, per choice, is the reference's: every token after the first
    `</s></s>` pair.
    """
    pooling = True

    def flatten(self, inputs: dict) -> dict:
        if inputs["segment_ids"] is not None:
            raise ValueError("multiple choice does not take packed rows (segment_ids): its "
                             "choices are already one row each; pass them unpacked")
        rows = _rows_of(inputs)
        if rows.ndim != 3:
            raise ValueError(f"multiple choice inputs must be (batch, choices, length), "
                             f"got shape {tuple(rows.shape)}")
        count = rows.shape[0] * rows.shape[1]
        return {k: None if x is None else jnp.asarray(x).reshape((count,) + x.shape[2:])
                for k, x in inputs.items()}

    def default_global(self, inputs: dict):
        if inputs["input_ids"] is None:
            return None
        return multiple_choice_global_mask(inputs["input_ids"], self.config.sep_token_id)

    def top(self, base, out, given, deterministic):
        cfg = self.config
        x = nn.Dropout(cfg.hidden_dropout_prob)(out.pooler_output, deterministic=deterministic)
        logits = Dense(1, cfg, ("embed", "classes"), name="classifier")(x)
        return {"logits": logits.reshape(_rows_of(given).shape[:2])}

    def loss(self, labels, logits):
        return masked_cross_entropy(logits, labels)


class LongformerForCandidateScoring(_Head):
    """One score per answer candidate, from the final state of the marker token before it (the
    authors' WikiHop model: a linear layer on each `[ent]`), averaged over the chunks that hold it.

    A candidate's marker is a token like any other, so one linear layer on every token gives
    each position the score it would have as a marker; `candidate_positions` (batch, [chunks,]
    candidates), the marker's index in its row or -1, then reads those scores out
    (`candidate_logits`). Long inputs come as (batch, chunks, length), each chunk repeating the
    question and candidates (so every chunk scores every candidate); a candidate's logit is its
    mean over the chunks that hold it, so an example's chunks share one softmax, as in the paper.
    Logits are (batch, candidates), `NO_SCORE` where a candidate is filler; `labels` (batch,)
    are candidate indices (-100 ignored). Without `candidate_positions` the logits are the
    per-token scores, shaped like the inputs. The layer's bias cancels in the softmax over
    candidates (the authors' has none). No default global attention (the reference has no such
    head): give the question and candidates as global. Packed rows are refused: an example is
    already a set of rows.
    """

    def __call__(self, input_ids=None, attention_mask=None, global_attention_mask=None,
                 token_type_ids=None, position_ids=None, inputs_embeds=None,
                 candidate_positions=None, labels=None, output_attentions=False,
                 output_hidden_states=False, deterministic=True, segment_ids=None):
        out = super().__call__(input_ids, attention_mask, global_attention_mask, token_type_ids,
                               position_ids, inputs_embeds, None, output_attentions,
                               output_hidden_states, deterministic, segment_ids)
        if candidate_positions is None:
            if labels is not None:
                raise ValueError("candidate scoring needs candidate_positions to score labels")
            return out
        logits = candidate_logits(out.logits, candidate_positions)
        loss = None if labels is None else masked_cross_entropy(logits, labels)
        return out.replace(logits=logits, loss=loss)

    def flatten(self, inputs: dict) -> dict:
        if inputs["segment_ids"] is not None:
            raise ValueError("candidate scoring does not take packed rows (segment_ids): an "
                             "example is already its own (chunks, length) rows")
        rows = _rows_of(inputs)
        if rows.ndim == 2:
            return dict(inputs)
        if rows.ndim != 3:
            raise ValueError(f"candidate scoring inputs must be (batch, length) or (batch, "
                             f"chunks, length), got shape {tuple(rows.shape)}")
        count = rows.shape[0] * rows.shape[1]
        return {k: None if x is None else jnp.asarray(x).reshape((count,) + x.shape[2:])
                for k, x in inputs.items()}

    def top(self, base, out, given, deterministic):
        scores = Dense(1, self.config, ("embed", "classes"), name="answer_score")(
            out.last_hidden_state)
        return {"logits": scores[..., 0].reshape(_rows_of(given).shape)}


def candidate_logits(token_scores, candidate_positions):
    """(batch, [chunks,] length) token scores and (batch, [chunks,] candidates) marker positions
    (-1: not in that chunk) -> (batch, candidates) float32: each candidate's mean score over the
    chunks that hold it, `NO_SCORE` for a candidate no chunk holds (filler)."""
    scores = jnp.asarray(token_scores).astype(jnp.float32)
    positions = jnp.asarray(candidate_positions)
    if positions.ndim != scores.ndim:
        raise ValueError(f"candidate_positions {tuple(positions.shape)} and the inputs "
                         f"{tuple(scores.shape)} must both be with or both without chunks")
    known = concrete(positions)
    if known is not None and known.size and known.max() >= scores.shape[-1]:
        raise ValueError(f"candidate_positions holds {int(known.max())}, past the inputs' "
                         f"{scores.shape[-1]} tokens")
    if positions.ndim == 2:  # one chunk per example
        scores, positions = scores[:, None], positions[:, None]
    held = positions >= 0  # (batch, chunks, candidates)
    picked = jnp.take_along_axis(scores, jnp.maximum(positions, 0), axis=-1)
    total = jnp.sum(jnp.where(held, picked, 0.0), axis=1)
    count = jnp.sum(held, axis=1)
    return jnp.where(count > 0, total / jnp.maximum(count, 1), NO_SCORE)


class LongformerForQuestionAnswering(_Head):
    """Start/end logits; default global attention on `<s>` and the question (before `</s>`).
    The labels are the reference's `start_positions` and `end_positions` (both or neither)."""
    slotted = True

    def __call__(self, input_ids=None, attention_mask=None, global_attention_mask=None,
                 token_type_ids=None, position_ids=None, inputs_embeds=None,
                 start_positions=None, end_positions=None, output_attentions=False,
                 output_hidden_states=False, deterministic=True, segment_ids=None):
        """Packed rows (`segment_ids`): logits stay per token; start/end positions are given
        per sequence slot ((batch, max_segments), positions in the row), and each slot's
        softmax runs over its own sequence's tokens only, so a span never crosses sequences."""
        both = start_positions is not None and end_positions is not None
        return super().__call__(input_ids, attention_mask, global_attention_mask,
                                token_type_ids, position_ids, inputs_embeds,
                                (start_positions, end_positions) if both else None,
                                output_attentions, output_hidden_states, deterministic,
                                segment_ids)

    def default_global(self, inputs: dict):
        if inputs["input_ids"] is None:
            return None
        return question_answering_global_mask(inputs["input_ids"], self.config.sep_token_id,
                                              segment_ids=inputs["segment_ids"])

    def top(self, base, out, given, deterministic):
        cfg = self.config
        logits = Dense(cfg.num_labels, cfg, ("embed", "classes"), name="qa_outputs")(
            out.last_hidden_state)
        fields = {"start_logits": logits[..., 0], "end_logits": logits[..., 1]}
        seg = given["segment_ids"]
        if seg is not None:
            seg = jnp.asarray(seg).astype(jnp.int32)
            where, valid, _ = segments_lib.slot_positions(seg, cfg.max_segments)
            fields["segment_valid"] = valid
            fields["_slot_mask"] = seg[:, None, :] == attn_op.gather_rows(seg, where)[..., None]
        return fields

    def loss(self, labels, start_logits, end_logits, segment_valid=None, _slot_mask=None):
        if segment_valid is None:
            return question_answering_loss(start_logits, end_logits, *labels)
        # One softmax per slot over its own sequence's tokens; filler slots point past the row
        # (the reference's ignored index).
        length = start_logits.shape[-1]

        def per_slot(logits):
            return jnp.where(_slot_mask, logits[:, None, :].astype(jnp.float32),
                             -1e30).reshape(-1, length)

        positions = [jnp.where(segment_valid, p, length).reshape(-1) for p in labels]
        return question_answering_loss(per_slot(start_logits), per_slot(end_logits), *positions)


# ----------------------------------------------------------------------------- HotpotQA
@flax.struct.dataclass
class HotpotQAOutput(LongformerHeadOutput):
    """`LongformerForHotpotQA`'s outputs: the span logits (batch, length), `type_logits`
    (batch, 3) in `HOTPOTQA_ANSWER_TYPES` order, and one supporting-fact logit per sentence and
    per paragraph slot (batch, slots). Padding tokens and empty slots hold `NO_SCORE`."""
    type_logits: Optional[Array] = None
    sentence_logits: Optional[Array] = None
    paragraph_logits: Optional[Array] = None


HOTPOTQA_ANSWER_TYPES = ("span", "yes", "no")


def hotpotqa_global_mask(input_ids, sep_token_id: int, sentence_positions, paragraph_positions):
    """The paper's global tokens for HotpotQA: `<s>`, the question and its `</s>` (every position
    up to the first separator), and the paragraph and sentence markers at the given positions
    (-1: an empty slot). numpy arrays in give numpy out (the task's rows), jax arrays jax."""
    xp = jnp if isinstance(input_ids, jax.Array) else np
    ids = xp.asarray(input_ids)
    batch, length = ids.shape
    first = xp.argmax(ids == sep_token_id, axis=-1)  # (batch,)
    question = xp.arange(length)[None, :] <= first[:, None]  # (batch, length)
    marks = xp.concatenate([xp.asarray(sentence_positions), xp.asarray(paragraph_positions)], -1)
    rows = xp.broadcast_to(xp.arange(batch)[:, None], marks.shape)
    if xp is np:
        hit = np.zeros((batch, length), bool)
        hit[rows[marks >= 0], marks[marks >= 0]] = True
    else:
        hit = jnp.zeros((batch, length), bool).at[rows, jnp.where(marks >= 0, marks, length)].set(
            True, mode="drop")
    return (question | hit).astype(xp.int32)


class LongformerForHotpotQA(ResolvedModule):
    """The paper's HotpotQA reader: an answer span (BERT's start/end logits over the tokens), the
    answer type (span / yes / no) from `<s>`, and a supporting score for every sentence and
    paragraph, read at their marker tokens (`sentence_positions`, `paragraph_positions`:
    (batch, slots) int, -1 for empty slots; not given: one empty slot). The type and marker heads are two-layer
    feed-forward networks (RoBERTa's classification head, as the paper's "2 layer feedforward
    networks"). With all five labels the loss is `losses.hotpotqa_losses`' mean over examples.

    It is not a `_Head`: those see only the encoder's inputs, and this one also reads the
    marker positions. Default global attention: `hotpotqa_global_mask`. Packed rows are
    refused (the slots hold one example's sentences).
    """
    config: LongformerConfig

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, global_attention_mask=None,
                 token_type_ids=None, position_ids=None, inputs_embeds=None,
                 sentence_positions=None, paragraph_positions=None, start_positions=None,
                 end_positions=None, answer_type=None, sentence_labels=None,
                 paragraph_labels=None, output_attentions=False, output_hidden_states=False,
                 deterministic=True, segment_ids=None):
        cfg = self.config
        if segment_ids is not None:
            raise ValueError("HotpotQA does not take packed rows (segment_ids): each row's "
                             "sentence and paragraph slots belong to one example")
        batch = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        empty = jnp.full((batch, 1), -1, jnp.int32)  # no markers given: one empty slot
        sentences = empty if sentence_positions is None else jnp.asarray(
            sentence_positions).astype(jnp.int32)  # (batch, S)
        paragraphs = empty if paragraph_positions is None else jnp.asarray(
            paragraph_positions).astype(jnp.int32)  # (batch, P)
        if global_attention_mask is None and input_ids is not None:
            global_attention_mask = hotpotqa_global_mask(jnp.asarray(input_ids),
                                                         cfg.sep_token_id, sentences, paragraphs)
        out = LongformerModel(cfg, add_pooling_layer=False, name="longformer")(
            input_ids, attention_mask, global_attention_mask, token_type_ids, position_ids,
            inputs_embeds, output_attentions, output_hidden_states, deterministic)
        x = out.last_hidden_state  # (batch, length, hidden)
        real = (jnp.ones(x.shape[:2], bool) if attention_mask is None
                else jnp.asarray(attention_mask) > 0)
        span = Dense(2, cfg, ("embed", "classes"), name="qa_outputs")(x).astype(jnp.float32)
        start, end = (jnp.where(real, span[..., i], NO_SCORE) for i in (0, 1))

        def at_markers(positions, name):  # (batch, slots) one logit per marker
            rows = attn_op.gather_rows(x, jnp.maximum(positions, 0))
            score = _ClassificationHead(cfg.replace(num_labels=1), name=name)(rows, deterministic)
            return jnp.where(positions >= 0, score[..., 0].astype(jnp.float32), NO_SCORE)

        fields = dict(
            start_logits=start, end_logits=end,
            type_logits=_ClassificationHead(cfg.replace(num_labels=len(HOTPOTQA_ANSWER_TYPES)),
                                            name="answer_type")(x[:, 0], deterministic
                                                                ).astype(jnp.float32),
            sentence_logits=at_markers(sentences, "sentence_outputs"),
            paragraph_logits=at_markers(paragraphs, "paragraph_outputs"))
        labels = (start_positions, end_positions, answer_type, sentence_labels, paragraph_labels)
        if any(v is not None for v in labels) and any(v is None for v in labels):
            raise ValueError("give all of start_positions, end_positions, answer_type, "
                             "sentence_labels and paragraph_labels, or none")
        loss = None
        if labels[0] is not None:
            loss = jnp.mean(hotpotqa_losses(**fields, start_positions=start_positions,
                                            end_positions=end_positions, answer_type=answer_type,
                                            sentence_labels=sentence_labels,
                                            paragraph_labels=paragraph_labels))
        return HotpotQAOutput(loss=loss, hidden_states=out.hidden_states,
                              attentions=out.attentions, global_attentions=out.global_attentions,
                              global_overflow=out.global_overflow,
                              ids_out_of_range=out.ids_out_of_range, **fields)


MODEL_CLASSES = {
    "LongformerModel": LongformerModel,
    "LongformerForMaskedLM": LongformerForMaskedLM,
    "LongformerForSequenceClassification": LongformerForSequenceClassification,
    "LongformerForTokenClassification": LongformerForTokenClassification,
    "LongformerForMultipleChoice": LongformerForMultipleChoice,
    "LongformerForQuestionAnswering": LongformerForQuestionAnswering,
}
