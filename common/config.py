"""Config: the engine's defaults <- a task family's and the competition's declared keys <- config.yaml <- experiment
YAML <- key=value overrides.

Everything is OmegaConf. Every key is declared with a default before any file is read, and the merged config is in
struct mode, so a misspelt key, in config.yaml, an experiment or on the command line, is an error that names the
file and the key, with the closest valid key, instead of being silently ignored.
"""
from __future__ import annotations

import argparse
import difflib
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from common.errors import ConfigError

# Keys every competition understands (the interface contract of DESIGN.md), with a comment on each default.
ENGINE_DEFAULTS = {
    "data_dir": None,           # folder with the organisers' raw files; null -> data/<competition>
    "run_name": None,           # runs/<competition>/<run_name>; null -> a timestamp. Re-use a name to resume.
    "runs_dir": "runs",         # parent of every run folder
    "experiment": None,         # name of a YAML in the competition's experiments/ (or a path) merged over config.yaml
    "seed": 42,                 # training seed: initialisation, shuffling, dropout, augmentation
    "fold_seed": 42,            # the split's own seed: runs that differ only in `seed` share folds (seed averaging)
    "folds_from": None,         # copy folds.csv from this run (a name under runs/<competition>/ or a path)
    "folds": 5,                 # K of K-fold
    "train_folds": None,        # which folds to train, e.g. [0] or [0,2]; null -> all
    "epochs": 3,
    "batch_size": 32,
    "grad_accum": 1,            # optimizer step every N batches
    "lr": 2e-5,                 # backbone learning rate
    "head_lr": None,            # head learning rate; null -> lr
    "weight_decay": 0.01,
    "optimizer": "adamw",       # adamw | adam (Adam = AdamW with weight_decay 0)
    "scheduler": "cosine",      # cosine | linear | constant (transformers' schedules, with warm-up)
    "warmup": 0.1,              # fraction of optimizer steps spent warming up
    "clip_grad": 1.0,           # max grad norm; null -> no clipping
    "eval_every": 0,            # evaluate every N optimizer steps as well as at epoch end; 0 -> epoch end only
    "checkpoint_every": 0,      # save resume state every N optimizer steps (mid-epoch resume); 0 -> epoch end only
    "patience": 0,              # early stopping after N evaluations without improvement; 0 -> off
    "model": None,
    "pretrained": True,         # pretrained weights that cannot be found are an error, never a silent random init
    "precision": "auto",        # auto | fp32 | bf16 | fp16 (Accelerate mixed precision); auto: bf16 where the CPU
                                # (avx512_bf16, AMX) or GPU computes it natively, else fp32; the run records its choice
    "compile": False,           # torch.compile the model's forward: faster steps on a GPU after a compile warm-up
    "limit": None,              # train on a sample of N rows (drawn with fold_seed: quick experiments, tests)
    "num_workers": 0,           # DataLoader worker processes (one thread each)
    "num_threads": None,        # torch CPU threads of each process; null -> its share of the cores (common/threads.py)
    "tta": False,               # test-time augmentation at infer time (the task's views of each batch)
    "runtime": "torch",         # torch | onnx: predict (infer, submit, rescore, the Kaggle kernel) with each fold's
                                # network exported to ONNX and run by ONNX Runtime (docs/onnx.md)
    "quantize": None,           # null | int8: runtime=onnx with int8 weights (dynamic quantization; transformers)
    "test_file": None,          # infer: any CSV in the competition's test format; null -> the competition's test file
    "out": None,                # infer: where to write predictions in the submission's format
    "tracker": "none",          # none | tensorboard | mlflow | wandb: config, losses, lr and scores per fold, the CV
    "tracker_uri": None,        # mlflow: a tracking URI; null -> sqlite in the run folder (runs/<c>/<run>/mlflow.db)
    "tune": None,               # settings of `make <c>-tune` (common/tune.py); kept out of the trials' configs
    "tuned_on_folds": None,     # the folds a study scored to choose this config (its best.yaml says so); metrics.json
                                # then adds the CV over the other folds, which the choice never saw
    "kaggle": None,             # settings of `make <c>-push` (common/kaggle.py)
}

# Winners' training tricks (common/tricks.py), keys of every task, off by default.
TRICK_DEFAULTS = {
    "ema": 0.0,                     # EMA decay of the weights (0.999 is common); 0 -> off
    "layer_decay": None,            # e.g. 0.9: each backbone layer below the top learns 0.9x slower; null -> off
    "awp": 0.0,                     # AWP step size (adv_lr, 1.0 in the USPPPM / Feedback winners' code); 0 -> off
    "awp_eps": 1e-3,                # AWP: largest perturbation, relative to each weight's size
    "awp_start": 1,                 # AWP: first epoch it is applied
    "multi_sample_dropout": 0,      # N dropout masks averaged in the head while training; 0 or 1 -> off
    "gradient_checkpointing": False,  # trade compute for memory in the backbone (HF and timm backbones)
}


ENGINE_DEFAULTS.update(TRICK_DEFAULTS)

# Keys that may differ when an existing run is resumed or used for inference. train_folds among them: a run can be
# trained a few folds at a time (fold 0 first, the rest later or on another machine) and sums up every finished one.
RUNTIME_KEYS = {"num_workers", "num_threads", "test_file", "out", "tta", "data_dir", "image_dir", "runs_dir", "tune", "kaggle",
                "tracker", "tracker_uri", "train_folds", "class_bias", "runtime", "quantize"}

# Runs written before a key was renamed or added still load: old name -> new name, and the value that reproduces
# what those runs did (fold_seed: folds were drawn with the training seed).
RENAMED_KEYS = {"dropout": "head_dropout", "drop_rate": "backbone_dropout"}
ADDED_KEYS = {"fold_seed": lambda cfg: cfg.get("seed"), "folds_from": lambda cfg: None,
              "checkpoint_every": lambda cfg: 0, "tracker": lambda cfg: "none", "tracker_uri": lambda cfg: None,
              "num_threads": lambda cfg: None, "compile": lambda cfg: False, "tuned_on_folds": lambda cfg: None,
              "runtime": lambda cfg: "torch", "quantize": lambda cfg: None}
# Runs from before the tricks trained without them.
ADDED_KEYS.update({key: (lambda default: lambda cfg: default)(value) for key, value in TRICK_DEFAULTS.items()})
# Keys added to one family: (a key every run of the family has, the new key's value for its older runs).
FAMILY_ADDED_KEYS = {"query_expansion": ("encoder", 0)}  # pair-text runs scored without query expansion


def parse_args(argv: list[str] | None, description: str = "") -> argparse.Namespace:
    """--config (anywhere on the line), --submit, and key=value overrides."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=None, help="YAML config (default: the competition's config.yaml)")
    parser.add_argument("--submit", action="store_true", help="infer: also fill the sample submission")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. lr=1e-5 epochs=2")
    return parser.parse_intermixed_args(argv)


def override_config(overrides: Mapping | list[str] | None, source: str = "override") -> DictConfig:
    """Overrides as a DictConfig: key=value strings (the command line's, parsed here once) or a mapping
    ({"tta": True}, a DictConfig), taken as it is."""
    if isinstance(overrides, Mapping):
        return OmegaConf.create(dict(overrides))
    overrides = [o for o in (overrides or []) if o]
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"{source} {o!r} is not key=value")
    return OmegaConf.from_dotlist(overrides)


def command_section(name: str, defaults: dict, cfg: DictConfig, overrides: Mapping | None = None) -> DictConfig:
    """A command's settings (tune:, kaggle:): defaults <- the config's own `name:` section, where the competition
    has one <- overrides (the section's own keys: {"n_trials": 30}). Nested sections (tune.space) may take new
    keys; misspelt top keys fail."""
    settings = merge_checked(OmegaConf.create(defaults), OmegaConf.create(cfg.get(name) or {}),
                             f"the config's {name}: section")
    for value in settings.values():
        if isinstance(value, DictConfig):
            OmegaConf.set_struct(value, False)
    return merge_checked(settings, OmegaConf.create(dict(overrides or {})), f"{name}.* arguments")


def load_config(config_path: str | Path, overrides: Mapping | list[str] | None = None,
                experiments_dir: str | Path | None = None, defaults: dict | None = None) -> DictConfig:
    """ENGINE_DEFAULTS <- defaults (the task's declared keys) <- config_path <- experiment <- overrides."""
    config_path = Path(config_path)
    if not config_path.is_file():
        raise ConfigError(f"config file not found: {config_path}")
    cfg = OmegaConf.merge(OmegaConf.create(ENGINE_DEFAULTS), OmegaConf.create(defaults or {}))
    cfg = merge_checked(cfg, _load_yaml(config_path), str(config_path))
    dotlist = override_config(overrides)
    # An experiment YAML sits between config.yaml and the command line.
    experiment = dotlist.get("experiment", cfg.get("experiment"))
    if experiment:
        path = _experiment_path(experiment, experiments_dir or config_path.parent / "experiments")
        cfg = merge_checked(cfg, _load_yaml(path), str(path))
    return merge_checked(cfg, dotlist, "command line")


def _load_yaml(path: Path) -> DictConfig:
    try:
        loaded = OmegaConf.load(path)
    except Exception as e:  # YAML syntax
        raise ConfigError(f"{path}: not readable YAML ({e})") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of key: value, got a list")
    return loaded


def _experiment_path(name: str, experiments_dir: Path) -> Path:
    candidates = [Path(name), Path(experiments_dir) / name, Path(experiments_dir) / f"{name}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    available = sorted(p.stem for p in Path(experiments_dir).glob("*.yaml"))
    raise ConfigError(f"experiment {name!r} not found (looked for {', '.join(map(str, candidates))}); "
                      f"available: {', '.join(available) or 'none'}")


def merge_checked(cfg: DictConfig, other: DictConfig, source: str) -> DictConfig:
    """cfg <- other in struct mode: a key cfg does not declare is an error naming `source`, the key and the
    closest valid key. Sections declared as null (tune:, kaggle:) take any mapping."""
    OmegaConf.set_struct(cfg, True)
    try:
        merged = OmegaConf.merge(cfg, other)
    except ConfigKeyError as e:
        key = getattr(e, "full_key", None) or str(e)
        valid = sorted(_all_keys(cfg))
        close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"{source}: unknown config key {key!r}; {hint}valid keys: {', '.join(valid)}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{source}: {e}".splitlines()[0]) from None
    OmegaConf.set_struct(merged, True)
    return merged


def _all_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for k, v in cfg.items():
        keys.append(prefix + str(k))
        if isinstance(v, DictConfig):
            keys.extend(_all_keys(v, f"{prefix}{k}."))
    return keys


def upgrade(cfg: DictConfig) -> DictConfig:
    """A run's saved config in today's key names (RENAMED_KEYS, ADDED_KEYS), so old run folders keep loading."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for old, new in RENAMED_KEYS.items():
        if old in container and new not in container:
            container[new] = container.pop(old)
    for key, value in ADDED_KEYS.items():
        if key not in container:
            container[key] = value(container)
    for key, (family_key, value) in FAMILY_ADDED_KEYS.items():
        if family_key in container and key not in container:
            container[key] = value
    upgraded = OmegaConf.create(container)
    OmegaConf.set_struct(upgraded, True)
    return upgraded


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def config_diff(old: DictConfig, new: DictConfig, ignore=RUNTIME_KEYS) -> list[str]:
    """Human-readable differences between two configs, ignoring keys that may change between calls."""
    a = OmegaConf.to_container(old, resolve=True)
    b = OmegaConf.to_container(new, resolve=True)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k not in ignore and a.get(k) != b.get(k)]
