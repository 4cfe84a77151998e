"""What CI relies on in the test set-up: under KIT_REQUIRE_SHARED_DATA=1 (.ci/run) a missing real sample fails."""
import pytest

from tests import conftest
from tests.conftest import REPO, shared_data


def test_a_missing_sample_skips_but_fails_under_kit_require_shared_data(monkeypatch, tmp_path):
    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path)
    (tmp_path / "there").mkdir()
    monkeypatch.delenv("KIT_REQUIRE_SHARED_DATA", raising=False)
    assert shared_data("there") == tmp_path / "there"
    with pytest.raises(pytest.skip.Exception, match="real gone sample not found"):
        shared_data("gone")
    monkeypatch.setenv("KIT_REQUIRE_SHARED_DATA", "1")
    assert shared_data("there") == tmp_path / "there"
    with pytest.raises(pytest.fail.Exception, match="real gone sample not found.*KIT_REQUIRE_SHARED_DATA=1"):
        shared_data("gone")


def test_ci_requires_the_real_samples():
    assert "export KIT_REQUIRE_SHARED_DATA=1" in (REPO / ".ci/run").read_text().splitlines()
