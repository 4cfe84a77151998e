"""Class imbalance for classification tasks: re-sampling the training rows (replicating rare labels, thinning
common ones), a balanced sampler, cost-sensitive class weights, focal loss, label smoothing, mixup, and extra
augmentation for minority labels only, and per-class decision biases tuned on OOF for the metric (class_bias,
common/metrics.py). Each is a config key (IMBALANCE_DEFAULTS); all are off by default.

A task opts in with the mixin, placed before its base class:  class MyTask(ImbalanceMixin, ImageTask)
and adds IMBALANCE_DEFAULTS to its config_defaults. Minority-only augmentation needs the task's image pipelines:
an image task calls `minority_rows` and `with_minority_augment` from its `transforms` (see competitions/mvtec).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from sklearn.metrics import precision_recall_fscore_support
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from torch.utils.data import WeightedRandomSampler

from common.errors import ConfigError
from common.losses import check_loss, focal_loss, get_loss  # noqa: F401  focal_loss: its old home
from common.task import TARGET, Task, model_inputs

IMBALANCE_DEFAULTS = {
    "sampler": None,            # null | weighted: torch WeightedRandomSampler, up-sampling rare labels without copies
    "sampler_power": 1.0,       # a row is drawn with weight count(label)**-power: 1 -> every label equally often,
                                # 0.5 -> in proportion to sqrt(count), 0 -> as in the data
    "upsample_to": None,        # replicate the rows of every label with fewer rows up to N (whole copies + a seeded rest)
    "downsample_to": None,      # keep at most N rows of every label (a seeded sample): down-sampling the majority
    "class_weights": None,      # null | balanced | sqrt: cost-sensitive loss, weight n/(k*count) (sqrt: its root)
    "loss": "ce",               # ce (cross-entropy) | focal (Lin et al. 2017: down-weights easy rows); common/losses.py
    "focal_gamma": 2.0,         # focal loss exponent; 0 is cross-entropy
    "label_smoothing": 0.0,     # share of the target spread over all classes
    "mixup_alpha": 0.0,         # mixup: lambda ~ Beta(alpha, alpha), batch mixed with a shuffled copy; 0 -> off
    "minority_augment": None,   # extra albumentations {ClassName: {arg: value}} for minority-label rows only
    "minority_below": 50,       # a label is a minority label when the fold trains on fewer images of it than this
    "class_bias": False,        # per-class biases on the log-probabilities tuned on OOF for the metric (class_bias.json,
                                # used by submit; may change when a finished run is trained again: seconds, no fold)
}

SAMPLERS = (None, "weighted")
CLASS_WEIGHTS = (None, "balanced", "sqrt")


# ---- re-sampling the training frame -------------------------------------------------------------
def resample(train: pd.DataFrame, label: str, upsample_to: int | None, downsample_to: int | None,
             seed: int) -> pd.DataFrame:
    """Thin every label to at most `downsample_to` rows, then replicate every label to at least `upsample_to`
    rows (every row as often as the others, the remainder drawn without replacement). Seeded; rows keep order
    of appearance within a label."""
    rng = np.random.default_rng(seed)
    parts = []
    for _, rows in train.groupby(label, sort=True):
        if downsample_to and len(rows) > downsample_to:
            rows = rows.iloc[np.sort(rng.choice(len(rows), size=int(downsample_to), replace=False))]
        if upsample_to and len(rows) < upsample_to:
            copies, rest = divmod(int(upsample_to), len(rows))
            extra = rows.iloc[np.sort(rng.choice(len(rows), size=rest, replace=False))]
            rows = pd.concat([rows] * copies + [extra])
        parts.append(rows)
    return pd.concat(parts).reset_index(drop=True)


def balanced_sampler(labels, power: float = 1.0, generator: torch.Generator | None = None) -> WeightedRandomSampler:
    """Draws len(labels) rows per epoch with replacement, a row of label l with weight count(l)**-power."""
    labels = pd.Series(np.asarray(labels))
    weights = labels.map(labels.value_counts()).to_numpy(dtype=np.float64) ** -float(power)
    return WeightedRandomSampler(torch.as_tensor(weights), num_samples=len(labels), replacement=True,
                                 generator=generator)


def minority_rows(train: pd.DataFrame, label: str, id_column: str, below: int) -> np.ndarray:
    """Rows whose label has fewer than `below` distinct images (ids) in this frame; replicated rows count once."""
    counts = train.drop_duplicates(id_column)[label].value_counts()
    return train[label].map(counts).to_numpy() < below


def with_minority_augment(cfg: DictConfig) -> DictConfig:
    """cfg with `augment` followed by `minority_augment` (a transform named in both takes the minority arguments)."""
    plain = lambda mapping: OmegaConf.to_container(mapping, resolve=True) if mapping else {}  # noqa: E731
    out = cfg.copy()
    out.augment = {**plain(cfg.augment), **plain(cfg.minority_augment)}
    return out


# ---- losses -------------------------------------------------------------------------------------
def class_weight_vector(targets, n_classes: int, mode: str | None) -> torch.Tensor | None:
    """Per-class loss weights from a fold's class indices (sklearn's 'balanced': n / (k * count)).
    A class the fold does not train on gets weight 1: it has no rows, so only label smoothing sees it."""
    if mode is None:
        return None
    if mode not in CLASS_WEIGHTS:
        raise ConfigError(f"class_weights must be one of {CLASS_WEIGHTS}, got {mode!r}")
    targets = np.asarray(targets, dtype=int)
    present = np.unique(targets)
    weights = np.ones(n_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=targets)
    if mode == "sqrt":
        weights = np.sqrt(weights)
    return torch.tensor(weights, dtype=torch.float32)


class ClassificationLoss(nn.Module):
    """Cross-entropy or focal loss, with optional class weights and label smoothing, on class-index targets.

    The class weights are sized from the logits at the first call: a fold may lack a rare label altogether,
    so its training rows do not tell how many classes the head has."""

    def __init__(self, targets=None, class_weights: str | None = None, loss: str = "ce", gamma: float = 2.0,
                 label_smoothing: float = 0.0):
        super().__init__()
        check_loss(loss, "multiclass")
        if class_weights not in CLASS_WEIGHTS:
            raise ConfigError(f"class_weights must be one of {CLASS_WEIGHTS}, got {class_weights!r}")
        self.targets, self.class_weights = targets, class_weights
        self.loss, self.gamma, self.label_smoothing = loss, float(gamma), float(label_smoothing)
        self._weight: torch.Tensor | None = None

    def weight(self, n_classes: int, device) -> torch.Tensor | None:
        if self.class_weights is None:
            return None
        if self._weight is None or len(self._weight) != n_classes:
            self._weight = class_weight_vector(self.targets, n_classes, self.class_weights)
        return self._weight.to(device)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        options = {"weight": self.weight(logits.shape[-1], logits.device), "label_smoothing": self.label_smoothing}
        if self.loss == "focal":
            options["gamma"] = self.gamma
        return get_loss(self.loss, "multiclass", **options)(logits, target)


def mixup_loss(model: nn.Module, batch: dict, loss_fn, alpha: float) -> torch.Tensor:
    """Mixup (Zhang et al. 2018): every floating-point input is mixed with a shuffled copy of the batch,
    lam*x + (1-lam)*x[perm], and the loss is lam*loss(y) + (1-lam)*loss(y[perm]), so it works with any loss."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    target = batch["target"]
    perm = torch.randperm(len(target), device=target.device)
    inputs = {k: lam * v + (1 - lam) * v[perm] if torch.is_floating_point(v) else v
              for k, v in model_inputs(batch).items()}
    logits = model(**inputs)
    return lam * loss_fn(logits, target) + (1 - lam) * loss_fn(logits, target[perm])


class ImbalanceMixin:
    """The IMBALANCE_DEFAULTS options for a multiclass Task: class MyTask(ImbalanceMixin, ImageTask)."""

    def train_frame(self: Task, cfg, train):
        if cfg.upsample_to or cfg.downsample_to:
            return resample(train, TARGET, cfg.upsample_to, cfg.downsample_to, cfg.seed)
        return train

    def train_sampler(self: Task, cfg, train, ctx):
        if cfg.sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be null or weighted, got {cfg.sampler!r}")
        if cfg.sampler == "weighted":
            return balanced_sampler(train[TARGET], cfg.sampler_power, ctx.generator)  # re-seeded every epoch
        return super().train_sampler(cfg, train, ctx)

    def loss_fn(self: Task, cfg, train, ctx):
        plain = cfg.loss == "ce" and not cfg.class_weights and not cfg.label_smoothing
        if self.kind != "multiclass":
            if not plain:
                raise ConfigError(f"loss={cfg.loss}, class_weights and label_smoothing are for multiclass tasks; "
                                 f"{self.name} is {self.kind}")
            return super().loss_fn(cfg, train, ctx)
        return ClassificationLoss(train[TARGET].to_numpy(), cfg.class_weights, cfg.loss, cfg.focal_gamma,
                                  cfg.label_smoothing)

    def train_loss(self: Task, cfg, model, batch, loss_fn):
        if cfg.mixup_alpha and cfg.mixup_alpha > 0:
            return mixup_loss(model, batch, loss_fn, cfg.mixup_alpha)
        return super().train_loss(cfg, model, batch, loss_fn)


# ---- reporting ----------------------------------------------------------------------------------
def per_label_f1(y_true, y_pred, classes: list[str]) -> pd.DataFrame:
    """label, support, precision, recall, f1 for every class (rare labels are where macro-F1 is lost),
    sorted from worst F1 to best."""
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels,
                                                                     zero_division=0)
    table = pd.DataFrame({"label": classes, "support": support, "precision": precision, "recall": recall, "f1": f1})
    return table.sort_values(["f1", "support"], kind="stable").reset_index(drop=True)
