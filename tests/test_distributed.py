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


def test_resume_state_waits_for_every_rank_before_the_main_process_renames_it(tmp_path):
    """Each rank writes its own RNG file into last.tmp; the main process may rename last.tmp only after every rank
    has written (without the barrier, a slower rank found its folder gone: 'Parent directory ... does not exist')."""
    from common.checkpoints import save_resume_state

    class RankZero:  # rank 0 of two: records what it sees at each barrier
        is_main_process = True
        seen = []

        def wait_for_everyone(self):
            self.seen.append(sorted(p.name for p in (tmp_path / "last.tmp").glob("*")))

        def save_state(self, out, safe_serialization):
            Path(out).mkdir()
            (Path(out) / "random_states_0.pkl").write_bytes(b"0")

    save_resume_state(RankZero(), tmp_path, {"step": 1})
    assert ["random_states_0.pkl"] in RankZero.seen, "no barrier between save_state and the rename"
    assert (tmp_path / "last/trainer_state.json").is_file() and not (tmp_path / "last.tmp").exists()
