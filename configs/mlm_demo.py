"""A small Longformer that visibly learns MLM on a laptop CPU in a few minutes.

Trains a byte-level BPE vocabulary and the model on the embedded default corpus (Python's own
documentation, on disk in every installation) unless files are given:

    python train.py --config=configs/mlm_demo.py --workdir=runs/demo
"""

from configs import mlm_base


def get_config():
    c = mlm_base.get_config()
    c.model.update(vocab_size=4096, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                   intermediate_size=512, max_position_embeddings=514,
                   attention_window=(32, 32, 64, 64), hidden_dropout_prob=0.0,
                   attention_probs_dropout_prob=0.0, max_global_tokens=0)
    c.data.seq_len = 256
    c.batch_size = 16
    c.grad_accum_steps = 1
    c.total_steps = 600
    c.optimizer.learning_rate = 1e-3
    c.optimizer.weight_decay = 0.01
    c.optimizer.grad_clip_norm = 1.0
    c.schedule.warmup_steps = 50
    c.schedule.power = 1.0
    c.checkpoint.every_steps = 200
    c.logging.every_steps = 25
    c.logging.eval_every_steps = 200
    c.logging.eval_batches = 8
    return c
