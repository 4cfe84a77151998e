"""Multi-node data parallel on loopback: two `torchrun --nnodes 2 --nproc_per_node 1` launchers (c10d rendezvous,
gloo on the CPU, as Accelerate picks it in common/trainer.py create_accelerator) train one run of the toy
competition in one run folder (one machine here: the shared filesystem a real cluster needs). Its OOF has every row
exactly once and matches a single-process run of the same global batch within 1e-5."""
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests import toykit

# No dropout (the two set-ups draw different masks); 48 training rows a fold: 6 steps of 8 rows in one process,
# 6 steps of 2 x 4 rows (the same rows: Accelerate deals the batches of 4 out in turn) in two.
# fp32: bf16 (what precision=auto picks on a CPU that has it) rounds differently under each layout.
COMMON = ["folds=2", "epochs=2", "mlp_dropout=0.0", "precision=fp32"]
TOLERANCE = 1e-5  # absolute, on predictions of targets with std ~2: the two differ only in float summation order


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_torchrun_nodes_train_one_run_matching_a_single_process(workdir):
    data = toykit.make_data(workdir / "data")
    single = toykit.run(workdir, "toy", "train", f"data_dir={data}", *COMMON, "batch_size=8", "run_name=single")
    assert single.returncode == 0, single.stdout[-3000:]

    torchrun = Path(sys.executable).with_name("torchrun")
    port, job = free_port(), f"toy-{uuid.uuid4().hex[:8]}"
    launch = [str(torchrun), "--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d",
              "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", job, "--rdzv-conf", "join_timeout=180,read_timeout=300",
              "-m", "tests.toykit", "toy", "train", f"data_dir={data}", *COMMON, "batch_size=4", "run_name=nodes"]
    nodes = [subprocess.Popen(launch, cwd=workdir, env=toykit.command_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True) for _ in range(2)]
    try:
        outputs = [n.communicate(timeout=480)[0] for n in nodes]
    finally:
        for n in nodes:  # a launcher left waiting for its peer: end it and its worker
            if n.poll() is None:
                os.killpg(n.pid, signal.SIGKILL)
    # both launchers' output: the one that crashed may not be the one that reports the failure
    assert all(n.returncode == 0 for n in nodes), "\n---- next launcher ----\n".join(o[-6000:] for o in outputs)
    assert sum(out.count("CV pearson") for out in outputs) == 1, "only the main process (rank 0) reports"

    ref = pd.read_csv(workdir / "runs/toy/single/oof.csv")
    ddp = pd.read_csv(workdir / "runs/toy/nodes/oof.csv")
    assert len(ddp) == 96 and ddp["id"].is_unique and set(ddp["id"]) == set(ref["id"]), "every row exactly once"
    assert ddp["pred"].notna().all()
    assert (ddp[["id", "fold", "target"]] == ref[["id", "fold", "target"]]).all().all()
    gap = np.abs(ddp["pred"].to_numpy() - ref["pred"].to_numpy()).max()
    assert gap < TOLERANCE, f"largest OOF difference to one process: {gap:.2e}"
    cv = [json.loads((workdir / f"runs/toy/{r}/metrics.json").read_text())["cv"] for r in ("single", "nodes")]
    assert cv[0] == pytest.approx(cv[1], abs=TOLERANCE)
    print(f"two nodes vs one process: max |OOF difference| {gap:.2e}, CV {cv[1]:.6f} vs {cv[0]:.6f}")
