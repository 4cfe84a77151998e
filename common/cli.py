"""The command line layer: argv -> overrides -> a call of the Python API (common/api.py and the library modules
behind each command) -> what is printed. Every command's arguments are parsed here, and only here; the library
functions take a config, settings or keyword arguments. competitions/__main__.py dispatches to the functions below
(each takes (task, argv)) and is the only place that turns a UserError into exit code 2."""
from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from common import api, kaggle, leaderboard
from common import demo as demo_lib
from common import tune as tune_lib
from common.config import command_section, merge_checked, override_config, parse_args
from common.errors import ConfigError
from common.io import read_csv, write_csv
from common.metrics import get_metric
from common.runs import Run
from common.task import Task

# The commands' own arguments, which are not config keys, with their defaults.
ENSEMBLE_ARGS = {
    "runs": None,        # the runs to blend, space-separated (RUNS="a b c")
    "run_name": None,    # the blend's run folder (RUN=); null -> blend-<timestamp>
    "runs_dir": "runs",
    "method": "auto",    # scipy | hill | auto (both; keep the better OOF score) | mean (equal weights, no search)
    "rank": False,       # blend ranks, not scores: for metrics that only rank (AUC); one prediction column only
    "class_bias": False,  # tune per-class biases on the blended OOF (multiclass tasks scored on labels)
}
RUNS_ARGS = {
    "runs_dir": "runs",
    "sort": None,   # a column; default cv in the metric's direction; -column sorts descending
    "top": None,    # show the first N rows after sorting
    "where": None,  # a pandas query over the columns, e.g. "status == 'finished' and lr < 1e-4"
    "out": None,    # also write the table: .csv, .md or .html
}
PUSH_ARGS = {"run_name": None, "runs_dir": "runs", "dry_run": False, "out": None,
             "runtime": None,    # what the kernel predicts with: torch | onnx; null -> onnx if the run has graphs
             "quantize": None,   # int8: the kernel runs int8 graphs (runtime=onnx)
             "data_dir": None}   # runtime=onnx: where the test rows to export from are; null -> the run's

DASHBOARD_ARGS = {"run_name": None, "runs_dir": "runs", "storage": None, "host": "127.0.0.1", "port": 8080}
GRADCAM_ARGS = {"run2": None, "n": 8, "cam_target": "predicted"}  # the other key=value arguments are run config keys
DOWNLOAD_ARGS = {"dest": None}  # null -> data/<competition>


def task_config(task: Task, argv: list[str] | None) -> DictConfig:
    args = parse_args(argv)
    return task.config(args.overrides, args.config)


def overrides_of(argv_overrides: list[str]) -> dict:
    """key=value strings -> {key: value}, parsed once (the API takes keyword overrides)."""
    return OmegaConf.to_container(override_config(argv_overrides), resolve=True)


def run_overrides(task: Task, overrides: list[str]) -> tuple[Run, dict]:
    """The run named by run_name= (default: the latest finished one) and the other overrides, parsed."""
    parsed = overrides_of(overrides)
    run = Run.open(task.name, parsed.pop("run_name", None), parsed.get("runs_dir", "runs"))
    return run, parsed


def command_args(argv: list[str] | None, defaults: dict, command: str) -> DictConfig:
    """A command's own key=value arguments (ensemble's runs=, push's dry_run=), which are not config keys:
    defaults <- argv, a misspelt key being an error that names it."""
    overrides = override_config(parse_args(argv).overrides, f"{command}: argument")
    return merge_checked(OmegaConf.create(defaults), overrides, f"{command}'s arguments")


def section_args(overrides: list[str], name: str) -> tuple[list[str], dict]:
    """(the other arguments, the `name.*` ones as the section's own keys): tune.n_trials=30 -> {"n_trials": 30}."""
    ours = [o for o in overrides if o.startswith(f"{name}.")]
    parsed = override_config(ours)
    return [o for o in overrides if o not in ours], OmegaConf.to_container(parsed.get(name) or OmegaConf.create({}))


def demo(task: Task, argv: list[str] | None, make_dataset, settings: dict) -> Path:
    """make <c>-demo: synthetic data -> train -> infer -> submit with the demo's quick settings (argv wins)."""
    args = parse_args(argv)
    trained, out = demo_lib.run(task, make_dataset, settings, overrides_of(args.overrides), args.config)
    metrics = trained.metrics()
    print(f"[demo] {task.name}: CV {metrics['metric']} = {metrics['cv']:.4f} (run {trained.dir})")
    print(f"[demo] {task.name}: submission written to {out}")
    return out


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
        preds = api.predict(task, run, path, **overrides)
        out = write_csv(api.submission_frame(task, run, preds, cfg), cfg.out or run.dir / f"preds_{path.stem}.csv")
        print(f"predictions for {path}: {out}")
        return out
    if not args.submit or not run.test_preds_path.is_file():
        path = api.predict_test(task, run, **overrides)
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
        print(f"test predictions: {api.predict_test(task, run, **overrides)}")
    out = api.submit(task, run, **overrides)
    print(f"submission: {out}")
    return out


def rescore(task: Task, argv: list[str] | None = None) -> Path:
    """make <c>-rescore RUN=x ARGS="tta=true": the run's OOF predicted again under the overrides, beside its CV."""
    run, overrides = run_overrides(task, parse_args(argv).overrides)
    path, scores = api.rescore(task, run, **overrides)
    trained = f" (the run's own OOF: {run.metrics()['cv']:.4f})" if run.metrics_path.is_file() else ""
    print(f"rescored OOF: {path}{trained}")
    if "retuned" in scores:
        again = scores["retuned"]
        honest = again.get("cv_cut_from_other_folds", again.get("cv_bias_from_other_folds"))
        print(f"with the decision rule tuned again on the rescored OOF: {scores['metric']} {again['cv']:.4f}"
              + (f", {honest:.4f} with each fold's rule tuned on the other folds" if honest is not None else ""))
    if overrides.get("runtime", "torch") != "torch" and run.metrics_path.is_file() and run.oof_path.is_file():
        print(runtime_change(task, run, overrides, scores, read_csv(path)))
    return path


def runtime_change(task: Task, run: Run, overrides: dict, scores: dict, oof: pd.DataFrame) -> str:
    """What runtime=onnx (quantize=int8) costs on the OOF: the metric against the run's torch OOF, and the largest
    gap between the two predictions of a row."""
    torch_oof = read_csv(run.oof_path)
    columns = [c for c in run.classes() if c in oof.columns and c in torch_oof.columns]
    rows = task.id_column
    gap = float((oof.set_index(rows)[columns] - torch_oof.set_index(rows)[columns]).abs().max().max())
    own = run.metrics()["cv"]
    setting = " ".join(f"{k}={overrides.get(k)}" for k in ("runtime", "quantize") if overrides.get(k))
    return (f"{setting}: {scores['metric']} {scores['cv']:.4f} against {own:.4f} with torch "
            f"({scores['cv'] - own:+.4f}); largest prediction gap {gap:.2e}")


def ensemble(task: Task, argv: list[str] | None = None) -> Run:
    """make <c>-ensemble RUNS="a b" RUN=blend ARGS="method=hill rank=true": the blend, its test predictions and
    a table of the runs' CVs and weights."""
    args = command_args(argv, ENSEMBLE_ARGS, "ensemble")
    blend = api.ensemble(task, str(args.runs or "").split(), args.run_name, args.method, bool(args.rank),
                         args.runs_dir, bool(args.class_bias))
    metric, spec = get_metric(task.metric), blend.blend_spec()
    print(f"ensemble {blend.name}: {metric.name} ({'higher' if metric.greater_is_better else 'lower'} is better), "
          f"weights by {spec['method']}{', on ranks' if spec['rank'] else ''}")
    width = max(len(n) for n in [*spec["run_cv"], "blend"])
    print(f"  {'run':<{width}}  {'CV':>9}  {'weight':>7}")
    for name, cv in spec["run_cv"].items():
        print(f"  {name:<{width}}  {cv:>9.5f}  {spec['weights'].get(name, 0.0):>7.3f}")
    print(f"  {'blend':<{width}}  {blend.metrics()['cv']:>9.5f}")
    print(f"blend run: {blend.dir}  ->  make {task.name}-submit RUN={blend.name}")
    return blend


def tune(task: Task, argv: list[str] | None = None) -> optuna.Study:
    """make <c>-tune RUN=study ARGS="tune.n_trials=30 lr=...": the config and the tune.* settings from argv."""
    cfg, settings = tune_settings(task, argv)
    return tune_lib.tune(task, cfg, settings)


def tune_settings(task: Task, argv: list[str] | None) -> tuple[DictConfig, DictConfig]:
    """(config, tune settings). The tune.* arguments stay out of the config, so every trial's config is the same
    whatever n_trials or storage an invocation asks for; competitions without a `tune:` section get TUNE_DEFAULTS."""
    args = parse_args(argv)
    overrides, ours = section_args(args.overrides, "tune")
    cfg = task.config(overrides, args.config)
    return cfg, command_section("tune", tune_lib.TUNE_DEFAULTS, cfg, ours)


def dashboard(task: Task, argv: list[str] | None = None) -> None:
    """make <c>-dashboard RUN=<study> [ARGS="port=8081 storage=journal"]: optuna-dashboard on the study's storage."""
    args = command_args(argv, DASHBOARD_ARGS, "dashboard")
    tune_lib.dashboard(task, args.run_name or "tune", args.storage, args.runs_dir, args.host, int(args.port))


def push(task: Task, argv: list[str] | None = None) -> Path:
    """make <c>-push RUN=x [DRY_RUN=1] [ARGS="kaggle.gpu=true"]."""
    overrides, ours = section_args(parse_args(argv).overrides, "kaggle")
    args = command_args(overrides, PUSH_ARGS, "push")
    run = Run.open(task.name, args.run_name, args.runs_dir)
    settings = command_section("kaggle", kaggle.KAGGLE_DEFAULTS, run.config(), ours)
    runtime = {k: args[k] for k in ("runtime", "quantize", "data_dir") if args[k] is not None}
    return kaggle.push(task, run, settings, bool(args.dry_run), args.out, runtime)


def download(task: Task, argv: list[str] | None = None) -> Path:
    """make usppm-data: the competition's files from Kaggle into dest= (default data/<competition>)."""
    args = command_args(argv, DOWNLOAD_ARGS, "download")
    if not task.kaggle_competition:
        raise ConfigError(f"{task.name} is not a Kaggle competition: its README says where its files are served")
    return kaggle.download(task.kaggle_competition, args.dest or Path("data") / task.name)


def gradcam(task: Task, argv: list[str] | None = None) -> Path:
    """python -m competitions <c> gradcam run_name=x [run2=y n=8 cam_target=true key=value ...]."""
    from common import gradcam as gradcam_lib  # here: pytorch-grad-cam (and OpenCV) load only for this command
    own, overrides = gradcam_args(argv)
    run, overrides = run_overrides(task, overrides)
    return gradcam_lib.gradcam(task, run, own["n"], own["cam_target"], own["run2"], overrides)


def gradcam_args(argv: list[str] | None) -> tuple[dict, list[str]]:
    """gradcam's own key=value arguments (GRADCAM_ARGS) and the run config overrides."""
    own, overrides = dict(GRADCAM_ARGS), []
    for a in argv or []:
        if "=" not in a:
            raise ConfigError(f"argument {a!r} is not key=value")
        key, value = a.split("=", 1)
        if key in own:
            own[key] = value
        else:
            overrides.append(a)
    try:
        own["n"] = int(own["n"])
    except ValueError:
        raise ConfigError(f"n must be a whole number of images per group, got {own['n']!r}") from None
    if own["n"] < 1:
        raise ConfigError(f"n must be at least 1, got {own['n']}")
    if own["cam_target"] not in ("predicted", "true"):
        raise ConfigError(f"cam_target must be predicted or true, got {own['cam_target']!r}")
    return own, overrides


def runs(task: Task, argv: list[str] | None = None) -> pd.DataFrame:
    """make <c>-runs ARGS="sort=... top=... where=... out=...": the runs table, printed (and written to out=)."""
    args = command_args(argv, RUNS_ARGS, "runs")
    table = leaderboard.runs_table(task, args.runs_dir, args.sort, args.top, args.where)
    metric = get_metric(task.metric)
    print(f"{task.name}: {len(table)} run(s), {metric.name} ({'higher' if metric.greater_is_better else 'lower'} "
          f"is better)")
    with pd.option_context("display.width", 200, "display.max_columns", 40, "display.max_colwidth", 40):
        print(table.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.5g}"))
    if args.out:
        print(f"written: {leaderboard.write_table(table, Path(args.out))}")
    return table
