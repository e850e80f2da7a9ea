"""Output regularizers and label-noise baselines the papers compare against (METHODS.md §6).

Each is a plain loss function plus a registered Method:

  maxent              CE − β·H(p)                         Pereyra et al., ICLR-W 2017
  focal               mean (1−p_y)^γ · CE                 Lin et al., ICCV 2017
  sce                 α·CE + β·RCE                        Wang et al., ICCV 2019
  bootstrap_soft      CE against β·Y + (1−β)·p            Reed et al., ICLR-W 2015
  bootstrap_hard      CE against β·Y + (1−β)·onehot(argmax p)
  disturb_label       CE with each label resampled uniformly with prob. α   Xie et al., CVPR 2016
  pairwise_confusion  CE + λ·mean ‖p_i − p_j‖² over cross-class pairs        Dubey et al., ECCV 2018
                      (variant ``code``: CE + λ·Σ ‖z_i − z_j‖₂ / B on logits, λ = 10, as the
                      authors' released code and the OLS authors' baseline compute it)

Softmax and log are taken in at least float32 (fp16/bf16 logits are upcast; float64 stays
float64). Defaults and their sources are listed in docs/methods.md.
"""
from __future__ import annotations

from typing import Annotated, Dict, List, Literal, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.base import ModelOutput
from ..registry import METHODS, Range
from .base import Batch, Method
from .functional import cross_entropy, entropy, label_terms, masked_mean, soft_cross_entropy, upcast

__all__ = [
    "entropy", "confidence_penalty", "maxent_loss", "focal_loss", "reverse_cross_entropy",
    "sce_loss", "bootstrap_soft_targets", "bootstrap_hard_targets", "bootstrap_soft_loss",
    "bootstrap_hard_loss", "disturb_labels", "pairwise_confusion", "pairwise_confusion_loss",
]


# --------------------------------------------------------------------------- maxent
def confidence_penalty(logits: torch.Tensor, beta: float = 0.1,
                       threshold: Optional[float] = None) -> torch.Tensor:
    """The penalty term alone, batch mean: −β·H(p), or β·max(0, Γ − H(p)) with a threshold Γ
    (Pereyra et al. §3: penalise only distributions whose entropy is below Γ)."""
    h = entropy(logits)
    if threshold is None:
        return -beta * h.mean()  # Pereyra et al. Eq. 2: −β·H(p)
    return beta * (threshold - h).clamp_min(0).mean()


def maxent_loss(logits: torch.Tensor, labels: torch.Tensor, beta: float = 0.1,
                threshold: Optional[float] = None) -> torch.Tensor:
    """Confidence penalty (Pereyra et al. 2017, §3): mean CE − β·H(p)."""
    return cross_entropy(logits, labels) + confidence_penalty(logits, beta, threshold)


# --------------------------------------------------------------------------- focal
def focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0,
               alpha: Union[None, float, torch.Tensor] = None) -> torch.Tensor:
    """Softmax focal loss (Lin et al. 2017, Eq. 5): mean_i −α_{y_i}·(1 − p_{y_i})^γ·log p_{y_i}.

    ``alpha``: None (no weighting), a scalar, or a K-vector of per-class weights α_y. The
    modulating factor is differentiated, as in the paper (its Appendix gives the gradient).
    """
    logp_y = F.log_softmax(upcast(logits), dim=1).gather(1, labels[:, None]).squeeze(1)
    # 1 − p_y computed as −expm1(log p_y): exact near p_y = 1; clamped above 0 so that the
    # gradient of the power stays finite for γ < 1.
    one_minus = (-torch.expm1(logp_y)).clamp_min(torch.finfo(logp_y.dtype).tiny)
    loss = -one_minus.pow(gamma) * logp_y  # Lin et al. Eq. 5
    if alpha is not None:
        if isinstance(alpha, torch.Tensor) and alpha.dim() == 1:
            loss = alpha.to(loss.dtype)[labels] * loss
        else:
            loss = float(alpha) * loss
    return loss.mean()


# --------------------------------------------------------------------------- sce
def reverse_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, log_clamp: float = -4.0) -> torch.Tensor:
    """RCE (Wang et al. 2019, §3): mean_i −Σ_k p_ik·log q_ik with q the one-hot label and
    log 0 := A (``log_clamp``). For one-hot q this is −A·(1 − p_y)."""
    p = F.softmax(upcast(logits), dim=1)
    onehot = F.one_hot(labels, p.shape[1]).to(torch.bool)
    log_q = torch.where(onehot, torch.zeros_like(p), torch.full_like(p, log_clamp))
    return -(p * log_q).sum(dim=1).mean()  # Wang et al. Eq. 3 (RCE)


def sce_loss(logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.1, beta: float = 1.0,
             log_clamp: float = -4.0) -> torch.Tensor:
    """Symmetric cross-entropy (Wang et al. 2019, §3): α·CE + β·RCE."""
    return alpha * cross_entropy(logits, labels) + beta * reverse_cross_entropy(logits, labels, log_clamp)


# --------------------------------------------------------------------------- bootstrapping
def bootstrap_soft_targets(logits: torch.Tensor, labels: torch.Tensor, beta: float = 0.95,
                           detach: bool = False) -> torch.Tensor:
    """β·Y + (1−β)·p (Reed et al. 2015, soft bootstrapping). With ``detach=False`` the target
    keeps its gradient through p (the paper's objective, see ``bootstrap_soft_loss``)."""
    p = F.softmax(upcast(logits), dim=1)
    if detach:
        p = p.detach()
    return beta * F.one_hot(labels, p.shape[1]).to(p.dtype) + (1.0 - beta) * p


def bootstrap_hard_targets(logits: torch.Tensor, labels: torch.Tensor, beta: float = 0.8) -> torch.Tensor:
    """β·Y + (1−β)·onehot(argmax p) (Reed et al. 2015, hard bootstrapping); a constant."""
    logits = upcast(logits).detach()
    k = logits.shape[1]
    onehot_y = F.one_hot(labels, k).to(logits.dtype)
    return beta * onehot_y + (1.0 - beta) * F.one_hot(logits.argmax(dim=1), k).to(logits.dtype)


def bootstrap_soft_loss(logits: torch.Tensor, labels: torch.Tensor, beta: float = 0.95,
                        detach: bool = False) -> torch.Tensor:
    """mean_i −Σ_k [β·Y + (1−β)·p]_ik·log p_ik. With gradient through p this is
    β·CE + (1−β)·H(p), the minimum-entropy form Reed et al. (§3) state it is equivalent to;
    with ``detach=True`` its gradient equals that of β·CE alone."""
    return soft_cross_entropy(logits, bootstrap_soft_targets(logits, labels, beta, detach))


def bootstrap_hard_loss(logits: torch.Tensor, labels: torch.Tensor, beta: float = 0.8) -> torch.Tensor:
    """mean_i −Σ_k [β·Y + (1−β)·onehot(argmax p)]_ik·log p_ik."""
    return soft_cross_entropy(logits, bootstrap_hard_targets(logits, labels, beta))


# --------------------------------------------------------------------------- DisturbLabel
def disturb_labels(labels: torch.Tensor, num_classes: int, alpha: float = 0.1,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Each label is, with probability α, replaced by a class drawn uniformly from all K
    classes (it may draw the true class again), i.e. drawn from Xie et al.'s multinoulli
    P(α): p_y = 1 − α·(K−1)/K, p_k = α/K. Drawn on the labels' device (no host sync)."""
    dev = labels.device
    replace = torch.rand(labels.shape, device=dev, generator=generator) < alpha
    random = torch.randint(0, num_classes, labels.shape, device=dev, generator=generator, dtype=labels.dtype)
    return torch.where(replace, random, labels)


# --------------------------------------------------------------------------- Pairwise Confusion
def pairwise_confusion(logits: torch.Tensor, labels: torch.Tensor, variant: str = "paper") -> torch.Tensor:
    """Euclidean Confusion (Dubey et al. 2018, §3): the batch is split in halves and sample i
    is paired with i + ⌊B/2⌋ (an odd batch leaves its last sample unpaired).

    paper: the mean of ‖p_i − p_j‖²₂ (p = softmax) over the pairs with y_i ≠ y_j (0 when none).
    code:  Σ_pairs ‖z_i − z_j‖₂ / B on the logits z, every pair, the norm not squared: the
           authors' released code (abhimanyudubey/confusion), as the OLS authors' baseline
           (zhangchbin/OnlineLabelSmoothing) applies it to the network's output."""
    z = upcast(logits)
    n = z.shape[0] // 2
    if variant == "code":
        return torch.linalg.vector_norm(z[:n] - z[n:2 * n], dim=1).sum() / z.shape[0]
    if variant != "paper":
        raise ValueError(f"variant must be 'paper' or 'code', got {variant!r}")
    p = F.softmax(z, dim=1)
    dist = (p[:n] - p[n:2 * n]).pow(2).sum(dim=1)               # Dubey et al. Eq. 4: ‖p_i − p_j‖²
    return masked_mean(dist, labels[:n] != labels[n:2 * n])    # over cross-class pairs only


def pairwise_confusion_loss(logits: torch.Tensor, labels: torch.Tensor, lam: float,
                            variant: str = "paper") -> torch.Tensor:
    """CE + λ·Euclidean Confusion."""
    return cross_entropy(logits, labels) + lam * pairwise_confusion(logits, labels, variant)


# =========================================================================== methods
@METHODS.register("maxent", "confidence penalty: CE - beta*H(p)",
                  reference="Pereyra et al., Regularizing Neural Networks by Penalizing Confident "
                            "Output Distributions, ICLR Workshop 2017")
class ConfidencePenalty(Method):
    """Options: ``beta`` (0.1) and ``threshold`` Γ (None: plain −β·H; else β·max(0, Γ−H)).
    Logged terms: ``ce`` and ``entropy`` (the weighted penalty, ≤ 0 without a threshold)."""

    def __init__(self, num_classes: int, beta: Annotated[float, Range(0.0)] = 0.1,
                 threshold: Optional[Annotated[float, Range(0.0, low_open=True)]] = None):
        super().__init__(num_classes)
        self.beta, self.threshold = beta, threshold

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        return {"ce": label_terms(lambda y: cross_entropy(out.logits, y), batch),
                "entropy": confidence_penalty(out.logits, self.beta, self.threshold)}


@METHODS.register("focal", "focal loss: mean (1-p_y)^gamma * CE",
                  reference="Lin et al., Focal Loss for Dense Object Detection, ICCV 2017")
class FocalLoss(Method):
    """Options: ``gamma`` (2.0) and ``alpha`` (None: off; a number; or K per-class weights).
    Logged term: ``focal``."""

    def __init__(self, num_classes: int, gamma: Annotated[float, Range(0.0)] = 2.0,
                 alpha: Union[None, Annotated[float, Range(0.0, low_open=True)], List[float]] = None):
        super().__init__(num_classes)
        self.gamma = gamma
        self.alpha_scalar: Optional[float] = None
        weights = None
        if isinstance(alpha, (list, tuple)):  # a per-class list: its length depends on K (cross-field)
            if len(alpha) != num_classes or not all(
                    isinstance(a, (int, float)) and not isinstance(a, bool) and Range(0.0).ok(a) for a in alpha):
                raise ConfigError(f"method.options.alpha: expected {num_classes} finite class weights >= 0, "
                                  f"got {list(alpha)}")
            weights = torch.tensor([float(a) for a in alpha])
        elif alpha is not None:
            self.alpha_scalar = alpha
        # derived from the config, so not part of the checkpoint
        self.register_buffer("alpha_weights", weights, persistent=False)

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        alpha = self.alpha_weights if self.alpha_weights is not None else self.alpha_scalar
        return {"focal": label_terms(lambda y: focal_loss(out.logits, y, self.gamma, alpha), batch)}


@METHODS.register("sce", "symmetric cross-entropy: alpha*CE + beta*RCE",
                  reference="Wang et al., Symmetric Cross Entropy for Robust Learning with Noisy "
                            "Labels, ICCV 2019")
class SymmetricCrossEntropy(Method):
    """Options: ``alpha`` (0.1), ``beta`` (1.0), ``log_clamp`` A (−4). The defaults are Wang et
    al.'s CIFAR-10 setting; on CIFAR-100 both their code and the OLS authors' use α = 6, β = 0.1
    (OLS Table II): dataset-dependent values belong in the recipes and paper studies. Logged
    terms ``ce`` (weighted α) and ``rce`` (weighted β)."""

    def __init__(self, num_classes: int, alpha: Annotated[float, Range(0.0)] = 0.1,
                 beta: Annotated[float, Range(0.0)] = 1.0,
                 log_clamp: Annotated[float, Range(high=0.0, high_open=True)] = -4.0):
        super().__init__(num_classes)
        self.alpha, self.beta, self.log_clamp = alpha, beta, log_clamp

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        return {"ce": self.alpha * label_terms(lambda y: cross_entropy(out.logits, y), batch),
                "rce": self.beta * label_terms(lambda y: reverse_cross_entropy(out.logits, y, self.log_clamp), batch)}


def _bootstrap_terms(logits, labels, beta, own_target):
    """Split −Σ [β·Y + (1−β)·T]·log p into ``ce`` = β·CE(Y) and ``self`` = (1−β)·CE(T)."""
    terms = {"ce": beta * cross_entropy(logits, labels)}
    if beta < 1.0:
        terms["self"] = (1.0 - beta) * soft_cross_entropy(logits, own_target)  # Reed et al. §3
    return terms


@METHODS.register("bootstrap_soft", "soft bootstrapping: CE against beta*onehot + (1-beta)*p",
                  reference="Reed et al., Training Deep Neural Networks on Noisy Labels with "
                            "Bootstrapping, ICLR Workshop 2015")
class SoftBootstrap(Method):
    """Options: ``beta`` (0.95) and ``detach`` (False: gradient flows through p in the target,
    the paper's objective; True: p is a constant). Logged terms ``ce`` (β·CE) and ``self``
    ((1−β)·CE against p)."""

    def __init__(self, num_classes: int, beta: Annotated[float, Range(0.0, 1.0)] = 0.95, detach: bool = False):
        super().__init__(num_classes)
        self.beta = beta
        self.detach = detach

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        p = F.softmax(upcast(out.logits), dim=1)
        own = p.detach() if self.detach else p
        return label_terms(lambda y: _bootstrap_terms(out.logits, y, self.beta, own), batch)


@METHODS.register("bootstrap_hard", "hard bootstrapping: CE against beta*onehot + (1-beta)*onehot(argmax p)",
                  reference="Reed et al., Training Deep Neural Networks on Noisy Labels with "
                            "Bootstrapping, ICLR Workshop 2015")
class HardBootstrap(Method):
    """Option: ``beta`` (0.8). Logged terms ``ce`` (β·CE) and ``self`` ((1−β)·CE against the
    predicted class)."""

    def __init__(self, num_classes: int, beta: Annotated[float, Range(0.0, 1.0)] = 0.8):
        super().__init__(num_classes)
        self.beta = beta

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        logits = out.logits.detach()
        pred = F.one_hot(logits.argmax(dim=1), logits.shape[1]).to(upcast(logits).dtype)
        return label_terms(lambda y: _bootstrap_terms(out.logits, y, self.beta, pred), batch)


@METHODS.register("disturb_label", "DisturbLabel: each label resampled uniformly over all classes with prob. alpha",
                  reference="Xie et al., DisturbLabel: Regularizing CNN on the Loss Layer, CVPR 2016")
class DisturbLabel(Method):
    """Option: ``alpha`` (0.1), the probability that a label is redrawn uniformly from all K
    classes in this step. Logged term ``ce`` (against the disturbed labels)."""

    def __init__(self, num_classes: int, alpha: Annotated[float, Range(0.0, 1.0)] = 0.1):
        super().__init__(num_classes)
        self.alpha = alpha

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        def ce(y):
            return cross_entropy(out.logits, disturb_labels(y, self.num_classes, self.alpha) if self.alpha > 0 else y)
        return {"ce": label_terms(ce, batch)}


@METHODS.register("pairwise_confusion", "Pairwise Confusion: CE + lambda*||p_i - p_j||^2 over cross-class pairs",
                  reference="Dubey et al., Pairwise Confusion for Fine-Grained Visual Classification, ECCV 2018")
class PairwiseConfusion(Method):
    """Options: ``variant`` paper (default: squared distance of the softmax outputs over
    cross-class pairs) | code (L2 distance of the logits over all pairs, divided by the batch
    size: the authors' released code, used with λ = 10 by the OLS authors' baseline);
    ``lam`` λ (None: the variant's: paper 0.1·K, the low end of the authors' recommended
    0.1N–0.2N; code 10). Logged terms ``ce`` and ``confusion`` (weighted λ)."""

    def __init__(self, num_classes: int, lam: Optional[Annotated[float, Range(0.0)]] = None,
                 variant: Literal["paper", "code"] = "paper"):
        super().__init__(num_classes)
        self.variant = variant
        self.lam = lam if lam is not None else (10.0 if variant == "code" else 0.1 * num_classes)

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        return {"ce": label_terms(lambda y: cross_entropy(out.logits, y), batch),
                "confusion": self.lam * label_terms(lambda y: pairwise_confusion(out.logits, y, self.variant), batch)}
