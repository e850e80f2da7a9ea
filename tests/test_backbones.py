"""The backbones of the five papers added for issue 12: registration, forward + backward at the
papers' input sizes (reduced for the largest), stage maps and the methods that read them (cd,
orthogonal, byot, frskd, one), parameter counts against published or hand-counted figures,
timm:<name>, and the parameter/FLOP counter written to final.json."""
from __future__ import annotations

import json
import math
import sys

import pytest
import torch
import torchvision
from torch import nn

from helpers import expect_config_error, expect_one_line
from softlabels.config import MethodConfig, build_config
from softlabels.errors import CheckpointError, ConfigError
from softlabels.methods.base import build_objective
from softlabels.models import Classifier, build_model
from softlabels.models.complexity import model_complexity, training_batch
from softlabels.registry import MODELS

NEW_NAMES = {
    "resnet10", "resnet32", "resnet44", "resnet74", "cifar_resnet", "resnet29", "resnet101", "resnet152",
    "resnext29_2x64d", "resnext29_32x4d", "resnext101_32x4d", "vgg16", "densenet_bc", "efficientnet_b7",
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registered_with_one_line_descriptions(capsys):
    from softlabels.cli import main

    assert NEW_NAMES | {"resnet8", "resnet20", "resnet56", "resnet110"} <= set(MODELS.names())
    for entry in MODELS.entries():
        assert entry.description and "\n" not in entry.description
    assert "timm:resnet18" in MODELS and "timm:" not in MODELS
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    for name in NEW_NAMES | {"timm:<name>"}:
        assert f"  {name} " in out, name


# ------------------------------------------------------------------ forward, backward, stage maps

def forward_backward(model: Classifier, size: int, k: int, batch: int = 2):
    """A training-mode forward with stage maps and a backward; returns the stage-map shapes."""
    model.train()
    x = torch.randn(batch, 3, size, size)
    out = model(x, return_features=True)
    assert out.logits.shape == (batch, k) and out.embedding.shape == (batch, model.embedding_dim)
    assert [f.shape[1] for f in out.features] == list(model.stage_channels)
    out.logits.sum().backward()
    assert all(p.grad is not None for p in model.head.parameters())
    return [tuple(f.shape[1:]) for f in out.features]


# name, options, input size (the paper's where a CPU forward is cheap), expected stage maps
CASES = [
    ("resnet10", {}, 224, [(64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)]),   # CS-KD Table 4
    ("resnet32", {}, 32, [(16, 32, 32), (32, 16, 16), (64, 8, 8)]),
    ("resnet74", {}, 32, [(16, 32, 32), (32, 16, 16), (64, 8, 8)]),                    # OLS Table XI
    ("cifar_resnet", {"depth": 44}, 32, [(16, 32, 32), (32, 16, 16), (64, 8, 8)]),
    ("resnet29", {}, 32, [(64, 32, 32), (128, 16, 16), (256, 8, 8)]),                  # OLS Table VIII
    ("resnext29_32x4d", {}, 32, [(256, 32, 32), (512, 16, 16), (1024, 8, 8)]),         # OLS Table II
    ("densenet_bc", {}, 32, [(256, 32, 32), (512, 16, 16), (1024, 8, 8), (1024, 4, 4)]),
    # reduced sizes: VGG-16 at 448 and the 100-layer ResNets at 224 are slow on a CPU
    ("vgg16", {}, 64, [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2)]),
    ("resnet101", {"stem": "cifar"}, 16, [(256, 16, 16), (512, 8, 8), (1024, 4, 4), (2048, 2, 2)]),
    ("resnet152", {}, 64, [(256, 16, 16), (512, 8, 8), (1024, 4, 4), (2048, 2, 2)]),
    ("resnext101_32x4d", {}, 64, [(256, 16, 16), (512, 8, 8), (1024, 4, 4), (2048, 2, 2)]),
]


@pytest.mark.parametrize("name, options, size, maps", CASES, ids=[c[0] for c in CASES])
def test_forward_backward_and_stage_maps(name, options, size, maps):
    torch.manual_seed(0)
    model = build_model(name, 7, 3, options)
    assert forward_backward(model, size, 7) == maps


def test_resnext29_2x64d_at_32():
    model = build_model("resnext29_2x64d", 100, 3)
    assert forward_backward(model, 32, 100) == [(256, 32, 32), (512, 16, 16), (1024, 8, 8)]


def test_cifar_resnet_depth_and_block_options():
    expect_config_error(lambda: build_model("cifar_resnet", 10, 3, {"depth": 21}), "model.options.depth", "6n+2")
    expect_config_error(lambda: build_model("cifar_resnet", 10, 3, {"depth": 32, "bottleneck": True}),
                        "model.options.depth", "9n+2")
    expect_config_error(lambda: build_model("densenet_bc", 10, 3, {"depth": 50}), "model.options.depth")
    m = build_model("cifar_resnet", 10, 3, {"depth": 29, "bottleneck": True})
    assert n_params(m) == n_params(build_model("resnet29", 10, 3))
    m = build_model("cifar_resnet", 10, 1, {"depth": 8, "shortcut": "A"}).eval()
    assert m(torch.randn(2, 1, 28, 28)).logits.shape == (2, 10)


# ------------------------------------------------------------------ the methods reading stage maps

def run_method(model, method: str, options=None, teachers=(), size=32, k=5):
    """One training step of ``method`` on ``model``: forward as the method runs it, teachers,
    loss, backward. Returns the loss terms."""
    obj = build_objective(MethodConfig(name=method, options=dict(options or {})), k)
    obj.adapt_model(model)
    teachers = [t.eval().requires_grad_(False) for t in teachers]
    obj.setup(model, teachers)
    batch = training_batch(obj.requires, [3, size, size], k, "cpu")
    model.train()
    out = obj.forward_batch(model, batch, obj.requires.features)
    with torch.no_grad():
        t_out = [t(batch.x, return_features=obj.requires.features) for t in teachers]
    terms = obj.loss(out, batch, t_out)
    total = sum(terms.values())
    assert torch.isfinite(total)
    total.backward()
    return terms


# (model, options, input size) per family; the ResNet-style ones have the split-last-stage protocol
FAMILIES = [
    ("resnet10", {"stem": "cifar"}, 32, True),
    ("resnet29", {}, 32, True),
    ("resnet20", {}, 32, True),
    ("resnext29_32x4d", {}, 16, True),
    ("densenet_bc", {"depth": 40, "growth_rate": 4}, 32, True),
    ("vgg16", {}, 32, False),
]


@pytest.mark.parametrize("name, options, size, splits", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_methods_reading_stage_maps(name, options, size, splits):
    torch.manual_seed(0)
    build = lambda: build_model(name, 5, 3, options)  # noqa: E731
    assert set(run_method(build(), "cd", teachers=[build()], size=size)) == {"ce", "cd"}
    assert set(run_method(build(), "orthogonal", teachers=[build()], size=size)) == {"ce", "or"}
    assert "hint" in " ".join(run_method(build(), "byot", size=size))
    assert "feat" in run_method(build(), "frskd", size=size)
    if splits:
        model = build()
        assert set(run_method(model, "one", size=size)) == {"ce", "ensemble_ce", "kl"}
        # branch 0 of ONE is the plain model: the protocol reproduces forward_features
        model.eval()
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            maps, emb = model.forward_features(x)
            h = model.forward_trunk(x)
            last, emb2 = model.forward_last(h[-1])
        torch.testing.assert_close(emb, emb2)
        torch.testing.assert_close(maps[-1], last)
    else:
        expect_config_error(lambda: run_method(build(), "one", size=size), "model.name", "one")


def test_cd_official_adapters_resnet152_teacher():
    """CD's teacher is ResNet-152 (JGL); its stage channels differ from a ResNet-10 student's, so
    variant official_cd adds 1x1 adapters, and the paper variant refuses."""
    student = build_model("resnet10", 5, 3)
    teacher = build_model("resnet152", 5, 3)
    assert set(run_method(student, "cd", {"variant": "official_cd"}, [teacher], size=32)) == {"ce", "cd"}
    expect_config_error(lambda: run_method(build_model("resnet10", 5, 3), "cd", teachers=[teacher]),
                        "method.options.variant", "256/512/1024/2048")


# ------------------------------------------------------------------ parameter counts

def cifar_resnet_count(depth: int, k: int, bottleneck: bool) -> int:
    """Hand count of a CIFAR ResNet with projection (B) shortcuts."""
    def conv(i, o, s=3):
        return i * o * s * s

    n = (depth - 2) // (9 if bottleneck else 6)
    total, prev = conv(3, 16) + 32, 16
    for planes in (16, 32, 64):
        out = planes * 4 if bottleneck else planes
        for j in range(n):
            if bottleneck:
                total += conv(prev, planes, 1) + conv(planes, planes) + conv(planes, out, 1) + 2 * (2 * planes + out)
            else:
                total += conv(prev, planes) + conv(planes, planes) + 4 * planes
            if prev != out or (j == 0 and planes != 16):
                total += prev * out + 2 * out
            prev = out
    return total + prev * k + k


def test_cifar_resnet_counts():
    # He et al. 2016, Table 6 (option A): ResNet-32 0.46M, ResNet-44 0.66M
    for depth, paper in ((32, 0.46e6), (44, 0.66e6)):
        count = n_params(build_model(f"resnet{depth}", 10, 3, {"shortcut": "A"}))
        assert abs(count - paper) / paper < 0.02, (depth, count)
    for depth in (20, 32, 74, 110):
        assert n_params(build_model("cifar_resnet", 10, 3, {"depth": depth})) == cifar_resnet_count(depth, 10, False)
    # OLS's ResNet-29: 3 bottleneck blocks per stage (the authors' cifar/models/resnet.py)
    assert n_params(build_model("resnet29", 10, 3)) == cifar_resnet_count(29, 10, True) == 313_114


def resnext29_count(cardinality: int, width: int, k: int) -> int:
    total, prev = 3 * 64 + 2 * 64, 64
    for i in range(3):
        g = cardinality * width * 2 ** i
        out = 2 * g
        for j in range(3):
            total += prev * g + 2 * g + 9 * g * g // cardinality + 2 * g + g * out + 2 * out
            if prev != out or (j == 0 and i > 0):
                total += prev * out + 2 * out
            prev = out
    return total + prev * k + k


def densenet_bc_count(blocks, growth: int, k: int) -> int:
    c = 2 * growth
    total = 3 * c * 9
    for i, n in enumerate(blocks):
        for _ in range(n):
            total += 2 * c + c * 4 * growth + 2 * 4 * growth + 4 * growth * growth * 9
            c += growth
        if i < len(blocks) - 1:
            out = c // 2
            total += 2 * c + c * out
            c = out
    return total + 2 * c + c * k + k


def test_other_counts():
    assert n_params(build_model("resnext29_2x64d", 100, 3)) == resnext29_count(2, 64, 100) == 9_221_028
    assert n_params(build_model("resnext29_32x4d", 100, 3)) == resnext29_count(32, 4, 100) == 4_866_468
    # CS-KD's CIFAR_DenseNet121 (4 blocks 6/12/24/16, k 32) and Huang et al.'s DenseNet-BC
    # (L=100, k=12): 0.8M parameters in their Table 2
    assert n_params(build_model("densenet_bc", 100, 3)) == densenet_bc_count((6, 12, 24, 16), 32, 100) == 7_048_548
    huang = n_params(build_model("densenet_bc", 10, 3, {"depth": 100, "growth_rate": 12}))
    assert huang == densenet_bc_count((16, 16, 16), 12, 10) and abs(huang - 0.8e6) / 0.8e6 < 0.05
    # torchvision documents its ImageNet models' sizes; ResNet-10 = ResNet-18 less one basic
    # block per stage (2·9·w² conv + 4·w BN each)
    tv = torchvision.models
    r18 = tv.ResNet18_Weights.IMAGENET1K_V1.meta["num_params"]
    assert n_params(build_model("resnet10", 1000, 3)) == r18 - sum(18 * w * w + 4 * w for w in (64, 128, 256, 512)) \
        == 5_418_792
    assert n_params(build_model("resnet101", 1000, 3)) == tv.ResNet101_Weights.IMAGENET1K_V1.meta["num_params"]
    assert n_params(build_model("resnet152", 1000, 3)) == tv.ResNet152_Weights.IMAGENET1K_V1.meta["num_params"]
    assert n_params(build_model("resnext101_32x4d", 1000, 3)) == 44_177_704  # timm's resnext101_32x4d
    # KT's VGG-16: vgg16_bn features (torchvision's total less its classifier), their neck, a head
    vgg_total = tv.VGG16_BN_Weights.IMAGENET1K_V1.meta["num_params"]
    features = vgg_total - (25088 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000)
    neck = 2 * 512 + 512 * 4096 + 4096 + 2 * 4096
    assert n_params(build_model("vgg16", 200, 3)) == features + neck + 4096 * 200 + 200 == 17_653_000


def test_efficientnet_b7_count_and_stages():
    model = build_model("efficientnet_b7", 1000, 3)
    assert n_params(model) == torchvision.models.EfficientNet_B7_Weights.IMAGENET1K_V1.meta["num_params"]
    assert model.stage_channels == (32, 48, 80, 224, 2560)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32), return_features=True)
    assert [f.shape[-1] for f in out.features] == [16, 8, 4, 2, 1]


def test_vgg16_trunk_weights(tmp_path):
    # a torchvision vgg16_bn state dict: features.* plus the classifier (here shrunk: its 120M
    # parameters would only slow the test; any classifier shape is skipped as a head)
    from torchvision.models.vgg import cfgs, make_layers

    ref = make_layers(cfgs["D"], batch_norm=True)
    state = {f"features.{k}": v for k, v in ref.state_dict().items()}
    state.update({f"classifier.{i}.{p}": torch.zeros(3, 2) if p == "weight" else torch.zeros(3)
                  for i in (0, 3, 6) for p in ("weight", "bias")})
    path = tmp_path / "vgg16_bn.pth"
    torch.save(state, path)
    with pytest.warns(UserWarning, match="head weights not loaded"):
        model = build_model("vgg16", 5, 3, {"trunk_weights": str(path)})
    torch.testing.assert_close(model.features[0].weight, ref[0].weight)
    assert [n for n, _ in model.features.named_children()] == [str(i) for i in range(len(ref))]
    torch.save({"features.0.weight": torch.zeros(2)}, tmp_path / "bad.pth")
    expect_one_line(CheckpointError, lambda: build_model("vgg16", 5, 3, {"trunk_weights": str(tmp_path / "bad.pth")}),
                    "do not fit")


# ------------------------------------------------------------------ timm:<name>

def test_timm_backbone(tmp_path):
    timm = pytest.importorskip("timm")
    model = build_model("timm:resnet18", 5, 3)
    assert model.stage_channels == tuple(model.body.feature_info.channels()) == (64, 64, 128, 256, 512)
    assert forward_backward(model, 64, 5)[-1] == (512, 2, 2)
    assert "feat" in run_method(build_model("timm:resnet18", 5, 3), "frskd", size=64)
    expect_config_error(lambda: run_method(build_model("timm:resnet18", 5, 3), "one"), "model.name")
    # weights from a local timm checkpoint (the classifier is dropped)
    ref = timm.create_model("resnet18")
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    m = build_model("timm:resnet18", 5, 3, {"pretrained_file": str(tmp_path / "r18.pth"), "out_indices": [2, 3, 4]})
    torch.testing.assert_close(m.body.conv1.weight, ref.conv1.weight)
    assert m.stage_channels == (128, 256, 512)
    expect_one_line(CheckpointError, lambda: build_model("timm:resnet18", 5, 3, {"pretrained_file": str(tmp_path / "no")}),
                    "not found")
    expect_config_error(lambda: build_model("timm:no_such_net", 5, 3), "timm:no_such_net")
    expect_config_error(lambda: build_model("timm:resnet18", 5, 3, {"out_indices": ["a"]}), "out_indices")
    expect_config_error(lambda: build_model("timm:resnet18", 5, 3, {"out_indices": [9]}), "timm:resnet18")
    expect_config_error(lambda: build_model("timm:", 5, 3), "timm:")
    # config validation knows the prefix and checks its options
    cfg = build_config(overrides=["model.name=timm:resnet18", "model.options.drop_path_rate=0.1"])
    assert cfg.model.name == "timm:resnet18"
    expect_config_error(lambda: build_config(overrides=["model.name=timm:resnet18", "model.options.depth=3"]),
                        "model.options.depth", "pretrained_file")
    expect_config_error(lambda: build_config(overrides=["model.name=nosuch"]), "timm:<name>")


def test_timm_absent_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    expect_config_error(lambda: build_model("timm:resnet18", 5, 3), "timm", "pip install")


# ------------------------------------------------------------------ parameters and FLOPs

def test_complexity_counts_and_conventions():
    # FocusNet Tables 4/6 (small-image ResNets at 64×64): 11.27M / 4.46 G and 21.38M / 9.29 G
    for name, params, flops in (("resnet18", 11.27e6, 4.46e9), ("resnet34", 21.38e6, 9.29e9)):
        c = model_complexity(build_model(name, 200, 3, {"stem": "cifar"}), [3, 64, 64])
        assert abs(c["inference"]["params"] - params) / params < 0.005
        assert abs(c["inference"]["flops"] - flops) / flops < 0.01, c
    # the convention by hand: a multiply-add is 2 FLOPs, per image
    net = build_model("lenet5", 10, 1)
    c = model_complexity(net, [1, 28, 28])
    by_hand = 2 * (6 * 28 * 28 * 25 + 16 * 10 * 10 * 6 * 25 + 400 * 120 + 120 * 84 + 84 * 10)
    assert c["inference"]["flops"] == c["training"]["flops"] == by_hand
    assert c["inference"]["params"] == n_params(net) and c["input_shape"] == [1, 28, 28]


def test_complexity_training_includes_what_the_method_runs():
    torch.manual_seed(0)
    student = build_model("resnet20", 10, 3)
    plain = model_complexity(student, [3, 32, 32])["inference"]
    # CS-KD: the partner is a second image per anchor
    obj = build_objective(MethodConfig(name="cskd"), 10)
    c = model_complexity(student, [3, 32, 32], obj)
    assert c["training"] == {"params": plain["params"], "flops": 2 * plain["flops"]}
    # ONE: the extra branches and gate train, the deployed branch-0 model is the plain one
    model = build_model("resnet20", 10, 3)
    obj = build_objective(MethodConfig(name="one"), 10)
    obj.adapt_model(model)
    c = model_complexity(model, [3, 32, 32], obj)
    assert c["inference"] == plain
    assert c["training"]["params"] == n_params(model) > plain["params"]
    # CD: the frozen teacher and the adapters run every step
    teacher = build_model("resnet56", 10, 3).eval()
    obj = build_objective(MethodConfig(name="cd", options={"variant": "official_cd"}), 10)
    obj.setup(student, [teacher])
    c = model_complexity(student, [3, 32, 32], obj, [teacher])
    assert c["training"]["params"] == n_params(student) + n_params(teacher) + n_params(obj)
    t_flops = model_complexity(teacher, [3, 32, 32])["inference"]["flops"]
    assert c["training"]["flops"] > plain["flops"] + t_flops


def test_complexity_leaves_the_run_untouched():
    model = build_model("resnet20", 10, 3)
    obj = build_objective(MethodConfig(name="ols"), 10)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    model_complexity(model, [3, 32, 32], obj)
    assert torch.equal(torch.rand(3), expected)  # the RNG stream is unchanged
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_final_json_has_complexity(tmp_path):
    from softlabels.engine.trainer import Trainer

    cfg = build_config(overrides=["data.name=synthetic", "model.name=resnet8", "method.name=ce",
                                  "data.options.train_size=64", "data.options.test_size=16",
                                  "data.batch_size=32", "train.epochs=1", "train.device=cpu"])
    Trainer(cfg, tmp_path / "run").fit()
    c = json.loads((tmp_path / "run" / "final.json").read_text())["complexity"]
    assert set(c) == {"inference", "training", "input_shape"}
    assert set(c["inference"]) == set(c["training"]) == {"params", "flops"}
    assert all(isinstance(v, int) and v > 0 for part in ("inference", "training") for v in c[part].values())
    assert len(c["input_shape"]) == 3 and math.prod(c["input_shape"]) > 0
