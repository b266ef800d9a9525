"""Sequence classification: single-label, multi-label or regression, on JSON lines.

With no files it trains a demo-size model on a synthetic task (the label is the colour after
`code`, in the second half of a 200-word document, with the same colours elsewhere as
distractors), learning it in a few CPU minutes:

    python train.py --config=configs/classify.py --workdir=runs/classify
    python eval.py --config=configs/classify.py --checkpoint=runs/classify

On real data (`{"text": ..., "label": ...}` per line), from a pretrained checkpoint (a
transformers folder or a train.py workdir; its architecture is used, the head is new):

    python train.py --config=configs/classify.py --workdir=runs/imdb \
        --config.init_from=/path/to/longformer-base-4096 \
        --config.data.train_file=train.jsonl --config.data.eval_file=dev.jsonl \
        --config.data.seq_len=4096 \
        --config.optimizer.learning_rate=3e-5 --config.total_steps=5000

`--config.data.problem=multi_label` (label: a list of names) or `regression` (label: a number);
`--config.data.labels=neg,pos` fixes the label set (default: the train file's labels, sorted).
Global attention: `<s>` (the reference's default; `--config.global_attention=none` turns it off).
"""

from configs import common


def get_config():
    c = common.finetune("classification", seq_len=256, windows=(32, 32, 64))
    c.total_steps = 500
    c.data.problem = "single_label"  # | 'multi_label' | 'regression'
    c.data.labels = ""  # comma-separated label set; '' = every label of the train file
    c.data.synthetic.update(num_labels=4, distractors=3)  # colours elsewhere, not after `code`
    c.model.max_global_tokens = 1  # <s>
    return c
