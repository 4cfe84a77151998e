"""Winners' training tricks, each a config key of every task and off by default (the trainer calls these):

    ema=0.999             exponential moving average of the weights (timm's ModelEmaV3); the average is what is
                          evaluated, saved as the fold's checkpoint and resumed
    layer_decay=0.9       layer-wise learning-rate decay: a backbone layer i of L learns at lr * decay**(L - i)
                          (timm's param_groups_layer_decay for timm backbones; transformer layers by name)
    awp=1.0               adversarial weight perturbation from epoch `awp_start` on: a second backward pass at
                          weights pushed up the loss gradient by at most awp_eps of their size
    multi_sample_dropout=5   the head averages its output over N dropout masks while training
    gradient_checkpointing=true   recompute activations in the backward pass (large backbones on a GPU)
"""
from __future__ import annotations

import re

import torch
from omegaconf import DictConfig
from timm.utils import ModelEmaV3
from torch import nn

from common.config import TRICK_DEFAULTS  # noqa: F401  (the keys, declared with the engine's)
from common.errors import ConfigError


# ---- EMA -------------------------------------------------------------------------------------------------
def create_ema(cfg: DictConfig, model: nn.Module) -> ModelEmaV3 | None:
    """The weights' moving average, on the model's device; None when ema=0."""
    if not cfg.get("ema"):
        return None
    if not 0 < cfg.ema < 1:
        raise ConfigError(f"ema is a decay in (0, 1), e.g. 0.999; got {cfg.ema}")
    # timm's warm-up: the decay grows as 1 - (1 + step)^(-2/3) up to `ema`, so a short run (a CPU run may have a few
    # hundred steps) averages its recent weights instead of dragging its random-head start along.
    return ModelEmaV3(model, decay=float(cfg.ema), use_warmup=True)


# ---- layer-wise learning-rate decay ----------------------------------------------------------------------
def layer_scales(model: nn.Module, decay: float) -> dict[str, float]:
    """Parameter name -> learning-rate scale. The head (everything outside model.backbone) keeps 1."""
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise ConfigError("layer_decay needs a model with a `backbone` (the kit's text and image models have one)")
    if hasattr(backbone, "group_matcher"):  # a timm model: its own layer grouping
        from timm.optim import param_groups_layer_decay
        groups = param_groups_layer_decay(backbone, weight_decay=0.0, layer_decay=decay)
        names = {id(p): n for n, p in backbone.named_parameters()}
        scales = {f"backbone.{names[id(p)]}": g["lr_scale"] for g in groups for p in g["params"]}
    else:  # transformers: embeddings, encoder.layer.<i>, the rest on top
        n_layers = getattr(getattr(backbone, "config", None), "num_hidden_layers", None)
        if not n_layers:
            raise ConfigError(f"layer_decay: {type(backbone).__name__} has no num_hidden_layers to decay over")
        scales = {}
        for name, _ in backbone.named_parameters():
            match = re.search(r"\.(?:layer|layers|block|blocks)\.(\d+)\.", f".{name}")
            depth = int(match.group(1)) + 1 if match else (0 if "embed" in name else n_layers + 1)
            scales[f"backbone.{name}"] = decay ** (n_layers + 1 - depth)
    return scales


# ---- AWP -------------------------------------------------------------------------------------------------
class AWP:
    """Adversarial weight perturbation (Wu et al. 2020), as in the winning Kaggle NLP code: after the normal
    backward pass, move each backbone weight by awp * |w| * grad / |grad| (kept within awp_eps * |w| of where it
    was), add the loss there to the gradients, and put the weights back before the optimizer steps."""

    def __init__(self, model: nn.Module, adv_lr: float, eps: float):
        self.model, self.adv_lr, self.eps = model, adv_lr, eps
        self.backup: dict[str, torch.Tensor] = {}

    def _params(self):
        return [(n, p) for n, p in self.model.named_parameters()
                if p.requires_grad and p.grad is not None and "head" not in n.split(".")[:2]]

    @torch.no_grad()
    def perturb(self) -> None:
        for name, p in self._params():
            self.backup[name] = p.detach().clone()
            grad_norm, weight_norm = p.grad.norm(), p.norm()
            if grad_norm != 0 and not torch.isnan(grad_norm):
                step = self.adv_lr * p.grad / grad_norm * (weight_norm + 1e-6)
                bound = self.eps * p.abs().detach()
                p.add_(step).clamp_(self.backup[name] - bound, self.backup[name] + bound)

    @torch.no_grad()
    def restore(self) -> None:
        for name, p in self.model.named_parameters():
            if name in self.backup:
                p.copy_(self.backup[name])
        self.backup = {}


# ---- the head and the backbone ----------------------------------------------------------------------------
def multi_sample(head, x: torch.Tensor, n: int, training: bool) -> torch.Tensor:
    """head(x) (dropout -> linear) averaged over n dropout masks while training; one pass otherwise."""
    if not training or n <= 1:
        return head(x)
    return torch.stack([head(x) for _ in range(n)]).mean(0)


def set_gradient_checkpointing(backbone: nn.Module) -> None:
    if hasattr(backbone, "gradient_checkpointing_enable"):  # transformers
        backbone.gradient_checkpointing_enable()
    elif hasattr(backbone, "set_grad_checkpointing"):       # timm
        backbone.set_grad_checkpointing(True)
    else:
        raise ConfigError(f"gradient_checkpointing: {type(backbone).__name__} does not support it")
