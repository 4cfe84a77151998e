"""The command line layer: each function parses one command's argv and calls the Python API (common/api.py).
competitions/__main__.py dispatches to them and is the only place that turns a UserError into exit code 2."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from common import api
from common.config import merge_checked, parse_args
from common.errors import ConfigError
from common.io import read_csv, write_csv
from common.runs import Run
from common.task import Task


def task_config(task: Task, argv: list[str] | None) -> DictConfig:
    args = parse_args(argv)
    return task.config(args.overrides, args.config)


def run_overrides(task: Task, overrides: list[str]) -> tuple[Run, list[str]]:
    """The run named by run_name= (default: the latest finished one) and the other overrides."""
    dotlist = OmegaConf.from_dotlist([o for o in overrides if o.split("=", 1)[0] in ("run_name", "runs_dir")])
    run = Run.open(task.name, dotlist.get("run_name"), dotlist.get("runs_dir", "runs"))
    return run, [o for o in overrides if not o.startswith("run_name=")]


def command_args(argv: list[str] | None, defaults: dict, command: str) -> DictConfig:
    """A command's own key=value arguments (ensemble's runs=, push's dry_run=), which are not config keys:
    defaults <- argv, a misspelt key being an error that names it."""
    overrides = parse_args(argv).overrides
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"{command}: argument {o!r} is not key=value")
    cfg = OmegaConf.create(defaults)
    return merge_checked(cfg, OmegaConf.from_dotlist(overrides), f"{command}'s arguments")


def command_section(name: str, defaults: dict, cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """A command's settings (tune:, kaggle:): defaults <- the config's own `name:` section, where the competition
    has one <- the `name.*` overrides. Nested sections (tune.space) may take new keys; misspelt top keys fail."""
    ours = [o[len(name) + 1:] for o in overrides if o.startswith(f"{name}.")]
    for o in ours:
        if "=" not in o:
            raise ConfigError(f"override {name}.{o!r} is not key=value")
    settings = merge_checked(OmegaConf.create(defaults), OmegaConf.create(cfg.get(name) or {}),
                             f"the config's {name}: section")
    for value in settings.values():
        if isinstance(value, DictConfig):
            OmegaConf.set_struct(value, False)
    return merge_checked(settings, OmegaConf.from_dotlist(ours), f"{name}.* arguments")


def train(task: Task, argv: list[str] | None = None) -> Run:
    return api.train(task, task_config(task, argv))


def infer(task: Task, argv: list[str] | None = None) -> Path:
    """Predict with every fold of a run (or a blend's runs). Default test file -> the run's test_preds.csv
    (--submit: then the leaderboard CSV); test_file=X -> predictions for X in the submission format, written to
    out= (default: the run folder)."""
    args = parse_args(argv)
    run, overrides = run_overrides(task, args.overrides)
    cfg = run.config(overrides)
    if cfg.test_file:  # any CSV in the test format -> predictions in the submission's format
        if args.submit:
            raise ConfigError("--submit fills the competition's sample submission; it does not take test_file=")
        path = Path(cfg.test_file)
        preds = api.predict(task, run, path, **_as_dict(overrides))
        out = write_csv(api.submission_frame(task, run, preds, cfg), cfg.out or run.dir / f"preds_{path.stem}.csv")
        print(f"predictions for {path}: {out}")
        return out
    if not args.submit or not run.test_preds_path.is_file():
        path = api.predict_test(task, run, **_as_dict(overrides))
        print(f"test predictions: {path}")
        if cfg.out:
            frame = api.submission_frame(task, run, read_csv(path), cfg)
            print(f"in the submission format: {write_csv(frame, cfg.out)}")
    return submit(task, args.overrides) if args.submit else run.test_preds_path


def submit(task: Task, argv: list[str] | None = None) -> Path:
    """make <c>-submit: infer (if the run has no test predictions yet), then fill the sample submission."""
    run, overrides = run_overrides(task, parse_args(argv).overrides)
    if run.test_preds_path.is_file():
        print(f"using the existing test predictions {run.test_preds_path}")
    else:
        print(f"test predictions: {api.predict_test(task, run, **_as_dict(overrides))}")
    out = api.submit(task, run, **_as_dict(overrides))
    print(f"submission: {out}")
    return out


def rescore(task: Task, argv: list[str] | None = None) -> Path:
    """make <c>-rescore RUN=x ARGS="tta=true": the run's OOF predicted again under the overrides, beside its CV."""
    run, overrides = run_overrides(task, parse_args(argv).overrides)
    path, scores = api.rescore(task, run, **_as_dict(overrides))
    trained = f" (the run's own OOF: {run.metrics()['cv']:.4f})" if run.metrics_path.is_file() else ""
    print(f"CV {scores['metric']}: {scores['cv']:.4f}{trained}  folds: "
          f"{', '.join(f'{s:.4f}' for s in scores['folds'])}")
    print(f"rescored OOF: {path}")
    return path


def _as_dict(overrides: list[str]) -> dict:
    """key=value strings -> {key: parsed value} (api functions take keyword overrides)."""
    return OmegaConf.to_container(OmegaConf.from_dotlist(overrides), resolve=True) if overrides else {}
