"""The ``softlabels`` command: train | compare | pipeline | study | eval | report | bench | list."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

from .errors import ConfigError, SoftlabelsError

EPILOG = """Config overrides are KEY=VALUE pairs with dotted keys, e.g. optim.lr=0.05
model.options.stem=cifar method.options.alpha=0.3 data.label_noise=0.2, anywhere on the
command line (also after options). Run `softlabels list` for the registered datasets, models
and methods."""

# Exit codes: 0 done; 1 a problem with the data, a file or a run (SoftlabelsError); 2 a wrong
# option, key or value (ConfigError, usage); 70 a bug in softlabels (EX_SOFTWARE); 130 Ctrl-C;
# 141 the reader of the output went away (`softlabels list | head`, like SIGPIPE).
EXIT_BUG = 70
EXIT_BROKEN_PIPE = 141
DEBUG_ENV = "SOFTLABELS_DEBUG"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one ``softlabels: error:`` line (exit 2), like any
    other mistake, instead of the usage text and a SystemExit."""

    def error(self, message):
        raise ConfigError(_usage_error(self.prog, message))


def _usage_error(prog: str, message: str) -> str:
    command = prog[len("softlabels"):].strip()
    return f"{command + ': ' if command else ''}{message} (see `{prog} --help`)"


def _int_in(lo: int, hi: int):
    """argparse type: an integer in lo..hi."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text[:40]!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer from {lo} to {hi}, got {text[:40]}")
        return value

    parse.__name__ = "int"
    return parse


def _shortcut_overrides(args) -> List[str]:
    ov = []
    for flag, key in (("dataset", "data.name"), ("data_root", "data.root"), ("model", "model.name"),
                      ("method", "method.name"), ("epochs", "train.epochs"), ("seed", "train.seed"),
                      ("batch_size", "data.batch_size"), ("lr", "optim.lr"), ("device", "train.device")):
        v = getattr(args, flag, None)
        if v is not None:
            ov.append(f"{key}={v}")
    return ov


def _add_common(p: argparse.ArgumentParser, method: bool = True) -> None:
    p.add_argument("--config", "-c", help="YAML config file (keys as in docs/config.md)")
    p.add_argument("--dataset", help="dataset name (data.name)")
    p.add_argument("--data-root", help="dataset directory (data.root)")
    p.add_argument("--model", help="model name (model.name)")
    if method:
        p.add_argument("--method", help="method name, or a sum like kd+cskd (method.name)")
    p.add_argument("--epochs", type=int, help="number of epochs (train.epochs)")
    p.add_argument("--batch-size", type=int, help="global batch size (data.batch_size)")
    p.add_argument("--lr", type=float, help="learning rate (optim.lr)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (train.device)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """The options of the commands that run a plan through the study runner (study, compare,
    pipeline): the dry run and how the runs are executed (launch.LaunchOptions)."""
    p.add_argument("--dry-run", action="store_true", help="print the plan, what is missing and an estimated "
                   "time; exit non-zero when something is missing")
    p.add_argument("--throughput", type=float, metavar="IMG_PER_S",
                   help="dry run: training images/s to estimate with (default: measured on this machine)")
    g = p.add_argument_group("parallel and cluster runs (docs/studies.md, 'Many GPUs, SLURM')")
    g.add_argument("--jobs", type=_int_in(1, 4096), metavar="N", help="run up to N runs at once, each in its own process "
                   "(default: one per --devices GPU; without GPUs N CPU processes sharing the cores; without "
                   "--jobs and --devices, one run after the other in this process); the dry "
                   "run prints the wall time at --jobs N")
    g.add_argument("--devices", metavar="0,1,..", help="GPU indices to run on, one run per GPU (default with --jobs: "
                   "all visible)")
    g.add_argument("--launcher", choices=["local", "slurm", "submitit-local"], default="local",
                   help="local processes (default), one SLURM job per run through submitit, or submitit's local "
                   "executor (the SLURM path on this machine)")
    g.add_argument("--partition", help="SLURM partition")
    g.add_argument("--account", help="SLURM account")
    g.add_argument("--time", metavar="HH:MM:SS", help="SLURM time limit per run (default 24:00:00; a column's "
                   "resources.time wins)")
    g.add_argument("--gpus-per-run", type=_int_in(1, 1024), default=1, metavar="N", help="GPUs per run unless its column's "
                   "resources.gpus says otherwise; N > 1 runs under torchrun (DDP)")
    g.add_argument("--mem", metavar="SIZE", help="SLURM memory per run, e.g. 32G")
    g.add_argument("--cpus-per-run", type=_int_in(1, 4096), metavar="N", help="CPUs (threads) per run")


def _run_or_dry_run(plan, args, run):
    """``--dry-run``: print the plan's check and estimate (exit non-zero when something is
    missing); else ``run(launch options)``: the command's own way of running the plan."""
    from .launch import options_from_args

    if args.throughput is not None and not args.throughput > 0:
        raise ConfigError(f"--throughput: expected images/s > 0, got {args.throughput}")
    launch = options_from_args(args)
    if not args.dry_run:
        return run(launch)
    from .study import check_plan, format_dry_run

    chk = check_plan(plan, throughput=args.throughput, device=getattr(args, "device", None))
    print(format_dry_run(plan, chk, launch.jobs or (len(launch.devices) if launch.devices else None)), end="")
    if chk.missing:
        raise SoftlabelsError(f"{plan.study.name}: {len(chk.missing)} thing(s) missing (listed above); "
                              f"first: {chk.missing[0]}")
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="softlabels", description="Train and compare image classifiers with soft-label objectives.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__

    parser.add_argument("--version", action="version", version=f"softlabels {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help=f"print the Python traceback of an internal error (also {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train one model with one method", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(p)
    p.add_argument("--seed", type=int, help="random seed (train.seed)")
    p.add_argument("--out", help="run directory to create (default: RUNS/<dataset>-<model>-<method>-s<seed>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("compare", help="train several methods over several seeds and print a table",
                       epilog=EPILOG + "\nPrefix an override with METHOD: to apply it to one method only, "
                       "e.g. ols:method.options.alpha=0.3.", formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(p, method=False)
    p.add_argument("--methods", required=True, help="comma-separated methods, e.g. ce,ls,ols or ce,kd+cskd")
    p.add_argument("--seeds", type=_int_in(1, 10_000), default=3, help="number of seeds, 0..N-1 (default 3)")
    p.add_argument("--seed-list", help="explicit comma-separated seeds (overrides --seeds)")
    p.add_argument("--out", help="comparison folder (default: RUNS/compare-<dataset>-<time>); "
                   "an existing one is continued: finished runs are kept, interrupted ones resumed")
    p.add_argument("--baseline", help="method for the relative error reduction column (default: the first)")
    p.add_argument("--which", choices=["best", "last"], default="best",
                   help="report the epoch chosen on validation (best, default) or the last epoch")
    p.add_argument("--teacher", default="ce",
                   help="method of the teacher run that teacher-based methods get, once per seed (default ce)")
    p.add_argument("--teacher-model", help="model of that teacher run (default: the students' model; another model "
                   "keeps the students' model options it accepts); teacher:KEY=VALUE overrides set the teacher's "
                   "own, e.g. teacher:model.options.stem=cifar teacher:model.weights=FILE")
    p.add_argument("--no-progress", action="store_true", help="no progress bar and no line per run")
    _add_run_options(p)

    p = sub.add_parser("pipeline", help="run named stages, each after the stages it needs (teacher → student, "
                       "baseline → FocusNet, sequential ensembles)", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="pipeline YAML: base config and stages (see docs/pipelines.md), or the name of a "
                   "packaged recipe (pipeline-digits-glr_cd)")
    p.add_argument("--out", help="pipeline folder (default: runs/pipeline-<file>-<time>); an existing one is "
                   "continued: finished stages are kept, an interrupted one resumed")
    p.add_argument("--seeds", type=_int_in(1, 10_000), default=1,
                   help="run the whole pipeline for seeds 0..N-1 (default 1)")
    p.add_argument("--seed-list", help="explicit comma-separated seeds (overrides --seeds)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar and no line per run")
    _add_run_options(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides applied to every stage")

    p = sub.add_parser("study", help="regenerate a paper table: rows × columns × seeds beside the published "
                       "numbers (see docs/studies.md)", epilog=STUDY_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", nargs="*", metavar="FILE|NAME [KEY=VALUE ...]",
                   help="a study file, or the name of a packaged study (--list shows them), then dotted overrides "
                   "applied to every run, written after it or after the options: study NAME train.epochs=1 --dry-run")
    p.add_argument("--data-root", metavar="DIR", help="folder holding the datasets ({data_root} in the study; a column's "
                   "data.root defaults to DIR/<dataset name>)")
    p.add_argument("--seeds", type=int, metavar="N", help="run seeds 0..N-1 (default: the study's seeds)")
    p.add_argument("--rows", help="comma-separated rows to run (slugs or labels; default all)")
    p.add_argument("--columns", help="comma-separated columns to run (default all)")
    p.add_argument("--out", help="study folder (default: runs/studies/<name>, with --smoke <name>-smoke); an "
                   "existing one is continued: finished runs are kept, interrupted ones resumed")
    p.add_argument("--smoke", action="store_true", help="synthetic data of each column's shape, 1 epoch, a tiny "
                   "model: checks that the study runs end to end (the numbers mean nothing)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (train.device of every run)")
    p.add_argument("--list", action="store_true", help="list the packaged studies and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_run_options(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides applied to every run")

    p = sub.add_parser("eval", help="evaluate a run's checkpoint on a split; with --analyses, the papers' analyses",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_analyses_epilog())
    p.add_argument("run_dir", nargs="?", help="a run directory written by train, compare or pipeline, or a "
                   "comparison/pipeline/study folder (every run in it, then a table)")
    p.add_argument("--weights", metavar="FILE", help="evaluate a bare weights file instead of a run "
                   "(with --model and --dataset)")
    p.add_argument("--model", help="registered model name for --weights")
    p.add_argument("--dataset", help="evaluate on this dataset (for a run: another than it was trained on; "
                   "the number of classes must match)")
    p.add_argument("--data-root", help="dataset directory for --dataset")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="with --dataset or --weights: data.* (and, for --weights, model.options.*) overrides, "
                   "e.g. --set data.options.image_size=32")
    p.add_argument("--checkpoint", default=None, help="best (default: the checkpoint final.json names as best, "
                   "last for a run without a validation split), last, ema, or epochN for a snapshot")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--analyses", nargs="?", const="default", metavar="A,B,...",
                   help="run analyses (comma-separated names, 'default' or 'all'); results and PNGs go to "
                   "RUN_DIR/eval/<checkpoint>-<split>/")
    p.add_argument("--samples", type=_int_in(1, 10_000), default=8, help="number of sample images for top-5 bars and Grad-CAM")
    p.add_argument("--sample-indices", help="explicit comma-separated sample positions in the split")
    p.add_argument("--baseline", help="baseline run directory (analysis baseline)")
    p.add_argument("--members", nargs="+", help="ensemble member run directories (analysis or_maps)")
    p.add_argument("--human-labels", help="CIFAR-10H cifar10h-counts.npy or cifar10h-probs.npy (analysis human)")
    p.add_argument("--max-adversarial", type=_int_in(1, 10_000_000), default=1000, help="test samples attacked (analysis robustness)")

    p = sub.add_parser("report", help="table of one or more runs / comparison folders (mean ± std over seeds)")
    p.add_argument("paths", nargs="+", help="run directories or folders containing them; a method found in "
                   "several of these folders gets one row per folder, labelled FOLDER/METHOD; a study folder "
                   "(holding table.json) adds its tables to the HTML report")
    p.add_argument("--merge", action="store_true", help="pool runs of the same label across the folders "
                   "(e.g. seeds 0-2 in one folder, 3-4 in another) instead of one row per folder")
    p.add_argument("--which", choices=["best", "last"], default="best")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--baseline", help="method label for the relative error reduction column")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report with the saved "
                   "analyses (run `softlabels eval RUN_DIR --analyses` first) and comparative plots")
    p.add_argument("--title", help="title of the HTML report")
    p.add_argument("--band", choices=["minmax", "std"], default="minmax",
                   help="HTML learning curves: band over seeds from min to max (default) or ± one std")
    p.add_argument("--csv", metavar="FILE", help="also write the table as CSV (the same columns, mean ± std cells)")
    p.add_argument("--latex", metavar="FILE", help="also write the table as a LaTeX tabular")

    p = sub.add_parser("bench", help="the speed goals side by side: engine step, whole epoch, methods, "
                       "file path, CUDA (see docs/benchmarks.md)")
    p.add_argument("--parts", default="engine,formats,epoch,methods,files,cuda",
                   help="comma-separated parts to run (default all): engine, formats, epoch, methods, "
                   "files, cuda")
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                   help="cpu: CPU seconds of this process and its workers (shared machines); wall: wall time")
    p.add_argument("--model", default="resnet8", help="model of the engine, epoch and methods parts")
    p.add_argument("--methods", default="",
                   help="methods of the methods part (default: every registered method)")
    p.add_argument("--batch-size", type=_int_in(1, 2**20), default=128)
    p.add_argument("--image-size", type=_int_in(1, 4096), default=28, help="image side of the engine part")
    p.add_argument("--channels", type=_int_in(1, 64), default=1, help="image channels of the engine part")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels-last memory format in the engine part (default on)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=_int_in(1, 1_000_000), default=5, help="steps per timed block (engine, methods)")
    p.add_argument("--rounds", type=_int_in(1, 10_000), default=3, help="interleaved timed rounds per comparison")
    p.add_argument("--epoch-images", type=_int_in(1, 10_000_000), default=2048, help="images of the epoch part")
    p.add_argument("--workers", type=_int_in(0, 1024), default=2, help="DataLoader workers of the authors'-shape loop")
    p.add_argument("--files", type=_int_in(1, 1_000_000), default=256, help="JPEGs written for the files part")
    p.add_argument("--threads", type=_int_in(0, 1024), default=0, help="torch threads (0: leave as is)")
    p.add_argument("--json", help="also write the figures to this JSON file")

    p = sub.add_parser("list", help="registered datasets, models and methods")
    p.add_argument("kind", nargs="?", choices=["datasets", "models", "methods"])
    for p in sub.choices.values():  # --debug after the command name works too
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help=f"print the Python traceback of an internal error (also {DEBUG_ENV}=1)")
    return parser


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse the command line; KEY=VALUE overrides may come anywhere, also after options
    (argparse alone takes them only in one block)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    unknown = [a for a in extra if a not in overrides]
    if overrides and not hasattr(args, "overrides"):
        unknown = extra
    if unknown:
        raise ConfigError(_usage_error(f"softlabels {args.command}", f"unrecognized arguments: {' '.join(unknown)}"))
    if overrides:
        args.overrides = list(args.overrides) + overrides
    return args


def cmd_train(args) -> int:
    from .config import apply_overrides, build_config, config_from_dict, validate_registered
    from .engine.rundir import default_run_dir
    from .engine.runs import RunDir, RunState, check_same_run, progress_bar
    from .engine.runtime import setup_runtime, teardown_runtime

    if args.resume:
        rd = RunDir(args.resume)
        recorded = rd.config()  # one line when it is not a run directory or damaged
        data = apply_overrides(recorded.to_dict(), _shortcut_overrides(args) + args.overrides)
        cfg = config_from_dict(data)
        validate_registered(cfg)
        check_same_run(recorded, cfg, rd.path, rd.done_epochs())
        if rd.state() is RunState.FINISHED and cfg.train.epochs <= recorded.train.epochs:
            print(f"{rd.path} has already finished (final.json exists); nothing to resume "
                  f"(give train.epochs=N above {recorded.train.epochs} to extend it)")
            return 0
    else:
        cfg = build_config(args.config, _shortcut_overrides(args) + args.overrides)
        name = f"{cfg.data.name}-{cfg.model.name}-{cfg.method.name.replace('+', '_plus_')}-s{cfg.train.seed}"
        rd = RunDir(Path(args.out) if args.out else default_run_dir(cfg.out_dir, name))
        # an existing run there is refused by rd.train(mode="new"), after the owner check of its lock
    rt = setup_runtime(cfg.train.device)
    bar = progress_bar(not args.no_progress and rt.is_main, cfg.method.name)
    try:
        final = rd.train(cfg, rt, progress=bar, mode="resume" if args.resume else "new")
    finally:
        if bar is not None:
            bar.close()
    if rt.is_main:
        _print_final(final, rd.path)
    teardown_runtime(rt)
    return 0


def _print_final(final: dict, run_dir: Path) -> None:
    def fmt(block):
        t = block["test"]
        return (f"top-1 err {t['top1_error']:.2f}%  top-5 err {t['top5_error']:.2f}%  "
                f"NLL {t['nll']:.3f}  ECE {t['ece']:.2f}%")

    print(f"last epoch {final['last']['epoch']}: test {fmt(final['last'])}")
    print(f"best epoch {final['best']['epoch']} ({final['selection']}): test {fmt(final['best'])}")
    print(f"run directory: {run_dir}")


def cmd_compare(args) -> int:
    import datetime as _dt

    from .compare import plan_compare, plan_runs, run_compare, teacher_overrides

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise ConfigError("--methods: give at least one method")
    for m in methods:
        if not all(part.replace("_", "").isalnum() for part in m.split("+")):
            raise ConfigError(f"--methods: {m!r} is not a method name (softlabels list methods)")
    seeds = _seeds(args)
    runs = plan_runs(methods, seeds, args.config, _shortcut_overrides(args) + args.overrides)
    if args.out:
        out = Path(args.out)
    else:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path(runs[0].out_dir) / f"compare-{runs[0].data.name}-{stamp}"
    baseline = args.baseline or methods[0]
    if baseline not in methods:
        raise ConfigError(f"--baseline {baseline}: not one of the compared methods")
    rules = dict(which=args.which, teacher_method=args.teacher, teacher_model=args.teacher_model,
                 teacher_overrides=teacher_overrides(args.overrides))
    planned = plan_compare(runs, out, **rules)
    try:
        _run_or_dry_run(planned[0], args, lambda launch: run_compare(
            runs, out, baseline=baseline, show_progress=not args.no_progress, launch=launch, planned=planned, **rules))
    except KeyboardInterrupt as exc:
        exc.resume_hint = f"rerun the same command with --out {out}"
        raise
    return 0


def _seeds(args) -> List[int]:
    if args.seed_list:
        try:
            return [int(s) for s in args.seed_list.split(",")]
        except ValueError:
            raise ConfigError(f"--seed-list: expected comma-separated integers, got {args.seed_list!r}") from None
    if args.seeds < 1:
        raise ConfigError(f"--seeds: expected >= 1, got {args.seeds}")
    return list(range(args.seeds))


def cmd_pipeline(args) -> int:
    import datetime as _dt

    from .pipeline import plan_pipeline, run_pipeline

    if args.out:
        out = Path(args.out)
    else:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"pipeline-{Path(args.file).stem}-{stamp}"
    seeds = _seeds(args)
    planned = plan_pipeline(args.file, out, seeds, args.overrides)
    try:
        summary = _run_or_dry_run(planned[0], args, lambda launch: run_pipeline(
            args.file, out, seeds, args.overrides, show_progress=not args.no_progress, launch=launch,
            planned=planned))
    except KeyboardInterrupt as exc:
        exc.resume_hint = f"rerun the same command with --out {out}"
        raise
    if summary is None:  # --dry-run
        return 0
    for seed, stages in summary.items():
        print(f"{seed}:")
        for name, brief in stages.items():
            figures = ", ".join(f"{k} {_figure(v)}" for k, v in brief.items())
            print(f"  {name:<16} {figures}")
    print(f"pipeline folder: {out}")
    return 0


def _figure(v) -> str:
    """A pipeline summary's figure: errors with 2 decimals (lists of them too)."""
    if isinstance(v, list):
        return "[" + ", ".join(map(_figure, v)) + "]"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


STUDY_EPILOG = """Examples:
  softlabels study --list
  softlabels study fashion-mnist-seeds --data-root /usr/share/datasets --dry-run
  softlabels study cskd-table1 --data-root /data --seeds 1 --rows cross-entropy,cs-kd
  softlabels study studies/my-study.yaml --smoke
  softlabels study cskd-table1 --data-root /data --jobs 8                 # 8 GPUs, one run each
  softlabels study cskd-table1 --data-root /data --launcher slurm --partition gpu --time 12:00:00
Outputs in the study folder: table.md, table.csv, table.tex, table.json, table.png, status.json."""


def cmd_study(args) -> int:
    from .study import (build_table, format_markdown, list_studies, load_study, plan_failure, plan_study,
                        resolve_study, run_plan, study_summary, write_outputs)

    if args.list:
        for name in list_studies():
            print(name)
        return 0
    # one positional list (argparse cannot take a second one after options): FILE|NAME KEY=VALUE...
    if not args.study or "=" in args.study[0]:
        raise ConfigError("study: give a study file or name first (softlabels study --list)")
    study = load_study(resolve_study(args.study[0]))
    args.overrides = args.study[1:] + list(args.overrides or [])  # those after the options land in the second list
    if args.seeds is not None and args.seeds < 1:
        raise ConfigError(f"--seeds: expected >= 1, got {args.seeds}")
    out = Path(args.out) if args.out else Path("runs") / "studies" / (study.name + ("-smoke" if args.smoke else ""))
    overrides = list(args.overrides) + ([f"train.device={args.device}"] if args.device else [])
    split = (lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None)
    plan = plan_study(study, out, data_root=args.data_root,
                      seeds=None if args.seeds is None else range(args.seeds),
                      rows=split(args.rows), columns=split(args.columns), smoke=args.smoke, overrides=overrides)
    status = _run_or_dry_run(plan, args, lambda launch: run_plan(plan, device=args.device,
                                                                  show_progress=not args.no_progress, launch=launch))
    if status is None:  # --dry-run
        return 0
    table = build_table(plan)
    paths = write_outputs(table, status)
    print(format_markdown(table))
    print(f"{study_summary(table)}; table: {paths['md']} (also .csv .tex .json .png)")
    failure = plan_failure(status, f"study {study.name}")
    if failure is not None:
        raise SoftlabelsError(f"{failure}; the table marks them missing")
    if table.errors:  # a metric of finished runs could not be computed (a missing human-labels file, ...)
        raise SoftlabelsError(f"study {study.name}: {len(table.errors)} metric value(s) missing: {table.errors[0]}")
    return 0


def _analyses_epilog() -> str:
    from .evaluate.analyze import ANALYSES

    lines = ["analyses (* = in 'default'):"]
    for a in ANALYSES.values():
        lines.append(f"  {a.name:<12}{'*' if a.default else ' '} {a.description}")
    return "\n".join(lines)


def _eval_more(args) -> Optional[int]:
    """eval of a bare weights file, on another dataset, or of every run in a folder; None: a
    plain run directory, handled by cmd_eval."""
    from .evaluate import run as ev

    def show(metrics):
        for k, v in metrics.items():
            print(f"{k:>16}: {v:.4f}" if isinstance(v, float) else f"{k:>16}: {v}")

    if args.weights:
        if args.run_dir or not (args.model and args.dataset):
            raise ConfigError("--weights FILE needs --model NAME and --dataset NAME, and no run directory")
        show(ev.evaluate_weights(args.weights, args.model, args.dataset, data_root=args.data_root,
                                 overrides=args.set, split=args.split, device=args.device))
        return 0
    if not args.run_dir:
        raise ConfigError("give a run directory, a folder of runs, or --weights FILE --model NAME --dataset NAME")
    if args.model or (args.set and not args.dataset) or (args.data_root and not args.dataset):
        raise ConfigError("--model goes with --weights; --data-root and --set go with --dataset or --weights")
    path = Path(args.run_dir)
    if path.is_dir() and not (path / "config.yaml").is_file():
        if args.analyses:
            raise ConfigError(f"{path}: --analyses takes one run directory, not a folder of runs")
        results = ev.evaluate_folder(path, checkpoint=args.checkpoint, split=args.split, device=args.device,
                                     dataset=args.dataset, data_root=args.data_root, overrides=args.set)
        print(ev.folder_table(results))
        return 0
    if args.dataset:
        if args.analyses:
            raise ConfigError("--analyses runs on the run's own dataset; drop --dataset")
        show(ev.evaluate_run_on(path, args.dataset, data_root=args.data_root, overrides=args.set,
                                checkpoint=args.checkpoint, split=args.split, device=args.device))
        return 0
    return None


def cmd_eval(args) -> int:
    from .evaluate.run import evaluate_run

    done = _eval_more(args)
    if done is not None:
        return done

    if args.analyses:
        from .evaluate.analyze import analyze_run

        names = None if args.analyses == "default" else [a.strip() for a in args.analyses.split(",") if a.strip()]
        indices = None
        if args.sample_indices:
            try:
                indices = [int(i) for i in args.sample_indices.split(",")]
            except ValueError:
                raise ConfigError(f"--sample-indices: expected comma-separated integers, got {args.sample_indices!r}") from None
        out = analyze_run(Path(args.run_dir), names, checkpoint=args.checkpoint, split=args.split,
                          samples=args.samples, sample_indices=indices, device=args.device,
                          baseline=args.baseline, members=args.members, human_labels=args.human_labels,
                          max_adversarial=args.max_adversarial)
        print(f"analyses written to {out}")
        return 0
    metrics = evaluate_run(Path(args.run_dir), args.checkpoint, args.split, args.device)
    for k, v in metrics.items():
        print(f"{k:>16}: {v:.4f}" if isinstance(v, float) else f"{k:>16}: {v}")
    return 0


def cmd_report(args) -> int:
    from .report.html import split_study_paths
    from .report.table import aggregate, find_runs, folder_labels, format_table

    run_paths, studies = split_study_paths(args.paths)  # a study folder's tables: softlabels study, --html
    for folder, _ in studies:
        print(f"{folder}: a study folder; its tables are {folder}/table.md, .csv, .tex (and the HTML report)")
    runs = find_runs(run_paths, ensembles=True) if run_paths or not studies else []  # ensemble evaluations too
    labels = None if args.merge or not run_paths else folder_labels(run_paths)
    metrics = ("top1_error", "top5_error", "nll", "ece")
    rows = aggregate(runs, which=args.which, split=args.split, metrics=metrics, labels=labels)
    if rows:
        print(format_table(rows, metrics, baseline=args.baseline, fmt="markdown" if args.markdown else "text"))
    for fmt, file in (("csv", args.csv), ("latex", args.latex)):
        if file:
            from .report.table import write_table

            if not rows:
                raise ConfigError(f"--{fmt}: no runs to tabulate (a study folder has its own table.{'csv' if fmt == 'csv' else 'tex'})")

            out = write_table(format_table(rows, metrics, baseline=args.baseline, fmt=fmt), file, f"{fmt} table")
            print(f"{'CSV' if fmt == 'csv' else 'LaTeX'} table: {out}")
    if args.html:
        from .report.html import render_report

        out = render_report(args.paths, Path(args.html), which=args.which, split=args.split,
                            baseline=args.baseline, title=args.title, band=args.band, labels=labels)
        print(f"HTML report: {out}")
    return 0


def cmd_bench(args) -> int:
    import torch

    from .bench import format_suite, run_suite

    if args.threads:
        torch.set_num_threads(args.threads)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] or None
    res = run_suite(parts, clock=args.clock, rounds=args.rounds, steps=args.steps, device=args.device,
                    model=args.model, batch_size=args.batch_size, image_size=args.image_size,
                    channels=args.channels, channels_last=args.channels_last, precision=args.precision,
                    compile=args.compile, epoch_images=args.epoch_images, workers=args.workers,
                    files=args.files, methods=methods, progress=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_suite(res))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    return 0


def cmd_list(args) -> int:
    from . import data, methods, models  # noqa: F401  (registration)
    from .registry import DATASETS, METHODS, MODELS

    kinds = {"datasets": DATASETS, "models": MODELS, "methods": METHODS}
    for kind, reg in kinds.items():
        if args.kind and args.kind != kind:
            continue
        print(f"{kind}:")
        width = max(len(n) for n in reg.names())
        for e in reg.entries():
            ref = f"  [{e.reference}]" if e.reference else ""
            print(f"  {e.name:<{width}}  {e.description}{ref}")
    return 0


COMMANDS = {"train": cmd_train, "compare": cmd_compare, "pipeline": cmd_pipeline, "study": cmd_study,
            "eval": cmd_eval, "report": cmd_report,
            "bench": cmd_bench, "list": cmd_list}


TRAINING_COMMANDS = ("train", "compare", "pipeline", "study")


def main(argv: Optional[List[str]] = None) -> int:
    """Run one command; every way it can end is one line on stderr and an exit code (see the
    EXIT_* constants): a user's mistake, an interrupt, a closed pipe, or a bug."""
    import contextlib

    debug = bool(os.environ.get(DEBUG_ENV))
    try:
        args = parse_args(argv)
        debug = debug or args.debug
        guard = contextlib.nullcontext()
        if args.command in TRAINING_COMMANDS:  # SIGTERM ends like Ctrl-C: one line, saves never cut
            from .engine.runtime import stop_on_signals

            guard = stop_on_signals()
        with guard:
            code = COMMANDS[args.command](args)
            sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
        return code
    except SoftlabelsError as exc:
        rank = _rank()
        print(f"softlabels: error: {'' if rank is None else f'rank {rank}: '}{exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        return _interrupted(exc)
    except BrokenPipeError as exc:
        if _stdout_gone():
            _silence_stdout()
            return EXIT_BROKEN_PIPE
        return _bug(exc, debug)  # another pipe (a worker, a socket): not the reader of our output
    except SystemExit:  # --help: argparse printed it; a closed pipe shows up at the flush
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _silence_stdout()
            return EXIT_BROKEN_PIPE
        raise
    except Exception as exc:  # noqa: BLE001  (the last resort: a bug, reported as one)
        if _rank() is not None:
            from .engine.runtime import is_dist_failure

            if is_dist_failure(exc):  # the process group's own failures: one line per rank
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                print(f"softlabels: error: rank {_rank()}: stopped: another rank failed or the process group "
                      f"broke ({first})", file=sys.stderr)
                return 1
        return _bug(exc, debug)


def _rank() -> Optional[str]:
    """This process's rank when it is one of several (torchrun sets WORLD_SIZE and RANK)."""
    world = os.environ.get("WORLD_SIZE", "1")
    return os.environ.get("RANK") if world.isdigit() and int(world) > 1 else None


def _interrupted(exc: KeyboardInterrupt) -> int:
    """Ctrl-C or SIGTERM: one line with the run directory and how to continue; 130 / 143."""
    import signal

    signum = getattr(exc, "signum", signal.SIGINT)
    run_dir = getattr(exc, "run_dir", None)
    hint = getattr(exc, "resume_hint", None)
    if hint is None and run_dir is not None:
        hint = f"continue it with `softlabels train --resume {run_dir}`"
    where = f" while training {run_dir}" if run_dir is not None else ""
    print(f"softlabels: interrupted by {signal.Signals(signum).name}{where}; finished epochs are kept"
          + (f"; {hint}" if hint else ""), file=sys.stderr)
    return 128 + int(signum)


def _bug(exc: BaseException, debug: bool) -> int:
    if debug:
        import traceback

        traceback.print_exception(exc)
    print(f"softlabels: internal error (a bug in softlabels, not in your input): "
          f"{type(exc).__name__}: {_first_line(exc)}; please report it with the command line "
          f"and the traceback that --debug (or {DEBUG_ENV}=1) prints", file=sys.stderr)
    return EXIT_BUG


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has gone (its flush fails, or poll says so)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return True
    except (OSError, ValueError):
        pass
    try:
        import select

        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no real file descriptor: cannot tell
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else "(no message)"


def _silence_stdout() -> None:
    """The reader went away: point stdout at /dev/null so Python's final flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (e.g. captured in tests)
        pass


if __name__ == "__main__":
    sys.exit(main())
