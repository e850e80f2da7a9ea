"""The ``softlabels`` command: train | compare | pipeline | study | eval | report | bench | list."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from .errors import ConfigError, SoftlabelsError

EPILOG = """Config overrides are KEY=VALUE pairs with dotted keys, e.g. optim.lr=0.05
model.options.stem=cifar method.options.alpha=0.3 data.label_noise=0.2.
Run `softlabels list` for the registered datasets, models and methods."""


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="softlabels", description="Train and compare image classifiers with soft-label objectives.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1 (default 3)")
    p.add_argument("--seed-list", help="explicit comma-separated seeds (overrides --seeds)")
    p.add_argument("--out", help="comparison folder (default: RUNS/compare-<dataset>-<time>); "
                   "an existing one is continued: finished runs are kept, interrupted ones resumed")
    p.add_argument("--baseline", help="method for the relative error reduction column (default: the first)")
    p.add_argument("--which", choices=["best", "last"], default="best",
                   help="report the epoch chosen on validation (best, default) or the last epoch")
    p.add_argument("--teacher", default="ce",
                   help="method of the teacher run that teacher-based methods get, once per seed (default ce)")
    p.add_argument("--teacher-model", help="model of that teacher run (default: the students' model)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("pipeline", help="run named stages in order (teacher → student, baseline → FocusNet, "
                       "sequential ensembles)", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="pipeline YAML: base config and stages (see docs/pipelines.md)")
    p.add_argument("--out", help="pipeline folder (default: RUNS/pipeline-<file>-<time>); an existing one is "
                   "continued: finished stages are kept, an interrupted one resumed")
    p.add_argument("--seeds", type=int, default=1, help="run the whole pipeline for seeds 0..N-1 (default 1)")
    p.add_argument("--seed-list", help="explicit comma-separated seeds (overrides --seeds)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides applied to every stage")

    p = sub.add_parser("study", help="regenerate a paper table: rows × columns × seeds beside the published "
                       "numbers (see docs/studies.md)", epilog=STUDY_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", nargs="?", help="a study file, or the name of a packaged study (--list shows them)")
    p.add_argument("--data-root", metavar="DIR", help="folder holding the datasets ({data_root} in the study; a column's "
                   "data.root defaults to DIR/<dataset name>)")
    p.add_argument("--seeds", type=int, metavar="N", help="run seeds 0..N-1 (default: the study's seeds)")
    p.add_argument("--rows", help="comma-separated rows to run (slugs or labels; default all)")
    p.add_argument("--columns", help="comma-separated columns to run (default all)")
    p.add_argument("--out", help="study folder (default: runs/studies/<name>, with --smoke <name>-smoke); an "
                   "existing one is continued: finished runs are kept, interrupted ones resumed")
    p.add_argument("--dry-run", action="store_true", help="print the plan, what is missing and an estimated "
                   "time; exit non-zero when something is missing")
    p.add_argument("--smoke", action="store_true", help="synthetic data of each column's shape, 1 epoch, a tiny "
                   "model: checks that the study runs end to end (the numbers mean nothing)")
    p.add_argument("--throughput", type=float, metavar="IMG_PER_S",
                   help="dry run: training images/s to estimate with (default: measured on this machine)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (train.device of every run)")
    p.add_argument("--list", action="store_true", help="list the packaged studies and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("parallel and cluster runs (docs/studies.md, 'Many GPUs, SLURM')")
    g.add_argument("--jobs", type=int, metavar="N", help="run up to N runs at once, each in its own process "
                   "(default: one per --devices GPU; without GPUs N CPU processes sharing the cores); the dry "
                   "run prints the wall time at --jobs N")
    g.add_argument("--devices", metavar="0,1,..", help="GPU indices to run on, one run per GPU (default: all visible)")
    g.add_argument("--launcher", choices=["local", "slurm", "submitit-local"], default="local",
                   help="local processes (default), one SLURM job per run through submitit, or submitit's local "
                   "executor (the SLURM path on this machine)")
    g.add_argument("--partition", help="SLURM partition")
    g.add_argument("--account", help="SLURM account")
    g.add_argument("--time", metavar="HH:MM:SS", help="SLURM time limit per run (default 24:00:00; a column's "
                   "resources.time wins)")
    g.add_argument("--gpus-per-run", type=int, default=1, metavar="N", help="GPUs per run unless its column's "
                   "resources.gpus says otherwise; N > 1 runs under torchrun (DDP)")
    g.add_argument("--mem", metavar="SIZE", help="SLURM memory per run, e.g. 32G")
    g.add_argument("--cpus-per-run", type=int, metavar="N", help="CPUs (threads) per run")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides applied to every run")

    p = sub.add_parser("eval", help="evaluate a run's checkpoint on a split; with --analyses, the papers' analyses",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_analyses_epilog())
    p.add_argument("run_dir", help="a run directory written by train, compare or pipeline")
    p.add_argument("--checkpoint", default="best", help="best (default), last, or epochN for a snapshot")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--analyses", nargs="?", const="default", metavar="A,B,...",
                   help="run analyses (comma-separated names, 'default' or 'all'); results and PNGs go to "
                   "RUN_DIR/eval/<checkpoint>-<split>/")
    p.add_argument("--samples", type=int, default=8, help="number of sample images for top-5 bars and Grad-CAM")
    p.add_argument("--sample-indices", help="explicit comma-separated sample positions in the split")
    p.add_argument("--baseline", help="baseline run directory (analysis baseline)")
    p.add_argument("--members", nargs="+", help="ensemble member run directories (analysis or_maps)")
    p.add_argument("--human-labels", help="CIFAR-10H cifar10h-counts.npy or cifar10h-probs.npy (analysis human)")
    p.add_argument("--max-adversarial", type=int, default=1000, help="test samples attacked (analysis robustness)")

    p = sub.add_parser("report", help="table of one or more runs / comparison folders (mean ± std over seeds)")
    p.add_argument("paths", nargs="+", help="run directories or folders containing them")
    p.add_argument("--which", choices=["best", "last"], default="best")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--baseline", help="method label for the relative error reduction column")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report with the saved "
                   "analyses (run `softlabels eval RUN_DIR --analyses` first) and comparative plots")
    p.add_argument("--title", help="title of the HTML report")

    p = sub.add_parser("bench", help="images/s of the engine's step vs a bare PyTorch loop")
    p.add_argument("--model", default="resnet8")
    p.add_argument("--methods", default="ce,ols", help="engine methods to time (default ce,ols)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=20, help="steps per timed block")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timed blocks per loop")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--json", help="also write the figures to this JSON file")

    p = sub.add_parser("list", help="registered datasets, models and methods")
    p.add_argument("kind", nargs="?", choices=["datasets", "models", "methods"])
    return parser


def cmd_train(args) -> int:
    from .config import build_config, config_from_dict, load_yaml, validate_registered, apply_overrides
    from .engine import Trainer
    from .engine.rundir import default_run_dir
    from .engine.runtime import setup_runtime, teardown_runtime

    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume {run_dir}: no config.yaml there; not a run directory")
        if (run_dir / "final.json").is_file():
            print(f"{run_dir} has already finished (final.json exists); nothing to resume")
            return 0
        data = apply_overrides(load_yaml(str(run_dir / "config.yaml")), _shortcut_overrides(args) + args.overrides)
        cfg = config_from_dict(data)
        validate_registered(cfg)
    else:
        cfg = build_config(args.config, _shortcut_overrides(args) + args.overrides)
        name = f"{cfg.data.name}-{cfg.model.name}-{cfg.method.name.replace('+', '_plus_')}-s{cfg.train.seed}"
        run_dir = Path(args.out) if args.out else default_run_dir(cfg.out_dir, name)
        if (run_dir / "config.yaml").exists():
            raise ConfigError(f"--out {run_dir}: a run already exists there; use --resume {run_dir} to continue it")
    rt = setup_runtime(cfg.train.device)
    bar = None
    if not args.no_progress and rt.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(unit="step", dynamic_ncols=True, file=sys.stderr, mininterval=0.5, desc=cfg.method.name)
    try:
        trainer = Trainer(cfg, run_dir, resume=bool(args.resume), runtime=rt, progress=bar)
        if bar is not None:
            bar.total = cfg.train.epochs * len(trainer.train_loader)
            bar.n = trainer.start_epoch * len(trainer.train_loader)
            bar.refresh()
        final = trainer.fit()
    finally:
        if bar is not None:
            bar.close()
    if rt.is_main:
        _print_final(final, run_dir)
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

    from .compare import plan_runs, run_compare

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise ConfigError("--methods: give at least one method")
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
    run_compare(runs, out, baseline=baseline, which=args.which, show_progress=not args.no_progress,
                teacher_method=args.teacher, teacher_model=args.teacher_model)
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

    from .pipeline import run_pipeline

    if args.out:
        out = Path(args.out)
    else:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"pipeline-{Path(args.file).stem}-{stamp}"
    summary = run_pipeline(args.file, out, _seeds(args), args.overrides, show_progress=not args.no_progress)
    for seed, stages in summary.items():
        print(f"{seed}:")
        for name, brief in stages.items():
            figures = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in brief.items())
            print(f"  {name:<16} {figures}")
    print(f"pipeline folder: {out}")
    return 0


STUDY_EPILOG = """Examples:
  softlabels study --list
  softlabels study fashion-mnist-seeds --data-root /usr/share/datasets --dry-run
  softlabels study cskd-table1 --data-root /data --seeds 1 --rows cross-entropy,cs-kd
  softlabels study studies/my-study.yaml --smoke
  softlabels study cskd-table1 --data-root /data --jobs 8                 # 8 GPUs, one run each
  softlabels study cskd-table1 --data-root /data --launcher slurm --partition gpu --time 12:00:00
Outputs in the study folder: table.md, table.csv, table.tex, table.json, table.png, status.json."""


def cmd_study(args) -> int:
    from .launch import options_from_args
    from .study import (build_table, check_plan, format_dry_run, format_markdown, list_studies, load_study,
                        plan_study, resolve_study, run_plan, study_summary, write_outputs)

    if args.list:
        for name in list_studies():
            print(name)
        return 0
    if not args.study:
        raise ConfigError("study: give a study file or name (softlabels study --list)")
    study = load_study(resolve_study(args.study))
    if args.seeds is not None and args.seeds < 1:
        raise ConfigError(f"--seeds: expected >= 1, got {args.seeds}")
    if args.throughput is not None and not args.throughput > 0:
        raise ConfigError(f"--throughput: expected images/s > 0, got {args.throughput}")
    launch = options_from_args(args)
    out = Path(args.out) if args.out else Path("runs") / "studies" / (study.name + ("-smoke" if args.smoke else ""))
    overrides = list(args.overrides) + ([f"train.device={args.device}"] if args.device else [])
    split = (lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None)
    plan = plan_study(study, out, data_root=args.data_root,
                      seeds=None if args.seeds is None else range(args.seeds),
                      rows=split(args.rows), columns=split(args.columns), smoke=args.smoke, overrides=overrides)
    if args.dry_run:
        chk = check_plan(plan, throughput=args.throughput, device=args.device)
        print(format_dry_run(plan, chk, launch.jobs or (len(launch.devices) if launch.devices else None)), end="")
        if chk.missing:
            raise SoftlabelsError(f"{study.path.name}: {len(chk.missing)} thing(s) missing (listed above); "
                                  f"first: {chk.missing[0]}")
        return 0
    status = run_plan(plan, device=args.device, show_progress=not args.no_progress, launch=launch)
    table = build_table(plan)
    paths = write_outputs(table, status)
    print(format_markdown(table))
    print(f"{study_summary(table)}; table: {paths['md']} (also .csv .tex .json .png)")
    failed = [k for k, v in status.items() if v["status"] in ("failed", "skipped")]
    if failed:
        first = status[failed[0]]
        raise SoftlabelsError(f"study {study.name}: {len(failed)} run(s) did not finish "
                              f"(first: {failed[0]}: {first['error']}); the table marks them missing")
    return 0


def _analyses_epilog() -> str:
    from .evaluate.analyze import ANALYSES

    lines = ["analyses (* = in 'default'):"]
    for a in ANALYSES.values():
        lines.append(f"  {a.name:<12}{'*' if a.default else ' '} {a.description}")
    return "\n".join(lines)


def cmd_eval(args) -> int:
    from .evaluate.run import evaluate_run

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
    from .report.table import aggregate, find_runs, format_table

    runs = find_runs(args.paths)
    metrics = ("top1_error", "top5_error", "nll", "ece")
    rows = aggregate(runs, which=args.which, split=args.split, metrics=metrics)
    print(format_table(rows, metrics, baseline=args.baseline, fmt="markdown" if args.markdown else "text"))
    if args.html:
        from .report.html import render_report

        out = render_report(args.paths, Path(args.html), which=args.which, split=args.split,
                            baseline=args.baseline, title=args.title)
        print(f"HTML report: {out}")
    return 0


def cmd_bench(args) -> int:
    from .bench import format_bench, run_bench

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    res = run_bench(model=args.model, methods=methods, batch_size=args.batch_size, image_size=args.image_size,
                    channels=args.channels, num_classes=args.num_classes, channels_last=args.channels_last,
                    precision=args.precision, compile=args.compile, device=args.device, steps=args.steps,
                    rounds=args.rounds, threads=args.threads)
    print(format_bench(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
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


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SoftlabelsError as exc:
        print(f"softlabels: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("softlabels: interrupted; a run continues from its last epoch with "
              "`softlabels train --resume RUN_DIR` (compare, study: rerun with the same --out)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
