"""longformer-jax: Longformer (Beltagy, Peters, Cohan, 2020) in JAX/Flax."""

from longformer.config import LongformerConfig
from longformer.layout import stack_layers, unstack_layers
from longformer.modeling import (
    LongformerForCandidateScoring,
    LongformerForHotpotQA,
    LongformerForMaskedLM,
    LongformerForMultipleChoice,
    LongformerForQuestionAnswering,
    LongformerForSequenceClassification,
    LongformerForTokenClassification,
    LongformerHeadOutput,
    LongformerModel,
    LongformerOutput,
)

__all__ = [
    "LongformerConfig",
    "LongformerModel",
    "LongformerForMaskedLM",
    "LongformerForSequenceClassification",
    "LongformerForTokenClassification",
    "LongformerForMultipleChoice",
    "LongformerForQuestionAnswering",
    "LongformerForCandidateScoring",
    "LongformerForHotpotQA",
    "LongformerOutput",
    "LongformerHeadOutput",
    "stack_layers",
    "unstack_layers",
]

from longformer.hf_checkpoint import load_hf_checkpoint, save_hf_checkpoint  # noqa: E402
from longformer.tokenizer import LongformerTokenizer, LongformerTokenizerFast  # noqa: E402

__all__ += ["load_hf_checkpoint", "save_hf_checkpoint", "LongformerTokenizer",
            "LongformerTokenizerFast"]
