"""MLM pretraining of Longformer-base: the paper's recipe.

Continued from RoBERTa-base (converted on the fly: positions copied to 4096, global projections
copied from the local ones), sequence 4096, window 512 in every layer (total window, the Hugging
Face convention: 256 keys each side), batch 64 sequences = 2^18 tokens, AdamW at peak 3e-5 with
500 linear warm-up steps then power-3 polynomial decay over 65K steps.

    python train.py --config=configs/mlm_base.py --workdir=runs/mlm_base \
        --config.init_from=/path/to/roberta-base --config.data.train_files='corpus/*.jsonl'

Documents are concatenated across row boundaries as in the paper, which continues RoBERTa's
pretraining and so keeps RoBERTa's FULL-SENTENCES packing (`data.separate_documents=False`).
`--config.data.separate_documents=True` adds segment ids so that no token attends into another
document (same rows, same masks; see longformer/data.py); nothing measured here says it is
better, so it is not the default.

Without `init_from` the model starts from random weights. Any field can be overridden, e.g.
`--config.optimizer.learning_rate=1e-4 --config.model.attention_window=256`.
"""

import ml_collections

from configs import common
from longformer import data


def get_config():
    # init_from: a RoBERTa folder (converted the authors' way), a Longformer one, or a train.py
    # workdir; its shapes must be config.model's.
    c = common.run("mlm")

    # type_safe=False: attention_window may be an int or a per-layer tuple.
    c.model = ml_collections.ConfigDict(type_safe=False, initial_dictionary=dict(
        vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, hidden_act="gelu", hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1, max_position_embeddings=4098, type_vocab_size=1,
        initializer_range=0.02, layer_norm_eps=1e-5,
        # One total window per layer; `--config.model.attention_window=256` sets every layer.
        attention_window=(512,) * 12,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, sep_token_id=2,
        dtype="float32", param_dtype="float32", max_global_tokens=0, remat="minimal",
        attention_block_size=0, scan_layers=True,
        attention_impl="auto", platform="auto"))  # the layout and kernels: picked by the devices

    c.data = data.default_data_config()
    c.data.seq_len = 4096

    # 64 sequences = 2^18 tokens a step, 2 sequences per micro-batch as in the authors' notebook.
    return common.trainer(c, batch_size=64, grad_accum_steps=32, total_steps=65_000,
                          learning_rate=3e-5, warmup_steps=500, power=3.0, grad_clip_norm=5.0,
                          log_every=10, eval_every=1000)
