"""A tiny MLM config for tests: seconds per run on one CPU core.

    python train.py --config=configs/mlm_tiny.py --workdir=/tmp/tiny
"""

from configs import mlm_base


def get_config():
    c = mlm_base.get_config()
    c.model.update(vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=64, max_position_embeddings=130, attention_window=(8, 16),
                   hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    c.data.seq_len = 64
    c.data.max_documents = 200
    c.data.worker_threads = 1
    c.data.prefetch_batches = 2
    c.batch_size = 8
    c.grad_accum_steps = 2
    c.total_steps = 20
    c.optimizer.learning_rate = 1e-3
    c.schedule.warmup_steps = 5
    c.checkpoint.every_steps = 5
    c.checkpoint.keep = 10
    c.logging.every_steps = 5
    c.logging.eval_every_steps = 10
    c.logging.eval_batches = 2
    return c
