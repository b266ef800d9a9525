"""HotpotQA, distractor setting: answer span / yes / no and supporting sentences, one stage
(`longformer/tasks/hotpotqa.py` has the layout, markers, truncation and decoding).

With no files it trains a demo-size model on a synthetic task in HotpotQA's own JSON format:
ten paragraphs titled by made-up names; in two of them the evidence, "the secret colour is
<colour> ." and "the secret is kept|lost by <name> ."; questions "what is the secret colour ?"
(span) or "is the secret kept ?" (yes / no), with the two evidence sentences as supporting facts
(`hotpotqa.synthetic_records`):

    python train.py --config=configs/hotpotqa.py --workdir=runs/hotpotqa
    python eval.py --config=configs/hotpotqa.py --checkpoint=runs/hotpotqa

On the real data, from `longformer-base-4096` on local disk (the paper's Longformer-base, Table
7: 64.4 joint F1 on dev with its two-stage model; one stage is about 4.2 lower by the paper's
footnote 15, so about 60 is what this one stage should reach):

    python train.py --config=configs/hotpotqa.py --workdir=runs/hotpotqa \\
        --config.init_from=/path/to/longformer-base-4096 \\
        --config.data.train_file=hotpot_train_v1.1.json \\
        --config.data.eval_file=hotpot_dev_distractor_v1.json \\
        --config.data.seq_len=4096 --config.data.max_question_tokens=64 \\
        --config.data.max_sentences=160 --config.model.max_global_tokens=240 \\
        --config.batch_size=32 --config.total_steps=14135 \\
        --config.schedule.warmup_steps=1000 --config.optimizer.learning_rate=3e-5
    python eval.py --config=configs/hotpotqa.py --checkpoint=runs/hotpotqa ...same data flags
    python -m longformer.tasks.hotpotqa runs/hotpotqa/predictions_step_14135.jsonl pred.json

The paper's hyper-parameters (Appendix D, Table 14): Adam, linear warm-up over 1000 steps then
linear decay, batch 32, 5 epochs (90,447 training questions / 32 = 2,827 steps an epoch: 14,135
steps), learning rate 3e-5 (the text's best; Table 14 lists 5e-5), other settings RoBERTa's
(here: weight decay 0.01, betas (0.9, 0.98), eps 1e-6, dropout 0.1). Where the paper is silent we
chose: the four losses (span, answer type, sentences, paragraphs) weighted equally; the question
cut to 64 tokens; 160 sentence slots and a global budget of 240 (1 + 64 + 1 + 10 paragraph
markers + up to 160 sentence markers would be 236: a question with more sentences than fit the
budget is refused at start-up with the numbers); gradient clipping at 1.0.
"""

from configs import common


def get_config():
    c = common.finetune("hotpotqa", seq_len=256, windows=(32, 32, 32))
    c.total_steps = 600
    c.optimizer.learning_rate = 2e-3
    c.data.max_question_tokens = 16
    c.data.max_sentences = 0  # sentence slots per question; 0: the most any question has
    c.data.max_answer_tokens = 30  # longest span considered at evaluation
    c.model.max_global_tokens = 48  # <s> + question + </s> + paragraph and sentence markers
    c.data.synthetic.update(num_words=4, num_paragraphs=10, num_sentences=1)
    return c
