"""MLM pretraining of Longformer-large (24 layers, hidden 1024, 16 heads), the paper's recipe.

    python train.py --config=configs/mlm_large.py --workdir=runs/mlm_large \
        --config.init_from=/path/to/roberta-large --config.data.train_files='corpus/*.jsonl'
"""

from configs import mlm_base


def get_config():
    c = mlm_base.get_config()
    c.model.update(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                   attention_window=(512,) * 24,
                   intermediate_size=4096, remat="full")
    return c
