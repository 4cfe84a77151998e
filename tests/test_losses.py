"""The loss registry (common/losses.py): one name per loss, validated with the closest valid name, each family's
default as it was, and the same numbers as the torch losses the families used before."""
import pandas as pd
import pytest
import torch
from torch import nn

from common.errors import ConfigError
from common.imbalance import ClassificationLoss
from common.losses import LOSSES, activate, check_loss, get_loss
from common.task import TARGET
from competitions.armyworm.task import ArmywormTask
from competitions.codesim.task import CodesimTask
from competitions.mvtec.task import MvtecTask
from competitions.usppm.task import UsppmTask


def test_a_misspelt_loss_is_refused_naming_the_closest():
    with pytest.raises(ConfigError, match=r"got 'focall' \(did you mean 'focal'\?\)"):
        check_loss("focall", "multiclass")
    mvtec = MvtecTask()
    with pytest.raises(ConfigError, match="did you mean 'focal'"):
        mvtec.loss_fn(mvtec.config(["loss=focall"]), pd.DataFrame({TARGET: [0, 1]}), None)
    codesim = CodesimTask()
    with pytest.raises(ConfigError, match="did you mean 'contrastive'"):
        codesim.loss_fn(codesim.config(["loss=contrastve"]), None, None)


def test_a_loss_of_another_kind_is_refused_saying_what_fits():
    codesim = CodesimTask()
    with pytest.raises(ConfigError, match="'cosine' is for a pair_embedding output; a binary output takes bce, mse"):
        codesim.loss_name(codesim.config(["experiment=cross", "loss=cosine"]))  # a cross-encoder's output: one logit
    usppm = UsppmTask()
    with pytest.raises(ConfigError, match="a regression output takes"):
        usppm.loss_name(usppm.config(["loss=ce"]))


def test_each_family_default_is_what_it_was():
    usppm, armyworm, mvtec, codesim = UsppmTask(), ArmywormTask(), MvtecTask(), CodesimTask()
    assert usppm.loss_name(usppm.config(["loss=null"])) == "mse"      # text, regression
    assert usppm.loss_name(usppm.config()) == "bce"                   # USPPPM's config.yaml chooses bce
    assert armyworm.loss_name(armyworm.config()) == "bce"             # image, binary, no loss key
    assert mvtec.config().loss == "ce"                                # image + imbalance keys, multiclass
    assert mvtec.loss_fn(mvtec.config(), pd.DataFrame({TARGET: [0, 1]}), None).loss == "ce"
    assert codesim.loss_name(codesim.config(["experiment=cross", "loss=null"])) == "bce"  # cross-encoder
    assert codesim.loss_name(codesim.config()) == "cosine"            # bi-encoder, codesim's default


def test_losses_give_the_numbers_the_families_computed_before():
    torch.manual_seed(0)
    logits, y, score = torch.randn(37, 1), (torch.rand(37) > 0.5).float(), torch.rand(37)
    assert torch.equal(get_loss("bce", "binary")(logits, y),
                       nn.functional.binary_cross_entropy_with_logits(logits.view(-1), y))
    assert torch.equal(get_loss("mse", "regression")(logits, score),
                       nn.functional.mse_loss(logits.view(-1), score))
    assert torch.equal(get_loss("huber", "regression")(logits, score),
                       nn.functional.smooth_l1_loss(logits.view(-1), score, beta=0.1))
    classes, target = torch.randn(37, 5), torch.randint(0, 5, (37,))
    assert torch.equal(get_loss("ce", "multiclass")(classes, target), nn.CrossEntropyLoss()(classes, target))
    assert torch.equal(ClassificationLoss(loss="ce")(classes, target), nn.CrossEntropyLoss()(classes, target))
    cos = torch.rand(37, 1) * 2 - 1
    assert torch.equal(get_loss("cosine", "pair_embedding")(cos, y), nn.functional.mse_loss(cos.view(-1), y))
    d = 1 - cos.view(-1)
    contrastive = 0.5 * (y * d.pow(2) + (1 - y) * nn.functional.relu(0.3 - d).pow(2)).mean()
    assert torch.equal(get_loss("contrastive", "pair_embedding", margin=0.3)(cos, y), contrastive)
    # in fp32 whatever the forward ran in; predictions as the loss implies
    assert get_loss("bce", "binary")(logits.bfloat16(), y).dtype == torch.float32
    assert torch.equal(activate("bce", logits), logits.sigmoid())
    assert torch.equal(activate("cosine", cos), cos.clamp(0, 1))
    assert torch.equal(activate("ce", classes), classes.softmax(-1))
    assert set(LOSSES) == {"bce", "mse", "l1", "huber", "ce", "focal", "cosine", "contrastive", "mnrl"}
