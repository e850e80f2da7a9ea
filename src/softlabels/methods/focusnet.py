"""FocusNet's focus-picking loss (Zhang, Sheng, Shen, "FocusNet: Classifying better by focusing
on confusing classes", Pattern Recognition 2022, §3.3–3.4, Eq. 4–12).

A frozen, pre-trained baseline (the method's one teacher, logits ``b``) marks the classes that
confuse it for each sample; the network being trained (logits ``z``) is pushed to pick the true
class out of them. Three terms:

  multi-warm label (Eq. 4–6)  l′ = 1[b > 0];  l″ = min(1, l′ + Y);  l = l″ / Σ l″
  re-weighting (Eq. 7–8)      d = softmax(z) − softmax(b);  ŷ = softmax(z + d)
  L_cls  = CE(Y, ŷ)           (Eq. 9)
  R_att  = CE(l, softmax(z))  (Eq. 10)
  R_ent  = H(softmax(z))      (Eq. 11)
  L = L_cls + α·R_att − β·R_ent   (Eq. 12), α = β = 1.

Only the trained branch is kept: the baseline is a teacher the trainer holds outside the model,
so checkpoints contain one network and inference is a plain forward (d = 0).

Variants (see docs/methods.md):
  paper     the equations as written; d is not detached (gradient flows through softmax(z)).
  official  the authors' ImageNet code: L_cls against 0.9·Y + 0.1/K; mask softmax(b/2) > 1/K
            plus the true class, row-normalised; L_cls and R_att computed in float64.
``detach=True`` treats d as a constant (the variant the authors used for the FRSKD comparison).
"""
# No ``from __future__ import annotations`` here: the registry checks option types against the
# constructor's annotations, and string annotations would disable that check.
from typing import Annotated, Dict, Literal, Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.base import ModelOutput
from ..registry import METHODS, Range
from .base import Batch, Method, Requires, TeacherMode, need_teacher
from .functional import cross_entropy, entropy, label_terms, soft_cross_entropy, upcast

VARIANTS = ("paper", "official")
OFFICIAL_SMOOTHING = 0.1  # official code: L_cls against 0.9·Y + 0.1/K


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")


def multi_warm_labels(baseline_logits: torch.Tensor, labels: torch.Tensor,
                      variant: str = "paper") -> torch.Tensor:
    """The multi-warm label ``l`` (B×K), one row per sample, rows summing to 1.

    paper (Eq. 4–6): the classes with a positive baseline logit plus the true class, equal
    weights. official: the classes with ``softmax(b/2) > 1/K`` plus the true class. A row where
    no class qualifies is the one-hot label. Computed in the baseline's dtype (fp16/bf16 → fp32);
    no gradient.
    """
    _check_variant(variant)
    b = upcast(baseline_logits.detach())
    if variant == "paper":
        warm = b > 0
    else:
        warm = torch.softmax(b / 2.0, dim=1) > 1.0 / b.shape[1]
    warm = warm.to(b.dtype)
    warm.scatter_(1, labels[:, None], 1.0)  # min(1, l′ + Y)
    return warm / warm.sum(dim=1, keepdim=True)


def reweighted_log_probs(logits: torch.Tensor, baseline_logits: torch.Tensor,
                         detach: bool = False) -> torch.Tensor:
    """log ŷ(z, d) = log_softmax(z + d) with d = softmax(z) − softmax(b)  (Eq. 7–8).

    ``detach=True`` stops the gradient through d (d is then a per-sample constant shift).
    Computed in the dtype of ``logits`` (fp16/bf16 → fp32); the baseline is cast to it.
    """
    z = upcast(logits)
    b = baseline_logits.detach().to(z.dtype)
    d = torch.softmax(z, dim=1) - torch.softmax(b, dim=1)
    if detach:
        d = d.detach()
    return F.log_softmax(z + d, dim=1)


def focus_picking_loss(logits: torch.Tensor, baseline_logits: torch.Tensor, labels: torch.Tensor,
                       alpha: float = 1.0, beta: float = 1.0, variant: str = "paper",
                       detach: bool = False, reweight: bool = True,
                       smoothing: Optional[float] = None) -> Dict[str, torch.Tensor]:
    """The three weighted terms of Eq. 12: ``{"cls": L_cls, "att": α·R_att, "ent": −β·R_ent}``.

    Their sum is the focus-picking loss. ``baseline_logits`` get no gradient.
    variant:   ``paper`` or ``official`` (module docstring). In ``official``, ``cls`` and ``att``
               are float64 tensors; ``ent`` is in the logits' dtype.
    detach:    treat d as a constant in L_cls.
    reweight:  False replaces L_cls by plain CE(Y, softmax(z)) (d = 0; Table 10's baseline).
    smoothing: ε of L_cls's target (1−ε)·Y + ε/K; None = the variant's (paper 0, official 0.1).
    """
    _check_variant(variant)
    if logits.shape != baseline_logits.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and baseline logits "
                         f"{tuple(baseline_logits.shape)} differ in shape")
    if smoothing is None:
        smoothing = OFFICIAL_SMOOTHING if variant == "official" else 0.0
    z = upcast(logits)
    # the official code computes L_cls and R_att in float64
    zc = z.double() if variant == "official" else z
    bc = baseline_logits.detach().to(zc.dtype)
    if reweight:
        log_yhat = reweighted_log_probs(zc, bc, detach=detach)
    else:
        log_yhat = F.log_softmax(zc, dim=1)
    # log ŷ are log-probabilities; CE on them equals CE on the logits z + d (log_softmax is idempotent)
    cls = cross_entropy(log_yhat, labels, label_smoothing=smoothing)          # Eq. 9: L_cls = CE(Y, ŷ)
    att = soft_cross_entropy(zc, multi_warm_labels(bc, labels, variant))       # Eq. 10: R_att = CE(l, p)
    ent = entropy(z).mean()                                                     # Eq. 11: R_ent = H(p)
    return {"cls": cls, "att": alpha * att, "ent": -beta * ent}                 # Eq. 12


@METHODS.register("focusnet", "FocusNet focus-picking loss: re-weighted CE against a frozen baseline, "
                              "multi-warm label on its confusing classes, entropy bonus",
                  reference="Zhang, Sheng, Shen, FocusNet, Pattern Recognition 2022")
class FocusNet(Method):
    """Options:
    alpha:        weight of R_att (paper: 1).
    beta:         weight of the entropy bonus −β·R_ent (paper: 1).
    variant:      paper | official (the authors' ImageNet code).
    detach:       treat d = softmax(z) − softmax(b) as a constant in L_cls (the authors' variant
                  for the FRSKD comparison, Table 7). Needs use_reweight.
    use_att:      keep α·R_att (Table 10 ablation: false drops the term).
    use_ent:      keep −β·R_ent (Table 10 ablation).
    use_reweight: L_cls on ŷ(z, d); false = plain CE(Y, softmax(z)) (Table 10's baseline row).
    smoothing:    ε of L_cls's target (1−ε)·Y + ε/K; null = the variant's (paper 0, official 0.1).
    teacher_mode: eval (default; the authors' code also runs the baseline in eval mode) | train.

    Needs one teacher: the frozen, CE-trained baseline. Logged terms: ``cls``, ``att``, ``ent``
    (the switched-off ones are absent).
    """

    requires = Requires(teachers=1)

    def __init__(self, num_classes: int, alpha: Annotated[float, Range(0.0)] = 1.0,
                 beta: Annotated[float, Range(0.0)] = 1.0,
                 variant: Literal["paper", "official"] = "paper", detach: bool = False,
                 use_att: bool = True, use_ent: bool = True, use_reweight: bool = True,
                 smoothing: Optional[Annotated[float, Range(0.0, 1.0, high_open=True)]] = None,
                 teacher_mode: TeacherMode = "eval"):
        super().__init__(num_classes)
        if detach and not use_reweight:
            raise ConfigError("method.options.detach: has no effect with use_reweight=false (d is not used)")
        self.alpha, self.beta, self.variant, self.detach = alpha, beta, variant, detach
        self.use_att, self.use_ent, self.use_reweight = use_att, use_ent, use_reweight
        self.smoothing = smoothing
        self.requires = Requires(teachers=1, teacher_mode=teacher_mode)

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        baseline = need_teacher(teachers, "focusnet")[0].logits
        if baseline.shape != out.logits.shape:
            raise ConfigError(
                f"model.name: focusnet's baseline predicts {baseline.shape[-1]} classes, "
                f"the model {out.logits.shape[-1]}")
        terms = label_terms(lambda y: focus_picking_loss(
            out.logits, baseline, y, alpha=self.alpha, beta=self.beta, variant=self.variant, detach=self.detach,
            reweight=self.use_reweight, smoothing=self.smoothing), batch)
        if not self.use_att:
            del terms["att"]
        if not self.use_ent:
            del terms["ent"]
        return terms
