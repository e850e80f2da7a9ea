"""Augmentation baselines the seed papers compare against: mixup, Mixup + CS-KD, CutMix, Cutout, DDGSD.

All five change what the network sees, so each defines its own ``forward_batch`` (and therefore
cannot be summed with another method that does; ``ols+cutout`` and ``kd+mixup`` are fine).

mixup (Zhang, Cisse, Dauphin, Lopez-Paz, "mixup: Beyond Empirical Risk Minimization", ICLR 2018)
    λ ~ Beta(a, a), one per batch, and a random permutation π of the batch:
        x̃ = λ·x + (1−λ)·x[π],   L = λ·CE(z(x̃), y) + (1−λ)·CE(z(x̃), y[π]).

mixup_cskd (Yun et al., CVPR 2020, Table 3: "applying the class-wise regularization loss to mixed
inputs and mixed labels")
    the anchors are mixed as in mixup and the partners with the SAME λ and π, so mixed partner j,
    λ·x′_j + (1−λ)·x′_π(j), carries the same mixed label λ·y_j + (1−λ)·y_π(j) as mixed anchor j:
        L = λ·CE(z(x̃), y) + (1−λ)·CE(z(x̃), y[π]) + λ_cls·T²·KL(softmax(z(x̃′)/T) ‖ softmax(z(x̃)/T)).

cutmix (Yun, Han, Oh, Chun, Choe, Yoo, "CutMix: Regularization Strategy to Train Strong
Classifiers with Localizable Features", ICCV 2019, Eq. 1–2)
    λ ~ Beta(a, a) and π as in mixup; a box B of area ratio 1−λ (sides ⌊H·√(1−λ)⌋, ⌊W·√(1−λ)⌋,
    centre uniform over the image, clipped to it) of every image is replaced by the same box of
    image π(i):  x̃ = M ⊙ x + (1 − M) ⊙ x[π];  the labels are mixed by the box's actual area,
    λ ← 1 − |B|/(H·W):  L = λ·CE(z(x̃), y) + (1−λ)·CE(z(x̃), y[π]).

Mixed labels. mixup, mixup_cskd and cutmix record λ and π in the batch (``functional.record_mix``,
the one form documented in ``Batch``); every label-consuming term of every method goes through
``functional.label_terms``, so in ``kd+mixup``, ``ls+mixup`` or ``ols+cutmix`` the other
component trains on the mixed labels too.

cutout (DeVries & Taylor, "Improved Regularization of Convolutional Neural Networks with Cutout",
arXiv:1708.04552, 2017)
    one square of side ``size`` per image, centred at a uniformly drawn pixel (so it may be
    clipped by the border), set to zero in the normalised image (= the dataset mean), then CE.

ddgsd (Xu & Liu, "Data-Distortion Guided Self-Distillation for Deep Neural Networks", AAAI 2019)
    two independently augmented views x¹, x² of each image through the one network:
        L = CE(z¹, y) + CE(z², y) + λ·T²·[KL(q² ‖ p¹) + KL(q¹ ‖ p²)] + μ·MMD²_lin(f¹, f²)
    p = softmax(z/T); in each KL direction the target q (the other view's prediction) is a
    constant; f are the penultimate embeddings and MMD²_lin = ‖mean_i f¹_i − mean_i f²_i‖².

Randomness (λ, π, cutout centres) is drawn from torch's global CPU generator, which the trainer
seeds and checkpoints, then moved to the batch's device; nothing reads a device value back.
The methods record what they drew in ``batch.extra`` and replace ``batch.x`` by the augmented
images (the original stays in ``batch.extra``), so frozen teachers of a sum (``kd+mixup``) and the
other components see the same inputs as the student.
"""
from __future__ import annotations

import math
from typing import Annotated, Dict, Literal, Optional, Sequence, Tuple

import torch

from ..models.base import ModelOutput
from ..registry import METHODS, Range
from .base import Batch, Method, Requires, need_aux, need_extra
from .cskd import cskd_kl, joint_forward
from .functional import cross_entropy, label_terms, mix_terms, record_mix, tempered_kl, upcast

MIXUP_REFERENCE = "Zhang, Cisse, Dauphin, Lopez-Paz, mixup: Beyond Empirical Risk Minimization, ICLR 2018"
CUTMIX_REFERENCE = ("Yun, Han, Oh, Chun, Choe, Yoo, CutMix: Regularization Strategy to Train Strong "
                    "Classifiers with Localizable Features, ICCV 2019")
MIXUP_CSKD_REFERENCE = ("Yun et al., Regularizing Class-wise Predictions via Self-knowledge "
                        "Distillation, CVPR 2020, Table 3 (Mixup + CS-KD)")
CUTOUT_REFERENCE = ("DeVries & Taylor, Improved Regularization of Convolutional Neural Networks "
                    "with Cutout, arXiv:1708.04552, 2017")
DDGSD_REFERENCE = ("Xu & Liu, Data-Distortion Guided Self-Distillation for Deep Neural Networks, "
                   "AAAI 2019")


# ------------------------------------------------------------------------------ mixup
def sample_mixup(alpha: float, n: int) -> Tuple[float, torch.Tensor]:
    """One λ ~ Beta(α, α) and one permutation of ``n`` samples, from torch's global CPU RNG.

    α = 0 means no mixing (λ = 1, identity permutation), as in the authors' code.
    """
    if alpha <= 0:
        return 1.0, torch.arange(n)
    a = torch.tensor(float(alpha), dtype=torch.float64)
    lam = float(torch.distributions.Beta(a, a).sample())
    return lam, torch.randperm(n)


def mix(x: torch.Tensor, lam: float, index: torch.Tensor) -> torch.Tensor:
    """λ·x + (1−λ)·x[index] along the batch dimension."""
    return lam * x + (1.0 - lam) * x[index]


def mixup_loss(logits: torch.Tensor, labels: torch.Tensor, lam, index: torch.Tensor) -> torch.Tensor:
    """λ·CE(z, y) + (1−λ)·CE(z, y[index]), i.e. CE against the mixed one-hot labels (also
    CutMix's loss, Yun et al. Eq. 1, with λ the box-area weight).

    ``lam`` may be a float or a 0-d tensor (on the logits' device).
    """
    return mix_terms(lambda y: cross_entropy(logits, y), labels, lam, index)


def _apply_this_batch(prob: float) -> bool:
    """True with probability ``prob`` (one draw from torch's global CPU RNG; none when prob ≥ 1)."""
    return prob >= 1.0 or (prob > 0.0 and float(torch.rand(())) < prob)


@METHODS.register("mixup", "mixup: train on convex combinations of image pairs and of their labels",
                  reference=MIXUP_REFERENCE)
class Mixup(Method):
    """Options:
    alpha: a of λ ~ Beta(a, a), one λ per batch (Zhang et al. use a = 1 for CIFAR-10/100;
           0 disables mixing).
    prob:  probability that a batch is mixed (default 1); an unmixed batch records λ = 1.
    ce:    contribute the mixed cross-entropy (default true); false makes the method pure
           augmentation for sums whose other component has its own label term (``ols+mixup``).

    ``forward_batch`` draws λ and π, records them with ``functional.record_mix`` (the form
    documented in ``Batch``: ``batch.extra["mix_lambda"]``, ``["mix_index"]``), keeps the original
    images in ``["unmixed_x"]`` and replaces ``batch.x`` by the mixed images. Logged term: ``ce``
    (the mixed cross-entropy). The trainer's training accuracy compares predictions with
    ``batch.y`` (the first label of each pair).
    """

    requires = Requires()
    method_name = "mixup"  # for error messages

    def __init__(self, num_classes: int, alpha: Annotated[float, Range(0.0)] = 1.0,
                 prob: Annotated[float, Range(0.0, 1.0)] = 1.0, ce: bool = True):
        super().__init__(num_classes)
        self.alpha, self.prob, self.ce = alpha, prob, ce

    def sample(self, n: int) -> Tuple[float, torch.Tensor]:
        """λ and π for a batch of ``n`` (tests replace this to inject fixed values)."""
        if not _apply_this_batch(self.prob):
            return 1.0, torch.arange(n)
        return sample_mixup(self.alpha, n)

    def forward_batch(self, net, batch, features: bool):
        lam, index = record_mix(batch, *self.sample(len(batch)))
        batch.extra["unmixed_x"] = batch.x
        batch.x = mix(batch.x, lam, index)
        return net(batch.x, return_features=features)

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        need_extra(batch, "mix_lambda", self.method_name)
        if not self.ce:
            return {}
        # Zhang et al. 2018 / Yun et al. 2019 Eq. 1: λ·CE(z, y) + (1−λ)·CE(z, y[π])
        return {"ce": label_terms(lambda y: cross_entropy(out.logits, y), batch)}


# ------------------------------------------------------------------------------ cutmix
def cutmix_box(lam: float, height: int, width: int, cy: int, cx: int) -> Tuple[int, int, int, int]:
    """(top, bottom, left, right) of the box of area ratio ≈ 1−λ centred at (cy, cx): sides
    ⌊H·√(1−λ)⌋ × ⌊W·√(1−λ)⌋, clipped to the image (Yun et al.'s sampling)."""
    rat = math.sqrt(max(0.0, 1.0 - lam))
    ch, cw = int(height * rat), int(width * rat)
    top, bottom = min(max(cy - ch // 2, 0), height), min(max(cy - ch // 2 + ch, 0), height)
    left, right = min(max(cx - cw // 2, 0), width), min(max(cx - cw // 2 + cw, 0), width)
    return top, bottom, left, right


def cutmix_lambda(box: Tuple[int, int, int, int], height: int, width: int) -> float:
    """The label weight of the first image: 1 − (box area)/(H·W) (Yun et al. §3.1, λ adjusted
    to the clipped box)."""
    top, bottom, left, right = box
    return 1.0 - (bottom - top) * (right - left) / float(height * width)


def sample_cutmix(alpha: float, n: int, height: int, width: int
                  ) -> Tuple[float, torch.Tensor, Tuple[int, int, int, int]]:
    """λ ~ Beta(α, α), π and a box centre uniform over the pixels, from torch's global CPU RNG;
    returns (λ of the actual box area, π, box). α = 0: no mixing (λ = 1, empty box)."""
    lam, index = sample_mixup(alpha, n)
    if alpha <= 0:
        return 1.0, index, (0, 0, 0, 0)
    cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
    box = cutmix_box(lam, height, width, cy, cx)
    return cutmix_lambda(box, height, width), index, box


def apply_cutmix(x: torch.Tensor, index: torch.Tensor, box: Tuple[int, int, int, int]) -> torch.Tensor:
    """x with the box of every image replaced by that box of image ``index[i]`` (Yun et al. Eq. 1:
    M ⊙ x + (1 − M) ⊙ x[π], M zero inside the box)."""
    top, bottom, left, right = box
    out = x.clone()
    out[:, :, top:bottom, left:right] = x[index][:, :, top:bottom, left:right]
    return out


@METHODS.register("cutmix", "CutMix: paste a random box of another image, labels mixed by the box area",
                  reference=CUTMIX_REFERENCE)
class CutMix(Mixup):
    """Options:
    alpha: a of λ ~ Beta(a, a) (Yun et al.: 1 for CIFAR and ImageNet; 0 disables mixing).
    prob:  probability that a batch is mixed (Yun et al.'s ``cutmix_prob``: 0.5 for CIFAR,
           1 for ImageNet; default 1).
    ce:    as for ``mixup``.

    One box and one π per batch (the authors' code); λ is recomputed from the clipped box's area
    and recorded with ``functional.record_mix`` like mixup's, the box in
    ``batch.extra["cutmix_box"]`` (top, bottom, left, right), the original images in
    ``["unmixed_x"]``. Logged term: ``ce``.
    """

    method_name = "cutmix"

    def sample(self, n: int, height: int, width: int) -> Tuple[float, torch.Tensor, Tuple[int, int, int, int]]:
        """λ (of the box area), π and the box (tests replace this to inject fixed values)."""
        if not _apply_this_batch(self.prob):
            return 1.0, torch.arange(n), (0, 0, 0, 0)
        return sample_cutmix(self.alpha, n, height, width)

    def forward_batch(self, net, batch, features: bool):
        b, _, h, w = batch.x.shape
        lam, index, box = self.sample(b, h, w)
        lam, index = record_mix(batch, lam, index)
        batch.extra["cutmix_box"] = torch.tensor(box)
        batch.extra["unmixed_x"] = batch.x
        batch.x = apply_cutmix(batch.x, index, box)
        return net(batch.x, return_features=features)


# ------------------------------------------------------------------------------ mixup + CS-KD
def mixup_cskd_loss(anchor_logits: torch.Tensor, labels: torch.Tensor, partner_logits: torch.Tensor,
                    lam_mix, index: torch.Tensor, temperature: float = 4.0,
                    lam: float = 1.0) -> torch.Tensor:
    """Mixed CE plus λ_cls·T²·KL(softmax(partner/T) ‖ softmax(anchor/T)); the logits are those
    of the mixed anchors and the mixed partners (mixed with the same λ and permutation)."""
    return mixup_loss(anchor_logits, labels, lam_mix, index) + lam * cskd_kl(
        anchor_logits, partner_logits, temperature)


@METHODS.register("mixup_cskd", "Mixup + CS-KD: the class-wise term on mixed anchors and partners "
                                "that share the mixing weight and permutation",
                  reference=MIXUP_CSKD_REFERENCE)
class MixupCSKD(Mixup):
    """Options:
    temperature: T (CS-KD official default 4).
    lam:         λ_cls, weight of the class-wise term (CS-KD official default 1 for CIFAR).
    alpha:       a of λ ~ Beta(a, a) (mixup's CIFAR value 1; the CS-KD paper does not state one).

    One forward over [mixed anchors; mixed partners] (as ``cskd``'s paper variant); the partner
    half is a constant. ``batch.x`` and ``batch.extra["partner_x"]`` are replaced by their mixed
    versions (originals in ``["unmixed_x"]``, ``["unmixed_partner_x"]``). Logged terms: ``ce``
    (mixed CE) and ``cls``.
    """

    requires = Requires(pairs=True)
    method_name = "mixup_cskd"

    def __init__(self, num_classes: int, temperature: Annotated[float, Range(0.0, low_open=True)] = 4.0,
                 lam: Annotated[float, Range(0.0)] = 1.0, alpha: Annotated[float, Range(0.0)] = 1.0,
                 prob: Annotated[float, Range(0.0, 1.0)] = 1.0):
        super().__init__(num_classes, alpha, prob)
        self.temperature, self.lam = temperature, lam

    def forward_batch(self, net, batch, features: bool):
        partner = need_extra(batch, "partner_x", "mixup_cskd")
        lam, index = record_mix(batch, *self.sample(len(batch)))
        batch.extra["unmixed_x"] = batch.x
        batch.extra["unmixed_partner_x"] = partner
        batch.x = mix(batch.x, lam, index)
        batch.extra["partner_x"] = mix(partner, lam, index)
        return joint_forward(net, batch, features)

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        terms = super().loss(out, batch, teachers)
        partner = need_aux(out, "partner", "mixup_cskd").logits
        terms["cls"] = self.lam * cskd_kl(out.logits, partner, self.temperature)
        return terms


# ------------------------------------------------------------------------------ cutout
def sample_cutout_centres(n: int, height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-image square centres, uniform over all pixels (so squares may leave the image), from
    torch's global CPU RNG."""
    return torch.randint(height, (n,)), torch.randint(width, (n,))


def cutout_mask(cy: torch.Tensor, cx: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """B×H×W boolean mask, True inside each image's square.

    The square of image b covers rows [cy_b − size//2, cy_b − size//2 + size) and the same for
    columns, clipped to the image (exactly ``size`` wide before clipping, also for odd sizes).
    """
    from ..data.augment import box_mask

    return box_mask(cy - size // 2, cx - size // 2, size, size, height, width)


def apply_cutout(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero ``x`` (B×C×H×W) wherever ``mask`` (B×H×W) is True, in every channel."""
    return x.masked_fill(mask[:, None], 0)


@METHODS.register("cutout", "Cutout: a random square of each (normalised) image set to zero",
                  reference=CUTOUT_REFERENCE)
class Cutout(Method):
    """Options:
    size: side of the square in pixels (DeVries & Taylor: 16 for CIFAR-10, 8 for CIFAR-100,
          20 for SVHN, 32 for STL-10; default 16).
    ce:   contribute the cross-entropy term (default true). With false the method is pure
          augmentation and adds no loss term, for sums with a method that has its own CE,
          e.g. ``ols+cutout`` with ``method.options.cutout.ce: false``. A lone ``cutout`` needs
          ``ce: true``.

    ``forward_batch`` records the centres in ``batch.extra["cutout_cy"]``/``["cutout_cx"]``, keeps
    the original images in ``["uncut_x"]`` and replaces ``batch.x``. Logged term: ``ce``.
    """

    requires = Requires()

    def __init__(self, num_classes: int, size: Annotated[int, Range(1)] = 16, ce: bool = True):
        super().__init__(num_classes)
        self.size, self.ce = size, ce

    def sample(self, n: int, height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Centres for a batch (tests replace this to inject fixed values)."""
        return sample_cutout_centres(n, height, width)

    def forward_batch(self, net, batch, features: bool):
        x = batch.x
        b, _, h, w = x.shape
        cy, cx = (c.to(x.device, non_blocking=True) for c in self.sample(b, h, w))
        batch.extra["cutout_cy"], batch.extra["cutout_cx"] = cy, cx
        batch.extra["uncut_x"] = x
        batch.x = apply_cutout(x, cutout_mask(cy, cx, self.size, h, w))
        return net(batch.x, return_features=features)

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        if not self.ce:
            return {}
        return {"ce": label_terms(lambda y: cross_entropy(out.logits, y), batch)}


# ------------------------------------------------------------------------------ DDGSD
def ddgsd_kl(logits_a: torch.Tensor, logits_b: torch.Tensor, temperature: float = 3.0,
             detach: bool = True, variant: str = "paper") -> torch.Tensor:
    """Symmetric KL between the two views' softened predictions, q = p = softmax(z/T).

    paper: T²·[KL(q_b ‖ p_a) + KL(q_a ‖ p_b)], summed over classes, mean over the batch.
    code:  the same without T² and averaged over the K classes too (PyTorch's element-wise
           'mean' KLDivLoss of the only public, unofficial code): the paper form / (K·T²).
    With ``detach`` each direction's target is a constant (each view distils into the other, as
    a teacher's prediction in KD); without, it is the plain symmetric KL."""
    kw = dict(detach_target=detach, t_squared=variant == "paper")
    kl = tempered_kl(logits_a, logits_b, temperature, **kw) + tempered_kl(logits_b, logits_a, temperature, **kw)
    if variant == "code":
        return kl / logits_a.shape[1]
    if variant != "paper":
        raise ValueError(f"variant must be 'paper' or 'code', got {variant!r}")
    return kl


def linear_mmd(f_a: torch.Tensor, f_b: torch.Tensor) -> torch.Tensor:
    """Squared MMD with a linear kernel between two batches of features (B×D):
    ‖mean_i f_a,i − mean_i f_b,i‖². Both sides receive gradient."""
    a, b = upcast(f_a.flatten(1), f_b.flatten(1))
    diff = a.mean(dim=0) - b.mean(dim=0)
    return (diff * diff).sum()


def logit_mse(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """mean_{i,k} (z_a,ik − z_b,ik)²: the "MMD" term of the unofficial DDGSD code (variant
    ``code``), an element-wise MSE of the two views' logits; both sides receive gradient."""
    a, b = upcast(logits_a, logits_b)
    return (a - b).pow(2).mean()


def ddgsd_loss(logits_a: torch.Tensor, logits_b: torch.Tensor, labels: torch.Tensor,
               emb_a: Optional[torch.Tensor] = None, emb_b: Optional[torch.Tensor] = None,
               temperature: float = 3.0, lam: float = 1.0, mmd: float = 5e-4,
               detach: bool = True, variant: str = "paper") -> torch.Tensor:
    """CE on both views + λ·ddgsd_kl + μ·(linear_mmd of the embeddings (paper) or logit_mse
    (code)); the μ term is skipped when μ = 0."""
    loss = cross_entropy(logits_a, labels) + cross_entropy(logits_b, labels)
    loss = loss + lam * ddgsd_kl(logits_a, logits_b, temperature, detach, variant)
    if mmd:
        feat = linear_mmd(emb_a, emb_b) if variant == "paper" else logit_mse(logits_a, logits_b)
        loss = loss + mmd * feat
    return loss


def _split_keep_grad(out: ModelOutput, n: int) -> Tuple[ModelOutput, ModelOutput]:
    """Cut a joint output of 2n samples into two ModelOutputs, both with gradient."""
    feats = None if out.features is None else [f.split(n) for f in out.features]
    parts = []
    for i in range(2):
        parts.append(ModelOutput(out.logits[i * n:(i + 1) * n], out.embedding[i * n:(i + 1) * n],
                                 None if feats is None else [f[i] for f in feats]))
    return parts[0], parts[1]


@METHODS.register("ddgsd", "data-distortion guided self-distillation: CE on two augmented views plus "
                           "their mutual distillation and feature MMD",
                  reference=DDGSD_REFERENCE)
class DDGSD(Method):
    """Options:
    temperature: T of the softened predictions in the mutual KL (default 3).
    lam:         λ, weight of the symmetric KL term (default 1).
    mmd:         μ, weight of the linear-kernel MMD between the two views' penultimate embeddings
                 (default 0.0005; 0 removes the feature-level term, as the OLS paper does for its
                 comparison).
    detach:      each view's prediction is a constant target for the other (default true).
    variant:     paper (default: T²·KL summed over classes, linear MMD of the embeddings) |
                 code (the only public code, unofficial: KL averaged over classes without T²,
                 the μ term an MSE of the two views' logits; its KL is K·T² times weaker).

    One forward over [view 0; view 1] (BatchNorm sees both views). ``out`` is view 0's output
    (``batch.x``), view 1's is ``out.aux["view1"]``, both with gradient. Logged terms: ``ce``
    (view 0), ``ce_view1``, ``kl``, ``mmd`` (left out when μ = 0).
    """

    requires = Requires(views=2)

    def __init__(self, num_classes: int, temperature: Annotated[float, Range(0.0, low_open=True)] = 3.0,
                 lam: Annotated[float, Range(0.0)] = 1.0, mmd: Annotated[float, Range(0.0)] = 5e-4,
                 detach: bool = True, variant: Literal["paper", "code"] = "paper"):
        super().__init__(num_classes)
        self.temperature, self.lam, self.mmd = temperature, lam, mmd
        self.detach, self.variant = detach, variant

    def forward_batch(self, net, batch, features: bool):
        second = need_extra(batch, "view1", "ddgsd")
        out = net(torch.cat([batch.x, second]), return_features=features)
        first, other = _split_keep_grad(out, batch.x.shape[0])
        first.aux["view1"] = other
        return first

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        other = need_aux(out, "view1", "ddgsd")
        terms = {"ce": cross_entropy(out.logits, batch.y),
                 "ce_view1": cross_entropy(other.logits, batch.y),
                 "kl": self.lam * ddgsd_kl(out.logits, other.logits, self.temperature, self.detach, self.variant)}
        if self.mmd:
            feat = (linear_mmd(out.embedding, other.embedding) if self.variant == "paper"
                    else logit_mse(out.logits, other.logits))
            terms["mmd"] = self.mmd * feat
        return terms
