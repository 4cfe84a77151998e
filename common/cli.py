"""Entry points shared by every competition: competitions/<c>/train.py and infer.py call these."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from common.config import ConfigError, merge_checked, parse_args
from common.io import DataError, read_csv, write_csv
from common.runs import Run
from common.submission import SubmissionError, fill_sample
from common.task import Task

USER_ERRORS = (ConfigError, DataError, SubmissionError, FileNotFoundError, ValueError)


def task_config(task: Task, argv: list[str] | None) -> tuple[DictConfig, object]:
    args = parse_args(argv)
    return task.config(args.overrides, args.config), args


def run_config(task: Task, overrides: list[str]) -> tuple[Run, DictConfig]:
    """An existing run's resolved config, with overrides (test_file, out, tta, batch_size, ...) on top."""
    dotlist = OmegaConf.from_dotlist(overrides)
    cfg0 = OmegaConf.create({"runs_dir": "runs", "run_name": None})
    cfg0 = OmegaConf.merge(cfg0, OmegaConf.masked_copy(dotlist, [k for k in ("runs_dir", "run_name") if k in dotlist]))
    run = Run.open(task.name, cfg0.run_name, cfg0.runs_dir)
    cfg = run.config()
    try:
        cfg = OmegaConf.merge(cfg, dotlist)
    except Exception as e:
        raise ConfigError(f"bad override for run {run.dir}: {e}") from None
    return run, cfg


def command_args(argv: list[str] | None, defaults: dict, command: str) -> DictConfig:
    """A command's own key=value arguments (ensemble's runs=, push's dry_run=), which are not config keys:
    defaults <- argv, a misspelt key being an error that lists the valid ones."""
    overrides = parse_args(argv).overrides
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"{command}: argument {o!r} is not key=value")
    cfg = OmegaConf.create(defaults)
    OmegaConf.set_struct(cfg, True)
    return merge_checked(cfg, OmegaConf.from_dotlist(overrides), f"{command}'s arguments")


def command_section(name: str, defaults: dict, cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """A command's settings (tune:, kaggle:): defaults <- the config's own `name:` section, where the competition
    has one <- the `name.*` overrides. Nested sections (tune.space) may take new keys; misspelt top keys fail."""
    ours = [o[len(name) + 1:] for o in overrides if o.startswith(f"{name}.")]
    for o in ours:
        if "=" not in o:
            raise ConfigError(f"override {name}.{o!r} is not key=value")
    settings = OmegaConf.merge(OmegaConf.create(defaults), cfg.get(name) or {})
    OmegaConf.set_struct(settings, True)
    for value in settings.values():
        if isinstance(value, DictConfig):
            OmegaConf.set_struct(value, False)
    return merge_checked(settings, OmegaConf.from_dotlist(ours), f"{name}.* arguments")


def main(fn):
    """Run fn; print user errors (bad input, bad config) as one clear line and exit 2, no traceback."""
    try:
        return fn()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def train(task: Task, argv: list[str] | None = None) -> dict:
    from common.trainer import train_run

    def go():
        cfg, _ = task_config(task, argv)
        return train_run(task, cfg)
    return main(go)


def infer(task: Task, argv: list[str] | None = None) -> Path:
    """Predict with every fold of a run. Default test file -> the run's test_preds.csv (+ --submit: the
    leaderboard CSV in submissions/<c>/<run>.csv). test_file=X -> predictions for X in the submission
    format, written to out= (default: the run folder)."""
    return main(lambda: _infer(task, argv))


def submit_command(task: Task, argv: list[str] | None = None) -> Path:
    """make <c>-submit: infer (if the run has no test predictions yet), then fill the sample submission."""
    return infer(task, ["--submit", *(argv or [])])


def _infer(task: Task, argv: list[str] | None) -> Path:
    from common.predict import predict_run

    args = parse_args(argv)
    run, cfg = run_config(task, args.overrides)
    if cfg.test_file:  # any CSV in the test format -> predictions in the submission's format
        if args.submit:
            raise ConfigError("--submit fills the competition's sample submission; it does not take test_file=")
        path = Path(cfg.test_file)
        preds = predict_run(task, run, cfg, task.load_test(cfg, path))
        out = write_csv(submission_frame(task, run, cfg, preds), cfg.out or run.dir / f"preds_{path.stem}.csv")
        print(f"predictions for {path}: {out}")
        return out
    if args.submit and run.test_preds_path.is_file():
        print(f"using the existing test predictions {run.test_preds_path}")
    else:
        preds = predict_run(task, run, cfg, task.load_test(cfg, task.test_path(cfg)))
        write_csv(preds, run.test_preds_path)
        print(f"test predictions: {run.test_preds_path}")
        if cfg.out:
            print(f"in the submission format: {write_csv(submission_frame(task, run, cfg, preds), cfg.out)}")
    return submit(task, run, cfg) if args.submit else run.test_preds_path


def submission_frame(task: Task, run: Run, cfg: DictConfig, preds: pd.DataFrame) -> pd.DataFrame:
    """id column + target column, named as in the sample submission."""
    id_col, target_col = task.submission_columns(cfg)
    return pd.DataFrame({id_col: preds[task.id_column].to_numpy(),
                         target_col: task.submission_values(preds, run.classes()).to_numpy()})


def submit(task: Task, run: Run, cfg: DictConfig) -> Path:
    """Fill a copy of the sample submission from the run's test predictions: submissions/<c>/<run>.csv."""
    preds = read_csv(run.test_preds_path)
    out = fill_sample(task.sample_submission_path(cfg), preds[task.id_column],
                      task.submission_values(preds, run.classes()), Path("submissions") / task.name / f"{run.name}.csv")
    print(f"submission: {out}")
    return out
