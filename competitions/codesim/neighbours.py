"""Query expansion probe (README, Results): would a bi-encoder run score better if each program's embedding were
averaged with its nearest programs of the set being scored (average query expansion), as retrieval systems do?

    python -m competitions.codesim.neighbours RUN [RUN ...] [--k 2] [--draws 30] [--runs-dir runs]

Each fold model embeds the programs of its fold's scored pairs; several runs are blended with equal weights (the
mean of their cosines). Expanded: each unit embedding plus its k most similar others of the set, weighted by their
cosine, renormalised. Two pair sets per fold, both cut where the other folds' scored pairs say (as a submission's
cut is set on the OOF):
- dense: the run's own scored pairs, where a program meets its ~2.5 same-problem siblings;
- sparse: random draws in which each program is in at most one pair (half of them same-problem when a sibling is
  free), as in a test file that pairs programs of many problems once each.
It prints accuracy for both sets, with and without expansion (sparse: mean and spread over the draws)."""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from common.metrics import get_metric, tune_threshold
from common.pairs import expand_neighbours, text_key
from common.predict import fold_context, load_fold_model
from common.runs import Run
from common.task import model_inputs
from competitions.codesim.task import CodesimTask


def fold_embeddings(task: CodesimTask, run: Run, fold: int, programs: list[str]) -> torch.Tensor:
    """(programs, dim) unit embeddings from the run's fold model, in fp32."""
    cfg = run.config({"precision": "fp32"})
    ctx = fold_context(task, cfg, run, fold)
    model = load_fold_model(task, cfg, run, ctx, 1).eval()
    frame = pd.DataFrame({"pair_id": range(len(programs)), "code1": programs, "code2": programs})
    loader = DataLoader(task.dataset(cfg, frame, "test", ctx), batch_size=64, collate_fn=task.collate_fn(cfg, ctx))
    with torch.no_grad():
        for batch in loader:
            model(**model_inputs(batch))  # fills the model's embedding cache, keyed by text
    return torch.stack([model.cache.store[text_key(p)] for p in programs])


def scored_files(task: CodesimTask, cfg, oof: pd.DataFrame) -> pd.DataFrame:
    """The two files (columns 0 and 1) of each OOF row, from the run's scored pairs."""
    pairs = task.load_train(cfg).set_index(task.id_column)
    return pairs.loc[oof[task.id_column], ["file1", "file2"]].set_axis([0, 1], axis=1).reset_index(drop=True)


def sparse_draw(problems: np.ndarray, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """Pairs (i, j, same problem) using each program at most once: a program takes a free sibling half the time,
    the programs left are paired in turn when their problems differ."""
    order, used, pairs = rng.permutation(len(problems)), set(), []
    for i in order:
        if i in used or rng.random() >= 0.5:
            continue
        sibling = next((j for j in order if j != i and j not in used and problems[j] == problems[i]), None)
        if sibling is not None:
            pairs.append((i, sibling, 1))
            used |= {i, sibling}
    rest = [i for i in order if i not in used]
    pairs += [(i, j, 0) for i, j in zip(rest[::2], rest[1::2]) if problems[i] != problems[j]]
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--draws", type=int, default=30)
    parser.add_argument("--runs-dir", default="runs")
    args = parser.parse_args()
    task, metric = CodesimTask(), get_metric("accuracy")
    runs = [Run.open(task.name, name, args.runs_dir) for name in args.runs]
    oof = pd.read_csv(runs[0].oof_path)
    for run in runs[1:]:
        if not pd.read_csv(run.oof_path)["pair_id"].equals(oof["pair_id"]):
            raise SystemExit(f"{run.dir}: its scored pairs differ from {runs[0].dir}'s; blend runs of the same folds")
    cfg = runs[0].config()
    corpus, _ = task.corpus(cfg)
    code, problem = dict(zip(corpus.file, corpus.code)), dict(zip(corpus.file, corpus.problem))
    sides = scored_files(task, cfg, oof)
    y, folds = oof["target"].to_numpy(), oof["fold"].to_numpy()
    cosines = {}  # (fold, expanded) -> (files of the fold, their cosine matrix: the mean over runs)
    for fold in np.unique(folds):
        own = folds == fold
        files = sorted(set(sides[0][own]) | set(sides[1][own]))
        emb = [fold_embeddings(task, run, int(fold), [code[f] for f in files]) for run in runs]
        for k in (0, args.k):
            views = [expand_neighbours(x, k) if k else x for x in emb]
            cosines[fold, k] = files, torch.stack([v @ v.T for v in views]).mean(0).numpy()
    rng = np.random.default_rng(0)  # the same draws for both scorings
    draws = [{fold: sparse_draw(np.array([problem[f] for f in cosines[fold, 0][0]]), rng) for fold in np.unique(folds)}
             for _ in range(args.draws)]
    for k in (0, args.k):
        dense = np.zeros(len(oof))
        for fold in np.unique(folds):
            files, sim = cosines[fold, k]
            where = {f: i for i, f in enumerate(files)}
            own = folds == fold
            dense[own] = sim[sides[0][own].map(where), sides[1][own].map(where)]
        if not k and len(runs) == 1 and not cfg.query_expansion:  # its OOF holds plain cosines: these
            gap = np.abs(np.clip(dense, 0, 1) - oof["pred"]).max()  # the run stores cosines clipped to [0, 1]
            print(f"largest |cosine - the run's OOF prediction|: {gap:.1e}")
        cut = {fold: tune_threshold(y[folds != fold], dense[folds != fold], metric) for fold in np.unique(folds)}
        dense_right = sum(((dense[folds == f] >= cut[f]) == y[folds == f]).sum() for f in cut)
        sparse = []
        for draw in draws:
            right = n = 0
            for fold, pairs in draw.items():
                sim = cosines[fold, k][1]
                for i, j, same in pairs:
                    right += (sim[i, j] >= cut[fold]) == same
                    n += 1
            sparse.append(right / n)
        label = f"expanded, k={k}" if k else "no expansion"
        print(f"{label:16s} dense {dense_right / len(y):.4f} ({len(y)} pairs)   sparse {np.mean(sparse):.4f} "
              f"± {np.std(sparse):.4f} ({args.draws} draws of {n} pairs)")


if __name__ == "__main__":
    main()
