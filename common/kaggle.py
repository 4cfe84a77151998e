"""The kaggle CLI from the kit: competition downloads (and, see below, kernel pushes).

    python -m common.kaggle download <competition-slug> <dest>
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path


class KaggleError(RuntimeError):
    pass


def credentials_found() -> bool:
    """The kaggle CLI reads KAGGLE_USERNAME + KAGGLE_KEY, KAGGLE_API_TOKEN, or files in KAGGLE_CONFIG_DIR / ~/.kaggle."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY") or os.environ.get("KAGGLE_API_TOKEN"):
        return True
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    return (config_dir / "kaggle.json").is_file() or (config_dir / "access_token").is_file()


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


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "download":
        sys.exit("usage: python -m common.kaggle download <competition-slug> <dest>")
    try:
        download(sys.argv[2], sys.argv[3])
    except KaggleError as e:
        sys.exit(f"error: {e}")
