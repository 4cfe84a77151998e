"""Fill a copy of sample_submission.csv; refuse a wrong shape, id order, dtype or NaN with a clear message."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import DataError, SubmissionError
from common.io import plain, read_csv, require_columns, write_csv


def fill_sample(sample_path: str | Path, ids, values, out_path: str | Path) -> Path:
    """Write a copy of the sample submission with its target column filled from (ids, values), matched by id."""
    sample = read_csv(sample_path)
    if sample.shape[1] != 2:
        raise SubmissionError(f"{sample_path}: expected 2 columns (id, target), found {list(sample.columns)}")
    id_col, target_col = sample.columns
    preds = pd.Series(list(values), index=pd.Index(pd.Series(list(ids)).astype(str), name=id_col))
    if preds.index.duplicated().any():
        raise SubmissionError(f"predictions repeat id {preds.index[preds.index.duplicated()][0]!r}")
    sample_ids = sample[id_col].astype(str)
    missing = sample_ids[~sample_ids.isin(preds.index)]
    extra = preds.index[~preds.index.isin(sample_ids)]
    if len(missing) or len(extra):
        raise SubmissionError(f"{sample_path}: {len(sample)} ids expected, {len(preds)} predicted; "
                              f"{len(missing)} missing (e.g. {list(missing[:3])}), "
                              f"{len(extra)} not in the sample (e.g. {list(extra[:3])})")
    submission = sample.copy()
    submission[target_col] = preds.loc[sample_ids].to_numpy()
    validate(submission, sample, source=str(out_path))
    return write_csv(submission, out_path)


def validate(submission: pd.DataFrame | str | Path, sample: pd.DataFrame | str | Path, source: str = "") -> None:
    """Raise SubmissionError unless submission has the sample's columns, row count, id order, a target
    column of a compatible dtype, and no NaN."""
    if not isinstance(submission, pd.DataFrame):
        source = source or str(submission)
        submission = read_csv(submission)
    if not isinstance(sample, pd.DataFrame):
        sample = read_csv(sample)
    where = f"{source}: " if source else ""
    if list(submission.columns) != list(sample.columns):
        raise SubmissionError(f"{where}columns {list(submission.columns)} differ from the sample's "
                              f"{list(sample.columns)}")
    if len(submission) != len(sample):
        raise SubmissionError(f"{where}{len(submission)} rows, the sample has {len(sample)}")
    id_col, target_col = sample.columns
    differs = submission[id_col].astype(str).to_numpy() != sample[id_col].astype(str).to_numpy()
    if differs.any():
        row = int(differs.argmax())
        raise SubmissionError(f"{where}id order differs from the sample at row {row + 1}: "
                              f"{plain(submission[id_col].iloc[row])!r} vs {plain(sample[id_col].iloc[row])!r}")
    nan = submission[target_col].isna()
    if nan.any():
        raise SubmissionError(f"{where}{int(nan.sum())} NaN in {target_col!r}, the first at row {int(nan.argmax()) + 1}")
    numeric_sample = pd.api.types.is_numeric_dtype(sample[target_col])
    if numeric_sample and not pd.api.types.is_numeric_dtype(submission[target_col]):
        raise SubmissionError(f"{where}{target_col!r} must be numeric like the sample's, "
                              f"got {submission[target_col].dtype}")


def check_sample_ids(test: pd.DataFrame, path: str | Path, sample_path: str | Path, id_column: str) -> None:
    """A competition's test file must list the sample submission's ids in the same order (no sample: nothing to
    check). Checked when the test is read, so a mismatch stops before inference rather than at submit."""
    sample_path = Path(sample_path)
    if not sample_path.is_file():
        return
    sample = read_csv(sample_path)
    require_columns(sample, [id_column], sample_path)
    ids, expected = test[id_column].astype(str).to_numpy(), sample[id_column].astype(str).to_numpy()
    n = min(len(ids), len(expected))
    differs = np.flatnonzero(ids[:n] != expected[:n])
    if len(differs):
        row = int(differs[0])
        raise DataError(f"{path}: data row {row + 1} has {id_column} {ids[row]!r} where {sample_path} has "
                        f"{expected[row]!r} (the test file and the sample submission must list the same ids in the "
                        f"same order)")
    if len(ids) != len(expected):
        longer, shorter = (path, sample_path) if len(ids) > len(expected) else (sample_path, path)
        raise DataError(f"{longer}: data row {n + 1} onwards ({abs(len(ids) - len(expected))} rows) are not in "
                        f"{shorter}")
