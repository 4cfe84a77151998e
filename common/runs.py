"""Run folders: runs/<competition>/<run>/ holds everything a run produced.

    config.yaml      resolved config            folds.csv     id, fold (-1: in no fold)
    classes.json     prediction columns         oof.csv       id, fold, target, <prediction columns>
    metrics.json     {"metric", "greater_is_better", "cv", "cv_last", "folds": [...], ...}
    threshold.json   the cut tuned on OOF (binary tasks scored on labels); submit uses it
    class_bias.json  per-class biases tuned on OOF (multiclass tasks scored on labels, class_bias=true); submit too
    blend.json       a blend's recipe (runs, weights, rank); a blend has no fold folders
    fold<k>/         model.safetensors or model.joblib (best), fitted fold state, last/ (resume state),
                     oof.csv (best epoch), oof_last.csv (last epoch), history.csv, done.json
    plots/           learning curves, confusion matrix / OOF scatter / ROC, Grad-CAM
    test_preds.csv   id, <prediction columns> (after infer)
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from common.config import config_diff, merge_checked, override_config, to_yaml, upgrade
from common.errors import ConfigError, NotFound
from common.io import atomic_path, read_json, write_json

LAST_OOF = "oof_last.csv"  # a fold's OOF predictions at its last evaluation (oof.csv: at its best)


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
                raise NotFound(f"no finished run in {parent}; train one first (make {competition}-train)")
            run = cls(finished[-1].parent)
            print(f"using the latest finished run: {run.dir}")
            return run
        run = cls(parent / run_name)
        if not run.config_path.is_file():
            known = sorted(p.parent.name for p in parent.glob("*/config.yaml"))
            raise NotFound(f"run {run.dir} not found; runs in {parent}: {', '.join(known) or 'none'}")
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
    threshold_path = property(lambda self: self.dir / "threshold.json")
    class_bias_path = property(lambda self: self.dir / "class_bias.json")
    blend_path = property(lambda self: self.dir / "blend.json")
    plots_dir = property(lambda self: self.dir / "plots")

    def fold_dir(self, fold: int) -> Path:
        return self.dir / f"fold{fold}"

    def checkpoint(self, fold: int) -> Path:
        return self.fold_dir(fold) / "model.safetensors"

    def config(self, overrides: Mapping | list[str] | None = None) -> DictConfig:
        """The run's resolved config in today's key names (old runs keep loading), with overrides on top
        (test_file, out, tta, batch_size, data_dir ...: any key the run has), a mapping or key=value strings."""
        cfg = upgrade(OmegaConf.load(self.config_path))
        return merge_checked(cfg, override_config(overrides), f"overrides for run {self.dir}")

    def threshold(self) -> float | None:
        """The decision cut tuned on this run's OOF (binary tasks scored on labels); None: 0.5 / not thresholded."""
        return read_json(self.threshold_path)["threshold"] if self.threshold_path.is_file() else None

    def class_bias(self) -> np.ndarray | None:
        """Per-class biases on the log-probabilities, tuned on this run's OOF, in classes.json order; None: argmax."""
        if not self.class_bias_path.is_file():
            return None
        saved = read_json(self.class_bias_path)["bias"]
        return np.array([saved[c] for c in self.classes()], dtype=float)

    def save_decision(self, threshold: float | None, class_bias: np.ndarray | None, tuned_on: str) -> None:
        """threshold.json and class_bias.json as tuned this time; one not tuned now is removed, so submit never
        applies a rule that no longer matches the OOF."""
        if threshold is not None:
            write_json({"threshold": threshold, "tuned_on": tuned_on}, self.threshold_path)
        else:
            self.threshold_path.unlink(missing_ok=True)
        if class_bias is not None:
            bias = {c: round(float(b), 4) for c, b in zip(self.classes(), class_bias)}
            write_json({"bias": bias, "tuned_on": tuned_on}, self.class_bias_path)
        else:
            self.class_bias_path.unlink(missing_ok=True)

    def blend_spec(self) -> dict | None:
        """A blend's recipe (runs, weights, rank); None for a trained run. Blends made before blend.json kept it
        in metrics.json."""
        if self.blend_path.is_file():
            return read_json(self.blend_path)
        return self.metrics().get("ensemble") if self.metrics_path.is_file() else None

    def classes(self) -> list[str]:
        return read_json(self.classes_path)

    def metrics(self) -> dict:
        return read_json(self.metrics_path)

    def finished_folds(self) -> list[int]:
        return sorted(int(p.parent.name[4:]) for p in self.dir.glob("fold*/done.json"))
