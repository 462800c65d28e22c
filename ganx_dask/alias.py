"""Walker alias tables: O(1) draws from a discrete distribution (Vose's construction).

Shared by the Monte Carlo sampler (:mod:`ganx_dask.sampling`, one table per cluster spectrum)
and the beam-spot blur (:mod:`ganx_dask.detector`, one table over the PSF offsets).  It depends
on nothing else in the package, so both can import it without importing each other.
"""

from __future__ import annotations

import numpy as np

from .errors import GanxError

__all__ = [
    "alias_distributions", "alias_lookup", "alias_sweep", "alias_tables", "check_distributions",
    "padded_tables",
]


def check_distributions(spectra: np.ndarray) -> np.ndarray:
    """Validate distributions over channels and normalise each row to sum 1.

    Parameters
    ----------
    spectra : ndarray (K, E) or (E,), float
        Non-negative, finite weights; each row needs a positive sum.

    Returns
    -------
    ndarray (K, E) float64
        Rows normalised to 1.

    Raises
    ------
    GanxError
        Wrong shape, NaN/infinite or negative entries, or an all-zero row (named).
    """
    d = np.asarray(spectra, dtype=np.float64)
    if d.ndim == 1:
        d = d[None, :]
    if d.ndim != 2 or d.shape[1] < 1 or d.shape[0] < 1:
        raise GanxError(f"spectra must be a 2-D array (cluster, energy), got shape {d.shape}")
    if not np.all(np.isfinite(d)):
        raise GanxError("spectra contain NaN or infinite values")
    if np.any(d < 0):
        raise GanxError("spectra contain negative probabilities")
    s = d.sum(axis=1)
    if np.any(s <= 0):
        bad = np.flatnonzero(s <= 0).tolist()
        raise GanxError(f"spectra rows {bad} are all zero: a spectrum needs at least one count")
    return d / s[:, None]


def alias_tables(spectra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Build Walker alias tables for each spectrum (Vose's stable construction).

    Parameters
    ----------
    spectra : ndarray, shape (K, E), float
        One probability distribution over the ``E`` energy channels per cluster (rows are
        normalised to sum to 1; negative, non-finite or all-zero rows raise ``GanxError``).

    Returns
    -------
    prob : ndarray, shape (K, E), float64
        Acceptance threshold of each column, in [0, 1].
    alias : ndarray, shape (K, E), int32
        Channel returned when the coin exceeds ``prob``.  ``alias[k, j] == j`` where
        ``prob[k, j] == 1``.

    Notes
    -----
    Column ``j`` is chosen with probability ``1/E``; it yields ``j`` with probability
    ``prob[k, j]`` and ``alias[k, j]`` otherwise, so channel ``e`` is drawn with probability
    ``(prob[k, e] + Σ_{j: alias[k,j]=e} (1 − prob[k, j])) / E = d[k, e]`` exactly up to float64
    rounding (residuals are subtracted as ``(q_l + q_s) − 1`` as Vose recommends).  Channels with
    ``d = 0`` get ``prob = 0`` and an alias with ``d > 0``, so they can never be drawn.
    """
    d = check_distributions(spectra)
    K, E = d.shape
    prob = np.ones((K, E), dtype=np.float64)
    alias = np.tile(np.arange(E, dtype=np.int32), (K, 1))
    for k in range(K):
        q = (d[k] * E).tolist()
        small = [i for i in range(E) if q[i] < 1.0]
        large = [i for i in range(E) if q[i] >= 1.0]
        pk = prob[k]
        ak = alias[k]
        while small and large:
            s = small.pop()
            l_ = large[-1]
            pk[s] = q[s]
            ak[s] = l_
            q[l_] = (q[l_] + q[s]) - 1.0
            if q[l_] < 1.0:
                large.pop()
                small.append(l_)
        # leftovers hold q == 1 up to rounding: keep prob = 1, alias = self
        zero = d[k] == 0.0
        if np.any(zero & (pk > 0.0)):  # pragma: no cover - cannot happen with finite rounding
            raise RuntimeError("alias construction left mass on a zero-probability channel")
    return prob, alias


def alias_distributions(prob: np.ndarray, alias: np.ndarray) -> np.ndarray:
    """The distributions that alias tables draw from (the inverse of :func:`alias_tables`).

    Parameters
    ----------
    prob : ndarray (K, E) float64
        Acceptance thresholds.
    alias : ndarray (K, E) int
        Alias channels.

    Returns
    -------
    ndarray (K, E) float64
        ``d[k, e] = (prob[k, e] + Σ_{j: alias[k, j] = e} (1 − prob[k, j])) / E``: equal to the
        spectra the tables were built from up to float64 rounding, and exactly the law of a
        drawn channel.
    """
    prob = np.asarray(prob, dtype=np.float64)
    K, E = prob.shape
    rows = (np.arange(K, dtype=np.intp)[:, None] * E + np.asarray(alias, dtype=np.intp)).ravel()
    d = prob.ravel() + np.bincount(rows, weights=(1.0 - prob).ravel(), minlength=K * E)
    return (d / E).reshape(K, E)


def padded_tables(prob: np.ndarray, alias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kernel form of the tables: rows of stride ``E + 1`` and absolute alias indices.

    For ``u ≤ 1 − 2⁻⁵³`` (numpy's largest uniform) ``fl(u·E) < E`` in round-to-nearest for any
    ``E < 2⁵³``, so ``j = E`` cannot occur; the extra column ``E`` (prob 0, alias a channel with
    positive probability) is a free guard that keeps every index inside the table without a
    clamping pass, whatever the rounding mode.  ``alias_abs[k, j] = k·(E+1) + alias[k, j]``.
    """
    K, E = prob.shape
    W = E + 1
    p = np.zeros((K, W), dtype=np.float64)
    p[:, :E] = prob
    a = np.empty((K, W), dtype=np.intp)
    a[:, :E] = alias
    a[:, E] = alias[:, E - 1]  # positive-mass channel: E-1 itself when prob == 1, else its alias
    a += (np.arange(K, dtype=np.intp) * W)[:, None]
    return p, a


def alias_lookup(
    u: np.ndarray, k: np.ndarray, ptab: np.ndarray, atab: np.ndarray, E: int
) -> np.ndarray:
    """Channel drawn for uniforms ``u`` of photons of table rows ``k`` (vectorised, numpy).

    ``ptab``/``atab`` are :func:`padded_tables`.  The same float64 operations as the sampler's
    kernels (:mod:`ganx_dask.sampling`, numpy and numba), so the channel equals the one they
    count for the same uniform.
    """
    W = E + 1
    kw = np.asarray(k, dtype=np.intp) * W
    x = np.asarray(u, dtype=np.float64) * E
    j = x.astype(np.intp)
    f = x - j
    a = kw + j
    a = np.where(f >= ptab.ravel()[a], atab.ravel()[a], a)
    return (a - kw).astype(np.int64)


def alias_sweep(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Alias tables of many rows at once, without a per-cell Python loop (a different
    construction from :func:`alias_tables`: other tables, the same laws up to rounding).

    Parameters
    ----------
    q : ndarray (n, W) float64
        Non-negative weights, each row scaled to sum to its length ``W``.

    Returns
    -------
    prob : ndarray (n, W) float64, alias : ndarray (n, W) int32
        Acceptance thresholds and alias cell of each cell (as :func:`alias_tables`).

    Notes
    -----
    The sweep of Hübschle-Schneider & Sanders (*Parallel weighted random sampling*, 2022),
    written with prefix sums: light cells (``q < 1``) in index order have deficits
    ``1 − q`` laid end to end, heavy cells (``q ≥ 1``, and the row's largest cell) excesses
    ``q − 1``.  Lights (by the start ``D`` of their deficit) and heavies (by the end ``E_j``
    of their excess) are merged in one sorted sequence per row.  A light takes as alias the
    next heavy of the sequence (the one whose excess interval contains ``D``; the last heavy if
    none); heavy ``j`` keeps ``1 − (P − E_j)``, ``P`` the start of the next light (the end of
    the last light it served; the total deficit if none), and gives the rest to the next
    heavy.  Mass balance is exact for any merge of the two sorted sequences: heavy ``j`` hands
    out ``P_{j−1} − E_{j−1}`` (via heavy ``j − 1``) plus ``P_j − P_{j−1}`` (its lights) and keeps
    ``1 − (P_j − E_j)``: ``q_j`` in all; sorting keeps ``P_j − E_j`` in ``[0, 1]``.  The last
    heavy keeps its cell (its remainder is 0 up to rounding).
    """
    n, W = q.shape
    heavy = q >= 1.0
    heavy[np.arange(n), np.argmax(q, axis=1)] = True
    dev = q - 1.0  # excess of a heavy, minus the deficit of a light
    eend = np.cumsum(np.where(heavy, dev, 0.0), axis=1)
    dend = np.cumsum(np.where(heavy, 0.0, -dev), axis=1)
    key = np.zeros_like(dend)
    key[:, 1:] = dend[:, :-1]  # a light's start is exactly the previous light's end
    np.copyto(key, eend, where=heavy)
    order = np.argsort(key, axis=1, kind="stable")
    skey = np.take_along_axis(key, order, axis=1)
    sh = np.take_along_axis(heavy, order, axis=1)
    # after each sorted position: the next heavy cell and the next light start
    nxt_h = np.empty((n, W + 1), dtype=np.intp)
    nxt_h[:, -1] = W  # none
    nxt_h[:, :-1] = np.where(sh, order, W)
    nxt_h = np.minimum.accumulate(nxt_h[:, ::-1], axis=1)[:, ::-1]
    nxt_d = np.empty((n, W + 1))
    nxt_d[:, -1] = dend[:, -1]  # none: the total deficit
    nxt_d[:, :-1] = np.where(sh, np.inf, skey)
    nxt_d = np.minimum.accumulate(nxt_d[:, ::-1], axis=1)[:, ::-1]
    last_h = W - 1 - np.argmax(heavy[:, ::-1], axis=1)
    ah = nxt_h[:, 1:]  # the next heavy strictly after each position
    sp = np.where(sh, 1.0 - (nxt_d[:, 1:] - skey), np.take_along_axis(q, order, axis=1))
    sa = np.where(ah == W, last_h[:, None], ah)
    lastpos = sh & (ah == W)  # the last heavy keeps everything
    np.copyto(sp, 1.0, where=lastpos)
    np.copyto(sa, order, where=lastpos)
    prob = np.empty((n, W))
    alias = np.empty((n, W), dtype=np.int32)
    np.put_along_axis(prob, order, np.clip(sp, 0.0, 1.0), axis=1)
    np.put_along_axis(alias, order, sa, axis=1)
    return prob, alias
