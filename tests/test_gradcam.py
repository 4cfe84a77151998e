"""Grad-CAM (common/gradcam.py): the automatic target layer and its override, heatmaps that land on the object in
real photos, the binary targets, the OOF groups and the command's own arguments. The command end to end on a
trained run (files, sizes, the two-run sheet) is in test_armyworm.py."""
import cv2
import numpy as np
import pandas as pd
import pytest
import timm
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from sklearn.datasets import load_sample_images
from timm.data import ImageNetInfo

from common.cli import gradcam_args
from common.config import ConfigError
from common.gradcam import (
    cam_targets,
    overlay,
    overlay_name,
    pick_groups,
    target_layer,
)
from common.vision import create_image_model, load_backbone_weights
from common.weights import resolve_timm_weights


def test_auto_target_layer_is_the_last_conv_stage_and_config_overrides_it():
    resnet = create_image_model("resnet18", 1, pretrained=False)
    assert target_layer(resnet) is resnet.backbone.layer4
    lite0 = create_image_model("tf_efficientnet_lite0", 1, pretrained=False)
    assert target_layer(lite0) is lite0.backbone.blocks[6]
    assert target_layer(lite0, "backbone.conv_head") is lite0.backbone.conv_head
    with pytest.raises(ConfigError, match=r"gradcam_layer='backbone.nope'.*top-level modules: backbone, head"):
        target_layer(lite0, "backbone.nope")


def test_heatmap_lands_on_the_object_in_real_photos():
    """The offline ImageNet lite0 explained for its own top-1 class on scikit-learn's two photos: the heat sits on
    the pagoda (left part of china.jpg) and on the flower (middle of flower.jpg), not on the background."""
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    load_backbone_weights(model, resolve_timm_weights("tf_efficientnet_lite0"))
    photos = load_sample_images()
    images = np.stack([cv2.resize(im, (224, 224), interpolation=cv2.INTER_LINEAR) for im in photos.images])
    x = (torch.tensor(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    top1 = model(x).argmax(1).tolist()
    assert [ImageNetInfo().index_to_description(i) for i in top1] == ["bell cote, bell cot", "daisy"]
    cam = GradCAM(model=model, target_layers=[target_layer(model)])
    heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(i) for i in top1])
    cam.activations_and_grads.release()
    assert heat.shape == (2, 224, 224) and heat.min() == 0 and heat.max() == pytest.approx(1, abs=1e-5)
    china, flower = heat
    assert china[:, :112].mean() > 1.5 * china[:, 112:].mean()
    centre = np.zeros((224, 224), bool)
    centre[30:190, 60:180] = True
    assert flower[centre].mean() > 1.5 * flower[~centre].mean()
    picture = overlay(images[1] / 255.0, flower)
    assert picture.shape == (224, 224, 3) and picture.dtype == np.uint8


def test_binary_target_is_the_logit_for_class_1_and_its_negation_for_class_0():
    positive, negative = cam_targets("binary", np.array([1, 0]))
    logit = torch.tensor([2.5])  # one image's output of a one-logit model
    assert positive(logit).item() == 2.5 and negative(logit).item() == -2.5
    (second,) = cam_targets("multiclass", np.array([2]))
    assert second(torch.tensor([0.1, 0.2, 0.7])).item() == pytest.approx(0.7)


def test_groups_hold_the_most_confident_rows_of_each_kind_of_answer():
    oof = pd.DataFrame({"Image_id": list("abcdefgh"), "fold": 0, "target": [1, 1, 1, 0, 0, 0, 1, 0],
                        "pred": [0.9, 0.6, 0.2, 0.1, 0.4, 0.8, 0.99, 0.55]})
    groups = pick_groups(oof, "binary", ["pred"], n=2)
    assert {k: list(g["Image_id"]) for k, g in groups.items()} == {
        "correct_1": ["g", "a"], "correct_0": ["d", "e"], "false_negative": ["c"], "false_positive": ["f", "h"]}
    assert list(groups["false_positive"]["predicted"]) == [1, 1]

    multi = pd.DataFrame({"id": [1, 2, 3], "fold": 0, "target": [0, 1, 2],
                          "cat": [0.7, 0.6, 0.1], "dog": [0.2, 0.3, 0.1], "owl": [0.1, 0.1, 0.8]})
    groups = pick_groups(multi, "multiclass", ["cat", "dog", "owl"], n=5)
    assert list(groups["correct"]["id"]) == [3, 1] and list(groups["wrong"]["id"]) == [2]
    assert list(groups["wrong"]["predicted"]) == [0]
    reg = pd.DataFrame({"id": [1, 2, 3, 4], "fold": 0, "target": [10.0, 20.0, 5.0, 8.0], "pred": [11, 20, 9, 7]})
    groups = pick_groups(reg, "regression", ["pred"], n=2)  # by relative error: 0.1, 0, 0.8, 0.125
    assert list(groups["closest"]["id"]) == [2, 1] and list(groups["furthest"]["id"]) == [3, 4]


def test_own_arguments_are_split_from_run_overrides():
    own, overrides = gradcam_args(["run_name=x", "run2=y", "n=3", "image_dir=/imgs", "gradcam_layer=backbone.layer3"])
    assert own == {"run2": "y", "n": 3, "cam_target": "predicted"}
    assert overrides == ["run_name=x", "image_dir=/imgs", "gradcam_layer=backbone.layer3"]
    for bad, message in [("n=many", "whole number"), ("n=0", "at least 1"), ("cam_target=max", "predicted or true"),
                         ("run2", "not key=value")]:
        with pytest.raises(ConfigError, match=message):
            gradcam_args([bad])


def test_overlay_names_are_file_names():
    assert overlay_name("id_02amazy34fgh2.jpg") == "id_02amazy34fgh2.png"
    assert overlay_name("train/cable good/001") == "train_cable_good_001.png"
