"""Every loss as a plain function, for use in your own training loop.

The Method classes in ``softlabels.methods`` wrap these; the functions hold the math, and all of
them are built on the functional core ``softlabels.methods.functional`` (re-exported here:
``upcast``, ``cross_entropy``, ``soft_cross_entropy``, ``tempered_kl``, ``target_kl``,
``entropy``, ``masked_mean``, and the mixed-label helpers ``record_mix``, ``targets_of``,
``label_terms``, ``mix_terms``, ``dominant_labels``). Every loss computes in at least float32 whatever its input dtype.
"""
from .methods.augmentation import (apply_cutmix, apply_cutout, cutmix_box, cutmix_lambda, cutout_mask, ddgsd_kl,
                                   ddgsd_loss, linear_mmd, logit_mse, mix, mixup_cskd_loss, mixup_loss,
                                   sample_cutmix, sample_cutout_centres, sample_mixup)
from .methods.byot import byot_classifier_loss, byot_hint, byot_loss, byot_official_loss
from .methods.ce import label_smoothing_loss
from .methods.functional import (cross_entropy, dominant_labels, entropy, label_terms, masked_mean, mix_terms,
                                 record_mix, soft_cross_entropy, target_kl, targets_of, tempered_kl, upcast)
from .methods.cskd import cskd_e_loss, cskd_kl, cskd_loss
from .methods.dropmax import (dropmax_aux, dropmax_ce, dropmax_kl, dropmax_logits, dropmax_loss,
                               dropmax_neg_entropy, dropmax_posterior_logits, sample_retain_mask)
from .methods.focusnet import focus_picking_loss, multi_warm_labels, reweighted_log_probs
from .methods.frskd import attention_transfer_loss, frskd_loss
from .methods.heads import (adacos_dynamic_scale, adacos_initial_scale, cosine_logits, virtual_softmax_logits,
                            virtual_softmax_loss)
from .methods.jgl import (channel_distillation_loss, glr_loss, guided_kd_loss, label_refinery_loss,
                          official_cd_weights)
from .methods.kd import kd_kl, kd_loss
from .methods.ols import ols_accumulate, ols_loss, ols_soft_labels
from .methods.one import one_ensemble_logits, one_kl, one_loss
from .methods.orthogonal import attention_map, dynamic_or_weight, orthogonal_loss, standardize_map
from .methods.regularizers import (bootstrap_hard_loss, bootstrap_hard_targets, bootstrap_soft_loss,
                                   bootstrap_soft_targets, confidence_penalty, disturb_labels,
                                   focal_loss, maxent_loss, pairwise_confusion, pairwise_confusion_loss,
                                   reverse_cross_entropy, sce_loss)
from .methods.sla import aggregate_joint_logits, joint_labels, rotations, sla_joint_ce, sla_sd_kl, sla_sd_loss
from .methods.tfkd import (soften_distribution, tfkd_reg_kl, tfkd_reg_loss, tfkd_self_kl, tfkd_self_loss,
                           virtual_teacher_distribution)

__all__ = [name for name in dir() if not name.startswith("_") and name != "methods"]
