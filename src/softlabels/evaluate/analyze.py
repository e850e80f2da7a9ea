"""``softlabels eval RUN_DIR --analyses ...``: every analysis the five papers use, on one run.

Each analysis is registered by name and receives one ``Context`` (the run's model, the split's
logits, labels and embeddings gathered in a single pass, the chosen sample images); it returns
JSON-ready results and matplotlib figures. Results go to ``RUN_DIR/eval/<checkpoint>-<split>/``
as ``analyses.json`` plus one PNG per figure; ``softlabels report --html`` embeds them.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from ..errors import ConfigError, DataError

ANALYSES: Dict[str, "Analysis"] = {}


class NotApplicable(ConfigError):
    """An analysis lacks its input (no baseline given, no label noise, …). Named explicitly, it
    is an error; as part of ``all`` it is skipped and the reason recorded."""


@dataclass
class Analysis:
    name: str
    fn: Callable
    description: str
    default: bool


def analysis(name: str, description: str, default: bool = True):
    def deco(fn):
        ANALYSES[name] = Analysis(name, fn, description, default)
        return fn
    return deco


@dataclass
class Context:
    run_dir: Path
    cfg: object
    data: object
    model: torch.nn.Module
    device: torch.device
    loader: object
    logits: torch.Tensor
    labels: torch.Tensor
    embeddings: torch.Tensor
    sample_index: torch.Tensor
    sample_images: torch.Tensor
    options: dict = field(default_factory=dict)

    @property
    def class_names(self) -> List[str]:
        return list(self.data.dataset.classes)

    @property
    def mean(self):
        return self.data.dataset.mean

    @property
    def std(self):
        return self.data.dataset.std


# ------------------------------------------------------------------------------------ analyses
@analysis("calibration", "top-1/top-5 error, NLL, ECE (20 bins), reliability diagram, confidence histogram")
def _calibration(ctx: Context):
    from . import plots, predictions
    from .metrics import classification_metrics

    rel = predictions.reliability(ctx.logits, ctx.labels, bins=20)
    hist = predictions.confidence_histogram(ctx.logits, ctx.labels, bins=20)
    res = {"metrics": classification_metrics(ctx.logits, ctx.labels, len(ctx.class_names)),
           "reliability": rel, "confidence_histogram": hist}
    return res, {"reliability": plots.plot_reliability(rel), "confidence": plots.plot_confidence_histogram(hist)}


@analysis("perclass", "macro and per-class precision/recall/F1, confusion matrix, most-confused pairs")
def _perclass(ctx: Context):
    from . import plots, predictions
    from .metrics import confusion_matrix, per_class_precision_recall_f1

    k = len(ctx.class_names)
    pred = ctx.logits.argmax(1)
    p, r, f1 = per_class_precision_recall_f1(pred, ctx.labels, k)
    cm = confusion_matrix(pred, ctx.labels, k)
    res = {"per_class": [{"class": ctx.class_names[c], "precision": 100 * float(p[c]), "recall": 100 * float(r[c]),
                          "f1": 100 * float(f1[c])} for c in range(k)],
           "most_confused": predictions.most_confused_pairs(ctx.logits, ctx.labels, 10, ctx.class_names),
           "confusion_matrix": cm.tolist()}
    return res, {"confusion": plots.plot_confusion_matrix(cm, ctx.class_names)}


@analysis("features", "recall@k of penultimate embeddings, intra/inter-class distances, t-SNE")
def _features(ctx: Context):
    from . import features

    rec = features.recall_at_k(ctx.embeddings, ctx.labels, ks=(1, 2, 4, 8))
    dist = features.class_distances(ctx.embeddings, ctx.labels)
    tsne = features.tsne_2d(ctx.embeddings, ctx.labels, max_points=ctx.options.get("tsne_points", 2000),
                            cache_dir=ctx.run_dir / "eval" / "tsne-cache")  # the map per checkpoint
    res = {"recall": rec, "intra_variance": dist["intra_variance"], "inter_distance": dist["inter_distance"]}
    return res, {"tsne": features.plot_tsne(tsne, ctx.class_names)}


@analysis("predictions", "true-class probabilities, top-5 bars of chosen samples, log-probabilities on misclassified samples")
def _predictions(ctx: Context):
    from . import plots, predictions

    true_p = predictions.true_class_probability(ctx.logits, ctx.labels)
    topk = predictions.topk_predictions(ctx.logits, ctx.labels, ctx.sample_index, 5, ctx.class_names)
    mis = predictions.misclassified_log_probs(ctx.logits, ctx.labels)
    res = {"true_class_probability": [round(float(v), 6) for v in true_p],
           "predicted": ctx.logits.argmax(1).tolist(), "labels": ctx.labels.tolist(),
           "true_class_box": predictions.box_stats(true_p), "topk": topk, "misclassified_log_probs": mis}
    label = ctx.cfg.name or ctx.cfg.method.name
    return res, {"topk": plots.plot_topk_bars(topk),
                 "misclassified": plots.plot_misclassified_histograms({label: mis})}


@analysis("baseline", "test samples fixed and broken relative to a baseline run (needs --baseline RUN_DIR)", default=False)
def _baseline(ctx: Context):
    from . import predictions

    base_dir = ctx.options.get("baseline")
    if not base_dir:
        raise NotApplicable("analysis baseline: give the baseline run with --baseline RUN_DIR")
    base = collect(Path(base_dir), ctx.options.get("checkpoint", "best"), ctx.options.get("split", "test"),
                   ctx.device)
    if not torch.equal(base["labels"], ctx.labels):
        raise DataError(f"baseline {base_dir}: its {ctx.options.get('split', 'test')} split differs from this run's")
    res = predictions.fixed_and_broken(base["logits"], ctx.logits, ctx.labels)
    samples = predictions.fixed_and_broken_samples(base["logits"], ctx.logits, ctx.labels,
                                                   max(1, int(ctx.options.get("samples", 8)) // 2))
    figs = {}
    index = samples["fixed"] + samples["broken"]
    if index:
        from .attention import grad_cam, plot_cams

        x = sample_images(ctx.loader, torch.tensor(index)).to(ctx.device)
        base_name = base["cfg"].name or base["cfg"].method.name
        this = ctx.cfg.name or ctx.cfg.method.name
        cams = {f"{base_name} (baseline)": [grad_cam(base["model"], x)[-1].cpu()],
                this: [grad_cam(ctx.model, x)[-1].cpu()]}
        rows = [f"{'fixed' if n < len(samples['fixed']) else 'broken'} {a}\n{b.split(chr(10))[1]}"
                for n, (a, b) in enumerate(zip(sample_labels(ctx, index, base["logits"], "baseline "),
                                               sample_labels(ctx, index)))]
        figs["gradcam"] = plot_cams(x.cpu(), cams, ctx.mean, ctx.std, stage_names=["last stage"], row_labels=rows)
    return {"baseline": str(base_dir), **res, "samples": samples}, figs


@analysis("attention", "Grad-CAM at every backbone stage for the chosen samples")
def _attention(ctx: Context):
    from .attention import grad_cam, plot_cams

    x = ctx.sample_images.to(ctx.device)
    cams = grad_cam(ctx.model, x)
    names = [f"stage {i + 1}" for i in range(len(cams))]
    return {"stages": len(cams)}, {"gradcam": plot_cams(x.cpu(), {"Grad-CAM": [c.cpu() for c in cams]},
                                                         ctx.mean, ctx.std, stage_names=names,
                                                         row_labels=sample_labels(ctx, ctx.sample_index))}


def sample_labels(ctx: Context, index, logits: Optional[torch.Tensor] = None, who: str = "") -> List[str]:
    """``#i true: A / pred: B (p)`` for each sample position in ``index`` (``logits``: another
    model's, e.g. a baseline's; ``who`` names it)."""
    logits = ctx.logits if logits is None else logits
    names = ctx.class_names
    probs = torch.softmax(logits[torch.as_tensor(index, dtype=torch.long)].double(), 1)
    out = []
    for i, p in zip(index, probs):
        i, y, k = int(i), int(ctx.labels[int(i)]), int(p.argmax())
        mark = "✓" if k == y else "✗"
        out.append(f"#{i} true: {names[y]}\n{who}pred: {names[k]} ({float(p[k]):.2f}) {mark}")
    return out


@analysis("errors", "the most confident misclassified samples: top-5 bars and Grad-CAM with true and predicted labels")
def _errors(ctx: Context):
    from . import plots, predictions
    from .attention import grad_cam, plot_cams

    index = predictions.most_confident_errors(ctx.logits, ctx.labels, int(ctx.options.get("samples", 8)))
    if not index:
        return {"indices": []}, {}
    x = sample_images(ctx.loader, torch.tensor(index)).to(ctx.device)
    cams = grad_cam(ctx.model, x)
    names = [f"stage {i + 1}" for i in range(len(cams))]
    topk = predictions.topk_predictions(ctx.logits, ctx.labels, index, 5, ctx.class_names)
    return {"indices": index, "topk": topk}, {
        "gradcam": plot_cams(x.cpu(), {"Grad-CAM": [c.cpu() for c in cams]}, ctx.mean, ctx.std,
                             stage_names=names, row_labels=sample_labels(ctx, index)),
        "topk": plots.plot_topk_bars(topk)}


@analysis("robustness", "accuracy under FGSM (eps 8/255) and PGD-20 (OLS Tables VIII-IX)", default=False)
def _robustness(ctx: Context):
    from .robustness import attack_metrics

    res = attack_metrics(ctx.model, ctx.loader, ctx.mean, ctx.std, num_classes=len(ctx.class_names),
                         device=ctx.device, max_samples=int(ctx.options.get("max_adversarial", 1000)))
    return res, {}


@analysis("noise", "fit to the noisy training labels over epochs (OLS Fig. 5), for label-noise runs", default=False)
def _noise(ctx: Context):
    from ..engine.trainer import read_metrics
    from .robustness import noisy_label_fit, plot_noisy_fit

    if not (ctx.run_dir / "noise.json").is_file():
        raise NotApplicable(f"analysis noise: {ctx.run_dir} was not trained with label noise (data.label_noise)")
    fit = noisy_label_fit(read_metrics(ctx.run_dir))
    return fit, {"noisy_fit": plot_noisy_fit({ctx.cfg.name or ctx.cfg.method.name: fit})}


@analysis("snapshots", "snapshot ensemble of checkpoints saved during the run (train.snapshot_epochs; OLS Table III)",
          default=False)
def _snapshots(ctx: Context):
    from .ensemble import snapshot_checkpoints, snapshot_metrics

    found = len(snapshot_checkpoints(ctx.run_dir))
    if found < 2:
        raise NotApplicable(f"{ctx.run_dir}: analysis snapshots needs at least two checkpoints/epochN "
                            f"(train.snapshot_epochs), found {found}")
    return snapshot_metrics(ctx.run_dir, ctx.loader, len(ctx.class_names), device=ctx.device), {}


@analysis("human", "KL divergence to CIFAR-10H human label distributions on correct samples (needs --human-labels)",
          default=False)
def _human(ctx: Context):
    from .human import human_labels_kl

    path = ctx.options.get("human_labels")
    if not path:
        raise NotApplicable("analysis human: give the CIFAR-10H counts or probs file with --human-labels PATH")
    return human_labels_kl(path, ctx.logits, ctx.labels), {}


@analysis("or_maps", "orthogonal-loss attention maps of ensemble members (needs --members RUN_DIR...)", default=False)
def _or_maps(ctx: Context):
    from ..engine.runs import load_model_from_run
    from .attention import or_attention_maps, plot_or_maps

    members = ctx.options.get("members") or []
    if not members:
        raise NotApplicable("analysis or_maps: give the ensemble members with --members RUN_DIR ...")
    models = [load_model_from_run(Path(m)).to(ctx.device) for m in members]
    x = ctx.sample_images.to(ctx.device)
    maps = or_attention_maps(models, x)
    return {"members": [str(m) for m in members]}, {
        "or_maps": plot_or_maps(x.cpu(), [m.cpu() for m in maps], [Path(m).name for m in members], ctx.mean, ctx.std)}


# What each saved figure shows, keyed ``<analysis>-<figure>`` (the PNG's stem): (short title drawn
# on the figure, caption for the HTML report).
FIGURES = {
    "calibration-reliability": ("Reliability diagram", "Reliability diagram: accuracy per confidence bin, hatched "
                                "the gap to the bin's mean confidence (CS-KD Fig. 5)"),
    "calibration-confidence": ("Confidence histogram", "Confidence (max softmax) of correct and wrong predictions"),
    "perclass-confusion": ("Confusion matrix", "Confusion matrix, rows normalised (per-class recall on the diagonal)"),
    "features-tsne": ("t-SNE of the embeddings", "t-SNE of the penultimate embeddings, coloured by true class "
                      "(CS-KD Fig. 3)"),
    "predictions-topk": ("Top-5 scores", "Top-5 softmax scores of the chosen samples (CS-KD Fig. 1b, JGL Fig. 6)"),
    "predictions-misclassified": ("Log-probabilities on errors", "Log-probabilities of the predicted and the true "
                                  "class on misclassified samples (CS-KD Fig. 2)"),
    "attention-gradcam": ("Grad-CAM", "Grad-CAM at every backbone stage for the chosen samples, true and predicted "
                          "class per row (JGL Fig. 5)"),
    "errors-gradcam": ("Grad-CAM of the most confident errors", "Grad-CAM of the misclassified samples the model is "
                       "surest of, true and predicted class per row"),
    "errors-topk": ("Top-5 scores of the most confident errors", "Top-5 softmax scores of the misclassified samples "
                    "the model is surest of"),
    "baseline-gradcam": ("Grad-CAM of samples fixed and broken", "Grad-CAM (last stage) of the baseline run and this "
                         "run on samples this run fixes and breaks, true and predicted classes per row"),
    "noise-noisy_fit": ("Fit to the noisy labels", "Error on the noisy training labels per epoch (OLS Fig. 5)"),
    "or_maps-or_maps": ("OR attention maps", "Orthogonal-loss attention maps of the ensemble members "
                        "(Zhang et al. 2021, Fig. 1)"),
}


def figure_caption(analysis_name: str, figure_name: str) -> str:
    return FIGURES.get(f"{analysis_name}-{figure_name}", ("", f"{analysis_name}: {figure_name}"))[1]


def figure_title(analysis_name: str, figure_name: str) -> str:
    return FIGURES.get(f"{analysis_name}-{figure_name}", (f"{analysis_name}: {figure_name}", ""))[0]


# ------------------------------------------------------------------------------------ driver
def collect(run_dir: Path, checkpoint: str, split: str, device=None) -> dict:
    """Model, loader and the split's logits/labels/embeddings in one pass."""
    from .run import load_run_model

    cfg, data, model, dev, meta = load_run_model(run_dir, checkpoint, device)
    return {"cfg": cfg, "data": data, "model": model, "device": dev, "meta": meta,
            **split_outputs(model, data, cfg.data, split, dev, cfg.train.seed, where=str(run_dir))}


def split_outputs(model, data, data_cfg, split: str, device, seed: int = 0, where: str = "",
                  check: Optional[Callable] = None) -> dict:
    """The loader of one split of prepared ``data`` and the model's logits, labels and
    embeddings on it, in one pass (on the CPU). ``check(logits, batch)`` is called on the first
    batch (to refuse a model that does not fit the data before the whole split runs)."""
    from ..data.prepare import build_loaders

    if split == "val" and data.val is None:
        raise ConfigError(f"{where or data_cfg.name}: no validation split")
    _, val, test = build_loaders(data, data_cfg, device=device, seed=seed, rank=0, world=1, channels_last=False)
    loader = val if split == "val" else test
    import time

    from ..progress import terminal_bar

    logits, labels, emb = [], [], []
    bar, t0, seen = terminal_bar(f"eval {split}", len(loader)), time.monotonic(), 0
    with torch.inference_mode():
        for batch in loader:
            out = model(batch.x)
            if check is not None and not logits:
                check(out.logits, batch)
            logits.append(out.logits.float().cpu())
            emb.append(out.embedding.float().cpu())
            labels.append(batch.y.cpu())
            if bar is not None:
                seen += len(batch.y)
                bar.update(1)
                bar.set_postfix({"img/s": f"{seen / max(time.monotonic() - t0, 1e-9):.0f}"})
    if bar is not None:
        bar.close()
    return {"loader": loader, "logits": torch.cat(logits), "labels": torch.cat(labels), "embeddings": torch.cat(emb)}


def sample_images(loader, index: torch.Tensor) -> torch.Tensor:
    """The normalised images at ``index`` (positions in the split), in that order."""
    want = {int(i): k for k, i in enumerate(index)}
    out = [None] * len(want)
    offset = 0
    for batch in loader:
        for j in range(len(batch)):
            k = want.get(offset + j)
            if k is not None:
                out[k] = batch.x[j].cpu()
        offset += len(batch)
    return torch.stack(out)


def resolve_analyses(names: Optional[Sequence[str]]) -> List[str]:
    if not names:
        return [a.name for a in ANALYSES.values() if a.default]
    if list(names) == ["all"]:
        return list(ANALYSES)
    for n in names:
        if n not in ANALYSES:
            raise ConfigError(f"--analyses: unknown analysis {n!r}; choose from {', '.join(ANALYSES)} or all")
    return list(names)


def _jsonable(x):
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist())
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def analyze_run(run_dir: Path, analyses: Optional[Sequence[str]] = None, *, checkpoint: Optional[str] = None,
                split: str = "test", samples: int = 8, sample_indices: Optional[Sequence[int]] = None,
                device: Optional[str] = None, **options) -> Path:
    """Run the analyses and write ``analyses.json`` and the PNGs; returns the output folder.

    An analysis that fails on the user's input (a missing option, a wrong file) stops with its
    one-line error, but whatever the earlier analyses produced has already been written.
    """
    from ..engine.checkpoint import atomic_write_text
    from .plots import figure_to_png_bytes

    names = resolve_analyses(analyses)
    skip_missing = analyses is not None and list(analyses) == ["all"]
    from ..engine.runs import RunDir

    run_dir = Path(run_dir)
    checkpoint = RunDir(run_dir).resolve_checkpoint(checkpoint)
    got = collect(run_dir, checkpoint, split, device)
    n = len(got["labels"])
    if sample_indices:
        bad = [i for i in sample_indices if not 0 <= i < n]
        if bad:
            raise ConfigError(f"--sample-indices: {bad[0]} is outside the {split} split (0..{n - 1})")
        index = torch.tensor(list(sample_indices))
    else:  # evenly spaced, so every run of a comparison shows the same images
        index = torch.linspace(0, n - 1, min(samples, n)).round().long()
    ctx = Context(run_dir, got["cfg"], got["data"], got["model"], got["device"], got["loader"], got["logits"],
                  got["labels"], got["embeddings"], index, sample_images(got["loader"], index),
                  {"checkpoint": checkpoint, "split": split, "samples": samples, **options})
    out_dir = run_dir / "eval" / f"{checkpoint}-{split}"
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "analyses.json"
    results = json.loads(json_path.read_text()) if json_path.is_file() else {}
    results["_run"] = {"checkpoint": checkpoint, "epoch": got["meta"].get("epoch"), "split": split,
                       "label": got["cfg"].name or got["cfg"].method.name, "method": got["cfg"].method.name,
                       "seed": got["cfg"].train.seed, "sample_index": index.tolist()}
    for name in names:
        try:
            res, figs = ANALYSES[name].fn(ctx)
        except NotApplicable as exc:
            if not skip_missing:
                raise
            results[name] = {"skipped": str(exc)}
        else:
            files, captions = [], {}
            run = results["_run"]
            for fig_name, fig in figs.items():
                path = out_dir / f"{name}-{fig_name}.png"
                captions[path.name] = figure_caption(name, fig_name)
                fig.suptitle(f"{run['label']}, seed {run['seed']} ({checkpoint} checkpoint, {split}): "
                             f"{figure_title(name, fig_name)}", fontsize="medium", wrap=True)
                path.write_bytes(figure_to_png_bytes(fig))
                files.append(path.name)
            results[name] = {"results": _jsonable(res), "figures": files, "captions": captions}
        atomic_write_text(json_path, json.dumps(results))
    return out_dir
