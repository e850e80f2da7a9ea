"""Knowledge-transfer ensembles with the orthogonal loss (Zhang, Du, Chang, Ma, Guo,
"Knowledge Transfer Based Fine-Grained Visual Classification", ICME 2021, §3, Eq. 1–6).

N models are trained one after another; model n is trained with the n−1 earlier models as
frozen teachers. From the last-stage feature map F (C×H×W) of each network a spatial attention
map is built (Eq. 1: M = mean_c(GAP(F)_c · F_c)) and standardised per sample (Eq. 2). The
orthogonal (OR) loss multiplies the teacher's absolute standardised map (Eq. 3: its
discriminative regions *and* its background) with the positive part of the student's (Eq. 4)
and averages over batch and positions (Eq. 5), so the student is pushed to respond where the
teachers neither looked nor saw background. The total loss is Eq. 6:

    L = CE + (1/(n−1)) · Σ_teachers α · L_OR,   α = 0.5 (Table 2).

Variants (see docs/methods.md):
  paper     std with ε = 1e-8 added to the variance; OR weight α.
  official  std without ε; the OR weight is rescaled every step to α_code·CE/L_OR, both read
            from detached values (a constant with no gradient), α_code = 0.1.
Both use the unbiased (n−1) std by default, as the authors' code does (option ``unbiased``).
"""
from __future__ import annotations

from typing import Annotated, Dict, Literal, Optional, Sequence

import torch
import torch.nn.functional as F

from ..models.base import ModelOutput
from ..registry import METHODS, Range
from .base import Batch, Method, Requires, TeacherMode, need_features, need_teacher
from .functional import cross_entropy, label_terms, upcast

#: ε added to the variance in the paper form of Eq. 2 (the paper gives no value): small enough
#: to leave any non-degenerate map unchanged in float32, large enough that a constant map
#: standardises to 0 with a finite gradient.
PAPER_EPS = 1e-8

_VARIANTS = ("paper", "official")


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """Spatial attention map of Eq. 1: ``M = mean_c(GAP(F)_c · F_c)``, B×C×H×W → B×H×W.

    GAP(F)_c is the spatial mean of channel c; each channel is weighted by it, then the channels
    are averaged. Half-precision inputs are computed in float32. Gradients flow through both
    the weights and the maps.
    """
    if features.dim() != 4:
        raise ValueError(f"attention_map expects B×C×H×W features, got shape {tuple(features.shape)}")
    f = upcast(features)
    gap = f.mean(dim=(2, 3), keepdim=True)  # B×C×1×1
    return (gap * f).mean(dim=1)


def standardize_map(maps: torch.Tensor, unbiased: bool = False, eps: float = PAPER_EPS) -> torch.Tensor:
    """Eq. 2 per sample over positions: ``(M − mean(M)) / std(M)``, B×H×W → B×H×W.

    ``unbiased=False, eps>0`` (paper form): divide by ``sqrt(population variance + eps)``.
    ``unbiased=True, eps=0`` (official form): divide by the unbiased std with no epsilon. With
    ``eps=0`` a constant map (std 0, where the plain formula gives 0/0) standardises to 0 with
    zero gradient instead of NaN; a single position counts as constant.
    """
    if maps.dim() < 2:
        raise ValueError(f"standardize_map expects B×H×W maps, got shape {tuple(maps.shape)}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    flat = maps.reshape(maps.shape[0], -1)
    n = flat.shape[1]
    centered = flat - flat.mean(dim=1, keepdim=True)
    denom = max(n - 1, 1) if unbiased else n
    var = centered.pow(2).sum(dim=1, keepdim=True) / denom
    if eps > 0:
        out = centered / torch.sqrt(var + eps)
    else:
        # where(), not a division by a clamped std: the unused branch must not see sqrt'(0) = inf
        positive = var > 0
        std = torch.sqrt(torch.where(positive, var, torch.ones_like(var)))
        out = torch.where(positive, centered / std, torch.zeros_like(centered))
    return out.reshape(maps.shape)


def orthogonal_loss(student_features: torch.Tensor, teacher_features: torch.Tensor,
                    variant: Literal["paper", "official"] = "paper", unbiased: bool = True) -> torch.Tensor:
    """OR loss of Eq. 3–5 between one student and one teacher, a scalar.

    ``mean over batch and positions of |M̂_t| · max(M̂_s, 0)`` with M̂ the standardised attention
    maps (Eq. 1–2) of the B×C×H×W last-stage features. The teacher map is a constant (its
    features are detached). Channel counts may differ; batch and spatial sizes must match.
    ``variant="paper"``: std + ε; ``"official"``: std without ε. ``unbiased`` (default, the
    authors' code): the n−1 std; False: the population std.
    """
    if variant not in _VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(_VARIANTS)}, got {variant!r}")
    for what, t in (("student", student_features), ("teacher", teacher_features)):
        if t.dim() != 4:
            raise ValueError(f"orthogonal_loss: {what} features must be B×C×H×W, got shape {tuple(t.shape)}")
    s_shape, t_shape = student_features.shape, teacher_features.shape
    if s_shape[0] != t_shape[0]:
        raise ValueError(f"orthogonal_loss: student batch {s_shape[0]} != teacher batch {t_shape[0]}")
    if s_shape[2:] != t_shape[2:]:
        raise ValueError(
            f"orthogonal_loss: spatial sizes differ, student {s_shape[2]}×{s_shape[3]} vs teacher "
            f"{t_shape[2]}×{t_shape[3]}; the last-stage maps of both networks must have the same size"
        )
    eps = 0.0 if variant == "official" else PAPER_EPS
    m_s = standardize_map(attention_map(student_features), unbiased, eps)  # Eq. 1–2
    with torch.no_grad():
        m_t = standardize_map(attention_map(teacher_features.detach()), unbiased, eps).abs()  # Eq. 3
    return (m_t.to(m_s.dtype) * F.relu(m_s)).mean()  # Eq. 4–5


def dynamic_or_weight(ce: torch.Tensor, or_loss: torch.Tensor, alpha_code: float = 0.1) -> torch.Tensor:
    """The official code's per-step OR weight ``alpha_code · CE / L_OR`` from detached values.

    A constant (no gradient) that stays on the device (no host synchronisation). Where
    ``L_OR == 0`` the weight is 0, so the OR term contributes 0 rather than NaN or inf.
    """
    ce, or_loss = ce.detach(), or_loss.detach()
    nonzero = or_loss != 0
    safe = torch.where(nonzero, or_loss, torch.ones_like(or_loss))
    return torch.where(nonzero, alpha_code * ce / safe, torch.zeros_like(or_loss))


@METHODS.register("orthogonal",
                  "knowledge-transfer ensemble member: CE + orthogonal loss on attention maps of earlier members",
                  reference="Zhang et al., Knowledge Transfer Based Fine-Grained Visual Classification, ICME 2021")
class OrthogonalTransfer(Method):
    """Options:
    members_before: how many earlier ensemble members serve as teachers (n−1 for member n);
                    sets ``requires.teachers``. 0 = the first member, trained with CE only.
                    None (default) = every teacher the run is given (a pipeline ``sequence``
                    gives member n the n−1 earlier members), fixed in ``setup``.
    alpha:          weight α of each OR term (paper Table 2: 0.5). Ignored by ``official``.
    variant:        paper | official.
    alpha_code:     official variant: the OR term is rescaled each step to alpha_code·CE
                    (authors' code: 0.1).
    unbiased:       standardise the attention maps with the unbiased (n−1) std (default, the
                    authors' code and the usual reading of "standard deviation"); false: the
                    population std.
    teacher_mode:   eval (default; the authors' code runs the earlier members in eval mode) | train.

    The loss uses the last stage map of the student (``out.features[-1]``) and of each of the
    first ``members_before`` teachers. Logged terms: ``ce`` and, with teachers, ``or`` (the
    already weighted ``(1/(n−1))·Σ α·L_OR``).
    """

    def __init__(self, num_classes: int, members_before: Optional[Annotated[int, Range(0)]] = None,
                 alpha: Annotated[float, Range(0.0)] = 0.5, variant: Literal["paper", "official"] = "paper",
                 alpha_code: Annotated[float, Range(0.0)] = 0.1, unbiased: bool = True,
                 teacher_mode: TeacherMode = "eval"):
        super().__init__(num_classes)
        self.members_before = members_before
        self.alpha = alpha
        self.variant = variant
        self.alpha_code = alpha_code
        self.unbiased = unbiased
        # per instance: the number of teachers is the member's position in the ensemble; with
        # None, any number is accepted and stage features are requested in case there are some
        self.requires = Requires(teachers=members_before or 0,
                                 features=members_before is None or members_before > 0,
                                 uses_teachers=members_before is None, teacher_mode=teacher_mode)

    def setup(self, model, teachers: Sequence = ()) -> None:
        if self.members_before is None:
            self.members_before = len(teachers)

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        ce = label_terms(lambda y: cross_entropy(out.logits, y), batch)
        terms = {"ce": ce}
        n_t = self.members_before
        if n_t == 0:
            return terms
        earlier = need_teacher(teachers, "orthogonal", n_t)
        student = need_features(out, "orthogonal")[-1]
        or_mean = sum(orthogonal_loss(student, need_features(t, "orthogonal")[-1], self.variant, self.unbiased)
                      for t in earlier) / n_t                                  # Eq. 6: (1/(n−1))·Σ L_OR
        if self.variant == "official":
            terms["or"] = dynamic_or_weight(ce, or_mean, self.alpha_code) * or_mean
        else:
            terms["or"] = self.alpha * or_mean
        return terms
