"""What the generic train loop needs from an objective, and nothing more."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn

from longformer.config import LongformerConfig
from longformer.modeling import check_input_ids

Params = Any
Batch = dict  # name -> array, leading dimension the batch


@dataclasses.dataclass
class Task:
    """One training objective.

    Attributes:
      model: the flax module (`model.apply(params, ...)`).
      train_data: a checkpointable grain iterator of this host's batches (dicts of numpy arrays
        with the leading dimension `batch_size // process_count`); `get_state`/`set_state`.
      eval_data: re-iterable (each `iter()` is one identical, finite pass) or None.
      batch_spec: name -> (shape, dtype) of one GLOBAL batch, to compile the step ahead of time.
      weight_fn: batch -> scalar, how many units the loss averages over (labelled tokens,
        examples); computed on the whole batch before it is split into micro-batches.
      loss_fn: (params, batch, rng) -> (loss_sum, aux) in training mode; aux is a dict of scalar
        sums (e.g. correct predictions) that the loop adds up and divides by the weight.
      eval_fn: (params, batch) -> a pytree of arrays (sums or per-example predictions); pure.
      summarize: list of host eval outputs (one per batch, numpy) -> metrics dict.
      identity: what a resumed checkpoint must match (model config, sequence length, ...).
      initial_params: () -> host parameters to start from (init_from), or None for random
        init; called only when there is no checkpoint to resume.
      tokenizer: the tokenizer the data was made with (saved with exports).
      predict: list of host eval outputs -> one JSON-serialisable record per eval example (the
        predictions eval.py writes), or None when the objective has none (MLM).
    """

    model: nn.Module
    train_data: Any
    eval_data: Optional[Any]
    batch_spec: dict[str, tuple[tuple[int, ...], Any]]
    weight_fn: Callable[[Batch], Any]
    loss_fn: Callable[[Params, Batch, Any], tuple[Any, dict]]
    eval_fn: Callable[[Params, Batch], Any]
    summarize: Callable[[list], dict[str, float]]
    identity: dict
    initial_params: Callable[[], Optional[Params]] = lambda: None
    tokenizer: Any = None
    predict: Optional[Callable[[list], list[dict]]] = None
    info: dict = dataclasses.field(default_factory=dict)  # sizes for the start-up log line
    data_files: tuple = ()  # the files the data is read from (a resume checks they are the same)

    def check_batch(self, batch: Batch, where: str = "") -> None:
        """Refuses a host batch whose ids fall outside the model's tables (JAX would not: an
        out-of-range gather reads a clamped or NaN row and training runs on)."""
        config = getattr(self.model, "config", None)
        if isinstance(config, LongformerConfig):
            check_input_ids(config, where, **{k: batch[k] for k in
                                              ("input_ids", "token_type_ids", "position_ids")
                                              if k in batch})
