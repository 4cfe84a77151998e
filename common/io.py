"""Reading inputs with errors that name the file and column; writing outputs atomically (temp file + rename)."""
from __future__ import annotations

import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from common.errors import DataError  # noqa: F401  (re-exported: older imports use common.io)


REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements.txt"


def pinned_requirements(path: str | Path = REQUIREMENTS) -> dict[str, str]:
    """The exact pins of a requirements file: normalised name (lower case, '-') -> 'Name==version'."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s#;]+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = f"{m.group(1)}=={m.group(2)}"
    return pins


def read_csv(path: str | Path, **kwargs) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable CSV ({e})") from None
    if kwargs.get("nrows") != 0 and df.empty:
        raise DataError(f"{path}: the file has a header but no rows")
    return df


def require_columns(df: pd.DataFrame, columns: list[str], path: str | Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(map(repr, missing))}; "
                        f"found {', '.join(map(repr, df.columns))}")


def require_range(df: pd.DataFrame, column: str, lo: float, hi: float, path: str | Path) -> None:
    values = pd.to_numeric(df[column], errors="coerce")
    bad = df.index[values.isna() | (values < lo) | (values > hi)]
    if len(bad):
        row = bad[0]
        raise DataError(f"{path}: column {column!r} must be numbers in [{lo}, {hi}]; "
                        f"{len(bad)} row(s) are not, the first at data row {row + 1}: {plain(df.loc[row, column])!r}")


def plain(value):
    """A cell as a user wrote it: numpy scalars as Python ones (nan, 3, not np.float64(nan), np.int64(3))."""
    return value.item() if hasattr(value, "item") else value


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temp path next to `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


def write_json(obj, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2, default=float) + "\n")
    return Path(path)


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())
