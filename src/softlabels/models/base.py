"""The one output type every backbone returns, and the base class they share."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..registry import MODELS, declared_function, option_hints


@dataclass
class ModelOutput:
    """What a forward pass gives a Method.

    logits:    B×K class scores.
    embedding: B×D penultimate features (after global pooling, before the classifier).
    features:  per-stage feature maps (B×C_l×H_l×W_l, shallow → deep) when the forward was asked
               for them with ``return_features=True``; otherwise None.
    aux:       further outputs a method's own forward adds for itself, e.g. CS-KD's
               ``aux["partner"]`` (the ModelOutput of the class partners). Empty by default.
    """

    logits: torch.Tensor
    embedding: torch.Tensor
    features: Optional[List[torch.Tensor]] = None
    aux: Dict[str, "ModelOutput"] = field(default_factory=dict)

    def detach(self) -> "ModelOutput":
        return ModelOutput(self.logits.detach(), self.embedding.detach(),
                           None if self.features is None else [f.detach() for f in self.features],
                           {k: v.detach() for k, v in self.aux.items()})


# torch.export understands a ModelOutput as a container of tensors, so ``torch.export.export(model,
# (x,))`` works on any registered backbone as it is. TorchScript tracing, ONNX and tools such as
# pytorch-grad-cam want a plain tensor: use ``model.logits_only()``.
torch.export.register_dataclass(ModelOutput, serialized_type_name="softlabels.ModelOutput")


class LogitsOnly(nn.Module):
    """A softlabels model seen as a plain classifier: ``forward(x)`` returns the B×K logits tensor.

    The wrapped model is ``.model`` (its layers stay reachable, e.g. ``.model.layer4`` as a
    Grad-CAM target layer); parameters are shared, not copied."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


class Classifier(nn.Module):
    """Base for every registered backbone.

    Subclasses implement ``forward_features(x) -> (stage_maps, embedding)`` and set
    ``stage_channels`` (channels of each stage map, shallow → deep) and ``embedding_dim``.
    The classifier is always ``self.head``: an ``nn.Linear(embedding_dim, num_classes)`` that
    methods with their own heads (AdaCos, virtual softmax) may replace.

    Extension point: a method may install a submodule named ``extension`` in its
    ``adapt_model`` (e.g. ONE's extra branches and gate). ``forward`` then delegates to it,
    calling ``extension(model, x, return_features)``, which must return the ModelOutput. Being
    a submodule, its parameters are part of the model (state_dict, optimiser, checkpoints,
    ``softlabels eval``). Without one, the forward is unchanged.

    Split-last-stage protocol (optional, duck-typed; the ResNet families implement it) for
    methods that duplicate the last stage:
      ``branch_modules``: names of the submodules applied after the trunk: the last stage, any
          module between pooling and the head, and ``"head"``;
      ``forward_trunk(x)``: the stage maps of every stage but the last (shallow → deep); the
          deepest is the last stage's input;
      ``forward_last(h, modules=None)``: ``(last stage map, embedding)`` from that input, with
          the model's own modules or same-named replacements in the mapping ``modules``;
      ``initialise(module)``: re-initialise a module (e.g. a copy of ``layer4``) the way the
          family initialises its layers at construction.
    ``forward_last(forward_trunk(x)[-1])`` equals ``forward_features(x)``'s last map and
    embedding.
    """

    stage_channels: Sequence[int] = ()
    embedding_dim: int = 0
    # submodules that form the classifier on top of the backbone: they get optim.head_lr
    head_modules: Sequence[str] = ("head",)

    def forward_features(self, x: torch.Tensor):
        """(stage maps shallow → deep, embedding). Families that implement the split-last-stage
        protocol get it from ``forward_trunk`` and ``forward_last``; others override it."""
        trunk = getattr(self, "forward_trunk", None)
        if trunk is None:
            raise NotImplementedError(f"{type(self).__name__} defines neither forward_features nor forward_trunk")
        stages = list(trunk(x))
        last, embedding = self.forward_last(stages[-1])
        return stages + [last], embedding

    def logits_only(self) -> LogitsOnly:
        """This model as a tensor-returning classifier (``torch.jit.trace``, ONNX export,
        pytorch-grad-cam, torchvision-style evaluation code)."""
        return LogitsOnly(self)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> ModelOutput:
        extension = self._modules.get("extension")
        if extension is not None:
            return extension(self, x, return_features)
        stages, embedding = self.forward_features(x)
        logits = self.head(embedding)
        return ModelOutput(logits, embedding, list(stages) if return_features else None)


class EvalMode:
    """Context manager: eval mode for every submodule, each one's own flag restored on exit
    (``model.train(was_training)`` would also flip submodules deliberately kept in another
    mode, e.g. frozen BatchNorm layers)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.modes: list = []

    def __enter__(self):
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        for m, training in self.modes:
            m.training = training
        return False


def reset_initialise(module: nn.Module) -> nn.Module:
    """PyTorch's default initialisation of every layer (``reset_parameters``, BatchNorm running
    statistics included): the ``initialise`` of families whose reference sets no init of its own."""
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return module


def _tv_models():
    """``torchvision.models``, imported on first use: it takes seconds to import, and neither
    ``import softlabels.losses`` nor a run on a non-torchvision backbone should pay for it."""
    import torchvision.models

    return torchvision.models


def register_variant(name: str, description: str, template: Callable[..., Any], doc: Optional[str] = None,
                     **values: Any) -> Callable[..., Any]:
    """Register model ``name`` as a variant of the builder ``template`` and return its factory.

    ``template``'s positional-or-keyword parameters are the variant's options (what
    ``model.options`` may set), declared once for the family; its keyword-only parameters are
    what tells the variants apart (``arch``, ``depth`` …) and are not options. ``values`` gives
    every keyword-only parameter its value and may give an option another default (e.g.
    EfficientNet's ``dropout``). The factory has its own name, ``doc`` as its docstring, and
    the signature the registry reads; it calls ``template(**options, **fixed)``."""
    sig = inspect.signature(template)
    hints = option_hints(template)
    fixed = {n: values.pop(n) for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY}
    params = [p for p in sig.parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    unknown = sorted(set(values) - {p.name for p in params})
    if unknown:
        raise ValueError(f"model variant {name!r}: {template.__name__} has no option {', '.join(unknown)}")
    params = [p.replace(annotation=hints.get(p.name, p.annotation), default=values.get(p.name, p.default))
              for p in params]
    signature = sig.replace(parameters=params, return_annotation=hints.get("return", sig.return_annotation))
    factory = declared_function(lambda **options: template(**options, **fixed), signature,
                                {k: v for k, v in hints.items() if k not in fixed}, name=name, doc=doc,
                                module=template.__module__)
    MODELS.register(name, description)(factory)
    return factory
