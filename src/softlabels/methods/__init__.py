"""Training objectives. Importing this package registers every method.

Seed methods: ols, cskd, cskd_e, focusnet, label_refinery, glr, cd, glr_cd, orthogonal.
Baselines: ce, ls, kd, maxent, focal, sce, bootstrap_soft, bootstrap_hard, disturb_label,
pairwise_confusion, adacos, virtual_softmax, mixup, mixup_cskd, cutmix, cutout, ddgsd, tfkd_self,
tfkd_reg, byot, frskd, sla_sd, dropmax, one.
"""
from .base import Method, Objective, Requires, build_objective, build_run_model
from . import (augmentation, byot, ce, cskd, dropmax, focusnet, frskd, heads, jgl, kd, ols,  # noqa: F401
               one, orthogonal, regularizers, sla, tfkd)  # (registration)
from .augmentation import DDGSD, CutMix, Cutout, Mixup, MixupCSKD
from .byot import BeYourOwnTeacher
from .ce import CrossEntropy, LabelSmoothing
from .cskd import ClassWiseSelfKD, ClassWiseSelfKDE
from .dropmax import DropMax
from .focusnet import FocusNet
from .frskd import FRSKD
from .heads import AdaCos, VirtualSoftmax
from .jgl import ChannelDistillation, GuidedLabelRefinery, JointGuidedLearning, LabelRefinery
from .kd import KnowledgeDistillation
from .ols import OnlineLabelSmoothing
from .one import OnTheFlyNativeEnsemble
from .orthogonal import OrthogonalTransfer
from .regularizers import (ConfidencePenalty, DisturbLabel, FocalLoss, HardBootstrap, PairwiseConfusion,
                           SoftBootstrap, SymmetricCrossEntropy)
from .sla import SLASelfDistillation
from .tfkd import TeacherFreeRegularization, TeacherFreeSelfKD

__all__ = ["Method", "Objective", "Requires", "build_objective", "build_run_model", "CrossEntropy",
           "LabelSmoothing", "OnlineLabelSmoothing", "ClassWiseSelfKD", "ClassWiseSelfKDE", "FocusNet",
           "OrthogonalTransfer", "LabelRefinery", "GuidedLabelRefinery", "ChannelDistillation",
           "JointGuidedLearning", "KnowledgeDistillation", "ConfidencePenalty", "FocalLoss",
           "SymmetricCrossEntropy", "SoftBootstrap", "HardBootstrap", "DisturbLabel", "PairwiseConfusion",
           "AdaCos", "VirtualSoftmax", "Mixup", "MixupCSKD", "CutMix", "Cutout", "DDGSD", "TeacherFreeSelfKD",
           "TeacherFreeRegularization", "BeYourOwnTeacher", "FRSKD", "SLASelfDistillation", "DropMax",
           "OnTheFlyNativeEnsemble"]
