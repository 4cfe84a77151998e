"""Kill tests, as a process would really die: SIGKILL (no handler, no `finally`, no flush) of real kit processes
(`python -m tests.toykit toy <command>`, the toy competition of tests/toykit.py; its MLP has dropout, so a resume
must restore the RNG exactly), at points drawn from seeds.

- train: killed at a random optimizer step, in the middle of a random file write, and half-way through deleting
  an old checkpoint; the same command re-run each time. The end: the same oof.csv, metrics, histories and fold
  weights, bit for bit, as an uninterrupted run of the same command.
- infer, submit, ensemble, push: killed in the middle of a file write. No final path ever holds a half-written
  file (every file there is byte-identical to what the finished command writes); the re-run completes.
"""
import builtins
import io
import json
import random
import re
import shutil
import socket
from pathlib import Path

import pandas as pd
import pytest
import torch

from common import cli
from tests import toykit

TRAIN = ["toy", "train", "folds=2", "epochs=2", "checkpoint_every=2"]  # 6 steps an epoch, 12 a fold, 24 a run
KILLED = -9  # a subprocess' return code after SIGKILL
# (seed, what): the kill points of the chain, each drawn from its own seed.
CHAIN = [(1, "step"), (2, "rmtree"), (3, "write")]
RANGES = {"step": (2, 9), "rmtree": (1, 2), "write": (1, 8)}
TEMP_DIRS = {"last.tmp", ".build.tmp", ".old.tmp", ".backbone.tmp"}


def is_temp(path: Path) -> bool:
    """Where a killed write may leave something: atomic_path's .<name>.<random>.tmp and the staging folders. No
    step reads these."""
    return (path.name.startswith(".") and path.name.endswith(".tmp")) or bool(TEMP_DIRS & set(path.parts))


def final_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not is_temp(p.relative_to(root))
            and p.relative_to(root).parts[0] in ("runs", "submissions")}


def final_name(path: str) -> str:
    """The path an atomic write renames its temp file to: a/.b.csv.x1y2.tmp -> a/b.csv."""
    return re.sub(r"(^|/)\.([^/]+)\.[^./]+\.tmp$", r"\1\2", path)


def dying_file(log: Path) -> str:
    """The file the killed process was writing (the last one it opened for writing)."""
    return log.read_text().splitlines()[-1].split(" ", 1)[1]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """The toy data, an uninterrupted run `ref` and a run `k` of the same command killed three times, then
    completed. Yields (workdir, [(seed, kill spec, return code, output)], final output)."""
    workdir = tmp_path_factory.mktemp("kills")
    data = toykit.make_data(workdir / "data")
    ref = toykit.run(workdir, *TRAIN, f"data_dir={data}", "run_name=ref")
    assert ref.returncode == 0, ref.stdout[-3000:]
    kills = []
    for seed, what in CHAIN:
        spec = f"{what}:{random.Random(seed).randint(*RANGES[what])}"
        killed = toykit.run(workdir, *TRAIN, f"data_dir={data}", "run_name=k", KIT_KILL=spec)
        kills.append((seed, spec, killed.returncode, killed.stdout))
    final = toykit.run(workdir, *TRAIN, f"data_dir={data}", "run_name=k")
    yield workdir, kills, final


def test_training_killed_at_random_points_resumes_to_the_same_oof_bit_for_bit(chain):
    workdir, kills, final = chain
    for seed, spec, rc, out in kills:
        assert rc == KILLED, f"seed {seed}: KIT_KILL={spec} did not kill the run (exit {rc}):\n{out[-3000:]}"
    assert final.returncode == 0, final.stdout[-3000:]
    resumed = [out for _, _, _, out in kills[1:]] + [final.stdout]
    assert all("resuming after" in out for out in resumed), "every re-run resumed from a checkpoint"
    assert any("resuming after batch" in out for out in resumed), "at least one resumed mid-epoch"

    ref, k = workdir / "runs/toy/ref", workdir / "runs/toy/k"
    assert (k / "oof.csv").read_bytes() == (ref / "oof.csv").read_bytes(), "OOF bit for bit"
    m_ref, m_k = json.loads((ref / "metrics.json").read_text()), json.loads((k / "metrics.json").read_text())
    assert (m_k["cv"], m_k["cv_last"], m_k["folds"], m_k["best_epochs"]) == (
        m_ref["cv"], m_ref["cv_last"], m_ref["folds"], m_ref["best_epochs"])
    for fold in (0, 1):
        history_k, history_ref = (pd.read_csv(r / f"fold{fold}/history.csv") for r in (k, ref))
        assert (history_k["elapsed_s"] > 0).all() and history_k["elapsed_s"].is_monotonic_increasing
        clock = ["elapsed_s", "eval_s"]
        pd.testing.assert_frame_equal(history_k.drop(columns=clock), history_ref.drop(columns=clock),
                                      check_exact=True)  # everything but the wall clock, bit for bit
        assert (k / f"fold{fold}/model.safetensors").read_bytes() == (ref / f"fold{fold}/model.safetensors").read_bytes()
        assert (k / f"fold{fold}/oof_last.csv").read_bytes() == (ref / f"fold{fold}/oof_last.csv").read_bytes()
        assert not (k / f"fold{fold}/last").exists() and not (k / f"fold{fold}/last.old").exists()


@pytest.fixture
def tracked_writes(chain, monkeypatch):
    """In this process: cwd = the chain's workdir, every file opened for writing there logged (tests/toykit.py);
    returns a function that runs a kit command here and gives the paths it wrote."""
    workdir = chain[0]
    monkeypatch.chdir(workdir)
    saved = builtins.open, io.open, shutil._USE_CP_SENDFILE, socket.gethostname, torch.optim.AdamW.step
    log = workdir / "writes.log"
    monkeypatch.setenv("KIT_KILL_LOG", str(log))
    monkeypatch.delenv("KIT_KILL", raising=False)
    toykit.install_kill_hooks()

    def run(function, argv):
        log.unlink(missing_ok=True)
        function(toykit.ToyTask(), argv)
        return [final_name(line.split(" ", 1)[1]) for line in log.read_text().splitlines()] if log.is_file() else []
    yield run
    builtins.open, io.open, shutil._USE_CP_SENDFILE, socket.gethostname, torch.optim.AdamW.step = saved


def kill_mid_write(workdir: Path, n: int, *args: str) -> str:
    """Run a toy command that dies in the middle of its n-th file write; the file it was writing."""
    log = workdir / "kill.log"
    log.unlink(missing_ok=True)
    killed = toykit.run(workdir, "toy", *args, KIT_KILL=f"write:{n}", KIT_KILL_LOG=str(log))
    assert killed.returncode == KILLED, f"write {n} of {args} did not kill it:\n{killed.stdout[-3000:]}"
    dying = dying_file(log)
    assert is_temp(Path(dying)), f"killed while writing {dying}, a path later steps read"
    assert (workdir / dying).stat().st_size > 0, "half of the write reached the disk"
    return dying


def test_infer_and_submit_killed_mid_write_leave_no_half_written_file(chain, tracked_writes):
    workdir = chain[0]
    preds = workdir / "runs/toy/ref/test_preds.csv"
    before = final_files(workdir)
    kill_mid_write(workdir, 1, "infer", "run_name=ref")  # its one write: test_preds.csv
    assert final_files(workdir) == before and not preds.exists()
    assert tracked_writes(cli.infer, ["run_name=ref"]) == ["runs/toy/ref/test_preds.csv"]
    assert len(pd.read_csv(preds)) == 24

    before = final_files(workdir)
    kill_mid_write(workdir, 1, "submit", "run_name=ref")  # test_preds.csv exists: its one write is the submission
    assert final_files(workdir) == before and not (workdir / "submissions/toy/ref.csv").exists()
    assert tracked_writes(cli.submit, ["run_name=ref"]) == ["submissions/toy/ref.csv"]
    assert len(pd.read_csv(workdir / "submissions/toy/ref.csv")) == 24


@pytest.mark.parametrize("seed", [4])
def test_ensemble_and_push_killed_mid_write_leave_only_complete_files(chain, tracked_writes, seed):
    """Counted in this process on other targets, killed at a write drawn from the seed, finished in this process:
    every file the killed process left at a final path is byte-identical to the finished command's."""
    workdir, rng = chain[0], random.Random(seed)
    n = len([p for p in tracked_writes(cli.ensemble, ["runs=ref k", "run_name=count"]) if "/count/" in p])
    before_kill = final_files(workdir)
    kill_mid_write(workdir, rng.randint(1, n), "ensemble", "runs=ref k", "run_name=blend")
    after_kill = final_files(workdir)
    tracked_writes(cli.ensemble, ["runs=ref k", "run_name=blend"])
    finished = final_files(workdir)
    assert set(after_kill) - set(before_kill), "the killed blend had written something"
    for path, content in after_kill.items():
        assert finished[path] == content, f"{path}: left by the killed ensemble, not what it writes"
    assert (workdir / "runs/toy/blend/test_preds.csv").is_file()

    push = ["run_name=blend", "dry_run=true", "kaggle.wheels=[]", "kaggle.owner=me"]
    n = len(tracked_writes(cli.push, [*push, "out=count-push"]))  # kit code, runs, metadata: ~50 files
    before_kill = final_files(workdir)
    kill_mid_write(workdir, rng.randint(1, n), "push", *push)
    after_kill = final_files(workdir)
    assert after_kill == before_kill, "nothing of a killed push is in runs/toy/blend/kaggle/{dataset,kernel}"
    tracked_writes(cli.push, push)
    bundle = workdir / "runs/toy/blend/kaggle"
    assert sorted(p.name for p in bundle.iterdir()) == ["dataset", "kernel"], "staging folders cleaned up"
    assert not [p for p in bundle.rglob("*") if p.name.endswith(".tmp")], "no leftover of a killed write bundled"
    assert json.loads((bundle / "kernel/kernel-metadata.json").read_text())["dataset_sources"] == ["me/toy-blend-kit"]
