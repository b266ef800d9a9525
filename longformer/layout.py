"""The two parameter layouts of the encoder, and the conversions between them (boundaries only).

A model with `scan_layers=False` holds one entry per layer (`encoder/layer_3/...`, the layout of
Hugging Face checkpoints); with `scan_layers=True` it holds one stacked entry per run of layers
sharing a window (`encoder/layers_0_11/...`, leading axis = layer), which its `lax.scan` reads in
place. Each model has exactly one layout, from `init` through training to its checkpoints; these
conversions run only where parameters cross into or out of another layout: the Hugging Face
import and export, RoBERTa conversion, and `init_from` a run with the other setting.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from longformer.config import LongformerConfig


def layer_runs(config: LongformerConfig) -> list[tuple[int, int]]:
    """(first layer, count) of each run of consecutive layers sharing a window and a dilation:
    the layers one `lax.scan` covers (a layer reads both from its index)."""
    kinds = tuple(zip(config.layer_windows, config.layer_dilations))
    runs = []
    for i, kind in enumerate(kinds):
        if runs and kinds[runs[-1][0]] == kind:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


def run_name(first: int, count: int) -> str:
    """The parameter name of a stacked run of layers."""
    return f"layers_{first}_{first + count - 1}"


def _is_box(x) -> bool:
    return isinstance(x, nn.LogicallyPartitioned)


def with_layer_axis(tree):
    """Boxed leaves' logical names gain the leading `layers` axis of a stack (never sharded)."""
    return jax.tree.map(lambda b: b.replace(names=("layers",) + tuple(b.names)) if _is_box(b)
                        else b, tree, is_leaf=_is_box)


def _stack_leaves(*leaves):
    if _is_box(leaves[0]):
        return with_layer_axis(leaves[0].replace(value=jnp.stack([b.value for b in leaves])))
    return jnp.stack(leaves)


def _take_leaf(x, i: int):
    if _is_box(x):
        return x.replace(value=x.value[i], names=tuple(x.names)[1:])
    return x[i]


def _map_encoders(tree, fn):
    """fn applied to every `encoder` dict in a nested dict of parameters (plain or boxed)."""
    if not isinstance(tree, (dict, flax.core.FrozenDict)):
        return tree
    return {k: fn(v) if k == "encoder" else _map_encoders(v, fn) for k, v in tree.items()}


def stack_layers(params: Any, config: LongformerConfig) -> Any:
    """Per-layer parameters -> the stacked layout of a `scan_layers` model (a tree already
    stacked comes back as it is). `unstack_layers` inverts it exactly."""
    def fn(enc):
        if "layer_0" not in enc:
            return dict(enc)
        out = {k: v for k, v in enc.items() if not k.startswith("layer_")}
        for first, count in layer_runs(config):
            out[run_name(first, count)] = jax.tree.map(
                _stack_leaves, *[enc[f"layer_{i}"] for i in range(first, first + count)],
                is_leaf=_is_box)
        return out
    return _map_encoders(params, fn)


def unstack_layers(params: Any, config: LongformerConfig) -> Any:
    """Stacked parameters -> one entry per layer (a tree already per layer comes back as it is)."""
    def fn(enc):
        if run_name(*layer_runs(config)[0]) not in enc:
            return dict(enc)
        out = {k: v for k, v in enc.items() if not k.startswith("layers_")}
        for first, count in layer_runs(config):
            run = enc[run_name(first, count)]
            for j in range(count):
                out[f"layer_{first + j}"] = jax.tree.map(lambda x: _take_leaf(x, j), run,
                                                         is_leaf=_is_box)
        return out
    return _map_encoders(params, fn)


def to_model_layout(params: Any, config: LongformerConfig) -> Any:
    """Parameters in either layout -> the layout of a model with `config`."""
    return stack_layers(params, config) if config.scan_layers else unstack_layers(params, config)
