"""Colour clustering of an image (ganX paper Alg. 2–3), fitted on a subsample, predicted chunk-wise.

:func:`subsample_pixels` draws a deterministic pixel subsample (positions from
``SeedSequence(seed, spawn_key=(1,))``, independent of dask chunking);
:func:`fit_iterative_kmeans` runs scikit-learn's ``KMeans`` (k-means++, best of 3 starts) on
the sample's colour histogram (:func:`colour_bins`: exact distinct colours, or at most
:data:`MAX_BINS` quantised bins represented by their members' mean colour, weighted by their
pixel counts) for every k from ``n_start − delta`` to ``n_start + delta`` *inclusive* (never
below 2, never above the number of distinct colours), scores each with the silhouette score
(one distance matrix for every k) on a further subsample
(``spawn_key=(2,)``) and keeps the best (ties: the smaller k).  ``patience = p ≥ 0`` stops the sweep
once more than ``p`` steps failed to improve the best score (the paper's counter, not reset on
improvement); ``p = −1`` tries every k.  :func:`predict_labels` assigns every pixel of the full
image to its nearest centroid (squared Euclidean distance in 8-bit RGB) with ``da.map_blocks``.

An image with a single distinct colour yields one cluster (k = 1, no silhouette score).

Cost: the k-means runs on ≤ :data:`MAX_BINS` weighted points, whatever the image size.  Until
format 2 (ganx-dask 0.1.0) the fit was ``MiniBatchKMeans`` on every sampled pixel (≈ 0.3–1 s
per image); the chosen centroids, and so the cubes, differ between the two
(``docs/performance.md``, "Fixed costs").
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field

import dask.array as da
import numpy as np
import xarray as xr

from .errors import ConfigError, ImageError
from .scheduling import compute

__all__ = ["ClusterModel", "subsample_pixels", "fit_iterative_kmeans", "predict_labels",
           "nearest_centroid", "colour_bins", "distance_matrix"]

#: The ``clustering.method`` attribute of a dataset.
METHOD = "KMeans on the weighted colour histogram + silhouette (sklearn)"

#: Spawn-key namespaces (docs/architecture.md, "Determinism rule").
_KEY_SUBSAMPLE, _KEY_SILHOUETTE, _KEY_KMEANS = 1, 2, 3


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=key)))


@dataclass
class ClusterModel:
    """Result of the colour clustering.

    Attributes
    ----------
    centroids : numpy.ndarray
        ``(k, 3)`` float64 k-means centroids in 8-bit RGB units (used for prediction).
    cluster_rgb : numpy.ndarray
        ``(k, 3)`` uint8 mean colour of each cluster's members in the fit sample.
    k : int
        Chosen number of clusters.
    scores : dict[int, float]
        Silhouette score of every k tried (NaN when it could not be computed).
    n_fit, n_score : int
        Pixels used for fitting and for the silhouette score.
    params : dict
        The parameters of the fit (n_start, delta, patience, score_batch, seed).
    """

    centroids: np.ndarray
    cluster_rgb: np.ndarray
    k: int
    scores: dict[int, float] = field(default_factory=dict)
    n_fit: int = 0
    n_score: int = 0
    params: dict = field(default_factory=dict)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Nearest-centroid label (int16) of ``(n, 3)`` RGB pixels."""
        return nearest_centroid(pixels, self.centroids)

    def to_attrs(self) -> dict:
        """JSON-serialisable summary for the dataset attrs (chosen k, silhouette per k, ...)."""
        return {
            "method": METHOD,
            "k": int(self.k),
            "silhouette": {str(k): (None if not np.isfinite(s) else float(s))
                           for k, s in self.scores.items()},
            "k_tried": [int(k) for k in self.scores],
            "n_fit_pixels": int(self.n_fit),
            "n_score_pixels": int(self.n_score),
            "centroids": np.round(self.centroids, 6).tolist(),
            **{key: (int(v) if isinstance(v, (int, np.integer)) else v)
               for key, v in self.params.items()},
        }


def nearest_centroid(pixels: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index (int16) of the nearest centroid of each pixel.

    Parameters
    ----------
    pixels : numpy.ndarray
        ``(..., 3)`` RGB values (0–255).
    centroids : numpy.ndarray
        ``(k, 3)`` centroids in the same units.

    Returns
    -------
    numpy.ndarray
        ``pixels.shape[:-1]`` int16; ties go to the lower index.  Computed per pixel with exact
        elementwise arithmetic, so the result does not depend on how the image is chunked.
    """
    p = np.asarray(pixels, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64)
    best = np.zeros(p.shape[:-1], dtype=np.int16)
    best_d = np.full(p.shape[:-1], np.inf)
    for j in range(c.shape[0]):
        d = ((p[..., 0] - c[j, 0]) ** 2 + (p[..., 1] - c[j, 1]) ** 2
             + (p[..., 2] - c[j, 2]) ** 2)
        better = d < best_d
        best[better] = j
        best_d = np.where(better, d, best_d)
    return best


def subsample_pixels(
    image: xr.DataArray,
    n: int,
    seed: int,
    mask: xr.DataArray | None = None,
) -> np.ndarray:
    """A deterministic random subsample of the image's pixels (computes only those pixels).

    Parameters
    ----------
    image : xarray.DataArray
        ``(y, x, channel)`` uint8 (numpy- or dask-backed).
    n : int
        Number of pixel positions drawn (without replacement); all pixels when the image has
        at most ``n``.
    seed : int
        Master seed; positions come from ``SeedSequence(seed, spawn_key=(1,))`` and depend only on
        the seed and the image shape, never on the chunking.
    mask : xarray.DataArray, optional
        Bool ``(y, x)``, True where a pixel counts (opaque); masked-out positions are dropped
        from the sample.

    Returns
    -------
    numpy.ndarray
        ``(m, 3)`` uint8 pixels in row-major order of their positions, ``m <= n``.
    """
    ny, nx = int(image.sizes["y"]), int(image.sizes["x"])
    total = ny * nx
    if n < 1:
        raise ConfigError(f"fit_samples must be >= 1 pixel, got {n}")
    data = image.transpose("y", "x", "channel").data
    if total <= n:  # every pixel, in row-major order: no gather
        if mask is None:
            pix = np.asarray(compute(data)[0]).reshape(-1, 3)
        else:
            d, m = compute(data, mask.transpose("y", "x").data)
            pix = np.asarray(d)[np.asarray(m, dtype=bool)]
        return np.ascontiguousarray(pix, dtype=np.uint8).reshape(-1, 3)
    flat = np.sort(_rng(seed, _KEY_SUBSAMPLE).choice(total, size=int(n), replace=False))
    yy, xx = np.divmod(flat, nx)
    if isinstance(data, da.Array):
        pix = data.vindex[yy, xx]
        if mask is not None:
            m = mask.transpose("y", "x").data
            m = m.vindex[yy, xx] if isinstance(m, da.Array) else np.asarray(m)[yy, xx]
            pix, m = compute(pix, m)
            pix = np.asarray(pix)[np.asarray(m, dtype=bool)]
        else:
            pix = np.asarray(compute(pix)[0])
    else:
        pix = np.asarray(data)[yy, xx]
        if mask is not None:
            pix = pix[np.asarray(mask.transpose("y", "x").values)[yy, xx]]
    return np.ascontiguousarray(pix, dtype=np.uint8).reshape(-1, 3)


#: The k-means runs on a colour histogram of at most this many occupied bins (see
#: :func:`colour_bins`); exact distinct colours when the sample has no more.
MAX_BINS = 1024
#: k-means++ starts per k (scikit-learn ``KMeans(n_init=...)``; the lowest inertia wins).
N_INIT = 3


def colour_bins(px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fit sample as a weighted colour histogram: what the k-means runs on.

    Exact distinct colours when there are at most :data:`MAX_BINS`; otherwise each channel is
    quantised to ``256 >> s`` levels with the smallest shift ``s`` that leaves at most
    :data:`MAX_BINS` occupied bins, and each bin is represented by the exact mean colour of its
    member pixels.

    Parameters
    ----------
    px : numpy.ndarray
        ``(n, 3)`` uint8 RGB pixels.

    Returns
    -------
    colours : numpy.ndarray
        ``(m, 3)`` float64 mean colour of each occupied bin (8-bit RGB units), in bin order.
    weights : numpy.ndarray
        ``(m,)`` float64 number of pixels in each bin.
    """
    return _colour_hist(px)[:2]


def _colour_hist(px: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`colour_bins` plus the number of distinct colours."""
    p = np.asarray(px, dtype=np.int64)
    uniq, counts = np.unique((p[:, 0] << 16) | (p[:, 1] << 8) | p[:, 2], return_counts=True)
    rgb = np.stack([uniq >> 16, (uniq >> 8) & 255, uniq & 255], axis=1)
    w = counts.astype(np.float64)
    if uniq.size <= MAX_BINS:
        return rgb.astype(np.float64), w, int(uniq.size)
    for shift in range(1, 8):  # quantise the distinct colours (weighted), not the pixels
        q = rgb >> shift
        codes, inverse = np.unique((q[:, 0] << 16) | (q[:, 1] << 8) | q[:, 2],
                                   return_inverse=True)
        if codes.size <= MAX_BINS or shift == 7:
            break
    bw = np.bincount(inverse, weights=w)
    sums = np.stack([np.bincount(inverse, weights=w * rgb[:, c]) for c in range(3)], axis=1)
    return sums / bw[:, None], bw, int(uniq.size)


def distance_matrix(px: np.ndarray) -> np.ndarray:
    """``(n, n)`` float64 Euclidean distances between ``(n, 3)`` 8-bit pixels.

    The squared distances are exact integers (int32), then correctly rounded square roots: the
    same bits as ``sklearn.metrics.pairwise_distances`` on these integer-valued inputs (whose
    float64 arithmetic is exact below 2⁵³), at a third of its cost (no input validation, no
    BLAS, no ``X·Yᵀ`` expansion).
    """
    p = np.asarray(px, dtype=np.int32)
    d2 = np.zeros((p.shape[0], p.shape[0]), dtype=np.int32)
    for c in range(p.shape[1]):
        t = p[:, c, None] - p[None, :, c]
        t *= t
        d2 += t
    return np.sqrt(d2, dtype=np.float64)


@functools.lru_cache(maxsize=1)
def _threadpools():
    """This process's native thread pools (found once: a lookup costs ≈ 13 ms)."""
    import sklearn.cluster  # noqa: F401 - loads the OpenMP runtime the limit must see
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _silhouette(dist: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette from a precomputed distance matrix (NaN for < 2 or > n − 1 clusters).

    scikit-learn's ``silhouette_score(dist, labels, metric="precomputed")``, bit for bit, without
    its per-sample Python loop: its per-row ``np.bincount`` of the distances by label is one
    ``np.bincount`` over the flattened matrix (each cell summed in the same order), then the same
    elementwise steps.
    """
    _, lab = np.unique(labels, return_inverse=True)  # = sklearn's LabelEncoder
    n, m = dist.shape[0], int(lab.max()) + 1 if lab.size else 0
    if m < 2 or m > n - 1:
        return float("nan")
    freqs = np.bincount(lab)
    cell = (np.arange(n)[:, None] * m + lab[None, :]).ravel()
    sums = np.bincount(cell, weights=dist.ravel(), minlength=n * m).reshape(n, m)
    own = (np.arange(n), lab)
    intra = sums[own]
    sums[own] = np.inf
    sums /= freqs
    inter = sums.min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        intra /= (freqs - 1).take(lab, mode="clip")
        sil = inter - intra
        sil /= np.maximum(intra, inter)
    return float(np.mean(np.nan_to_num(sil)))


def _check_params(n_start, delta, patience, score_batch) -> None:
    """Validate the sweep parameters (raises ConfigError naming the parameter)."""
    for name, v in (("n_start", n_start), ("delta", delta), ("patience", patience),
                    ("score_batch", score_batch)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ConfigError(f"{name} must be an integer, got {v!r}")
    if n_start < 2:
        raise ConfigError(f"n_start must be >= 2 clusters, got {n_start}")
    if delta < 0:
        raise ConfigError(f"delta must be >= 0, got {delta}")
    if patience < -1:
        raise ConfigError(f"patience must be -1 (none) or >= 0, got {patience}")
    if score_batch < 3:
        raise ConfigError(f"score_batch must be >= 3 pixels, got {score_batch}")


def fit_iterative_kmeans(
    pixels: np.ndarray,
    *,
    n_start: int = 10,
    delta: int = 3,
    patience: int = -1,
    score_batch: int = 1024,
    seed: int = 0,
) -> ClusterModel:
    """Iterative k-means over a range of k, scored by the silhouette (paper Alg. 2).

    Parameters
    ----------
    pixels : numpy.ndarray
        ``(n, 3)`` uint8 RGB pixels (the fit subsample, see :func:`subsample_pixels`).
    n_start : int
        Centre of the k sweep (number of clusters).
    delta : int
        Half width of the sweep: k = ``n_start − delta`` … ``n_start + delta`` inclusive, k ≥ 2.
    patience : int
        ``−1``: try every k.  ``p ≥ 0``: stop once more than ``p`` steps did not improve the best
        silhouette score (paper Alg. 2).
    score_batch : int
        Pixels (seed-derived subsample of ``pixels``) on which each silhouette score is computed.
    seed : int
        Master seed: silhouette subsample from ``SeedSequence(seed, (2,))``, the k-means++
        starts for k from ``SeedSequence(seed, (3, k))``.

    Returns
    -------
    ClusterModel

    Raises
    ------
    ImageError
        Fewer than 2 pixels to cluster.
    ConfigError
        Invalid parameters.
    """
    from sklearn.cluster import KMeans

    _check_params(n_start, delta, patience, score_batch)
    px = np.asarray(pixels)
    if px.ndim != 2 or px.shape[1] != 3:
        raise ImageError(f"pixels must have shape (n, 3), got {px.shape}")
    if px.shape[0] < 2:
        raise ImageError(
            f"need at least 2 pixels to cluster colours, got {px.shape[0]} "
            "(1x1 or fully transparent image?)"
        )
    params = {"n_start": int(n_start), "delta": int(delta), "patience": int(patience),
              "score_batch": int(score_batch), "seed": int(seed)}
    x = px.astype(np.float64)
    colours, weights, n_distinct = _colour_hist(px)
    if n_distinct == 1:
        warnings.warn("the image has a single colour: one cluster (k = 1)", UserWarning,
                      stacklevel=2)
        return ClusterModel(x[:1].copy(), px[:1].astype(np.uint8), 1, {}, px.shape[0], 0,
                            params)
    ks = [k for k in range(max(2, n_start - delta), n_start + delta + 1)
          if k <= min(n_distinct, colours.shape[0])]
    if not ks:
        ks = [int(min(n_distinct, colours.shape[0]))]
    n_score = min(int(score_batch), x.shape[0])
    score_idx = np.sort(_rng(seed, _KEY_SILHOUETTE).choice(x.shape[0], n_score, replace=False))
    xs = x[score_idx]
    if np.issubdtype(px.dtype, np.integer):  # once, for the silhouette of every k
        dist = distance_matrix(px[score_idx])
    else:
        from sklearn.metrics import pairwise_distances

        dist = pairwise_distances(xs)

    best_s, best = -np.inf, None
    scores: dict[int, float] = {}
    misses = 0
    with _threadpools().limit(limits=1):  # OpenMP threads: slow when oversubscribed, tiny inputs
        for k in ks:
            rs = int(np.random.SeedSequence(int(seed), spawn_key=(_KEY_KMEANS, k)).generate_state(1)[0])
            km = KMeans(n_clusters=k, n_init=N_INIT, random_state=rs)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ConvergenceWarning on near-degenerate inputs
                km.fit(colours, sample_weight=weights)
            s = _silhouette(dist, nearest_centroid(xs, km.cluster_centers_))
            scores[k] = s
            if best is None or (np.isfinite(s) and s > best_s):
                best, best_s = km.cluster_centers_, (s if np.isfinite(s) else -np.inf)
                continue
            misses += 1
            if patience >= 0 and misses > patience:
                break
    centroids = np.asarray(best, dtype=np.float64)
    labels = nearest_centroid(x, centroids)
    # drop empty clusters (possible on tiny inputs), then mean colour of the members
    used = np.unique(labels)
    centroids = centroids[used]
    labels = np.searchsorted(used, labels)
    counts = np.bincount(labels, minlength=used.size)
    sums = np.stack([np.bincount(labels, weights=x[:, c], minlength=used.size)
                     for c in range(3)], axis=1)
    cluster_rgb = np.clip(np.rint(sums / counts[:, None]), 0, 255).astype(np.uint8)
    return ClusterModel(centroids, cluster_rgb, int(used.size), scores, x.shape[0], n_score,
                        params)


def predict_labels(
    image: xr.DataArray,
    model: ClusterModel,
    alpha_mask: xr.DataArray | None = None,
) -> xr.DataArray:
    """Cluster label of every pixel, computed lazily chunk by chunk.

    Parameters
    ----------
    image : xarray.DataArray
        ``(y, x, channel)`` uint8, dask-backed with chunks ``(c, c, 3)``.
    model : ClusterModel
    alpha_mask : xarray.DataArray, optional
        Bool ``(y, x)``: False (fully transparent) pixels get label −1.

    Returns
    -------
    xarray.DataArray
        ``(y, x)`` int16, dask chunks as the image's y/x chunks.
    """
    img = image.transpose("y", "x", "channel")
    data = img.data if isinstance(img.data, da.Array) else da.from_array(img.data)
    if data.numblocks[2] != 1:
        data = data.rechunk({2: 3})
    centroids = np.asarray(model.centroids, dtype=np.float64)
    labels = da.map_blocks(
        nearest_centroid, data, centroids, drop_axis=2, dtype=np.int16,
        meta=np.empty((0, 0), np.int16), name="labels-" + _tok(data, centroids),
    )
    if alpha_mask is not None:
        m = alpha_mask.transpose("y", "x").data
        m = m.rechunk(labels.chunks) if isinstance(m, da.Array) else da.from_array(
            np.asarray(m), chunks=labels.chunks)
        labels = da.where(m, labels, np.int16(-1)).astype(np.int16)
    return xr.DataArray(
        labels, dims=("y", "x"),
        coords={"y": img.coords["y"], "x": img.coords["x"]} if "y" in img.coords else None,
        name="labels",
        attrs=label_attrs(model.k),
    )


def label_attrs(k: int) -> dict:
    """CF attributes of ``labels``: every value is a flag (-1 transparent, 0 … k-1 clusters)."""
    return {"long_name": "cluster label (-1 = transparent, no counts)",
            "flag_values": [-1, *range(int(k))],
            "flag_meanings": " ".join(["transparent_no_counts",
                                       *(f"cluster_{i}" for i in range(int(k)))])}


def _tok(*args) -> str:
    from dask.base import tokenize

    return tokenize(*args)
