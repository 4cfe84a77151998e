"""make <c>-push: the dataset bundle and the offline kernel, run here against a folder laid out like /kaggle/input."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pandas as pd
import pytest

from common import api, cli, kaggle
from common.submission import validate
from competitions.__main__ import main
from competitions.usppm.task import UsppmTask
from tests.conftest import REPO, shared_data

TASK = UsppmTask()
SECRET = "kit-test-secret-9c41e7"  # planted in kaggle.json and .env files; must not reach the bundle


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle-config"))


@pytest.fixture
def planted_code(tmp_path, monkeypatch):
    """A copy of the kit's code with a kaggle.json and a .env in it, bundled instead of the repository's."""
    root = tmp_path / "kit"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "common", root / "common", ignore=ignore)
    shutil.copytree(REPO / "competitions" / "usppm", root / "competitions" / "usppm", ignore=ignore)
    for name in ("__init__.py", "__main__.py"):
        shutil.copy(REPO / "competitions" / name, root / "competitions" / name)
    shutil.copy(REPO / "requirements.txt", root / "requirements.txt")
    (root / "competitions/usppm/kaggle.json").write_text(json.dumps({"username": "me", "key": SECRET}))
    (root / ".env").write_text(f"KAGGLE_KEY={SECRET}\n")
    (root / "common/.env").write_text(f"KAGGLE_KEY={SECRET}\n")
    monkeypatch.setattr(kaggle, "KIT_ROOT", root)
    return root


def test_the_kernel_runs_offline_from_the_bundle_and_writes_a_valid_submission(
        two_runs, workdir, planted_code, no_credentials, capsys, tmp_path):
    runs = two_runs / "usppm"
    for run in ("a", "b"):
        (runs / run / "kaggle.json").write_text(json.dumps({"username": "me", "key": SECRET}))
        (runs / run / "backbone/.env").write_text(f"HF_TOKEN={SECRET}\n")
    cli.ensemble(TASK, ["runs=a b", "run_name=kblend", "method=scipy", f"runs_dir={two_runs}"])
    out = cli.push(TASK, ["run_name=kblend", f"runs_dir={two_runs}", "dry_run=true", "kaggle.wheels=[]",
                                  "kaggle.owner=kit-tester"])
    printed = capsys.readouterr().out
    assert "kaggle datasets create -p" in printed and "kaggle kernels push -p" in printed
    dataset = out / "dataset"

    # Secrets: none of the planted files, nor any file named like one, is in the bundle.
    bundled = [p for p in dataset.rglob("*") if p.is_file()]
    assert not [p for p in bundled if p.name in ("kaggle.json", ".env")]
    assert not [p for p in bundled if SECRET in p.read_bytes().decode("utf-8", "ignore")]
    members = json.loads((dataset / "kit-bundle.json").read_text())["runs"]
    planted = [planted_code / "competitions/usppm/kaggle.json", planted_code / "common/.env",
               *[runs / m / name for m in members[1:] for name in ("kaggle.json", "backbone/.env")]]
    left_out = re.findall(r"left out of the bundle \(looks like a secret\): (\S+)", printed)
    assert sorted(left_out) == sorted(map(str, planted))
    # Only what inference needs: checkpoints, no OOF or test predictions of the local test set.
    names = {p.name for p in bundled}
    assert "model.safetensors" in names and not names & {"oof.csv", "test_preds.csv", "folds.csv"}
    assert members[0] == "kblend" and set(members[1:]) == set(json.loads(
        (runs / "kblend/blend.json").read_text())["runs"])

    result, submission = run_kernel(out, tmp_path, "usppm-kblend-kit")
    # The kernel's predictions are the blend's own test predictions, recomputed from the checkpoints.
    local = pd.read_csv(runs / "kblend/test_preds.csv").set_index("id")["pred"]
    assert submission.loc[local.index].to_numpy() == pytest.approx(local.to_numpy(), abs=1e-5)


def run_kernel(out, tmp_path, slug: str) -> tuple[subprocess.CompletedProcess, pd.Series]:
    """The pushed kernel run here, internet-style off: /kaggle/input holds the dataset (read-only, as Kaggle mounts
    it) under slug and the competition's files. Returns the kernel's run and its valid submission's scores by id."""
    kaggle_input = tmp_path / "input"
    shutil.copytree(out / "dataset", kaggle_input / slug)
    shutil.copytree(shared_data("usppm"), kaggle_input / "us-patent-phrase-to-phrase-matching",
                    ignore=shutil.ignore_patterns("train.csv"))  # inference needs no train file
    for p in (kaggle_input / slug).rglob("*"):
        p.chmod(p.stat().st_mode & ~0o222)
    working = tmp_path / "working"
    working.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the kit must come from the bundle
    env.update(KAGGLE_INPUT_DIR=str(kaggle_input), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(out / "kernel" / "kernel.py")], cwd=working, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert f"kit: {kaggle_input / slug / 'kit'}" in result.stdout
    validate(working / "submission.csv", shared_data("usppm") / "sample_submission.csv")
    assert sorted(p.name for p in working.iterdir()) == ["submission.csv"]
    return result, pd.read_csv(working / "submission.csv").set_index("id")["score"]


def test_both_metadata_files_have_what_the_kaggle_cli_requires(two_runs, workdir, no_credentials):
    out = cli.push(TASK, ["run_name=a", f"runs_dir={two_runs}", "dry_run=true", "kaggle.wheels=[]",
                                  "kaggle.owner=kit-tester", "kaggle.gpu=true"])
    dataset = json.loads((out / "dataset/dataset-metadata.json").read_text())
    # kaggle datasets create: id, title (6-50), exactly one license with a name, slug of 6-50.
    owner, slug = dataset["id"].split("/")
    assert owner == "kit-tester" and 6 <= len(slug) <= 50 and 6 <= len(dataset["title"]) <= 50
    assert len(dataset["licenses"]) == 1 and dataset["licenses"][0]["name"]

    meta = json.loads((out / "kernel/kernel-metadata.json").read_text())
    # kaggle kernels push: id (owner/slug, no version), title of 5+ that slugifies to the id, an existing
    # code_file, language and kernel_type from the CLI's lists, dataset sources as owner/slug.
    owner, slug = meta["id"].split("/")
    assert owner == "kit-tester" and re.fullmatch(r"[a-z0-9-]+", slug) and meta["title"] == slug
    assert (out / "kernel" / meta["code_file"]).is_file()
    assert meta["language"] == "python" and meta["kernel_type"] == "script"
    assert meta["enable_internet"] is False and meta["enable_gpu"] is True and meta["is_private"] is True
    assert meta["dataset_sources"] == [dataset["id"]]
    assert meta["competition_sources"] == ["us-patent-phrase-to-phrase-matching"]
    for key in ("kernel_sources", "model_sources", "enable_tpu"):
        assert key in meta


def test_a_competition_off_kaggle_still_gets_a_bundle_without_competition_sources(two_runs, workdir, capsys,
                                                                                   no_credentials):
    class OffKaggle(UsppmTask):
        kaggle_competition = None

    out = cli.push(OffKaggle(), ["run_name=a", f"runs_dir={two_runs}", "dry_run=true", "kaggle.wheels=[]"])
    meta = json.loads((out / "kernel/kernel-metadata.json").read_text())
    assert meta["competition_sources"] == [] and meta["dataset_sources"]
    printed = capsys.readouterr().out
    assert "not a Kaggle competition" in printed and "no Kaggle username found" in printed


def test_a_push_without_credentials_says_what_to_do_and_builds_nothing(two_runs, workdir, capsys,
                                                                     no_credentials):
    shutil.rmtree(two_runs / "usppm/b/kaggle", ignore_errors=True)
    with pytest.raises(SystemExit) as exit_info:  # the command line: one line, exit 2
        main(["usppm", "push", "run_name=b", f"runs_dir={two_runs}"])
    assert exit_info.value.code == 2
    assert "no Kaggle credentials" in capsys.readouterr().err
    assert not (two_runs / "usppm/b/kaggle").exists()


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _pypi_reachable(), reason="pip download needs PyPI, not reachable from here")
def test_bundled_wheels_are_the_pinned_versions_and_install_without_an_index(tmp_path):
    requirements = kaggle.download_wheels(["ttach"], tmp_path / "wheels")
    pinned = next(line for line in (REPO / "requirements.txt").read_text().splitlines() if line.startswith("ttach=="))
    assert requirements == [pinned]
    wheels = [str(p) for p in (tmp_path / "wheels").glob("*.whl")]
    # The kernel's own command (into a target folder here, to leave the venv alone).
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                    "--target", str(tmp_path / "site"), *wheels], check=True)
    assert (tmp_path / "site" / "ttach" / "__init__.py").is_file()


@pytest.mark.skipif(not _pypi_reachable(), reason="the onnxruntime wheel comes from PyPI (or pip's cache)")
def test_an_onnx_push_bundles_the_graphs_and_onnxruntime_and_the_kernel_runs_them_offline(
        one_fold_run, workdir, no_credentials, tmp_path):
    runs_dir = tmp_path / "runs"  # a private copy: the graphs are exported into the run's fold folders
    shutil.copytree(one_fold_run / "usppm" / "one", runs_dir / "usppm" / "one")
    out = cli.push(TASK, ["run_name=one", f"runs_dir={runs_dir}", "dry_run=true", "kaggle.wheels=[]",
                          "kaggle.owner=kit-tester", "runtime=onnx", f"data_dir={shared_data('usppm')}"])
    dataset = out / "dataset"
    bundle = json.loads((dataset / "kit-bundle.json").read_text())
    pinned = next(line for line in (REPO / "requirements.txt").read_text().splitlines()
                  if line.startswith("onnxruntime=="))
    assert bundle["predict"] == {"runtime": "onnx", "quantize": None} and bundle["wheels"][0] == pinned
    assert [p.name.split("-")[1] for p in (dataset / "wheels").glob("onnxruntime-*.whl")] == [pinned.split("==")[1]]
    files = {p.name for p in (dataset / "runs/usppm/one/fold0").iterdir()}
    assert {"model.onnx", "model.onnx.json", "model.safetensors"} <= files and "model.int8.onnx" not in files

    result, submission = run_kernel(out, tmp_path, "usppm-one-kit")
    assert "predicting with runtime=onnx" in result.stdout
    local = api.predict_test(TASK, "one", runs_dir=str(runs_dir), precision="fp32")
    local = pd.read_csv(local).set_index("id")["pred"]
    assert submission.loc[local.index].to_numpy() == pytest.approx(local.to_numpy(), abs=1e-4)  # torch's, in fp32
