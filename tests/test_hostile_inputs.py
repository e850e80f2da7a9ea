"""Hostile inputs: every user mistake ends in ONE line on stderr and a non-zero exit code.

This module is the place for a new command's or file format's hostile cases:

- ``CLI_CASES``: (argv, expected fragment of the error line, exit code), run through
  ``softlabels.cli.main``; ``{tmp}`` in argv is a fresh temporary folder.
- ``BAD_YAML`` x ``YAML_READERS``: every malformed YAML file against every command that reads
  a YAML file (add a command that reads one to ``YAML_READERS``).
- ``INT_FIELDS`` / ``FLOAT_FIELDS`` are collected from the config dataclasses, so a new config
  key is covered by the NaN / infinity / huge-integer / scientific-notation checks as it lands.
- Data readers (CIFAR official counts, empty class folders), ``report`` over several folders,
  a closed stdout pipe, the progress bar, and the one-line report of a bug.

Exit codes: 1 data/run problem, 2 wrong option/key/value, 70 a bug, 141 closed pipe.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest

from softlabels import cli
from softlabels.cli import main, parse_args
from softlabels.config import (MAX_YAML_BYTES, MAX_YAML_NODES, RunConfig, build_config, load_yaml,
                               load_yaml_text)
from softlabels.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")

HUGE = 10**30


def run(capsys, argv, tmp=None):
    """main(argv) → (exit code, stdout, the one stderr line); asserts one line, no traceback."""
    if tmp is not None:
        argv = [a.replace("{tmp}", str(tmp)) for a in argv]
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) <= 1, err
    return code, out, (lines[0] if lines else "")


def expect_error(capsys, argv, fragment, code, tmp=None):
    got, _, line = run(capsys, argv, tmp)
    assert got == code, (got, line)
    assert line.startswith("softlabels: "), line
    assert fragment in line, line
    return line


# ------------------------------------------------------------------------------ command lines

CLI_CASES = [
    # NaN / infinity, as override, flag and YAML spelling
    (["train", "optim.lr=nan"], "optim.lr: expected a finite number", 2),
    (["train", "optim.lr=.nan"], "optim.lr: expected a finite number", 2),
    (["train", "--lr", "nan"], "optim.lr: expected a finite number", 2),
    (["train", "--lr", "inf"], "optim.lr: expected a finite number", 2),
    (["train", "data.val_fraction=nan"], "data.val_fraction: expected a finite number", 2),
    (["train", "schedule.gamma=-.inf"], "schedule.gamma: expected a finite number", 2),
    (["train", "method.name=ols", "method.options.alpha=.nan"], "method.options.alpha: expected a finite", 2),
    (["train", "method.name=kd+cskd", "method.weights.kd=.inf"], "method.weights.kd: expected a finite", 2),
    (["train", "model.options.width=.inf"], "model.options.width: expected a finite", 2),
    (["train", "data.options.image_size=.nan"], "data.options.image_size: expected a finite", 2),
    # huge integers: a range, never OverflowError
    (["train", f"train.seed={HUGE}"], "train.seed: expected a value >= 0 and <= 2147483647", 2),
    (["train", f"train.threads={HUGE}"], "train.threads: expected a value >= 1 and <= 1024", 2),
    (["train", "--seed", str(HUGE)], "train.seed: expected a value", 2),
    (["train", "--epochs", str(HUGE)], "train.epochs: expected a value", 2),
    (["train", "--batch-size", str(HUGE)], "data.batch_size: expected a value", 2),
    (["train", f"model.options.width={HUGE}"], "model.options.width: expected an integer of at most 64 bits", 2),
    (["train", "train.seed=1" + "0" * 5000], "a value cannot be read", 2),
    (["compare", "--methods", "ce", "--seeds", str(HUGE)], "--seeds: expected an integer from 1 to 10000", 2),
    (["pipeline", "x.yaml", "--seeds", str(HUGE)], "--seeds: expected an integer from 1 to 10000", 2),
    (["compare", "--methods", "ce", "--seed-list", f"0,{HUGE}", "--out", "{tmp}/c"], "train.seed", 2),
    (["bench", "--steps", str(HUGE)], "--steps: expected an integer", 2),
    (["eval", "{tmp}", "--samples", str(HUGE)], "--samples: expected an integer", 2),
    # tags in an override value
    (["train", "optim.lr=!!python/object/apply:os.system [ls]"], "tags such as !!python/object/apply", 2),
    # usage mistakes: one line, not argparse's usage block
    (["train", "--bogus"], "unrecognized arguments: --bogus", 2),
    (["list", "a=b"], "invalid choice", 2),
    (["list", "models", "x=1"], "unrecognized arguments: x=1", 2),
    (["train", "--epochs", "two"], "invalid int value", 2),
    (["compare"], "--methods", 2),
    ([], "COMMAND", 2),
    (["frobnicate"], "invalid choice", 2),
    # files and folders
    (["train", "--config", "{tmp}/missing.yaml"], "not found", 2),
    (["train", "--config", "{tmp}"], "not a file", 2),
    (["report", "{tmp}/nothing"], "no such file or directory", 1),
]


@pytest.mark.parametrize("argv,fragment,code", CLI_CASES, ids=lambda v: " ".join(v)[:60] if isinstance(v, list) else None)
def test_cli_case(capsys, tmp_path, argv, fragment, code):
    expect_error(capsys, argv, fragment, code, tmp_path)


# ------------------------------------------------------------------------- every config number

def _fields(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        ann = hints[f.name]
        if dataclasses.is_dataclass(ann):
            yield from _fields(ann, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", ann, f


def _base(ann):
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    origin = typing.get_origin(ann)
    if origin in (list, typing.List):
        return "list", args[0]
    if origin is typing.Union:
        return "scalar", args[0]
    return "scalar", ann


FIELDS = list(_fields(RunConfig))
INT_FIELDS = [(k, kind) for k, ann, _ in FIELDS for kind, t in [_base(ann)] if t is int]
FLOAT_FIELDS = [(k, f) for k, ann, f in FIELDS if _base(ann) == ("scalar", float)]


def test_the_field_lists_see_the_config():
    assert {"train.seed", "train.threads", "train.epochs", "data.batch_size", "data.workers",
            "schedule.milestones", "train.snapshot_epochs"} <= {k for k, _ in INT_FIELDS}
    assert {"optim.lr", "data.val_fraction", "schedule.warmup_epochs"} <= {k for k, _ in FLOAT_FIELDS}


@pytest.mark.parametrize("key,kind", INT_FIELDS, ids=[k for k, _ in INT_FIELDS])
@pytest.mark.parametrize("value", [HUGE, -HUGE])
def test_every_integer_key_has_a_range(key, kind, value):
    text = f"[{value}]" if kind == "list" else str(value)
    with pytest.raises(ConfigError, match=rf"^{key}(\[0\])?: expected a value >= \d+ and <= \d+, got an integer of 31 digits$"):
        build_config(None, [f"{key}={text}"])


@pytest.mark.parametrize("key", [k for k, _ in FLOAT_FIELDS])
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "nan", "inf", "-Infinity"])
def test_every_float_key_refuses_nan_and_infinity(key, value):
    with pytest.raises(ConfigError, match=rf"^{key}: expected a finite number"):
        build_config(None, [f"{key}={value}"])


@pytest.mark.parametrize("key,field", FLOAT_FIELDS, ids=[k for k, _ in FLOAT_FIELDS])
def test_every_float_key_takes_scientific_notation(key, field):
    value = field.default if field.default not in (None, 0.0) else 0.25
    for text in (f"{value:e}", f"{value:E}".replace("E-0", "E-"), f"{value:.0e}".replace("e-0", "e-")):
        cfg = build_config(None, [f"{key}={text}"])
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
        assert isinstance(node, float) and node == pytest.approx(float(text)), text


def test_scientific_notation_in_files_flags_and_pipelines(tmp_path, capsys):
    from softlabels.pipeline import parse_pipeline, stage_config

    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 5e-4\n  weight_decay: 1E-4\nschedule: {min_lr: 1e-6, gamma: 2.5e+0}\n")
    cfg = build_config(str(f), ["method.name=ols", "method.options.alpha=3e-1"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.schedule.min_lr, cfg.schedule.gamma) == (5e-4, 1e-4, 1e-6, 2.5)
    assert cfg.method.options["alpha"] == 0.3
    args = parse_args(["train", "--lr", "1e-05"])
    assert build_config(None, cli._shortcut_overrides(args)).optim.lr == 1e-5
    p = tmp_path / "p.yaml"
    p.write_text("base: {optim: {lr: 5e-4}}\nstages:\n  - name: a\n    config: {optim: {weight_decay: 2e-4}}\n")
    base, stages = parse_pipeline(load_yaml(str(p)))
    cfg = stage_config(base, stages[0], 0, ["optim.momentum=5e-1"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.momentum) == (5e-4, 2e-4, 0.5)
    # the forms YAML 1.1 already read stay as they were; integers stay integers
    assert load_yaml_text("[10, 0x10, 1_000, 1.5, .5, 1:30, 2026-11-29, 1e, e5, 1.0.0]", "x")[:6] == [
        10, 16, 1000, 1.5, 0.5, 90]
    assert load_yaml_text("[1e, e5, 1.0.0, 1e-3x]", "x") == ["1e", "e5", "1.0.0", "1e-3x"]


# ---------------------------------------------------------------------- overrides anywhere

@pytest.mark.parametrize("argv", [
    ["train", "--epochs", "2", "train.seed=3", "--lr", "0.05", "optim.momentum=0.5", "--no-progress"],
    ["train", "train.seed=3", "--epochs", "2", "optim.momentum=0.5"],
    ["compare", "--methods", "ce,ols", "--seeds", "1", "train.seed=3", "--epochs", "2", "optim.momentum=0.5"],
    ["compare", "--methods", "ce,ols", "train.seed=3", "--seeds", "1", "ols:method.options.alpha=0.3",
     "optim.momentum=0.5"],
    ["pipeline", "p.yaml", "--seeds", "1", "train.seed=3", "optim.momentum=0.5"],
    ["pipeline", "p.yaml", "train.seed=3", "--no-progress", "optim.momentum=0.5", "--seeds", "1"],
])
def test_overrides_are_taken_anywhere_on_the_command_line(argv):
    args = parse_args(argv)
    assert [o for o in args.overrides if not o.startswith("ols:")] == ["train.seed=3", "optim.momentum=0.5"]


def test_overrides_after_flags_reach_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(capsys, ["train", "--dataset", "digits", "--epochs", "1", "--no-progress",
                                "--out", str(out), "model.name=resnet8", "--lr", "1e-2", "train.seed=7",
                                "data.batch_size=256"])
    assert code == 0, err
    cfg = load_yaml(str(out / "config.yaml"))
    assert (cfg["train"]["seed"], cfg["optim"]["lr"], cfg["data"]["batch_size"]) == (7, 0.01, 256)


# --------------------------------------------------------------------------------- YAML files

def _alias_bomb(levels=9, width=10):
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


BAD_YAML = [
    ("not-utf8", "optim: {lr: 0.1}\nname: caf\xe9\n".encode("latin-1"), "not UTF-8 text (byte 0xe9"),
    ("utf16", "optim: {lr: 0.1}\n".encode("utf-16"), "not UTF-8 text"),
    ("binary", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not UTF-8 text"),
    ("nul", b"optim: \x00\n", "character #x0000 at position 7 is not allowed"),
    ("alias-bomb", _alias_bomb().encode(), f"more than {MAX_YAML_NODES:,} values"),
    ("recursive-alias", b"optim: &x {lr: 0.1, again: *x}\n", "recursive YAML is not allowed"),
    ("recursive-list", b"a: &x [1, [2, *x]]\n", "recursive YAML is not allowed"),
    ("too-large", b"# " + b"x" * MAX_YAML_BYTES + b"\n", "larger than 1024 KiB"),
    ("too-deep", b"a: " + b"[" * 3000 + b"]" * 3000 + b"\n", "line 1: nested more than 100 levels deep"),
    ("too-deep-aliases", "".join(f"a{i}: &a{i} [{'*a' + str(i - 1) if i else 1}]\n" for i in range(3000)).encode(),
     "line 98: nested more than 100 levels deep once its aliases"),
    ("python-tag", b"optim: !!python/object/apply:os.system [echo hi]\n", "tags such as !!python/object/apply:os.system are not allowed"),
    ("python-name", b"x: !!python/name:os.system ''\n", "tags such as !!python/name:os.system are not allowed"),
    ("custom-tag", b"optim: !lr {lr: 1}\n", "tags such as !lr are not allowed"),
    ("syntax", b"optim: [unclosed\n", "expected ',' or ']', but got '<stream end>'"),
    ("two-documents", b"a: 1\n---\nb: 2\n", "expected a single document in the stream; but found another document"),
    ("top-level-list", b"- 1\n- 2\n", "expected a mapping at the top level"),
    ("duplicate-key", b"optim: {lr: 0.1}\ntrain: {epochs: 2}\noptim: {momentum: 0.5}\n", "line 3: key 'optim' appears twice"),
    ("bad-date", b"date: 2026-02-30\n", "a value cannot be read (day is out of range for month)"),
    ("long-int", b"train: {seed: 1" + b"0" * 5000 + b"}\n", "a value cannot be read (Exceeds the limit"),
]

# every command that reads a YAML file the user hands it ({file}; {dir} holds it as config.yaml)
YAML_READERS = [
    ["train", "--config", "{file}", "--no-progress"],
    ["compare", "--methods", "ce", "--config", "{file}", "--out", "{dir}/cmp"],
    ["pipeline", "{file}", "--out", "{dir}/pipe"],
    ["train", "--resume", "{dir}"],
    ["eval", "{dir}"],
]


@pytest.mark.parametrize("reader", YAML_READERS, ids=lambda r: r[0] + ("-resume" if "--resume" in r else ""))
@pytest.mark.parametrize("name,content,fragment", BAD_YAML, ids=[c[0] for c in BAD_YAML])
def test_bad_yaml_file_is_one_line(capsys, tmp_path, reader, name, content, fragment):
    f = tmp_path / "config.yaml"
    f.write_bytes(content)
    argv = [a.replace("{file}", str(f)).replace("{dir}", str(tmp_path)) for a in reader]
    line = expect_error(capsys, argv, fragment, 2)
    assert str(f) in line


def test_alias_expansion_under_the_bound_is_fine():
    data = load_yaml_text(_alias_bomb(levels=3, width=10), "x")  # 1 + 10 + 100 + 1000 values
    assert len(data["a2"]) == 10 and data["a2"][0][0] == ["lol"] * 10
    assert load_yaml_text("base: &b {lr: 0.1}\nother:\n  <<: *b\n  wd: 1\n", "x")["other"] == {"lr": 0.1, "wd": 1}


# --------------------------------------------------------------------------------- bad data

def _pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _cifar10(parent: Path, per_batch=2) -> Path:
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        _pickle(folder / f"data_batch_{i}", {b"data": np.zeros((per_batch, 3072), np.uint8),
                                             b"labels": [(i + k) % 10 for k in range(per_batch)]})
    _pickle(folder / "test_batch", {b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, 2]})
    _pickle(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return folder


def _cifar100(parent: Path) -> Path:
    folder = parent / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, n in (("train", 4), ("test", 2)):
        _pickle(folder / split, {b"data": np.zeros((n, 3072), np.uint8),
                                 b"fine_labels": [0, 1, 2, 3][:n], b"coarse_labels": [0, 1, 2, 3][:n]})
    _pickle(folder / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                              b"coarse_label_names": [f"c{i}".encode() for i in range(20)]})
    return folder


@pytest.mark.parametrize("name,make,found,official", [
    ("cifar10", _cifar10, "6 classes, 10 train, 3 test", "10 classes, 50,000 train, 10,000 test"),
    ("cifar100", _cifar100, "4 classes, 4 train, 2 test", "100 classes, 50,000 train, 10,000 test"),
])
def test_cifar_partial_set_is_refused_unless_asked(capsys, tmp_path, name, make, found, official):
    from softlabels.data import load_dataset

    make(tmp_path)
    line = expect_error(capsys, ["train", "--dataset", name, "--data-root", str(tmp_path), "--out",
                                 str(tmp_path / "run")], "expect_official=false", 1)
    assert f"has {found}; the official set has {official}" in line
    assert not (tmp_path / "run").exists()
    d = load_dataset(name, str(tmp_path), {"expect_official": False})
    assert len(d.train) == int(found.split(", ")[1].split()[0])


def _tree(root: Path, splits=("train", "test"), empty=()):
    from PIL import Image

    for split in splits:
        for name in ("cat", "dog"):
            folder = root / split / name
            folder.mkdir(parents=True)
            if (split, name) not in empty:
                Image.new("RGB", (8, 8), (10, 20, 30)).save(folder / "0.png")
    return root


@pytest.mark.parametrize("split", ["train", "test"])
def test_imagefolder_empty_class_folder_is_named(capsys, tmp_path, split):
    from softlabels.data import load_dataset

    root = _tree(tmp_path / "t", empty=[(split, "dog")])
    line = expect_error(capsys, ["train", "--dataset", "imagefolder", "--data-root", str(root)],
                        str(root / split / "dog"), 1)
    assert "allow_empty_classes=true" in line
    d = load_dataset("imagefolder", str(root), {"allow_empty_classes": True})
    assert d.classes == ["cat", "dog"]


def test_imagefolder_val_is_the_test_split_without_test(tmp_path):
    from softlabels.data import load_dataset

    d = load_dataset("imagefolder", str(_tree(tmp_path / "woof", splits=("train", "val"))), None)
    assert d.val is None and len(d.test) == 2 and all("/val/" in p for p in d.test.paths)
    d = load_dataset("imagefolder", str(_tree(tmp_path / "all", splits=("train", "val", "test"))), None)
    assert all("/test/" in p for p in d.test.paths) and all("/val/" in p for p in d.val.paths)
    with pytest.raises(DataError, match="no test folder"):
        load_dataset("imagefolder", str(_tree(tmp_path / "only", splits=("train",))), None)


# ---------------------------------------------------------------------- report over folders

def _final(folder: Path, label: str, seed: int, err: float, dataset="digits"):
    d = folder / label / f"seed{seed}"
    d.mkdir(parents=True)
    block = {"test": {"top1_error": err, "top5_error": 1.0, "nll": 0.5, "ece": 2.0}}
    (d / "final.json").write_text(json.dumps({
        "run": {"method": label, "label": label, "seed": seed, "dataset": dataset, "model": "resnet8"},
        "selection": "val", "last": {"epoch": 2, **block}, "best": {"epoch": 2, **block}}))


def test_report_over_folders_groups_by_folder(capsys, tmp_path):
    a, b = tmp_path / "cmpA", tmp_path / "cmpB"
    for folder, err in ((a, 10.0), (b, 20.0)):
        for seed in (0, 1):
            _final(folder, "ce", seed, err + seed)
    _final(a, "ols", 0, 5.0)
    code, out, err = run(capsys, ["report", str(a), str(b), "--baseline", "cmpA/ce"])
    assert code == 0, err
    rows = {line.split()[0]: line for line in out.splitlines()[2:] if line.strip()}
    assert set(rows) == {"cmpA/ce", "cmpB/ce", "ols"}
    assert "10.50 ± 0.71" in rows["cmpA/ce"] and "20.50 ± 0.71" in rows["cmpB/ce"]
    # pooling them is asked for with --merge; repeated seeds are then named with the way out
    line = expect_error(capsys, ["report", str(a), str(b), "--merge"], "repeat seed 0", 1)
    assert str(a / "ce" / "seed0") in line and str(b / "ce" / "seed0") in line and "--merge" in line
    c = tmp_path / "cmpC"
    _final(c, "ce", 2, 30.0)
    code, out, _ = run(capsys, ["report", str(a), str(c), "--merge"])
    assert code == 0 and any(line.startswith("ce ") and " 3 " in line for line in out.splitlines())


def test_report_folders_with_the_same_name_use_their_paths(capsys, tmp_path):
    a, b = tmp_path / "x" / "cmp", tmp_path / "y" / "cmp"
    _final(a, "ce", 0, 1.0)
    _final(b, "ce", 0, 2.0)
    code, out, _ = run(capsys, ["report", str(a), str(b)])
    assert code == 0 and f"{a}/ce" in out and f"{b}/ce" in out


# ------------------------------------------------------------------ small things a user meets

def _closed_pipe_run(argv):
    """Run the CLI with stdout a pipe whose reader has already gone (`... | head` that quit)."""
    r, w = os.pipe()
    os.close(r)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), OMP_NUM_THREADS="1")
    try:
        proc = subprocess.run([sys.executable, "-m", "softlabels", *argv], stdout=w,
                              stderr=subprocess.PIPE, env=env, timeout=120)
    finally:
        os.close(w)
    return proc.returncode, proc.stderr.decode()


def test_closed_pipe_is_quiet_in_a_real_process():
    code, err = _closed_pipe_run(["list"])
    assert err == "" and code == cli.EXIT_BROKEN_PIPE


class _ClosedPipe:
    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")


@pytest.mark.parametrize("argv", [["list"], ["list", "methods"], ["report", "{tmp}"], ["--help"],
                                  ["train", "--help"]])
def test_closed_pipe_for_every_command_output(monkeypatch, capsys, tmp_path, argv):
    _final(tmp_path, "ce", 0, 1.0)
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert code == cli.EXIT_BROKEN_PIPE
    assert capsys.readouterr().err == ""


def test_no_progress_bar_before_an_error(capsys, tmp_path):
    # progress on (no --no-progress): the run stops loading its data, before any step
    line = expect_error(capsys, ["train", "--dataset", "cifar10", "--data-root", str(tmp_path / "none"),
                                 "--out", str(tmp_path / "run")], "cifar10:", 1)
    assert "it/s" not in line and "step" not in line


def test_progress_bar_appears_on_the_first_step(capsys):
    from softlabels.progress import LazyBar, progress_bar

    assert progress_bar(False) is None
    bar = progress_bar(True, "ce")
    bar.total = 10
    bar.n = 4
    bar.refresh()
    bar.set_description("ce seed 0")
    assert not bar.started and capsys.readouterr().err == ""
    bar.update(1)
    assert bar.started and bar.n == 5 and bar.total == 10
    bar.close()
    err = capsys.readouterr().err
    assert "ce seed 0" in err and "5/10" in err
    quiet = LazyBar()
    quiet.close()
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("debug", ["", "flag", "flag-after", "env"])
def test_a_bug_ends_in_one_line_that_says_so(monkeypatch, capsys, debug):
    def broken(args):
        return {}["missing"]

    monkeypatch.setitem(cli.COMMANDS, "list", broken)
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    argv = {"": ["list"], "flag": ["--debug", "list"], "flag-after": ["list", "--debug"], "env": ["list"]}[debug]
    if debug == "env":
        monkeypatch.setenv(cli.DEBUG_ENV, "1")
    code = main(argv)
    err = capsys.readouterr().err
    assert code == cli.EXIT_BUG not in (0, 1, 2)
    last = err.strip().splitlines()[-1]
    assert last.startswith("softlabels: internal error (a bug") and "KeyError" in last and "--debug" in last
    assert ("Traceback" in err) == bool(debug)
    if not debug:
        assert len(err.strip().splitlines()) == 1


def test_user_errors_and_bugs_have_distinct_exit_codes():
    from softlabels.errors import SoftlabelsError

    codes = {SoftlabelsError.exit_code, ConfigError.exit_code, DataError.exit_code}
    assert cli.EXIT_BUG not in codes and cli.EXIT_BROKEN_PIPE not in codes | {cli.EXIT_BUG, 130}


def test_a_broken_pipe_that_is_not_stdout_is_not_hidden(monkeypatch, capsys):
    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")  # e.g. a data-loader worker died

    monkeypatch.setitem(cli.COMMANDS, "list", broken)
    assert main(["list"]) == cli.EXIT_BUG
    assert "BrokenPipeError" in capsys.readouterr().err


def test_report_the_same_runs_twice_is_not_a_collision(capsys, tmp_path):
    a = tmp_path / "cmp"
    _final(a, "ce", 0, 1.0)
    code, out, _ = run(capsys, ["report", str(a), str(a), str(a / "ce")])
    assert code == 0 and any(line.startswith("ce ") for line in out.splitlines())


RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _header_commands(path: Path):
    """The `softlabels ...` commands a recipe's header comment prints (with continuation lines)."""
    import shlex

    lines = [ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#")]
    i = 0
    while i < len(lines):
        if lines[i].startswith("softlabels "):
            text = lines[i]
            while text.endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text[:-1] + " " + lines[i]
            yield shlex.split(re.sub(r"\s{2,}\(.*\)$", "", text))[1:]  # minus a trailing "  (note)"
        i += 1


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_recipe_headers_parse_as_printed(recipe):
    for argv in _header_commands(recipe):
        args = parse_args(argv)
        written = [a for a in argv if "=" in a and not a.startswith("-")]
        assert list(getattr(args, "overrides", [])) == written, argv


@pytest.mark.parametrize("content,fragment", [
    ("optim: {lr: .nan}\n", "optim.lr: expected a finite number, got nan"),
    ("data: {val_fraction: .inf}\n", "data.val_fraction: expected a finite number, got inf"),
    ("method: {name: ols, options: {alpha: -.inf}}\n", "method.options.alpha: expected a finite number"),
    (f"train: {{seed: {HUGE}}}\n", "train.seed: expected a value >= 0 and <= 2147483647"),
    (f"data: {{options: {{image_size: {HUGE}}}}}\n", "data.options.image_size: expected an integer of at most 64 bits"),
    ('data: {root: "/data/a\\0b"}\n', "data.root: a NUL character is not allowed"),
])
@pytest.mark.parametrize("how", ["config", "resume"])
def test_bad_numbers_in_a_config_file(capsys, tmp_path, content, fragment, how):
    (tmp_path / "config.yaml").write_text(content)
    argv = ["train", "--config", str(tmp_path / "config.yaml")] if how == "config" else \
        ["train", "--resume", str(tmp_path)]
    expect_error(capsys, argv, fragment, 2)


@pytest.mark.parametrize("content,fragment", [
    (b"\xff\xfe\x00garbage", "not UTF-8 text"),
    (b'{"run": {"seed": 0, "label": "x"}, "best": {"test": {"top1_error": "a"}}}', "is not a number: 'a'"),
    (b'{"run": {"seed": 0}}', "missing key 'run.label'"),
    (b'[1, 2]', "expected a JSON object"),
    (b'{"run": {"seed": 0, "label": "x"', "not valid JSON"),
])
def test_report_over_a_damaged_final_json(capsys, tmp_path, content, fragment):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "final.json").write_bytes(content)
    expect_error(capsys, ["report", str(tmp_path)], fragment, 1)


def test_imagefolder_symlink_cycle_is_named_and_a_folder_linked_twice_read_once(capsys, tmp_path):
    from softlabels.data import load_dataset

    root = _tree(tmp_path / "t")
    (root / "train" / "cat" / "loop").symlink_to(root / "train")
    line = expect_error(capsys, ["train", "--dataset", "imagefolder", "--data-root", str(root)],
                        f"{root / 'train' / 'cat' / 'loop'} links back to", 1)
    assert "symbolic-link cycle" in line
    (root / "train" / "cat" / "loop").unlink()
    (root / "train" / "cat" / "more").mkdir()
    (root / "train" / "cat" / "more" / "1.png").write_bytes((root / "train" / "cat" / "0.png").read_bytes())
    (root / "train" / "cat" / "again").symlink_to(root / "train" / "cat" / "more")
    d = load_dataset("imagefolder", str(root), None)
    assert d.train.labels.tolist() == [0, 0, 1]
