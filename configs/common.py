"""What the config files share; not a config itself (train.py takes the files that import it).

Every run has the same head fields (`run`) and the same trainer block (`trainer`: batch, steps,
optimizer, schedule, mesh, checkpoints, logging, multi-host), which `train_lib` reads for every
task; writing them once keeps a new option of the loop, and its default, the same in every
config. The files give only their recipe's numbers. `finetune` is the whole base of the four
fine-tuning configs: a demo-size model and the synthetic data their docstrings describe.
"""

from typing import Sequence

import ml_collections


def run(task: str, *, init_from: str = "", tokenizer: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = task
    c.seed = 0
    c.init_from = init_from  # where the weights start; '' starts from random weights
    c.tokenizer = tokenizer  # tokenizer folder; '' uses the workdir's, init_from's, or trains one
    return c


def trainer(c: ml_collections.ConfigDict, *, batch_size: int, total_steps: int,
            learning_rate: float, warmup_steps: int, grad_clip_norm: float,
            log_every: int, eval_every: int, grad_accum_steps: int = 1, power: float = 1.0,
            b2: float = 0.98, eps: float = 1e-6, checkpoint_every: int = 1000, keep: int = 3
            ) -> ml_collections.ConfigDict:
    """Adds the trainer block to `c` (AdamW, warm-up then polynomial decay to 0)."""
    c.batch_size = batch_size  # global, in sequences; split into grad_accum_steps micro-batches
    c.grad_accum_steps = grad_accum_steps
    c.total_steps = total_steps
    c.stop_after_steps = 0  # stop (with a checkpoint) after this step; 0 runs to total_steps
    c.optimizer = ml_collections.ConfigDict(dict(
        learning_rate=learning_rate, b1=0.9, b2=b2, eps=eps, weight_decay=0.01,
        grad_clip_norm=grad_clip_norm))
    c.schedule = ml_collections.ConfigDict(dict(warmup_steps=warmup_steps, power=power,
                                                end_learning_rate=0.0))
    # data x fsdp x sequence x tensor; one -1 fills the remaining devices. `sequence` splits
    # each document over devices (halo exchange); three entries read as data x fsdp x tensor.
    c.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1, 1)))
    # allow_data_change: resume although the data files differ from the checkpoint's (warns).
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=checkpoint_every, keep=keep,
                                                  async_save=True, allow_data_change=False))
    c.logging = ml_collections.ConfigDict(dict(every_steps=log_every, eval_every_steps=eval_every,
                                               eval_batches=0))  # 0: the whole eval set
    # Multi-host: jax.distributed.initialize(); empty fields are auto-detected on TPU/SLURM.
    c.distributed = ml_collections.ConfigDict(dict(
        enabled=False, coordinator_address="", num_processes=0, process_id=-1))
    return c


def finetune(task: str, *, seq_len: int, windows: Sequence[int]) -> ml_collections.ConfigDict:
    """A fine-tuning config with a demo-size model for the synthetic data."""
    c = run(task)  # init_from: a transformers folder or a train.py workdir (its architecture)
    c.global_attention = "default"  # 'default' (the reference's rule for the head) | 'none' | ...
    c.model = ml_collections.ConfigDict(type_safe=False, initial_dictionary=dict(
        vocab_size=1024, hidden_size=128, num_hidden_layers=len(windows), num_attention_heads=4,
        intermediate_size=256, hidden_act="gelu", hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1, max_position_embeddings=seq_len + 2, type_vocab_size=1,
        initializer_range=0.02, layer_norm_eps=1e-5, attention_window=tuple(windows),
        pad_token_id=1, bos_token_id=0, eos_token_id=2, sep_token_id=2,
        dtype="float32", param_dtype="float32", max_global_tokens=1, max_segments=16, remat="none",
        attention_block_size=0, attention_impl="auto", platform="auto"))
    c.data = ml_collections.ConfigDict(dict(
        train_file="",  # comma-separated globs; '' generates the synthetic task
        eval_file="",
        # '' = by extension (.parquet/.arrow via pyarrow, else the task's JSON reader) | 'imdb'
        # (aclImdb folders) | 'hyperpartisan' (SemEval-2019 XML and ground truth); readers.py
        format="",
        # task_field=dataset_field renames, e.g. "text=review,label=sentiment" ('' = as named)
        fields="",
        seq_len=seq_len,  # tokens per model input, <s> and separators included
        # Pack several examples per row of seq_len (no compute on padding, no attention across
        # examples): at most model.max_segments examples and model.max_global_tokens global
        # tokens (the budget of the whole row: raise it) per row; batch_size then counts rows.
        # Losses and metrics are the unpacked ones. Not for multiple choice.
        packing=False,
        # eval.py only: eval rows batched by length and cut to window * 2^k (bucketing.py);
        # the same predictions, metrics up to float rounding. The training loop never buckets.
        eval_bucketing=True,
        worker_threads=1,
        prefetch_batches=4,
        synthetic=ml_collections.ConfigDict(dict(num_train=2000, num_eval=256, num_words=200)),
    ))
    # For a pretrained checkpoint use the usual fine-tuning rate, e.g. learning_rate=3e-5.
    return trainer(c, batch_size=16, total_steps=400, learning_rate=1e-3, warmup_steps=40,
                   grad_clip_norm=1.0, keep=2, log_every=25, eval_every=200)
