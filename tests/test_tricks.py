"""Training tricks (common/tricks.py): each does what it says, resumes exactly, and is a key of every text and
image task. Their effect on the scores belongs in the benchmarks, not here."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from common import api
from common.config import ENGINE_DEFAULTS
from common.task import FoldContext
from common.trainer import create_optimizer
from common.tricks import AWP, layer_scales, multi_sample
from common.vision import create_image_model
from competitions.usppm.task import UsppmTask
from tests.test_trainer import ToyModel
from tests.toys import Killed, dies_at_step

TRICKS = ["ema", "layer_decay", "awp", "awp_eps", "awp_start", "multi_sample_dropout", "gradient_checkpointing"]


def test_every_task_has_the_trick_keys():
    assert set(TRICKS) <= set(ENGINE_DEFAULTS)
    cfg = UsppmTask().config(["ema=0.999", "layer_decay=0.9", "awp=1.0", "multi_sample_dropout=5"])
    assert (cfg.ema, cfg.layer_decay, cfg.awp, cfg.multi_sample_dropout) == (0.999, 0.9, 1.0, 5)


def test_the_ema_is_what_is_evaluated_and_saved_and_it_resumes_exactly(pair_task):
    common = ["folds=2", "train_folds=[0]", "epochs=2", "checkpoint_every=3", "batch_size=8", "ema=0.9"]
    plain = api.train(pair_task, pair_task.config(["run_name=plain", *common[:-1]]))
    whole = api.train(pair_task, pair_task.config(["run_name=ema", *common]))
    assert not pd.read_csv(plain.oof_path).pred.equals(pd.read_csv(whole.oof_path).pred)

    with dies_at_step(5), pytest.raises(Killed):  # after the checkpoint at step 3, in the middle of epoch 1
        api.train(pair_task, pair_task.config(["run_name=ema-killed", *common]))
    last = Path("runs/pairs/ema-killed/fold0/last")
    assert (last / "ema.safetensors").is_file()
    raw = load_file(str(last / "model.safetensors"))
    ema = load_file(str(last / "ema.safetensors"))
    assert not torch.allclose(raw["head.weight"], ema["module.head.weight"]), "the average lags the raw weights"
    resumed = api.train(pair_task, pair_task.config(["run_name=ema-killed", *common]))
    assert np.array_equal(pd.read_csv(whole.oof_path).pred, pd.read_csv(resumed.oof_path).pred)


def test_layer_decay_slows_lower_transformer_layers_and_keeps_the_head_lr(tmp_path):
    task = UsppmTask()
    cfg = task.config(["layer_decay=0.9", "lr=1e-4", "head_lr=1e-3"])
    model = task.build_model(cfg, 1, FoldContext(0, tmp_path, tmp_path), pretrained=True)
    groups = create_optimizer(cfg, model, 10)[0].param_groups  # initial_lr: before the warm-up scales it
    lr_of = {id(p): g["initial_lr"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["backbone.embeddings.word_embeddings.weight"])] == pytest.approx(1e-4 * 0.9 ** 7)
    assert lr_of[id(named["backbone.encoder.layer.0.attention.self.query.weight"])] == pytest.approx(1e-4 * 0.9 ** 6)
    assert lr_of[id(named["backbone.encoder.layer.5.output.dense.weight"])] == pytest.approx(1e-4 * 0.9)
    assert lr_of[id(named["head.fc.weight"])] == 1e-3


def test_layer_decay_uses_timms_grouping_for_image_backbones():
    model = create_image_model("tf_efficientnet_lite0", 3, pretrained=False)
    scales = layer_scales(model, 0.8)
    assert scales["backbone.conv_stem.weight"] < scales["backbone.blocks.3.0.conv_pw.weight"] < 1
    assert scales["backbone.conv_stem.weight"] == pytest.approx(min(scales.values()))
    assert not any(name.startswith("head") for name in scales)


def test_awp_raises_the_loss_and_puts_every_weight_back():
    torch.manual_seed(0)
    model = ToyModel(1)  # the kit's models: backbone + head
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    awp = AWP(model, adv_lr=1.0, eps=0.05)
    awp.perturb()
    moved = {n: (p - before[n]).abs().max().item() for n, p in model.named_parameters()}
    assert moved["backbone.0.weight"] > 0 and moved["head.weight"] == 0  # the backbone moves, the head stays
    assert all((p - before[n]).abs().le(0.05 * before[n].abs() + 1e-7).all() for n, p in model.named_parameters())
    perturbed = torch.nn.functional.mse_loss(model(x), y)
    awp.restore()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    restored = torch.nn.functional.mse_loss(model(x), y)
    assert perturbed > restored and torch.equal(restored, loss)  # worse where perturbed, exactly back after


def test_awp_trains_with_a_second_pass_at_the_perturbed_weights(pair_task, monkeypatch):
    losses = []  # every training loss the loop computes, in order
    plain_loss = pair_task.train_loss

    def recorded(cfg, model, batch, loss_fn):
        loss = plain_loss(cfg, model, batch, loss_fn)
        losses.append(loss.item())
        return loss
    monkeypatch.setattr(pair_task, "train_loss", recorded)
    common = ["epochs=2", "folds=2", "train_folds=[0]"]
    plain = api.train(pair_task, pair_task.config(["run_name=plain", *common]))
    steps = len(losses)
    losses.clear()
    run = api.train(pair_task, pair_task.config(["run_name=awp", *common, "awp=1.0", "awp_eps=0.01"]))
    assert np.isfinite(run.metrics()["cv"]) and len(losses) == 2 * steps  # each step: a plain and a perturbed pass
    at_weights, perturbed = np.array(losses[0::2]), np.array(losses[1::2])
    assert (perturbed > at_weights).all(), "the perturbed pass must see a worse loss"
    assert not pd.read_csv(plain.oof_path).pred.equals(pd.read_csv(run.oof_path).pred)


def test_multi_sample_dropout_averages_masks_in_training_only():
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(16, 1))
    x = torch.randn(256, 16)
    clean = head[1](x)
    one = multi_sample(head, x, 1, training=True)
    many = multi_sample(head, x, 32, training=True)
    assert (many - clean).abs().mean() < 0.5 * (one - clean).abs().mean()
    head.eval()
    assert torch.equal(multi_sample(head, x, 32, training=False), head(x))


def test_gradient_checkpointing_reaches_both_backbone_kinds(tmp_path):
    task = UsppmTask()
    model = task.build_model(task.config(["gradient_checkpointing=true", "multi_sample_dropout=4"]), 1,
                             FoldContext(0, tmp_path, tmp_path), pretrained=True)
    assert model.backbone.is_gradient_checkpointing and model.dropout_samples == 4
    image = create_image_model("tf_efficientnet_lite0", 2, pretrained=False, gradient_checkpointing=True)
    assert image.backbone.grad_checkpointing
