"""Class-wise self-knowledge distillation (Yun et al., "Regularizing Class-wise Predictions via
Self-knowledge Distillation", CVPR 2020).

Every anchor x comes with a partner x′ of the same class (the class-pair sampler,
``data.loader.ClassPairBatches``). The network's own prediction on the partner, softened by a
temperature T and treated as a constant, is distilled into its prediction on the anchor:

    L = CE(z(x), y) + λ·T²·KL(softmax(z(x′)/T) ‖ softmax(z(x)/T))          (Eq. 1)

``cskd_e`` (§3.4) adds a sample-wise consistency term towards the prediction on the
un-augmented anchor, also a constant:

    L = L_CS-KD(x_aug, x′_aug) + λ_E·T²·KL(softmax(z(x)/T) ‖ softmax(z(x_aug)/T))

Variants (see docs/methods.md):
  paper     partners drawn from the *other* samples of the class; one forward pass over
            [anchors; partners] (BatchNorm normalises with the statistics of both halves and
            updates its running statistics once per step); the partner half is detached.
  official  the authors' code: partners drawn from the whole class (the anchor itself
            included); the anchor forward with gradient, then the partner forward under
            ``no_grad`` in train mode (BatchNorm uses the partner batch's own statistics and
            updates its running statistics a second time each step).
"""
from __future__ import annotations

from typing import Annotated, Dict, Literal, Sequence

import torch

from ..models.base import ModelOutput
from ..registry import METHODS, Range
from .base import Batch, Method, Requires, need_aux, need_extra
from .functional import cross_entropy, tempered_kl

REFERENCE = "Yun et al., Regularizing Class-wise Predictions via Self-knowledge Distillation, CVPR 2020"


def cskd_kl(anchor_logits: torch.Tensor, partner_logits: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """T²·KL(softmax(partner/T) ‖ softmax(anchor/T)), summed over classes, mean over anchors.

    The partner's prediction is a constant target (``detach`` inside): no gradient reaches it.
    Used for the class-wise term of Eq. 1 and, with the un-augmented prediction as the
    "partner", for CS-KD-E's consistency term.
    """
    return tempered_kl(anchor_logits, partner_logits, temperature)  # Eq. 1: T²·KL(partner ‖ anchor)


def cskd_loss(anchor_logits: torch.Tensor, labels: torch.Tensor, partner_logits: torch.Tensor,
              temperature: float = 4.0, lam: float = 1.0) -> torch.Tensor:
    """CE(anchor, y) + λ·T²·KL(softmax(partner/T) ‖ softmax(anchor/T))  (Eq. 1)."""
    return cross_entropy(anchor_logits, labels) + lam * cskd_kl(anchor_logits, partner_logits, temperature)


def cskd_e_loss(anchor_logits: torch.Tensor, labels: torch.Tensor, partner_logits: torch.Tensor,
                clean_logits: torch.Tensor, temperature: float = 4.0, lam: float = 1.0,
                lam_e: float = 1.0) -> torch.Tensor:
    """CS-KD-E (§3.4): Eq. 1 on the augmented anchors and partners, plus
    λ_E·T²·KL(softmax(z(x_clean)/T) ‖ softmax(z(x_aug)/T)), the clean prediction a constant."""
    return cskd_loss(anchor_logits, labels, partner_logits, temperature, lam) + lam_e * cskd_kl(
        anchor_logits, clean_logits, temperature)


# ------------------------------------------------------------------------------ forward passes
def _split(out: ModelOutput, sizes: Sequence[int]):
    """Cut a joint ModelOutput along the batch; the first part keeps its gradient, the others
    are detached (constants)."""
    logits = out.logits.split(list(sizes))
    emb = out.embedding.split(list(sizes))
    feats = None if out.features is None else [f.split(list(sizes)) for f in out.features]
    parts = []
    for i in range(len(sizes)):
        part = ModelOutput(logits[i], emb[i], None if feats is None else [f[i] for f in feats])
        parts.append(part if i == 0 else part.detach())
    return parts


def joint_forward(net, batch, features: bool, clean: bool = False) -> ModelOutput:
    """Paper variant: ONE forward of [anchors; partners (; clean anchors)], so BatchNorm
    normalises with statistics over all of them and updates its running statistics once.
    Returns the anchors' output (with gradient) with ``aux["partner"]`` (and ``aux["clean"]``)
    detached."""
    inputs = [batch.x, need_extra(batch, "partner_x", "cskd")]
    if clean:
        inputs.append(need_extra(batch, "clean_x", "cskd_e"))
    out = net(torch.cat(inputs), return_features=features)
    parts = _split(out, [x.shape[0] for x in inputs])
    anchor = parts[0]
    anchor.aux["partner"] = parts[1]
    if clean:
        anchor.aux["clean"] = parts[2]
    return anchor


def separate_forward(net, batch, features: bool, clean: bool = False) -> ModelOutput:
    """Official variant: the anchor forward with gradient, then the partner forward (and the
    clean forward) under ``no_grad`` in the module's current (train) mode, so each pass
    normalises with its own batch statistics and updates the running statistics again."""
    anchor = net(batch.x, return_features=features)
    with torch.no_grad():
        anchor.aux["partner"] = net(need_extra(batch, "partner_x", "cskd"), return_features=features).detach()
        if clean:
            anchor.aux["clean"] = net(need_extra(batch, "clean_x", "cskd_e"), return_features=features).detach()
    return anchor


@METHODS.register("cskd", "class-wise self-knowledge distillation: distil the prediction on a "
                          "same-class partner into the anchor's (cost per anchor vs CE: paper 2.0x, "
                          "official 1.4x)", reference=REFERENCE)
class ClassWiseSelfKD(Method):
    """Options:
    temperature: T of the softened predictions (paper grid {1, 4}; official default 4).
    lam:         λ_cls, weight of the class-wise term (paper grid {1, 2, 3, 4}; official
                 default 1 for CIFAR, 3 for CUB).
    variant:     paper | official (sampler, forward passes and BatchNorm behaviour; module
                 docstring and docs/methods.md).
    """

    requires = Requires(pairs=True)

    def __init__(self, num_classes: int, temperature: Annotated[float, Range(0.0, low_open=True)] = 4.0,
                 lam: Annotated[float, Range(0.0)] = 1.0, variant: Literal["paper", "official"] = "paper"):
        super().__init__(num_classes)
        self.temperature, self.lam, self.variant = temperature, lam, variant
        self.requires = Requires(pairs=True, pairs_include_self=variant == "official")

    def forward_batch(self, net, batch, features: bool):
        if self.variant == "official":
            return separate_forward(net, batch, features)
        return joint_forward(net, batch, features)

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        partner = need_aux(out, "partner", "cskd").logits
        return {"ce": cross_entropy(out.logits, batch.y),                          # Eq. 1: CE
                "cls": self.lam * cskd_kl(out.logits, partner, self.temperature)}  # Eq. 1: λ·T²·KL


@METHODS.register("cskd_e", "CS-KD-E: CS-KD plus consistency with the prediction on the "
                            "un-augmented input (cost per anchor vs CE: 3.4x)", reference=REFERENCE + ", §3.4")
class ClassWiseSelfKDE(ClassWiseSelfKD):
    """Options: as ``cskd``, plus
    lam_e: λ_E, weight of the consistency term towards the un-augmented prediction (the paper
           gives no value; default 1.0).

    The prediction on the un-augmented anchor is computed in the same pass as the anchors and
    partners (paper variant: one forward over [anchors; partners; clean anchors], the clean
    part detached) or in a third ``no_grad`` train-mode pass (official variant).
    """

    requires = Requires(pairs=True, clean=True)

    def __init__(self, num_classes: int, temperature: Annotated[float, Range(0.0, low_open=True)] = 4.0,
                 lam: Annotated[float, Range(0.0)] = 1.0, lam_e: Annotated[float, Range(0.0)] = 1.0,
                 variant: Literal["paper", "official"] = "paper"):
        super().__init__(num_classes, temperature, lam, variant)
        self.lam_e = lam_e
        self.requires = Requires(pairs=True, pairs_include_self=variant == "official", clean=True)

    def forward_batch(self, net, batch, features: bool):
        if self.variant == "official":
            return separate_forward(net, batch, features, clean=True)
        return joint_forward(net, batch, features, clean=True)

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        terms = super().loss(out, batch, teachers)
        clean = need_aux(out, "clean", "cskd_e").logits
        terms["consistency"] = self.lam_e * cskd_kl(out.logits, clean, self.temperature)  # §3.4: λ_E·T²·KL
        return terms
