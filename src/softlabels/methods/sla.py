"""SLA+SD (Lee, Hwang, Shin, "Self-supervised Label Augmentation via Input Transformations",
ICML 2020): a joint classifier over (class, rotation) labels plus self-distillation of its
rotation-aggregated prediction into the model's own K-way head.

Each image x is rotated by r·90°, r = 0…3 (x̃_r = rot90(x, r) on H, W). One forward over the
4B stack [x̃_0; x̃_1; x̃_2; x̃_3] (rotation-major: sample b of rotation r is row r·B + b) gives
embeddings f; the method-owned joint head u (nn.Linear(D, 4K)) gives joint logits
z̃ = u(f), 4B×4K, whose column k·4 + r is the joint label (class k, rotation r).

    L_SLA  = mean over the 4B samples of CE(z̃(x̃_r), y·4 + r)         (= (1/M) Σ_r CE, M = 4)
    s_k    = (1/4) Σ_r z̃_{k·4+r}(x̃_r)                                  (aggregated logits, B×K)
    L_SD   = T²·KL(softmax(s/T) ‖ softmax(z/T)),  s a constant          (z = model.head(f(x̃_0)))
    L      = L_SLA + λ·L_SD + β·CE(z, y)

P_aggregated = softmax(s) is the paper's aggregated inference (§2.2); SLA+SD (§2.3) distils it
into the single classifier v on the unrotated input and treats it as a constant in the gradient.
The paper has no temperature (T = 1 here by default). Inference uses the model's own head.
"""
from __future__ import annotations

from typing import Annotated, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..models.base import ModelOutput
from ..registry import METHODS, Range
from .base import Batch, Method, Requires, need_aux, need_setup
from .functional import cross_entropy, tempered_kl

SLA_REFERENCE = ("Lee, Hwang, Shin, Self-supervised Label Augmentation via Input Transformations, "
                 "ICML 2020 (SLA+SD)")
NUM_ROTATIONS = 4


def rotations(x: torch.Tensor) -> torch.Tensor:
    """[rot90(x, 0); rot90(x, 1); rot90(x, 2); rot90(x, 3)] on the (H, W) axes of B×C×H×W
    images: a 4B batch, rotation-major (row r·B + b is sample b rotated by r·90°)."""
    if x.dim() != 4:
        raise ConfigError(f"data.name: sla_sd needs B×C×H×W images, got shape {tuple(x.shape)}")
    if x.shape[-1] != x.shape[-2]:
        raise ConfigError(f"data.name: sla_sd rotates by 90° and needs square images, "
                          f"got {x.shape[-2]}×{x.shape[-1]}")
    return torch.cat([torch.rot90(x, r, dims=(2, 3)) for r in range(NUM_ROTATIONS)])


def joint_labels(labels: torch.Tensor) -> torch.Tensor:
    """Joint labels y·4 + r of the rotation-major 4B batch (class k, rotation r ↦ k·4 + r)."""
    return torch.cat([labels * NUM_ROTATIONS + r for r in range(NUM_ROTATIONS)])


def sla_joint_ce(joint_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_SLA: CE of the 4B×4K joint logits against ``joint_labels(labels)`` (mean over 4B)."""
    return cross_entropy(joint_logits, joint_labels(labels))


def aggregate_joint_logits(joint_logits: torch.Tensor) -> torch.Tensor:
    """s_k = (1/4) Σ_r z̃_{k·4+r}(x̃_r): for rotation r take rows r·B…(r+1)·B and the columns of
    rotation r (k·4 + r, k = 0…K−1), then average over r. Returns B×K; keeps gradient."""
    n4, k4 = joint_logits.shape
    if n4 % NUM_ROTATIONS or k4 % NUM_ROTATIONS:
        raise ValueError(f"joint logits must be 4B×4K, got {n4}×{k4}")
    b = n4 // NUM_ROTATIONS
    parts = [joint_logits[r * b:(r + 1) * b, r::NUM_ROTATIONS] for r in range(NUM_ROTATIONS)]
    return torch.stack(parts).mean(dim=0)


def sla_sd_kl(logits: torch.Tensor, joint_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T²·KL(softmax(s/T) ‖ softmax(z/T)), s = aggregate_joint_logits(joint_logits) detached
    (the paper treats P_aggregated as a constant); batch mean, summed over classes."""
    return tempered_kl(logits, aggregate_joint_logits(joint_logits.detach()), temperature)  # §2.3: L_SD


def sla_sd_loss(logits: torch.Tensor, joint_logits: torch.Tensor, labels: torch.Tensor,
                temperature: float = 1.0, lam: float = 1.0, beta: float = 1.0) -> torch.Tensor:
    """L_SLA + λ·T²·KL(P_agg ‖ p) + β·CE(z, y); ``logits`` are the K-way head's on x̃_0."""
    loss = sla_joint_ce(joint_logits, labels) + lam * sla_sd_kl(logits, joint_logits, temperature)
    if beta:
        loss = loss + beta * cross_entropy(logits, labels)
    return loss


def _first_block(t: Optional[torch.Tensor], b: int) -> Optional[torch.Tensor]:
    return None if t is None else t[:b]


@METHODS.register("sla_sd", "self-supervised label augmentation with self-distillation: a joint "
                            "(class, rotation) head plus distillation of its aggregated prediction",
                  reference=SLA_REFERENCE)
class SLASelfDistillation(Method):
    """Options:
    temperature: T of the distillation KL (default 1: the paper's KL has no temperature).
    lam:         λ, weight of the self-distillation KL (default 1: unweighted in the paper).
    beta:        β, weight of CE(z, y) of the model's own head on the unrotated input
                 (default 1; the paper adds β·CE with β a hyper-parameter; 0 drops it).

    ``setup`` creates the joint head ``joint_head = nn.Linear(model.embedding_dim, 4K)``.
    ``forward_batch`` runs one forward over the 4 rotations (4B samples; BatchNorm sees them
    all); ``out`` is the unrotated block (model head logits, embedding, stage maps) with
    gradient, ``out.aux["joint"]`` the 4B×4K joint logits and the 4B embeddings. ``batch.x`` is
    unchanged. Logged terms: ``joint`` (L_SLA), ``sd`` (λ·KL), ``ce`` (β·CE, left out when
    β = 0). Evaluation is the model's own head, one forward.
    """

    requires = Requires()

    def __init__(self, num_classes: int, temperature: Annotated[float, Range(0.0, low_open=True)] = 1.0,
                 lam: Annotated[float, Range(0.0)] = 1.0, beta: Annotated[float, Range(0.0)] = 1.0):
        super().__init__(num_classes)
        self.temperature, self.lam, self.beta = temperature, lam, beta
        self.joint_head: Optional[nn.Linear] = None

    def setup(self, model, teachers=()) -> None:
        dim = int(getattr(model, "embedding_dim", 0) or 0)
        if dim <= 0:
            raise ConfigError("model.name: sla_sd builds its joint head on the model's embedding, "
                              "but this model declares no embedding_dim")
        self.joint_head = nn.Linear(dim, NUM_ROTATIONS * self.num_classes)

    def forward_batch(self, net, batch, features: bool):
        head = need_setup(self.joint_head, "sla_sd", "the joint head")
        b = batch.x.shape[0]
        full = net(rotations(batch.x), return_features=features)
        joint = head(full.embedding)
        feats: Optional[List[torch.Tensor]] = (
            None if full.features is None else [_first_block(f, b) for f in full.features])
        out = ModelOutput(full.logits[:b], full.embedding[:b], feats)
        out.aux["joint"] = ModelOutput(joint, full.embedding)
        return out

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        joint = need_aux(out, "joint", "sla_sd").logits
        terms = {"joint": sla_joint_ce(joint, batch.y),                               # §2.1: L_SLA
                 "sd": self.lam * sla_sd_kl(out.logits, joint, self.temperature)}     # §2.3: λ·L_SD
        if self.beta:
            terms["ce"] = self.beta * cross_entropy(out.logits, batch.y)
        return terms
