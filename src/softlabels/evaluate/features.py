"""Analyses of penultimate-layer embeddings (``ModelOutput.embedding``).

* :func:`recall_at_k`: CS-KD §3.1 / Table 6 "Recall at k (R@k)": the percentage of test samples
  that have at least one sample of the same class among their k nearest neighbours, with the
  L2 distance between pooled penultimate features. (The JGL paper's "R@1", its Eq. 12, is a
  different quantity, the unweighted mean of per-class classification recall; that one is
  ``macro_recall`` of :func:`~softlabels.evaluate.metrics.classification_metrics`.)
* :func:`class_distances`: JGL §IV, Table III: intra-class variance of the features and
  Euclidean distance between class-mean features. The paper gives these only in words
  ("the feature vectors of images are used to calculate the intraclass variance ... mean
  feature vectors are used to calculate the interclass similarity that adopts the Euclidean
  distance"); the exact formulas used here are stated in the function's docstring.
* :func:`tsne_2d` / :func:`plot_tsne`: CS-KD Fig. 3, a t-SNE map of the embeddings.

Inputs are ``embeddings`` (N×D float tensor, any device) and ``labels`` (N integer class ids).
Percentages are in percent, like the rest of :mod:`softlabels.evaluate`.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import Tensor

__all__ = ["recall_at_k", "class_distances", "tsne_2d", "plot_tsne"]

# Elements of the float64 distance block computed at once (~32 MiB).
_BLOCK_ELEMENTS = 1 << 22


def _check(embeddings: Tensor, labels: Tensor, min_n: int = 1):
    if not isinstance(embeddings, Tensor) or embeddings.dim() != 2:
        raise ValueError(f"embeddings must be an N×D tensor, got shape {tuple(getattr(embeddings, 'shape', ()))}")
    if not embeddings.dtype.is_floating_point:
        raise ValueError(f"embeddings must be floating point, got {embeddings.dtype}")
    n = int(embeddings.shape[0])
    if not isinstance(labels, Tensor) or labels.dim() != 1 or int(labels.shape[0]) != n:
        raise ValueError(f"labels must be a 1-D tensor of length {n}, got shape {tuple(getattr(labels, 'shape', ()))}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if n < min_n:
        raise ValueError(f"need at least {min_n} samples, got {n}")
    if not bool(torch.isfinite(embeddings).all()):
        raise ValueError("embeddings contain NaN or infinite values")
    return embeddings.detach(), labels.detach().to(embeddings.device).long()


@torch.no_grad()
def recall_at_k(embeddings: Tensor, labels: Tensor, ks: Sequence[int] = (1,),
                chunk_size: Optional[int] = None) -> Dict[str, float]:
    """Recall at k of the embedding (CS-KD's R@k), in percent, for each ``k`` in ``ks``.

    For every sample i (the query), its neighbours are the *other* N−1 samples ordered by L2
    distance ``‖e_i − e_j‖``; ``R@k`` is the percentage of queries with at least one sample of
    their own class among the k nearest. Distances are computed in float64 on the embeddings'
    device, ``chunk_size`` queries at a time (default: as many as keep the distance block near
    32 MiB), so N = 10,000 × D = 512 needs well under 100 MiB. Exactly tied distances at the
    k-th place are broken arbitrarily (``torch.topk``).

    Returns ``{"recall@k": value}`` for each k. A query alone in its class can never be a hit.
    """
    emb, y = _check(embeddings, labels, min_n=2)
    n = int(emb.shape[0])
    ks = [int(k) for k in ks]
    if not ks:
        raise ValueError("ks is empty")
    if min(ks) < 1 or max(ks) > n - 1:
        raise ValueError(f"every k must lie in [1, {n - 1}] for {n} samples, got {ks}")
    kmax = max(ks)
    x = emb.double()
    sq = (x * x).sum(dim=1)
    if chunk_size is None:
        chunk_size = max(1, _BLOCK_ELEMENTS // n)
    first_hit = torch.empty(n, dtype=torch.long, device=x.device)  # rank of the first same-class neighbour
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        q = x[start:stop]
        d = sq[start:stop, None] + sq[None, :] - 2.0 * (q @ x.T)
        d.clamp_min_(0.0)
        rows = torch.arange(stop - start, device=x.device)
        d[rows, rows + start] = float("inf")  # a query is not its own neighbour
        nn_idx = d.topk(kmax, dim=1, largest=False, sorted=True).indices
        same = y[nn_idx] == y[start:stop, None]
        # position of the first hit (kmax when there is none in the top kmax)
        pos = torch.where(same, torch.arange(kmax, device=x.device), kmax)
        first_hit[start:stop] = pos.min(dim=1).values
    return {f"recall@{k}": float((first_hit < k).double().mean() * 100.0) for k in ks}


@torch.no_grad()
def class_distances(embeddings: Tensor, labels: Tensor) -> Dict[str, object]:
    """Intra-class variance and inter-class distance of the embeddings (JGL Table III).

    Over the classes C present in ``labels`` (n_c samples, class mean ``μ_c = mean_{i∈c} e_i``):

    * ``intra_variance`` = ``(1/|C|) Σ_c (1/n_c) Σ_{i∈c} ‖e_i − μ_c‖²``: the mean over classes
      of the mean squared Euclidean distance of a class's samples to its mean (the trace of
      the class's biased covariance; every class counts equally whatever its size);
    * ``inter_distance`` = mean of ``‖μ_a − μ_b‖`` (plain, not squared, Euclidean distance)
      over all unordered pairs ``a < b`` of classes in C (NaN when |C| < 2).

    Also returned, per class in ascending class-id order: ``classes`` (ids), ``per_class_count``,
    ``per_class_variance`` (the inner mean above) and ``per_class_nearest`` (distance from the
    class mean to the nearest other class mean; NaN when |C| < 2). Computed in float64;
    values are Python floats / lists.
    """
    emb, y = _check(embeddings, labels, min_n=1)
    x = emb.double()
    classes, inverse, counts = torch.unique(y, sorted=True, return_inverse=True, return_counts=True)
    k = int(classes.numel())
    sums = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device)
    sums.index_add_(0, inverse, x)
    means = sums / counts[:, None].double()
    sq_dev = torch.zeros(k, dtype=torch.float64, device=x.device)
    step = max(1, _BLOCK_ELEMENTS // max(1, int(x.shape[1])))
    for start in range(0, int(x.shape[0]), step):
        inv = inverse[start:start + step]
        diff = x[start:start + step] - means[inv]
        sq_dev.index_add_(0, inv, (diff * diff).sum(dim=1))
    per_class_var = sq_dev / counts.double()
    if k >= 2:
        dist = torch.cdist(means[None], means[None], compute_mode="donot_use_mm_for_euclid_dist")[0]
        iu = torch.triu_indices(k, k, offset=1, device=x.device)
        inter = float(dist[iu[0], iu[1]].mean())
        nearest = dist + torch.diag(torch.full((k,), float("inf"), dtype=torch.float64, device=x.device))
        nearest = nearest.min(dim=1).values.tolist()
    else:
        inter = float("nan")
        nearest = [float("nan")] * k
    return {
        "intra_variance": float(per_class_var.mean()),
        "inter_distance": inter,
        "num_classes": k,
        "classes": classes.tolist(),
        "per_class_count": counts.tolist(),
        "per_class_variance": per_class_var.tolist(),
        "per_class_nearest": nearest,
    }


def _stratified_subsample(labels: Tensor, max_points: int, seed: int) -> Tensor:
    """Sorted indices of a class-stratified random subset of at most ``max_points`` samples.

    Each class gets ``max_points · n_c / N`` places rounded by largest remainder (ties to the
    smaller class id), so the subset keeps the class proportions; which samples is a random
    draw from a generator seeded with ``seed``.
    """
    n = int(labels.numel())
    if n <= max_points:
        return torch.arange(n)
    g = torch.Generator().manual_seed(int(seed))
    classes, inverse, counts = torch.unique(labels, sorted=True, return_inverse=True, return_counts=True)
    quota = counts.double() * max_points / n
    take = quota.floor().long()
    left = max_points - int(take.sum())
    if left > 0:
        order = torch.argsort(-(quota - take.double()), stable=True)
        take[order[:left]] += 1
    perm = torch.randperm(n, generator=g)
    chosen = []
    for c in range(int(classes.numel())):
        members = perm[inverse[perm] == c]
        chosen.append(members[:int(take[c])])
    return torch.sort(torch.cat(chosen)).values


TSNE_PCA_DIMS = 50
TSNE_MAX_POINTS = 2000


def _tsne_key(x, y, **params) -> str:
    import hashlib

    h = hashlib.sha256(repr(sorted(params.items())).encode())
    h.update(x.tobytes())
    h.update(y.numpy().astype("int64").tobytes())
    return h.hexdigest()[:24]


def tsne_2d(embeddings: Tensor, labels: Tensor, max_points: int = TSNE_MAX_POINTS, seed: int = 0,
            perplexity: float = 30.0, pca_dims: int = TSNE_PCA_DIMS,
            cache_dir=None) -> Dict[str, Tensor]:
    """2-D t-SNE map of the embeddings (CS-KD Fig. 3), with ``sklearn.manifold.TSNE``.

    When N > ``max_points`` (default 2,000) a class-stratified random subset of ``max_points``
    samples is used (see :func:`_stratified_subsample`; seeded by ``seed``). Embeddings wider
    than ``pca_dims`` (default 50) are first reduced to that many dimensions with PCA (the
    usual preprocessing: t-SNE's neighbour search and gradient cost grow with the width, and
    the leading 50 components keep the neighbourhoods). TSNE runs with ``init="pca"``,
    ``random_state=seed`` and ``perplexity`` lowered to ``(n − 1)/3`` for tiny sets, so the
    same inputs and seed give the same map.

    ``cache_dir``: a folder where the map is kept as ``tsne-<key>.npz``, the key hashing the
    chosen embeddings, labels and every parameter; a later call with the same checkpoint's
    embeddings reads it instead of recomputing (an unreadable file is recomputed).

    Returns ``points`` (n×2 float32), ``labels`` (n int64) and ``index`` (the chosen rows of
    the input, ascending), all on the CPU.
    """
    import numpy as np

    emb, y = _check(embeddings, labels, min_n=2)
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    if pca_dims < 2:
        raise ValueError(f"pca_dims must be >= 2, got {pca_dims}")
    y = y.cpu()
    index = _stratified_subsample(y, int(max_points), seed)
    x = emb.cpu()[index].double().numpy()
    n = int(index.numel())
    perp = float(min(perplexity, max(1.0, (n - 1) / 3.0)))  # sklearn needs perplexity < n
    path = None
    if cache_dir is not None:
        from pathlib import Path

        key = _tsne_key(x, y[index], seed=int(seed), perplexity=perp, pca_dims=int(pca_dims), v=1)
        path = Path(cache_dir) / f"tsne-{key}.npz"
        try:
            with np.load(path) as stored:
                points = torch.from_numpy(stored["points"]).float()
            if tuple(points.shape) == (n, 2):
                return {"points": points, "labels": y[index], "index": index}
        except Exception:  # absent or torn: compute
            pass
    from sklearn.manifold import TSNE

    if x.shape[1] > pca_dims and n > pca_dims:
        from sklearn.decomposition import PCA

        x = PCA(n_components=int(pca_dims), random_state=int(seed)).fit_transform(x)
    tsne = TSNE(n_components=2, perplexity=perp, init="pca", random_state=int(seed),
                learning_rate="auto")
    points = torch.from_numpy(tsne.fit_transform(x)).float()
    if path is not None:
        import os

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
            np.savez(tmp, points=points.numpy())
            os.replace(tmp, path)
        except OSError:
            pass  # an unwritable folder only costs the next computation
    return {"points": points, "labels": y[index], "index": index}


def plot_tsne(result: Dict[str, Tensor], class_names: Optional[Sequence[str]] = None,
              title: Optional[str] = None, point_size: float = 4.0):
    """Scatter plot of a :func:`tsne_2d` result, one colour per class.

    Returns a ``matplotlib.figure.Figure`` on the Agg canvas (no pyplot state is touched);
    save it with ``fig.savefig(path)``. A legend (with ``class_names[c]`` when given) is drawn
    for at most 20 classes.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib import colormaps

    points = torch.as_tensor(result["points"]).detach().cpu().double()
    labels = torch.as_tensor(result["labels"]).detach().cpu().long()
    fig = Figure(figsize=(6, 6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    classes = torch.unique(labels).tolist()
    k = len(classes)
    cmap = colormaps["tab10" if k <= 10 else "tab20" if k <= 20 else "turbo"]
    for i, c in enumerate(classes):
        m = labels == c
        colour = cmap(i if k <= 20 else i / max(1, k - 1))
        name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
        ax.scatter(points[m, 0].numpy(), points[m, 1].numpy(), s=point_size, color=colour,
                   label=name, linewidths=0)
    if 0 < k <= 20:
        ax.legend(loc="best", fontsize="small", markerscale=3.0, frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
