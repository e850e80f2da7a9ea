"""Metrics of a finished run beyond its ``final.json``, computed from its checkpoints and
cached in ``RUN_DIR/study_metrics.json`` (what ``softlabels study`` tables report).

A metric name belongs to one **family**; every family computes through the same functions as
the ``softlabels eval --analyses`` analysis of the same name:

=================================  ==========================================================
``recall_at_1``, ``intra_variance``  the reported checkpoint's penultimate features and softmax
``inter_distance``,                  on the test split (analyses ``features``/``predictions``:
``true_class_prob_{q1,median,q3}``   :func:`features.recall_at_k`, :func:`features.class_distances`)
``fgsm_<m>``, ``pgd_<m>``            test metric ``<m>`` (``top1_error``, ``top5_error``, …) under
                                     the attack (analysis ``robustness``:
                                     :func:`robustness.attack_metrics`), whole test split
``snapshot<N>_<m>``                  test metric ``<m>`` of the average softmax of N snapshots
                                     taken uniformly over the schedule (analysis ``snapshots``:
                                     :func:`ensemble.snapshot_metrics`)
``cifar10h_kl``                      mean KL(human ‖ model) over the correctly classified test
                                     images (analysis ``human``: :func:`human.human_labels_kl`)
``noisy_fit_error``                  100 − ``train.noisy_fit`` of the reported epoch (analysis
                                     ``noise``: :func:`robustness.noisy_fit_error`); read from
                                     ``metrics.jsonl``, not cached
=================================  ==========================================================

The cache maps a key naming everything a value depends on — the checkpoint (name and sha256 of
its file), the attack's settings and the number of samples attacked, the snapshot set, the
human-labels file's sha256 and size — to the value; a changed setting or a retrained
checkpoint computes again, an unchanged one is read. Writes are atomic.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import ConfigError, DataError, SoftlabelsError

CACHE_FILE = "study_metrics.json"

#: the test-split metrics of classification_metrics a family metric may name after its prefix
BASE_METRICS = ("top1_error", "top5_error", "nll", "ece", "macro_precision", "macro_recall", "macro_f1")
OUTPUT_METRICS = ("recall_at_1", "intra_variance", "inter_distance", "true_class_prob_median",
                  "true_class_prob_q1", "true_class_prob_q3")
ATTACKS = ("fgsm", "pgd")
_ATTACK_RE = re.compile(r"(fgsm|pgd)_(%s)" % "|".join(BASE_METRICS))
_SNAPSHOT_RE = re.compile(r"snapshot([1-9][0-9]*)_(%s)" % "|".join(BASE_METRICS))

#: metric_options of a study (docs/study-schema.md) and their defaults: the OLS attacks
#: (evaluate.robustness.OLS_ATTACKS) on the whole test split, no human-labels file
DEFAULT_OPTIONS = {"fgsm": {"epsilon": 8 / 255},
                   "pgd": {"epsilon": 8 / 255, "step_size": 2 / 255, "steps": 20, "random_start": True},
                   "attack_samples": None, "attack_seed": 0, "human_labels": None}
_ATTACK_KEYS = {"fgsm": ("epsilon",), "pgd": ("epsilon", "step_size", "steps", "random_start")}


# ====================================================================== names


def family(metric: str) -> Optional[Tuple[str, dict]]:
    """(family, parameters) of a metric this module computes, or None."""
    if metric in OUTPUT_METRICS:
        return "outputs", {"key": metric}
    m = _ATTACK_RE.fullmatch(metric)
    if m:
        return "attack", {"attack": m.group(1), "key": m.group(2)}
    m = _SNAPSHOT_RE.fullmatch(metric)
    if m:
        return "snapshots", {"n": int(m.group(1)), "key": m.group(2)}
    if metric == "cifar10h_kl":
        return "human", {"key": "kl_mean"}
    if metric == "noisy_fit_error":
        return "noisy", {}
    return None


_OUTPUT_INFO = {"recall_at_1": ("R@1 (%)", False), "intra_variance": ("intra-class var.", True),
                "inter_distance": ("inter-class dist.", False), "true_class_prob_median": ("p(true) median", False),
                "true_class_prob_q1": ("p(true) Q1", False), "true_class_prob_q3": ("p(true) Q3", False)}


def metric_info(metric: str) -> Optional[Tuple[str, bool]]:
    """(display name, lower is better) of a metric of this module, or None."""
    from .metrics import METRIC_INFO

    fam = family(metric)
    if fam is None:
        return None
    kind, p = fam
    if kind == "outputs":
        return _OUTPUT_INFO[metric]
    if kind == "attack":
        name, lower = METRIC_INFO[p["key"]]
        return f"{p['attack'].upper()} {name}", lower
    if kind == "snapshots":
        name, lower = METRIC_INFO[p["key"]]
        return f"{p['n']}-snapshot ens. {name}", lower
    if kind == "human":
        return "KL to CIFAR-10H", True
    return "err. on noisy labels (%)", False   # noisy: higher = fits the wrong labels less


# ====================================================================== metric_options


def _fraction(v):
    """A number, or a string ``a/b`` of two numbers (``8/255``): a float; else None."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    if isinstance(v, str) and re.fullmatch(r"\s*[0-9.]+\s*/\s*[0-9.]+\s*", v):
        a, b = (float(x) for x in v.split("/"))
        if b > 0:
            return a / b
    return None


def check_options(value, where: str) -> dict:
    """A study's (or a column's) ``metric_options`` mapping, checked and normalised (``8/255``
    becomes a float); only the keys given. ConfigError ``<where>.<key>: ...`` on a bad one."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    out: dict = {}
    for key, v in value.items():
        at = f"{where}.{key}"
        if key in _ATTACK_KEYS:
            if not isinstance(v, dict):
                raise ConfigError(f"{at}: expected a mapping of {', '.join(_ATTACK_KEYS[key])}, got {v!r}")
            spec = {}
            for k, x in v.items():
                if k not in _ATTACK_KEYS[key]:
                    raise ConfigError(f"{at}.{k}: unknown key (accepted: {', '.join(_ATTACK_KEYS[key])})")
                if k == "steps":
                    if not isinstance(x, int) or isinstance(x, bool) or x < 1:
                        raise ConfigError(f"{at}.steps: expected an integer >= 1, got {x!r}")
                    spec[k] = x
                elif k == "random_start":
                    if not isinstance(x, bool):
                        raise ConfigError(f"{at}.random_start: expected true or false, got {x!r}")
                    spec[k] = x
                else:
                    f = _fraction(x)
                    if f is None or not 0 < f <= 1:
                        raise ConfigError(f"{at}.{k}: expected a number in (0, 1] (pixel units; 8/255 is "
                                          f"written 8/255 or 0.0314), got {x!r}")
                    spec[k] = f
            out[key] = spec
        elif key == "attack_samples":
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ConfigError(f"{at}: expected null (the whole test split) or an integer >= 1, got {v!r}")
            out[key] = v
        elif key == "attack_seed":
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"{at}: expected an integer >= 0, got {v!r}")
            out[key] = v
        elif key == "human_labels":
            if v is not None and (not isinstance(v, str) or not v.strip()):
                raise ConfigError(f"{at}: expected a file path (may use {{data_root}}), got {v!r}")
            out[key] = v
        else:
            raise ConfigError(f"{at}: unknown key (accepted: {', '.join(sorted(DEFAULT_OPTIONS))})")
    return out


def merge_options(*layers: Mapping) -> dict:
    """:data:`DEFAULT_OPTIONS` with each layer's keys over it (attack mappings key by key)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULT_OPTIONS.items()}
    for layer in layers:
        for k, v in (layer or {}).items():
            out[k] = {**out[k], **v} if k in _ATTACK_KEYS else v
    return out


def attack_spec(options: Mapping, attack: str) -> dict:
    """The attack of ``options`` as evaluate.robustness takes it (``name`` and its settings)."""
    spec = {"name": attack, **options[attack]}
    if attack == "fgsm":
        spec = {"name": "fgsm", "epsilon": spec["epsilon"]}
    return spec


# ====================================================================== the cache


_SHA: Dict[Tuple[str, int, int], str] = {}


def file_id(path: Path) -> str:
    """``<sha256 prefix>:<size>`` of a file (memoised per path, size and mtime)."""
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _SHA:
        from ..engine.runs import file_sha256

        _SHA[memo] = file_sha256(path)[:16]
    return f"{_SHA[memo]}:{st.st_size}"


def checkpoint_id(run_dir: Path, name: str) -> str:
    """``<name>:<sha256 prefix>:<size>`` of the file a run's checkpoint loads from."""
    from ..engine import checkpoint as ckpt
    from ..errors import CheckpointError

    stem = Path(run_dir) / "checkpoints" / name
    gens = ckpt.complete_generations(stem)
    if not gens:
        raise CheckpointError(f"{run_dir}: no checkpoint {name!r}")
    return f"{name}:{file_id(ckpt.generations(stem)[gens[0]]['safetensors'])}"


class _Cache:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / CACHE_FILE
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        self.data = data if isinstance(data, dict) else {}

    def get(self, key: str):
        return self.data.get(key)

    def put(self, key: str, value) -> None:
        from ..engine.checkpoint import atomic_write_text

        self.data[key] = value
        atomic_write_text(self.path, json.dumps(self.data, indent=0, allow_nan=True))


class _Run:
    """A run's checkpoint, model and test outputs, loaded when first needed."""

    def __init__(self, run_dir: Path, which: str, device):
        from ..engine.runs import RunDir

        self.run_dir, self.device = Path(run_dir), device
        self.name = RunDir(run_dir).resolve_checkpoint(which)
        self.id = checkpoint_id(self.run_dir, self.name)
        self._loaded = self._outputs = self._loader = None

    @property
    def loaded(self):
        if self._loaded is None:
            import torch

            from ..engine.runs import RunDir
            from .run import load_run_model

            dev = self.device
            if dev is None:  # the run's train.device; its CUDA is not required to read it back
                dev = RunDir(self.run_dir).config().train.device
                if str(dev).startswith("cuda") and not torch.cuda.is_available():
                    dev = "cpu"
            self._loaded = load_run_model(self.run_dir, self.name, str(dev))
        return self._loaded

    @property
    def loader(self):
        """The test split's loader (no pass over it unless the outputs were needed anyway)."""
        if self._outputs is not None:
            return self._outputs["loader"]
        if self._loader is None:
            from ..data.prepare import build_loaders

            cfg, data, model, dev, _ = self.loaded
            self._loader = build_loaders(data, cfg.data, device=dev, seed=0, rank=0, world=1, channels_last=False)[2]
        return self._loader

    @property
    def outputs(self) -> dict:
        if self._outputs is None:
            from .analyze import split_outputs

            cfg, data, model, dev, _ = self.loaded
            self._outputs = split_outputs(model, data, cfg.data, "test", dev, where=str(self.run_dir))
        return self._outputs


# ====================================================================== computing


def _outputs_block(run: _Run, cache: _Cache) -> dict:
    key = f"outputs@{run.id}"
    got = cache.get(key)
    if got is None:
        import torch

        from .features import class_distances, recall_at_k

        out = run.outputs
        emb, y, z = out["embeddings"], out["labels"], out["logits"]
        p_true = torch.softmax(z.double(), dim=1).gather(1, y[:, None]).squeeze(1)
        q1, med, q3 = torch.quantile(p_true, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
        dist = class_distances(emb, y)
        got = {"recall_at_1": recall_at_k(emb, y, (1,))["recall@1"],
               "intra_variance": float(dist["intra_variance"]), "inter_distance": float(dist["inter_distance"]),
               "true_class_prob_median": med, "true_class_prob_q1": q1, "true_class_prob_q3": q3}
        cache.put(key, got)
    return got


def _attack_blocks(run: _Run, cache: _Cache, attacks: Sequence[str], options: Mapping) -> Dict[str, dict]:
    samples, seed = options.get("attack_samples"), int(options.get("attack_seed", 0))
    specs = {a: attack_spec(options, a) for a in attacks}
    keys = {a: f"{a}@{run.id}:{json.dumps(specs[a], sort_keys=True)}:samples={samples}:seed={seed}"
            for a in attacks}
    todo = [a for a in attacks if cache.get(keys[a]) is None]
    if todo:
        import sys

        from . import robustness

        cfg, data, model, dev, _ = run.loaded
        print(f"softlabels: {run.run_dir}: {' and '.join(a.upper() for a in todo)} on "
              f"{'every' if samples is None else f'the first {samples}'} test image(s) ({dev})",
              file=sys.stderr, flush=True)
        res = robustness.attack_metrics(model, run.loader, data.dataset.mean, data.dataset.std,
                                        attacks=[specs[a] for a in todo], num_classes=data.num_classes,
                                        seed=seed, device=dev, max_samples=samples)
        for a in todo:
            cache.put(keys[a], {**res[a], "samples": res["samples"]})
    return {a: cache.get(keys[a]) for a in attacks}


def _snapshot_block(run: _Run, cache: _Cache, n: int, allow_fewer: bool) -> dict:
    from . import ensemble

    epochs = _run_epochs(run.run_dir)
    picked = ensemble.uniform_snapshot_epochs(epochs, n)
    if len(picked) < n and not allow_fewer:
        raise DataError(f"{run.run_dir}: {n} snapshots need train.epochs >= {n} (the run has {epochs})")
    names = ensemble.snapshot_checkpoints(run.run_dir, picked)
    key = "snapshots@" + ",".join(checkpoint_id(run.run_dir, nm) for nm in names)
    got = cache.get(key)
    if got is None:
        cfg, data, model, dev, _ = run.loaded
        res = ensemble.snapshot_metrics(run.run_dir, run.loader, data.num_classes, device=dev,
                                        epochs=picked)
        got = {**res["mean_softmax"], "epochs": picked}
        cache.put(key, got)
    return got


def _run_epochs(run_dir: Path) -> int:
    from ..engine.runs import RunDir

    return int(RunDir(run_dir).config().train.epochs)


def _human_block(run: _Run, cache: _Cache, path: Optional[str]) -> dict:
    if not path:
        raise ConfigError("metric cifar10h_kl: no human-labels file; set metric_options.human_labels "
                          "(e.g. {data_root}/cifar10h/cifar10h-probs.npy)")
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"human-labels file {p} not found (metric cifar10h_kl; metric_options.human_labels)")
    key = f"human@{run.id}:{file_id(p)}"
    got = cache.get(key)
    if got is None:
        from . import human

        out = run.outputs
        got = human.human_labels_kl(p, out["logits"], out["labels"])
        cache.put(key, got)
    return got


def _noisy(run_dir: Path, which: str) -> float:
    from ..engine.runs import RunDir
    from ..engine.trainer import read_metrics
    from .robustness import noisy_fit_error

    epoch = RunDir(run_dir).results()[which]["epoch"]
    return noisy_fit_error(read_metrics(run_dir), epoch)


def run_metrics(run_dir, which: str, metrics: Sequence[str], options: Optional[Mapping] = None, *,
                device=None, smoke: bool = False) -> Tuple[Dict[str, Optional[float]], List[str]]:
    """Values of the ``metrics`` of this module (others are left out) for a finished run whose
    reported checkpoint is ``which`` (``last``/``best``), from the cache or computed (then
    cached), and the one-line errors of those that could not be computed (their value None).

    ``options``: the merged ``metric_options`` (:func:`merge_options`, ``{data_root}``
    replaced). ``device``: where models run (None: the run's ``train.device``, the CPU when
    that is CUDA and there is none). ``smoke``: a
    ``--smoke`` run: a missing human-labels file leaves ``cifar10h_kl`` empty without error, and
    snapshot counts above the (one-epoch) schedule use the distinct epochs there are."""
    options = merge_options(options or {})
    fams = {m: family(m) for m in metrics}
    fams = {m: f for m, f in fams.items() if f is not None}
    values: Dict[str, Optional[float]] = {m: None for m in fams}
    errors: List[str] = []
    if not fams:
        return values, errors
    run_dir = Path(run_dir)
    cache = _Cache(run_dir)
    try:
        run = _Run(run_dir, which, device) if any(f[0] != "noisy" for f in fams.values()) else None
    except SoftlabelsError as exc:
        return values, [_line(exc)]

    def num(v):
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None

    def attempt(names, compute, pick):
        try:
            block = compute()
        except SoftlabelsError as exc:
            errors.append(_line(exc))
            return
        for m in names:
            values[m] = num(pick(block, m))

    by_kind: Dict[str, List[str]] = {}
    for m, (kind, _) in fams.items():
        by_kind.setdefault(kind, []).append(m)
    if "outputs" in by_kind:
        attempt(by_kind["outputs"], lambda: _outputs_block(run, cache), lambda b, m: b[m])
    if "attack" in by_kind:
        names = by_kind["attack"]
        attacks = [a for a in ATTACKS if any(fams[m][1]["attack"] == a for m in names)]
        attempt(names, lambda: _attack_blocks(run, cache, attacks, options),
                lambda b, m: b[fams[m][1]["attack"]].get(fams[m][1]["key"]))
    for n in sorted({fams[m][1]["n"] for m in by_kind.get("snapshots", [])}):
        attempt([m for m in by_kind["snapshots"] if fams[m][1]["n"] == n],
                lambda: _snapshot_block(run, cache, n, smoke), lambda b, m: b.get(fams[m][1]["key"]))
    if "human" in by_kind:
        path = options.get("human_labels")
        if not (smoke and not (path and Path(path).expanduser().is_file())):
            attempt(by_kind["human"], lambda: _human_block(run, cache, path), lambda b, m: b["kl_mean"])
    if "noisy" in by_kind:
        attempt(by_kind["noisy"], lambda: _noisy(run_dir, which), lambda v, m: v)
    return values, errors


def _line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]
