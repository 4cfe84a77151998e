"""Experiment trackers (Accelerate's): none, TensorBoard, MLflow or W&B, chosen by the `tracker` key. The trainer
logs the resolved config once, losses, learning rate and scores as they come, and the CV at the end."""
from __future__ import annotations

import os
from pathlib import Path

from accelerate import Accelerator
from omegaconf import DictConfig, OmegaConf

from common.errors import ConfigError
from common.runs import Run
from common.task import Task

TRACKERS = ("none", "tensorboard", "mlflow", "wandb")


def start_tracking(accelerator: Accelerator, task: Task, cfg: DictConfig, run: Run) -> None:
    """Accelerate's trackers: the resolved config now, losses and scores as they come (accelerator.log)."""
    tracker = cfg.get("tracker", "none")
    if tracker == "none":
        return
    init_kwargs = {}
    if tracker == "tensorboard":  # event files in runs/<c>/<run>/tensorboard/<c>/
        accelerator.project_configuration.logging_dir = str(run.dir / "tensorboard")
    elif tracker == "mlflow":
        import mlflow
        mlflow.set_tracking_uri(cfg.tracker_uri or f"sqlite:///{(run.dir / 'mlflow.db').resolve()}")
        init_kwargs["mlflow"] = {"run_name": run.name, "logging_dir": str((run.dir / "mlartifacts").resolve())}
    elif tracker == "wandb":
        init_kwargs["wandb"] = {"name": run.name, "dir": str(run.dir)}
    accelerator.init_trackers(task.name, config=flat_config(cfg), init_kwargs=init_kwargs)


def require_wandb() -> None:
    """W&B only when the user has set it up: the package, and a key (or an offline mode)."""
    import importlib.util
    if importlib.util.find_spec("wandb") is None:
        raise ConfigError("tracker=wandb needs the wandb package: pip install wandb, then wandb login "
                          "(or use tracker=tensorboard / tracker=mlflow, which work offline)")
    netrc = Path.home() / ".netrc"
    logged_in = os.environ.get("WANDB_API_KEY") or (netrc.is_file() and "api.wandb.ai" in netrc.read_text())
    if not logged_in and os.environ.get("WANDB_MODE") not in ("offline", "disabled"):
        raise ConfigError("tracker=wandb: no W&B login found; run `wandb login` (or set WANDB_API_KEY, or "
                          "WANDB_MODE=offline to log into the run folder)")


def flat_config(cfg: DictConfig) -> dict:
    """The resolved config as the flat scalar values trackers store (TensorBoard's hparams, MLflow's params)."""
    out = {}

    def walk(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    walk(OmegaConf.to_container(cfg, resolve=True))
    return out
