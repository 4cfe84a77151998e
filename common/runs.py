"""Run folders: runs/<competition>/<run>/ holds everything a run produced.

    config.yaml      resolved config            folds.csv     id, fold
    classes.json     prediction columns         oof.csv       id, fold, target, <prediction columns>
    metrics.json     {"metric", "greater_is_better", "cv", "folds": [...]}
    fold<k>/         model.safetensors (best), last/ (resume state), history.csv, done.json
    plots/           learning curves, confusion matrix / OOF scatter / ROC, Grad-CAM
    test_preds.csv   id, <prediction columns> (after infer)
"""
from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from common.config import ConfigError, config_diff, to_yaml
from common.io import atomic_path, read_json


class Run:
    def __init__(self, path: Path):
        self.dir = Path(path)

    # ---- creating and finding runs --------------------------------------------------------------
    @classmethod
    def create(cls, competition: str, cfg: DictConfig, is_main: bool = True) -> "Run":
        """Create runs/<competition>/<run_name>/ and save the resolved config. An existing run with the same
        config is resumed; one with a different config is refused (say which keys differ)."""
        if not cfg.run_name:
            cfg.run_name = time.strftime("%Y%m%d-%H%M%S")
        run = cls(Path(cfg.runs_dir) / competition / cfg.run_name)
        if run.config_path.is_file():
            diff = config_diff(run.config(), cfg)
            if diff:
                raise ConfigError(f"run {run.dir} exists with a different config ({'; '.join(diff)}). "
                                  f"Resume it with the same settings, or choose another RUN= / run_name=.")
        elif is_main:
            run.dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(run.config_path) as tmp:
                tmp.write_text(to_yaml(cfg))
        return run

    @classmethod
    def open(cls, competition: str, run_name: str | None, runs_dir: str = "runs") -> "Run":
        """An existing run by name; without a name, the latest finished one."""
        parent = Path(runs_dir) / competition
        if not run_name:
            finished = sorted(parent.glob("*/metrics.json"), key=lambda p: p.stat().st_mtime)
            if not finished:
                raise FileNotFoundError(f"no finished run in {parent}; train one first (make {competition}-train)")
            run = cls(finished[-1].parent)
            print(f"using the latest finished run: {run.dir}")
            return run
        run = cls(parent / run_name)
        if not run.config_path.is_file():
            known = sorted(p.parent.name for p in parent.glob("*/config.yaml"))
            raise FileNotFoundError(f"run {run.dir} not found; runs in {parent}: {', '.join(known) or 'none'}")
        return run

    # ---- paths ----------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.dir.name

    config_path = property(lambda self: self.dir / "config.yaml")
    folds_path = property(lambda self: self.dir / "folds.csv")
    classes_path = property(lambda self: self.dir / "classes.json")
    oof_path = property(lambda self: self.dir / "oof.csv")
    metrics_path = property(lambda self: self.dir / "metrics.json")
    test_preds_path = property(lambda self: self.dir / "test_preds.csv")
    plots_dir = property(lambda self: self.dir / "plots")

    def fold_dir(self, fold: int) -> Path:
        return self.dir / f"fold{fold}"

    def checkpoint(self, fold: int) -> Path:
        return self.fold_dir(fold) / "model.safetensors"

    def config(self) -> DictConfig:
        cfg = OmegaConf.load(self.config_path)
        OmegaConf.set_struct(cfg, True)
        return cfg

    def classes(self) -> list[str]:
        return read_json(self.classes_path)

    def metrics(self) -> dict:
        return read_json(self.metrics_path)

    def finished_folds(self) -> list[int]:
        return sorted(int(p.parent.name[4:]) for p in self.dir.glob("fold*/done.json"))
