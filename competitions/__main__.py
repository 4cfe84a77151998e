"""One command line for every competition: python -m competitions <c> <command> [--config X] key=value ...

Commands: train, infer, submit, ensemble, tune, push, gradcam, demo. A new competition folder gets all of
them by defining its Task subclass in competitions/<c>/task.py; nothing here names a competition.
"""
from __future__ import annotations

import importlib
import inspect
import sys

from common.task import Task

# command -> "module:function"; each function takes (task, argv).
COMMANDS = {
    "train": "common.cli:train",
    "infer": "common.cli:infer",
    "submit": "common.cli:submit_command",
    "ensemble": "common.ensemble:main",
    "tune": "common.tune:main",
    "push": "common.kaggle:push_main",
    "gradcam": "common.gradcam:main",
}


def load_task(competition: str) -> Task:
    try:
        module = importlib.import_module(f"competitions.{competition}.task")
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith(f"competitions.{competition}"):
            raise SystemExit(f"unknown competition {competition!r} (no competitions/{competition}/task.py)")
        raise
    tasks = [c for _, c in inspect.getmembers(module, inspect.isclass)
             if issubclass(c, Task) and c is not Task and c.__module__ == module.__name__]
    if len(tasks) != 1:
        raise SystemExit(f"competitions/{competition}/task.py must define exactly one Task subclass")
    return tasks[0]()


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in (*COMMANDS, "demo"):
        raise SystemExit(f"usage: python -m competitions <competition> <{'|'.join([*COMMANDS, 'demo'])}> key=value ...")
    competition, command, rest = argv[0], argv[1], argv[2:]
    if command == "demo":
        importlib.import_module(f"competitions.{competition}.demo").main(rest)
        return
    module_name, function = COMMANDS[command].split(":")
    getattr(importlib.import_module(module_name), function)(load_task(competition), rest)


if __name__ == "__main__":
    main(sys.argv[1:])
