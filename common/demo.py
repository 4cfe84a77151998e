"""`make demo`: generate a competition's synthetic raw files, then train -> infer -> submit. Each competition's
demo.py supplies the data generator (`make_dataset`) and quick settings (`SETTINGS`); `python -m competitions <c>
demo key=value ...` (common/cli.py) runs it and prints the CV score and the submission path."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Mapping

from common import api
from common.runs import Run
from common.task import Task


def run(task: Task, make_dataset: Callable[[Path], Path], settings: Mapping, overrides: Mapping | None = None,
        config_path: str | Path | None = None) -> tuple[Run, Path]:
    """The trained demo run and its submission. settings: the demo's quick settings; overrides win over them."""
    data_dir = Path("data/demo") / task.name
    make_dataset(data_dir)
    # A fresh run each time (a re-used name would resume the finished run instead of training).
    run_name = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = task.config({"data_dir": str(data_dir), "run_name": run_name, **settings, **(overrides or {})},
                      config_path)
    trained = api.train(task, cfg)
    return trained, api.submit(task, trained, data_dir=str(data_dir))
