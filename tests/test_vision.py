"""The image engine (common/vision.py): offline pretrained weights that really are ImageNet weights, weights
that cannot be found, pipelines and their per-class exclusions, the resized-image cache, ttach TTA."""
import cv2
import numpy as np
import pytest
import timm
import torch
from omegaconf import OmegaConf
from sklearn.datasets import load_sample_images
from timm.data import ImageNetInfo

from common.errors import ConfigError
from common.vision import (
    GEOMETRIC,
    IMAGE_DEFAULTS,
    ImageCache,
    ImageDataset,
    build_transforms,
    create_image_model,
    image_views,
    load_backbone_weights,
)
from common.weights import WeightsNotFound, resolve_timm_weights


def image_cfg(**overrides):
    return OmegaConf.create({**IMAGE_DEFAULTS, "model": "tf_efficientnet_lite0", **overrides})


@pytest.mark.parametrize("name, size, expected", [
    ("tf_efficientnet_lite0", 224, {"china.jpg": "bell cote, bell cot", "flower.jpg": "daisy"}),
    ("tf_efficientnet_lite1", 240, {"china.jpg": "palace", "flower.jpg": "daisy"}),
    ("tf_efficientnet_lite2", 260, {"china.jpg": "palace", "flower.jpg": "honeycomb"}),  # the flower's centre
])
def test_offline_lite_weights_recognise_real_photos(name, size, expected):
    """The packaged efficientnet-lite0/1/2 weights, mapped by position onto timm's full 1000-class model, give a
    sensible ImageNet top-1 on scikit-learn's two sample photos (mean/std 0.5, the model's own size, bilinear);
    a wrong mapping gives noise."""
    model = timm.create_model(name, pretrained=False).eval()
    load_backbone_weights(model, resolve_timm_weights(name))
    photos = load_sample_images()
    batch = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_LINEAR) for im in photos.images])
    x = (torch.tensor(batch).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        top1 = model(x).argmax(1).tolist()
    names = {p.split("/")[-1]: ImageNetInfo().index_to_description(i) for p, i in zip(photos.filenames, top1)}
    assert names == expected


def test_image_model_gets_the_packaged_backbone_and_a_fresh_head():
    model = create_image_model("tf_efficientnet_lite0", n_outputs=7, pretrained=True, head_dropout=0.3)
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    load_backbone_weights(reference, resolve_timm_weights("tf_efficientnet_lite0"))
    assert torch.equal(model.backbone.conv_stem.weight, reference.conv_stem.weight)
    assert model.head[0].p == 0.3 and model.head[1].out_features == 7
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


def test_pretrained_weights_that_cannot_be_found_are_an_error(tmp_path):
    with pytest.raises(WeightsNotFound, match="weights file not found"):
        create_image_model("resnet18", 3, pretrained=True, weights=str(tmp_path / "nope.pth"))
    # Not packaged, not a Kaggle input, hub offline (conftest): an error, never a random init.
    with pytest.raises(WeightsNotFound, match="resnet18: pretrained weights not found"):
        create_image_model("resnet18", 3, pretrained=True)
    wrong = tmp_path / "wrong.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), wrong)
    with pytest.raises(WeightsNotFound, match="does not fit this architecture"):
        create_image_model("tf_efficientnet_lite0", 3, pretrained=True, weights=str(wrong))


def test_weights_file_by_name_into_another_architecture(tmp_path):
    source = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)
    model = create_image_model("resnet18", 4, pretrained=True, weights=str(path))
    assert torch.equal(model.backbone.conv1.weight, source.conv1.weight)


def test_pipelines_follow_config_and_exclude_geometric_transforms():
    cfg = image_cfg(image_size=48, augment={"HorizontalFlip": {"p": 1.0}, "RandomRotate90": {"p": 1.0},
                                            "RandomBrightnessContrast": {"p": 1.0}})
    names = lambda pipeline: [type(t).__name__ for t in pipeline.transforms]  # noqa: E731
    assert names(build_transforms(cfg, train=True)) == ["Resize", "HorizontalFlip", "RandomRotate90",
                                                        "RandomBrightnessContrast", "Normalize", "ToTensorV2"]
    assert names(build_transforms(cfg, train=True, exclude=GEOMETRIC)) == [
        "Resize", "RandomBrightnessContrast", "Normalize", "ToTensorV2"]
    assert names(build_transforms(cfg, train=False)) == ["Resize", "Normalize", "ToTensorV2"]
    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    assert build_transforms(cfg, train=True)(image=image)["image"].shape == (3, 48, 48)
    with pytest.raises(ValueError, match="no transform 'Flipp'"):
        build_transforms(image_cfg(augment={"Flipp": {}}), train=True)


def test_image_cache_decodes_once_per_size(tmp_path):
    original = tmp_path / "big.png"
    cv2.imwrite(str(original), np.full((300, 200, 3), 120, np.uint8))
    small = ImageCache(tmp_path / "cache", 32)
    assert small(original).shape == (32, 32, 3)
    cached = list((tmp_path / "cache" / "32px").glob("*.png"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    small(original)
    assert cached[0].stat().st_mtime_ns == mtime  # read back, not rewritten
    assert ImageCache(tmp_path / "cache", 64)(original).shape == (64, 64, 3)
    assert len(list((tmp_path / "cache").glob("*px/*.png"))) == 2


def test_dataset_uses_one_pipeline_per_row(tmp_path):
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), np.full((40, 40, 3), 100, np.uint8))
    per_row = [build_transforms(image_cfg(image_size=16), train=False),
               build_transforms(image_cfg(image_size=16, augment={"InvertImg": {"p": 1.0}}), train=True)]
    ds = ImageDataset(paths, per_row, targets=torch.tensor([0, 1]))
    a, b = ds[0], ds[1]
    assert a["target"] == 0 and b["index"] == 1
    assert not torch.allclose(a["image"], b["image"])  # the second row went through its own (inverting) pipeline


def test_augmentations_repeat_with_torchs_seed_in_the_main_process_and_in_workers(tmp_path):
    path = tmp_path / "noise.png"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (24, 24, 3), dtype=np.uint8))
    augment = {"HorizontalFlip": {"p": 0.5}, "RandomBrightnessContrast": {"p": 1.0}}
    ds = ImageDataset([path] * 6, build_transforms(image_cfg(image_size=16, augment=augment), train=True))

    def epoch(workers):
        torch.manual_seed(0)
        loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=workers,
                                             generator=torch.Generator().manual_seed(0))
        return torch.cat([batch["image"] for batch in loader])

    for workers in [0, 2]:
        images = epoch(workers)
        assert torch.equal(images, epoch(workers))
        assert len({round(float(x.sum()), 3) for x in images}) == 6  # each item still draws its own augmentation


def test_tta_views_transform_the_image_only_and_cover_every_combination():
    """ttach views at the batch level: other inputs ride along unchanged (image + tabular batches)."""
    x = torch.randn(2, 3, 8, 8)
    batch = {"image": x, "features": torch.randn(2, 4), "index": torch.tensor([0, 1])}
    views = image_views(batch, ["hflip"])
    assert len(views) == 2 and torch.equal(views[0]["image"], x) and torch.equal(views[1]["image"], x.flip(-1))
    assert all(v["features"] is batch["features"] and v["index"] is batch["index"] for v in views)
    factors = sorted(float((v["image"] / x).mean()) for v in image_views(batch, ["multiply"]))
    assert factors == pytest.approx([0.9, 1.0, 1.1])
    assert len(image_views(batch, ["hflip", "rot90"])) == 8
    with pytest.raises(ConfigError, match="unknown TTA transform"):
        image_views(batch, ["spin"])


@pytest.mark.parametrize("channels_last", [None, False])  # None: the default
def test_image_models_are_channels_last_by_default(channels_last):
    from competitions.armyworm.task import ArmywormTask
    task = ArmywormTask()
    cfg = task.config([] if channels_last is None else [f"channels_last={str(channels_last).lower()}"])
    model = task.build_model(cfg, 1, None, pretrained=False)
    weight = next(p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1)  # a k x k convolution
    assert weight.is_contiguous(memory_format=torch.channels_last) == (channels_last is None)
