"""Count-adaptive sampling: per-channel draws for tiles with many photons per pixel.

The alias sampler (:mod:`ganx_dask.sampling`) costs one uniform and one table lookup per
*photon*: ≈ 5–9 ns × N per pixel.  Drawing every *channel* instead costs ≈ 30–35 ns × E per
pixel whatever N is (one numpy Poisson variate each; channels expecting < 4 counts are drawn
as photons instead, :func:`poisson_rows`: −20–25 % on the benchmark's spectra).  Above
``N ≈ 5·E`` photons per pixel the per-channel path is the cheaper one; :func:`use_per_channel` makes that choice per tile, from the
parameters alone (count model, counts, scale map, detector effects, number of channels) and never
from the chunking, the scheduler or the engine.

Models (all exact in distribution, except the pile-up noise, see below)
-----------------------------------------------------------------------
``poisson`` / ``luminosity``
    ``counts[p, e] ~ Poisson(λ_p · d_p[e])`` independently: the distribution that the alias
    path's Poisson splitting also draws.  ``λ_p`` are the photon means of the per-photon path
    (dead time included, :meth:`~ganx_dask.detector.DetectorEffects.photon_means`).
``fixed``
    An exact ``Multinomial(N, d_p)`` (:func:`multinomial_rows`): per-channel Poisson draws of
    mean ``N·d_p`` give a total ``T ~ Poisson(N)``, and given ``T`` the vector is
    ``Multinomial(T, d_p)``; ``N − T`` more photons drawn from ``d_p`` when ``T < N``, or
    ``T − N`` of the drawn photons removed uniformly at random without replacement when
    ``T > N``, turn it into ``Multinomial(N, d_p)`` exactly (i.i.d. photons are exchangeable).
    The Poisson means aim one σ low, ``(N − √N)·d_p``, so that additions (≈ 1.1·√N photons per
    pixel, one uniform each) are the rule and removals rare (16 % of pixels).
Beam-spot blur
    ``d_p = Σ_k W[p, k]·d_k`` with the cluster weights of the PSF around the pixel
    (:func:`ganx_dask.detector.psf_mixture_weights`): exactly the law the per-photon path draws
    photon by photon.
Pile-up (uniform energy axes)
    The recorded spectrum's *expectation* is exact: chains of every order ``k`` (expected
    numbers :func:`~ganx_dask.detector.pileup_chain_weights`) at their summed channels
    (:func:`~ganx_dask.detector.pileup_order_spectra`, chains beyond the axis lost).  Its
    *noise* is approximated: with ``poisson``/``luminosity`` each channel is an independent
    Poisson of that mean; with ``fixed`` the number of merges is exact,
    ``M ~ Binomial(N − 1, p)``, and the ``N − M`` events fall in channels i.i.d. from the mean
    event spectrum (a ``Multinomial``; events lost above the axis are dropped).  What is
    neglected is the correlation within a pixel between a sum count and the parents it took
    (a pile-up pair removes one count from each parent channel).  The tests compare means,
    totals and their variances with the per-photon path at moderate counts.  Non-uniform axes
    (or axes starting below ``−w/2``) keep the per-photon path.

Determinism
-----------
A per-channel tile draws from its own stream ``PCG64(SeedSequence(seed, spawn_key=(7, ty,
tx)))`` (:func:`channel_rng`), never from the per-photon stream ``(0, ty, tx)`` nor from the
detector streams ``(4, …)``.  Valid pixels (label ≥ 0) are taken in row-major order in batches
of at most ``2¹⁸`` voxels; per batch the stream is consumed as: (``fixed`` with pile-up) one
binomial per pixel; the Poisson step (:func:`poisson_rows`: without blur, and except pile-up
with ``poisson``, channels whose mean at the tile's largest pixel mean is below ``SPLIT_MEAN``
are drawn as a Poisson number of photons, one uniform each — exact by Poisson splitting —, the
others one variate each; with blur or pile-up one Poisson per channel of each pixel, pixels in
order); (``fixed``) one
uniform per added photon, pixels in order (with blur first one per added photon for its
cluster, then one each for its channel); then the removals (one uniform per candidate position,
rounds until every pixel has its distinct positions).  All of it is numpy, so the numpy
and numba engines give the same bits.
"""

from __future__ import annotations

import hashlib

import numpy as np

from . import detector as _det
from .alias import alias_tables, padded_tables

__all__ = [
    "CHANNEL_KEY",
    "PHOTONS_PER_CHANNEL",
    "MIN_PHOTONS",
    "channel_rng",
    "use_per_channel",
    "multinomial_rows",
    "poisson_rows",
    "sample_tile",
]

#: Spawn-key namespace of the per-channel Monte Carlo: ``(7, ty, tx)``.
CHANNEL_KEY = 7
#: A tile is drawn per channel when its mean photons per valid pixel reach this many per channel
#: (measured break-even ≈ 4.5–6: a numpy Poisson variate costs ≈ 30–35 ns, a photon 5–9 ns).
PHOTONS_PER_CHANNEL = 5
#: …and at least this many photons per pixel (below it the per-photon path always wins or ties).
MIN_PHOTONS = 1000
#: Voxels per batch of pixels (the float64 means and int64 counts stay in L2/L3).
_BATCH_VOXELS = 1 << 18
#: Channels whose Poisson mean (at the tile's largest pixel mean) is below this are drawn as
#: photons instead of one variate each (:func:`poisson_rows`): a photon costs ≈ 15–20 ns in
#: numpy, a Poisson variate 35–90 ns (more for means ≳ 10); measured flat between 2 and 8.
SPLIT_MEAN = 4.0


def channel_rng(seed: int, ty: int, tx: int) -> np.random.Generator:
    """Generator of a per-channel tile: ``PCG64(SeedSequence(seed, spawn_key=(7, ty, tx)))``."""
    return np.random.Generator(np.random.PCG64(
        np.random.SeedSequence(int(seed), spawn_key=(CHANNEL_KEY, int(ty), int(tx)))))


def use_per_channel(mean_photons: float, n_channels: int) -> bool:
    """True when a tile whose valid pixels get ``mean_photons`` on average is drawn per channel.

    The rule is ``mean_photons ≥ max(PHOTONS_PER_CHANNEL·E, MIN_PHOTONS)``: 5 120 photons at
    E = 1024, so the paper's default (N = 400) stays on the per-photon path, bit for bit.
    """
    return float(mean_photons) >= max(PHOTONS_PER_CHANNEL * int(n_channels), MIN_PHOTONS)


class _AliasDraw:
    """Draws photons from rows of alias tables (one uniform each): ``draw(rng, rows)``."""

    def __init__(self, ptab: np.ndarray, atab: np.ndarray):
        self.ptab, self.atab = ptab, atab
        self.E = ptab.shape[1] - 1

    @classmethod
    def of(cls, dist: np.ndarray) -> _AliasDraw:
        return cls(*padded_tables(*alias_tables(dist)))

    def __call__(self, rng: np.random.Generator, rows: np.ndarray) -> np.ndarray:
        # the float64 steps of alias_lookup, in place (≈ 3× fewer temporaries)
        E = self.E
        x = rng.random(rows.size)
        x *= E
        j = x.astype(np.intp)
        x -= j  # the coin
        off = rows.astype(np.intp) * (E + 1)
        j += off
        swap = x >= np.take(self.ptab, j)
        np.copyto(j, np.take(self.atab, j), where=swap)
        j -= off
        return j


class _MixtureDraw:
    """Draws photons from mixtures ``Σ_k W[row, k]·d_k`` of alias-table rows: the component by
    the inverse CDF of ``W[row]`` (one uniform), then the channel (one more uniform)."""

    def __init__(self, weights: np.ndarray, inner: _AliasDraw):
        self.cum = np.cumsum(weights, axis=1)
        self.cum /= self.cum[:, -1:]
        self.inner = inner

    def __call__(self, rng: np.random.Generator, rows: np.ndarray) -> np.ndarray:
        u = rng.random(rows.size)
        comp = (u[:, None] >= self.cum[rows]).sum(axis=1)
        return self.inner(rng, np.minimum(comp, self.cum.shape[1] - 1))


def _add_photons(rng, c, k, rows, draw) -> None:
    """Add ``k[i]`` photons of law ``rows[i]`` (``draw``) to ``c[i]``, in place, pixels in order."""
    pix = np.flatnonzero(k > 0)
    if not pix.size:
        return
    kk = k[pix]
    ch = draw(rng, np.repeat(rows[pix], kk))
    ch += np.repeat(pix * c.shape[1], kk)
    c += np.bincount(ch, minlength=c.size).reshape(c.shape)  # ≈ 10× faster than np.add.at


def _remove_photons(rng, c, k) -> None:
    """Remove ``k[i]`` of the photons of ``c[i]`` uniformly without replacement (in place).

    Positions ``floor(u·T)`` among the pixel's ``T`` photons are drawn in rounds until each
    pixel has ``k`` distinct ones; the law of the final set is invariant under permutations of
    the photons, so it is a uniform ``k``-subset.  Positions map to channels by the cumulative
    counts (photons of a pixel ordered by channel).
    """
    sel = np.flatnonzero(k > 0)
    if not sel.size:
        return
    E = c.shape[1]
    sub = c[sel]
    cs = np.cumsum(sub.ravel())
    T = sub.sum(axis=1)
    base = np.concatenate(([0], np.cumsum(T)[:-1]))
    need = k[sel]
    chosen = np.empty(0, dtype=np.int64)
    todo = need
    while True:
        who = np.repeat(np.arange(sel.size), todo)
        if not who.size:
            break
        u = rng.random(who.size)
        pos = np.minimum((u * T[who]).astype(np.int64), T[who] - 1)
        chosen = np.concatenate((chosen, base[who] + pos))
        chosen.sort()
        chosen = chosen[np.concatenate(([True], chosen[1:] != chosen[:-1]))]
        have = np.bincount(np.searchsorted(base, chosen, side="right") - 1, minlength=sel.size)
        todo = need - have
    cell = np.searchsorted(cs, chosen, side="right")
    row, ch = np.divmod(cell, E)
    np.subtract.at(c.reshape(-1), sel[row] * E + ch, 1)


class _Split:
    """Which channels of each row of ``dist`` are drawn one Poisson variate each (``big``), and
    the law of the others (their total mass ``small`` and alias tables of their shares)."""

    def __init__(self, dist: np.ndarray, lam_ref: float):
        big = lam_ref * dist >= SPLIT_MEAN
        self.big = [np.flatnonzero(b) for b in big]
        rest = np.where(big, 0.0, dist)
        self.small = rest.sum(axis=1)
        empty = self.small <= 0  # every channel big: no photons drawn, any table will do
        rest[empty] = 1.0
        self.draw = _AliasDraw.of(rest)

    @classmethod
    def of(cls, dist: np.ndarray, lam_ref: float) -> _Split:
        """Memoised by content: the tiles of a block share their spectra and count level."""
        key = hashlib.blake2b(dist.tobytes() + np.float64(lam_ref).tobytes() + str(
            dist.shape).encode(), digest_size=16).digest()
        split = _SPLITS.get(key)
        if split is None:
            if len(_SPLITS) >= 64:
                _SPLITS.clear()
            split = _SPLITS[key] = cls(dist, lam_ref)
        return split


_SPLITS: dict[bytes, _Split] = {}


def poisson_rows(rng: np.random.Generator, lam: np.ndarray, dist: np.ndarray,
                 rows: np.ndarray, split: _Split | None = None) -> np.ndarray:
    """Independent ``Poisson(lam[i]·dist[rows[i], e])`` counts for every channel ``e``, exactly.

    Parameters
    ----------
    rng : numpy.random.Generator
    lam : float array (B,)
        Photon mean of each pixel, counts.
    dist : ndarray (U, E)
        Distributions (rows sum to 1).
    rows : int array (B,)
        Row of ``dist`` of each pixel.
    split : optional
        ``_Split.of(dist, lam_ref)``; without it every channel is one Poisson variate.

    Returns
    -------
    ndarray (B, E) int64

    Notes
    -----
    Poisson splitting: independent Poissons over a set ``S`` of channels are, jointly, a total
    ``L ~ Poisson(λ·Σ_S d)`` whose ``L`` photons fall i.i.d. on ``S`` with probabilities
    ``d_e / Σ_S d``.  Channels with a small mean (most of a real spectrum: at 26 000 counts and
    1024 channels about half the channels expect < 1 count) are drawn that way, one uniform per
    photon; the others one variate each.  Stream order per batch: the variates of the ``big``
    channels (row by row of ``dist`` in ascending order; within a row, its pixels in order and
    their channels in order), one ``L`` per pixel, then the photons.
    """
    if split is None:
        return rng.poisson(lam[:, None] * dist[rows])
    B, E = rows.size, dist.shape[1]
    c = np.zeros((B, E), dtype=np.int64)
    for u in np.unique(rows):  # rows in ascending order, their pixels in order
        big = split.big[u]
        if big.size:
            pix = np.flatnonzero(rows == u)
            c[pix[:, None], big] = rng.poisson(lam[pix, None] * dist[u, big])
    n_small = rng.poisson(lam * split.small[rows])
    if n_small.any():
        ch = split.draw(rng, np.repeat(rows, n_small))
        ch += np.repeat(np.arange(B, dtype=np.intp) * E, n_small)
        c += np.bincount(ch, minlength=B * E).reshape(B, E)
    return c


def multinomial_rows(rng: np.random.Generator, n: np.ndarray, dist: np.ndarray,
                     rows: np.ndarray, draw=None, split: _Split | None = None) -> np.ndarray:
    """Exact ``Multinomial(n[i], dist[rows[i]])`` for a batch of pixels, drawn per channel.

    Parameters
    ----------
    rng : numpy.random.Generator
    n : int array (B,)
        Photons of each pixel, counts.
    dist : ndarray (U, E)
        Distributions (rows sum to 1).
    rows : int array (B,)
        Row of ``dist`` of each pixel.
    draw : callable, optional
        ``draw(rng, rows) -> channels``: photons drawn from ``dist[rows]`` one by one (default:
        alias tables of ``dist``).
    split : optional
        How the first, Poisson step is drawn (:func:`poisson_rows`).

    Returns
    -------
    ndarray (B, E) int64
        Counts; each row sums to ``n[i]`` exactly.

    Notes
    -----
    One Poisson per channel with mean ``λ·d``, ``λ = max(n − √n, 0)`` (total ``T ~ Poisson(λ)``;
    given ``T`` the vector is ``Multinomial(T, d)`` whatever ``λ`` is), then ``n − T`` photons
    added from ``d`` or ``T − n`` removed uniformly without replacement: exactly
    ``Multinomial(n, d)`` in both cases.  Aiming one σ low makes the cheap additions
    (≈ 1.1·√n photons on average) the rule and the dearer removals rare (16 % of pixels,
    ≈ 0.08·√n photons on average).
    """
    n = np.asarray(n, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.intp)
    lam = np.maximum(n - np.sqrt(n), 0.0)
    c = poisson_rows(rng, lam, dist, rows, split)
    T = c.sum(axis=1)
    _add_photons(rng, c, n - T, rows, _AliasDraw.of(dist) if draw is None else draw)
    _remove_photons(rng, c, T - n)
    return c


def sample_tile(
    labels: np.ndarray, spectra: np.ndarray, rng: np.random.Generator, *, counts: float,
    count_model: str, means: np.ndarray | None = None, true: np.ndarray | None = None,
    out: np.ndarray, effects=None, tables: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Draw one tile per channel (the high-count path of :func:`ganx_dask.sampling.sample_tile`).

    Parameters
    ----------
    labels : int ndarray (h, w)
        Cluster of each pixel (−1: no counts).
    spectra : ndarray (K, E)
        Cluster distributions (rows sum to 1).
    rng : numpy.random.Generator
        The tile's :func:`channel_rng`.
    counts : float
        ``N`` (fixed) or the nominal mean, counts.
    count_model : {"fixed", "poisson", "luminosity"}
    means : float array (V,) or None
        Photon mean of each valid pixel in row-major order (``poisson``/``luminosity``; dead
        time included); ``None`` for ``fixed``.
    true : float array (V,) or None
        Expected *true* photons of each valid pixel (sets the pile-up rate; not for ``fixed``).
    out : ndarray (h, w, E) unsigned
        Fully overwritten.
    effects : sampling.TileEffects, optional
        Blur (needs ``labels_padded`` and ``psf``) and pile-up (needs ``edges``); ``fixed``
        with both is not supported here (the per-photon path draws it).
    tables : (ptab, atab), optional
        :func:`~ganx_dask.alias.padded_tables` of ``spectra`` (built when missing).

    Returns
    -------
    ndarray (h, w, E)
    """
    h, w = labels.shape
    K, E = spectra.shape
    flat_lab = np.asarray(labels).ravel()
    vidx = np.flatnonzero(flat_lab >= 0)
    out[...] = 0
    if not vidx.size:
        return out
    blur = effects is not None and effects.blur
    pileup = effects is not None and effects.pileup
    fixed = count_model == "fixed"
    if fixed and blur and pileup:
        raise ValueError("fixed counts with blur and pile-up take the per-photon path")
    draw = None
    if fixed and not pileup:
        draw = _AliasDraw(*(tables if tables is not None else
                            padded_tables(*alias_tables(spectra))))
    if blur:
        W = _det.psf_mixture_weights(effects.labels_padded, effects.psf, K)[vidx]
        Wu, rows = np.unique(W, axis=0, return_inverse=True)
        dist = Wu @ spectra
        dist /= dist.sum(axis=1, keepdims=True)
        rows = rows.ravel()
        if draw is not None:
            draw = _MixtureDraw(Wu, draw)
    else:
        dist = spectra
        rows = flat_lab[vidx].astype(np.intp)
    n_fixed = int(counts) if fixed else 0
    chain_w = order = None
    if pileup:
        fx = effects.effects
        if fixed:
            p = float(fx.link_probability(float(counts), counts))
            kmax = _det.pileup_order_count(p, float(counts))
        else:
            p = fx.link_probability(true, counts)
            kmax = _det.pileup_order_count(float(p.max(initial=0.0)), float(means.max()))
        order = _det.pileup_order_spectra(dist, effects.edges, kmax)  # (U, kmax, E)
        if fixed:
            wts = _det.pileup_chain_weights(float(counts), p, kmax, fixed=True)
            ev = np.einsum("k,uke->ue", wts, order)
            dist = np.concatenate([ev, (wts.sum() - ev.sum(axis=1))[:, None]], axis=1)
            dist = np.maximum(dist, 0.0) / wts.sum()  # event spectrum + the "lost" cell
            draw = _AliasDraw.of(dist)
        else:
            chain_w = _det.pileup_chain_weights(means, p, kmax, fixed=False)
    split = None
    if not blur and not (pileup and not fixed):
        lam_ref = max(n_fixed - n_fixed ** 0.5, 0.0) if fixed else float(means.max())
        split = _Split.of(dist, lam_ref)
    ys, xs = np.divmod(vidx, w)
    B = max(1, _BATCH_VOXELS // E)
    top = np.iinfo(out.dtype).max
    for b0 in range(0, vidx.size, B):
        sl = slice(b0, b0 + B)
        r = rows[sl]
        nb = r.size
        if fixed:
            n = np.full(nb, n_fixed, dtype=np.int64)
            if pileup:
                n -= rng.binomial(n_fixed - 1, p, size=nb)
            c = multinomial_rows(rng, n, dist, r, draw, split)[:, :E]
        elif pileup:
            lam = np.einsum("bk,bke->be", chain_w[sl], order[r])
            c = rng.poisson(lam)
        else:
            c = poisson_rows(rng, means[sl], dist, r, split)
        if c.size and c.max() > top:
            raise OverflowError(
                f"a channel drew {int(c.max())} counts, more than {out.dtype.name} holds; "
                "use dtype=uint32")
        out[ys[sl], xs[sl]] = c
    return out
