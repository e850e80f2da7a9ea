"""Baselines that change the classifier head: AdaCos and Virtual Softmax.

AdaCos (Zhang, Zhao, Yi, Zhu, Lu, "AdaCos: Adaptively Scaling Cosine Logits for Effectively
Learning Deep Face Representations", CVPR 2019): the linear head is replaced by a cosine head,
logits ``s·cos θ_k`` with ``cos θ_k = ⟨x/‖x‖, W_k/‖W_k‖⟩`` and no bias. The scale starts at
``√2·log(K−1)`` (§4.1, Eq. 14) and, in the dynamic variant, is recomputed at every training step
from the batch (§4.2, Eq. 15–16)::

    B_avg = mean_i Σ_{k≠y_i} exp(s_old·cos θ_ik)
    θ_med = median_i θ_{i,y_i}
    s_new = log(B_avg) / cos(min(π/4, θ_med))

Virtual Softmax (Chen, Deng, Su, "Virtual Class Enhanced Discriminative Embedding Learning",
NeurIPS 2018): in training each sample's softmax gets one extra, virtual class whose weight is
``W_virt = ‖W_y‖·x/‖x‖``, i.e. the logit ``W_virt·x = ‖W_y‖·‖x‖``; the loss is the CE over the
K+1 classes with the true label. At evaluation the K ordinary logits are used.
"""
from __future__ import annotations

import math
from typing import Annotated, Dict, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.base import ModelOutput
from ..registry import METHODS, Range
from .base import Batch, Method, need_setup
from .functional import cross_entropy, dominant_labels, label_terms, upcast


# ----------------------------------------------------------------------------------- AdaCos
def adacos_initial_scale(num_classes: int) -> float:
    """AdaCos's fixed scale √2·log(K−1) (Zhang et al. 2019, §4.1, Eq. 14); also the starting
    value s^(0) of the dynamic scale (§4.2)."""
    return math.sqrt(2.0) * math.log(num_classes - 1)


def cosine_logits(x: torch.Tensor, weight: torch.Tensor, scale) -> torch.Tensor:
    """``scale · cos θ``: B×K cosines between the rows of ``x`` (B×D) and ``weight`` (K×D),
    each normalised to unit length; no bias."""
    return F.linear(F.normalize(x, dim=1), F.normalize(weight, dim=1)) * scale


def _global_batch(b_sum: torch.Tensor, count: torch.Tensor, angles: torch.Tensor):
    """Under torch.distributed: the statistics of the whole (all ranks') batch, so that every
    rank computes the same scale. Angles are padded with NaN to the longest shard."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return b_sum, count, angles
    sums = torch.stack([b_sum, count])
    dist.all_reduce(sums)
    n = torch.tensor([angles.numel()], device=angles.device)
    dist.all_reduce(n, op=dist.ReduceOp.MAX)
    padded = torch.full((int(n),), float("nan"), dtype=angles.dtype, device=angles.device)
    padded[:angles.numel()] = angles
    parts = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, padded)
    return sums[0], sums[1], torch.cat(parts)


@torch.no_grad()
def adacos_dynamic_scale(cosines: torch.Tensor, labels: torch.Tensor, scale) -> torch.Tensor:
    """One dynamic AdaCos update (Zhang et al. 2019, §4.2, Eq. 15–16) from a batch of cosines
    (B×K) and labels, given the previous scale: ``log(B_avg) / cos(min(π/4, θ_med))``.

    The median of an even number of angles is the mean of the two middle ones. A result that is
    not finite and positive (possible only for pathological batches, e.g. K = 2 with negative
    cosines) keeps the previous scale. No gradient; under torch.distributed the statistics are
    those of the global batch.
    """
    cos = upcast(cosines.detach()).clamp(-1.0, 1.0)
    old = torch.as_tensor(scale, dtype=cos.dtype, device=cos.device)
    true = F.one_hot(labels, cos.shape[1]).bool()
    b_sum = torch.exp(old * cos).masked_fill(true, 0.0).sum()           # Σ_i Σ_{k≠y_i}
    angles = torch.acos(cos[true])                                      # θ_{i,y_i}
    count = torch.tensor(float(cos.shape[0]), dtype=cos.dtype, device=cos.device)
    b_sum, count, angles = _global_batch(b_sum, count, angles)
    b_avg = b_sum / count
    theta_med = torch.nanquantile(angles, 0.5)
    new = torch.log(b_avg) / torch.cos(torch.clamp(theta_med, max=math.pi / 4))
    return torch.where(torch.isfinite(new) & (new > 0), new, old)


class CosineHead(nn.Module):
    """AdaCos's classifier: ``s · cos θ`` with a K×D weight (rows normalised in the forward, no
    bias) and the scale ``s`` in a buffer, so it is checkpointed and used at evaluation."""

    def __init__(self, in_features: int, out_features: int, scale: float,
                 weight: Optional[torch.Tensor] = None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        if weight is None:
            weight = torch.empty(out_features, in_features)
            nn.init.xavier_uniform_(weight)
        if tuple(weight.shape) != (out_features, in_features):
            raise ValueError(f"CosineHead: weight of shape {tuple(weight.shape)}, "
                             f"expected {(out_features, in_features)}")
        self.weight = nn.Parameter(weight.detach().clone())
        self.register_buffer("s", torch.tensor(float(scale), device=self.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a clone, so that the in-place scale update in the loss leaves this step's graph valid
        return cosine_logits(x, self.weight, self.s.clone())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, s={float(self.s):.4g}"


def _keep(method: nn.Module, head: Optional[nn.Module], name: str = "_head") -> None:
    """Keep a reference to a module of the model (by default its head) without registering it as
    the method's submodule (it would otherwise appear in the method's parameters and state_dict
    a second time)."""
    object.__setattr__(method, name, head)


def linear_head(model, method: str) -> nn.Linear:
    """``model.head`` when it is a plain K×D linear layer (the start of a replacement head);
    otherwise a one-line ConfigError naming the ``method`` that needs it."""
    old = model.head
    if not isinstance(old, nn.Linear) or old.weight.dim() != 2:
        raise ConfigError(f"method.name: {method} replaces a linear model.head, but the model's "
                          f"head is {type(old).__name__}")
    return old


@METHODS.register("adacos", "cosine-logit head s*cos(theta) with the adaptive scale of AdaCos",
                  reference="Zhang et al., AdaCos: Adaptively Scaling Cosine Logits for Effectively "
                            "Learning Deep Face Representations, CVPR 2019")
class AdaCos(Method):
    """Options: ``dynamic`` (default True: the scale is updated every training step, §4.2) and
    ``scale`` (default √2·log(K−1), §4.1 Eq. 14: the fixed scale when ``dynamic`` is False, the
    starting scale otherwise). Logged term: ``ce`` (CE of the rescaled cosine logits)."""

    def __init__(self, num_classes: int, dynamic: bool = True,
                 scale: Optional[Annotated[float, Range(0.0, low_open=True)]] = None):
        super().__init__(num_classes)
        if scale is None:
            if num_classes < 3:
                raise ConfigError(f"method.options.scale: the default sqrt(2)*log(K-1) is 0 for "
                                  f"K = {num_classes} classes; give a scale > 0")
            scale = adacos_initial_scale(num_classes)
        self.dynamic, self.initial_scale = dynamic, float(scale)
        _keep(self, None)

    def adapt_model(self, model) -> None:
        weight = linear_head(model, "adacos").weight
        k, d = weight.shape
        # the old head's weight as the start (only its direction matters); its bias is dropped
        model.head = CosineHead(d, k, self.initial_scale, weight)
        _keep(self, model.head)

    def setup(self, model, teachers=()) -> None:
        if not isinstance(model.head, CosineHead):
            raise ConfigError(f"method.name: adacos needs its cosine head, but model.head is "
                              f"{type(model.head).__name__} (replaced by another method?)")
        _keep(self, model.head)

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        head = need_setup(self._head, "adacos", "the cosine head")
        logits = upcast(out.logits)
        if self.dynamic and head.training:
            old = head.s.detach().clone()
            cos = logits / old
            new = adacos_dynamic_scale(cos, dominant_labels(batch), old)
            head.s.copy_(new)
            logits = cos * new
        return {"ce": label_terms(lambda y: cross_entropy(logits, y), batch)}


# --------------------------------------------------------------------------- Virtual Softmax
def virtual_softmax_logits(logits: torch.Tensor, embedding: torch.Tensor, weight: torch.Tensor,
                           labels: torch.Tensor) -> torch.Tensor:
    """B×(K+1): the K logits followed by the virtual class's ``‖W_y‖·‖x‖`` (Chen et al. 2018:
    ``W_virt = ‖W_y‖·x/‖x‖``), ``x`` the embedding fed to the head and ``W_y`` the true class's
    weight row. Gradients flow through both norms."""
    x = upcast(embedding)
    w_y = upcast(weight)[labels]
    virtual = torch.linalg.vector_norm(w_y, dim=1) * torch.linalg.vector_norm(x, dim=1)
    z = upcast(logits)
    return torch.cat([z, virtual.to(z.dtype)[:, None]], dim=1)


def virtual_softmax_loss(logits: torch.Tensor, embedding: torch.Tensor, weight: torch.Tensor,
                         labels: torch.Tensor) -> torch.Tensor:
    """CE over the K real classes and the virtual one, with the true label (batch mean)."""
    return cross_entropy(virtual_softmax_logits(logits, embedding, weight, labels), labels)


@METHODS.register("virtual_softmax", "CE with an extra virtual class of logit ||W_y||*||x|| in training",
                  reference="Chen, Deng, Su, Virtual Class Enhanced Discriminative Embedding Learning, "
                            "NeurIPS 2018")
class VirtualSoftmax(Method):
    """Option ``bias`` (default False): the paper's logits ``W_j·x`` have no bias, and its
    argument that the virtual logit bounds the true one (‖W_y‖‖x‖ ≥ W_y·x) needs none, so the
    head's bias is removed; True keeps it (not in the paper). Logged term: ``ce`` (over K+1)."""

    def __init__(self, num_classes: int, bias: bool = False):
        super().__init__(num_classes)
        self.bias = bool(bias)
        _keep(self, None)

    def adapt_model(self, model) -> None:
        head = model.head
        if not self.bias and isinstance(head, nn.Linear) and head.bias is not None:
            head.register_parameter("bias", None)  # the same module, bias-free: logits W·x

    def setup(self, model, teachers=()) -> None:
        head = model.head
        if not isinstance(head, nn.Linear):
            raise ConfigError(f"method.name: virtual_softmax needs a linear model.head, but it is "
                              f"{type(head).__name__} (replaced by another method?)")
        _keep(self, head)

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        head = need_setup(self._head, "virtual_softmax", "the reference to the model's head")
        return {"ce": label_terms(lambda y: virtual_softmax_loss(out.logits, out.embedding, head.weight, y), batch)}
