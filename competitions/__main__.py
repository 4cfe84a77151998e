"""One command line for every competition: python -m competitions <c> <command> [--config X] key=value ...

Commands: train, infer, submit, rescore, ensemble, tune, push, gradcam, runs, dashboard, download, demo. A new competition folder gets all of
them by defining its Task subclass in competitions/<c>/task.py; nothing here names a competition.
This is the one place where a UserError (bad data, config, missing run or weights) becomes a one-line message and
exit code 2; any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import importlib
import inspect
import sys

from common import cli
from common.errors import UserError
from common.task import Task

# command -> "module:function"; each function takes (task, argv) and parses argv itself.
COMMANDS = {
    "train": "common.cli:train",
    "infer": "common.cli:infer",
    "submit": "common.cli:submit",
    "rescore": "common.cli:rescore",
    "ensemble": "common.cli:ensemble",
    "tune": "common.cli:tune",
    "push": "common.cli:push",
    "gradcam": "common.cli:gradcam",
    "runs": "common.cli:runs",
    "dashboard": "common.cli:dashboard",
    "download": "common.cli:download",
}


def load_task(competition: str) -> Task:
    try:
        module = importlib.import_module(f"competitions.{competition}.task")
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith(f"competitions.{competition}"):
            raise UserError(f"unknown competition {competition!r} (no competitions/{competition}/task.py)") from None
        raise
    tasks = [c for _, c in inspect.getmembers(module, inspect.isclass)
             if issubclass(c, Task) and c is not Task and c.__module__ == module.__name__]
    if len(tasks) != 1:
        raise TypeError(f"competitions/{competition}/task.py must define exactly one Task subclass")
    return tasks[0]()


def run_command(competition: str, command: str, argv: list[str]):
    """Call one command; what it returns (a Run, a path, a study) goes back to the caller."""
    if command == "demo":  # the competition's demo.py: its data generator and quick settings
        demo = importlib.import_module(f"competitions.{competition}.demo")
        return cli.demo(load_task(competition), argv, demo.make_dataset, demo.SETTINGS)
    if command not in COMMANDS:
        raise UserError(f"unknown command {command!r}; one of {', '.join([*COMMANDS, 'demo'])}")
    module_name, function = COMMANDS[command].split(":")
    return getattr(importlib.import_module(module_name), function)(load_task(competition), argv)


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit(f"usage: python -m competitions <competition> <{'|'.join([*COMMANDS, 'demo'])}> key=value ...")
    try:
        run_command(argv[0], argv[1], argv[2:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
