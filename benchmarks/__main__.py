"""make bench: run every benchmark of benchmarks/cases.py, each in its own process (so its peak memory is its own),
one after another; print the table and write it to benchmarks/results.md.

    python -m benchmarks                      # full sizes: minutes on 2 cores
    python -m benchmarks --size tiny --out /tmp/results.md --only trainer_text padding
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.cases import CASES, SIZES

HERE = Path(__file__).resolve().parent
HEADER = ["benchmark", "what is compared", "kit", "baseline", "unit", "ratio", "goal", "met", "peak RSS", "wall"]


def run_case(case: str, size: str, workdir: Path) -> list[dict]:
    out = workdir / f"{case}.json"
    cmd = [sys.executable, "-m", "benchmarks.cases", case, "--size", size, "--workdir", str(workdir / case),
           "--json", str(out)]
    done = subprocess.run(cmd, cwd=HERE.parent, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark {case} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def table(lines: list[dict]) -> str:
    rows = [HEADER, ["---"] * len(HEADER)]
    for item in lines:
        goal = "-" if item["goal"] is None else f">= {item['goal']:g}"
        met = "-" if item["met"] is None else ("yes" if item["met"] else "**no**")
        compared = item["compared"] + (f" ({item['note']})" if item["note"] else "")
        rows.append([item["bench"], compared, f"{item['kit']:g} ({item['kit_name']})",
                     f"{item['baseline']:g} ({item['baseline_name']})", item["unit"], f"{item['ratio']:.2f}", goal,
                     met, f"{item['peak_rss_mb'] / 1024:.1f} GB", f"{item['wall_s']:.0f} s"])
    return "\n".join("| " + " | ".join(map(str, r)) + " |" for r in rows)


def machine() -> str:
    import torch
    cores = len(os.sched_getaffinity(0))
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cores} cores ({cpu}), torch {torch.__version__}, {torch.get_num_threads()} threads by default"


# Cases long enough to have their own make target and results file (make bench-onnx: benchmarks/results_onnx.md)
OWN_TARGET = ("onnx",)
ONNX_NOTE = ("\nWhere ONNX Runtime misses 2x: each pass also reads the file, tokenizes or decodes, builds the fold's "
             "module, hashes its checkpoint and opens the session, which dilutes the network's speed-up where there is one; "
             "docs/onnx.md, Measured, has the figures per exporter and what might close the gap.\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--only", nargs="+", choices=sorted(CASES), help="these benchmarks only")
    parser.add_argument("--out", type=Path, default=HERE / "results.md")
    parser.add_argument("--workdir", type=Path, help="keep the runs here (default: a temp folder, deleted)")
    args = parser.parse_args(argv)
    cases = args.only or [case for case in CASES if case not in OWN_TARGET]
    started = time.time()
    lines = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        for case in cases:
            print(f"{case} ...", flush=True)
            lines += run_case(case, args.size, workdir)
    text = table(lines)
    if "onnx" in cases:
        text += ONNX_NOTE
    print(text)
    command = "make bench" if args.size == "full" and not args.only else "python -m benchmarks " + " ".join(
        argv if argv is not None else sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        f"# make bench: the kit against the plain way\n\n`{command}` on {time.strftime('%Y-%m-%d')}, "
        f"{machine()}; {time.time() - started:.0f} s in all.\n"
        "Ratios compare two ways of doing the same work back to back on one machine; the absolute figures are "
        "this machine's.\n\n" + text + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
