"""`make demo`: generate a competition's synthetic raw files, then train -> infer -> submit, printing the CV
score and the submission path. Each competition's demo.py supplies the data generator and quick settings."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from common import cli
from common.runs import Run
from common.task import Task


def run(task: Task, make_dataset: Callable[[Path], Path], argv: list[str], defaults: list[str]) -> Path:
    data_dir = Path("data/demo") / task.name
    make_dataset(data_dir)
    print(f"[demo] synthetic {task.name} data in {data_dir}")
    # A fresh run each time (a re-used name would resume the finished run instead of training).
    overrides = [f"data_dir={data_dir}", f"run_name=demo-{time.strftime('%Y%m%d-%H%M%S')}", *defaults, *argv]
    metrics = cli.train(task, overrides)
    run_name = next(o.split("=", 1)[1] for o in reversed(overrides) if o.startswith("run_name="))
    runs_dir = next((o.split("=", 1)[1] for o in reversed(overrides) if o.startswith("runs_dir=")), "runs")
    out = cli.infer(task, [f"run_name={run_name}", f"runs_dir={runs_dir}", f"data_dir={data_dir}", "--submit"])
    print(f"[demo] {task.name}: CV {metrics['metric']} = {metrics['cv']:.4f} "
          f"(run {Run(Path(runs_dir) / task.name / run_name).dir})")
    print(f"[demo] {task.name}: submission written to {out}")
    return out
