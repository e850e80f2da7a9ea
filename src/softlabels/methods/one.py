"""ONE, On-the-fly Native Ensemble (Lan, Zhu, Gong, "Knowledge Distillation by On-the-fly
Native Ensemble", NeurIPS 2018, arXiv 1806.04606, §3).

The network is reconfigured into m branches that share the low-level layers (the trunk: stem
and every stage but the last) and each have their own copy of the last stage and classifier.
Branch 0 is the model's own last stage and head; branches 1 … m−1 are independently
initialised copies. A gate on the shared features (the last stage's input) weighs the branches:

    g(x)  = softmax(ReLU(BN(W · GAP(h(x)))))                       (m weights, sum 1)
    z_e   = Σ_i g_i · z_i                                           (the ensemble teacher)
    L     = Σ_i CE(z_i, y) + CE(z_e, y) + w · T² · Σ_i KL(softmax(z_e/T) ‖ softmax(z_i/T))

with T = 3. The teacher is a constant in the KL (``detach_teacher``, the authors' code); so the
gate learns only through CE(z_e, y). ``variant: official`` reproduces the released CIFAR code
(Lan1991Xu/ONE_NeurIPS2018): the KL weight w is ramped up with the sigmoid schedule
exp(−5·(1 − min(e, R)/R)²) of epoch e over R = 80 epochs, and the target distribution is
softmax(z_e/T) + 1e-7 (not renormalised). ``variant: paper`` has w = 1 and the exact softmax.

Everything lives in the model (installed by ``adapt_model`` as ``model.extension``, see
:class:`softlabels.models.base.Classifier`), so checkpoints, ``softlabels eval`` and loading a
ONE run as a teacher see the same network. Test time: ``inference: branch`` (default, the
paper's "ONE": the auxiliary branches are discarded and branch 0, i.e. exactly the plain
architecture, is deployed; one pass through the trunk and one last stage) or
``inference: ensemble`` (the paper's "ONE-E": the gated ensemble z_e).
"""
from __future__ import annotations

import copy
import math
from typing import Annotated, Dict, Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, MissingInputError
from ..models.base import ModelOutput
from ..registry import METHODS, Range
from .base import Batch, Method
from .functional import cross_entropy, target_kl, tempered_kl, upcast

ONE_REFERENCE = ("Lan, Zhu, Gong, Knowledge Distillation by On-the-fly Native Ensemble, NeurIPS 2018 "
                 "(arXiv 1806.04606)")

DEFAULT_TEMPERATURE = 3.0      # paper §3 / official loss/kl_loss.py (T=3)
DEFAULT_BRANCHES = 3           # official models/cifar/resnet.py: layer3_1 … layer3_3
OFFICIAL_RAMPUP_EPOCHS = 80.0  # official cifar_one.py --consistency_rampup default and scripts
OFFICIAL_TARGET_EPS = 1e-7     # official loss/kl_loss.py: target = softmax(z_e/T) + 1e-7
VARIANTS = ("paper", "official")
INFERENCE = ("branch", "ensemble")

SUPPORTED = ("the CIFAR ResNets (resnet8 ... resnet110, resnet29, cifar_resnet), resnet10/18/34/50/101/152, "
             "resnext101_32x4d, resnext29_*, densenet_bc, kt_resnet50, preact_resnet18_cskd")


# ---------------------------------------------------------------------------- plain functions
def one_ensemble_logits(branch_logits: Sequence[torch.Tensor], gate: torch.Tensor) -> torch.Tensor:
    """z_e = Σ_i g_i · z_i: the gated ensemble (teacher) logits, B×K, from the m branch logits
    (each B×K) and the gate weights ``gate`` (B×m). Keeps gradients to branches and gate."""
    zs = list(branch_logits)
    if gate.dim() != 2 or gate.shape[1] != len(zs):
        raise ValueError(f"one_ensemble_logits: gate of shape {tuple(gate.shape)} for {len(zs)} branches; "
                         f"expected B×{len(zs)}")
    *zs, g = upcast(*zs, gate)
    stacked = torch.stack(zs, dim=1)                      # B×m×K
    return (g.unsqueeze(-1) * stacked).sum(dim=1)


def one_kl(branch_logits: Sequence[torch.Tensor], ensemble_logits: torch.Tensor, temperature: float = 3.0,
           detach_teacher: bool = True, target_eps: float = 0.0) -> torch.Tensor:
    """T² · Σ_i KL(softmax(z_e/T) ‖ softmax(z_i/T)): summed over classes and branches, mean over
    the batch. ``detach_teacher``: z_e is a constant (no gradient reaches the ensemble, i.e. the
    branches through it or the gate). ``target_eps`` > 0 adds it to every target probability
    without renormalising, as the official code does with 1e-7 (Σ_j t_j (log t_j − log p_ij))."""
    t = float(temperature)
    teacher = ensemble_logits.detach() if detach_teacher else ensemble_logits
    if target_eps:
        target = F.softmax(upcast(teacher) / t, dim=1) + target_eps
        return sum(target_kl(z, target, t) for z in branch_logits)
    return sum(tempered_kl(z, teacher, t, detach_target=False) for z in branch_logits)


def one_loss(branch_logits: Sequence[torch.Tensor], ensemble_logits: torch.Tensor, labels: torch.Tensor,
             temperature: float = 3.0, kl_weight: float = 1.0, detach_teacher: bool = True,
             target_eps: float = 0.0) -> Dict[str, torch.Tensor]:
    """ONE's objective as named terms whose sum is the loss: ``ce`` = Σ_i CE(z_i, y) over the m
    branches, ``ensemble_ce`` = CE(z_e, y), ``kl`` = kl_weight · :func:`one_kl`."""
    zs = list(branch_logits)
    if not zs:
        raise ValueError("one_loss: needs at least one branch")
    ce = sum(cross_entropy(z, labels) for z in zs)
    return {"ce": ce, "ensemble_ce": cross_entropy(ensemble_logits, labels),
            "kl": kl_weight * one_kl(zs, ensemble_logits, temperature, detach_teacher, target_eps)}


def sigmoid_rampup(epoch: float, length: float) -> float:
    """exp(−5·(1 − min(e, R)/R)²) for epoch e ≥ 0 and ramp length R (1 when R = 0): the
    consistency ramp-up of Laine & Aila / Tarvainen & Valpola that the official ONE code applies
    to its KL term, per epoch."""
    if length <= 0:
        return 1.0
    phase = 1.0 - min(max(float(epoch), 0.0), length) / length
    return float(math.exp(-5.0 * phase * phase))


# ---------------------------------------------------------------------------- modules
class ONEGate(nn.Module):
    """g(x) = softmax(ReLU(BN(Linear(GAP(h))))) over the m branches (§3: "one FC layer followed
    by batch normalisation, ReLU activation, and softmax", on the branches' input features).
    PyTorch's default initialisation, as in the official code. The softmax is taken in float32.
    In training, a batch of one sample (BatchNorm cannot estimate statistics from it) is
    normalised with the running statistics, without updating them."""

    def __init__(self, in_channels: int, branches: int):
        super().__init__()
        self.fc = nn.Linear(int(in_channels), int(branches))
        self.bn = nn.BatchNorm1d(int(branches))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        v = torch.flatten(F.adaptive_avg_pool2d(h, 1), 1) if h.dim() == 4 else h
        s = self.fc(v)
        if self.training and s.shape[0] == 1:
            bn = self.bn
            s = F.batch_norm(s, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        else:
            s = self.bn(s)
        return F.softmax(upcast(F.relu(s)), dim=1)


class NativeEnsemble(nn.Module):
    """ONE's multi-branch extension, installed as ``model.extension``: the m−1 extra branches
    (``branches[j]``, a ModuleDict of copies of the model's ``branch_modules``, e.g. ``layer3``
    and ``head``) and the gate. ``forward(model, x, return_features)`` replaces the model's
    forward (see :class:`softlabels.models.base.Classifier`):

    - the trunk runs once; branch 0 is the model's own last stage and head;
    - in training, or with ``inference: ensemble``, every branch and the gate run and
      ``aux["branch0"]`` … ``aux["branch{m-1}"]`` (logits and embedding of each branch) and
      ``aux["ensemble"]`` (logits z_e; its ``embedding`` field holds the gate weights, B×m) are
      filled;
    - ``logits`` is branch 0's (``inference: branch``) or z_e (``inference: ensemble``);
      ``embedding`` and ``features`` are always branch 0's (B×D; trunk maps + its last map).

    In eval mode with ``inference: branch`` only branch 0 runs: the plain model's computation.
    """

    def __init__(self, model: nn.Module, branches: int, inference: str):
        super().__init__()
        names = tuple(model.branch_modules)
        self.inference = inference
        extra = []
        for _ in range(int(branches) - 1):
            mods = nn.ModuleDict({n: model.initialise(copy.deepcopy(getattr(model, n))) for n in names})
            extra.append(mods)
        self.branches = nn.ModuleList(extra)
        self.gate = ONEGate(int(model.stage_channels[-2]), int(branches))

    @property
    def num_branches(self) -> int:
        return len(self.branches) + 1

    def extra_repr(self) -> str:
        return f"branches={self.num_branches}, inference={self.inference!r}"

    def forward(self, model: nn.Module, x: torch.Tensor, return_features: bool = False) -> ModelOutput:
        trunk = list(model.forward_trunk(x))
        h = trunk[-1]
        last, emb = model.forward_last(h)
        z0 = model.head(emb)
        feats = trunk + [last] if return_features else None
        if not self.training and self.inference == "branch":
            return ModelOutput(z0, emb, feats)
        outs = [ModelOutput(z0, emb)]
        for mods in self.branches:
            _, e = model.forward_last(h, mods)
            outs.append(ModelOutput(mods["head"](e), e))
        g = self.gate(h)
        z_e = one_ensemble_logits([o.logits for o in outs], g)
        aux = {f"branch{i}": o for i, o in enumerate(outs)}
        aux["ensemble"] = ModelOutput(z_e, g)
        logits = z0 if self.inference == "branch" else z_e
        return ModelOutput(logits, emb, feats, aux)


def _supported(model) -> bool:
    needed = ("branch_modules", "forward_trunk", "forward_last", "initialise")
    if not all(hasattr(model, a) for a in needed) or not hasattr(model, "head"):
        return False
    return len(getattr(model, "stage_channels", ())) >= 2 and "head" in tuple(model.branch_modules)


# ---------------------------------------------------------------------------- method
@METHODS.register("one", "On-the-fly Native Ensemble: m branches of the last stage on a shared trunk, "
                         "a gated ensemble teacher distilled back into every branch",
                  reference=ONE_REFERENCE)
class OnTheFlyNativeEnsemble(Method):
    """Options:
    branches:       m, the number of branches including the model's own (default 3, the
                    official code; the paper adds m auxiliary branches to the target, so its m
                    is ``branches − 1``).
    temperature:    T of the soft targets (default 3).
    inference:      branch | ensemble: what the model outputs at evaluation: branch 0 (the
                    paper's "ONE", the deployed single model; default) or the gated ensemble
                    z_e ("ONE-E").
    variant:        paper | official (module docstring): the official code's KL ramp-up and
                    1e-7 target offset.
    detach_teacher: z_e is a constant in the KL (default true, the official code).
    rampup_epochs:  R of the sigmoid KL ramp-up; null = the variant's (paper 0, official 80).

    Logged terms: ``ce`` (Σ over the branches), ``ensemble_ce``, ``kl`` (weighted). Supported
    models: those with the split-last-stage protocol (``SUPPORTED``: the ResNet and ResNeXt
    families, densenet_bc, kt_resnet50, preact_resnet18_cskd); others stop with a one-line
    ``model.name`` error.
    """

    needs_model_forward = True

    def __init__(self, num_classes: int, branches: Annotated[int, Range(2)] = DEFAULT_BRANCHES,
                 temperature: Annotated[float, Range(0.0, low_open=True)] = DEFAULT_TEMPERATURE,
                 inference: Literal["branch", "ensemble"] = "branch",
                 variant: Literal["paper", "official"] = "paper", detach_teacher: bool = True,
                 rampup_epochs: Optional[Annotated[float, Range(0.0)]] = None):
        super().__init__(num_classes)
        self.temperature = temperature
        if rampup_epochs is None:
            rampup_epochs = OFFICIAL_RAMPUP_EPOCHS if variant == "official" else 0.0
        self.rampup_epochs = float(rampup_epochs)
        self.branches, self.inference, self.variant = branches, inference, variant
        self.detach_teacher = detach_teacher
        self.target_eps = OFFICIAL_TARGET_EPS if variant == "official" else 0.0
        self.epoch = 0

    def adapt_model(self, model) -> None:
        if not _supported(model):
            raise ConfigError(
                f"model.name: one duplicates the last stage of the ResNet families ({SUPPORTED}), "
                f"not of a {type(model).__name__}")
        if model._modules.get("extension") is not None:
            raise ConfigError(f"method.name: one needs the model's forward extension, but another method "
                              f"already installed {type(model.extension).__name__}")
        ext = NativeEnsemble(model, self.branches, self.inference)
        p = next(model.parameters(), None)
        if p is not None:
            ext.to(p.device)
        model.extension = ext
        # the extra branches and the gate are fresh modules: not in pre-trained files, and at
        # optim.head_lr like a method's auxiliary heads
        model.head_modules = tuple(getattr(model, "head_modules", ("head",))) + ("extension",)
        model.fresh_modules = tuple(getattr(model, "fresh_modules", ())) + ("extension",)

    def setup(self, model, teachers=()) -> None:
        if not isinstance(model._modules.get("extension"), NativeEnsemble):
            raise ConfigError("method.name: one needs its branches in the model (adapt_model), but the "
                              "model has none")

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def kl_weight(self) -> float:
        """w of the current epoch: the sigmoid ramp-up (1 without one)."""
        return sigmoid_rampup(self.epoch, self.rampup_epochs)

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        aux = out.aux
        names = [f"branch{i}" for i in range(self.branches)]
        if "ensemble" not in aux or any(n not in aux for n in names):
            raise MissingInputError("one: out.aux has no branch outputs; they come from the model's forward "
                                  "in training mode once adapt_model installed the branches")
        return one_loss([aux[n].logits for n in names], aux["ensemble"].logits, batch.y, self.temperature,
                        self.kl_weight(), self.detach_teacher, self.target_eps)
