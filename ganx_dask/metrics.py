"""Similarity metrics of the ganX paper (§3 and appendix A): spectral distances, SSIM, MS-SSIM.

Spectral metrics compare two spectra ``u``, ``v`` (1-D, e.g. the sum spectra of two cubes, in
counts or normalised to sum 1).  They are pure functions written with NumPy calls that dispatch
to dask (NEP-18), so they also accept dask arrays and then stay lazy.

=================  =========================================================  ===================
name               definition                                                 kind
=================  =========================================================  ===================
cosine             1 − u·v / (‖u‖ ‖v‖)                                         distance
jensen_shannon     √(½ KL(p‖m) + ½ KL(q‖m)), p,q = u,v normalised, m = (p+q)/2  distance (natural log)
chebyshev          max |u − v|                                                 distance
correlation        1 − (u−ū)·(v−v̄) / (‖u−ū‖ ‖v−v̄‖)                              distance
bray_curtis        Σ|u − v| / Σ|u + v|                                         distance
chi_square         ½ Σ (u − v)² / (u + v),  0/0 := 0                           distance
bhattacharyya      BC = Σ √(u v)                                               similarity
hellinger          √(1 − BC)                                                   distance
=================  =========================================================  ===================

:func:`spectral_metrics` normalises both spectra to sum 1 first (as the paper does) and returns all
of them.  The first five equal :mod:`scipy.spatial.distance`'s ``cosine``, ``jensenshannon``,
``chebyshev``, ``correlation`` and ``braycurtis``.

Image metrics compare two *flattened* cubes, shape ``(H·W, E)`` (pixels × channels), after the
paper's display transform ``x → tanh(log(1 + x))`` (values in [0, 1), so ``data_range = 1``):

* :func:`ssim` — the mean SSIM of Wang et al. (2004) exactly as
  :func:`skimage.metrics.structural_similarity` computes it by default (7×7 uniform window,
  K1 = 0.01, K2 = 0.03, sample covariance, borders of half a window excluded);
* :func:`ms_ssim` — multi-scale SSIM (Wang, Simoncelli & Bovik 2003): M = 5 scales, 11×11
  Gaussian window σ = 1.5, contrast·structure terms at every scale and luminance at the coarsest,
  exponents (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), 2×2 average low-pass + downsampling by 2
  between scales.

Both accept NumPy or dask arrays; with dask the SSIM maps are computed block-wise
(``map_overlap``) so memory stays bounded by the chunk size.

:func:`poisson_reference` draws the paper's "Poisson noise" reference cube lazily and
deterministically.
"""

from __future__ import annotations

from collections.abc import Sequence

import dask
import dask.array as da
import numpy as np
import xarray as xr
from scipy import ndimage

from .errors import GanxError
from .seeding import check_seed

__all__ = [
    "cosine",
    "jensen_shannon",
    "chebyshev",
    "correlation",
    "bray_curtis",
    "chi_square",
    "bhattacharyya",
    "hellinger",
    "spectral_metrics",
    "SPECTRAL_METRICS",
    "DISTANCES",
    "SIMILARITIES",
    "display_transform",
    "ssim",
    "ms_ssim",
    "MS_SSIM_WEIGHTS",
    "poisson_reference",
    "POISSON_SPAWN_KEY",
    "POISSON_TILE",
]

#: Exponents of the five scales of MS-SSIM (Wang, Simoncelli & Bovik 2003, Table/eq. 7).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

#: Spawn-key namespace of the Poisson reference cube's random streams: ``(5, ty, tx)``.
POISSON_SPAWN_KEY = 5
#: Edge (pixels) of the fixed global tile grid the Poisson reference is seeded on.
POISSON_TILE = 64


def _f(a):
    """As float64 (keeps dask arrays lazy)."""
    if isinstance(a, da.Array):
        return a.astype(np.float64)
    return np.asarray(a, dtype=np.float64)


def _check_pair(u, v) -> None:
    if u.shape != v.shape:
        raise GanxError(f"spectra must have the same shape to be compared, got {u.shape} and {v.shape}")


# --------------------------------------------------------------------------- spectral metrics
def cosine(u, v):
    """Cosine distance ``1 − u·v / (‖u‖‖v‖)`` (dimensionless; 0 for parallel spectra).

    Parameters
    ----------
    u, v : array-like, shape (E,)
        Spectra (counts or probabilities per channel).
    """
    u, v = _f(u), _f(v)
    _check_pair(u, v)
    return 1.0 - np.sum(u * v) / np.sqrt(np.sum(u * u) * np.sum(v * v))


def jensen_shannon(u, v):
    """Jensen–Shannon distance (natural log), as :func:`scipy.spatial.distance.jensenshannon`.

    Both inputs are normalised to sum 1 first; terms with zero probability contribute 0.
    """
    u, v = _f(u), _f(v)
    _check_pair(u, v)
    p = u / np.sum(u)
    q = v / np.sum(v)
    m = 0.5 * (p + q)

    def kl(a, b):
        safe_a = np.where(a > 0, a, 1.0)
        safe_b = np.where(b > 0, b, 1.0)
        return np.sum(np.where(a > 0, a * np.log(safe_a / safe_b), 0.0))

    js = 0.5 * (kl(p, m) + kl(q, m))
    return np.sqrt(np.maximum(js, 0.0))


def chebyshev(u, v):
    """Chebyshev distance ``max |u − v|`` (units of the inputs)."""
    u, v = _f(u), _f(v)
    _check_pair(u, v)
    return np.max(np.abs(u - v))


def correlation(u, v):
    """Correlation distance ``1 − (u−ū)·(v−v̄) / (‖u−ū‖‖v−v̄‖)`` (dimensionless)."""
    u, v = _f(u), _f(v)
    _check_pair(u, v)
    uc = u - np.mean(u)
    vc = v - np.mean(v)
    return 1.0 - np.sum(uc * vc) / np.sqrt(np.sum(uc * uc) * np.sum(vc * vc))


def bray_curtis(u, v):
    """Bray–Curtis dissimilarity ``Σ|u − v| / Σ|u + v|`` (dimensionless, in [0, 1] for u, v ≥ 0)."""
    u, v = _f(u), _f(v)
    _check_pair(u, v)
    return np.sum(np.abs(u - v)) / np.sum(np.abs(u + v))


def chi_square(u, v):
    """Chi-square distance ``½ Σ (u − v)² / (u + v)`` with ``0/0 := 0`` (units of the inputs)."""
    u, v = _f(u), _f(v)
    _check_pair(u, v)
    s = u + v
    d = u - v
    safe = np.where(s != 0, s, 1.0)
    return 0.5 * np.sum(np.where(s != 0, d * d / safe, 0.0))


def bhattacharyya(u, v):
    """Bhattacharyya coefficient ``BC = Σ √(u v)`` (similarity; 1 for identical distributions).

    Meaningful for distributions (sum 1); :func:`spectral_metrics` normalises first.
    """
    u, v = _f(u), _f(v)
    _check_pair(u, v)
    return np.sum(np.sqrt(u * v))


def hellinger(u, v):
    """Hellinger distance ``√(1 − BC(u, v))`` for distributions (sum 1); 0 when identical."""
    return np.sqrt(np.maximum(1.0 - bhattacharyya(u, v), 0.0))


#: Name → function of every spectral metric, in the order of the paper's Table 1 (+ Hellinger).
SPECTRAL_METRICS = {
    "cosine": cosine,
    "jensen_shannon": jensen_shannon,
    "chebyshev": chebyshev,
    "correlation": correlation,
    "bray_curtis": bray_curtis,
    "chi_square": chi_square,
    "bhattacharyya": bhattacharyya,
    "hellinger": hellinger,
}
#: Metrics where lower is better.
DISTANCES = ("cosine", "jensen_shannon", "chebyshev", "correlation", "bray_curtis",
             "chi_square", "hellinger")
#: Metrics where higher is better.
SIMILARITIES = ("bhattacharyya",)


def spectral_metrics(u, v, names: Sequence[str] | None = None) -> dict[str, float]:
    """All spectral metrics between two spectra normalised to sum 1.

    Parameters
    ----------
    u, v : array-like or xarray.DataArray, shape (E,)
        Non-negative spectra (e.g. sum spectra in counts) on the same energy axis.
    names : sequence of str, optional
        Subset of :data:`SPECTRAL_METRICS` (default: all, in the paper's order).

    Returns
    -------
    dict
        Metric name → float (dimensionless).

    Raises
    ------
    GanxError
        Shapes differ, a spectrum has negative/non-finite values or sums to zero.
    """
    if isinstance(u, xr.DataArray):
        u = u.data
    if isinstance(v, xr.DataArray):
        v = v.data
    u, v = dask.compute(_f(u), _f(v))
    _check_pair(u, v)
    for name, a in (("first", u), ("second", v)):
        if a.ndim != 1:
            raise GanxError(f"{name} spectrum must be 1-D, got shape {a.shape}")
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            raise GanxError(f"{name} spectrum has negative or non-finite values")
        if a.sum() <= 0:
            raise GanxError(f"{name} spectrum is all zero")
    p, q = u / u.sum(), v / v.sum()
    unknown = set(names or ()) - set(SPECTRAL_METRICS)
    if unknown:
        raise GanxError(f"unknown metric(s) {sorted(unknown)}; choose from {list(SPECTRAL_METRICS)}")
    return {n: float(SPECTRAL_METRICS[n](p, q)) for n in (names or SPECTRAL_METRICS)}


# --------------------------------------------------------------------------- image metrics
def display_transform(x):
    """The paper's enhancement ``x → tanh(log(1 + x))`` (counts → [0, 1)), lazy for dask."""
    return np.tanh(np.log1p(_f(x)))


def _as_image(a, name: str):
    if isinstance(a, xr.DataArray):
        a = a.data
    if not isinstance(a, da.Array):
        a = np.asarray(a)
    if a.ndim != 2:
        raise GanxError(
            f"{name} must be a flattened cube of shape (pixels, energy), got {a.ndim}-D "
            f"{tuple(a.shape)}; use ganx_dask.analysis.flatten first"
        )
    return a


def _prepare(a, b, transform: bool):
    a = _as_image(a, "first cube")
    b = _as_image(b, "second cube")
    if tuple(a.shape) != tuple(b.shape):
        raise GanxError(
            f"SSIM needs flattened cubes of the same shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)} (same pixel count and the same energy channels)"
        )
    if isinstance(a, da.Array) or isinstance(b, da.Array):
        # small row blocks *before* converting to float64, so no block exceeds ~16 MiB
        a = _rechunk_rows(da.asarray(a), 8)
        b = da.asarray(b).rechunk(a.chunks)
    if transform:
        a, b = display_transform(a), display_transform(b)
    else:
        a, b = _f(a), _f(b)
    return a, b


def _ssim_maps(a: np.ndarray, b: np.ndarray, filt, c1: float, c2: float, cov_norm: float):
    """Per-pixel SSIM and contrast-structure maps (float64) for windows given by ``filt``."""
    ux, uy = filt(a), filt(b)
    uxx, uyy, uxy = filt(a * a), filt(b * b), filt(a * b)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    cs = (2 * vxy + c2) / (vx + vy + c2)
    lum = (2 * ux * uy + c1) / (ux * ux + uy * uy + c1)
    return lum * cs, cs


def _uniform(win: int):
    return lambda x: ndimage.uniform_filter(x, size=win, mode="reflect")


def _gauss(sigma: float, win: int):
    truncate = ((win - 1) / 2) / sigma
    return lambda x: ndimage.gaussian_filter(x, sigma=sigma, mode="reflect", truncate=truncate)


def _mean_maps(a, b, filt, win: int, c1: float, c2: float, cov_norm: float):
    """Means of the SSIM and cs maps over the interior (half a window cropped at each border).

    Lazy (block-wise with overlap) for dask inputs, eager for NumPy.
    """
    pad = (win - 1) // 2
    if isinstance(a, da.Array) or isinstance(b, da.Array):
        a = _rechunk_rows(da.asarray(a), pad)
        b = da.asarray(b).rechunk(a.chunks)
        depth = {0: pad, 1: pad}
        ga = da.overlap.overlap(a, depth=depth, boundary="reflect")
        gb = da.overlap.overlap(b, depth=depth, boundary="reflect")

        def block(x, y):
            s, cs = _ssim_maps(x, y, filt, c1, c2, cov_norm)
            return np.stack([s, cs])

        maps = da.map_blocks(block, ga, gb, new_axis=0, chunks=((2,),) + ga.chunks,
                             dtype=np.float64)
        maps = da.overlap.trim_internal(maps, {0: 0, 1: pad, 2: pad}, boundary="reflect")
        inner = maps[:, pad: a.shape[0] - pad, pad: a.shape[1] - pad]
        return inner.mean(axis=(1, 2))
    s, cs = _ssim_maps(a, b, filt, c1, c2, cov_norm)
    sl = (slice(pad, a.shape[0] - pad), slice(pad, a.shape[1] - pad))
    return np.array([s[sl].mean(), cs[sl].mean()])


def ssim(a, b, *, transform: bool = True, win_size: int = 7, data_range: float | None = None,
         compute: bool = True):
    """Mean structural similarity of two flattened cubes (as scikit-image's default SSIM).

    Parameters
    ----------
    a, b : array-like, dask array or DataArray, shape (H·W, E)
        Flattened cubes (pixels × energy channels), counts.
    transform : bool
        Apply ``x → tanh(log(1 + x))`` first (paper); then ``data_range`` defaults to 1.
    win_size : int
        Odd side of the uniform window, pixels/channels (skimage default 7).
    data_range : float, optional
        Dynamic range of the values (default 1 with the transform, else max − min of both).
    compute : bool
        Return a float (default) or a lazy 0-d dask array for dask inputs.

    Returns
    -------
    float
        Mean SSIM in [−1, 1]; 1 for identical inputs.

    Notes
    -----
    For NumPy inputs this calls :func:`skimage.metrics.structural_similarity` directly; for dask
    inputs the same formula is evaluated block-wise (equal to skimage up to rounding).
    """
    a, b = _prepare(a, b, transform)
    if win_size % 2 != 1 or win_size < 3:
        raise GanxError(f"win_size must be odd and >= 3, got {win_size}")
    if min(a.shape) < win_size:
        raise GanxError(f"flattened cubes of shape {tuple(a.shape)} are smaller than the "
                        f"{win_size}×{win_size} SSIM window")
    if data_range is None:
        if transform:
            data_range = 1.0
        else:
            lo, hi = dask.compute(da.minimum(a.min(), b.min()) if isinstance(a, da.Array)
                                  else min(a.min(), b.min()),
                                  da.maximum(a.max(), b.max()) if isinstance(a, da.Array)
                                  else max(a.max(), b.max()))
            data_range = float(hi - lo) or 1.0
    if not isinstance(a, da.Array) and not isinstance(b, da.Array):
        from skimage.metrics import structural_similarity

        return float(structural_similarity(a, b, win_size=win_size, data_range=data_range))
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    npix = win_size ** 2
    res = _mean_maps(a, b, _uniform(win_size), win_size, c1, c2, npix / (npix - 1.0))[0]
    return float(res.compute()) if compute else res


def _rechunk_rows(x, pad: int, target: int = 2**21):
    """Row blocks of about ``target`` elements (all channels in one block), each > ``pad`` rows."""
    rows = int(np.clip(target // max(x.shape[1], 1), 4 * pad + 2, max(x.shape[0], 1)))
    return x.rechunk((rows, -1))


def _downsample(x):
    """2×2 average (low-pass) then keep every second row/column (odd trailing row dropped)."""
    h, w = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
    x = x[:h, :w]
    if isinstance(x, da.Array):
        even = tuple(max(2, (max(ch) // 2) * 2) for ch in x.chunks)
        return da.coarsen(np.mean, x.rechunk(even), {0: 2, 1: 2})
    return x.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


def _coarsen(x, f: int):
    """``f × f`` block average of a dask image (trailing rows/columns that do not fill a block
    are dropped), in row blocks of about 16 MiB of output."""
    if f == 1:
        return x
    h, w = (x.shape[0] // f) * f, (x.shape[1] // f) * f
    x = x[:h, :w]
    rows = max(f, (max(x.chunks[0]) // f) * f)
    x = x.rechunk((rows, max(f, (w // f) * f)))
    return da.coarsen(np.mean, x, {0: f, 1: f})


def ms_ssim(a, b, *, transform: bool = True, weights: Sequence[float] = MS_SSIM_WEIGHTS,
            win_size: int = 11, sigma: float = 1.5, data_range: float = 1.0,
            compute: bool = True):
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003) of two flattened cubes.

    ``MS-SSIM = l_M^{w_M} · Π_{j=1..M} cs_j^{w_j}`` with ``M = len(weights)`` scales; ``cs_j`` is
    the mean contrast·structure term at scale ``j``, ``l_M`` the mean luminance term at the
    coarsest scale (computed as mean SSIM / mean cs there).  Between scales the images are
    low-pass filtered with a 2×2 average and downsampled by 2.  Negative ``cs`` values (possible
    for anti-correlated noise) are clipped to 0.

    Parameters
    ----------
    a, b : array-like, dask array or DataArray, shape (H·W, E)
        Flattened cubes, counts.
    transform : bool
        Apply ``x → tanh(log(1 + x))`` first (paper).
    weights : sequence of float
        Per-scale exponents, finest first (default: the published five).
    win_size, sigma : int, float
        Gaussian window side (pixels) and standard deviation (pixels).
    data_range : float
        Dynamic range (1 after the transform).
    compute : bool
        Return a float (default) or a lazy dask scalar for dask inputs.

    Returns
    -------
    float
        MS-SSIM in [0, 1]; 1 for identical inputs.

    Raises
    ------
    GanxError
        When the coarsest scale would be smaller than the window: both sides must be at least
        ``win_size · 2**(M−1)`` (176 for the defaults).
    """
    a, b = _prepare(a, b, transform)
    m = len(weights)
    need = win_size * 2 ** (m - 1)
    if min(a.shape) < need:
        raise GanxError(
            f"MS-SSIM with {m} scales and a {win_size}-pixel window needs flattened cubes of at "
            f"least {need}×{need}, got {tuple(a.shape)}"
        )
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    filt = _gauss(sigma, win_size)
    lazy = isinstance(a, da.Array) or isinstance(b, da.Array)
    per_scale = []
    if lazy:
        # Scale j is the 2^j × 2^j block average of the full-resolution image (the same as j
        # successive 2×2 averages).  Each scale is its own graph from the inputs, so no
        # full-resolution intermediate is shared between scales and held in memory.
        a, b = da.asarray(a), da.asarray(b)
        for j in range(m):
            f = 2 ** j
            aj, bj = (_coarsen(x, f) for x in (a, b))
            stats = _mean_maps(aj, bj, filt, win_size, c1, c2, 1.0)
            per_scale.append(stats.compute() if compute else stats)
        vals = np.stack(per_scale) if compute else da.stack(per_scale).rechunk(-1)
    else:
        for j in range(m):
            per_scale.append(_mean_maps(a, b, filt, win_size, c1, c2, 1.0))
            if j < m - 1:
                a, b = _downsample(a), _downsample(b)
        vals = np.stack(per_scale)

    def combine(v):
        ssim_m, cs = v[:, 0], v[:, 1]
        cs = np.maximum(cs, 0.0)
        lum = np.where(cs[-1] > 0, ssim_m[-1] / np.where(cs[-1] > 0, cs[-1], 1.0), 0.0)
        lum = np.maximum(lum, 0.0)
        w = np.asarray(weights, dtype=float)
        return np.prod(cs[:-1] ** w[:-1]) * (cs[-1] * lum) ** w[-1]

    if lazy and not compute:
        return vals.map_blocks(combine, drop_axis=[0, 1], dtype=np.float64)
    return float(combine(vals))


# --------------------------------------------------------------------------- Poisson reference
def _poisson_block(block: np.ndarray, seed: int, y0: int, x0: int, tile: int, exact: bool,
                   dtype) -> np.ndarray:
    h, w, e = block.shape
    out = np.empty(block.shape, dtype=dtype)
    totals = block.sum(axis=-1, dtype=np.int64)
    pvals = np.full(e, 1.0 / e)
    for ty0 in range(0, h, tile):
        for tx0 in range(0, w, tile):
            ty, tx = (y0 + ty0) // tile, (x0 + tx0) // tile
            rng = np.random.Generator(np.random.PCG64(
                np.random.SeedSequence(seed, spawn_key=(POISSON_SPAWN_KEY, ty, tx))))
            n = totals[ty0: ty0 + tile, tx0: tx0 + tile]
            if exact:
                draw = rng.multinomial(n, pvals)
            else:
                draw = rng.poisson(n[..., None] / e, size=n.shape + (e,))
            if draw.size and draw.max() > np.iinfo(dtype).max:
                raise OverflowError(f"Poisson reference count {draw.max()} does not fit {dtype}")
            out[ty0: ty0 + tile, tx0: tx0 + tile] = draw
    return out


def poisson_reference(counts, seed: int, *, exact: bool = False, tile: int = POISSON_TILE):
    """A Poisson-noise cube with the same counts per pixel as ``counts`` (paper's reference).

    Every pixel's counts are spread over the energy channels uniformly at random: with
    ``exact=False`` each channel is Poisson(n / E) (expected total per pixel = n, the pixel's
    total in ``counts``); with ``exact=True`` the totals match exactly (multinomial with uniform
    probabilities).  Random streams come from ``SeedSequence(seed, spawn_key=(5, ty, tx))`` for
    each tile (``tile``×``tile`` pixels) of a fixed global grid, so the result does not depend on
    the chunking (as long as chunks are multiples of ``tile``; other chunkings are rechunked).

    Parameters
    ----------
    counts : xarray.DataArray (y, x, energy), dask or numpy array (H, W, E)
        Photon counts.
    seed : int
        Non-negative seed.
    exact : bool
        Match each pixel's total exactly instead of in expectation.
    tile : int
        Seeding tile edge, pixels.

    Returns
    -------
    Same type as ``counts`` (DataArray keeps coords), lazy for dask input, dtype of ``counts``
    (uint32 if it is not an unsigned integer type).
    """
    seed = check_seed(seed)
    is_da = isinstance(counts, xr.DataArray)
    data = counts.transpose("y", "x", "energy").data if is_da else counts
    lazy = isinstance(data, da.Array)
    arr = data if lazy else da.from_array(np.asarray(data), chunks=(tile * 4, tile * 4, -1))
    if arr.ndim != 3:
        raise GanxError(f"counts must be a (y, x, energy) cube, got shape {tuple(arr.shape)}")
    dtype = arr.dtype if np.issubdtype(arr.dtype, np.unsignedinteger) else np.dtype(np.uint32)
    chunks = []
    for ch in arr.chunks[:2]:
        size = max(tile, (max(ch) // tile) * tile)
        chunks.append(size)
    arr = arr.rechunk((chunks[0], chunks[1], -1))
    offs = [np.cumsum((0,) + ch[:-1]) for ch in arr.chunks[:2]]

    def fn(block, block_info=None):
        loc = block_info[0]["chunk-location"]
        return _poisson_block(block, int(seed), int(offs[0][loc[0]]), int(offs[1][loc[1]]),
                              tile, exact, dtype)

    out = arr.map_blocks(fn, dtype=dtype)
    if not lazy:
        out = out.compute()
    if is_da:
        res = xr.DataArray(out, dims=("y", "x", "energy"),
                           coords={k: v for k, v in counts.coords.items()},
                           attrs={"long_name": "Poisson-noise reference counts", "units": "counts",
                                  "seed": int(seed), "exact_totals": bool(exact)})
        return res
    return out
