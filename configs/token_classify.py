"""Token classification (tagging) on JSON lines `{"tokens": [...], "tags": [...]}` (BIO tags).

With no files it trains a demo-size model on a synthetic NER task: names are declared as
`<name> is a person|place|company .` and mentioned again up to 12 words later; a mention's
type is only known from its declaration, which the top layer's 32-token band reaches:

    python train.py --config=configs/token_classify.py --workdir=runs/ner
    python eval.py --config=configs/token_classify.py --checkpoint=runs/ner

Each word's tag goes on its first sub-token. Documents longer than `data.seq_len` tokens are
split into windows overlapping by `data.window_overlap`; each word is predicted from the window
where it has the most context. No global attention by default (the reference's);
`--config.global_attention=cls` adds `<s>`.

    python train.py --config=configs/token_classify.py --workdir=runs/conll \
        --config.init_from=/path/to/longformer-base-4096 \
        --config.data.train_file=train.jsonl --config.data.eval_file=dev.jsonl \
        --config.data.seq_len=4096 \
        --config.optimizer.learning_rate=3e-5
"""

from configs import common


def get_config():
    # Narrow bands learn the look-back sooner (w=32/64 bands: F1 0.50 after 500 steps).
    c = common.finetune("token_classification", seq_len=256, windows=(16, 16, 32))
    c.total_steps = 600
    c.data.labels = ""  # comma-separated tag set; '' = every tag of the train file, O first
    c.data.window_overlap = 64  # tokens shared by consecutive windows of a long document
    c.data.synthetic.update(num_words=300, max_distance=12, entities_per_paragraph=2)
    c.model.max_global_tokens = 1  # room for global_attention='cls'
    return c
