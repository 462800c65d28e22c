"""Optional numba kernels (extra ``[fast]``) for :mod:`ganx_dask.sampling`.

They consume exactly the uniforms the numpy kernels consume (drawn by numpy from the same tile
generator) and apply the same float64 operations, so cubes are bit-identical with and without
numba.  Only the per-photon alias gather and the count are fused here: no temporaries, no
``bincount`` over a fresh array.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["alias_count", "alias_count_k", "psf_sources", "pileup_correct"]


@numba.njit(cache=True, nogil=True, inline="always")
def _draw(ui: float, kw: int, E: int, pf: np.ndarray, af: np.ndarray) -> int:
    """Channel of one photon: alias cell ``floor(ui·E)`` of table row ``kw // W``, or its alias."""
    x = ui * E
    j = np.intp(x)
    f = x - j
    a = kw + j
    al = af[a]  # load both outcomes: a select instead of an unpredictable branch
    return (al if f >= pf[a] else a) - kw


@numba.njit(cache=True, nogil=True)
def alias_count(
    u: np.ndarray, lab: np.ndarray, tot: np.ndarray, ptab: np.ndarray, atab: np.ndarray,
    out: np.ndarray,
) -> None:
    """Add the photons of a batch of pixels to ``out`` (in place).

    Parameters
    ----------
    u : ndarray (m,) float64
        One uniform in [0, 1) per photon, pixels in row-major order (``m = tot.sum()``).
    lab : ndarray (r, w) int64
        Cluster of each pixel (−1 pixels must have ``tot == 0``).
    tot : ndarray (r, w) int64
        Photons of each pixel, counts.
    ptab, atab : ndarray (K, E + 1)
        Padded alias tables (``sampling._padded_tables``): thresholds and absolute alias indices.
    out : ndarray (r, w, E) unsigned int
        Zeroed counts, incremented in place.
    """
    E = out.shape[2]
    W = E + 1
    pf = ptab.ravel()
    af = atab.ravel()
    i = 0
    for r in range(lab.shape[0]):
        for c in range(lab.shape[1]):
            n = tot[r, c]
            if n == 0:
                continue
            kw = lab[r, c] * W
            row = out[r, c]
            for _ in range(n):
                row[_draw(u[i], kw, E, pf, af)] += 1
                i += 1


@numba.njit(cache=True, nogil=True)
def alias_count_k(
    u: np.ndarray, kph: np.ndarray, tot: np.ndarray, ptab: np.ndarray, atab: np.ndarray,
    out: np.ndarray,
) -> None:
    """As :func:`alias_count` with a cluster per photon (``kph``, beam-spot blur).

    Parameters
    ----------
    u : ndarray (m,) float64
        One uniform per photon (same order as :func:`alias_count`).
    kph : ndarray (m,) intp
        Source cluster of each photon.
    tot : ndarray (r, w) int64
        Photons of each pixel, counts.
    ptab, atab, out
        As in :func:`alias_count`.
    """
    E = out.shape[2]
    W = E + 1
    pf = ptab.ravel()
    af = atab.ravel()
    i = 0
    for r in range(tot.shape[0]):
        for c in range(tot.shape[1]):
            row = out[r, c]
            for _ in range(tot[r, c]):
                row[_draw(u[i], kph[i] * W, E, pf, af)] += 1
                i += 1


@numba.njit(cache=True, nogil=True)
def psf_sources(
    v: np.ndarray, prob: np.ndarray, alias: np.ndarray, off: np.ndarray, base: np.ndarray,
    nph: np.ndarray, labf: np.ndarray, out: np.ndarray,
) -> None:
    """First pass of :func:`ganx_dask.detector.blur_sources`, fused (same float64 operations).

    Parameters
    ----------
    v : ndarray (m,) float64
        One uniform per photon (overwritten: the coin, as in ``PsfTable.draw``).
    prob, alias : ndarray (K + 1,)
        The PSF alias table (``PsfTable.prob``/``alias``).
    off : ndarray (K,) intp
        Flat offset of each kernel entry in the padded labels.
    base : ndarray (P,) intp
        Flat index of each emitting pixel in the padded labels.
    nph : ndarray (P,) int64
        Photons of each emitting pixel.
    labf : ndarray
        Padded labels, flattened.
    out : ndarray (m,)
        Source label of each photon (may be < 0: the caller redraws those).
    """
    K = off.shape[0]
    i = 0
    for p in range(base.shape[0]):
        b = base[p]
        for _ in range(nph[p]):
            x = v[i] * K
            j = np.intp(x)
            f = x - j
            al = alias[j]
            j = al if f >= prob[j] else j
            out[i] = labf[b + off[j]]
            i += 1


@numba.njit(cache=True, nogil=True)
def pileup_correct(
    links: np.ndarray, link_pix: np.ndarray, u1: np.ndarray, k1: np.ndarray, u2: np.ndarray,
    k2: np.ndarray, ptab: np.ndarray, atab: np.ndarray, uniform: bool, s_over_w: float,
    centres: np.ndarray, edges: np.ndarray, tol: float, out: np.ndarray,
) -> None:
    """Pile-up correction of a tile's histogram, fused (numba engine).

    The same result as ``detector.apply_pileup`` with the channels from
    ``sampling._alias_lookup``: chains are the runs of consecutive short gaps; each member
    leaves its channel and each chain adds one count at its summed channel (integer formula on
    uniform axes, ``searchsorted`` with ``tol`` otherwise; dropped above the axis).

    Parameters
    ----------
    links : ndarray (n,) int64
        Sorted short gaps of the tile (photon ``links[i]`` merges with ``links[i] + 1``).
    link_pix : ndarray (n,) int64
        Flat pixel (row-major in ``out``) of each gap's photons.
    u1, k1, u2, k2 : ndarray (n,)
        Uniform and cluster of photon ``links[i]`` (1) and ``links[i] + 1`` (2).
    ptab, atab : ndarray (K, E + 1)
        Padded alias tables.
    uniform, s_over_w, centres, edges, tol
        From ``detector.sum_axis_params``.
    out : ndarray (h, w, E) unsigned int
        The tile's counts, corrected in place.
    """
    E = out.shape[2]
    W = E + 1
    w = out.shape[1]
    pf = ptab.ravel()
    af = atab.ravel()
    n = links.shape[0]
    isum = 0
    m = 0
    esum = 0.0
    for i in range(n):
        p = link_pix[i]
        r = p // w
        c = p - r * w
        if i == 0 or links[i] != links[i - 1] + 1:  # first photon of a new chain
            kw = k1[i] * W
            x = u1[i] * E
            j = np.intp(x)
            f = x - j
            a = kw + j
            al = af[a]
            a = al if f >= pf[a] else a
            ch = a - kw
            out[r, c, ch] -= 1
            isum = ch
            m = 1
            esum = 0.0 + centres[ch]
        kw = k2[i] * W
        x = u2[i] * E
        j = np.intp(x)
        f = x - j
        a = kw + j
        al = af[a]
        a = al if f >= pf[a] else a
        ch = a - kw
        out[r, c, ch] -= 1
        isum += ch
        m += 1
        esum += centres[ch]
        if i == n - 1 or links[i + 1] != links[i] + 1:  # last photon of the chain
            if uniform:
                s = isum + np.int64(np.floor((m - 1) * s_over_w + 0.5 * m + 1e-9))
            else:
                s = np.searchsorted(edges, esum + tol, side="right") - 1
            if s < E:
                out[r, c, s] += 1
