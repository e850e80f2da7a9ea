"""Config errors: exit code 2 and one line naming the key and what was expected."""
import pytest
import yaml

from softlabels.cli import main
from softlabels.config import build_config, parse_override
from softlabels.errors import ConfigError


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("override,needle", [
    ("optim.lrr=0.1", "optim.lrr: unknown config key"),
    ("optim.lr=fast", "optim.lr: expected float"),
    ("optim.lr=-1", "optim.lr: expected a value > 0.0"),
    ("data.val_fraction=1.5", "data.val_fraction: expected a value >= 0.0 and < 1.0"),
    ("train.epochs=0", "train.epochs: expected a value >= 1"),
    ("train.precision=fp8", "train.precision: expected one of 'fp32', 'bf16'"),
    ("model.name=resnet9000", "unknown model 'resnet9000'"),
    ("method.name=nope", "unknown method 'nope'"),
    ("method.options.alpah=0.1", "method.options.alpah: unknown option"),
    ("method.options.alpha=x", "method.options.alpha: expected float"),
    ("method.options.single=1", "method.options.single: expected bool"),
    ("method.options.variant=bogus", "method.options.variant: expected one of 'paper'"),
    ("model.options.stem=cifar", "model.options.stem: unknown option"),  # resnet8 has no stem option
    ("data.options.foo=1", "data.options.foo: unknown option"),
    ("schedule.milestones=[a]", "schedule.milestones[0]: expected int"),
    ("bogus=1", "bogus: unknown config key"),
])
def test_bad_override_exits_2_with_one_line(capsys, override, needle):
    code, out, err = run_cli(capsys, "train", "--epochs", "1", "--no-progress", "method.name=ols", override)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("softlabels: error: ")
    assert needle in lines[0], lines[0]


def test_yaml_file_unknown_key(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"optim": {"lr": 0.1, "momentom": 0.9}}))
    code, _, err = run_cli(capsys, "train", "--config", str(p))
    assert code == 2 and "optim.momentom: unknown config key" in err


def test_yaml_file_not_yaml_or_missing(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("optim: [unclosed\n")
    code, _, err = run_cli(capsys, "train", "--config", str(p))
    assert code == 2 and "is not valid YAML" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "train", "--config", str(tmp_path / "missing.yaml"))
    assert code == 2 and "not found" in err


def test_overrides_parse_and_apply():
    cfg = build_config(None, ["optim.lr=0.05", "schedule.milestones=[10, 20]", "model.name=resnet20",
                              "method.name=ols", "method.options.variant=official_fgvc", "train.deterministic=yes"])
    assert cfg.optim.lr == 0.05 and isinstance(cfg.optim.lr, float)
    assert cfg.schedule.milestones == [10, 20]
    assert cfg.method.options == {"variant": "official_fgvc"}
    assert cfg.train.deterministic is True
    assert parse_override("optim.lr=1") == (["optim", "lr"], 1)
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("optim.lr")


def test_int_accepted_for_float_but_not_bool_for_int():
    assert build_config(None, ["optim.lr=1"]).optim.lr == 1.0
    with pytest.raises(ConfigError, match="train.epochs: expected int"):
        build_config(None, ["train.epochs=true"])


def test_composite_method_options_are_per_component():
    cfg = build_config(None, ["method.name=ls+ols", "method.options.ls.epsilon=0.2",
                              "method.options.ols.alpha=0.3", "method.weights.ls=0.5"])
    assert cfg.method.components == ["ls", "ols"]
    with pytest.raises(ConfigError, match="method.options.ols.alpah"):
        build_config(None, ["method.name=ls+ols", "method.options.ols.alpah=0.3"])
    with pytest.raises(ConfigError, match="per component"):
        build_config(None, ["method.name=ls+ols", "method.options.epsilon=0.2"])


def test_missing_data_directory_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--dataset", "cifar10", "--data-root", str(tmp_path / "nowhere"),
                           "--no-progress", "--out", str(tmp_path / "run"))
    assert code != 0 and len(err.strip().splitlines()) == 1 and "nowhere" in err


def test_list_shows_every_registry(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    for word in ("datasets:", "models:", "methods:", "digits", "resnet56", "ols", "Delving Deep"):
        assert word in out


def test_every_method_is_listed_with_its_paper_reference(capsys):
    from softlabels.registry import METHODS

    code, out, _ = run_cli(capsys, "list", "methods")
    assert code == 0
    for entry in METHODS.entries():
        assert entry.reference, f"{entry.name} has no paper reference"
        line = next(l for l in out.splitlines() if l.strip().startswith(entry.name + " "))
        assert f"[{entry.reference}]" in line
    for name in ("maxent", "focal", "sce", "bootstrap_soft", "bootstrap_hard", "disturb_label",
                 "pairwise_confusion", "adacos", "virtual_softmax", "mixup", "mixup_cskd", "cutout", "ddgsd",
                 "kd", "tfkd_self", "tfkd_reg", "byot", "frskd", "sla_sd", "dropmax", "one"):
        assert name in METHODS
