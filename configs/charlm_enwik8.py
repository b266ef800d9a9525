"""The paper's small character LM on enwik8 (Appendix B): the text8 recipe on enwik8's bytes.

    python train.py --config=configs/charlm_enwik8.py:1 --workdir=runs/charlm_enwik8_p1 \
        --config.data.path=/data/enwik8

Phases 1-5 as in configs/charlm_text8.py (`:2` starts from runs/charlm_enwik8_p1, ...). enwik8 is
100M bytes of Wikipedia XML (UTF-8, so bits per character are bits per byte, as usual for it),
split 90M / 5M / 5M. The final sliding evaluation:

    python eval.py --config=configs/charlm_enwik8.py:5 --checkpoint=runs/charlm_enwik8_p5 \
        --config.data.path=/data/enwik8 --config.data.eval_split=test \
        --config.data.eval_seq_len=32256 --config.data.eval_stride=512 \
        --config.data.eval_batch_size=1
"""

from configs import charlm_text8


def get_config(phase: str = "1"):
    return charlm_text8.get_config(phase, dataset="enwik8")
