"""Samples a continuation from a trained char LM:

    python -m longformer.generate --config=configs/charlm_text8.py:1 \
        --checkpoint=runs/charlm_text8_p1 --prompt="the history of" --length=200 --temperature=0.8

`--checkpoint` is the training workdir (its latest checkpoint; `--step` picks another). Without
`--config` the run's own saved `config.json` is used; a config given must describe the same
model (the same file and overrides as training). The prompt and its continuation are printed.
"""

from __future__ import annotations

import logging
import os
import sys

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from longformer import charlm
from longformer.files import FileFormatError, read_json
from longformer.tasks import charlm as charlm_task

_CONFIG = config_flags.DEFINE_config_file("config", None, "The char LM's training config "
                                          "(default: the run's saved config.json).",
                                          lock_config=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Training workdir holding checkpoints/.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_PROMPT = flags.DEFINE_string("prompt", "", "Text to continue (UTF-8).")
_LENGTH = flags.DEFINE_integer("length", 200, "Bytes to generate.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Softmax temperature; 0 is greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k likeliest bytes (0: all).")
_CONTEXT = flags.DEFINE_integer("context", 0, "Bytes of context per step (0: data.seq_len).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.mark_flags_as_required(["checkpoint"])


def run_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a char LM run saved: the model to rebuild must be the one it trained."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise app.UsageError(f"no config.json in {workdir}; pass --config")
    what = "the config.json a charlm train.py run saved in its workdir"
    saved = read_json(path, what)
    if saved.get("task") != "charlm":
        raise FileFormatError(f"{path}: task is {saved.get('task')!r}, not 'charlm'; expected "
                              f"{what}")
    return ml_collections.ConfigDict(saved)


def main(argv):
    del argv
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax's chatter
    logging.getLogger("longformer").setLevel(logging.INFO)
    config = _CONFIG.value
    if config is None:
        config = run_config(_CHECKPOINT.value)
    elif config.get("task") != "charlm":
        raise app.UsageError(f"--config is a {config.get('task')!r} config; generation needs a "
                             "charlm one")
    model = charlm.CharLM(charlm_task.model_config(config))
    params = charlm_task.load_params(_CHECKPOINT.value, model, _STEP.value)
    prompt = _PROMPT.value.encode("utf-8")
    out = charlm.sample(model, params, prompt, _LENGTH.value,
                        context=_CONTEXT.value or config.data.seq_len,
                        temperature=_TEMPERATURE.value, top_k=_TOP_K.value, seed=_SEED.value)
    sys.stdout.write(_PROMPT.value + out.decode("utf-8", errors="replace") + "\n")


if __name__ == "__main__":
    app.run(main)
