"""Options declared once for a family: model variants (``models.base.register_variant``) and the
file readers' input options (``data.files.file_reader``), both through
``registry.declared_function``. The registry must read them as it reads a plain ``def``."""
import inspect

import pytest
import torch

from softlabels.data import load_dataset
from softlabels.data.files import FileOptions, FileSplit, file_reader
from softlabels.errors import ConfigError
from softlabels.models import build_model
from softlabels.models.base import register_variant
from softlabels.models.resnet import _resnet
from softlabels.registry import DATASETS, MODELS, option_hints

from helpers import expect_config_error


def _params(factory):
    return [(p.name, p.default) for p in inspect.signature(factory).parameters.values()]


def test_variant_options_are_the_family_options_with_its_own_defaults():
    empty = inspect.Parameter.empty
    assert _params(MODELS.get("efficientnet_b2").factory) == [
        ("num_classes", empty), ("in_channels", 3), ("stem", "imagenet"), ("dropout", 0.3),
        ("stochastic_depth", 0.2)]
    assert _params(MODELS.get("efficientnet_b7").factory)[3] == ("dropout", 0.5)
    assert _params(MODELS.get("resnet20").factory) == [("num_classes", empty), ("in_channels", 3),
                                                       ("shortcut", "B")]
    hints = option_hints(MODELS.get("resnet18").factory)
    assert "arch" not in hints and set(hints) == {"num_classes", "in_channels", "stem", "return"}
    densenet = MODELS.get("densenet161").factory
    assert densenet.__name__ == "densenet161" and densenet.__doc__.startswith("drop_rate:")


def test_variant_fixed_arguments_are_not_options():
    expect_config_error(lambda: build_model("resnet18", 10, 3, {"arch": "resnet50"}),
                        "model.options.arch", "unknown option")
    expect_config_error(lambda: build_model("resnet20", 10, 3, {"shortcut": "C"}),
                        "model.options.shortcut", "'B'")
    expect_config_error(lambda: build_model("efficientnet_b0", 10, 3, {"dropout": "high"}),
                        "model.options.dropout")


def test_variant_factory_binds_like_a_def():
    factory = MODELS.get("resnet8").factory
    model = factory(10, 1)  # positional, as a def with that signature
    assert model.conv1.in_channels == 1 and model.head.out_features == 10
    with pytest.raises(TypeError):
        factory(10, depth=20)
    with pytest.raises(TypeError):
        factory()
    # ResNet-10 as the module docstring counts it: 5,418,792 parameters for 1000 classes
    assert sum(p.numel() for p in build_model("resnet10", 1000, 3).parameters()) == 5_418_792


def test_register_variant_refuses_an_option_the_family_lacks():
    with pytest.raises(ValueError, match="no option depth"):
        register_variant("not_registered", "", _resnet, arch="resnet18", depth=3)
    assert "not_registered" not in MODELS


def test_file_reader_adds_the_input_options_in_place():
    assert [n for n, _ in _params(DATASETS.get("flowers102").factory)] == [
        "root", "image_size", "resize", "split", "expect_official", "mean", "std", "train_crop",
        "resize_shape", "cache"]
    defaults = dict(_params(DATASETS.get("cub200").factory))
    assert defaults["image_size"] == 224 and defaults["resize"] == 256 and defaults["cache"] == "auto"
    assert "file_options" not in defaults
    expect_config_error(lambda: load_dataset("cub200", None, {"file_options": {}}),
                        "data.options.file_options", "unknown option")


def test_file_reader_checks_the_input_options_before_reading():
    # no root at all: the option error still comes first, naming the option
    expect_config_error(lambda: load_dataset("mit67", None, {"image_size": 300, "resize": 256}),
                        "data.options.resize")
    expect_config_error(lambda: load_dataset("imagefolder", None, {"train_crop": "center"}),
                        "data.options.train_crop")


def test_file_reader_needs_root_and_file_options():
    def bad(expect_official: bool = True, *, file_options: FileOptions):
        return None

    with pytest.raises(TypeError, match="root first"):
        file_reader(bad)


def test_file_options_dataset_builds_the_image_files():
    opts = FileOptions(image_size=32, resize=40, mean=(0, 0.5, 1), train_crop="resize_random_crop").check()
    given = FileSplit(["c.jpg"], torch.tensor([1]))
    data = opts.dataset((["a.jpg", "b.jpg"], [0, 1]), given, ["x", "y"], val=(["v.jpg"], [1]))
    assert data.train.paths == ["a.jpg", "b.jpg"] and data.train.labels.dtype == torch.long
    assert data.test is given and data.val.paths == ["v.jpg"]
    assert data.mean == (0.0, 0.5, 1.0) and all(isinstance(m, float) for m in data.mean)
    assert (data.image_size, data.resize, data.train_crop, data.cache) == (32, 40, "resize_random_crop", "auto")
    with pytest.raises(ConfigError, match="data.options.std"):
        FileOptions(std=(1, 0, 1)).check()
