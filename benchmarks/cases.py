"""The benchmarks of `make bench`, one function each. Every one compares two ways of doing the same work on the same
model, data, batch size and threads, back to back in one process, and returns its lines for the table.

Throughput of a training run is read from the fold's history.csv (elapsed_s at each epoch's end): the first epoch
is the warm-up and is left out; the median of the later epochs is the figure. Each epoch's time includes its
evaluation and its checkpoint, as a user's run pays them.

    python -m benchmarks.cases trainer_text --size tiny --workdir /tmp/b --json /tmp/b/trainer_text.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from common import api
from common.accelerator import auto_precision
from common.runs import Run
from common.task import TARGET, model_inputs
from common.text import PaddingCollator, load_tokenizer
from common.threads import configure_threads
from common.folds import fold_split, load_train_frame
from common.trainer import create_optimizer, fit_context
from competitions.armyworm.task import ArmywormTask
from competitions.codesim.task import CodesimTask
from competitions.usppm.task import UsppmTask

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KIT_SHARED_DATA", REPO.parent / "shared" / "data"))

# "full": what `make bench` runs (minutes on 2 cores); "tiny": the smoke test's sizes (seconds).
SIZES = {
    "full": {"text_rows": 2000, "image_rows": 400, "image_size": 192, "epochs": 3, "pad_anchors": 8,
             "pad_max_len": 256, "photos": 24, "photo_size": (3000, 2000), "shipped_photos": 200, "passes": 3,
             "ddp_rows": 1200, "infer_rows": 300, "repeats": 3, "rounds": 3, "mpnet_rows": 600, "code_pairs": 960,
             "onnx_text_rows": 2000, "onnx_mpnet_rows": 600, "onnx_programs": 300, "onnx_image_rows": 300},
    "tiny": {"text_rows": 80, "image_rows": 40, "image_size": 64, "epochs": 2, "pad_anchors": 5,
             "pad_max_len": 96, "photos": 4, "photo_size": (600, 400), "shipped_photos": 16, "passes": 2,
             "ddp_rows": 80, "infer_rows": 16, "repeats": 2, "rounds": 2, "mpnet_rows": 40, "code_pairs": 16,
             "onnx_text_rows": 40, "onnx_mpnet_rows": 16, "onnx_programs": 8, "onnx_image_rows": 8},
}


def line(bench: str, compared: str, unit: str, kit: float, baseline: float, goal: float | None,
         kit_name: str = "kit", baseline_name: str = "baseline", note: str = "") -> dict:
    ratio = kit / baseline if baseline else float("nan")
    return {"bench": bench, "compared": compared, "unit": unit, "kit_name": kit_name, "kit": round(kit, 2),
            "baseline_name": baseline_name, "baseline": round(baseline, 2), "ratio": round(ratio, 3),
            "goal": goal, "met": None if goal is None else bool(ratio >= goal), "note": note}


def epoch_seconds(run_dir: Path, fold: int = 0) -> list[float]:
    """Wall time of each epoch after the first (warm-up), from the fold's history."""
    elapsed = pd.read_csv(run_dir / f"fold{fold}" / "history.csv")["elapsed_s"].to_numpy()
    return list(np.diff(elapsed))


def trained_per_epoch(run_dir: Path, batch_size: int) -> int:
    """Rows fold 0 trains on each epoch (the last partial batch is dropped, as the trainer does)."""
    n = int((pd.read_csv(run_dir / "folds.csv")["fold"] != 0).sum())
    return n // batch_size * batch_size if n > batch_size else n


def kit_epochs(task, overrides: list[str]) -> tuple[list[float], list[float], object]:
    """Fold 0 trained by the kit (api.train), as a user runs it: samples/s of each epoch after the first, and the
    seconds each of them spent evaluating."""
    cfg = task.config(overrides)
    run = api.train(task, cfg)
    rows = trained_per_epoch(run.dir, cfg.batch_size)
    eval_s = list(pd.read_csv(run.fold_dir(0) / "history.csv")["eval_s"].iloc[1:])
    return [rows / s for s in epoch_seconds(run.dir)], eval_s, cfg


def kit_against_bare(task, overrides: list[str], name: str, size: dict) -> tuple[float, float, str]:
    """The kit's loop and the bare loop in ABBA order (kit, bare, bare, kit, ...), so that a machine getting slower
    or faster over the minutes does not favour the one that runs first; the median epoch of each over all rounds,
    and the spread of the ratio over the rounds (each round's median kit epoch / its median bare epoch)."""
    kit, bare, eval_s, ratios, cfg = [], [], [], [], None
    for round_ in range(size["rounds"]):
        speeds = {}
        for who in (("kit", "bare") if round_ % 2 == 0 else ("bare", "kit")):
            if who == "kit":
                speeds["kit"], evals, cfg = kit_epochs(task, [*overrides, f"run_name={name}-{round_}"])
                eval_s += evals
            else:  # round 0 runs the kit first: the bare loop trains on the rows of its last run (its folds.csv)
                speeds["bare"] = bare_epochs(task, cfg, size["epochs"])
        kit += speeds["kit"]
        bare += speeds["bare"]
        ratios.append(statistics.median(speeds["kit"]) / statistics.median(speeds["bare"]))
    kit_speed = statistics.median(kit)
    epoch_s = trained_per_epoch(Path(cfg.runs_dir) / task.name / f"{name}-0", cfg.batch_size) / kit_speed
    share = (f"precision {cfg.precision}; both evaluate every epoch (kit {statistics.median(eval_s):.1f} s of each "
             f"{epoch_s:.1f} s epoch); ratio by round min / median / max {min(ratios):.2f} / "
             f"{statistics.median(ratios):.2f} / {max(ratios):.2f} over {size['rounds']} rounds in ABBA order")
    return kit_speed, statistics.median(bare), share


def bare_epochs(task, cfg, epochs: int) -> list[float]:
    """A plain PyTorch loop on the kit's fold-0 rows: same model, dataset, batch size, optimizer, clipping and
    precision (torch.autocast), and like the kit it predicts the fold's validation rows after every epoch; no
    Accelerate, hooks, progress bar or checkpoint."""
    run = Run(Path(cfg.runs_dir) / task.name / cfg.run_name)
    train, classes = load_train_frame(task, cfg)
    train["fold"] = pd.read_csv(run.folds_path)["fold"].to_numpy()
    trn, val = fold_split(task, cfg, train, 0)
    ctx = fit_context(task, cfg, None, run, 0, trn)
    torch.manual_seed(cfg.seed)
    model = task.build_model(cfg, len(classes), ctx, pretrained=cfg.pretrained)
    loss_fn = task.loss_fn(cfg, trn, ctx)
    collate = task.collate_fn(cfg, ctx)
    loader = torch.utils.data.DataLoader(task.dataset(cfg, trn, "train", ctx), batch_size=cfg.batch_size,
                                         shuffle=True, collate_fn=collate, drop_last=True)
    valid = torch.utils.data.DataLoader(task.dataset(cfg, val, "valid", ctx), batch_size=cfg.batch_size,
                                        collate_fn=collate)
    optimizer, scheduler = create_optimizer(cfg, model, len(loader))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        for batch in loader:
            with autocast:
                loss = loss_fn(model(**model_inputs(batch)), batch["target"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        model.eval()
        with torch.no_grad(), autocast:
            for batch in valid:
                task.activate(cfg, model(**model_inputs(batch)))
        times.append(time.perf_counter() - start)
    return [len(loader) * cfg.batch_size / t for t in times[1:]]


# ---- 1. trainer overhead --------------------------------------------------------------------------------
def trainer_text(size: dict, workdir: Path) -> list[dict]:
    task = UsppmTask()
    common = [f"data_dir={SHARED / 'usppm'}", f"runs_dir={workdir / 'runs'}", f"limit={size['text_rows']}",
              "train_folds=[0]", f"epochs={size['epochs']}", "batch_size=32", "max_len=64"]
    kit, bare, share = kit_against_bare(task, common, "trainer-text", size)
    return [line("trainer overhead", "MiniLM on USPPPM pairs: the kit's loop / a bare PyTorch loop", "samples/s",
                 kit, bare, 0.95, "kit loop", "bare loop", share)]


def trainer_image(size: dict, workdir: Path) -> list[dict]:
    task = ArmywormTask()
    common = [f"data_dir={SHARED / 'armyworm'}", f"runs_dir={workdir / 'runs'}", f"limit={size['image_rows']}",
              "train_folds=[0]", f"epochs={size['epochs']}", "batch_size=32", f"image_size={size['image_size']}"]
    kit, bare, share = kit_against_bare(task, common, "trainer-image", size)
    return [line("trainer overhead", f"EfficientNet-Lite0 on armyworm, {size['image_size']} px: the kit's loop / "
                 "a bare PyTorch loop", "samples/s", kit, bare, 0.95, "kit loop", "bare loop", share)]


# ---- 2. dynamic padding ---------------------------------------------------------------------------------
class PadToMax:
    """A tokenizer whose pad() pads every batch to max_len: the baseline of the padding benchmark."""

    def __init__(self, tokenizer, max_len: int):
        self.tokenizer, self.max_len = tokenizer, max_len

    def pad(self, items, **kwargs):
        return self.tokenizer.pad(items, padding="max_length", max_length=self.max_len, **kwargs)


class UsppmPaddedToMax(UsppmTask):
    def collate_fn(self, cfg, ctx):
        return PaddingCollator(PadToMax(load_tokenizer(cfg.model, ctx.run_dir), cfg.max_len))


def whole_anchors(n_anchors: int, out_dir: Path) -> Path:
    """USPPPM rows of the first n anchors, every row of each (group_targets needs whole groups)."""
    train = pd.read_csv(SHARED / "usppm" / "train.csv")
    keep = train["anchor"].drop_duplicates().iloc[:n_anchors]
    out_dir.mkdir(parents=True, exist_ok=True)
    train[train["anchor"].isin(keep)].to_csv(out_dir / "train.csv", index=False)
    return out_dir


def padding(size: dict, workdir: Path) -> list[dict]:
    """Two inputs: CPC titles alone (short) at the competition's default cap, and CPC titles + grouped targets (long)
    at the cap group_targets needs (pad_max_len; the default would cut them)."""
    data = whole_anchors(size["pad_anchors"], workdir / "usppm-anchors")
    common = [f"data_dir={data}", f"runs_dir={workdir / 'runs'}", "train_folds=[0]", f"epochs={size['epochs']}",
              "batch_size=16", f"cpc_titles={SHARED / 'usppm' / 'cpc_titles.csv'}"]
    default_cap = UsppmTask().config().max_len  # competitions/usppm/config.yaml: what a user's run pads to
    lines = []
    for name, extra, max_len, cap in (
            ("titles", [], default_cap, f"max_len {default_cap}, the competition's default"),
            ("grouped", ["group_targets=true"], size["pad_max_len"],
             f"max_len {size['pad_max_len']}, raised for group_targets: the default {default_cap} would cut them")):
        args = [*common, *extra, f"max_len={max_len}"]
        dynamic = statistics.median(kit_epochs(UsppmTask(), [*args, "group_by_length=true",
                                                             f"run_name=pad-{name}-dynamic"])[0])
        fixed = statistics.median(kit_epochs(UsppmPaddedToMax(), [*args, f"run_name=pad-{name}-max"])[0])
        lengths = token_lengths(workdir / "runs" / "usppm" / f"pad-{name}-dynamic", data)
        what = "CPC titles + group_targets" if extra else "CPC titles, no group_targets"
        lines.append(line("dynamic padding", f"USPPPM, {what} ({cap}): dynamic padding with "
                          "length-grouped batches / every batch padded to max_len", "samples/s", dynamic, fixed, 2.5,
                          "dynamic + grouped", "padded to max_len",
                          f"tokens per input: median {np.median(lengths):.0f}, mean {np.mean(lengths):.0f}, "
                          f"{np.mean(lengths >= max_len):.0%} at the cap; padded / real tokens "
                          f"{max_len / np.mean(lengths):.2f}, the most padding can cost"))
    return lines


def token_lengths(run_dir: Path, data: Path) -> np.ndarray:
    """Tokens of each training input as the run encoded them (after the max_len cut)."""
    task = UsppmTask()
    cfg = Run(run_dir).config()
    tokenizer = load_tokenizer(cfg.model, run_dir)
    texts = task.texts(cfg, pd.read_csv(data / "train.csv"), tokenizer.sep_token)
    return np.array([len(task.encode(cfg, tokenizer, t)["input_ids"]) for t in texts])


# ---- 3. image cache -------------------------------------------------------------------------------------
def shipped_photos(n: int) -> pd.DataFrame:
    """The first n armyworm photos as shipped in the shared data, and their labels."""
    train = pd.read_csv(SHARED / "armyworm" / "Train.csv").head(n)
    return pd.DataFrame({"path": [str(SHARED / "armyworm" / "Images" / i) for i in train["Image_id"]],
                         TARGET: train["Label"].astype(float).to_numpy()})


def scaled_up(photos: pd.DataFrame, wh: tuple[int, int], out_dir: Path) -> pd.DataFrame:
    """The photos resized to wh and written as JPEGs (quality 90) in out_dir: large photos of real leaves."""
    import cv2
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for source in photos["path"]:
        path = out_dir / Path(source).name
        cv2.imwrite(str(path), cv2.resize(cv2.imread(source), wh, interpolation=cv2.INTER_CUBIC),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(str(path))
    return photos.assign(path=paths)


def long_sides(paths) -> str:
    """The range of the images' longer sides, in words."""
    from PIL import Image
    sides = [max(Image.open(p).size) for p in paths]
    return f"long side {min(sides)} px" if min(sides) == max(sides) else f"long side {min(sides)}-{max(sides)} px"


def original_sizes() -> str:
    """The competition's own photos (the shared data's image_manifest.csv lists them), in words."""
    manifest = pd.read_csv(SHARED / "armyworm" / "image_manifest.csv")
    side = np.maximum(manifest["orig_width"], manifest["orig_height"])
    common = int(side.mode()[0])
    return f"long side {common} px for {np.mean(side == common):.0%} of them, up to {side.max()} px"


def images_per_s(task, cfg, frame: pd.DataFrame, passes: int) -> float:
    """Images/s of the training DataLoader (decode, resize, augment, collate), median over passes after a warm-up
    pass (which fills the cache, when there is one)."""
    loader = torch.utils.data.DataLoader(task.dataset(cfg, frame, "train", None), batch_size=8, shuffle=True)
    times = []
    for _ in range(passes + 1):
        start = time.perf_counter()
        for _batch in loader:
            pass
        times.append(time.perf_counter() - start)
    return len(frame) / statistics.median(times[1:])


def image_cache(size: dict, workdir: Path) -> list[dict]:
    """The cache on large photos (the shipped ones scaled up, near the size of the competition's largest) and on the
    photos as shipped in the shared data (already small: what the cache saves there is less)."""
    task = ArmywormTask()
    base = [f"data_dir={SHARED / 'armyworm'}", f"image_size={size['image_size']}"]
    configure_threads(task.config(base))
    w, h = size["photo_size"]
    shipped = shipped_photos(size["shipped_photos"])
    sources = shipped.head(size["photos"])
    large = scaled_up(sources, size["photo_size"], workdir / "photos")
    inputs = [(f"{len(large)} JPEGs of {w} x {h}, the shipped photos ({long_sides(sources.path)}) scaled up (the "
               f"competition's originals: {original_sizes()})", large, 5.0, "large"),
              (f"{len(shipped)} JPEGs as shipped in shared/data/armyworm ({long_sides(shipped.path)})", shipped, None,
               "shipped")]
    lines = []
    for what, frame, goal, name in inputs:
        cached = images_per_s(task, task.config([*base, f"image_cache={workdir / f'image-cache-{name}'}"]), frame,
                              size["passes"])
        decoded = images_per_s(task, task.config(base), frame, size["passes"])
        lines.append(line("image cache", f"{what} to {size['image_size']} px, training pipeline: image_cache= / "
                          "decoding and resizing the originals every epoch", "images/s", cached, decoded, goal,
                          "cached", "decoded every epoch"))
    return lines


# ---- 4. data parallel on the CPU ------------------------------------------------------------------------
def kit_command(args: list[str], nproc: int) -> list[str]:
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                "-m", "competitions", *args]
    return [sys.executable, "-m", "competitions", *args]


def ddp(size: dict, workdir: Path) -> list[dict]:
    runs = workdir / "runs"
    common = ["usppm", "train", f"data_dir={SHARED / 'usppm'}", f"runs_dir={runs}", f"limit={size['ddp_rows']}",
              "train_folds=[0]", f"epochs={size['epochs']}", "max_len=64"]
    cores = len(os.sched_getaffinity(0))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    speed = {}
    for name, nproc, threads, batch in (("one", 1, cores, 32), ("ddp", 2, max(1, cores // 2), 16)):
        subprocess.run(kit_command([*common, f"run_name=ddp-{name}", f"num_threads={threads}", f"batch_size={batch}"],
                                   nproc), check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
        run_dir = runs / "usppm" / f"ddp-{name}"
        speed[name] = (trained_per_epoch(run_dir, 32) / statistics.median(epoch_seconds(run_dir)),
                       pd.read_csv(run_dir / "fold0" / "oof.csv"))
    (ddp_speed, ddp_oof), (one_speed, one_oof) = speed["ddp"], speed["one"]
    same = sorted(ddp_oof["id"]) == sorted(one_oof["id"])
    gap = float(np.abs(ddp_oof.set_index("id")["pred"] - one_oof.set_index("id")["pred"]).max()) if same else None
    note = (f"same OOF rows: {'yes' if same else 'NO'} ({len(ddp_oof)} / {len(one_oof)})"
            + (f", largest prediction gap {gap:.3f}" if gap is not None else ""))
    return [line("data parallel (CPU)", f"MiniLM on USPPPM, batch 32 in all: torchrun 2 processes x "
                 f"{max(1, cores // 2)} thread / 1 process x {cores} threads", "samples/s", ddp_speed, one_speed,
                 None, "2 processes", "1 process", note)]


# ---- 5. inference ---------------------------------------------------------------------------------------
def rows_per_s(task, run, test_path: Path, repeats: int, **overrides) -> float:
    n = len(pd.read_csv(test_path))
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        api.predict(task, run, test_path, **overrides)
        times.append(time.perf_counter() - start)
    return n / statistics.median(times[1:])


def inference(size: dict, workdir: Path) -> list[dict]:
    task = ArmywormTask()
    data = SHARED / "armyworm"
    cfg = task.config([f"data_dir={data}", f"runs_dir={workdir / 'runs'}", "run_name=infer",
                       f"limit={size['image_rows']}", "folds=2", "epochs=1", f"image_size={size['image_size']}"])
    run = api.train(task, cfg)
    test = workdir / "test.csv"
    pd.read_csv(data / "Test.csv").head(size["infer_rows"]).to_csv(test, index=False)
    kw = {"data_dir": str(data), "runs_dir": str(workdir / "runs")}
    plain = rows_per_s(task, run, test, size["repeats"], tta=False, **kw)
    views = rows_per_s(task, run, test, size["repeats"], tta=True, **kw)
    return [line("inference", f"armyworm, Lite0 at {size['image_size']} px, 2 folds averaged: TTA (hflip, 2 views) / "
                 "no TTA", "rows/s", views, plain, None, "TTA", "no TTA")]


# ---- 6. precision ----------------------------------------------------------------------------------------
def training_speed(task, overrides: list[str]) -> tuple[float, str]:
    """Median samples/s of fold 0's epochs after the first, as the kit trains; and the precision it used."""
    speeds, _, cfg = kit_epochs(task, overrides)
    return statistics.median(speeds), cfg.precision


def precision(size: dict, workdir: Path) -> list[dict]:
    """Training samples/s under fp32, under the default (precision=auto) and under bf16, same rows and settings."""
    auto, why = auto_precision()
    text = [f"data_dir={SHARED / 'usppm'}", f"runs_dir={workdir / 'runs'}", "train_folds=[0]",
            f"epochs={size['epochs']}", "batch_size=32", "max_len=64"]
    models = [("MiniLM (all-MiniLM-L6-v2) on USPPPM pairs", UsppmTask(), [*text, f"limit={size['text_rows']}"]),
              ("all-mpnet-base-v2 on USPPPM pairs", UsppmTask(),
               [*text, f"limit={size['mpnet_rows']}", "model=sentence-transformers/all-mpnet-base-v2"]),
              (f"EfficientNet-Lite0 on armyworm, {size['image_size']} px", ArmywormTask(),
               [f"data_dir={SHARED / 'armyworm'}", f"runs_dir={workdir / 'runs'}", "train_folds=[0]",
                f"epochs={size['epochs']}", "batch_size=32", f"image_size={size['image_size']}",
                f"limit={size['image_rows']}"])]
    lines = []
    for i, (what, task, overrides) in enumerate(models):
        speed = {p: training_speed(task, [*overrides, f"precision={p}", f"run_name=precision-{i}-{p}"])[0]
                 for p in ("fp32", "bf16")}
        # auto is one of the two on any machine: its figure is that run's (the same settings, the same rows)
        lines.append(line("precision", f"{what}: the default (precision=auto) / fp32", "samples/s", speed[auto],
                          speed["fp32"], 1.5, f"auto = {auto}", "fp32", f"auto chose {auto}: {why}"))
        lines.append(line("precision", f"{what}: bf16 autocast / fp32", "samples/s", speed["bf16"], speed["fp32"],
                          None, "bf16", "fp32"))
    return lines


# ---- 7. ONNX Runtime -------------------------------------------------------------------------------------
def oof_metric(task, run, **overrides) -> float:
    """The metric on fold 0's validation rows predicted again under overrides (api.rescore)."""
    return api.rescore(task, run, **overrides)[1]["cv"]


def code_pairs_test(dest: Path, programs: int) -> Path:
    """A codesim test file whose pairs share no program (each row two programs the cache has not seen): the
    encoder's worst case, so rows/s is the embedding speed."""
    files = sorted((SHARED / "code_similarity" / "atcoder_python_grouped" / "code").glob("*/*.py"))[:programs]
    source = [f.read_text(encoding="utf-8", errors="replace") for f in files]
    pairs = pd.DataFrame({"pair_id": [f"TEST_{i:06d}" for i in range(len(source) // 2)],
                          "code1": source[0::2][:len(source) // 2], "code2": source[1::2][:len(source) // 2]})
    pairs.to_csv(dest, index=False)
    return dest


def onnx(size: dict, workdir: Path) -> list[dict]:
    """Eager torch vs ONNX Runtime fp32 vs int8 (quantize=int8) with fold 0's model of a 1-epoch run. Speed: rows/s
    predicting a test file (api.predict: reading, tokenizing or decoding, the model, the submission frame; the median
    of `repeats` passes after one warm-up pass, which exports the graphs). Metric: fold 0's OOF predicted again.
    Goal: >= 2x the eager rows/s with the metric within 0.005."""
    runs = f"runs_dir={workdir / 'runs'}"
    usppm_train = pd.read_csv(SHARED / "usppm" / "train.csv")
    phrases = workdir / "usppm_test.csv"  # train rows in the test format (the shipped test.csv has 36 rows)
    usppm_train.tail(size["onnx_text_rows"])[["id", "anchor", "target", "context"]].to_csv(phrases, index=False)
    mpnet_phrases = workdir / "usppm_test_mpnet.csv"
    usppm_train.tail(size["onnx_mpnet_rows"])[["id", "anchor", "target", "context"]].to_csv(mpnet_phrases, index=False)
    photos = workdir / "armyworm_test.csv"
    pd.read_csv(SHARED / "armyworm" / "Test.csv").head(size["onnx_image_rows"]).to_csv(photos, index=False)
    programs = code_pairs_test(workdir / "codesim_test.csv", size["onnx_programs"])
    text = [f"data_dir={SHARED / 'usppm'}", runs, "train_folds=[0]", "epochs=1", "batch_size=32", "max_len=64"]
    models = [
        ("MiniLM on USPPPM pairs", UsppmTask(), [*text, f"limit={size['text_rows']}"], phrases, "phrase pairs"),
        ("all-mpnet-base-v2 on USPPPM pairs", UsppmTask(),
         [*text, f"limit={size['mpnet_rows']}", "model=sentence-transformers/all-mpnet-base-v2"], mpnet_phrases,
         "phrase pairs"),
        ("MiniLM bi-encoder on programs (codesim)", CodesimTask(),
         [f"data_dir={SHARED / 'code_similarity' / 'atcoder_python_grouped'}", runs, "folds=5",
          "train_folds=[0]", "epochs=1", f"pairs_per_epoch={size['code_pairs']}", "batch_size=16", "max_len=128",
          "valid_positives=2"], programs, "program pairs, no program twice"),
        (f"EfficientNet-Lite0 on armyworm, {size['image_size']} px", ArmywormTask(),
         [f"data_dir={SHARED / 'armyworm'}", runs, "train_folds=[0]", "epochs=1", "batch_size=32",
          f"image_size={size['image_size']}", f"limit={size['image_rows']}"], photos, "photos, TTA off"),
    ]
    lines = []
    for i, (what, task, overrides, test, rows) in enumerate(models):
        run = api.train(task, task.config([*overrides, f"run_name=onnx-{i}"]))
        where = {"data_dir": run.config().data_dir, "runs_dir": str(workdir / "runs"), "tta": False}
        eager, eager_metric = rows_per_s(task, run, test, size["repeats"], **where), oof_metric(task, run, tta=False)
        n = len(pd.read_csv(test))
        for name, setting in (("ONNX Runtime fp32", {}), ("ONNX Runtime int8", {"quantize": "int8"})):
            speed = rows_per_s(task, run, test, size["repeats"], runtime="onnx", **setting, **where)
            metric = oof_metric(task, run, tta=False, runtime="onnx", **setting)
            item = line("onnx runtime", f"{what}: {name} / eager torch, {n} {rows}", "rows/s", speed, eager, 2.0,
                        name, "eager", f"{task.metric} on fold 0's OOF {metric:.4f} against eager "
                        f"{eager_metric:.4f} ({metric - eager_metric:+.4f}; goal within 0.005)")
            item["met"] = item["met"] and abs(metric - eager_metric) <= 0.005
            lines.append(item)
    return lines


CASES = {"trainer_text": trainer_text, "trainer_image": trainer_image, "padding": padding,
         "image_cache": image_cache, "ddp": ddp, "inference": inference, "precision": precision,
         "onnx": onnx}


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, children) / 1024, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run one benchmark; write its lines as JSON.")
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    lines = CASES[args.case](SIZES[args.size], args.workdir)
    for item in lines:
        item.update(case=args.case, peak_rss_mb=peak_rss_mb(), wall_s=round(time.time() - started, 1))
    args.json.write_text(json.dumps(lines, indent=1))


if __name__ == "__main__":
    main()
