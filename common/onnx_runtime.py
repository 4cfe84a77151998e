"""Fast CPU inference: each fold's network exported to ONNX once and run with ONNX Runtime (runtime=onnx), its
weights optionally quantized to int8 (quantize=int8: onnxruntime's dynamic quantization, for transformer encoders).

The graphs live in the fold folder beside the checkpoint: model.onnx (and model.int8.onnx), each with a
fingerprint file (model.onnx.json) that names the checkpoint it came from by a hash of its bytes; when the
checkpoint changes (the fold was retrained or resumed), the graph is exported again.

OnnxModel wraps a graph as a callable with the torch model's interface (model(**inputs) -> logits), so prediction
(common/predict.py) runs either. A network whose prediction is more than one forward pass says what to export and
how to run the graph, in its own class: onnx_module() (the network to export) and onnx_runner(graph) (the
callable prediction calls). The bi-encoder (common/pairs.py) exports its embedding network and keeps its
embed-each-item-once cache.
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig
from safetensors.torch import load_file
from torch import nn

from common.errors import ConfigError
from common.io import atomic_path, pinned_requirements

RUNTIMES = ("torch", "onnx")
QUANTIZATIONS = (None, "int8")
RUN_PACKAGES = ("onnxruntime",)             # what running a graph needs (the Kaggle kernel has only this)
EXPORT_PACKAGES = ("onnx",)                   # what torch.onnx.export (TorchScript) needs besides torch
ONNX_FILE, INT8_FILE = "model.onnx", "model.int8.onnx"
OPSET = 18
# quantize=int8: onnxruntime's quantize_dynamic with these settings, recorded in the graph's fingerprint.
# - MatMul only, where a transformer encoder spends its time. onnxruntime's default list also takes Conv (ConvInteger
#   made Lite0 13x slower, docs/onnx.md) and Gather (an embedding lookup: no faster in int8).
# - per_channel: one scale per output column; one scale per matrix cost MiniLM 0.035 Pearson on USPPPM, per column
#   0.002 (docs/onnx.md).
INT8_SETTINGS = {"op_types_to_quantize": ["MatMul"], "per_channel": True}


def uses_onnx(cfg: DictConfig | dict) -> bool:
    """Whether cfg (a config, or a dict of runtime= and quantize=) predicts with ONNX Runtime; a bad runtime= /
    quantize= or a missing package is a ConfigError."""
    runtime, quantize = cfg.get("runtime") or "torch", cfg.get("quantize")
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be torch or onnx, got {runtime!r}")
    if quantize not in QUANTIZATIONS:
        raise ConfigError(f"quantize must be null or int8, got {quantize!r}")
    if quantize and runtime != "onnx":
        raise ConfigError("quantize=int8 quantizes the exported ONNX graph: it needs runtime=onnx")
    if runtime == "onnx":
        require_packages(RUN_PACKAGES)
    return runtime == "onnx"


def require_packages(names: tuple[str, ...]) -> None:
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        pins = pinned_requirements()
        wanted = " ".join(pins.get(name, name) for name in missing)
        raise ConfigError(f"runtime=onnx needs {', '.join(missing)}, not installed: pip install {wanted} "
                          f"(pinned in requirements.txt; make setup installs them)")


def graph_file(quantize: str | None) -> str:
    return INT8_FILE if quantize == "int8" else ONNX_FILE


# ---- the graph as the torch model's twin -----------------------------------------------------------------------
class OnnxModel:
    """An ONNX graph run by ONNX Runtime on the CPU, called as the torch model is: model(**inputs) -> a tensor on
    the inputs' device. Inputs the graph does not take (the exporter drops unused ones) are left out."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()  # the kit's share of the cores
        options.inter_op_num_threads = 1
        self.path = Path(path)
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def eval(self):
        return self

    def __call__(self, **inputs: torch.Tensor) -> torch.Tensor:
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise ConfigError(f"{self.path}: the graph takes {missing}, which these inputs lack; delete it to "
                              f"export it again")
        device = next(iter(inputs.values())).device
        feeds = {name: inputs[name].detach().cpu().numpy() for name in self.input_names}
        return torch.from_numpy(self.session.run(None, feeds)[0]).to(device)


def fold_runner(model: nn.Module, checkpoint: Path, fold_dir: Path, example: Callable[[], dict],
                quantize: str | None = None) -> Callable:
    """The fold's network under ONNX Runtime, called as the torch model is. model: the architecture (weights are
    loaded from checkpoint only when the graph must be exported); example(): a batch of real inputs to export
    with. The caller lets one process at a time in (exports are written once)."""
    path = fold_graph(model, checkpoint, Path(fold_dir), example, quantize)
    graph = OnnxModel(path)
    return model.onnx_runner(graph) if hasattr(model, "onnx_runner") else graph


# ---- export, fingerprint, quantization ----------------------------------------------------------------------------
def weights_fingerprint(checkpoint: Path) -> str:
    """A hash of the checkpoint's bytes: the weights a graph was exported from."""
    digest = hashlib.blake2b(digest_size=16)
    with open(checkpoint, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint_path(graph: Path) -> Path:
    return graph.with_name(graph.name + ".json")


def is_current(graph: Path, weights: str, quantize: str | None = None) -> bool:
    """The graph exists and its fingerprint names these weights (and, quantized, today's quantization settings)."""
    meta = fingerprint_path(graph)
    if not (graph.is_file() and meta.is_file()):
        return False
    made = json.loads(meta.read_text())
    return made.get("weights") == weights and made.get("quantization") == quantization(quantize)


def quantization(quantize: str | None) -> dict | None:
    return INT8_SETTINGS if quantize == "int8" else None


def fold_graph(model: nn.Module, checkpoint: Path, fold_dir: Path, example: Callable[[], dict],
               quantize: str | None = None) -> Path:
    """The fold's graph for the checkpoint's current weights: model.onnx (quantize=int8: model.int8.onnx, made from
    it), exported (and quantized) only when missing or made from other weights."""
    if not checkpoint.is_file():
        raise ConfigError(f"{checkpoint}: no checkpoint to export")
    weights = weights_fingerprint(checkpoint)
    fp32, wanted = fold_dir / ONNX_FILE, fold_dir / graph_file(quantize)
    if is_current(wanted, weights, quantize):
        return wanted
    if not is_current(fp32, weights):
        require_packages(EXPORT_PACKAGES)
        model.load_state_dict(load_file(str(checkpoint)))
        export(model.onnx_module() if hasattr(model, "onnx_module") else model, example(), fp32)
        write_fingerprint(fp32, weights, checkpoint, None)
    if quantize == "int8":
        quantize_int8(fp32, wanted)
        write_fingerprint(wanted, weights, checkpoint, quantize)
    return wanted


def write_fingerprint(graph: Path, weights: str, checkpoint: Path, quantize: str | None) -> None:
    meta = {"weights": weights, "checkpoint": checkpoint.name, "quantize": quantize,
            "quantization": quantization(quantize), "torch": torch.__version__, "opset": OPSET}
    with atomic_path(fingerprint_path(graph)) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")


def export(module: nn.Module, example: dict, path: Path) -> Path:
    """torch.onnx's TorchScript exporter with a dynamic batch axis on every input and a dynamic sequence axis on 2-D
    integer inputs (token ids, masks); image sides stay fixed. example: real inputs, cut to what module.forward
    takes. Not the torch.export-based exporter (torch.onnx's default): ONNX Runtime ran its graphs of MiniLM 1.4x
    slower than these (docs/onnx.md, Measured)."""
    module = module.eval()
    takes = inspect.signature(module.forward).parameters
    names = [k for k in takes if isinstance(example.get(k), torch.Tensor)]  # the graph's inputs, in forward's order
    if not names:
        raise ConfigError(f"cannot export {type(module).__name__}: the batch has none of its inputs {list(takes)}")
    inputs = {k: example[k] for k in names}
    if len(inputs[names[0]]) < 2:  # a batch of 1 would fix the batch axis at 1
        inputs = {k: torch.cat([v, v]) for k, v in inputs.items()}
    axes = {k: {0: "batch", 1: "seq"} if v.ndim == 2 and not v.is_floating_point() else {0: "batch"}
            for k, v in inputs.items()}
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes, not the user's business
        torch.onnx.export(module, (), str(tmp), kwargs=inputs, input_names=names, output_names=["output"],
                          dynamic_axes={**axes, "output": {0: "batch"}}, opset_version=OPSET, dynamo=False)
    return path


def quantize_int8(source: Path, dest: Path) -> Path:
    """onnxruntime's dynamic quantization (INT8_SETTINGS): int8 weights (QInt8), activations quantized on the fly."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    with atomic_path(dest) as tmp:
        quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, **INT8_SETTINGS)
    return dest
