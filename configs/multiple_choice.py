"""Multiple choice on JSON lines `{"question", "context", "choices": [...], "label"}` (or
`"contexts": [...]`, one per choice, instead of the shared `context`).

With no files it trains a demo-size model on a synthetic task: "which colour follows code ?",
four colours, each with its own 200-word document (the `contexts` form); only the right one's
document has `code <colour>`, in its second half, and every document mentions its colour
elsewhere:

    python train.py --config=configs/multiple_choice.py --workdir=runs/mc
    python eval.py --config=configs/multiple_choice.py --checkpoint=runs/mc

Layout and global attention: `<s> context </s></s> question choice </s>`, context first, so the
reference's default rule for this head (every token after `</s></s>` is global) makes the
question, the choice and the final `</s>` global: a budget of `data.max_choice_tokens + 1`
however long the context. `--config.global_attention=question|cls|none` overrides it.

    python train.py --config=configs/multiple_choice.py --workdir=runs/wikihop \
        --config.init_from=/path/to/longformer-base-4096 \
        --config.data.train_file=train.jsonl --config.data.eval_file=dev.jsonl \
        --config.data.seq_len=4096 \
        --config.data.max_choice_tokens=64 --config.model.max_global_tokens=65 \
        --config.optimizer.learning_rate=3e-5
"""

from configs import common


def get_config():
    c = common.finetune("multiple_choice", seq_len=256, windows=(32, 32, 64))
    c.data.num_choices = 0  # 0: the most choices any example has
    c.data.max_choice_tokens = 15  # question + choice tokens kept (their last ones)
    c.model.max_global_tokens = 16  # max_choice_tokens + 1 for the final </s>
    c.data.synthetic.update(num_choices=4)
    c.batch_size = 8
    return c
