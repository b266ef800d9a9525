"""The paper's small character LM on text8 (Appendix B), one config per training phase.

    python train.py --config=configs/charlm_text8.py:1 --workdir=runs/charlm_text8_p1 \
        --config.data.path=/data/text8

All five phases, each starting from the previous phase's parameters:

    for p in 1 2 3 4 5; do python train.py --config=configs/charlm_text8.py:$p \
        --workdir=runs/charlm_text8_p$p --config.data.path=/data/text8 || break; done

The phase is the argument after ':' (default 1). Phase p > 1 reads its starting parameters from
`init_from`, by default `runs/charlm_text8_p{p-1}` (override with --config.init_from=...). The
paper's final number, a sliding evaluation with 32,256-byte windows advanced by 512 and scored on
their last 512 bytes, on the test split:

    python eval.py --config=configs/charlm_text8.py:5 --checkpoint=runs/charlm_text8_p5 \
        --config.data.path=/data/text8 --config.data.eval_split=test \
        --config.data.eval_seq_len=32256 --config.data.eval_stride=512 \
        --config.data.eval_batch_size=1

Model (the paper's small one): 12 layers, hidden 512, 8 heads, MLP 2048, pre-LayerNorm, GELU,
byte vocabulary, causal windows growing from the bottom layer to the top (32 to 8,192 in phase
1, doubled every phase), dilation on 2 heads of the upper 6 layers, no global attention, attention
and softmax in float32. Phases: sequence 2,048 -> 4,096 -> 8,192 -> 16,384 -> 23,040 and the peak
learning rate halved every phase, as the paper describes. Windows are one-sided (causal: w
previous bytes); a window longer than the phase's sequence is cut to it (it already sees all).

Our choices where the paper gives no number (documented, change freely): the windows between
the end points (geometric ramp), the dilation values (2, 2, 3, 3, 4, 4 on heads 0-1 of layers
6-11), the positions (rotary, see longformer/charlm.py), steps per phase (430K then 50K),
batch 32 sequences with gradient accumulation that keeps a micro-batch near 32K bytes, warm-up
10% of a phase (at most 10K steps) then linear decay, AdamW (weight decay 0.01), gradient clip
0.25, dropout 0.1.
"""

import ml_collections

from configs import common
from longformer import charlm
from longformer.tasks import charlm as charlm_task

SEQ_LENS = (2048, 4096, 8192, 16384, 23040)
STEPS = (430_000, 50_000, 50_000, 50_000, 50_000)
PEAK_LR = 2.5e-4
LAYERS, HEADS = 12, 8


def phase_windows(phase: int, seq_len: int) -> tuple[int, ...]:
    """32 -> 8,192 from bottom to top in phase 1, doubled every phase, cut to the sequence."""
    first = charlm.geometric_windows(32, 8192, LAYERS)
    return tuple(min(w * 2 ** (phase - 1), seq_len) for w in first)


def dilations() -> tuple:
    """Undilated lower half; heads 0 and 1 of the upper half dilated 2, 2, 3, 3, 4, 4."""
    lower = [1] * (LAYERS // 2)
    upper = [(d, d) + (1,) * (HEADS - 2) for d in (2, 2, 3, 3, 4, 4)]
    return tuple(lower + upper)


def micro_batch(seq_len: int, budget: int = 32768) -> int:
    """Sequences per micro-batch: the largest power of two holding at most `budget` bytes."""
    micro = 1
    while micro * 2 * seq_len <= budget and micro < 32:
        micro *= 2
    return micro


def get_config(phase: str = "1", dataset: str = "text8"):
    p = int(phase or 1)
    if not 1 <= p <= len(SEQ_LENS):
        raise ValueError(f"phase must be 1..{len(SEQ_LENS)}, got {phase!r}")
    seq_len = SEQ_LENS[p - 1]
    # init_from: the workdir of the previous phase, whose parameters this phase starts from.
    # No vocabulary files: the model reads raw bytes (ids 0-255).
    c = common.run("charlm", init_from="" if p == 1 else f"runs/charlm_{dataset}_p{p - 1}",
                   tokenizer="bytes")

    # type_safe=False: windows and dilations are per-layer tuples (an int also works).
    c.model = ml_collections.ConfigDict(type_safe=False, initial_dictionary=dict(
        vocab_size=charlm.VOCAB_SIZE, hidden_size=512, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, intermediate_size=2048, hidden_act="gelu",
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, initializer_range=0.02,
        layer_norm_eps=1e-5, attention_window=phase_windows(p, seq_len),
        attention_dilation=dilations(), causal=True, max_global_tokens=0,
        dtype="float32", param_dtype="float32", remat="none" if p <= 2 else "full",
        attention_block_size=0, attention_impl="auto", platform="auto"))

    c.data = charlm_task.default_data_config()
    c.data.seq_len = seq_len

    batch = 32
    return common.trainer(
        c, batch_size=batch, grad_accum_steps=batch // micro_batch(seq_len),
        total_steps=STEPS[p - 1], learning_rate=PEAK_LR / 2 ** (p - 1), b2=0.999, eps=1e-8,
        grad_clip_norm=0.25, warmup_steps=min(10_000, STEPS[p - 1] // 10),
        checkpoint_every=5000, log_every=100, eval_every=10_000)
