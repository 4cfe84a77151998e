"""BM25 retrieval (rank-bm25's Okapi scores, as sparse products): for every document of a corpus, the documents
of OTHER groups that rank highest with it as the query, the negatives that look most alike. No torch: a corpus is
lists of terms (`word_tokens`), a group label per document.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from rank_bm25 import BM25Okapi
from scipy import sparse

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+")


def word_tokens(text: str) -> list[str]:
    """BM25 terms of a text: identifiers, keywords and numbers (punctuation is noise for code and prose alike)."""
    return _WORD.findall(text)


def bm25_index(docs: Sequence[list[str]], k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25):
    """rank-bm25's Okapi index and its scores as a sparse term x doc matrix W, so that a query's scores are
    counts(query) @ W, exactly BM25Okapi.get_scores (which sums over the query's tokens, repeats included)."""
    docs = [list(d) if len(d) else ["<empty>"] for d in docs]  # rank-bm25 divides by the mean length
    bm25 = BM25Okapi(docs, k1=k1, b=b, epsilon=epsilon)
    vocab = {w: i for i, w in enumerate(bm25.idf)}
    rows, cols, vals = [], [], []
    for d, freqs in enumerate(bm25.doc_freqs):
        norm = bm25.k1 * (1 - bm25.b + bm25.b * bm25.doc_len[d] / bm25.avgdl)
        for w, tf in freqs.items():
            rows.append(vocab[w])
            cols.append(d)
            vals.append(bm25.idf[w] * tf * (bm25.k1 + 1) / (tf + norm))
    weights = sparse.csr_matrix((vals, (rows, cols)), shape=(len(vocab), len(docs)))
    return bm25, vocab, weights


def bm25_scores(queries: Sequence[list[str]], vocab: dict, weights) -> np.ndarray:
    """Dense (n_queries, n_docs) BM25 scores of each query against the index."""
    rows, cols = [], []
    for q, tokens in enumerate(queries):
        for w in tokens:
            if w in vocab:
                rows.append(q)
                cols.append(vocab[w])
    counts = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(queries), len(vocab)))
    return np.asarray((counts @ weights).todense())


def bm25_hard_negatives(docs: Sequence[list[str]], groups: Sequence, k: int, chunk: int = 512,
                        **bm25_args) -> np.ndarray:
    """(n, k) positions of the k highest-scoring documents of other groups for each document used as the query,
    best first; -1 where fewer than k exist. Chunked sparse products: practical for tens of thousands of files."""
    n = len(docs)
    groups = np.asarray(groups)
    out = np.full((n, max(k, 0)), -1, dtype=np.int64)
    if k <= 0 or n == 0:
        return out
    _, vocab, weights = bm25_index(docs, **bm25_args)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        # rounded: rank-bm25 and a sparse product sum in different orders; equal scores must stay equal (ties)
        scores = np.round(bm25_scores(docs[start:stop], vocab, weights), 9)
        scores[groups[start:stop, None] == groups[None, :]] = -np.inf  # same group: not a negative (self included)
        kk = min(k, n)
        kth = -np.partition(-scores, kk - 1, axis=1)[:, kk - 1]  # the k-th best score of each row
        for r in range(stop - start):
            # everything tied with the k-th best, best first, ties broken by position (a stable, exact top-k)
            cand = np.flatnonzero((scores[r] >= kth[r]) & np.isfinite(scores[r]))
            cand = cand[np.lexsort((cand, -scores[r, cand]))][:kk]
            out[start + r, :len(cand)] = cand
    return out
