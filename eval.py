"""Scores a checkpoint: `python eval.py --checkpoint=runs/classify [--config=configs/classify.py]`.

`--checkpoint` is a train.py workdir (the latest step, or `--step`), one of its
`checkpoints/<step>` folders, or a transformers folder. Without `--config` the run's own saved
config is used. Writes `eval_step_<step>.json` (the metrics) and `predictions_step_<step>.jsonl`
into `--output_dir` (default: the workdir). MLM checkpoints report loss, perplexity, accuracy and
bits per token/character. Fine-tuning eval rows run in length buckets (longformer/bucketing.py;
the same predictions, metrics up to float rounding); `--nobucketing` runs them as training does.
"""

import logging

from absl import app, flags
from ml_collections import config_flags

from longformer import evaluation

_CONFIG = config_flags.DEFINE_config_file("config", None, "Task config file (default: the "
                                          "run's saved config.json).", lock_config=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "train.py workdir, a checkpoints/<step> "
                                  "folder, or a transformers folder.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where to write the metrics and "
                                  "predictions (default: the workdir).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_BUCKETING = flags.DEFINE_boolean("bucketing", None, "Evaluate in length buckets: rows of "
                                  "similar length batched together, cut to a few lengths (same "
                                  "predictions, faster on mixed lengths; default: the config's "
                                  "data.eval_bucketing, else on).")
flags.mark_flags_as_required(["checkpoint"])


def main(argv):
    del argv
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("longformer").setLevel(logging.INFO)
    config = _CONFIG.value or evaluation.load_run_config(_CHECKPOINT.value)
    result = evaluation.evaluate_checkpoint(config, _CHECKPOINT.value,
                                            output_dir=_OUTPUT_DIR.value, step=_STEP.value,
                                            bucketed=_BUCKETING.value)
    print(result["metrics_file"])


if __name__ == "__main__":
    app.run(main)
