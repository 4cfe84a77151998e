import os
import subprocess
import sys

from tests.conftest import REPO


def test_usppm_data_without_credentials_says_what_to_do(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(HOME=str(tmp_path), KAGGLE_CONFIG_DIR=str(tmp_path / ".kaggle"))
    result = subprocess.run([sys.executable, "-m", "competitions", "usppm", "download", f"dest={tmp_path / 'data'}"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "no Kaggle credentials" in result.stderr and "kaggle.json" in result.stderr
    assert not (tmp_path / "data").exists(), "nothing is created before the credentials check"
