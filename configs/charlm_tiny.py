"""A tiny causal, dilated char LM for tests: seconds on one CPU core, on the default corpus.

    python train.py --config=configs/charlm_tiny.py --workdir=/tmp/charlm_tiny
    python -m longformer.generate --config=configs/charlm_tiny.py --checkpoint=/tmp/charlm_tiny \
        --prompt="The " --length=100
"""

from configs import charlm_text8


def get_config():
    c = charlm_text8.get_config("1", dataset="tiny")
    c.init_from = ""
    c.model.update(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=64, attention_window=(8, 16),
                   attention_dilation=(1, (2, 2, 1, 1)), hidden_dropout_prob=0.0,
                   attention_probs_dropout_prob=0.0, remat="none")
    c.data.seq_len = 64
    c.data.eval_stride = 32
    c.data.max_eval_bytes = 4096
    c.data.worker_threads = 1
    c.data.prefetch_batches = 2
    c.batch_size = 8
    c.grad_accum_steps = 1
    c.total_steps = 200
    c.optimizer.learning_rate = 5e-3
    c.optimizer.grad_clip_norm = 1.0
    c.schedule.warmup_steps = 5
    c.schedule.power = 1.0
    c.checkpoint.every_steps = 100
    c.checkpoint.keep = 3
    c.logging.every_steps = 20
    c.logging.eval_every_steps = 100
    c.logging.eval_batches = 0
    return c
