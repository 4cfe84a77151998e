"""A local leaderboard of a competition's runs (make <c>-runs [ARGS="sort=... top=... where=... out=runs.csv"], printed
by common/cli.py).

One row per run folder under runs/<c>/, best first by the metric's direction: CV (each fold at its best epoch),
cv_last (each fold at its last epoch: the gap is what picking the best epoch on the fold's own rows adds), per-fold
scores, the config keys that differ between the runs shown, epochs, wall time, peak memory, whether it has test
predictions and a submission, and a blend's weights. A run without metrics.json (killed, or still training) is shown
as unfinished with how many folds are done, never with a score.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from common.config import RUNTIME_KEYS
from common.errors import ConfigError, NotFound
from common.io import atomic_path, read_json, write_csv
from common.metrics import get_metric
from common.runs import Run
from common.task import Task

FIXED_COLUMNS = ["run", "status", "cv", "cv_last", "folds", "epochs", "wall_time", "peak_mem_mb", "test_preds",
                 "submission", "blend"]
NOT_COMPARED = RUNTIME_KEYS | {"run_name", "experiment"}


def run_row(task: Task, run: Run, submissions_dir: Path) -> tuple[dict, dict]:
    """(the fixed columns, the flattened config) of one run folder."""
    cfg = run.config() if run.config_path.is_file() else OmegaConf.create({})
    flat = {k: v for k, v in _flatten(OmegaConf.to_container(cfg, resolve=True)).items()
            if k.split(".")[0] not in NOT_COMPARED}
    metrics = read_json(run.metrics_path) if run.metrics_path.is_file() else None
    spec = run.blend_spec()
    expected = len(cfg.train_folds) if cfg.get("train_folds") is not None else cfg.get("folds")
    done = len(run.finished_folds())
    if spec is not None:
        status = "blend"
    elif metrics is None:
        status = f"unfinished ({done}/{expected} folds)"
    elif expected and done < expected:
        status = f"partial ({done}/{expected} folds)"
    else:
        status = "finished"
    row = {
        "run": run.name, "status": status,
        "cv": metrics["cv"] if metrics else np.nan,
        "cv_last": metrics.get("cv_last", np.nan) if metrics else np.nan,  # each fold's last epoch; none for a blend
        "folds": ", ".join(f"{s:.4f}" for s in metrics["folds"]) if metrics else "",
        "epochs": cfg.get("epochs"),
        "wall_time": _duration(metrics.get("wall_time_s")) if metrics else "",
        "peak_mem_mb": metrics.get("peak_rss_mb", np.nan) if metrics else np.nan,
        "test_preds": run.test_preds_path.is_file(),
        "submission": (submissions_dir / f"{run.name}.csv").is_file(),
        "blend": ", ".join(f"{n} {w:.2f}" for n, w in spec["weights"].items()) if spec else "",
    }
    return row, flat


def runs_table(task: Task, runs_dir: str | Path = "runs", sort: str | None = None, top: int | None = None,
               where: str | None = None, submissions_dir: str | Path | None = None) -> pd.DataFrame:
    """The table of the competition's runs (see the module docstring)."""
    parent = Path(runs_dir) / task.name
    runs = [Run(p.parent) for p in sorted(parent.glob("*/config.yaml"))]
    if not runs:
        raise NotFound(f"no runs in {parent}; train one first (make {task.name}-train)")
    submissions_dir = Path(submissions_dir or Path("submissions") / task.name)
    rows, configs = zip(*(run_row(task, run, submissions_dir) for run in runs))
    configs = pd.DataFrame(configs).drop(columns=["epochs"], errors="ignore").rename(columns={"folds": "n_folds"})
    table = pd.concat([pd.DataFrame(rows), configs], axis=1)
    if where:
        try:
            table = table.query(where)
        except Exception as e:  # pandas raises many kinds for a bad expression
            raise ConfigError(f"where={where!r}: not a query over the columns ({e}); columns: "
                              f"{', '.join(table.columns)}") from None
    table = sort_runs(table, sort, get_metric(task.metric).greater_is_better)
    if top:
        table = table.head(int(top))
    differing = [c for c in table.columns[len(FIXED_COLUMNS):]
                 if table[c].astype(str).nunique(dropna=False) > 1]
    return table[FIXED_COLUMNS + differing].reset_index(drop=True)


def sort_runs(table: pd.DataFrame, sort: str | None, greater_is_better: bool) -> pd.DataFrame:
    column, descending = (sort or "cv").lstrip("-"), (sort or "").startswith("-")
    if column not in table.columns:
        raise ConfigError(f"sort={sort!r}: no such column; columns: {', '.join(table.columns)}")
    if column == "cv" and not sort:
        descending = greater_is_better  # best first; unfinished runs (no CV) last
    return table.sort_values(column, ascending=not descending, na_position="last", kind="stable")


def write_table(table: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        return write_csv(table, path)
    if path.suffix not in (".md", ".html"):
        raise ConfigError(f"out={path}: write .csv, .md or .html")
    text = table.to_html(index=False, na_rep="-") if path.suffix == ".html" else _markdown(table)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def _markdown(table: pd.DataFrame) -> str:
    cells = table.astype(object).where(table.notna(), "-").astype(str)
    lines = ["| " + " | ".join(cells.columns) + " |", "|" + "---|" * len(cells.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells.to_numpy()]
    return "\n".join(lines) + "\n"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v) if isinstance(v, list) else v
    return out


def _duration(seconds) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return ""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"
