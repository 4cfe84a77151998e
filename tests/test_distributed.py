"""Two processes on the CPU (torchrun + Accelerate over gloo): exact OOF via gather_for_metrics."""
import subprocess
import sys
from pathlib import Path

import pandas as pd

from tests.conftest import REPO, shared_data


def test_torchrun_two_processes_give_one_prediction_per_row(tmp_path):
    data = shared_data("usppm")
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "-m", "competitions.usppm.train", f"data_dir={data}",
           "limit=131", "epochs=1", "folds=2", "max_len=32", "batch_size=16", "run_name=ddp",
           f"runs_dir={tmp_path}"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("CV pearson") == 1, "only the main process reports"
    oof = pd.read_csv(tmp_path / "usppm/ddp/oof.csv")
    # 131 rows split over 2 processes: gather_for_metrics must drop the padding duplicates.
    assert len(oof) == 131 and oof["id"].is_unique and oof["pred"].notna().all()
