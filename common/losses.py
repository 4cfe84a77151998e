"""Every loss `loss=` can name, each defined once with the kinds of output it serves and how that output becomes a
prediction. A family chooses the default (Task.default_loss); `check_loss` refuses a name that is not here, or does
not fit the kind, naming the closest valid one. Losses are computed in fp32 whatever the forward pass ran in.

Kinds of output: `regression` (one value), `binary` (one logit), `multiclass` (one logit per class) and
`pair_embedding` (the cosine of two L2-normalised embeddings, trained towards a 0/1 label, or ranked (mnrl):
common/pairs.py).
"""
from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from common.errors import ConfigError

KINDS = ("regression", "binary", "multiclass", "pair_embedding")


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, weight: torch.Tensor | None = None,
               label_smoothing: float = 0.0) -> torch.Tensor:
    """-sum_c q_c (1 - p_c)^gamma log p_c, q the (smoothed) one-hot target; a row weighs weight[target],
    the mean is weighted as in cross-entropy. gamma=0 without smoothing is cross-entropy."""
    log_p = logits.log_softmax(-1)
    n_classes = logits.shape[-1]
    q = F.one_hot(target, n_classes).float() * (1 - label_smoothing) + label_smoothing / n_classes
    per_row = -(q * (1 - log_p.exp()).pow(gamma) * log_p).sum(-1)
    w = weight[target] if weight is not None else torch.ones_like(per_row)
    return (w * per_row).sum() / w.sum()


def contrastive_loss(cos: torch.Tensor, y: torch.Tensor, margin: float = 0.5) -> torch.Tensor:
    """sentence-transformers' ContrastiveLoss on the cosine distance: positives pulled to distance 0, negatives
    pushed beyond `margin`."""
    d = 1 - cos.view(-1)
    return 0.5 * (y * d.pow(2) + (1 - y) * F.relu(margin - d).pow(2)).mean()


def multiple_negatives_ranking(anchors: torch.Tensor, positives: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """sentence-transformers' MultipleNegativesRankingLoss: row i of `positives` is anchor i's match and every other
    row its negative (softmax over the scaled cosines); rows must come from distinct groups."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    return MultipleNegativesRankingLoss(model=None, scale=scale).compute_loss_from_embeddings(
        [anchors, positives], labels=None)


def mse(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(output.view(-1), y)


def scores(output: torch.Tensor) -> torch.Tensor:
    return output.view(-1, 1)


@dataclass(frozen=True)
class Loss:
    kinds: tuple[str, ...]                # the kinds of output it serves
    fn: Callable[..., torch.Tensor]       # (fp32 output, target, **options) -> scalar
    activate: Callable[[torch.Tensor], torch.Tensor]  # fp32 output -> the predictions stored in oof / test_preds
    class_index: bool = False             # the target is a class index (kept integer), not a float
    config_keys: tuple[str, ...] = ()     # config keys it takes as keyword arguments (Task.loss_fn passes them)


LOSSES = {
    "bce": Loss(("binary", "regression"),  # BCE-with-logits; a regression target in [0, 1] too
                lambda logits, y: F.binary_cross_entropy_with_logits(logits.view(-1), y),
                lambda logits: logits.view(-1, 1).sigmoid()),
    "mse": Loss(("binary", "regression"), mse, scores),
    "l1": Loss(("regression",), lambda out, y: F.l1_loss(out.view(-1), y), scores),
    "huber": Loss(("regression",), lambda out, y: F.smooth_l1_loss(out.view(-1), y, beta=0.1), scores),
    "ce": Loss(("multiclass",), F.cross_entropy, lambda logits: logits.softmax(-1), class_index=True),
    "focal": Loss(("multiclass",), focal_loss, lambda logits: logits.softmax(-1), class_index=True),  # Lin et al. 2017
    # sentence-transformers' CosineSimilarityLoss: MSE of the cosine to the 0/1 label; 0.5 is the cosine's natural cut
    "cosine": Loss(("pair_embedding",), mse, lambda cos: cos.view(-1, 1).clamp(0, 1)),
    "contrastive": Loss(("pair_embedding",), contrastive_loss, lambda cos: cos.view(-1, 1).clamp(0, 1),
                        config_keys=("margin",)),
    # trained with multiple_negatives_ranking over a batch's positive pairs (common/pairs.py ranking_loss); fn is
    # a scored pair's loss (validation): the cosine's MSE to its label
    "mnrl": Loss(("pair_embedding",), mse, lambda cos: cos.view(-1, 1).clamp(0, 1)),
}


def losses_for(kind: str) -> list[str]:
    return [name for name, loss in LOSSES.items() if kind in loss.kinds]


def check_loss(name: str, kind: str) -> str:
    """name, if the registry has it for this kind of output; else a ConfigError naming what fits (the closest)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    valid = losses_for(kind)
    if name in valid:
        return name
    if name in LOSSES:
        raise ConfigError(f"loss={name!r} is for a {' or '.join(LOSSES[name].kinds)} output; a {kind} output "
                          f"takes {', '.join(valid)}")
    closest = difflib.get_close_matches(str(name), valid, n=1)
    hint = f" (did you mean {closest[0]!r}?)" if closest else ""
    raise ConfigError(f"loss must be one of {', '.join(valid)} for a {kind} output, got {name!r}{hint}")


def get_loss(name: str, kind: str, **options) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(output, target) -> the loss `name` for this kind of output, in fp32; options are the loss's keyword
    arguments (margin, gamma, weight, label_smoothing)."""
    loss = LOSSES[check_loss(name, kind)]
    return lambda output, y: loss.fn(output.float(), y if loss.class_index else y.float(), **options)


def activate(name: str, output: torch.Tensor) -> torch.Tensor:
    """The predictions of a model trained with loss `name`: probabilities, scores or clamped cosines (fp32)."""
    return LOSSES[name].activate(output.float())
