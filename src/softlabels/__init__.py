"""softlabels: training image classifiers with supervision beyond one-hot labels.

``softlabels.load_model(RUN_DIR)`` gives the trained model of a run directory; the losses are
plain functions in ``softlabels.losses``; the methods are modules in ``softlabels.methods``.
"""
__version__ = "0.1.0"

__all__ = ["__version__", "load_model"]


def load_model(run_dir, checkpoint=None, *, device="cpu", logits_only=False):
    """The trained model of a run directory, in eval mode, without loading its dataset.

    run_dir:     a directory written by ``softlabels train``, ``compare``, ``pipeline`` or ``study``.
    checkpoint:  ``"best"``, ``"last"`` or ``"epochN"`` (a snapshot); None: the checkpoint the
                 run's final.json reports as best (the last epoch when there was no validation
                 split), or ``last`` for a run that has not finished.
    device:      where to put the model.
    logits_only: return a module whose forward gives the logits tensor instead of a
                 ``ModelOutput`` (for ``torch.jit.trace``, ONNX, pytorch-grad-cam).

    The model is rebuilt from the run's config.yaml (architecture, method adaptations such as
    AdaCos heads) and its weights read from safetensors; a checkpoint written for another model
    raises ``softlabels.errors.CheckpointError``.
    """
    from .engine.runs import RunDir

    model = RunDir(run_dir).load_model(checkpoint).to(device).eval()
    return model.logits_only() if logits_only else model
