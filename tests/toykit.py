"""A toy competition and kill hooks for tests that run the kit in real subprocesses (kills, PostgreSQL workers,
multi-node torchrun). Pure torch, a second per run.

    python -m tests.toykit toy <command> [--config X] key=value ...     the toy competition, every kit command
    python -m tests.toykit <competition> <command> key=value ...        a real competition (python -m competitions)

Both go through competitions.__main__.main (a UserError: one line, exit 2). With KIT_KILL set, the process kills
itself with SIGKILL, as a process would really die (no handler, no `finally`, no flush):
    KIT_KILL=step:N   just before the N-th optimizer step (counted over the whole process)
    KIT_KILL=write:N  in the middle of the N-th file opened for writing under the working directory: half of the
                      first write reaches the disk, then SIGKILL
    KIT_KILL=rmtree:N in the N-th shutil.rmtree of a folder under the working directory, one file deleted
KIT_KILL_LOG=path appends one line per file opened for writing there (the count a test picks N from).
KIT_HOSTNAME=name makes the process report another host name (a worker "on another machine" for tune).
"""
from __future__ import annotations

import builtins
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from common.errors import DataError
from common.task import TARGET, Task, read_frame

N_FEATURES = 6
HERE = Path(__file__).resolve().parent


def make_data(root: Path, n: int = 96, n_test: int = 24, seed: int = 0) -> Path:
    """train.csv (id, x0..x5, y), test.csv, sample_submission.csv: y = a noisy linear function of the x's."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    w = rng.normal(size=N_FEATURES)
    for name, rows, offset in (("train.csv", n, 0), ("test.csv", n_test, n)):
        x = rng.normal(size=(rows, N_FEATURES))
        df = pd.DataFrame(x, columns=[f"x{i}" for i in range(N_FEATURES)])
        df.insert(0, "id", [f"r{offset + i}" for i in range(rows)])
        if name == "train.csv":
            df["y"] = x @ w + rng.normal(scale=0.5, size=rows)
        df.to_csv(root / name, index=False, float_format="%.6f")
    pd.DataFrame({"id": [f"r{n + i}" for i in range(n_test)], "y": 0.0}).to_csv(root / "sample_submission.csv",
                                                                               index=False)
    return root


class ToyModel(nn.Module):
    def __init__(self, dropout: float):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(N_FEATURES, 32), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return self.head(self.backbone(x))


class ToyTask(Task):
    """Regression on six numbers, scored by Pearson; an MLP with dropout (so resume must restore the RNG)."""
    name, kind, metric, id_column, target_column = "toy", "regression", "pearson", "id", "y"
    config_path = HERE / "toy.yaml"
    config_defaults = {
        "mlp_dropout": 0.2,  # inside the MLP; 0 for runs compared across process counts
        "step_sleep": 0.0,   # seconds of sleep per training batch: a trial that lasts (two tune workers share them)
    }

    def load_train(self, cfg):
        path = self.data_dir(cfg) / "train.csv"
        df = read_frame(path, ["id", *self.features_of(), "y"], id_column="id")
        if df["y"].isna().any():
            raise DataError(f"{path}: column 'y' is empty at data row {int(df['y'].isna().to_numpy().argmax()) + 1}")
        return df

    def load_test(self, cfg, path):
        return read_frame(Path(path), ["id", *self.features_of()], id_column="id")

    @staticmethod
    def features_of() -> list[str]:
        return [f"x{i}" for i in range(N_FEATURES)]

    def dataset(self, cfg, df, mode, ctx):
        x = torch.tensor(df[self.features_of()].to_numpy(), dtype=torch.float32)
        y = torch.tensor(df[TARGET].to_numpy(), dtype=torch.float32) if TARGET in df else None
        return [{"x": x[i], "index": i, **({"target": y[i]} if y is not None else {})} for i in range(len(df))]

    def build_model(self, cfg, n_outputs, ctx, pretrained):
        return ToyModel(cfg.mlp_dropout)

    def train_loss(self, cfg, model, batch, loss_fn):
        if cfg.step_sleep:
            time.sleep(cfg.step_sleep)
        return super().train_loss(cfg, model, batch, loss_fn)


# ---- running it ---------------------------------------------------------------------------------------------
def command_env(**extra: str) -> dict:
    """The environment of a kit subprocess in tests: the repository importable, one thread, no hub downloads."""
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("KIT_KILL", None)
    return {**env, **extra}


def popen(cwd: Path, *args: str, **env: str) -> subprocess.Popen:
    """python -m tests.toykit <args> in cwd (output captured, stderr into stdout); env: extra variables."""
    return subprocess.Popen([sys.executable, "-m", "tests.toykit", *args], cwd=cwd, env=command_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run(cwd: Path, *args: str, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.toykit", *args], cwd=cwd, env=command_env(**env),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


# ---- kill hooks --------------------------------------------------------------------------------------------
def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _DyingFile:
    """A file that writes half of its first write, flushes it to the disk and kills the process."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(data[: max(len(data) // 2, 1)])
        self._f.flush()
        os.fsync(self._f.fileno())
        _die()

    def close(self):  # nothing was written through write() (e.g. an empty file): die before closing
        _die()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def install_kill_hooks() -> None:
    spec, log = os.environ.get("KIT_KILL", ""), os.environ.get("KIT_KILL_LOG")
    if os.environ.get("KIT_HOSTNAME"):
        socket.gethostname = lambda: os.environ["KIT_HOSTNAME"]
    what, _, n = spec.partition(":")
    target = int(n) if n else None
    if what == "step":
        original = torch.optim.AdamW.step
        count = {"n": 0}

        def step(self, *args, **kwargs):
            count["n"] += 1
            if count["n"] == target:
                _die()
            return original(self, *args, **kwargs)
        torch.optim.AdamW.step = step
    if what == "rmtree":
        real_rmtree, count_rm = shutil.rmtree, {"n": 0}

        def rmtree(path, *args, **kwargs):
            path = Path(path)
            if path.is_dir() and Path.cwd().resolve() in path.resolve().parents:
                count_rm["n"] += 1
                if count_rm["n"] == target:  # delete one file of it, then die: a half-deleted folder
                    next((f.unlink() for f in sorted(path.rglob("*")) if f.is_file()), None)
                    _die()
            return real_rmtree(path, *args, **kwargs)
        shutil.rmtree = rmtree
    if what == "write" or log:
        shutil._USE_CP_SENDFILE = False  # copies go through write() too, so they can die half-way
        real_open, cwd, count = builtins.open, Path.cwd().resolve(), {"n": 0}

        def tracked_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
                path = Path(file).resolve()
                if cwd in path.parents:
                    count["n"] += 1
                    if log:
                        with real_open(log, "a") as out:
                            out.write(f"{count['n']} {path.relative_to(cwd)}\n")
                    if what == "write" and count["n"] == target:
                        return _DyingFile(f)
            return f
        builtins.open = io.open = tracked_open


def main(argv: list[str]) -> None:
    install_kill_hooks()
    import competitions.__main__ as kit
    real_load = kit.load_task
    kit.load_task = lambda name: ToyTask() if name == "toy" else real_load(name)
    kit.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
