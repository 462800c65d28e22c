"""Optional numba kernels (extra ``[fast]``) for :mod:`ganx_dask.sampling`.

They consume exactly the uniforms the numpy kernels consume (drawn by numpy from the same tile
generator) and apply the same float64 operations, so cubes are bit-identical with and without
numba.  Only the per-photon alias gather and the count are fused here: no temporaries, no
``bincount`` over a fresh array.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["alias_count", "alias_count_k", "psf_sources", "pileup_correct", "table_values",
           "place_big", "remove_at"]


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


@numba.njit(cache=True, nogil=True)
def table_values(
    x: np.ndarray, W: np.ndarray, off: np.ndarray, lo1: np.ndarray, prob: np.ndarray,
    alias: np.ndarray, out: np.ndarray,
) -> int:
    """Variates of the Poisson tables of one row (``per_channel.PoissonTables.draw_row``), fused.

    Parameters
    ----------
    x : ndarray (n_big, n_pix) float64
        One uniform per variate, channel-major (the order numpy drew them).
    W, off, lo1 : ndarray (n_big, 1)
        Per channel: table width (float64), first cell (intp) and ``lo − 1`` (int64).
    prob, alias : ndarray
        The tables laid end to end: thresholds and alias cell (relative to the table).
    out : ndarray (n_big, n_pix) int64
        ``lo − 1 + cell``: the value drawn, or ``lo − 1`` for the escape cell 0 (the caller
        redraws those from the tails).

    Returns
    -------
    int
        Number of escapes.
    """
    n_esc = 0
    for i in range(x.shape[0]):
        w = W[i, 0]
        o = off[i, 0]
        base = lo1[i, 0]
        for p in range(x.shape[1]):
            y = x[i, p] * w
            j = np.intp(y)
            f = y - j
            a = o + j
            c = np.intp(alias[a]) if f >= prob[a] else j
            if c == 0:
                n_esc += 1
            out[i, p] = base + c
    return n_esc


@numba.njit(cache=True, nogil=True)
def place_big(values: np.ndarray, first: int, pix: np.ndarray, big: np.ndarray,
              out: np.ndarray) -> None:
    """``out[pix[q], big[i]] = values[i, first + q]``: table variates into a batch of pixels.

    Parameters
    ----------
    values : ndarray (n_big, n_pix_row) int64
        Variates of one row of ``dist`` (``table_values``), channel-major.
    first : int
        Rank of the batch's first pixel of that row among the row's pixels.
    pix : ndarray (n,) intp
        Batch pixels of that row (consecutive ranks).
    big : ndarray (n_big,) intp
        Their channels.
    out : ndarray (B, E) int64
    """
    n = pix.shape[0]
    for q0 in range(0, n, 16):  # blocks of 16 pixels: contiguous reads, 16 write streams
        q1 = min(n, q0 + 16)
        for i in range(big.shape[0]):
            e = big[i]
            for q in range(q0, q1):
                out[pix[q], e] = values[i, first + q]


@numba.njit(cache=True, nogil=True)
def remove_at(c: np.ndarray, sel: np.ndarray, base: np.ndarray, chosen: np.ndarray) -> None:
    """Remove the photons at sorted positions ``chosen`` (``per_channel._remove_photons``).

    Pixel ``sel[r]`` holds the positions ``[base[r], base[r] + T_r)``, its photons ordered by
    channel; one pass over its channels maps positions to channels (the ``searchsorted`` of
    the cumulative counts) and subtracts them.

    Parameters
    ----------
    c : ndarray (B, E) int64
        Counts, in place.
    sel : ndarray (n,) intp
        Pixels losing photons, ascending.
    base : ndarray (n,) int64
        First position of each, ascending.
    chosen : ndarray (m,) int64
        Distinct positions, ascending.
    """
    m = chosen.shape[0]
    i = 0
    for r in range(sel.shape[0]):
        row = c[sel[r]]
        cum = base[r]
        for e in range(row.shape[0]):
            if i == m:
                return
            nxt = cum + row[e]
            k = 0
            while i < m and chosen[i] < nxt:
                k += 1
                i += 1
            row[e] -= k
            cum = nxt
