"""Shared test set-up: offline hub, the real competition samples in ../shared/data, tiny-run helpers."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")          # no hub downloads in tests: packaged weights only
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("KIT_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_data(name: str) -> Path:
    """The real sample of a competition, or skip the test saying why."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real {name} sample not found at {path} (set KIT_SHARED_DATA to its parent)")
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in a temp folder, so runs/ and submissions/ land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
