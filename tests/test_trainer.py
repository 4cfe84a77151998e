"""The shared loop on a toy regression task (pure torch, seconds): accumulation, early stopping, precision,
evaluation every N steps, optimizer groups, mid-epoch resume (on the toy pair task). Competition tests cover the
rest end to end."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from common.metrics import pearson
from common.task import TARGET, Task
from common import api
from common.trainer import create_optimizer, train
from tests.toys import Killed, dies_at_step

N_ROWS, N_FEATURES = 96, 4


class ToyModel(nn.Module):
    def __init__(self, n_outputs):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(N_FEATURES, 8), nn.ReLU())
        self.head = nn.Linear(8, n_outputs)

    def forward(self, x):
        return self.head(self.backbone(x))


class ToyTask(Task):
    name, kind, metric, id_column, target_column = "toy", "regression", "pearson", "id", "y"

    def __init__(self, config_path):
        self.config_path = Path(config_path)

    def load_train(self, cfg):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(N_ROWS, N_FEATURES))
        df = pd.DataFrame(x, columns=[f"x{i}" for i in range(N_FEATURES)])
        df.insert(0, "id", [f"r{i}" for i in range(N_ROWS)])
        df["y"] = x @ np.array([1.0, -2.0, 0.5, 0.0]) + rng.normal(scale=0.1, size=N_ROWS)
        return df

    def load_test(self, cfg, path):
        return self.load_train(cfg).drop(columns="y")

    def dataset(self, cfg, df, mode, ctx):
        x = torch.tensor(df[[f"x{i}" for i in range(N_FEATURES)]].to_numpy(), dtype=torch.float32)
        y = torch.tensor(df[TARGET].to_numpy(), dtype=torch.float32) if TARGET in df else None
        return [{"x": x[i], "index": i, **({"target": y[i]} if y is not None else {})} for i in range(len(df))]

    def build_model(self, cfg, n_outputs, ctx, pretrained):
        return ToyModel(n_outputs)


@pytest.fixture
def toy(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text("epochs: 2\nbatch_size: 8\nfolds: 2\nlr: 1.0e-2\nwarmup: 0.0\n")
    task = ToyTask(path)
    return task, lambda *o: task.config([f"runs_dir={tmp_path / 'runs'}", *o])


def history(cfg, fold=0):
    return pd.read_csv(Path(cfg.runs_dir) / "toy" / cfg.run_name / f"fold{fold}" / "history.csv")


def test_gradient_accumulation_divides_optimizer_steps(toy):
    task, config = toy
    one = config("run_name=acc1", "grad_accum=1")
    two = config("run_name=acc2", "grad_accum=2")
    train(task, one)
    train(task, two)
    batches = (N_ROWS // 2) // 8  # per epoch (drop_last)
    assert history(one)["step"].tolist() == [batches, 2 * batches]
    assert history(two)["step"].tolist() == [batches // 2, batches]


def test_learning_actually_happens_and_cv_is_reported(toy):
    task, config = toy
    metrics = train(task, config("run_name=learn", "epochs=8", "lr=3e-2")).metrics()
    assert metrics["cv"] > 0.9 and len(metrics["folds"]) == 2 and metrics["greater_is_better"]


def test_metrics_give_the_cv_of_each_folds_last_epoch_beside_its_best(toy, capsys):
    task, config = toy
    # A constant learning rate that overshoots: fold 1 is best at epoch 1, so the two CVs differ.
    run = train(task, config("run_name=last", "epochs=3", "scheduler=constant", "lr=0.3", "head_lr=0.3"))
    metrics = run.metrics()
    assert metrics["best_epochs"] != [3, 3] and metrics["cv_last"] < metrics["cv"]
    last = pd.concat([pd.read_csv(run.fold_dir(f) / "oof_last.csv") for f in (0, 1)])
    assert metrics["cv_last"] == pytest.approx(pearson(last["target"], last["pred"]))
    for fold in (0, 1):  # each fold's file holds its last epoch's predictions, as its history scored them
        oof_last = pd.read_csv(run.fold_dir(fold) / "oof_last.csv")
        assert history(run.config(), fold)["score"].iloc[-1] == pytest.approx(
            pearson(oof_last["target"], oof_last["pred"]))
    assert (f"CV pearson: {metrics['cv']:.4f} (best epoch per fold) | last epoch {metrics['cv_last']:.4f}"
            in capsys.readouterr().out)

    one = train(task, config("run_name=one-epoch", "epochs=1")).metrics()
    assert one["cv_last"] == one["cv"]


def test_early_stopping_stops_after_patience_evaluations_without_gain(toy):
    task, config = toy
    cfg = config("run_name=stop", "epochs=6", "lr=0", "head_lr=0", "patience=2")  # nothing can improve
    train(task, cfg)
    assert history(cfg)["epoch"].tolist() == [1, 2, 3]


def test_eval_every_n_steps_adds_mid_epoch_evaluations(toy):
    task, config = toy
    cfg = config("run_name=every", "epochs=1", "eval_every=2")
    train(task, cfg)
    assert history(cfg)["step"].tolist() == [2, 4, 6]  # 6 optimizer steps: at 2 and 4, then at epoch end


def test_bf16_runs_the_forward_in_bf16_on_cpu_and_fp16_is_refused(toy):
    toy_task, config = toy
    seen = []  # (precision, training?, dtype of the head's output) of every forward, training and evaluation

    class Recorded(ToyTask):
        def build_model(self, cfg, n_outputs, ctx, pretrained):
            model = super().build_model(cfg, n_outputs, ctx, pretrained)
            model.head.register_forward_hook(lambda m, i, out: seen.append((cfg.precision, m.training, out.dtype)))
            return model

    task = Recorded(toy_task.config_path)
    for precision in ("fp32", "bf16"):
        metrics = train(task, config(f"run_name={precision}", f"precision={precision}", "epochs=3")).metrics()
        assert np.isfinite(metrics["cv"])
    assert set(seen) == {("fp32", True, torch.float32), ("fp32", False, torch.float32),
                         ("bf16", True, torch.bfloat16), ("bf16", False, torch.bfloat16)}
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
            train(task, config("run_name=fp16", "precision=fp16"))


def test_optimizer_uses_head_lr_and_no_decay_on_biases(toy):
    task, config = toy
    groups = create_optimizer(config("lr=1e-4", "head_lr=1e-2", "weight_decay=0.1"), ToyModel(1), 10)[0].param_groups
    by_key = {(g["lr"], g["weight_decay"]): sum(p.numel() for p in g["params"]) for g in groups}
    assert by_key == {(1e-4, 0.1): 32, (1e-4, 0.0): 8, (1e-2, 0.1): 8, (1e-2, 0.0): 1}


def test_compile_trains_and_saves_the_plain_parameter_names(toy):
    from safetensors.torch import load_file
    task, config = toy
    cfg = config("run_name=compiled", "compile=true", "train_folds=[0]", "epochs=2", "lr=3e-2")
    run = train(task, cfg)
    assert np.isfinite(run.metrics()["cv"])
    names = set(load_file(str(run.checkpoint(0))))
    assert names == set(ToyModel(1).state_dict()), "a compiled model's checkpoint loads into the plain model"


def test_num_threads_sets_torch_threads_and_the_default_shares_the_cores(toy, monkeypatch):
    from common.errors import ConfigError
    from common.threads import available_cores, configure_threads, default_threads
    _, config = toy
    before = torch.get_num_threads()
    try:
        assert configure_threads(config("num_threads=1")) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        assert default_threads() == max(1, available_cores() // 2)
        with pytest.raises(ConfigError, match="num_threads must be a positive integer"):
            configure_threads(config("num_threads=0"))
    finally:
        torch.set_num_threads(before)


def test_a_run_trained_a_fold_at_a_time_sums_up_every_finished_fold(toy):
    task, config = toy
    first = train(task, config("run_name=piecewise", "train_folds=[0]"))
    assert len(first.metrics()["folds"]) == 1 and len(pd.read_csv(first.oof_path)) == N_ROWS // 2
    fold0 = (first.fold_dir(0) / "model.safetensors").stat().st_mtime_ns
    run = train(task, config("run_name=piecewise", "train_folds=[1]"))  # the same run, the other fold
    whole = train(task, config("run_name=whole"))
    assert (run.fold_dir(0) / "model.safetensors").stat().st_mtime_ns == fold0  # fold 0 kept, not retrained
    assert run.metrics()["cv"] == pytest.approx(whole.metrics()["cv"])
    assert run.metrics()["folds"] == pytest.approx(whole.metrics()["folds"])
    assert run.metrics()["cv_last"] == pytest.approx(whole.metrics()["cv_last"])  # fold 0's last epoch kept too
    pd.testing.assert_frame_equal(pd.read_csv(run.oof_path), pd.read_csv(whole.oof_path))


@pytest.mark.parametrize("precision", ["auto", "bf16"])  # the default (whatever this machine chooses) and bf16
def test_mid_epoch_resume_gives_the_same_oof_as_an_uninterrupted_run(pair_task, precision):
    common = ["folds=2", "train_folds=[0]", "epochs=2", "checkpoint_every=3", "batch_size=8", f"precision={precision}"]
    full = api.train(pair_task, pair_task.config(["run_name=whole", *common]))

    with dies_at_step(5), pytest.raises(Killed):  # after the checkpoint at step 3, in the middle of epoch 1
        api.train(pair_task, pair_task.config(["run_name=killed", *common]))
    state = json.loads((Path("runs/pairs/killed/fold0/last/trainer_state.json")).read_text())
    assert (state["epoch"], state["batch"], state["step"]) == (0, 3, 3)
    resumed = api.train(pair_task, pair_task.config(["run_name=killed", *common]))
    a, b = pd.read_csv(full.oof_path), pd.read_csv(resumed.oof_path)
    assert np.array_equal(a.pred.to_numpy(), b.pred.to_numpy()), "bit-for-bit on the CPU"
    assert resumed.metrics()["cv"] == full.metrics()["cv"]
    a, b = (pd.read_csv(run.fold_dir(0) / "oof_last.csv") for run in (full, resumed))
    assert np.array_equal(a.pred.to_numpy(), b.pred.to_numpy()), "the last epoch's OOF too"
    assert resumed.metrics()["cv_last"] == full.metrics()["cv_last"]


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_where_the_cpu_has_it_and_the_run_records_its_choice(toy, monkeypatch, capsys, native):
    from common import accelerator
    task, config = toy
    monkeypatch.setattr(accelerator, "native_bf16", lambda: (native, "a test's CPU"))
    expected = "bf16" if native else "fp32"
    assert accelerator.auto_precision() == (expected, "a test's CPU")
    run = train(task, config("run_name=auto", "train_folds=[0]", "epochs=1"))
    assert run.config().precision == expected  # config.yaml holds the choice, not "auto"
    assert f"precision: {expected} (auto: a test's CPU)" in capsys.readouterr().out
    # the same run resumed where auto would choose the other way keeps the precision it was started in
    monkeypatch.setattr(accelerator, "native_bf16", lambda: (not native, "another CPU"))
    again = train(task, config("run_name=auto", "epochs=1"))
    assert again.config().precision == expected
    assert "auto: as the run was started" in capsys.readouterr().out


def test_native_bf16_reads_the_cpu_probes(monkeypatch):
    from common.accelerator import native_bf16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert native_bf16() == (True, "CPU with amx")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert native_bf16() == (False, "CPU without avx512_bf16 or AMX")
