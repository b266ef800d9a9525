"""MLM on documents of a million tokens: one document split over the devices of a mesh.

The sequence is split over the mesh's `sequence` axis (halo exchange: each device holds
1,048,576 / devices positions and receives only the 256 rows of keys on each side that its
band needs from its neighbours; see README.md, "Sequence parallelism"). Positions are rotary
(`position_embedding_type='rotary'`): a learned table of a million rows is not a design, and
rotary positions need none, so the model has no length limit. It starts from random weights
(a transformers checkpoint has a learned table, which this model does not read).

On one host of 8 GPUs (or a TPU slice), every device on the `sequence` axis:

    python train.py --config=configs/mlm_long.py --workdir=runs/mlm_long \
        --config.data.train_files='books/*.jsonl' --config.tokenizer=/path/to/roberta-base

`--config.mesh.shape='(2,1,4,1)'` splits each document over 4 devices and runs 2 documents at
once. What the paper does not cover, chosen here: base size, window 512 in every layer,
bfloat16 compute with float32 master weights, `remat='full'` (a layer's activations at 131,072
positions per device are what limits memory), 1,000 warm-up steps to a peak of 2e-4, 20K steps
of one document each. Documents shorter than a row are concatenated as in mlm_base.py.
"""

from configs import mlm_base


def get_config():
    c = mlm_base.get_config()
    c.model.update(position_embedding_type="rotary", max_position_embeddings=514,
                   dtype="bfloat16", remat="full", attention_window=(512,) * 12)
    c.data.seq_len = 1 << 20
    c.batch_size, c.grad_accum_steps = 1, 1
    c.total_steps = 20_000
    c.optimizer.learning_rate = 2e-4
    c.schedule.warmup_steps = 1000
    c.schedule.power = 1.0
    c.mesh.shape = (1, 1, -1, 1)
    c.logging.eval_every_steps = 1000
    c.logging.eval_batches = 1
    return c
