"""DropMax (Lee, Lee, Kim, Yang, Hwang, "DropMax: Adaptive Variational Softmax", NeurIPS 2018,
arXiv 1712.07834): a softmax whose non-target classes are dropped at random during training,
with input-dependent retain probabilities learned by variational inference.

The model's linear head is replaced by a ``DropMaxHead`` holding three linear layers on the
embedding h (the head's input), each D→K:

    o   = W h + b               class logits (starts as the replaced head)
    a_ρ = W_θ h + b_θ           retain logits of the prior p(z|x) = Π_k Ber(z_k; ρ_k), ρ = σ(a_ρ)
    a_r = W_φ h + b_φ           the variational branch

Masked softmax for a mask z ∈ [0, 1]^K:

    p(y = t | x, z) = (z_t + ε)·exp(o_t) / Σ_k (z_k + ε)·exp(o_k) = softmax(o + log(z + ε))_t

Variational posterior q(z|x, y) = Π_k Ber(z_k; π_k) with π_t = 1 for the target t (it is never
dropped) and π_k = σ(a_q)_k otherwise, where

    a_q = sg(a_ρ) + a_r   (posterior="residual", the authors' code: lenet.py, sg = stop-gradient)
    a_q = a_r             (posterior="direct": a layer of its own)

One relaxed-Bernoulli (concrete) sample per example (authors' layers.py, ``genmask``):

    z_k = σ((a_q,k + log u_k − log(1 − u_k)) / τ),  u ~ U(0, 1),   z_t = 1

Loss, batch means of per-example sums over the K classes (the authors' run.py adds the four
terms with weight 1; their layers.py defines each as below):

    ce      = −log softmax(o + log(z + ε))_y
    kl      = λ_kl · [ −log ρ_t + Σ_{k≠t} KL(Ber(q_k) ‖ Ber(ρ_k)) ]          (= KL[q(z|x,y) ‖ p(z|x)])
    aux     = λ_aux · Σ_k BCE(σ(a_r)_k, Y_k)          (the posterior branch predicts the one-hot label)
    neg_ent = λ_ent · Σ_k [ρ_k log ρ_k + (1 − ρ_k) log(1 − ρ_k)]             (= −λ_ent·H(ρ))

Test time: the expectation over z is approximated by plugging in E[z] = ρ, so the prediction
is softmax(o + log(ρ + ε)) (the authors' lenet.py evaluates (ρ + ε)·exp(o)). The head's forward
returns exactly these logits, in training as in evaluation, so evaluation, checkpoints and
``softlabels eval`` need nothing else; the loss recomputes o, a_ρ and a_r from
``out.embedding`` (the head's input).

Not reproduced: the authors' code applies its weight decay (1e-4) to the class layer and the
backbone only, not to the two branches; here ``optim.weight_decay`` applies to the whole head.
"""
from __future__ import annotations

import math
from typing import Annotated, Dict, Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.base import ModelOutput
from ..registry import METHODS, Range
from .base import Batch, Method, need_setup
from .functional import cross_entropy, label_terms, upcast
from .heads import _keep, linear_head

DROPMAX_REFERENCE = ("Lee, Lee, Kim, Yang, Hwang, DropMax: Adaptive Variational Softmax, NeurIPS 2018 "
                     "(arXiv 1712.07834)")
DEFAULT_TEMPERATURE = 0.1  # τ of the concrete relaxation: ``tau = 0.1`` in the authors' layers.py
DEFAULT_EPS = 1e-20        # ε of the masked softmax: ``eps = 1e-20`` in the authors' layers.py
POSTERIORS = ("residual", "direct")


def _log_plus_eps(log_z: torch.Tensor, eps: float) -> torch.Tensor:
    """log(z + ε) from log z, exact also where z underflows to 0 (log z = −inf gives log ε)."""
    return torch.logaddexp(log_z, torch.full_like(log_z, math.log(eps)))


def dropmax_logits(logits: torch.Tensor, retain_logits: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Test-time logits ``o + log(ρ + ε)``, ρ = σ(retain_logits): their softmax is the paper's
    approximate predictive distribution (z replaced by its expectation ρ). float32 for
    fp16/bf16 inputs."""
    o, a = upcast(logits), upcast(retain_logits)
    return o + _log_plus_eps(F.logsigmoid(a), eps)


def dropmax_posterior_logits(retain_logits: torch.Tensor, posterior_logits: torch.Tensor,
                             posterior: str = "residual") -> torch.Tensor:
    """Logits a_q of q's non-target retain probabilities: ``sg(a_ρ) + a_r`` ("residual", the
    authors' code) or ``a_r`` ("direct")."""
    if posterior == "residual":
        return upcast(retain_logits).detach() + upcast(posterior_logits)
    if posterior == "direct":
        return upcast(posterior_logits)
    raise ValueError(f"posterior must be one of {POSTERIORS}, got {posterior!r}")


def _concrete_logits(q_logits: torch.Tensor, temperature: float,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """s = (a_q + log u − log(1 − u)) / τ with u ~ U(0, 1) from torch's RNG (or ``generator``);
    the relaxed Bernoulli sample is σ(s)."""
    a = upcast(q_logits)
    u = torch.rand(a.shape, generator=generator, device=a.device, dtype=a.dtype)
    u = u.clamp(min=torch.finfo(a.dtype).tiny)  # torch.rand can return exactly 0
    return (a + torch.log(u) - torch.log1p(-u)) / temperature


def sample_retain_mask(q_logits: torch.Tensor, labels: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One concrete (relaxed Bernoulli) sample z ∈ (0, 1)^{B×K} of q(z|x, y) with retain
    probabilities σ(q_logits) and temperature τ; the target entries are exactly 1."""
    z = torch.sigmoid(_concrete_logits(q_logits, temperature, generator))
    return z.scatter(1, labels[:, None], 1.0)


def dropmax_ce(logits: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
               eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Masked-softmax CE ``−log[(z_y + ε)·exp(o_y) / Σ_k (z_k + ε)·exp(o_k)]`` for a given mask z
    (batch mean). The mask is taken as it is (DropMax's masks have z_y = 1)."""
    o, z = upcast(logits), upcast(mask)
    return cross_entropy(o + _log_plus_eps(torch.log(z), eps), labels)


def dropmax_kl(retain_logits: torch.Tensor, q_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL[q(z|x, y) ‖ p(z|x)] of the factorised Bernoulli masks, summed over classes, batch mean:
    ``−log ρ_y`` for the target (q_y = 1) plus ``q log(q/ρ) + (1−q) log((1−q)/(1−ρ))`` for the
    others; ρ = σ(retain_logits), q = σ(q_logits)."""
    a_p, a_q = upcast(retain_logits), upcast(q_logits)
    log_p, log_1p = F.logsigmoid(a_p), F.logsigmoid(-a_p)
    log_q, log_1q = F.logsigmoid(a_q), F.logsigmoid(-a_q)
    other = log_q.exp() * (log_q - log_p) + log_1q.exp() * (log_1q - log_1p)
    target = F.one_hot(labels, a_p.shape[1]).bool()
    return torch.where(target, -log_p, other).sum(dim=1).mean()


def dropmax_aux(posterior_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Auxiliary objective: binary CE of σ(posterior_logits) against the one-hot label,
    ``−log r_y − Σ_{k≠y} log(1 − r_k)``, summed over classes, batch mean."""
    a = upcast(posterior_logits)
    target = F.one_hot(labels, a.shape[1]).to(a.dtype)
    return F.binary_cross_entropy_with_logits(a, target, reduction="sum") / a.shape[0]


def dropmax_neg_entropy(retain_logits: torch.Tensor) -> torch.Tensor:
    """−H(ρ) = Σ_k [ρ_k log ρ_k + (1 − ρ_k) log(1 − ρ_k)], ρ = σ(retain_logits), batch mean.
    Added to the loss, it pushes the retain probabilities towards 1/2 (maximum entropy)."""
    a = upcast(retain_logits)
    log_p, log_1p = F.logsigmoid(a), F.logsigmoid(-a)
    return (log_p.exp() * log_p + log_1p.exp() * log_1p).sum(dim=1).mean()


def dropmax_loss(logits: torch.Tensor, retain_logits: torch.Tensor, posterior_logits: torch.Tensor,
                 labels: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE, eps: float = DEFAULT_EPS,
                 kl_weight: float = 1.0, aux_weight: float = 1.0, entropy_weight: float = 1.0,
                 posterior: str = "residual", mask: Optional[torch.Tensor] = None,
                 generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
    """DropMax's training objective as named, weighted terms whose sum is the loss:
    ``ce`` (masked-softmax CE with one sample z ~ q), ``kl`` (λ_kl·KL[q ‖ p]), ``aux``
    (λ_aux·BCE of the posterior branch against the one-hot label) and ``neg_ent`` (λ_ent·(−H(ρ))).

    logits o, retain_logits a_ρ and posterior_logits a_r are the three B×K outputs of the
    DropMax head. ``mask``: a fixed z to use instead of a sample (taken as it is; no gradient
    flows into it); otherwise z is drawn from torch's RNG (or ``generator``) with z_y = 1.
    Everything is computed in float32 (or float64 for float64 inputs).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    o = upcast(logits)
    a_q = dropmax_posterior_logits(retain_logits, posterior_logits, posterior)
    if mask is None:
        log_z = F.logsigmoid(_concrete_logits(a_q, temperature, generator))
        log_z = log_z.scatter(1, labels[:, None], 0.0)  # the target is never dropped: z_y = 1
        ce = cross_entropy(o + _log_plus_eps(log_z, eps), labels)
    else:
        ce = dropmax_ce(o, mask.detach(), labels, eps)
    return {
        "ce": ce,
        "kl": kl_weight * dropmax_kl(retain_logits, a_q, labels),
        "aux": aux_weight * dropmax_aux(posterior_logits, labels),
        "neg_ent": entropy_weight * dropmax_neg_entropy(retain_logits),
    }


class DropMaxHead(nn.Module):
    """The DropMax classifier on the embedding: ``logits`` (o), ``retain`` (a_ρ, the prior's
    retain logits) and ``posterior`` (a_r, the variational branch), each nn.Linear(D, K).
    ``forward`` gives the test-time logits o + log(σ(a_ρ) + ε) (in float32); ``branches`` gives
    (o, a_ρ, a_r) for the training loss."""

    def __init__(self, in_features: int, out_features: int, eps: float = DEFAULT_EPS,
                 weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.eps = float(eps)
        like = {} if weight is None else {"device": weight.device, "dtype": weight.dtype}
        self.logits = nn.Linear(self.in_features, self.out_features, **like)
        self.retain = nn.Linear(self.in_features, self.out_features, **like)
        self.posterior = nn.Linear(self.in_features, self.out_features, **like)
        with torch.no_grad():
            if weight is not None:
                if tuple(weight.shape) != (self.out_features, self.in_features):
                    raise ValueError(f"DropMaxHead: weight of shape {tuple(weight.shape)}, "
                                     f"expected {(self.out_features, self.in_features)}")
                self.logits.weight.copy_(weight)
            if bias is not None:
                self.logits.bias.copy_(bias)

    def branches(self, x: torch.Tensor):
        return self.logits(x), self.retain(x), self.posterior(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropmax_logits(self.logits(x), self.retain(x), self.eps)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, eps={self.eps:g}"


@METHODS.register("dropmax", "softmax with adaptive, variationally learned dropout of non-target classes",
                  reference=DROPMAX_REFERENCE)
class DropMax(Method):
    """Options (defaults from the authors' TensorFlow code, github.com/haebeom-lee/dropmax):
    temperature:    τ of the concrete relaxation of the Bernoulli masks (0.1, layers.py).
    eps:            ε of the masked softmax (z_k + ε)·exp(o_k) (1e-20, layers.py).
    kl_weight:      weight of KL[q(z|x,y) ‖ p(z|x)] (1, run.py).
    aux_weight:     weight of the auxiliary BCE of the posterior branch (1, run.py).
    entropy_weight: weight of −H(ρ) (1, run.py; the loss minimises −H, issue #2 of that repo).
    posterior:      "residual" (a_q = sg(a_ρ) + a_r, lenet.py) or "direct" (a_q = a_r).

    ``adapt_model`` replaces ``model.head`` (a linear K-way head) by a ``DropMaxHead`` whose
    class layer starts as the old head; its forward gives the test-time logits, so evaluation
    is the paper's approximate prediction. ``loss`` recomputes the three branches from
    ``out.embedding`` (through ``model.dropout`` first where the backbone has one, as the
    model's own forward does). Logged terms: ``ce``, ``kl``, ``aux``, ``neg_ent``.
    """

    def __init__(self, num_classes: int,
                 temperature: Annotated[float, Range(0.0, low_open=True)] = DEFAULT_TEMPERATURE,
                 eps: Annotated[float, Range(0.0, low_open=True)] = DEFAULT_EPS,
                 kl_weight: Annotated[float, Range(0.0)] = 1.0, aux_weight: Annotated[float, Range(0.0)] = 1.0,
                 entropy_weight: Annotated[float, Range(0.0)] = 1.0,
                 posterior: Literal["residual", "direct"] = "residual"):
        super().__init__(num_classes)
        self.temperature, self.eps = temperature, eps
        self.kl_weight, self.aux_weight, self.entropy_weight = kl_weight, aux_weight, entropy_weight
        self.posterior = posterior
        _keep(self, None, "_head")
        _keep(self, None, "_pre_head")

    def adapt_model(self, model) -> None:
        old = linear_head(model, "dropmax")
        weight = old.weight
        k, d = weight.shape
        model.head = DropMaxHead(d, k, self.eps, weight.detach(),
                                 None if old.bias is None else old.bias.detach())
        _keep(self, model.head, "_head")

    def setup(self, model, teachers=()) -> None:
        if not isinstance(model.head, DropMaxHead):
            raise ConfigError(f"method.name: dropmax needs its DropMax head, but model.head is "
                              f"{type(model.head).__name__} (replaced by another method?)")
        _keep(self, model.head, "_head")
        pre = getattr(model, "dropout", None)
        _keep(self, pre if isinstance(pre, nn.Module) else None, "_pre_head")

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        head = need_setup(self._head, "dropmax", "the DropMax head")
        h = out.embedding if self._pre_head is None else self._pre_head(out.embedding)
        o, a_rho, a_r = head.branches(h)
        return label_terms(lambda y: dropmax_loss(o, a_rho, a_r, y, temperature=self.temperature, eps=self.eps,
                                                  kl_weight=self.kl_weight, aux_weight=self.aux_weight,
                                                  entropy_weight=self.entropy_weight, posterior=self.posterior), batch)
