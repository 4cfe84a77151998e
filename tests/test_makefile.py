"""The Makefile finds the competitions in competitions/: a copied folder under a new name gets every target, in a
temporary copy of the repo (make -n: nothing runs), and the command line finds its Task."""
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


@pytest.fixture(scope="module")
def repo_with_newcomp(tmp_path_factory):
    """Makefile, requirements.txt, common/ and competitions/, with competitions/armyworm copied as newcomp."""
    root = tmp_path_factory.mktemp("repo")
    for name in ("Makefile", "requirements.txt"):
        shutil.copy(REPO / name, root / name)
    skip = shutil.ignore_patterns("__pycache__")
    for name in ("common", "competitions"):
        shutil.copytree(REPO / name, root / name, ignore=skip)
    new = root / "competitions/newcomp"
    shutil.copytree(REPO / "competitions/armyworm", new, ignore=skip)
    task = new / "task.py"
    task.write_text(task.read_text().replace('name = "armyworm"', 'name = "newcomp"'))
    (new / "demo.py").write_text((new / "demo.py").read_text().replace("competitions.armyworm", "competitions.newcomp"))
    return root


# A make as a user types it: under `make test` the parent's MAKELEVEL / MAKEFLAGS would add "make[1]: Entering
# directory" lines and the parent's flags to what the tests read
FRESH_MAKE = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}


def make_n(root, *targets, **variables):
    """What `make` would run, without running it; the venv counts as installed (-o: never remade)."""
    stamp = ".venv/.installed"
    out = subprocess.run(["make", "-n", "-o", stamp, *targets, *(f"{k}={v}" for k, v in variables.items())],
                         cwd=root, capture_output=True, text=True, env=FRESH_MAKE)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


@pytest.mark.parametrize("target, command", [
    ("newcomp-train", "newcomp train run_name=x"),
    ("newcomp-infer", "newcomp infer run_name=x"),
    ("newcomp-submit", "newcomp submit run_name=x"),
    ("newcomp-rescore", "newcomp rescore run_name=x"),
    ("newcomp-ensemble", 'newcomp ensemble runs="a b" run_name=x'),
    ("newcomp-tune", "newcomp tune run_name=x"),
    ("newcomp-push", "newcomp push run_name=x"),
    ("newcomp-gradcam", "newcomp gradcam run_name=x"),
    ("newcomp-runs", "newcomp runs"),
    ("newcomp-dashboard", "newcomp dashboard run_name=x"),
    ("newcomp-demo", "newcomp demo"),
])
def test_a_new_competition_folder_gets_every_target(repo_with_newcomp, target, command):
    lines = make_n(repo_with_newcomp, target, RUN="x", RUNS="a b")
    assert [line.split() for line in lines] == [[".venv/bin/python", "-m", "competitions", *command.split()]]


def test_make_demo_runs_every_demo_and_a_folder_without_demo_py_says_it_has_none(repo_with_newcomp):
    demos = make_n(repo_with_newcomp, "demo")
    assert ".venv/bin/python -m competitions newcomp demo" in [line.strip() for line in demos]
    assert len(demos) == len(list((REPO / "competitions").glob("*/demo.py"))) + 1

    bare = repo_with_newcomp / "competitions/bare"
    bare.mkdir()
    (bare / "task.py").write_text("")
    assert "bare" not in " ".join(make_n(repo_with_newcomp, "demo"))
    out = subprocess.run(["make", "-o", ".venv/.installed", "bare-demo"], cwd=repo_with_newcomp,
                         capture_output=True, text=True, env=FRESH_MAKE)
    assert out.returncode != 0 and "competitions/bare/demo.py not found: bare has no demo" in out.stderr
    assert make_n(repo_with_newcomp, "bare-data")[-1].startswith('echo "bare: put the raw files into data/bare/')
    shutil.rmtree(bare)


def test_the_competition_specific_data_texts_stay(repo_with_newcomp):
    assert "-m competitions usppm download dest=data/usppm" in make_n(repo_with_newcomp, "usppm-data")[0]
    assert "dacon.io" in make_n(repo_with_newcomp, "growth-data")[0]


def test_the_command_line_finds_the_new_task(repo_with_newcomp):
    # A data folder that is not there: the new Task was found, loaded its config and looked for its Train.csv.
    out = subprocess.run([sys.executable, "-m", "competitions", "newcomp", "train", "data_dir=no-such-folder",
                          "run_name=x"], cwd=repo_with_newcomp, capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("error: ") and "no-such-folder/Train.csv" in out.stderr
    assert "unknown competition" not in out.stderr
