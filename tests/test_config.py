"""Config: every contract key overridable, strict keys everywhere (config.yaml, experiment, command line) with the
file, the key and the closest valid key in the error, --config anywhere on the line, old run configs upgraded."""
import pytest
from omegaconf import OmegaConf

from common.config import config_diff, parse_args, upgrade
from common.errors import ConfigError
from competitions.usppm.task import UsppmTask

TASK = UsppmTask()
CONTRACT_KEYS = ["data_dir", "run_name", "seed", "folds", "train_folds", "epochs", "batch_size", "lr", "model",
                 "precision", "limit", "num_workers", "tta", "max_len", "test_file", "out"]


def test_every_contract_key_is_overridable():
    cfg = TASK.config([f"{k}=1" for k in CONTRACT_KEYS])
    assert all(cfg[k] == 1 for k in CONTRACT_KEYS)
    cfg = TASK.config(["train_folds=[0,2]", "precision=bf16", "lr=1e-5"])
    assert list(cfg.train_folds) == [0, 2] and cfg.precision == "bf16" and cfg.lr == 1e-5


def test_a_typo_on_the_command_line_names_the_key_and_the_closest_valid_one():
    with pytest.raises(ConfigError, match=r"command line: unknown config key 'max_lenn'; did you mean 'max_len'\?"):
        TASK.config(["max_lenn=12"])
    with pytest.raises(ConfigError, match="not key=value"):
        TASK.config(["epochs"])


def test_a_typo_in_config_yaml_names_the_file_and_the_key(tmp_path):
    bad = tmp_path / "my.yaml"
    bad.write_text("epochs: 2\npooling: mean\nhead_droput: 0.2\n")
    with pytest.raises(ConfigError, match=rf"{bad}: unknown config key 'head_droput'; did you mean 'head_dropout'"):
        TASK.config([], bad)


def test_a_typo_in_an_experiment_names_the_file_and_the_key(tmp_path):
    experiment = tmp_path / "exp.yaml"
    experiment.write_text("lr: 1.0e-4\nwarmpu: 0.2\n")
    with pytest.raises(ConfigError, match=rf"{experiment}: unknown config key 'warmpu'; did you mean 'warmup'"):
        TASK.config([f"experiment={experiment}"])


def test_experiment_yaml_is_merged_below_the_command_line():
    cfg = TASK.config(["experiment=bert_for_patents", "lr=1e-5"])
    assert cfg.model == "anferico/bert-for-patents" and cfg.weight_decay == 0.1 and cfg.batch_size == 64
    assert cfg.lr == 1e-5
    cfg = TASK.config(["experiment=deberta_v3_large"])
    assert cfg.model == "microsoft/deberta-v3-large" and cfg.folds == 4
    with pytest.raises(ConfigError, match="available: bert_for_patents, deberta_v3_large"):
        TASK.config(["experiment=nope"])


def test_config_flag_works_anywhere_on_the_line():
    """make usppm-train RUN=x ARGS="--config my.yaml lr=1e-4" puts --config after run_name=x."""
    args = parse_args(["run_name=x", "--config", "my.yaml", "lr=1e-4"])
    assert args.config == "my.yaml" and args.overrides == ["run_name=x", "lr=1e-4"]


def test_config_diff_ignores_runtime_keys():
    a = TASK.config([])
    b = TASK.config(["num_workers=4", "lr=1e-3"])
    assert config_diff(a, b) == [f"lr: {a.lr} -> 0.001"]


def test_seed_and_fold_seed_are_apart():
    """Runs that differ only in the training seed share folds (seed averaging); fold_seed moves the split."""
    cfg = TASK.config(["seed=7"])
    assert cfg.seed == 7 and cfg.fold_seed == 42


def test_old_run_configs_load_in_todays_names():
    """A run saved before engine v2: `dropout` (USPPPM's head dropout) and no fold_seed (folds drawn with seed)."""
    old = OmegaConf.create({"seed": 3, "dropout": 0.2, "lr": 1e-4})
    cfg = upgrade(old)
    assert cfg.head_dropout == 0.2 and "dropout" not in cfg and cfg.fold_seed == 3 and cfg.checkpoint_every == 0
    assert "query_expansion" not in cfg  # a family's new key joins only that family's runs
    assert upgrade(OmegaConf.create({"seed": 3, "encoder": "bi"})).query_expansion == 0  # pair runs: off, as trained
