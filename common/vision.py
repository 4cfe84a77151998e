"""Image side of the engine: timm models with resolved pretrained weights, albumentations pipelines from config,
a frame-driven image dataset with an optional resized-image cache, ttach TTA, and ImageTask for competitions."""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import timm
import torch
import ttach
from albumentations.pytorch import ToTensorV2
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import nn

from common.errors import ConfigError, DataError
from common.task import TARGET, Task
from common.tricks import multi_sample, set_gradient_checkpointing
from common.weights import WeightsNotFound, resolve_timm_weights

# Config keys every image competition understands, on top of the engine's (common/config.py).
IMAGE_DEFAULTS = {
    "image_size": 224,          # square input side, pixels
    "image_dir": None,          # folder of the image files; null -> the competition's default under data_dir
    "augment": None,            # train-time albumentations: {ClassName: {arg: value}}, applied in order
    "head_dropout": 0.0,        # dropout before the linear head (0.4: the armyworm paper's Grad-CAM models)
    "backbone_dropout": 0.0,    # timm's own dropout of the backbone (its drop_rate, on the pooled features)
    "weights": None,            # a local weights file for the backbone (else packaged / Kaggle input / hub)
    "image_cache": None,        # folder for pre-resized copies (decoded once, keyed by size); null -> off
    "channels_last": True,      # NHWC memory format: Lite0's training epochs 1.5x faster on a 2-core Xeon CPU in fp32
                                # (docs/speed.md), and the usual choice for CNNs under mixed precision on GPUs
    "tta_transforms": ["hflip"],  # the views tta=true averages (ttach): hflip vflip rot90 multiply
    "bad_images": "error",      # a missing / unreadable image: error | skip (drop the row with a warning)
    "gradcam_layer": None,      # Grad-CAM target layer (module path); null -> the last convolutional stage
}

# Transforms that move pixels around; orientation-sensitive labels must not see them.
GEOMETRIC = {"HorizontalFlip", "VerticalFlip", "RandomRotate90", "Rotate", "Transpose", "Affine",
             "ShiftScaleRotate", "SafeRotate", "Perspective", "D4"}


# ---- models ------------------------------------------------------------------------------------
class ImageClassifier(nn.Module):
    """timm backbone (global average pooled features) -> dropout -> linear head."""

    def __init__(self, backbone: nn.Module, n_outputs: int, head_dropout: float = 0.0, dropout_samples: int = 1):
        super().__init__()
        self.backbone, self.dropout_samples = backbone, dropout_samples
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(backbone.num_features, n_outputs))

    def forward(self, image):
        return multi_sample(self.head, self.backbone(image), self.dropout_samples, self.training)


def create_image_model(name: str, n_outputs: int, pretrained: bool, weights: str | None = None,
                       head_dropout: float = 0.0, backbone_dropout: float = 0.0, dropout_samples: int = 1,
                       gradient_checkpointing: bool = False) -> ImageClassifier:
    """Any timm name. Weights: `weights=` file, packaged offline weights, a Kaggle input dir, else the hub."""
    local = resolve_timm_weights(name, weights) if pretrained else None
    hub = pretrained and local is None
    try:
        backbone = timm.create_model(name, pretrained=hub, num_classes=0, drop_rate=backbone_dropout)
    except Exception as e:  # a hub miss offline: say so instead of a stack of HTTP errors
        if hub:
            raise WeightsNotFound(f"{name}: pretrained weights not found locally and the hub failed ({e}); "
                                  f"pass weights=<file> or pretrained=false") from None
        raise
    if local:
        load_backbone_weights(backbone, local)
    if gradient_checkpointing:
        set_gradient_checkpointing(backbone)
    return ImageClassifier(backbone, n_outputs, head_dropout, dropout_samples)


def load_backbone_weights(backbone: nn.Module, path: str) -> None:
    """Load a classifier checkpoint into a headless timm backbone: by name when the names match, otherwise by
    position (ports such as the efficientnet-lite0 package name every tensor differently, in timm's order)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    target = backbone.state_dict()
    if set(target) <= set(state):
        backbone.load_state_dict({k: state[k] for k in target})
        return
    source = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    wanted = [k for k in target if not k.endswith("num_batches_tracked")]
    source = source[:len(wanted)]  # the classifier comes last; the headless backbone has none
    mismatched = [(k, tuple(v.shape), tuple(target[t].shape)) for t, (k, v) in zip(wanted, source)
                  if v.shape != target[t].shape]
    if len(source) != len(wanted) or mismatched:
        raise WeightsNotFound(f"{path}: does not fit this architecture ({len(source)} vs {len(wanted)} tensors; "
                              f"first mismatch {mismatched[:1]})")
    backbone.load_state_dict({t: v for t, (_, v) in zip(wanted, source)}, strict=False)


def data_config(name: str) -> dict:
    """Normalisation the backbone was pretrained with (timm's pretrained_cfg), ImageNet's by default."""
    cfg = timm.get_pretrained_cfg(name)
    mean = getattr(cfg, "mean", None) or (0.485, 0.456, 0.406)
    std = getattr(cfg, "std", None) or (0.229, 0.224, 0.225)
    return {"mean": tuple(mean), "std": tuple(std)}


# ---- pipelines ----------------------------------------------------------------------------------
def build_transforms(cfg: DictConfig, train: bool, exclude: set[str] = frozenset()) -> A.Compose:
    """Resize -> (train: cfg.augment, a mapping of albumentations class name to its arguments) -> normalise."""
    norm = data_config(cfg.model)
    steps = [A.Resize(cfg.image_size, cfg.image_size)]
    if train and cfg.augment:
        for name, kwargs in OmegaConf.to_container(cfg.augment, resolve=True).items():
            if name in exclude:
                continue
            if not hasattr(A, name):
                raise ConfigError(f"augment: albumentations has no transform {name!r}")
            steps.append(getattr(A, name)(**(kwargs or {})))
    steps += [A.Normalize(mean=norm["mean"], std=norm["std"]), ToTensorV2()]
    return A.Compose(steps)


def read_image(path: str | Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{path}: missing or not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class ImageCache:
    """Pre-resized copies on disk, keyed by size: large originals are decoded and resized once, not every epoch."""

    def __init__(self, root: str | Path, size: int):
        self.dir = Path(root) / f"{size}px"
        self.size = size
        self.dir.mkdir(parents=True, exist_ok=True)

    def __call__(self, path: str | Path) -> np.ndarray:
        path = Path(path)
        stat = path.stat()
        key = hashlib.sha1(f"{path.resolve()}:{stat.st_mtime_ns}:{stat.st_size}".encode()).hexdigest()
        cached = self.dir / f"{key}.png"
        if cached.is_file():
            return read_image(cached)
        image = cv2.resize(read_image(path), (self.size, self.size), interpolation=cv2.INTER_AREA)
        tmp = cached.with_suffix(f".{np.random.randint(1 << 30)}.tmp.png")
        cv2.imwrite(str(tmp), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        tmp.replace(cached)  # atomic: parallel workers may write the same key
        return image


class ImageDataset(torch.utils.data.Dataset):
    """Images named by a list of paths; `transforms` is one pipeline or one per row (per-class policies)."""

    def __init__(self, paths, transforms, targets=None, cache: ImageCache | None = None):
        self.paths, self.targets, self.cache = [str(p) for p in paths], targets, cache
        self.transforms = transforms if isinstance(transforms, (list, tuple)) else [transforms] * len(self.paths)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        image = self.cache(self.paths[i]) if self.cache else read_image(self.paths[i])
        transform = self.transforms[i]
        # albumentations 2 draws from its own generator, seeded from OS entropy (the global seeds do not reach it):
        # seed it from torch's, which the trainer seeds every epoch, a worker from its base seed and a resume from
        # the checkpoint, so a run's augmentations (and its score) repeat with its seed.
        transform.set_random_seed(int(torch.randint(1 << 31, ())))
        item = {"image": transform(image=image)["image"], "index": i}
        if self.targets is not None:
            item["target"] = self.targets[i]
        return item


# ---- TTA ----------------------------------------------------------------------------------------
TTA_TRANSFORMS = {
    "hflip": lambda: ttach.HorizontalFlip(),
    "vflip": lambda: ttach.VerticalFlip(),
    "rot90": lambda: ttach.Rotate90(angles=[0, 90, 180, 270]),
    "multiply": lambda: ttach.Multiply(factors=[0.9, 1.0, 1.1]),
}


def tta_compose(names) -> ttach.Compose:
    """Every combination of the named ttach views (hflip + rot90: 2 x 4 = 8 views, the identity among them)."""
    names = list(names)
    unknown = [n for n in names if n not in TTA_TRANSFORMS]
    if unknown:
        raise ConfigError(f"unknown TTA transform(s) {unknown}; choose from {', '.join(TTA_TRANSFORMS)}")
    return ttach.Compose([TTA_TRANSFORMS[n]() for n in names])


def image_views(batch: dict, names, key: str = "image") -> list[dict]:
    """The ttach views of a batch: only `key` is transformed; other inputs (features, ids) ride along unchanged.
    Labels need no de-augmentation: a flipped leaf has the same class."""
    return [{**batch, key: transformer.augment_image(batch[key])} for transformer in tta_compose(names)]


# ---- the image task -----------------------------------------------------------------------------
class ImageTask(Task):
    """A Task whose inputs are image files named in a frame column. Competitions set `image_column`,
    implement load_train / load_test (use `attach_images`) and may override `transforms`."""

    image_column: str = "path"  # column that attach_images fills with each row's file path
    config_defaults = IMAGE_DEFAULTS

    def attach_images(self, cfg: DictConfig, df: pd.DataFrame, names: pd.Series, image_dir: Path,
                      csv_path: Path) -> pd.DataFrame:
        """Add the image path of each row; a missing or unreadable file is an error naming it and its CSV row,
        or (cfg.bad_images=skip) a warning and the row is dropped."""
        df = df.copy()
        df[self.image_column] = [str(Path(image_dir) / str(n)) for n in names]
        bad = [(i, p, why) for i, p in enumerate(df[self.image_column]) if (why := _image_problem(p))]
        if bad:
            i, p, why = bad[0]
            message = f"{csv_path}: {len(bad)} image(s) {why}, the first {p} (data row {i + 1})"
            if cfg.bad_images != "skip":
                raise DataError(message + "; fix the file or set bad_images=skip")
            warnings.warn(message + "; skipped (bad_images=skip)", stacklevel=2)
            df = df.drop(index=df.index[[b[0] for b in bad]]).reset_index(drop=True)
        return df

    def transforms(self, cfg: DictConfig, df: pd.DataFrame, mode: str):
        return build_transforms(cfg, train=mode == "train")

    def dataset(self, cfg, df, mode, ctx):
        targets = torch.tensor(df[TARGET].to_numpy()) if TARGET in df else None  # a copy: pandas arrays are read-only
        if targets is not None and self.kind == "multiclass":
            targets = targets.long()
        elif targets is not None:
            targets = targets.float()
        cache = ImageCache(cfg.image_cache, cfg.image_size) if cfg.image_cache else None
        return ImageDataset(df[self.image_column], self.transforms(cfg, df, mode), targets, cache)

    def build_model(self, cfg, n_outputs, ctx, pretrained):
        model = create_image_model(cfg.model, n_outputs, pretrained, cfg.weights, cfg.head_dropout,
                                   cfg.backbone_dropout, cfg.get("multi_sample_dropout") or 1,
                                   bool(cfg.get("gradient_checkpointing")))
        return model.to(memory_format=torch.channels_last) if cfg.channels_last else model

    def tta_names(self, cfg: DictConfig) -> list[str]:
        """tta=true -> the tta_transforms views; tta=[hflip, vflip] names them directly; false -> none."""
        if not cfg.tta:
            return []
        return list(cfg.tta_transforms) if cfg.tta is True else list(cfg.tta)

    def tta_views(self, cfg, batch):
        names = self.tta_names(cfg)
        return image_views(batch, names) if names else [batch]

    def image_dir(self, cfg: DictConfig, default: str) -> Path:
        return Path(cfg.image_dir) if cfg.image_dir else self.data_dir(cfg) / default


def _image_problem(path: str) -> str | None:
    p = Path(path)
    if not p.is_file():
        return "missing on disk"
    try:
        with Image.open(p) as im:
            image_format = im.format
            im.verify()
    except Exception:
        return "unreadable"
    if image_format == "JPEG" and not _jpeg_complete(p):
        return "truncated"
    return None


def _jpeg_complete(p: Path) -> bool:
    """A JPEG ends with its EOI marker (FF D9), perhaps followed by padding; a cut one does not. PIL's verify() does
    not read that far, and OpenCV decodes the missing part as grey with only a warning: checked here instead."""
    with open(p, "rb") as f:
        f.seek(max(f.seek(0, 2) - 1024, 0))
        return b"\xff\xd9" in f.read()
