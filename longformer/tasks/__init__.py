"""Training objectives: each builds a `Task` (model, data, loss, evaluation) from a config.

`config.task` names one of `TASKS`; the generic loop in `train_lib` runs any of them.
"""

from __future__ import annotations

import importlib

from longformer.tasks.base import Task

# task name -> module whose `build(config, workdir) -> Task` makes it
TASKS = {
    "mlm": "longformer.tasks.mlm",
    "classification": "longformer.tasks.classification",
    "token_classification": "longformer.tasks.token_classification",
    "multiple_choice": "longformer.tasks.multiple_choice",
    "qa": "longformer.tasks.qa",
    "triviaqa": "longformer.tasks.triviaqa",
    "hotpotqa": "longformer.tasks.hotpotqa",
    "charlm": "longformer.tasks.charlm",
    "wikihop": "longformer.tasks.wikihop",
}


def build(config, workdir: str) -> Task:
    if config.task not in TASKS:
        raise ValueError(f"unknown task {config.task!r}; expected one of {sorted(TASKS)}")
    return importlib.import_module(TASKS[config.task]).build(config, workdir)


__all__ = ["Task", "TASKS", "build"]
