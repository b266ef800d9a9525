"""WikiHop (QAngaroo v1.1): candidate scoring over chunks of the supports (`tasks/wikihop.py`).

With no files it trains a demo-size model on a synthetic task in WikiHop's own format: 2 to 4
colour candidates, four supporting documents of 8 filler words, the answer the one candidate
they mention (after `code`); the supports take two 48-token chunks, so the scores of both are
averaged. The marker has to learn to read its own candidate (the next token) and then look for
that colour among the supports; rotary positions (the demo's choice: a relative offset is what
it must learn) and no dropout. Measured on 2026-12-02 (AMD EPYC, 2 cores shared with other
jobs): eval accuracy at chance (0.37) up to step 1,200, then 0.62 at step 1,600, 0.63 at 2,000
and 0.62 at 2,400 (chance 0.37; eval loss 0.59 against 1.05), 9 minutes of training.
With every other candidate mentioned too (`data.synthetic.mention_others=True`: the marker must
also check the word before each mention, two hops) the model stayed at chance in every short
run tried (3 layers, absolute or rotary positions, 48 to 256-token chunks, 400 to 3,000 steps).
The demo:

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
        --config.model.hidden_dropout_prob=0.1 --config.model.attention_probs_dropout_prob=0.1 \
        --config.logging.eval_every_steps=250 --config.checkpoint.every_steps=250

`model.max_global_tokens` must hold the longest `<s> query </s> <mask> candidate ...` prefix
(up to 79 candidates; the start-up check names the largest the data needs if 512 is short).
"""

from configs import common


def get_config():
    c = common.finetune("wikihop", seq_len=48, windows=(16, 16, 16, 16))
    # The demo's model (a pretrained one brings its own positions and layers; its dropout is
    # set in the command above).
    c.model.update(position_embedding_type="rotary", hidden_dropout_prob=0.0,
                   attention_probs_dropout_prob=0.0)
    c.total_steps = 2400
    c.schedule.warmup_steps = 200
    c.logging.eval_every_steps = 400
    c.data.max_candidates = 0  # candidate slots per example; 0: the most any record has
    c.data.max_chunks = 2  # rows per example: the supports beyond are left out (logged)
    c.model.max_global_tokens = 48  # the query and candidates: the longest prefix
    c.data.synthetic.update(num_train=8000, num_words=32, num_candidates=4, num_supports=4,
                            mention_others=False)
    return c
