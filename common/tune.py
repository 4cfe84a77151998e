"""Optuna studies for any competition (make <c>-tune [RUN=<study>] ARGS="tune.n_trials=50 lr=... ...", parsed in
common/cli.py).

The search space is the `tune.space` section of the competition's config (any config key). Every trial is a
normal run folder, runs/<c>/<study>-t<N>, trained on the study's folds (`tune.folds`, the same rows for every
trial), and its objective is that run's CV; the direction follows the metric. Each epoch's validation score is
reported to the trial, so the median or Hyperband pruner can stop a bad trial early.

Storage (`tune.storage`): null -> SQLite runs/<c>/<study>/study.db; `journal` -> the journal file
runs/<c>/<study>/journal.log (several worker processes on one machine: SQLite locks under parallel writers);
`journal:<path>`; or any SQLAlchemy URL (postgresql://... for workers on several machines).

The same command resumes a study: `tune.n_trials` counts the study's finished trials, over every invocation and
worker. A trial whose process was killed is retried with its parameters in its own run folder, where the trainer
resumes after the last finished epoch. Results land in runs/<c>/<study>/: best.yaml (an override file `train` takes
as experiment=...; its tuned_on_folds names the study's folds, so the run reports its CV on the other folds apart),
trials.csv and plots/ (history, parameter importance, parallel coordinates).
"""
from __future__ import annotations

import copy
import os
import shutil
import socket
import time
import warnings
from pathlib import Path

import optuna
import torch
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from common.config import command_section
from common.errors import ConfigError, NotFound
from common.io import atomic_path, write_csv
from common.metrics import get_metric
from common.runs import Run
from common.task import Task
from common.folds import assign_folds, load_train_frame
from common.trainer import train

TUNE_DEFAULTS = {
    "n_trials": 20,          # finished (complete or pruned) trials the study should hold, over all invocations
    "study_name": None,      # null -> run_name (RUN=), else "tune"; trials are runs/<c>/<study>-t<N>
    "storage": None,         # null (SQLite) | journal | journal:<path> | an SQLAlchemy URL (see the docstring)
    "pruner": "median",      # median | hyperband | none
    "startup_trials": 3,     # median: prune only once this many trials have completed
    "warmup_steps": 0,       # median: never prune before this many epochs (counted over the trial's folds)
    "folds": [0],            # folds every trial trains; its CV over them is the objective. null -> all folds
    "timeout": None,         # seconds this invocation keeps starting trials; null -> until n_trials
    "heartbeat": 60,         # database URL storages: a running trial's heartbeat, seconds
    "grace_period": 180,     # ... and after how long without one another worker fails it and queues its retry
    "space": None,           # {key: {type: float|int|categorical, low, high, log, step, choices}}; null -> lr only
}
# A trial may not change which rows it trains on or how they are split: all trials share the study's folds.
FIXED_KEYS = {"seed", "fold_seed", "folds_from", "folds", "train_folds", "limit", "data_dir", "run_name", "runs_dir", "experiment"}
# Trials that count towards n_trials. A RUNNING one is another worker's (dead workers' trials are failed first).
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


class StudyFull(Exception):
    """Raised in a trial started after other workers had already filled the study."""


def tune(task: Task, cfg: DictConfig, settings: DictConfig | None = None) -> optuna.Study:
    """Run (or resume) the study over settings.space (default: the config's tune: section); returns the study."""
    settings = settings if settings is not None else command_section("tune", TUNE_DEFAULTS, cfg)
    metric = get_metric(task.metric)
    study_name = settings.study_name or cfg.run_name or "tune"
    space = search_space(cfg, settings)  # bad settings fail here, before anything is written
    folds = list(settings.folds) if settings.folds is not None else list(range(cfg.folds))
    if not set(folds) <= set(range(cfg.folds)):
        raise ConfigError(f"tune.folds {folds} must be among the {cfg.folds} folds 0..{cfg.folds - 1}")
    pruner = create_pruner(settings, cfg.epochs * len(folds))
    study_dir = Path(cfg.runs_dir) / task.name / study_name
    share_folds(task, cfg, study_dir)

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the trainer prints each epoch; optuna adds the trials
    storage = create_storage(settings.storage, study_dir, settings.heartbeat, settings.grace_period)
    study = optuna.create_study(study_name=study_name, storage=storage,
                                direction="maximize" if metric.greater_is_better else "minimize",
                                pruner=pruner, load_if_exists=True)
    retry_dead_trials(study)
    done = len(study.get_trials(deepcopy=False, states=COUNTED))
    print(f"study {study_name!r}: {done} of {settings.n_trials} trials finished or running; "
          f"space: {', '.join(space)}; folds {folds}; {metric.name} ({study.direction.name.lower()})")

    def objective(trial: optuna.Trial) -> float:
        ahead = [t for t in study.get_trials(deepcopy=False, states=COUNTED) if t.number < trial.number]
        if len(ahead) >= settings.n_trials:  # another worker took the last trial between our check and ask()
            raise StudyFull(f"the study already has its {settings.n_trials} trials; this one is not run")
        # A retried trial keeps the run folder of the trial it replaces, so the trainer resumes there.
        run_name = trial.user_attrs.get("run_name") or f"{study_name}-t{trial.number}"
        for key, value in {"run_name": run_name, "host": socket.gethostname(), "pid": os.getpid()}.items():
            trial.set_user_attr(key, value)
        trial_cfg = copy.deepcopy(cfg)
        for key, dist in space.items():
            OmegaConf.update(trial_cfg, key, suggest(trial, key, dist), merge=True)
        trial_cfg.run_name, trial_cfg.train_folds = run_name, folds
        run_dir = Path(cfg.runs_dir) / task.name / run_name
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / "folds.csv").is_file():
            with atomic_path(run_dir / "folds.csv") as tmp:  # a killed worker never leaves half a split
                shutil.copy(study_dir / "folds.csv", tmp)
        print(f"trial {trial.number} ({run_name}): {trial.params}")

        def report(fold: int, epoch: int, score: float) -> None:
            trial.report(score, step=folds.index(fold) * trial_cfg.epochs + epoch)  # one step per epoch and fold
            if trial.should_prune():
                raise optuna.TrialPruned(f"{metric.name} {score:.4f} at fold {fold} epoch {epoch}")

        return train(task, trial_cfg, on_evaluate=report).metrics()["cv"]

    if done < settings.n_trials:
        study.optimize(objective, timeout=settings.timeout, gc_after_trial=True,
                       catch=(StudyFull, torch.OutOfMemoryError),  # an out-of-memory trial fails, the study goes on
                       callbacks=[lambda s, t: retry_dead_trials(s),
                                  optuna.study.MaxTrialsCallback(settings.n_trials, states=COUNTED)])
    report_study(study, study_dir, folds, metric.name, task.name)
    return study


def search_space(cfg: DictConfig, settings: DictConfig) -> dict:
    """{config key: optuna distribution}, checked before any trial runs."""
    space = settings.space
    if space is None:  # a competition without a space: the learning rate, a decade either side of the config's
        space = {"lr": {"type": "float", "low": cfg.lr / 10, "high": cfg.lr * 10, "log": True}}
    space = OmegaConf.to_container(OmegaConf.create(space), resolve=True)
    if not space:
        raise ConfigError("tune.space is empty: declare at least one parameter to search")
    dists = {}
    for key, spec in space.items():
        where = f"tune.space.{key}"
        if key in FIXED_KEYS:
            raise ConfigError(f"{where}: a trial cannot change {key!r}; all trials of a study share its folds")
        if OmegaConf.select(cfg, key, default=KeyError) is KeyError:
            raise ConfigError(f"{where}: {key!r} is not a config key of this competition")
        if not isinstance(spec, dict) or spec.get("type") not in ("float", "int", "categorical"):
            raise ConfigError(f"{where}: needs type: float | int | categorical, got {spec!r}")
        extra = set(spec) - {"type", "low", "high", "log", "step", "choices"}
        if extra:
            raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(extra))}")
        try:
            if spec["type"] == "categorical":
                dists[key] = CategoricalDistribution(spec["choices"])
            else:
                cls = FloatDistribution if spec["type"] == "float" else IntDistribution
                step = spec.get("step", None if spec["type"] == "float" else 1)
                dists[key] = cls(spec["low"], spec["high"], log=spec.get("log", False), step=step)
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{where}: {spec} is not a valid {spec['type']} range ({e!r})") from None
    return dists


def suggest(trial: optuna.Trial, key: str, dist):
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(key, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high, log=dist.log, step=dist.step)
    return trial.suggest_float(key, dist.low, dist.high, log=dist.log, step=dist.step)


def share_folds(task: Task, cfg: DictConfig, study_dir: Path) -> None:
    """The study's folds.csv, made once; each trial's run folder starts with a copy, so all trials (and a later
    ensemble of them) share the same split even if the fold code or data order changed in between."""
    if not (study_dir / "folds.csv").is_file():
        train, _ = load_train_frame(task, cfg)
        assign_folds(Run(study_dir), task, cfg, train, is_main=True)


def create_storage(spec: str | None, study_dir: Path, heartbeat: int = 60, grace_period: int = 180):
    if spec is None:
        # A long timeout: a second process waits for SQLite's lock instead of failing at once.
        return optuna.storages.RDBStorage(f"sqlite:///{(study_dir / 'study.db').resolve()}",
                                          engine_kwargs={"connect_args": {"timeout": 60}})
    if spec == "journal" or spec.startswith("journal:"):
        path = Path(spec[len("journal:"):]) if spec != "journal" else study_dir / "journal.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    if spec.startswith("sqlite:"):
        return optuna.storages.RDBStorage(spec, engine_kwargs={"connect_args": {"timeout": 60}})
    # Workers on several machines: a heartbeat lets the others fail (and retry) a dead machine's trial.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return database_storage(spec, heartbeat_interval=heartbeat, grace_period=grace_period,
                                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                                    max_retry=2))


def database_storage(url: str, attempts: int = 5, **kwargs) -> optuna.storages.RDBStorage:
    """RDBStorage on a database server. Workers started together on a fresh database race to create Optuna's
    tables (optuna/optuna#1092: "duplicate key ... pg_type_typname_nsp_index"); a loser retries and finds them made.
    A URL that cannot be used is a ConfigError naming it (password hidden)."""
    import sqlalchemy
    try:
        shown = sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        raise ConfigError(f"tune.storage={url!r} is not a database URL (e.g. postgresql://user:pw@host/optuna), "
                          f"journal or null") from None
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(1 + attempt)  # another worker is creating the tables
        except sqlalchemy.exc.OperationalError as e:
            reason = str(e.orig or e).strip().splitlines()[0]
            raise ConfigError(f"tune.storage={shown}: cannot connect ({reason})") from None
        except (ImportError, sqlalchemy.exc.NoSuchModuleError) as e:
            raise ConfigError(f"tune.storage={shown}: no driver for it ({e}); PostgreSQL's is in requirements.txt "
                              f"(psycopg[binary])") from None


def create_pruner(settings: DictConfig, steps_per_trial: int) -> optuna.pruners.BasePruner:
    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=settings.startup_trials,
                                           n_warmup_steps=settings.warmup_steps)
    if settings.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(steps_per_trial, 1))
    if settings.pruner == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"tune.pruner must be median, hyperband or none, got {settings.pruner!r}")


def retry_dead_trials(study: optuna.Study) -> None:
    """A trial left RUNNING by a process of this machine that no longer exists (killed) is marked failed, and its
    parameters are queued again under its run folder name, so the next trial picks up its training. A trial of
    another machine is failed and queued by Optuna once its heartbeat is older than tune.grace_period (database
    storages): done here too, before the trials are counted, else a dead machine's trial keeps the study "full"."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # nothing to do without a heartbeat (SQLite, journal)
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("host") != host or _alive(t.user_attrs.get("pid")):
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError):  # another worker failed it first and queued the retry
            continue
        print(f"trial {t.number} ({t.user_attrs.get('run_name')}) was killed with its process; queued for retry")
        study.enqueue_trial(t.params, user_attrs={"run_name": t.user_attrs["run_name"], "retry_of": t.number})


def _alive(pid) -> bool:
    if pid is None:
        return True  # the trial has not said whose it is yet: assume its worker is alive
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a process of another user holds that pid
    return True


def report_study(study: optuna.Study, study_dir: Path, folds: list[int], metric_name: str,
                 competition: str) -> None:
    """trials.csv, best.yaml (the best parameters and tuned_on_folds: the folds that chose them) and the plots;
    print the best trial and how to train with it."""
    trials = study.get_trials(deepcopy=False)
    if trials:
        write_csv(study.trials_dataframe(), study_dir / "trials.csv")
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    states = {s.name.lower(): n for s in TrialState if (n := sum(t.state == s for t in trials))}
    print(f"study {study.study_name!r}: {', '.join(f'{n} {s}' for s, n in states.items()) or 'no trials'}")
    if not complete:
        print("no completed trial yet: no best.yaml, no plots")
        return
    best = study.best_trial
    params = OmegaConf.create({})
    for key, value in best.params.items():
        OmegaConf.update(params, key, value)
    params.tuned_on_folds = folds  # a run trained with it reports its CV on the other folds apart
    best_path = study_dir / "best.yaml"
    with atomic_path(best_path) as tmp:
        tmp.write_text(f"# Best of study {study.study_name!r}: trial {best.number} "
                       f"({best.user_attrs.get('run_name')}), {metric_name} {best.value:.5f} on folds "
                       f"{folds}.\n"
                       f"# Train with it: make {competition}-train ARGS=\"experiment={best_path}\"\n"
                       + OmegaConf.to_yaml(params))
    save_plots(study, study_dir / "plots", len(complete))
    print(f"best trial {best.number} ({best.user_attrs.get('run_name')}): {metric_name} {best.value:.5f} "
          f"{best.params}\nbest parameters: {best_path}  ->  make {competition}-train "
          f"ARGS=\"experiment={best_path}\"")


def save_plots(study: optuna.Study, plots_dir: Path, n_complete: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    plots = {"history": vis.plot_optimization_history}
    if n_complete >= 2:  # importance and parallel coordinates compare trials: they need two at least
        plots.update(param_importances=vis.plot_param_importances, parallel_coordinate=vis.plot_parallel_coordinate)
    else:
        print("parameter importance and parallel coordinates need 2 completed trials; drawn on a later run")
    plots_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # optuna's matplotlib plots are "experimental"; a flat axis warns: noise
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)
        for name, plot in plots.items():
            ax = plot(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure()
            fig.set_size_inches(10, 6)
            fig.tight_layout()
            with atomic_path(plots_dir / f"{name}.png") as tmp:
                fig.savefig(tmp, format="png", dpi=100)
            plt.close(fig)
    print(f"plots: {plots_dir}")


# ---- the dashboard -----------------------------------------------------------------------------------
def dashboard(task: Task, study_name: str, storage: str | None = None, runs_dir: str = "runs",
              host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve optuna-dashboard for a study until interrupted. storage: as tune.storage (null: the study's SQLite,
    or its journal when only that exists)."""
    from optuna_dashboard import run_server
    study_dir = Path(runs_dir) / task.name / study_name
    if storage is None and not (study_dir / "study.db").is_file() and (study_dir / "journal.log").is_file():
        storage = "journal"
    if storage is None and not (study_dir / "study.db").is_file():
        raise NotFound(f"no study at {study_dir} (study.db or journal.log); run make {task.name}-tune RUN={study_name}"
                       f" first, or pass storage=<URL>")
    print(f"optuna-dashboard for study {study_name!r}: http://{host}:{port}/  (Ctrl-C stops it)", flush=True)
    run_server(create_storage(storage, study_dir), host=host, port=port)
