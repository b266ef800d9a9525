"""Extractive question answering on SQuAD-format JSON (also JSON lines, TriviaQA-style).

With no files it trains a demo-size model on a synthetic task: a 400-word context names one
colour, number, animal and city (one or two words each) at random places and the question asks
for one of them ("which animal ?"). The context is longer than one 256-token input, so
it is split into overlapping windows, and its tokens see the question only through global
attention:

    python train.py --config=configs/qa.py --workdir=runs/qa
    python eval.py --config=configs/qa.py --checkpoint=runs/qa

Global attention: `<s>` and the question (the reference's default): questions keep their first
`data.max_question_tokens` tokens and `model.max_global_tokens` must be one more.

    python train.py --config=configs/qa.py --workdir=runs/triviaqa \
        --config.init_from=/path/to/longformer-base-4096 \
        --config.data.train_file=train.json --config.data.eval_file=dev.json \
        --config.data.seq_len=4096 \
        --config.data.max_question_tokens=63 --config.model.max_global_tokens=64 \
        --config.data.window_overlap=256 --config.optimizer.learning_rate=3e-5
"""

from configs import common


def get_config():
    # Narrow bands: a context token finds the question among its band's keys and the global
    # columns, and learns to look there sooner when the band is small (w=32/64: ~2x slower).
    c = common.finetune("qa", seq_len=256, windows=(16, 16, 32))
    c.total_steps = 600
    c.optimizer.learning_rate = 2e-3
    c.data.max_question_tokens = 15  # <s> + question are global: max_global_tokens = this + 1
    c.data.window_overlap = 64  # context tokens shared by consecutive windows
    c.data.max_answer_tokens = 30  # longest answer considered at evaluation
    c.model.max_global_tokens = 16
    c.data.synthetic.update(num_words=400, num_categories=4)
    return c
