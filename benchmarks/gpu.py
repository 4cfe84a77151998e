"""benchmarks/gpu.sh: each competition's CPU default and its seed / winner config for a few hundred optimizer steps,
in bf16 on a GPU: samples/s, peak GPU memory, the fold-0 score so far and the projected time of a full 5-fold run,
appended to benchmarks/results.md. Each config runs in its own process (an out-of-memory one is a line, not the end).

Hub-only weights: an image backbone trains from a random init (the speed is the same; the score is then not the
config's), a text model runs only if its weights are in the local Hugging Face cache.

    python -m benchmarks.gpu                          # what gpu.sh runs (bf16, 300 steps a config)
    python -m benchmarks.gpu --size tiny --precision fp32 --out /tmp/gpu.md   # the CPU check
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("KIT_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
DATA = {"usppm": "usppm", "mvtec": "mvtec", "armyworm": "armyworm",
        "codesim": "code_similarity/atcoder_python_grouped", "growth": "growth/komatsuna"}

# name: (competition, overrides, batch size on a GPU, compile). The first of each competition is its CPU default.
CONFIGS = {
    "usppm-minilm": ("usppm", [], 128, False),
    "usppm-deberta-v3-large": ("usppm", ["experiment=deberta_v3_large",  # its titles: the shared real file
                                         f"cpc_titles={SHARED / 'usppm' / 'cpc_titles.csv'}"], 16, False),
    "mvtec-lite0": ("mvtec", [], 64, True),
    "mvtec-efficientnet-b3": ("mvtec", ["experiment=efficientnet_b3"], 32, True),
    "armyworm-lite0": ("armyworm", [], 128, True),
    "armyworm-resnet50": ("armyworm", ["experiment=resnet50"], 64, True),
    "codesim-bi-minilm": ("codesim", [], 64, False),
    "codesim-unixcoder": ("codesim", ["experiment=unixcoder"], 16, False),
    "growth-lite0-fusion": ("growth", ["model_kind=fusion", "folds=4"], 64, True),  # komatsuna: 4 plants
    "growth-resnet50-fusion": ("growth", ["experiment=fusion_resnet50", "folds=4"], 32, True),
}
# tiny: the CPU check of the script (no compile: inductor takes minutes on a CPU; tests/test_trainer.py checks it)
SIZES = {"full": {"steps": 300},
         "tiny": {"steps": 4, "batch_size": 4, "image_size": 64, "max_len": 32, "compile": False}}


def text_weights_missing(cfg) -> str | None:
    """Why a text model cannot load here (not packaged, not in the local hub cache), or None."""
    from common.weights import resolve_text_model
    try:
        resolve_text_model(cfg.model)
        return None
    except Exception as e:  # noqa: BLE001  (any failure to resolve means: not here)
        return f"{cfg.model}: weights not available offline ({type(e).__name__})"


def epoch_rows(cfg, n_rows: int) -> float:
    """Rows one epoch of fold 0 trains on: sampled pairs where the task draws them, else the other folds' rows."""
    return cfg.get("pairs_per_epoch") or n_rows * (cfg.folds - 1) / cfg.folds


def run_config(name: str, size: dict, precision: str, workdir: Path) -> dict:
    import torch

    from common import api
    from competitions.__main__ import load_task

    competition, overrides, batch_size, compile_ = CONFIGS[name]
    task = load_task(competition)
    base = [f"data_dir={SHARED / DATA[competition]}", f"runs_dir={workdir}", *overrides]
    full = task.config(base)
    out = {"config": name, "competition": competition, "model": full.model, "precision": precision}
    if "max_len" in full and text_weights_missing(full):
        return {**out, "skipped": text_weights_missing(full)}
    batch_size = size.get("batch_size", batch_size)
    compile_ = size.get("compile", compile_)
    n_rows = len(task.load_train(full))
    steps_per_epoch = max(1, size["steps"] // 2)  # two epochs: the first is the warm-up (and the compile)
    tweaks = [f"batch_size={batch_size}", f"precision={precision}", f"compile={str(compile_).lower()}",
              "train_folds=[0]", "epochs=2", f"run_name=gpu-{name}"]
    if "pairs_per_epoch" in full:
        tweaks.append(f"pairs_per_epoch={steps_per_epoch * batch_size}")
    else:
        rows = math.ceil(steps_per_epoch * batch_size * full.folds / (full.folds - 1))
        tweaks.append(f"limit={min(n_rows, max(rows, 10 * full.folds))}")  # >= 2 rows of each class in fold 0
    tweaks += [f"{k}={size[k]}" for k in ("image_size", "max_len") if k in size and k in full]
    random_init = "image_size" in full and not pretrained_available(task, full)
    if random_init:
        tweaks.append("pretrained=false")
    cfg = task.config([*base, *tweaks])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    run = api.train(task, cfg)
    history = pd.read_csv(run.fold_dir(0) / "history.csv")
    epoch_s = float(history["elapsed_s"].iloc[-1] - history["elapsed_s"].iloc[-2])
    samples = epoch_rows(cfg, cfg.limit or n_rows)
    projected = full.folds * full.epochs * epoch_s * epoch_rows(full, n_rows) / samples
    memory = (torch.cuda.max_memory_allocated() / 2**30) if torch.cuda.is_available() else float("nan")
    return {**out, "batch_size": batch_size, "compile": compile_, "samples_per_s": round(samples / epoch_s, 1),
            "steps": int(history["step"].iloc[-1]), "peak_gpu_gb": round(memory, 2),
            "score": round(run.metrics()["cv"], 4), "metric": run.metrics()["metric"],
            "projected_5fold_min": round(projected / 60, 1), "epochs_full": full.epochs,
            "note": "random init (weights on the hub): speed only" if random_init else ""}


def pretrained_available(task, cfg) -> bool:
    """True when the image backbone's pretrained weights load without the network."""
    from common.vision import create_image_model
    try:
        create_image_model(cfg.model, 1, True, cfg.get("weights"), 0.0, None)
        return True
    except Exception:  # noqa: BLE001  (no weights file, no package, no hub: random init instead)
        return False


def table(lines: list[dict]) -> str:
    head = ["config", "model", "batch", "compile", "samples/s", "peak GPU memory", "fold-0 score after the steps",
            "projected 5-fold run", "note"]
    rows = [head, ["---"] * len(head)]
    for x in lines:
        if "skipped" in x:
            rows.append([x["config"], x["model"], "", "", "", "", "", "", f"skipped: {x['skipped']}"])
        elif "error" in x:
            rows.append([x["config"], x["model"], "", "", "", "", "", "", f"failed: {x['error']}"])
        else:
            rows.append([x["config"], x["model"], x["batch_size"], "yes" if x["compile"] else "no", x["samples_per_s"],
                         "-" if x["peak_gpu_gb"] != x["peak_gpu_gb"] else f"{x['peak_gpu_gb']} GB", f"{x['metric']} {x['score']} ({x['steps']} steps)",
                         f"{x['projected_5fold_min']} min ({x['epochs_full']} epochs)", x["note"]])
    return "\n".join("| " + " | ".join(map(str, r)) + " |" for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--only", nargs="+", choices=sorted(CONFIGS))
    parser.add_argument("--out", type=Path, default=HERE / "results.md")
    parser.add_argument("--one", choices=sorted(CONFIGS), help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        args.json.write_text(json.dumps(run_config(args.one, SIZES[args.size], args.precision, args.workdir)))
        return 0
    started, lines = time.time(), []
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        for name in args.only or list(CONFIGS):
            print(f"{name} ...", flush=True)
            out = Path(tmp) / f"{name}.json"
            done = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--one", name, "--size", args.size,
                                   "--precision", args.precision, "--workdir", tmp, "--json", str(out)],
                                  cwd=HERE.parent, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
                lines.append({"config": name, "model": CONFIGS[name][0], "error": last})
            else:
                lines.append(json.loads(out.read_text()))
            print(table(lines[-1:]).splitlines()[-1], flush=True)
    import torch
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (no GPU: a check of the script)"
    text = table(lines)
    section = (f"\n## GPU: {device}\n\n`benchmarks/gpu.sh` ({args.size}, {args.precision}) on "
               f"{time.strftime('%Y-%m-%d')}, {time.time() - started:.0f} s in all. Projected 5-fold run: the "
               "measured second epoch scaled to the full data, the config's epochs and 5 folds.\n\n" + text + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(section)
    print(text)
    print(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
