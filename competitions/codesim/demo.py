"""`make codesim-demo`: a small synthetic corpus in DACON's layout, then train -> infer -> submit on the CPU.

Each problem is "read a list of integers, map every element through a transform (with the problem's own constant),
aggregate, print". Its solutions differ the way real ones do: variable names, builtins or loops, a function or
not, how input is read and output written, comments and docstrings. Two programs solve the same problem exactly
when aggregate, transform and constant agree, so there is a real signal, and problems that share an aggregate
are the look-alike (hard) negatives. One file is Python 2 and one does not tokenize, as in real dumps.
"""
from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd


# aggregate: (expression over the generator {g}, loop that leaves the result in {r}); {t} is the transform.
AGGREGATES = {
    "sum": ("sum({g})", "{r} = 0\nfor {v} in {a}:\n    {r} += {t}\n"),
    "max": ("max({g})", "{r} = None\nfor {v} in {a}:\n    y = {t}\n    if {r} is None or y > {r}:\n        {r} = y\n"),
    "min": ("min({g})", "{r} = None\nfor {v} in {a}:\n    y = {t}\n    if {r} is None or y < {r}:\n        {r} = y\n"),
    "even": ("len([1 for y in ({g}) if y % 2 == 0])",
             "{r} = 0\nfor {v} in {a}:\n    if ({t}) % 2 == 0:\n        {r} += 1\n"),
    "distinct": ("len(set({g}))", "seen = set()\nfor {v} in {a}:\n    seen.add({t})\n{r} = len(seen)\n"),
    "product": ("functools.reduce(lambda p, q: p * q % 1000000007, ({g}), 1)",
                "{r} = 1\nfor {v} in {a}:\n    {r} = {r} * ({t}) % 1000000007\n"),
}
TRANSFORMS = ["{v} * {v} + {k}", "{v} + {k}", "abs({v} - {k})", "{v} % {k}", "{v} * {k}", "{v} // 2 + {k}",
              "({v} ^ {k})", "max({v}, {k})"]
NAMES = {"a": ["a", "arr", "nums", "values", "xs", "lst", "A"], "v": ["x", "v", "e", "num", "item", "val"],
         "r": ["ans", "res", "result", "total", "out", "r"]}
READERS = ["n = int(input())\n{a} = list(map(int, input().split()))\n",
           "import sys\ndata = sys.stdin.read().split()\nn = int(data[0])\n{a} = [int(t) for t in data[1:n + 1]]\n",
           "input()\n{a} = [int(t) for t in input().split()]\n"]
WRITERS = ["print({r})\n", "print(f\"{{{r}}}\")\n", "import sys\nsys.stdout.write(str({r}) + \"\\n\")\n"]
COMMENTS = ["# read the input", "# TODO: faster", "# main logic", "# AtCoder", "# edge case: empty list?"]


def solution(rng: np.random.Generator, aggregate: str, transform: str, k: int) -> str:
    names = {key: str(rng.choice(pool)) for key, pool in NAMES.items()}
    t = transform.format(v=names["v"], k=k)
    expr, loop = AGGREGATES[aggregate]
    if rng.random() < 0.5:
        body = f"{names['r']} = " + expr.format(g=f"{t} for {names['v']} in {names['a']}") + "\n"
    else:
        body = loop.format(r=names["r"], v=names["v"], a=names["a"], t=t)
    read = str(rng.choice(READERS)).format(a=names["a"])
    write = str(rng.choice(WRITERS)).format(r=names["r"])
    header = "import functools\n" if "functools" in body else ""
    if rng.random() < 0.5:  # inside a function, sometimes with a docstring
        doc = '    """Solve one test case."""\n' if rng.random() < 0.5 else ""
        inner = "".join("    " + line + "\n" for line in (read + body + write).splitlines())
        code = f"{header}\n\ndef main():\n{doc}{inner}\n\nif __name__ == \"__main__\":\n    main()\n"
    else:
        code = header + read + "\n" + body + write
    lines = code.splitlines()
    for _ in range(int(rng.integers(0, 3))):  # comments on their own lines, at the same indentation
        at = int(rng.integers(0, len(lines)))
        indent = lines[at][:len(lines[at]) - len(lines[at].lstrip())]
        lines.insert(at, indent + str(rng.choice(COMMENTS)))
    return "\n".join(lines) + "\n"


def make_dataset(dest: Path, n_problems: int = 30, n_test_problems: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    specs = [(agg, tr) for agg in AGGREGATES for tr in TRANSFORMS]
    chosen = [specs[i] for i in rng.choice(len(specs), n_problems + n_test_problems, replace=False)]
    problems = [(agg, tr, int(rng.integers(2, 50))) for agg, tr in chosen]
    code_dir = dest / "code"
    for p, (agg, tr, k) in enumerate(problems[:n_problems], start=1):
        folder = code_dir / f"problem{p:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for s in range(1, int(rng.integers(4, 7)) + 1):
            (folder / f"problem{p:03d}_{s}.py").write_text(solution(rng, agg, tr, k))
    # As in real dumps: a Python 2 file (tokenizes), one that does not (unterminated string), a duplicate.
    (code_dir / "problem001" / "problem001_90.py").write_text("n = input()\nprint sum(map(int, raw_input().split()))\n")
    (code_dir / "problem002" / "problem002_91.py").write_text('print("unterminated\n"""\n')
    first = code_dir / "problem003" / "problem003_1.py"
    (code_dir / "problem003" / "problem003_92.py").write_text(first.read_text() + "\n\n# same file, one comment more\n")
    # DACON's labelled pairs (raw text inline): a few, to exercise that path.
    folders = sorted(code_dir.iterdir())
    pairs = []
    for i in range(12):  # half same-problem, half random
        one = folders[int(rng.integers(len(folders)))]
        other = one if i % 2 == 0 else folders[int(rng.integers(len(folders)))]
        f1, f2 = rng.choice(sorted(one.glob("*.py")), 2, replace=False) if other == one else (
            rng.choice(sorted(one.glob("*.py"))), rng.choice(sorted(other.glob("*.py"))))
        pairs.append({"code1": f1.read_text(), "code2": f2.read_text(), "similar": int(one == other)})
    pd.DataFrame(pairs).to_csv(dest / "sample_train.csv", index=False)
    # The test: pairs of programs of problems never seen in training, half of them similar.
    test_code = [[solution(rng, agg, tr, k) for _ in range(4)] for agg, tr, k in problems[n_problems:]]
    rows = []
    for p, sols in enumerate(test_code):
        for c1, c2 in list(combinations(sols, 2))[:3]:
            rows.append((c1, c2))
            q = (p + 1 + int(rng.integers(0, len(test_code) - 1))) % len(test_code)
            rows.append((c1, test_code[q][int(rng.integers(0, 4))]))
    test = pd.DataFrame(rows, columns=["code1", "code2"]).sample(frac=1.0, random_state=seed)
    test.insert(0, "pair_id", np.arange(1, len(test) + 1))
    test.to_csv(dest / "test.csv", index=False)
    test[["pair_id"]].assign(similar=-1).to_csv(dest / "sample_submission.csv", index=False)  # DACON's placeholder
    return dest


# The bi-encoder: a few dozen steps reach CV ~0.97 here; the cross-encoder needs more than a demo's minutes on
# a CPU (ARGS="experiment=cross" for it, with more pairs_per_epoch).
SETTINGS = {"epochs": 1, "folds": 3, "pairs_per_epoch": 96, "batch_size": 16, "max_len": 128}
