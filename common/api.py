"""The kit from Python. Every command (make <c>-train, -infer, -submit, -ensemble, -tune) is one of these functions
behind argument parsing; they return objects and raise (common.errors.UserError for what a user can fix), never exit.

    from common import api
    from competitions.usppm.task import UsppmTask

    task = UsppmTask()
    run = api.train(task, task.config(["data_dir=../shared/data/usppm", "epochs=1"]))   # -> Run
    print(run.metrics()["cv"])
    preds = api.predict(task, run, "my_test.csv")        # -> DataFrame: id + prediction columns
    path = api.submit(task, run)                         # -> submissions/usppm/<run>.csv
    blend = api.ensemble(task, ["run-a", "run-b"], name="blend")   # -> Run (predict / submit take it too)
    path, scores = api.rescore(task, run, tta=True)     # -> the OOF again with TTA, and its CV
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from common.ensemble import blend, blend_frames
from common.errors import NotFound
from common.io import read_csv, write_csv
from common.predict import export_graphs as export_fold_graphs
from common.predict import predict_run, rescore_oof
from common.runs import Run
from common.submission import fill_sample
from common.summary import write_summary
from common.task import Task
from common.trainer import EvalCallback
from common.trainer import train as _train


def train(task: Task, cfg: DictConfig, on_evaluate: EvalCallback | None = None) -> Run:
    """K-fold training as cfg says (task.config(overrides) builds one); resumes a run of the same name."""
    return _train(task, cfg, on_evaluate)


def open_run(task: Task, run: Run | str | None, runs_dir: str | Path = "runs") -> Run:
    """A Run, a run name under runs_dir/<c>/, or None for the latest finished run."""
    return run if isinstance(run, Run) else Run.open(task.name, run, str(runs_dir))


def predict(task: Task, run: Run | str | None, test_path: str | Path | None = None, **overrides) -> pd.DataFrame:
    """Predictions (id + one column per class, or `pred`) for a file in the test format; default: the
    competition's test file. overrides: run config keys (data_dir=, image_dir=, tta=, batch_size= ...).
    A blend has each of its runs predict the same file, then blends them with its recipe."""
    run = open_run(task, run, overrides.get("runs_dir", "runs"))
    cfg = run.config(overrides)
    spec = run.blend_spec()
    if spec is not None:
        members = [Run(run.dir.parent / name) for name in spec["runs"]]
        frames = [predict(task, member, test_path, **overrides) for member in members]
        return blend_frames(task, run, frames)
    path = Path(test_path) if test_path else task.test_path(cfg)
    return predict_run(task, run, cfg, task.load_test(cfg, path))


def export_graphs(task: Task, run: Run | str | None, **overrides) -> list[Path]:
    """Each finished fold's ONNX graph (runtime=onnx; quantize=int8 too when asked), exported where missing or made
    from other weights, from a batch of the competition's test rows (test_file= another file); a blend: its runs'.
    Returns the graphs' paths. Infer, submit and rescore with runtime=onnx export on first use: this is for push."""
    run = open_run(task, run, overrides.get("runs_dir", "runs"))
    spec = run.blend_spec()
    if spec is not None:
        return [path for name in spec["runs"] for path in export_graphs(task, Run(run.dir.parent / name), **overrides)]
    cfg = run.config({**overrides, "runtime": "onnx"})
    path = task.test_path(cfg)
    if not path.exists():
        raise NotFound(f"{path}: runtime=onnx exports each fold from a batch of test rows and there is no test file "
                       f"there (data_dir={cfg.data_dir}); pass data_dir= or test_file=")
    return export_fold_graphs(task, run, cfg, task.load_test(cfg, path))


def predict_test(task: Task, run: Run | str | None, **overrides) -> Path:
    """The run's test_preds.csv from the competition's test file (what submit fills the sample with)."""
    run = open_run(task, run, overrides.get("runs_dir", "runs"))
    write_csv(predict(task, run, None, **overrides), run.test_preds_path)
    return run.test_preds_path


def submission_frame(task: Task, run: Run, preds: pd.DataFrame, cfg: DictConfig | None = None) -> pd.DataFrame:
    """id column + target column, named as in the sample submission; labels as the run decides them (its
    threshold or class biases)."""
    id_col, target_col = task.submission_columns(cfg or run.config())
    return pd.DataFrame({id_col: preds[task.id_column].to_numpy(),
                         target_col: task.submission_values(preds, run.classes(), run.threshold(),
                                                             run.class_bias()).to_numpy()})


def submit(task: Task, run: Run | str | None, out: str | Path | None = None, **overrides) -> Path:
    """Fill a copy of the sample submission from the run's test predictions (made first if missing):
    submissions/<c>/<run>.csv unless out= says otherwise."""
    run = open_run(task, run, overrides.get("runs_dir", "runs"))
    if not run.test_preds_path.is_file():
        predict_test(task, run, **overrides)
    cfg = run.config(overrides)
    preds = read_csv(run.test_preds_path)
    sample = task.sample_submission_path(cfg)
    if not sample.is_file():
        raise NotFound(f"{sample}: no sample submission to fill (data_dir={cfg.data_dir})")
    values = task.submission_values(preds, run.classes(), run.threshold(), run.class_bias())
    out = out or Path("submissions") / task.name / f"{run.name}.csv"
    return fill_sample(sample, preds[task.id_column], values, out)


def ensemble(task: Task, runs: list[str | Run], name: str | None = None, method: str = "auto", rank: bool = False,
             runs_dir: str = "runs", class_bias: bool = False) -> Run:
    """Blend runs on their shared OOF into the run folder `name` (common.ensemble.blend), then its test_preds.csv:
    each run predicts the competition's test file if it has not yet, and the blend blends those."""
    blended = blend(task, runs, name, method, rank, runs_dir, class_bias)
    cfg = blended.config()
    if not task.test_path(cfg).exists():  # a file, or a folder of test images
        print(f"no test file at {task.test_path(cfg)}: the blend has no test_preds.csv yet "
              f"(make {task.name}-infer RUN={blended.name} ARGS=\"test_file=...\")")
        return blended
    frames = []
    for member_name in blended.blend_spec()["runs"]:
        member = Run(blended.dir.parent / member_name)
        if not member.test_preds_path.is_file():
            print(f"run {member.name} has no test predictions yet: predicting the test set")
            predict_test(task, member)
        frames.append(read_csv(member.test_preds_path))
    write_csv(blend_frames(task, blended, frames), blended.test_preds_path)
    return blended


# Overrides that say where things are, not how to predict: left out of a rescored file's name.
WHERE_KEYS = {"runs_dir", "data_dir", "image_dir", "image_cache", "feature_cache", "num_workers", "num_threads"}


def rescore(task: Task, run: Run | str | None, **overrides) -> tuple[Path, dict]:
    """The run's OOF predicted again by its fold models under overrides (tta=True, tta_transforms=[...],
    batch_size= ...), without retraining: oof_<overrides>.csv and metrics_<overrides>.json in the run folder.
    Returns the CSV's path and the scores (metric, cv, folds)."""
    run = open_run(task, run, overrides.get("runs_dir", "runs"))
    settings = [f"{k}={_text(v)}" for k, v in overrides.items() if k not in WHERE_KEYS]
    oof, scores = rescore_oof(task, run, run.config(overrides))
    name = re.sub(r"[^\w.=,-]+", "_", "_".join(settings)).strip("_") or "again"
    write_summary({**scores, "overrides": settings}, run.dir / f"metrics_{name}.json")
    return write_csv(oof, run.dir / f"oof_{name}.csv"), scores


def _text(value) -> str:
    """An override's value as the command line writes it, for a rescored file's name: tta=true, tta_transforms=[...]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
