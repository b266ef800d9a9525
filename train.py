"""Trains Longformer: `python train.py --config=configs/mlm_demo.py --workdir=runs/demo`.

Any config field can be overridden, e.g. `--config.optimizer.learning_rate=1e-4`. Rerunning the
same command resumes from the latest checkpoint in the workdir.
"""

import logging

from absl import app, flags
from ml_collections import config_flags

from longformer import train_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                            lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax's per-save chatter
    logging.getLogger("longformer").setLevel(logging.INFO)
    config = _CONFIG.value
    workdir = _WORKDIR.value or f"runs/{config.task}"
    train_lib.train_and_evaluate(config, workdir)


if __name__ == "__main__":
    app.run(main)
