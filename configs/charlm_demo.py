"""A small causal, dilated char LM that visibly learns on a laptop CPU in a few minutes.

Trains on the embedded default corpus (Python's documentation as UTF-8 bytes) unless a file is
given with --config.data.path, then samples from it:

    python train.py --config=configs/charlm_demo.py --workdir=runs/charlm_demo
    python -m longformer.generate --config=configs/charlm_demo.py --checkpoint=runs/charlm_demo \
        --prompt="The default " --length=200 --temperature=0.7
"""

from configs import charlm_text8


def get_config():
    c = charlm_text8.get_config("1", dataset="demo")
    c.init_from = ""
    c.model.update(hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                   intermediate_size=512, attention_window=(16, 32, 64, 128),
                   attention_dilation=(1, 1, (2, 2, 1, 1), (3, 3, 1, 1)),
                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, remat="none")
    c.data.seq_len = 256
    c.data.eval_stride = 128
    c.batch_size = 16
    c.grad_accum_steps = 1
    c.total_steps = 1500
    c.optimizer.learning_rate = 2e-3
    c.optimizer.grad_clip_norm = 1.0
    c.schedule.warmup_steps = 100
    c.checkpoint.every_steps = 500
    c.logging.every_steps = 50
    c.logging.eval_every_steps = 500
    return c
