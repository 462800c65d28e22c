"""Monte Carlo photon sampling: alias tables, count models and the per-tile seeded cube.

Every pixel ``p`` with cluster label ``k = labels[p]`` receives photons whose energies are drawn
from the cluster's spectrum ``d_k`` (a probability distribution over the ``E`` energy channels).
Three count models set how many photons a pixel receives:

``"fixed"``
    Exactly ``N`` photons per pixel, i.e. ``counts[p] ~ Multinomial(N, d_k)`` (the ganX paper).
``"poisson"``
    Each channel independently ``Poisson(N·d_k[e])``.  Implemented by *Poisson splitting*: the
    pixel total ``T ~ Poisson(N)`` is drawn first, then ``T`` photons are drawn from ``d_k``.
    Given ``T`` the channel counts are ``Multinomial(T, d_k)``, and a Poisson-mixed multinomial
    is exactly a vector of independent Poissons with means ``N·d_k[e]`` — the same distribution as
    one Poisson per channel, but drawn with one uniform per photon instead of one Poisson variate
    per voxel (E/N ≈ 2.5× more variates and each far dearer).
``"luminosity"``
    Like ``"poisson"`` with per-pixel mean ``N·scale[p]`` (e.g. the pixel's brightness in [0, 1]
    or a user-supplied exposure map).

Photons are drawn with Walker's alias method (Vose's construction, :func:`alias_tables`): one
float64 uniform ``u`` per photon gives the column ``j = floor(u·E)`` and the coin
``f = u·E − j``; the outcome is ``j`` if ``f < prob[k, j]`` else ``alias[k, j]``.  Cost is O(1) per
photon and independent of ``E``.  The work is done tile by tile in sub-batches of a few hundred
pixels whose temporaries live in per-thread scratch buffers that stay in cache (method 6b of
``docs/performance.md``); an optional numba kernel (extra ``[fast]``) fuses the gather and the
count and consumes exactly the same uniforms, so both engines give bit-identical cubes.

Determinism
-----------
Each ``tile × tile`` square of the *fixed global grid* (default 64 px) draws from its own
generator ``Generator(PCG64(SeedSequence(seed, spawn_key=(0, ty, tx))))`` where ``(ty, tx)`` is
the tile's global index.  Within a tile the stream is consumed in a fixed order:

1. ``poisson``/``luminosity`` only: one ``rng.poisson(mean)`` per valid pixel (label ≥ 0), in
   row-major order, as a single vectorised call;
2. one ``rng.random()`` per photon, pixels in row-major order, photons of a pixel consecutive.

Detector effects (:mod:`ganx_dask.detector`, ``detector=``) draw from their own streams
``(4, 0, ty, tx)`` (pile-up) and ``(4, 1, ty, tx)`` (beam-spot offsets) and never change how
this stream is consumed; dead time only changes the Poisson means of step 1.  With every effect
off the cube is the plain cube, bit for bit.

Count-adaptive sampling
-----------------------
Tiles whose valid pixels get many photons on average (``≥ max(5·E, 1000)``, e.g. 5 120 at
E = 1024: :func:`ganx_dask.per_channel.use_per_channel`) are drawn *per channel* instead of per
photon (:mod:`ganx_dask.per_channel`: Poisson per channel, an exact multinomial for ``fixed``),
from their own stream ``(7, ty, tx)``; the choice depends on the parameters only (count model,
counts, the tile's labels and scale, detector effects, E).  Below the threshold — the paper's
default N = 400 included — the per-photon path and its bytes are unchanged.

Pixels labelled −1 consume nothing and get zero counts.  The result therefore depends only on
the seed, the labels, the spectra and the parameters — not on dask chunking (any multiple of the
tile), scheduler, worker count, retries or engine.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import threading
from collections.abc import Sequence
from typing import Literal

import dask.array as da
import numpy as np

from . import detector as _det
from . import per_channel as _pc
from .alias import alias_distributions, alias_tables
from .alias import alias_lookup as _alias_lookup
from .alias import padded_tables as _padded_tables
from .errors import ConfigError, GanxError
from .seeding import check_seed

__all__ = [
    "COUNT_MODELS",
    "DEFAULT_TILE",
    "MAX_COUNTS_PER_PIXEL",
    "check_count_model",
    "alias_tables",
    "counts_dtype",
    "tile_rng",
    "sample_tile",
    "sample_block",
    "sample_cube",
    "has_numba",
    "TileEffects",
]

#: Names of the count models.
COUNT_MODELS = ("fixed", "poisson", "luminosity")
#: Default edge of the global seeding tile grid, pixels.
DEFAULT_TILE = 64
#: Spawn-key namespace of the Monte Carlo (see the determinism rule in docs/architecture.md).
_MC_KEY = 0
#: Photons per sub-batch of the numpy kernel: its temporaries (~33 B/photon) stay in L2/L3
#: (measured: 2^14–2^15 best, 2^18 is 25 % slower).
_BATCH_PHOTONS = 1 << 15
#: Photons per sub-batch of the numba kernel (only the uniforms are buffered).
_BATCH_PHOTONS_NUMBA = 1 << 17

CountModel = Literal["fixed", "poisson", "luminosity"]
Engine = Literal["auto", "numpy", "numba"]


#: Photons the numpy kernels may draw under ``engine="auto"`` in one process before numba is
#: loaded (2²⁶ ≈ 6.7·10⁷).  numba's first use costs ≈ 0.8 s of wall time here (``import numba``,
#: then the first cached kernel's set-up of numba's registries; GIL-bound, nothing runs beside
#: it), and the numpy kernels ≈ 10 ns of wall time per photon more than numba's on two threads
#: (measured 2026-12-02, ``docs/performance.md``): they cost as much over ≈ 8·10⁷ photons.  Each
#: job (a cube, or one direct call) is decided once, on its total: numpy while the photons drawn
#: with numpy so far plus the job's stay within this budget, else numba from then on — the
#: ski-rental rule (rent until the rent paid would reach the price): never more than twice the
#: cost of the best choice made knowing the future.
AUTO_NUMPY_PHOTONS = 1 << 26


class _AutoEngine:
    """Process-wide state of ``engine="auto"``: photons given to numpy so far, numba loaded, and
    the choice made for each recent job (its blocks may run in any order, on any thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.numpy_photons = 0
        self.numba = False
        self.jobs: dict[str, str] = {}

    def choose(self, photons: float, job: str | None = None) -> str:
        """Engine for ``photons`` (the whole job's when ``job`` names it)."""
        with self.lock:
            choice = "numba" if self.numba else self.jobs.get(job) if job else None
            if choice is None:
                numpy = self.numpy_photons + photons <= AUTO_NUMPY_PHOTONS
                self.numpy_photons += int(photons) if numpy else 0
                choice = "numpy" if numpy else "numba"
                if job:
                    if len(self.jobs) >= 256:
                        self.jobs.clear()
                    self.jobs[job] = choice
        if choice == "numpy" or not has_numba():
            return "numpy"
        self.numba = True
        return "numba"


_AUTO = _AutoEngine()


@functools.lru_cache(maxsize=1)
def has_numba() -> bool:
    """Return True when the optional numba engine can be used (``pip install ganx-dask[fast]``)."""
    try:
        if importlib.util.find_spec("numba") is None:
            return False
        from . import _numba_kernels  # noqa: F401
    except (ImportError, ValueError):
        return False
    return True


# --------------------------------------------------------------------------------------------
# count models
# --------------------------------------------------------------------------------------------
def _max_mean(count_model: str, counts: float, scale_max: float) -> float:
    return float(counts) * (float(scale_max) if count_model == "luminosity" else 1.0)


#: Largest mean number of photons per pixel accepted (the Monte Carlo draws every photon: one
#: uniform each; the plain sampler buffers at most ``max(N, 2^17)`` of them, but with pile-up or
#: blur a whole 64-px tile row, ``64·N``, is buffered).
MAX_COUNTS_PER_PIXEL = 1_000_000


def check_count_model(count_model: str, counts: float, *, scale_max: float = 1.0) -> None:
    """Validate a count model and its photons per pixel.

    Parameters
    ----------
    count_model : {"fixed", "poisson", "luminosity"}
    counts : float
        Photons per pixel (exact for ``fixed``, mean otherwise), counts.
    scale_max : float
        Largest per-pixel factor of the ``luminosity`` model.

    Raises
    ------
    ConfigError
        Unknown model, non-positive/non-finite counts, a non-integer ``fixed`` count, or more
        than :data:`MAX_COUNTS_PER_PIXEL` expected photons in a pixel.
    """
    if count_model not in COUNT_MODELS:
        raise ConfigError(
            f"unknown count model {count_model!r}; choose one of {', '.join(COUNT_MODELS)}"
        )
    if (isinstance(counts, bool) or not isinstance(counts, (int, float, np.integer, np.floating))
            or not np.isfinite(counts) or counts <= 0):
        raise ConfigError(f"counts (photons per pixel) must be a positive number, got {counts!r}")
    if count_model == "fixed" and float(counts) != int(counts):
        raise ConfigError(f"count model 'fixed' needs an integer number of counts, got {counts!r}")
    lam = float(counts) * (float(scale_max) if count_model == "luminosity" else 1.0)
    if lam > MAX_COUNTS_PER_PIXEL:
        raise ConfigError(
            f"counts: at most {MAX_COUNTS_PER_PIXEL:,} photons per pixel are supported "
            f"(requested {lam:g}{' at the brightest pixel' if count_model == 'luminosity' else ''})"
        )



def counts_dtype(count_model: str, counts: float, *, scale_max: float = 1.0) -> np.dtype:
    """Smallest unsigned dtype that holds every count of the model without overflow.

    Parameters
    ----------
    count_model : {"fixed", "poisson", "luminosity"}
    counts : float
        ``N``: photons per pixel (fixed) or mean photons per pixel (poisson/luminosity), counts.
    scale_max : float
        Largest per-pixel scale of the ``luminosity`` model (1 for brightness in [0, 1]).

    Returns
    -------
    numpy.dtype
        ``uint16`` when no channel can exceed 65 535 counts — for the random models when the
        pixel total stays below it with a 12-σ margin (probability < 1e-30 per pixel) — else
        ``uint32``.  The kernels still check the drawn totals and raise ``OverflowError`` rather
        than wrap if a count ever does not fit.
    """
    check_count_model(count_model, counts, scale_max=scale_max)
    lam = _max_mean(count_model, counts, scale_max)
    bound = lam if count_model == "fixed" else lam + 12.0 * math.sqrt(lam) + 12.0
    if bound <= np.iinfo(np.uint16).max:
        return np.dtype(np.uint16)
    if bound <= np.iinfo(np.uint32).max:
        return np.dtype(np.uint32)
    raise GanxError(f"counts={counts!r} per pixel cannot be stored even in uint32")


def tile_rng(seed: int, ty: int, tx: int) -> np.random.Generator:
    """Generator of tile ``(ty, tx)`` of the global grid: ``PCG64(SeedSequence(seed, (0, ty, tx)))``."""
    return np.random.Generator(
        np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=(_MC_KEY, int(ty), int(tx))))
    )


# --------------------------------------------------------------------------------------------
# per-thread scratch buffers
# --------------------------------------------------------------------------------------------
_scratch = threading.local()


def _buffer(name: str, size: int, dtype) -> np.ndarray:
    """A reusable 1-D buffer of at least ``size`` elements, private to the calling thread."""
    bufs = getattr(_scratch, "bufs", None)
    if bufs is None:
        bufs = _scratch.bufs = {}
    b = bufs.get(name)
    if b is None or b.size < size or b.dtype != dtype:
        b = np.empty(max(size, 1), dtype=dtype)
        bufs[name] = b
    return b[:size]


# --------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------
def _uniform_to_cell(u: np.ndarray, E: int) -> np.ndarray:
    """Split uniforms into an alias cell ``floor(u·E)`` (returned, a scratch buffer) and a coin.

    ``u`` is overwritten with the coin ``u·E − floor(u·E)`` in [0, 1).
    """
    idx = _buffer("idx", u.size, np.intp)
    np.multiply(u, E, out=u)
    idx[...] = u  # truncation == floor (u >= 0)
    np.subtract(u, idx, out=u)
    return idx


def _alias_resolve(coin: np.ndarray, idx: np.ndarray, ptab: np.ndarray, atab: np.ndarray) -> None:
    """In place: ``idx`` (flat table cells, row offsets included) becomes the drawn cell.

    The alias method: keep the cell when ``coin < prob[cell]``, else take ``alias[cell]``.
    """
    m = idx.size
    pg = _buffer("pg", m, np.float64)
    al = _buffer("al", m, np.intp)
    mask = _buffer("mask", m, np.bool_)
    np.take(ptab.ravel(), idx, out=pg)
    np.greater_equal(coin, pg, out=mask)
    np.take(atab.ravel(), idx, out=al)
    np.copyto(idx, al, where=mask)


def _alias_count_numpy(
    u: np.ndarray, rows_k: np.ndarray, rows_pix: np.ndarray, nphot: np.ndarray | int,
    ptab: np.ndarray, atab: np.ndarray, E: int, npix: int,
) -> np.ndarray:
    """Counts (npix·E,) int64 of the photons whose uniforms are ``u`` (method 6b).

    ``rows_k``/``rows_pix``: label and in-batch pixel index of each photon-emitting pixel;
    ``nphot``: photons of each such pixel (an int for the fixed model, else an array).
    ``u`` is overwritten (it becomes the coin).
    """
    W = E + 1
    idx = _uniform_to_cell(u, E)
    koff = rows_k.astype(np.intp) * W
    poff = rows_pix.astype(np.intp) * E - koff
    if np.isscalar(nphot):
        idx2 = idx.reshape(-1, int(nphot))
        idx2 += koff[:, None]
    else:
        idx += np.repeat(koff, nphot)
    _alias_resolve(u, idx, ptab, atab)
    if np.isscalar(nphot):
        idx2 += poff[:, None]
    else:
        idx += np.repeat(poff, nphot)
    return np.bincount(idx, minlength=npix * E)


def _alias_count_numpy_k(
    u: np.ndarray, k_phot: np.ndarray, rows_pix: np.ndarray, nphot: np.ndarray | int,
    ptab: np.ndarray, atab: np.ndarray, E: int, npix: int,
) -> np.ndarray:
    """As :func:`_alias_count_numpy` with a cluster per *photon* (beam-spot blur).

    ``k_phot``: source cluster of each photon; ``rows_pix``/``nphot``: in-batch index and
    photons of each photon-emitting pixel.  ``u`` is overwritten.
    """
    idx = _uniform_to_cell(u, E)
    koff = k_phot.astype(np.intp) * (E + 1)
    idx += koff
    _alias_resolve(u, idx, ptab, atab)
    idx -= koff
    if np.isscalar(nphot):
        idx.reshape(-1, int(nphot))[...] += (rows_pix.astype(np.intp) * E)[:, None]
    else:
        idx += np.repeat(rows_pix.astype(np.intp) * E, nphot)
    return np.bincount(idx, minlength=npix * E)


def _engine_for(engine: str, counts: float, labels: np.ndarray, scale: np.ndarray | None) -> str:
    """:func:`_resolve_engine` for a tile or block drawn on its own; its expected photons (every
    pixel counted) are summed only for ``"auto"`` (a concrete engine is passed down as is)."""
    if engine != "auto":
        return _resolve_engine(engine)
    return _resolve_engine(engine, float(counts) * (
        labels.size if scale is None else float(np.sum(scale, dtype=float))))


def _resolve_engine(engine: str, photons: float = 0.0, job: str | None = None) -> str:
    """The kernels that draw ``photons`` (expected photons of a tile or block, or of the whole
    ``job`` when named): ``engine`` as given, or for ``"auto"`` numba once it is loaded or worth
    loading (:data:`AUTO_NUMPY_PHOTONS`), else numpy.  Every engine gives the same bits, so the
    choice changes speed only."""
    if engine not in ("auto", "numpy", "numba"):
        raise GanxError(f"engine must be 'auto', 'numpy' or 'numba', got {engine!r}")
    if engine == "auto":
        return _AUTO.choose(photons, job)
    if engine == "numba":
        if not has_numba():
            raise GanxError("engine='numba' needs numba: pip install 'ganx-dask[fast]'")
        _AUTO.numba = True
    return engine


def _pixel_means(
    count_model: str, counts: float, labels: np.ndarray, scale: np.ndarray | None,
    effects: _det.DetectorEffects | None = None,
):
    """Valid pixels and their photon means (random models; ``fixed``: ``N``).

    Returns ``(valid, true, photons)``: the mask of labels ≥ 0, the expected *true* photons of
    each valid pixel (a float for ``fixed``/``poisson``, else an array in row-major order) and
    the Poisson means the sampler draws (dead time and its interplay with pile-up included,
    :meth:`~ganx_dask.detector.DetectorEffects.photon_means`).
    """
    valid = labels >= 0
    if count_model == "luminosity":
        if scale is None:
            raise GanxError("count_model 'luminosity' needs a scale map")
        s = np.asarray(scale, dtype=np.float64)[valid]
        if not np.all(np.isfinite(s)) or np.any(s < 0):
            raise GanxError("luminosity scale must be finite and non-negative")
        true = float(counts) * s
    else:
        true = float(counts)
    photons = true if effects is None or count_model == "fixed" else \
        effects.photon_means(true, counts)
    return valid, true, photons


def _pixel_totals(
    count_model: str, counts: float, labels: np.ndarray, scale: np.ndarray | None,
    rng: np.random.Generator, dtype: np.dtype, effects: _det.DetectorEffects | None = None,
) -> np.ndarray | None:
    """Photons per pixel (int64, 0 for label −1) for the random models; None for ``fixed``.

    With a dead-time model the Poisson means are the expected *recorded* counts, raised with
    pile-up so that the recorded events after merging keep that mean
    (:meth:`~ganx_dask.detector.DetectorEffects.photon_means`).
    """
    if count_model == "fixed":
        return None
    valid, _, lam = _pixel_means(count_model, counts, labels, scale, effects)
    tot = np.zeros(labels.shape, dtype=np.int64)
    if np.ndim(lam) == 0:
        tot[valid] = rng.poisson(lam, size=int(valid.sum()))
    else:
        tot[valid] = rng.poisson(lam)
    if tot.size and tot.max() > np.iinfo(dtype).max:
        raise OverflowError(
            f"a pixel drew {int(tot.max())} photons, more than {np.dtype(dtype).name} holds; "
            "use dtype=uint32"
        )
    return tot


def _per_channel_tile(
    count_model: str, counts: float, labels: np.ndarray, scale: np.ndarray | None,
    effects: _det.DetectorEffects | None, edges, n_channels: int,
):
    """Whether a tile takes the per-channel path (:func:`ganx_dask.per_channel.use_per_channel`).

    Decided from the parameters alone: the count model, ``counts``, the tile's labels and scale
    and the detector effects (pile-up needs an axis :func:`~ganx_dask.detector.
    pileup_expectation_supported` supports).  Returns ``None`` for the per-photon path, else
    ``(true, photons)``: ``true`` per valid pixel as a float array, ``photons`` too, or one
    float when every pixel shares it (no luminosity map: :func:`ganx_dask.per_channel.
    sample_tile` then draws from per-row tables); ``(None, None)`` for ``fixed``.
    """
    valid, true, photons = _pixel_means(count_model, counts, labels, scale, effects)
    nv = int(valid.sum())
    if nv == 0:
        return None
    mean = float(photons) if np.ndim(photons) == 0 else float(np.mean(photons))
    if not _pc.use_per_channel(mean, n_channels):
        return None
    if effects is not None and effects.pileup and (
            not _det.pileup_expectation_supported(edges)
            or (count_model == "fixed" and effects.blur)):
        return None
    if count_model == "fixed":
        return None, None
    if np.ndim(photons) == 0:  # one mean shared by every pixel (no luminosity map)
        return np.broadcast_to(np.asarray(true, np.float64), (nv,)), float(photons)
    return np.broadcast_to(np.asarray(true, np.float64), (nv,)), \
        np.ascontiguousarray(np.asarray(photons, np.float64))


class TileEffects:
    """Detector effects of one tile (built by :func:`sample_block`; see :mod:`ganx_dask.detector`).

    Parameters
    ----------
    effects : DetectorEffects
    seed, ty, tx : int
        Master seed and global tile index: the effects draw from
        :func:`~ganx_dask.detector.detector_rng` streams ``(4, 0, ty, tx)`` (pile-up) and
        ``(4, 1, ty, tx)`` (blur), never from the Monte Carlo stream.
    labels_padded : ndarray (h + 2R, w + 2R), optional
        The tile's labels with a halo of ``R = psf.radius`` pixels (blur only).
    psf : PsfTable, optional
    edges : ndarray (E + 1,), optional
        Channel edges, keV (pile-up only).
    """

    def __init__(self, effects, seed, ty, tx, *, labels_padded=None, psf=None, edges=None):
        self.effects = effects
        self.pileup = effects.pileup
        self.blur = effects.blur
        self.pileup_rng = _det.detector_rng(seed, _det.PILEUP_STREAM, ty, tx) if self.pileup \
            else None
        self.blur_rng = _det.detector_rng(seed, _det.BLUR_STREAM, ty, tx) if self.blur else None
        self.labels_padded = labels_padded
        self.psf = psf
        self.edges = edges


def _tile_links(
    fx: TileEffects, count_model: str, counts: float, labels: np.ndarray,
    scale: np.ndarray | None, nph: np.ndarray,
) -> np.ndarray:
    """Short gaps (pile-up) of a tile; ``nph``: photons of every pixel, row-major (h, w)."""
    if count_model == "luminosity":
        lam = float(counts) * np.where(labels >= 0, np.asarray(scale, dtype=np.float64), 0.0)
        p = fx.effects.link_probability(lam, counts).ravel()
    else:
        p = float(fx.effects.link_probability(float(counts), counts))
    return _det.draw_pileup_links(fx.pileup_rng, nph.ravel(), p)


def sample_tile(
    labels: np.ndarray,
    prob: np.ndarray,
    alias: np.ndarray,
    rng: np.random.Generator,
    *,
    counts: float,
    count_model: CountModel = "fixed",
    scale: np.ndarray | None = None,
    dtype=None,
    out: np.ndarray | None = None,
    engine: Engine = "auto",
    effects: TileEffects | None = None,
    _tables: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Draw the counts of one tile from its generator.

    Parameters
    ----------
    labels : ndarray (h, w) int
        Cluster index of each pixel (−1: no counts).
    prob, alias : ndarray (K, E)
        Tables from :func:`alias_tables`.
    rng : numpy.random.Generator
        The tile's generator (see :func:`tile_rng`); consumed in the documented order.
    counts : float
        ``N``, photons per pixel (fixed) or mean photons per pixel, counts.
    count_model : {"fixed", "poisson", "luminosity"}
    scale : ndarray (h, w) or None
        Per-pixel scale of the mean (``luminosity`` only), dimensionless.
    dtype : numpy dtype, optional
        Output dtype (default :func:`counts_dtype`).
    out : ndarray (h, w, E), optional
        Where to write (may be a strided view of a block); fully overwritten.
    engine : {"auto", "numpy", "numba"}
        Bit-identical engines; ``auto`` uses numba when importable and loaded or worth loading
        (see :data:`AUTO_NUMPY_PHOTONS`), else numpy.
    effects : TileEffects, optional
        Detector effects of this tile (pile-up, dead time, beam-spot blur); they draw from their
        own streams, so ``rng`` is consumed exactly as without them.

    Returns
    -------
    ndarray (h, w, E)
        Photon counts, counts.
    """
    labels = np.asarray(labels)
    h, w = labels.shape
    K, E = prob.shape
    if dtype is None:
        dtype = counts_dtype(count_model, counts, scale_max=1.0 if scale is None else
                             float(np.max(scale, initial=1.0)))
    dtype = np.dtype(dtype)
    if out is None:
        out = np.empty((h, w, E), dtype=dtype)
    if labels.size and labels.max() >= K:
        raise GanxError(f"label {int(labels.max())} has no spectrum (only {K} clusters)")
    ptab, atab = _tables if _tables is not None else _padded_tables(prob, alias)
    engine = _engine_for(engine, counts, labels, scale)
    fx = effects if effects is not None and (effects.pileup or effects.blur
                                             or effects.effects.dead_time) else None
    tot = _pixel_totals(count_model, counts, labels, scale, rng, dtype,
                        None if fx is None else fx.effects)
    if count_model == "fixed":
        n_fixed = int(counts)
        if n_fixed > np.iinfo(dtype).max:
            raise OverflowError(f"{n_fixed} counts per pixel do not fit {dtype.name}")
    if fx is not None and (fx.pileup or fx.blur):
        return _sample_tile_effects(labels, tot, n_fixed if tot is None else 0, fx, rng, ptab,
                                    atab, out, engine, counts, count_model, scale)
    if engine == "numba":
        from . import _numba_kernels as nk

        lab2 = np.ascontiguousarray(labels, dtype=np.int64)
        if tot is None:
            tot = np.where(lab2 >= 0, n_fixed, 0).astype(np.int64)
        for r0, r1, c0, c1 in _batches(h, w, int(counts), _BATCH_PHOTONS_NUMBA):
            m = int(tot[r0:r1, c0:c1].sum())
            u = _buffer("u", m, np.float64)
            rng.random(out=u)
            view = out[r0:r1, c0:c1]
            view[...] = 0
            nk.alias_count(u, lab2[r0:r1, c0:c1], tot[r0:r1, c0:c1], ptab, atab, view)
        return out
    for r0, r1, c0, c1 in _batches(h, w, int(counts), _BATCH_PHOTONS):
        lab = labels[r0:r1, c0:c1].ravel()
        npix = lab.size
        if tot is None:
            pix = np.flatnonzero(lab >= 0)
            nphot: np.ndarray | int = n_fixed
            m = pix.size * n_fixed
        else:
            t = tot[r0:r1, c0:c1].ravel()
            pix = np.flatnonzero(t > 0)
            nphot = t[pix]
            m = int(nphot.sum())
        if m == 0:
            out[r0:r1, c0:c1] = 0
            continue
        u = _buffer("u", m, np.float64)
        rng.random(out=u)
        c = _alias_count_numpy(u, lab[pix], pix, nphot, ptab, atab, E, npix)
        out[r0:r1, c0:c1] = c.reshape(r1 - r0, c1 - c0, E)
    return out


def _batches(h: int, w: int, per_pixel: int, budget: int):
    """Sub-batches ``(r0, r1, c0, c1)`` of a tile, in row-major pixel order, of ~``budget`` photons.

    Whole rows while a row fits the budget; otherwise runs of pixels within a row (at least
    one pixel), so the scratch buffers stay bounded for any ``N``.  The uniforms are drawn
    sequentially batch after batch, so the batching never changes the cube.
    """
    per_row = max(1, per_pixel) * w
    if per_row <= budget:
        rows = budget // per_row
        for r0 in range(0, h, rows):
            yield r0, min(h, r0 + rows), 0, w
        return
    cols = max(1, budget // max(1, per_pixel))
    for r0 in range(h):
        for c0 in range(0, w, cols):
            yield r0, r0 + 1, c0, min(w, c0 + cols)


def _sample_tile_effects(
    labels, tot, n_fixed, fx: TileEffects, rng, ptab, atab, out, engine, counts, count_model,
    scale,
) -> np.ndarray:
    """:func:`sample_tile` with pile-up and/or beam-spot blur (same Monte Carlo stream).

    Per sub-batch of rows the uniforms are drawn exactly as in the plain path; with blur each
    photon's cluster comes from :func:`ganx_dask.detector.blur_sources`.  The short gaps of
    pile-up are drawn once per tile; batch by batch the uniforms (and clusters) of each gap's
    two photons are kept, and at the end of the tile their channels are recomputed
    (:func:`_alias_lookup`) and the histogram corrected
    (:func:`ganx_dask.detector.apply_pileup`; with numba fused in
    ``_numba_kernels.pileup_correct``).  Both engines count the same photons, so they stay
    bit-identical.
    """
    h, w = labels.shape
    E = out.shape[2]
    nph = tot if tot is not None else np.where(labels >= 0, n_fixed, 0).astype(np.int64)
    nph_flat = nph.ravel()
    cum = np.concatenate([[0], np.cumsum(nph_flat)])
    R = fx.psf.radius if fx.blur else 0
    lab_flat = labels.ravel()
    links = None
    if fx.pileup:
        links = _tile_links(fx, count_model, counts, labels, scale, nph)
        if links.size:  # keep the uniform (and cluster) of each short gap's two photons
            u1 = np.empty(links.size)
            u2 = np.empty(links.size)
            if fx.blur:
                k1 = np.empty(links.size, dtype=np.intp)
                k2 = np.empty(links.size, dtype=np.intp)
        else:
            links = None
    if engine == "numba":
        from . import _numba_kernels as nk

        lab2 = np.ascontiguousarray(labels, dtype=np.int64)
        nph2 = np.ascontiguousarray(nph, dtype=np.int64)
    # the blur's redraw order depends on the batches: then one batch size for both engines
    budget = _BATCH_PHOTONS_NUMBA if engine == "numba" and not fx.blur else _BATCH_PHOTONS
    rows = max(1, budget // max(1, int(counts) * w))
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        npix = (r1 - r0) * w
        t = nph_flat[r0 * w:r1 * w]
        pix = np.flatnonzero(t > 0)
        nphot = t[pix] if tot is not None else n_fixed
        m0, m1 = int(cum[r0 * w]), int(cum[r1 * w])
        m = m1 - m0
        view = out[r0:r1]
        if m == 0:
            view[...] = 0
            continue
        u = _buffer("u", m, np.float64)
        rng.random(out=u)
        if fx.blur:
            k_phot = _det.blur_sources(fx.blur_rng, fx.labels_padded[r0:r1 + 2 * R], fx.psf,
                                       pix, nphot, engine=engine)
        if links is not None:
            a, b = np.searchsorted(links, (m0, m1))
            if b > a:
                j = links[a:b] - m0
                u1[a:b] = u[j]
                u2[a:b] = u[j + 1]
                if fx.blur:
                    k1[a:b] = k_phot[j]
                    k2[a:b] = k_phot[j + 1]
        if engine == "numba":
            view[...] = 0
            if fx.blur:
                nk.alias_count_k(u, k_phot, nph2[r0:r1], ptab, atab, view)
            else:
                nk.alias_count(u, lab2[r0:r1], nph2[r0:r1], ptab, atab, view)
        else:
            if fx.blur:
                c = _alias_count_numpy_k(u, k_phot, pix, nphot, ptab, atab, E, npix)
            else:
                c = _alias_count_numpy(u, lab_flat[r0 * w:r1 * w][pix], pix, nphot, ptab, atab,
                                       E, npix)
            view[...] = c.reshape(r1 - r0, w, E)
    if links is not None:
        link_pix = _photon_pixels(links, tot, n_fixed, lab_flat, nph_flat)
        if not fx.blur:
            k1 = k2 = lab_flat[link_pix].astype(np.intp)
        if engine == "numba":
            uniform, s_over_w, centres, tol = _det.sum_axis_params(fx.edges)
            nk.pileup_correct(links, link_pix, u1, k1, u2, k2, ptab, atab, uniform, s_over_w,
                              centres, np.asarray(fx.edges, dtype=np.float64), tol, out)
        else:
            _det.apply_pileup(out, links, link_pix, _alias_lookup(u1, k1, ptab, atab, E),
                              _alias_lookup(u2, k2, ptab, atab, E), fx.edges)
    return out


def _photon_pixels(j, tot, n_fixed, lab_flat, nph_flat) -> np.ndarray:
    """Flat pixel of tile photons ``j`` (fixed model: photon j of emitting pixel j // N)."""
    if tot is None:
        return np.flatnonzero(lab_flat >= 0)[j // n_fixed]
    return _det.photon_pixels(j, nph_flat)


def _chunk_bounds_ok(chunks: Sequence[int], tile: int) -> bool:
    edges = np.cumsum(chunks)[:-1]
    return bool(np.all(edges % tile == 0))


def sample_block(
    labels: np.ndarray,
    prob: np.ndarray,
    alias: np.ndarray,
    *,
    seed: int,
    counts: float,
    count_model: CountModel = "fixed",
    scale: np.ndarray | None = None,
    offset: tuple[int, int] = (0, 0),
    tile: int = DEFAULT_TILE,
    dtype=None,
    engine: Engine = "auto",
    detector: _det.DetectorEffects | None = None,
    energy_edges: np.ndarray | None = None,
) -> np.ndarray:
    """Counts of a block of the image whose top-left pixel is at global ``offset``.

    The block is cut along the fixed global tile grid and each tile drawn from
    :func:`tile_rng`; ``offset`` must be a multiple of ``tile``.  Parameters as in
    :func:`sample_tile`; returns an ``(h, w, E)`` array of counts.

    With a beam-spot blur (``detector.blur``) ``labels`` carries a halo of
    ``R = detector.blur_radius`` pixels on each side (−1 beyond the image, see
    :func:`ganx_dask.detector.overlap_labels`) and the block is its interior.  ``energy_edges``
    (keV, ``E + 1``) are needed for pile-up.
    """
    labels = np.asarray(labels)
    fx_on = detector is not None and detector.enabled
    R = detector.blur_radius if fx_on else 0
    labels_padded = labels
    if R:
        labels = labels[R:-R, R:-R]
    psf = _det.psf_table(detector.blur_fwhm_px, detector.blur_truncate) if R else None
    engine = _engine_for(engine, counts, labels, scale)
    y0, x0 = (int(o) for o in offset)
    if y0 % tile or x0 % tile:
        raise GanxError(f"block offset {offset} is not on the {tile}-pixel tile grid")
    h, w = labels.shape
    E = prob.shape[1]
    if dtype is None:
        smax = 1.0 if scale is None else float(np.max(scale, initial=1.0))
        dtype = counts_dtype(count_model, counts, scale_max=smax)
    out = np.empty((h, w, E), dtype=dtype)
    tables = _padded_tables(prob, alias)
    spectra = None
    for r0 in range(0, h, tile):
        r1 = min(h, r0 + tile)
        for c0 in range(0, w, tile):
            c1 = min(w, c0 + tile)
            ty, tx = (y0 + r0) // tile, (x0 + c0) // tile
            rng = tile_rng(seed, ty, tx)
            fx = None
            if fx_on:
                fx = TileEffects(
                    detector, seed, ty, tx, psf=psf, edges=energy_edges,
                    labels_padded=labels_padded[r0:r1 + 2 * R, c0:c1 + 2 * R] if R else None,
                )
            lab_t = labels[r0:r1, c0:c1]
            sc_t = None if scale is None else scale[r0:r1, c0:c1]
            pc = _per_channel_tile(count_model, counts, lab_t, sc_t,
                                   detector if fx_on else None, energy_edges, E)
            if pc is not None:
                if lab_t.max() >= prob.shape[0]:
                    raise GanxError(f"label {int(lab_t.max())} has no spectrum "
                                    f"(only {prob.shape[0]} clusters)")
                if spectra is None:
                    spectra = alias_distributions(prob, alias)
                _pc.sample_tile(lab_t, spectra, _pc.channel_rng(seed, ty, tx), counts=counts,
                                count_model=count_model, true=pc[0], means=pc[1],
                                out=out[r0:r1, c0:c1], effects=fx, tables=tables,
                                engine=engine)
                continue
            sample_tile(
                labels[r0:r1, c0:c1], prob, alias, rng, counts=counts, count_model=count_model,
                scale=None if scale is None else scale[r0:r1, c0:c1], dtype=dtype,
                out=out[r0:r1, c0:c1], engine=engine, effects=fx, _tables=tables,
            )
    return out


def _cube_block(labels, scale=None, *, prob, alias, seed, counts, count_model, tile, out_dtype,
                engine, job=None, job_photons=0.0, detector=None, energy_edges=None,
                starts=None, block_info=None):
    """``map_blocks`` adapter: global offset from ``block_info`` (module level, so it pickles).

    With a blur the labels block carries a halo, so the offset comes from the block's index and
    the unpadded chunk ``starts`` instead.  ``engine="auto"`` is resolved here, once for the
    whole cube (``job``: its name, ``job_photons``: its expected photons).
    """
    engine = _resolve_engine(engine, job_photons, job)
    if starts is not None:
        iy, ix = block_info[0]["chunk-location"]
        offset = (starts[0][iy], starts[1][ix])
    else:
        loc = block_info[0]["array-location"]
        offset = (loc[0][0], loc[1][0])
    return sample_block(
        labels, prob, alias, seed=seed, counts=counts, count_model=count_model, scale=scale,
        offset=offset, tile=tile, dtype=out_dtype, engine=engine, detector=detector,
        energy_edges=energy_edges,
    )


def sample_cube(
    labels: da.Array,
    spectra: np.ndarray,
    *,
    seed: int,
    counts: float,
    count_model: CountModel = "fixed",
    scale: da.Array | None = None,
    tile: int = DEFAULT_TILE,
    dtype=None,
    engine: Engine = "auto",
    detector: _det.DetectorEffects | None = None,
    energy=None,
) -> da.Array:
    """Lazy photon-count cube ``(y, x, energy)`` of a labelled image.

    Parameters
    ----------
    labels : dask.array (y, x) int
        Cluster index per pixel, −1 for no counts.  Chunk boundaries must lie on the tile grid
        (multiples of ``tile``; the last chunk of each axis may be shorter).
    spectra : ndarray (K, E) float64
        Photon-energy distribution of each cluster (rows sum to 1).
    seed : int
        Master seed (≥ 0); tile ``(ty, tx)`` uses ``SeedSequence(seed, spawn_key=(0, ty, tx))``.
    counts : float
        ``N``: photons per pixel (``fixed``, an integer) or mean photons per pixel, counts.
    count_model : {"fixed", "poisson", "luminosity"}
        See the module docstring (``poisson`` uses exact Poisson splitting).
    scale : dask.array (y, x) float32, optional
        Per-pixel scale of the mean for ``luminosity`` (required there; same chunks as labels).
    tile : int
        Edge of the global seeding tile, pixels.
    dtype : numpy dtype, optional
        ``uint16``/``uint32``; default :func:`counts_dtype` of ``counts`` and, for
        ``luminosity``, the largest ``scale`` (computed here: one pass over the scale map).
    engine : {"auto", "numpy", "numba"}
        Kernel; resolved on the worker, all engines give identical bits.
    detector : DetectorEffects, optional
        Pile-up, dead time and beam-spot blur (:mod:`ganx_dask.detector`); ``None`` or all
        effects off gives exactly the plain cube.  Dead time needs the ``poisson`` or
        ``luminosity`` count model.
    energy : EnergyAxis, str or array of bin centres (keV), optional
        The spectra's energy axis; required for pile-up (summed energies).

    Returns
    -------
    dask.array (y, x, E)
        Counts, chunks ``labels.chunks + ((E,),)``; nothing is computed here.
    """
    check_count_model(count_model, counts)
    if not isinstance(tile, int | np.integer) or tile < 1:
        raise GanxError(f"tile must be a positive integer, got {tile!r}")
    seed = check_seed(seed)
    _resolve_engine(engine) if engine != "auto" else None
    if not isinstance(labels, da.Array):
        labels = da.asarray(labels)
    if labels.ndim != 2:
        raise GanxError(f"labels must be 2-D (y, x), got shape {labels.shape}")
    for ax, ch in zip(("y", "x"), labels.chunks, strict=True):
        if not _chunk_bounds_ok(ch, tile):
            raise GanxError(
                f"chunks along {ax} {ch} are not multiples of the {tile}-pixel tile"
            )
    prob, alias = alias_tables(spectra)
    E = prob.shape[1]
    if count_model == "luminosity":
        if scale is None:
            raise GanxError("count_model 'luminosity' needs a scale map (y, x)")
        if not isinstance(scale, da.Array):
            scale = da.asarray(scale)
        if scale.shape != labels.shape:
            raise GanxError(f"scale shape {scale.shape} differs from labels {labels.shape}")
        scale = scale.rechunk(labels.chunks)
    else:
        scale = None
    if dtype is None:  # the largest scale decides: a pixel at scale s expects counts·s photons
        scale_max = 1.0 if scale is None else float(da.nanmax(scale).compute())
        dtype = counts_dtype(count_model, counts, scale_max=scale_max)
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.uint16), np.dtype(np.uint32), np.dtype(np.uint64)):
        raise GanxError(f"counts dtype must be an unsigned integer type, got {dtype}")
    if count_model == "fixed" and counts > np.iinfo(dtype).max:
        raise GanxError(f"{counts} counts per pixel overflow {dtype.name}; use uint32")
    fx_kwargs: dict = {}
    lab_in = labels
    if detector is not None and detector.enabled:
        if not isinstance(detector, _det.DetectorEffects):
            raise ConfigError(f"detector must be a DetectorEffects, got {type(detector).__name__}")
        if detector.dead_time and count_model == "fixed":
            raise ConfigError(
                "a dead-time model needs a random count model ('poisson' or 'luminosity'): "
                "with 'fixed' the recorded counts are fixed by definition"
            )
        edges = None
        if detector.pileup:
            if energy is None:
                raise ConfigError("pile-up needs the energy axis of the spectra (energy=...)")
            from .energy import axis_edges

            edges = axis_edges(energy)
            if edges.size != E + 1:
                raise ConfigError(
                    f"energy axis has {edges.size - 1} channels but the spectra have {E}"
                )
        fx_kwargs = {"detector": detector, "energy_edges": edges}
        if detector.blur:
            lab_in = _det.overlap_labels(labels, detector.blur_radius)
            fx_kwargs["starts"] = tuple(
                tuple(int(v) for v in np.cumsum((0,) + ch[:-1])) for ch in labels.chunks
            )
    args = (lab_in,) if scale is None else (lab_in, scale)
    from dask.base import tokenize

    name = "ganx-counts-" + tokenize(
        labels, scale, prob, alias, seed, counts, count_model, tile, dtype.str,
        None if not fx_kwargs else (detector.to_dict(), fx_kwargs.get("energy_edges")),
    )
    return da.map_blocks(
        _cube_block, *args, prob=prob, alias=alias, seed=int(seed), counts=counts,
        count_model=count_model, tile=int(tile), out_dtype=dtype, engine=engine,
        job=name, job_photons=float(counts) * labels.size, new_axis=2, chunks=labels.chunks + ((E,),),
        meta=np.empty((0, 0, 0), dtype=dtype), name=name, **fx_kwargs,
    )
