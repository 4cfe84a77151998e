"""The kaggle CLI from the kit: competition downloads, and offline inference kernels for any run.

    python -m competitions <c> download [dest=data/<c>]          (make usppm-data)
    make <c>-push RUN=<run> [DRY_RUN=1] [ARGS="kaggle.gpu=true kaggle.owner=me"]
(both parsed in common/cli.py)

`push` builds, under runs/<c>/<run>/kaggle/ (or out=):
  dataset/  a private Kaggle dataset: kit-bundle.json, kit/ (the kit's code: common/ and this competition),
            runs/<c>/<run>/ (resolved config, fold checkpoints, backbone files; for a blend, its runs too),
            wheels/ (pinned pure-python dependencies Kaggle's image may lack), dataset-metadata.json
  kernel/   kernel.py + kernel-metadata.json: a script kernel with the internet off that installs the bundled wheels
            (never from the internet), imports the kit from the dataset, predicts the test set and writes
            submission.csv
With runtime=onnx (asked at push, or the run's folds already have ONNX graphs) the bundle carries each fold's graph
(exported now if missing or stale) and the onnxruntime wheel, and the kernel predicts with ONNX Runtime
(docs/onnx.md).
then runs `kaggle datasets create` (or `version`), waits for the dataset, and `kaggle kernels push`. DRY_RUN=1 only
prints those commands. Secrets (kaggle.json, .env, keys, tokens) are never copied into the bundle.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from omegaconf import DictConfig

from common import api
from common.errors import NotFound, UserError
from common.io import pinned_requirements
from common.onnx_runtime import INT8_FILE, ONNX_FILE, fingerprint_path, uses_onnx
from common.runs import LAST_OOF, Run

KIT_ROOT = Path(__file__).resolve().parents[1]  # the repository whose code is bundled
MARKER = "kit-bundle.json"                       # how the kernel finds the dataset under /kaggle/input
KAGGLE_DEFAULTS = {
    "owner": None,         # Kaggle username that owns the dataset and kernel; null -> KAGGLE_USERNAME or kaggle.json
    "dataset": None,       # dataset slug; null -> <c>-<run>-kit
    "kernel": None,        # kernel slug, also its title; null -> <c>-<run>-infer
    "public": False,       # dataset and kernel are private unless asked
    "gpu": False,          # run the kernel on a GPU (the big backbones need one)
    "license": "other",    # the dataset's license, one of Kaggle's names (CC0-1.0, CC-BY-4.0, other, ...)
    "wheels": ["omegaconf", "ttach"],  # bundled as wheels, versions pinned from requirements.txt
}
# Never bundled, wherever they sit: credentials and keys.
SECRET_NAMES = {"kaggle.json", "access_token", ".env", ".netrc", ".git-credentials", ".pypirc", "credentials.json",
                "client_secret.json", "id_rsa", "id_ecdsa", "id_ed25519"}
SECRET_PATTERNS = (".env.*", "*.env", "*.pem", "*.key", "*.p12", "*secret*", "*api_token*", "*access_token*")
# Run files inference does not need (the kernel predicts the hidden test set itself). A fold folder keeps its
# model and whatever fit_fold saved there (scalers, indexes), without resume state and logs.
RUN_SKIP = ("oof.csv", "test_preds.csv", "preds_*.csv", "folds.csv", "plots", "kaggle")
FOLD_SKIP = ("last", "last.old", "last.tmp", "oof.csv", LAST_OOF, "history.csv")
# A fold's ONNX graphs and their fingerprints (common/onnx_runtime.py): the kernel gets those it runs.
GRAPH_FILES = {None: (ONNX_FILE, fingerprint_path(Path(ONNX_FILE)).name),
               "int8": (INT8_FILE, fingerprint_path(Path(INT8_FILE)).name)}
ONNX_WHEELS = ("onnxruntime", "flatbuffers")  # runtime=onnx in the kernel; the rest of its needs are in Kaggle's image


class KaggleError(UserError):
    """The kaggle CLI is missing, has no credentials, or a kaggle command failed."""


def _config_dir() -> Path:
    return Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))


def credentials_found() -> bool:
    """The kaggle CLI reads KAGGLE_USERNAME + KAGGLE_KEY, KAGGLE_API_TOKEN, or files in KAGGLE_CONFIG_DIR / ~/.kaggle."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY") or os.environ.get("KAGGLE_API_TOKEN"):
        return True
    return (_config_dir() / "kaggle.json").is_file() or (_config_dir() / "access_token").is_file()


def kaggle_username() -> str | None:
    """The account name the CLI would use: KAGGLE_USERNAME, else kaggle.json's username (an access_token has none)."""
    if os.environ.get("KAGGLE_USERNAME"):
        return os.environ["KAGGLE_USERNAME"]
    path = _config_dir() / "kaggle.json"
    return json.loads(path.read_text()).get("username") if path.is_file() else None


def require_cli() -> str:
    exe = shutil.which("kaggle") or str(Path(sys.executable).with_name("kaggle"))
    if not Path(exe).exists():
        raise KaggleError("the kaggle CLI is not installed (pip install kaggle)")
    if not credentials_found():
        raise KaggleError("no Kaggle credentials: create an API token at kaggle.com -> Settings -> API and save "
                          "it as ~/.kaggle/kaggle.json (chmod 600), or set KAGGLE_USERNAME and KAGGLE_KEY")
    return exe


def download(competition: str, dest: str | Path) -> Path:
    """kaggle competitions download -c <competition> into dest, then unzip there."""
    exe = require_cli()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([exe, "competitions", "download", "-c", competition, "-p", str(dest)])
    if result.returncode != 0:
        raise KaggleError(f"kaggle competitions download -c {competition} failed (exit {result.returncode}); "
                          f"have you accepted the competition's rules on kaggle.com?")
    for archive in dest.glob("*.zip"):
        with zipfile.ZipFile(archive) as z:
            z.extractall(dest)
        archive.unlink()
    print(f"{competition}: files in {dest}: {', '.join(sorted(p.name for p in dest.iterdir()))}")
    return dest


# ---- push: bundle + kernel ---------------------------------------------------------------------------------
def push(task, run, settings: DictConfig, dry_run: bool = False, out: str | Path | None = None,
         runtime: dict | None = None) -> Path:
    """Build the dataset and kernel folders for a run, then push them (or, dry_run=True, print the commands).
    runtime: {"runtime": "torch" | "onnx", "quantize": "int8", "data_dir": ...} as asked at push (kernel_runtime)."""
    exe = None if dry_run else require_cli()  # missing CLI or credentials: say so before building anything
    owner = settings.owner or kaggle_username()
    if not owner:
        if not dry_run:
            raise KaggleError("no Kaggle username: pass kaggle.owner=<username> or set KAGGLE_USERNAME")
        owner = "your-kaggle-username"
        print(f"dry run: no Kaggle username found; the metadata says {owner!r} (set kaggle.owner= or KAGGLE_USERNAME)")
    out = Path(out or run.dir / "kaggle")
    dataset_dir, kernel_dir = build(task, run, settings, owner, out, runtime)

    dataset_id = json.loads((dataset_dir / "dataset-metadata.json").read_text())["id"]
    create = ["datasets", "create", "-p", str(dataset_dir), "--dir-mode", "zip", *(["--public"] if settings.public else [])]
    version = ["datasets", "version", "-p", str(dataset_dir), "-m", f"{run.name} {time.strftime('%Y-%m-%d %H:%M')}",
               "--dir-mode", "zip"]
    kernel = ["kernels", "push", "-p", str(kernel_dir)]
    if not task.kaggle_competition:
        print(f"{task.name} is not a Kaggle competition: the kernel has no competition_sources; add a dataset with "
              f"its data (the kernel looks for {task.sample_submission} under the input folder)")
    if dry_run:
        print("dry run: the folders are left to inspect; a push would run")
        print(f"  kaggle {shlex.join(create)}\n    (or, when {dataset_id} exists: kaggle {shlex.join(version)})")
        print(f"  kaggle {shlex.join(kernel)}    (once the dataset is ready)")
        return out
    exists = subprocess.run([exe, "datasets", "status", dataset_id], capture_output=True).returncode == 0
    _kaggle(exe, version if exists else create)
    wait_until_ready(exe, dataset_id)
    _kaggle(exe, kernel)
    print(f"pushed: dataset {dataset_id}, kernel {json.loads((kernel_dir / 'kernel-metadata.json').read_text())['id']}")
    return out


def _kaggle(exe: str, command: list[str]) -> None:
    print(f"kaggle {shlex.join(command)}")
    result = subprocess.run([exe, *command])
    if result.returncode != 0:
        raise KaggleError(f"kaggle {' '.join(command[:2])} failed (exit {result.returncode})")


def wait_until_ready(exe: str, dataset_id: str, timeout_s: int = 1800) -> None:
    """A kernel can only mount a dataset once Kaggle has processed its new version."""
    started = time.time()
    while time.time() - started < timeout_s:
        status = subprocess.run([exe, "datasets", "status", dataset_id], capture_output=True, text=True).stdout.strip()
        if status == "ready":
            return
        if status == "error":
            raise KaggleError(f"Kaggle could not process the dataset {dataset_id}; see its page on kaggle.com")
        print(f"dataset {dataset_id}: {status or 'not visible yet'}; waiting")
        time.sleep(15)
    raise KaggleError(f"dataset {dataset_id} not ready after {timeout_s} s; push the kernel later: kaggle kernels push")


def slug(text: str) -> str:
    """Kaggle slugs: lower-case letters, digits and hyphens (a title made of these slugifies to itself)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def build(task, run, settings: DictConfig, owner: str, out: Path, runtime: dict | None = None) -> tuple[Path, Path]:
    """out/dataset and out/kernel, rebuilt from scratch in out/.build.tmp and swapped in (publish_folders)."""
    dataset_slug = slug(settings.dataset or f"{task.name}-{run.name}-kit")
    kernel_slug = slug(settings.kernel or f"{task.name}-{run.name}-infer")
    for name, value in (("dataset", dataset_slug), ("kernel", kernel_slug)):
        if not 6 <= len(value) <= 50:  # the kaggle CLI's limits, checked here rather than after an upload
            raise KaggleError(f"{name} slug {value!r} must have 6 to 50 characters; pass kaggle.{name}=<slug>")
    staging = out / ".build.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    dataset_dir, kernel_dir = staging / "dataset", staging / "kernel"
    predict = kernel_runtime(task, run, runtime or {})
    left_out = [name for quantize, names in GRAPH_FILES.items() for name in names
                if predict["runtime"] != "onnx" or quantize != predict["quantize"]]
    runs = bundle_runs(task, run, dataset_dir / "runs" / task.name, (*FOLD_SKIP, *left_out))
    copy_tree(KIT_ROOT / "common", dataset_dir / "kit" / "common")
    for name in ("__init__.py", "__main__.py", task.name):
        copy_tree(KIT_ROOT / "competitions" / name, dataset_dir / "kit" / "competitions" / name)
    copy_tree(KIT_ROOT / "requirements.txt", dataset_dir / "kit" / "requirements.txt")
    wheels = download_wheels(list(settings.wheels), dataset_dir / "wheels")
    if predict["runtime"] == "onnx":
        wheels += download_wheels(list(ONNX_WHEELS), dataset_dir / "wheels", hint=(
            "the kernel installs onnxruntime from the bundle for runtime=onnx: run the push where PyPI (or a pip "
            "cache holding these wheels) is reachable, or push with runtime=torch"))
    (dataset_dir / MARKER).write_text(json.dumps({"competition": task.name, "run": run.name, "runs": runs,
                                                  "wheels": wheels, "predict": predict}, indent=2) + "\n")
    (dataset_dir / "dataset-metadata.json").write_text(json.dumps({
        "title": dataset_slug, "id": f"{owner}/{dataset_slug}", "licenses": [{"name": settings.license}],
    }, indent=2) + "\n")

    kernel_dir.mkdir(parents=True)
    (kernel_dir / "kernel.py").write_text(KERNEL_SCRIPT.format(competition=task.name, run=run.name,
                                                               dataset=f"{owner}/{dataset_slug}"))
    (kernel_dir / "kernel-metadata.json").write_text(json.dumps({
        "id": f"{owner}/{kernel_slug}", "title": kernel_slug, "code_file": "kernel.py", "language": "python",
        "kernel_type": "script", "is_private": not settings.public, "enable_gpu": bool(settings.gpu),
        "enable_tpu": False, "enable_internet": False, "dataset_sources": [f"{owner}/{dataset_slug}"],
        "competition_sources": [task.kaggle_competition] if task.kaggle_competition else [],
        "kernel_sources": [], "model_sources": [],
    }, indent=2) + "\n")
    dataset_dir, kernel_dir = publish_folders(staging, out)
    size = sum(f.stat().st_size for f in dataset_dir.rglob("*") if f.is_file()) / 2**20
    print(f"dataset folder: {dataset_dir} ({size:.1f} MiB; runs {', '.join(runs)})\nkernel folder: {kernel_dir}")
    return dataset_dir, kernel_dir


def publish_folders(staging: Path, out: Path) -> tuple[Path, Path]:
    """Swap the built dataset/ and kernel/ folders into out by renames, so a killed push never leaves a half-built
    folder there for `kaggle datasets create -p` to upload: each folder in out is complete, and a kernel folder is
    only there with its own dataset folder."""
    trash = out / ".old.tmp"
    shutil.rmtree(trash, ignore_errors=True)
    trash.mkdir(parents=True)
    for name in ("kernel", "dataset"):
        if (out / name).exists():
            (out / name).rename(trash / name)
    for name in ("dataset", "kernel"):
        (staging / name).rename(out / name)
    shutil.rmtree(trash, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    return out / "dataset", out / "kernel"


def kernel_runtime(task, run, asked: dict) -> dict:
    """How the kernel predicts: runtime= / quantize= as asked at push, else runtime=onnx where the run's folds
    already have ONNX graphs. With onnx, every fold's graph is exported now where missing or stale (from a batch of
    the test rows under data_dir=, else the run's)."""
    runtime = asked.get("runtime") or ("onnx" if asked.get("quantize") or has_graphs(run) else "torch")
    predict = {"runtime": runtime, "quantize": asked.get("quantize")}
    if uses_onnx(predict):  # bad values (runtime=torch quantize=int8) are refused here, before anything is built
        where = {"data_dir": asked["data_dir"]} if asked.get("data_dir") else {}
        graphs = api.export_graphs(task, run, **predict, **where)
        print(f"runtime=onnx{' quantize=' + predict['quantize'] if predict['quantize'] else ''}: "
              f"{len(graphs)} fold graph(s) bundled")
    return predict


def has_graphs(run) -> bool:
    """Whether any fold of the run (a blend: of its runs) has an exported ONNX graph."""
    spec = run.blend_spec()
    if spec:
        return any(has_graphs(Run(run.dir.parent / member)) for member in spec["runs"])
    return any(run.dir.glob(f"fold*/{ONNX_FILE}"))


def bundle_runs(task, run, dest: Path, fold_skip: tuple = FOLD_SKIP) -> list[str]:
    """Copy what inference needs of the run (a blend: of its runs too, recursively); return the run names.
    fold_skip: the fold files left out."""
    names, spec = [run.name], run.blend_spec()
    if spec:
        for member in spec["runs"]:
            names += [n for n in bundle_runs(task, Run(run.dir.parent / member), dest, fold_skip) if n not in names]
    elif not run.finished_folds():
        raise NotFound(f"run {run.dir} has no finished fold to predict with; train it first")
    for entry in sorted(run.dir.iterdir()):
        if any(fnmatch.fnmatch(entry.name, pattern) for pattern in RUN_SKIP):
            continue
        if re.fullmatch(r"fold\d+", entry.name):
            for child in sorted(entry.iterdir()):
                if child.name not in fold_skip:
                    copy_tree(child, dest / run.name / entry.name / child.name)
        else:
            copy_tree(entry, dest / run.name / entry.name)
    return names


def is_secret(path: Path) -> bool:
    return path.name in SECRET_NAMES or any(fnmatch.fnmatch(path.name, p) for p in SECRET_PATTERNS)


def copy_tree(src: Path, dest: Path) -> None:
    """Copy a file or folder, leaving out caches and anything that looks like a secret (said aloud)."""
    if fnmatch.fnmatch(src.name, ".*.tmp"):  # what a killed atomic write left behind (common/io.py atomic_path)
        return
    if is_secret(src):
        print(f"left out of the bundle (looks like a secret): {src}")
        return
    if src.is_dir():
        for child in sorted(src.iterdir()):
            if child.name not in ("__pycache__", ".git", ".ipynb_checkpoints") and child.suffix != ".pyc":
                copy_tree(child, dest / child.name)
    elif src.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)


def download_wheels(names: list[str], dest: Path, hint: str = "Bundle without them: kaggle.wheels=[]") -> list[str]:
    """Wheels of `names` at the versions pinned in requirements.txt (pip download: run where PyPI is reachable, or
    where pip's cache holds them). hint: what to do when it fails."""
    if not names:
        return []
    pins = pinned_requirements(KIT_ROOT / "requirements.txt")
    requirements = [pins.get(n.lower().replace("_", "-"), n) for n in names]
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                             "--dest", str(dest), *requirements], capture_output=True, text=True)
    if result.returncode != 0:
        raise KaggleError(f"pip download {' '.join(requirements)} failed (PyPI unreachable?): "
                          f"{result.stderr.strip()[-500:]}. {hint}")
    return requirements


KERNEL_SCRIPT = '''"""Offline inference for {competition} run {run}, written by `make {competition}-push`.

Kaggle runs it with the internet off. It installs nothing from the internet (only the wheels inside the dataset
{dataset}), imports the kit from that dataset, predicts the test set with the run's fold checkpoints and writes
submission.csv in the working folder.
"""
import os
import subprocess
import sys
from pathlib import Path

COMPETITION, RUN = {competition!r}, {run!r}
INPUT = Path(os.environ.get("KAGGLE_INPUT_DIR", "/kaggle/input"))  # another root runs the kernel off Kaggle
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub: the backbone's files are in the run folder
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def find_bundle() -> Path:
    for depth in range(1, 5):  # datasets mount at /kaggle/input/<slug>/ or deeper, depending on the image
        found = sorted(INPUT.glob("*/" * depth + "kit-bundle.json"))
        if found:
            return found[0].parent
    sys.exit(f"no kit-bundle.json under {{INPUT}}: add the dataset {dataset} to the kernel's inputs")


bundle = find_bundle()
wheels = sorted(str(p) for p in (bundle / "wheels").glob("*.whl"))
if wheels:  # --no-index: pip installs these files and never looks online
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", *wheels])
sys.path.insert(0, str(bundle / "kit"))

from common.kaggle import kernel_main  # noqa: E402  (importable once the bundle is on the path)
from competitions.__main__ import load_task  # noqa: E402

kernel_main(load_task(COMPETITION), RUN, bundle, INPUT, Path.cwd())
'''


def kernel_main(task, run_name: str, bundle: Path, input_dir: Path, out_dir: Path) -> Path:
    """In the kernel: predict the test set with the bundled run (a blend: each of its runs, then the blend) and
    write out_dir/submission.csv. The input folder is read-only, so predictions go to a scratch copy of the runs."""
    print(f"kit: {Path(__file__).resolve().parents[1]}")
    data_dir = find_data_dir(task, input_dir, bundle)
    print(f"competition data: {data_dir}")
    with tempfile.TemporaryDirectory(prefix="kit-") as tmp:
        work = Path(tmp)
        for run_dir in (bundle / "runs" / task.name).iterdir():
            (work / "runs" / task.name / run_dir.name).mkdir(parents=True)
            for entry in run_dir.iterdir():  # small files copied, checkpoint folders linked
                target = work / "runs" / task.name / run_dir.name / entry.name
                if entry.is_dir():
                    target.symlink_to(entry, target_is_directory=True)
                else:
                    shutil.copy(entry, target)
        run = Run(work / "runs" / task.name / run_name)
        predict = json.loads((bundle / MARKER).read_text()).get("predict") or {}  # runtime=, quantize= of the push
        print(f"predicting with runtime={predict.get('runtime', 'torch')} quantize={predict.get('quantize')}")
        # The same functions as `make <c>-submit`: a blend has its runs predict, then blends them.
        out = api.submit(task, run, out=Path(out_dir) / "submission.csv", data_dir=str(data_dir), **predict)
    print(f"wrote {out}")
    return out


def find_data_dir(task, input_dir: Path, bundle: Path) -> Path:
    """The folder with the competition's files: the one holding its sample submission (the competition's own
    mount first), outside the bundle."""
    found = [p.parent for depth in range(1, 4) for p in sorted(input_dir.glob("*/" * depth + task.sample_submission))
             if bundle not in p.parents]
    if not found:
        raise NotFound(f"no {task.sample_submission} under {input_dir}: add the competition "
                                f"({task.kaggle_competition or 'a dataset with its files'}) to the kernel's inputs")
    return next((d for d in found if task.kaggle_competition and task.kaggle_competition in d.parts), found[0])

