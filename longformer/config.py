"""The model configuration: Hugging Face's field names and meaning, plus what JAX needs static.

`attention_window` follows the Hugging Face convention: the TOTAL window w (even, > 0), so a token
sees w/2 keys on each side. It is an int or one entry per layer; any even sizes work together.
The JAX-only fields (dtypes, the static global-token budget, remat, block size, dilation,
causal, the attention layout and the platform) are never written to `config.json`.

Dilation and causal windows (JAX only; the reference has neither):
* `attention_dilation` d: a token sees every d-th token, so the same number of keys covers d
    times the span. An int (every layer and head), one entry per layer, and an entry may be one
    int per head (the paper's char LM dilates only 2 heads of its upper layers).
* `causal=True`: a token sees only itself and the w previous tokens (w = its layer's
    `attention_window`, dilated: i, i-d, ..., i-w*d). The key count, w + 1, and so the cost, are
    those of the two-sided window; it is the one-sided window of the paper's autoregressive
    models. Global attention cannot be causal (a global token sees every position and every
    position sees it), so `causal=True` requires `max_global_tokens=0`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Sequence

import jax.numpy as jnp

from longformer.files import FileFormatError, read_json

# Hugging Face config.json keys that we read and write (everything else is ignored on load).
HF_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
    "type_vocab_size", "initializer_range", "layer_norm_eps", "attention_window", "pad_token_id",
    "bos_token_id", "eos_token_id", "sep_token_id", "num_labels", "problem_type",
)

# How the band runs: 'loop' (query blocks one after another, scores kept in cache, a hand-written
# VJP: XLA:CPU's layout), 'batched' (every block at once, backward by recomputation: GPUs and
# TPUs), 'dense' (an O(N^2) masked baseline for benchmarks); 'auto' picks by `platform`.
ATTENTION_IMPLS = ("auto", "loop", "batched", "dense")
# The platform the model is built for: 'cpu' turns on what exists only for XLA:CPU (the block
# loop, the hand-written VJPs of `kernels.py`, float32 global-row matmuls); 'auto' resolves it
# from the devices the computation runs on (`LongformerConfig.resolve`).
PLATFORMS = ("auto", "cpu", "gpu", "tpu")
_PLATFORM_ALIASES = {"cuda": "gpu", "rocm": "gpu"}
CONFIG_JSON = "a transformers Longformer config.json"
REMAT_POLICIES = ("none", "minimal", "full", "dots", "dots_no_batch")
POSITION_TYPES = ("absolute", "rotary")
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish", "tanh")


@dataclasses.dataclass(frozen=True)
class LongformerConfig:
    """Hugging Face `LongformerConfig` fields and defaults, plus static JAX options."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    attention_window: int | tuple[int, ...] = 512
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    sep_token_id: int = 2
    num_labels: int = 2
    # 'regression' | 'single_label_classification' | 'multi_label_classification'
    problem_type: str | None = None

    # --- JAX only ---
    dtype: str = "float32"  # compute dtype of matmuls; softmax, LayerNorm statistics: float32
    param_dtype: str = "float32"
    max_global_tokens: int = 64  # static per-example budget of global tokens; 0: no global path
    # The global path of a call runs with the smallest of the budgets max_global_tokens,
    # max_global_tokens / ratio, / ratio^2, ..., 1 that holds its batch's global tokens (chosen on
    # the device: one compiled branch per budget); 1 runs every call with the whole budget.
    global_budget_ratio: int = 8
    max_segments: int = 16  # static per-row slots of packed heads' outputs (segment_ids)
    remat: str = "none"  # rematerialisation per layer: none | minimal | full | dots | dots_no_batch
    attention_block_size: int = 0  # query block of the banded op; 0 picks one from the window
    scan_layers: bool = False  # lax.scan over runs of layers sharing a window (compile time)
    attention_impl: str = "auto"  # auto | loop | batched | dense (see ATTENTION_IMPLS)
    platform: str = "auto"  # auto | cpu | gpu | tpu (see PLATFORMS and `resolve`)
    attention_dilation: Any = 1  # int | one per layer | per layer one per head (see the docstring)
    causal: bool = False  # one-sided windows (autoregressive); needs max_global_tokens=0
    # 'absolute': the reference's learned position table (its checkpoints need it); 'rotary':
    # RoPE on every query and key (local and global), no table, so no limit on the length.
    position_embedding_type: str = "absolute"

    def __post_init__(self):
        if self.attention_impl == "banded":  # the name before the band had two layouts
            object.__setattr__(self, "attention_impl", "auto")
        window = self.attention_window
        if isinstance(window, (list, tuple)):
            object.__setattr__(self, "attention_window", tuple(int(w) for w in window))
        dilation = self.attention_dilation
        if isinstance(dilation, (list, tuple)):  # hashable and comparable, whatever the source
            object.__setattr__(self, "attention_dilation", tuple(
                tuple(d) if isinstance(d, (list, tuple)) else d for d in dilation))
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        def fail(msg):
            raise ValueError(f"LongformerConfig: {msg}")

        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                fail(f"{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            fail(f"hidden_size ({self.hidden_size}) is not a multiple of num_attention_heads "
                      f"({self.num_attention_heads})")
        window = self.attention_window
        if isinstance(window, tuple):
            if len(window) != self.num_hidden_layers:
                fail(f"attention_window has {len(window)} entries but num_hidden_layers is "
                          f"{self.num_hidden_layers}; give one window per layer or a single int")
        for i, w in enumerate(self.layer_windows):
            if not isinstance(w, int) or w <= 0 or w % 2:
                fail(f"attention_window for layer {i} must be an even positive int (the total "
                     f"window, w/2 on each side), got {w!r}")
        if self.pad_token_id >= self.max_position_embeddings - 1:
            fail(f"pad_token_id ({self.pad_token_id}) leaves no rows in a position table of "
                      f"{self.max_position_embeddings}")
        if self.hidden_act not in ACTIVATIONS:
            fail(f"hidden_act {self.hidden_act!r} is not one of {ACTIVATIONS}")
        if self.remat not in REMAT_POLICIES:
            fail(f"remat {self.remat!r} is not one of {REMAT_POLICIES}")
        if self.max_global_tokens < 0:
            fail(f"max_global_tokens must be >= 0, got {self.max_global_tokens}")
        if self.global_budget_ratio < 1:
            fail(f"global_budget_ratio must be >= 1 (1: always the whole budget), got "
                 f"{self.global_budget_ratio}")
        if not isinstance(self.max_segments, int) or self.max_segments < 1:
            fail(f"max_segments must be a positive int, got {self.max_segments!r}")
        if self.attention_impl not in ATTENTION_IMPLS:
            fail(f"attention_impl {self.attention_impl!r} is not one of {ATTENTION_IMPLS}")
        if self.platform not in PLATFORMS + tuple(_PLATFORM_ALIASES):
            fail(f"platform {self.platform!r} is not one of {PLATFORMS}")
        if self.position_embedding_type not in POSITION_TYPES:
            fail(f"position_embedding_type {self.position_embedding_type!r} is not one of "
                 f"{POSITION_TYPES}")
        if self.attention_block_size < 0:
            fail(f"attention_block_size must be >= 0, got {self.attention_block_size}")
        self._validate_dilation_and_causal(fail)
        for name in ("dtype", "param_dtype"):
            try:
                jnp.dtype(getattr(self, name))
            except TypeError:
                fail(f"{name} {getattr(self, name)!r} is not a dtype")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                fail(f"{name} must be in [0, 1), got {getattr(self, name)}")

    def _validate_dilation_and_causal(self, fail) -> None:
        dilation, heads = self.attention_dilation, self.num_attention_heads
        layers = dilation if isinstance(dilation, tuple) else (dilation,) * self.num_hidden_layers
        if len(layers) != self.num_hidden_layers:
            fail(f"attention_dilation has {len(layers)} entries but num_hidden_layers is "
                 f"{self.num_hidden_layers}; give an int, one entry per layer, or per layer one "
                 f"int per head")
        for i, entry in enumerate(layers):
            values = entry if isinstance(entry, tuple) else (entry,)
            if isinstance(entry, tuple) and len(entry) != heads:
                fail(f"attention_dilation for layer {i} has {len(entry)} values; give an int or "
                     f"one per head ({heads})")
            if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in values):
                fail(f"attention_dilation for layer {i} must be positive ints, got {entry!r}")
        if not isinstance(self.causal, bool):
            fail(f"causal must be a bool, got {self.causal!r}")
        if self.causal and self.max_global_tokens > 0:
            fail(f"causal=True cannot use global attention (max_global_tokens="
                 f"{self.max_global_tokens}): a global token sees every position and is seen by "
                 f"every position, which leaks the future; set max_global_tokens=0")
        dilated = any(d != 1 for ds in self.layer_dilations for d in ds)
        if self.attention_impl == "dense" and dilated:
            fail("attention_impl='dense' (the benchmark baseline) has no dilation; use 'auto'")

    # ------------------------------------------------------------------ derived
    @property
    def layer_windows(self) -> tuple[int, ...]:
        """The total window of every layer."""
        w = self.attention_window
        return tuple(w) if isinstance(w, tuple) else (w,) * self.num_hidden_layers

    @property
    def layer_dilations(self) -> tuple[tuple[int, ...], ...]:
        """The dilation of every head of every layer."""
        d = self.attention_dilation
        layers = d if isinstance(d, tuple) else (d,) * self.num_hidden_layers
        return tuple(e if isinstance(e, tuple) else (e,) * self.num_attention_heads
                     for e in layers)

    @property
    def layer_extents(self) -> tuple[tuple[int, int], ...]:
        """(left, right) one-sided extents per layer: (w/2, w/2), or (w, 0) when causal."""
        return tuple((w, 0) if self.causal else (w // 2, w // 2) for w in self.layer_windows)

    @property
    def max_window(self) -> int:
        return max(self.layer_windows)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def max_sequence_length(self) -> int:
        """Longest input the position table allows (RoBERTa positions start at pad_token_id + 1);
        rotary positions have no table and no limit."""
        if self.rotary:
            return sys.maxsize
        return self.max_position_embeddings - self.pad_token_id - 1

    @property
    def rotary(self) -> bool:
        return self.position_embedding_type == "rotary"

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def params_dtype(self):
        return jnp.dtype(self.param_dtype)

    @property
    def band_impl(self) -> str:
        """The attention layout that runs: `attention_impl`, or for 'auto' the platform's."""
        if self.attention_impl != "auto":
            return self.attention_impl
        return "loop" if self.resolve().platform == "cpu" else "batched"

    @property
    def on_cpu(self) -> bool:
        """Built for XLA:CPU: the code that exists only for it runs (and nowhere else)."""
        return self.resolve().platform == "cpu"

    def resolve(self, where: Any = None) -> "LongformerConfig":
        """This config with `platform` resolved: a platform name, a `jax.sharding.Mesh` (its
        devices' platform) or None (JAX's default devices); an explicit platform is kept.

        The top-level models resolve their config when they are built, so what a traced
        function runs is fixed before tracing: to export or compile ahead of time for another
        platform, build the model with `platform='gpu'` / `'tpu'` (or `resolve('tpu')`).
        """
        platform = self.platform
        if platform == "auto":
            if where is None:
                import jax
                platform = jax.devices()[0].platform
            elif isinstance(where, str):
                platform = where
            else:  # a mesh
                platform = where.devices.flat[0].platform
        platform = _PLATFORM_ALIASES.get(platform, platform)
        if platform not in PLATFORMS[1:]:
            raise ValueError(f"LongformerConfig: platform {platform!r} is not one of "
                             f"{PLATFORMS[1:]}")
        return self if platform == self.platform else dataclasses.replace(self, platform=platform)

    def replace(self, **changes) -> "LongformerConfig":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ Hugging Face config.json
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], **overrides) -> "LongformerConfig":
        """Reads a transformers `config.json` dict (unknown keys are ignored)."""
        kwargs = {k: d[k] for k in HF_FIELDS if k in d and d[k] is not None}
        if "num_labels" not in d and "id2label" in d:
            kwargs["num_labels"] = len(d["id2label"])
        if isinstance(kwargs.get("eos_token_id"), list):
            kwargs["eos_token_id"] = kwargs["eos_token_id"][0]
        if d.get("problem_type") is None:
            kwargs.pop("problem_type", None)
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf_dict(self, architectures: Sequence[str] | None = None) -> dict[str, Any]:
        if self.rotary:
            raise ValueError("a model with rotary positions has no position table: the "
                             "transformers Longformer cannot read it (keep its checkpoints in "
                             "this project's format)")
        d: dict[str, Any] = {k: getattr(self, k) for k in HF_FIELDS if k != "num_labels"}
        windows = self.layer_windows
        d["attention_window"] = list(windows)
        d["model_type"] = "longformer"
        d["id2label"] = {str(i): f"LABEL_{i}" for i in range(self.num_labels)}
        d["label2id"] = {f"LABEL_{i}": i for i in range(self.num_labels)}
        d["tie_word_embeddings"] = True
        if architectures:
            d["architectures"] = list(architectures)
        return d

    @classmethod
    def from_json_file(cls, file: str | os.PathLike, loaded: dict[str, Any] | None = None,
                       **overrides) -> "LongformerConfig":
        """`from_hf_dict` of a config.json (`loaded`: its dict, when the caller has read it), so
        a corrupt file or a bad value in it is reported against the file, not as a bare error."""
        file = os.fspath(file)
        d = read_json(file, CONFIG_JSON) if loaded is None else loaded
        try:
            return cls.from_hf_dict(d, **overrides)
        except (TypeError, ValueError) as e:
            if overrides:  # the caller's override may be what is wrong, not the file
                try:
                    cls.from_hf_dict(d)
                except (TypeError, ValueError):
                    pass
                else:
                    raise
            raise FileFormatError(f"{file}: {e}; expected {CONFIG_JSON}") from e

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides) -> "LongformerConfig":
        """From a folder's config.json, or that file itself."""
        path = os.fspath(path)
        file = os.path.join(path, "config.json") if os.path.isdir(path) else path
        return cls.from_json_file(file, **overrides)

    def save_pretrained(self, path: str | os.PathLike, architectures=None) -> None:
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(self.to_hf_dict(architectures), f, indent=2, sort_keys=True)
