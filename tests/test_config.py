import pytest

from common.config import ConfigError, config_diff, load_config
from competitions.usppm.task import UsppmTask

CONTRACT_KEYS = ["data_dir", "run_name", "seed", "folds", "train_folds", "epochs", "batch_size", "lr", "model",
                 "precision", "limit", "num_workers", "tta", "max_len", "test_file", "out"]


def test_every_contract_key_is_overridable():
    cfg = load_config(UsppmTask.config_path, [f"{k}=1" for k in CONTRACT_KEYS])
    assert all(cfg[k] == 1 for k in CONTRACT_KEYS)
    cfg = load_config(UsppmTask.config_path, ["train_folds=[0,2]", "precision=bf16", "lr=1e-5"])
    assert list(cfg.train_folds) == [0, 2] and cfg.precision == "bf16" and cfg.lr == 1e-5


def test_unknown_key_is_an_error_listing_the_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'learning_rate'.*Valid keys: .*batch_size"):
        load_config(UsppmTask.config_path, ["learning_rate=1e-3"])
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(UsppmTask.config_path, ["epochs"])


def test_experiment_yaml_is_merged_below_the_command_line():
    cfg = load_config(UsppmTask.config_path, ["experiment=bert_for_patents", "lr=1e-5"])
    assert cfg.model == "anferico/bert-for-patents" and cfg.weight_decay == 0.1 and cfg.batch_size == 64
    assert cfg.lr == 1e-5
    cfg = load_config(UsppmTask.config_path, ["experiment=deberta_v3_large"])
    assert cfg.model == "microsoft/deberta-v3-large" and cfg.folds == 4
    with pytest.raises(ConfigError, match="available: bert_for_patents, deberta_v3_large"):
        load_config(UsppmTask.config_path, ["experiment=nope"])


def test_config_diff_ignores_runtime_keys():
    a = load_config(UsppmTask.config_path, [])
    b = load_config(UsppmTask.config_path, ["num_workers=4", "lr=1e-3"])
    assert config_diff(a, b) == [f"lr: {a.lr} -> 0.001"]
