"""WikiHop (QAngaroo v1.1): candidate scoring over chunks of the supports (`tasks/wikihop.py`).

With no files it trains a demo-size model on a synthetic task in WikiHop's own format: 2 to 6
colour candidates, four supporting documents of 75 filler words, every candidate mentioned
somewhere in them and the answer the one that follows `code`; the supports take two 256-token
chunks, so the scores of both are averaged. It runs the whole path on a CPU, but a model
trained from scratch stays near chance on it (3,000 steps tried): it has to match each
candidate against its mentions through global attention, with one scoring vector shared by all
candidates, which a pretrained model is expected to bring (not tried here); the same model learns
a positional answer (always the first candidate) in 50 steps:

    python train.py --config=configs/wikihop.py --workdir=runs/wikihop_demo
    python eval.py --config=configs/wikihop.py --checkpoint=runs/wikihop_demo

The paper (Table 7, dev): Longformer-base 75.0 accuracy (RoBERTa-base 72.4). Its recipe
(appendix and Table 14; the authors' scripts/wikihop.py has the same defaults): Adam(W), lr
3e-5, linear warm-up over 200 updates then linear decay, batch 32 questions (gradient
accumulation over single questions), 15 epochs (43,738 train questions: 20,502 updates), dev
accuracy checked every 250 updates and the best one reported; weight decay 0.01 and dropout 0.1
as RoBERTa; the script's AdamW beta2 0.98. Not stated, so our choices: gradient clipping at 1.0
(the script has none) and eps 1e-6 (RoBERTa's). The authors ran one question per step with all
of its context; here an example is `data.max_chunks` rows of 4096 (the log line says how many
questions needed more: raise it), with gradient accumulation over single questions:

    python train.py --config=configs/wikihop.py --workdir=runs/wikihop \
        --config.init_from=/path/to/longformer-base-4096 \
        --config.data.train_file=qangaroo_v1.1/wikihop/train.json \
        --config.data.eval_file=qangaroo_v1.1/wikihop/dev.json \
        --config.data.seq_len=4096 --config.data.max_chunks=2 \
        --config.model.max_global_tokens=512 \
        --config.batch_size=32 --config.grad_accum_steps=32 --config.total_steps=20502 \
        --config.optimizer.learning_rate=3e-5 --config.schedule.warmup_steps=200 \
        --config.logging.eval_every_steps=250 --config.checkpoint.every_steps=250

`model.max_global_tokens` must hold the longest `<s> query </s> <mask> candidate ...` prefix
(up to 79 candidates; the start-up check names the largest the data needs if 512 is short).
"""

from configs import common


def get_config():
    c = common.finetune("wikihop", seq_len=256, windows=(32, 32, 64))
    c.total_steps = 600
    c.optimizer.learning_rate = 2e-3
    c.data.max_candidates = 0  # candidate slots per example; 0: the most any record has
    c.data.max_chunks = 2  # rows per example: the supports beyond are left out (logged)
    c.model.max_global_tokens = 48  # the query and candidates: the longest prefix
    c.data.synthetic.update(num_words=300, num_candidates=6, num_supports=4)
    c.batch_size = 8
    return c
