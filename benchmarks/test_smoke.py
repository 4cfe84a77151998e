"""make bench's smoke test: the table is produced, on tiny sizes (the figures themselves are not tested)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KIT_SHARED_DATA", REPO.parent / "shared" / "data"))
pytestmark = pytest.mark.skipif(not (SHARED / "usppm").is_dir() or not (SHARED / "armyworm").is_dir(),
                                reason=f"the benchmarks read the shared data at {SHARED}")


def run(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, env=env, check=False)


def table_rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in text.splitlines()
            if ln.startswith("| ") and not ln.startswith("| ---")]


def test_bench_writes_a_table_with_both_throughputs_and_their_ratio(tmp_path):
    out = tmp_path / "results.md"
    done = run("benchmarks", "--size", "tiny", "--only", "trainer_text", "image_cache", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    header, *rows = table_rows(out.read_text())
    assert header[:6] == ["benchmark", "what is compared", "kit", "baseline", "unit", "ratio"]
    assert [r[0] for r in rows] == ["trainer overhead", "image cache", "image cache"]  # large photos, as shipped
    for row in rows:
        kit, baseline, ratio = float(row[2].split()[0]), float(row[3].split()[0]), float(row[5])
        assert kit > 0 and baseline > 0 and ratio == pytest.approx(kit / baseline, rel=0.02)
        assert (row[6].startswith(">= ") and row[7] in ("yes", "**no**") or row[6:8] == ["-", "-"])
        assert row[8].endswith(" GB")
    assert "min / median / max" in rows[0][1], "the trainer overhead's spread over its ABBA rounds"
    assert "python -m benchmarks --size tiny" in out.read_text()  # the command that made the figures


def test_gpu_script_runs_offline_configs_and_skips_hub_only_text_models(tmp_path):
    out = tmp_path / "gpu.md"
    done = run("benchmarks.gpu", "--size", "tiny", "--precision", "fp32", "--out", str(out),
               "--only", "usppm-minilm", "armyworm-resnet50", "usppm-deberta-v3-large")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r[0]: r for r in table_rows(out.read_text())}
    assert float(rows["usppm-minilm"][4]) > 0 and "min (3 epochs)" in rows["usppm-minilm"][7]
    assert float(rows["armyworm-resnet50"][4]) > 0 and "random init" in rows["armyworm-resnet50"][8]
    assert rows["usppm-deberta-v3-large"][8].startswith("skipped: microsoft/deberta-v3-large")
