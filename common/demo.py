"""`make demo`: generate a competition's synthetic raw files, then train -> infer -> submit, printing the CV
score and the submission path. Each competition's demo.py supplies the data generator and quick settings."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from common import api
from common.config import parse_args
from common.task import Task


def run(task: Task, make_dataset: Callable[[Path], Path], argv: list[str], defaults: list[str]) -> Path:
    data_dir = Path("data/demo") / task.name
    make_dataset(data_dir)
    print(f"[demo] synthetic {task.name} data in {data_dir}")
    # A fresh run each time (a re-used name would resume the finished run instead of training).
    args = parse_args(argv)
    cfg = task.config([f"data_dir={data_dir}", f"run_name=demo-{time.strftime('%Y%m%d-%H%M%S')}", *defaults,
                       *args.overrides], args.config)
    trained = api.train(task, cfg)
    out = api.submit(task, trained, data_dir=str(data_dir))
    metrics = trained.metrics()
    print(f"[demo] {task.name}: CV {metrics['metric']} = {metrics['cv']:.4f} (run {trained.dir})")
    print(f"[demo] {task.name}: submission written to {out}")
    return out
