"""Count-adaptive sampling: per-channel draws for tiles with many photons per pixel.

The alias sampler (:mod:`ganx_dask.sampling`) costs one uniform and one table lookup per
*photon*: ≈ 5–9 ns × N per pixel.  Drawing every *channel* instead costs a bounded amount per
channel whatever N is: channels expecting < ``SPLIT_MEAN`` = 4 counts are drawn as photons
(:func:`poisson_rows`, Poisson splitting), the others ("big") one numpy Poisson variate each
(≈ 30–100 ns, more for means ≳ 10) or, when every pixel of a row of ``dist`` shares its mean,
one uniform and one alias lookup in a per-(row, channel) table of the Poisson law
(:class:`PoissonTables`, ≈ 2–3× cheaper; then the threshold is ``TABLE_SPLIT_MEAN`` = 2).  Above ``N ≈ 5·E`` photons per pixel the per-channel
path is the cheaper one; :func:`use_per_channel` makes that choice per tile, from the
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

Poisson tables
--------------
When the pixels of a row of ``dist`` share their mean — ``fixed`` without pile-up and blur
(``λ = N − √N``), ``poisson`` without luminosity map, pile-up or blur (dead time included) —
the big channels are drawn from :class:`PoissonTables`: per (row, channel) an alias table over
``W`` cells, the support ``[lo, lo + W − 2]`` around ``μ`` (± 5 σ and more) and one *escape*
cell holding the exact mass outside it (incomplete gamma functions); an escape is redrawn
exactly from the tails.  The law is ``Poisson(μ)`` up to float64 rounding (the pmf from
``exp(k·ln μ − μ − ln k!)``: relative error ≲ 10⁻¹¹ at μ ~ 10⁴).  The tables are memoised by
content (spectra and λ, like :class:`_Split`; ≤ 64 sets and 256 MB): the tiles of an image
share them.  This changed the bits of per-channel ``fixed`` and ``poisson`` tiles (format 2,
before its release); the per-photon path (≤ 5 120 counts at E = 1024) is unchanged.

More generally, whenever every pixel of a row expects the same counts ``I[u, e]`` in every
channel — a luminosity map with one value per cluster (a calibrated cube), pile-up at a shared
or per-cluster mean (the row's recorded spectrum ``Σ_k w_k · order_k``) — the rows are rescaled
to ``I[u] / λ`` with ``λ = max_u Σ_e I[u, e]`` and drawn from the tables at the shared mean
``λ``: the same law, each channel ``Poisson(I[u, e])`` (format 3).  A luminosity map that
varies within a row, and pile-up with such a map, keep one ``rng.poisson`` variate per channel.

Determinism
-----------
A per-channel tile draws from its own stream ``PCG64(SeedSequence(seed, spawn_key=(7, ty,
tx)))`` (:func:`channel_rng`), never from the per-photon stream ``(0, ty, tx)`` nor from the
detector streams ``(4, …)``.  Valid pixels (label ≥ 0) are taken in row-major order.  With
Poisson tables the tile first draws the big channels of all its valid pixels
(:meth:`PoissonTables.draw_rows`): rows of ``dist`` in ascending order; per row, its big
channels in ascending order, for each one uniform per pixel of the row (pixels in order); then
one uniform per escape of the row, in the same order.  Then the pixels are taken in batches of
at most ``2¹⁸`` voxels; per batch the stream is consumed as: (``fixed`` with pile-up) one
binomial per pixel; the Poisson step (:func:`poisson_rows`: without blur, and except pile-up
with ``poisson``, channels whose mean at the tile's largest pixel mean is below ``SPLIT_MEAN``
— ``TABLE_SPLIT_MEAN`` with tables — are drawn as a Poisson number of photons, one uniform each — exact by Poisson splitting —, the
others one variate each unless the tables drew them; with blur or pile-up one Poisson per
channel of each pixel, pixels in order); (``fixed``) one
uniform per added photon, pixels in order (with blur first one per added photon for its
cluster, then one each for its channel); then the removals (one uniform per candidate position,
rounds until every pixel has its distinct positions).  Every uniform is drawn by numpy; the
numba engine only fuses what is done with them (table lookups and their placement, the alias
draws and counts of photons: :mod:`ganx_dask._numba_kernels`, the same float64 operations), so
the numpy and numba engines give the same bits.
"""

from __future__ import annotations

import hashlib

import numpy as np

from . import detector as _det
from .alias import alias_distributions, alias_sweep, alias_tables, padded_tables

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

#: Draw the ``big`` channels from :class:`PoissonTables` when every pixel of a row shares its
#: mean (``False`` forces one ``rng.poisson`` variate each: benchmarks' A/B only; it changes
#: the bits).
TABLES = True
#: Spawn-key namespace of the per-channel Monte Carlo: ``(7, ty, tx)``.
CHANNEL_KEY = 7
#: A tile is drawn per channel when its mean photons per valid pixel reach this many per channel
#: (measured break-even ≈ 4.5–6: a numpy Poisson variate costs ≈ 30–35 ns, a photon 5–9 ns).
PHOTONS_PER_CHANNEL = 5
#: …and at least this many photons per pixel (below it the per-photon path always wins or ties).
MIN_PHOTONS = 1000
#: ``fixed``: the Poisson step aims ``AIM`` standard deviations below ``N``.
AIM = 1.0
#: Voxels per batch of pixels (the float64 means and int64 counts stay in L2/L3).
_BATCH_VOXELS = 1 << 18
#: Channels whose Poisson mean (at the tile's largest pixel mean) is below this are drawn as
#: photons instead of one variate each (:func:`poisson_rows`): a photon costs ≈ 15–20 ns in
#: numpy, a Poisson variate 35–90 ns (more for means ≳ 10); measured flat between 2 and 8.
SPLIT_MEAN = 4.0
#: The same threshold when the big channels come from :class:`PoissonTables` (a table variate
#: costs ≈ 25–40 ns, a photon ≈ 25 ns with its count): the channels expecting 2–4 counts are
#: cheaper as table variates.
TABLE_SPLIT_MEAN = 2.0


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


def _kernels(engine: str):
    """The numba kernels for ``engine="numba"``, else ``None`` (numpy)."""
    if engine == "numba":
        from . import _numba_kernels

        return _numba_kernels
    return None


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

    def count(self, rng: np.random.Generator, rows: np.ndarray, k: np.ndarray, c: np.ndarray,
              nk) -> None:
        """Add ``k[i] ≥ 0`` photons of law ``rows[i]`` to ``c[i]`` (int64, in place) with the
        numba kernel: the uniforms and channels of ``__call__`` (pixels in order)."""
        u = rng.random(int(k.sum()))
        nk.alias_count(u, np.ascontiguousarray(rows, dtype=np.int64)[None],
                       np.ascontiguousarray(k, dtype=np.int64)[None], self.ptab, self.atab,
                       c[None])


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


def _add_photons(rng, c, k, rows, draw, pending=(), nk=None) -> None:
    """Add ``k[i]`` photons of law ``rows[i]`` (``draw``) to ``c[i]``, in place, pixels in order.

    ``pending``: flat indices (``pixel·E + channel``) of photons drawn earlier but not yet
    counted; counted in the same pass (one ``bincount`` over the batch instead of two).
    ``nk``: the numba kernels (same uniforms, same counts; plain alias draws only)."""
    if nk is not None and type(draw) is _AliasDraw and not pending:
        draw.count(rng, rows, np.maximum(k, 0), c, nk)
        return
    chs = list(pending)
    pix = np.flatnonzero(k > 0)
    if pix.size:
        kk = k[pix]
        ch = draw(rng, np.repeat(rows[pix], kk))
        ch += np.repeat(pix * c.shape[1], kk)
        chs.append(ch)
    if chs:
        ch = chs[0] if len(chs) == 1 else np.concatenate(chs)
        c += np.bincount(ch, minlength=c.size).reshape(c.shape)  # ≈ 10× faster than np.add.at


def _remove_photons(rng, c, k, T=None, nk=None) -> None:
    """Remove ``k[i]`` of the photons of ``c[i]`` uniformly without replacement (in place).

    Positions ``floor(u·T)`` among the pixel's ``T`` photons are drawn in rounds until each
    pixel has ``k`` distinct ones; the law of the final set is invariant under permutations of
    the photons, so it is a uniform ``k``-subset.  Positions map to channels by the cumulative
    counts (photons of a pixel ordered by channel).  ``T``: the pixels' totals when known;
    ``nk``: the numba kernels (the same mapping, one pass per pixel).
    """
    sel = np.flatnonzero(k > 0)
    if not sel.size:
        return
    E = c.shape[1]
    T = c[sel].sum(axis=1) if T is None else T[sel]
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
    if nk is not None:
        nk.remove_at(c, sel, base, chosen)
        return
    cs = np.cumsum(c[sel].ravel())
    cell = np.searchsorted(cs, chosen, side="right")
    row, ch = np.divmod(cell, E)
    np.subtract.at(c.reshape(-1), sel[row] * E + ch, 1)


class _Split:
    """Which channels of each row of ``dist`` are drawn one Poisson variate each (``big``), and
    the law of the others (their total mass ``small`` and alias tables of their shares).

    With ``shared`` (every pixel of a row has the mean ``lam_ref``), the ``big`` channels are
    drawn from :class:`PoissonTables` (``tables``) instead of ``rng.poisson``."""

    def __init__(self, dist: np.ndarray, lam_ref: float, shared: bool = False):
        big = lam_ref * dist >= (TABLE_SPLIT_MEAN if shared else SPLIT_MEAN)
        self.big = [np.flatnonzero(b) for b in big]
        rest = np.where(big, 0.0, dist)
        self.small = rest.sum(axis=1)
        empty = self.small <= 0  # every channel big: no photons drawn, any table will do
        rest[empty] = 1.0
        self.draw = _AliasDraw.of(rest)
        self.tables = PoissonTables(dist, lam_ref, self.big) if shared else None

    @property
    def nbytes(self) -> int:
        return 0 if self.tables is None else self.tables.nbytes

    @classmethod
    def of(cls, dist: np.ndarray, lam_ref: float, shared: bool = False) -> _Split:
        """Memoised by content: the tiles of a block share their spectra and count level.

        At most 64 entries and ``_CACHE_BYTES`` of tables (the cache is emptied beyond)."""
        key = hashlib.blake2b(dist.tobytes() + np.float64(lam_ref).tobytes() + str(
            (dist.shape, bool(shared))).encode(), digest_size=16).digest()
        split = _SPLITS.get(key)
        if split is None:
            split = cls(dist, lam_ref, shared)
            if len(_SPLITS) >= 64 or sum(s.nbytes for s in _SPLITS.values()) \
                    + split.nbytes > _CACHE_BYTES:
                _SPLITS.clear()
            _SPLITS[key] = split
        return split


_SPLITS: dict[bytes, _Split] = {}
#: Bound of the memoised Poisson tables, bytes (a table set is ≈ 1–20 MB at E = 1024).
_CACHE_BYTES = 256 << 20


class PoissonTables:
    """Alias tables of the ``Poisson(μ)`` laws of the ``big`` channels of every row of ``dist``
    at one shared mean ``λ`` (``μ = λ·d[u, e]``): one uniform per variate instead of a numpy
    Poisson variate (≈ 80–100 ns for means ≥ 10 on a slow host).

    Each table has ``W`` cells (:func:`_table_width`): cell 0 is the *escape* cell, holding the
    exact mass outside the support ``[lo, lo + W − 2]`` (``P(X < lo) + P(X > hi)`` from
    ``scipy.special`` incomplete gamma functions, never ``1 − Σ``), cell ``i ≥ 1`` the value
    ``lo + i − 1`` (pmf ``exp(k·ln μ − μ − ln k!)``, float64).  A uniform ``u`` gives the column
    ``j = ⌊u·W⌋`` and the coin ``u·W − j``, as :class:`_AliasDraw` does.  An escape is redrawn
    exactly from the tails, by inversion of the conditional tail law (:meth:`tail`, one more
    uniform).  The tables are built for all channels at once, without a per-cell Python loop
    (:func:`~ganx_dask.alias.alias_sweep`).

    Attributes
    ----------
    prob : float64 (total cells,), alias : int32 (total cells,)
        Acceptance thresholds and alias *cell* of each cell, tables laid end to end.
    rows : list of tuple
        Per row of ``dist``: ``(big, W, off, lo1, t0)`` with ``big`` the channels (as in
        :class:`_Split`), per channel its width ``W`` (float64), first cell ``off`` (intp)
        and ``lo1 = lo − 1`` (int64), each shaped ``(n_big, 1)``, and the row's first table.
    build_seconds : float
        Wall time of the construction, s.
    """

    #: Half-width of the support in standard deviations (escapes ≈ 10⁻⁷ per variate here).
    SIGMAS = 5.0

    def __init__(self, dist: np.ndarray, lam: float, big: list[np.ndarray],
                 sigmas: float | None = None):
        import time

        from scipy import special

        t0 = time.perf_counter()
        self.sigmas = self.SIGMAS if sigmas is None else float(sigmas)
        self.lam = float(lam)
        mu = np.concatenate([lam * dist[u, b] for u, b in enumerate(big)]) if big else \
            np.zeros(0)
        W = _table_width(mu, self.sigmas)
        lo = np.maximum(np.floor(mu).astype(np.int64) - (W - 1) // 2, 0)
        off = np.concatenate(([0], np.cumsum(W)[:-1])).astype(np.intp)
        self.prob = np.empty(int(W.sum()), dtype=np.float64)
        self.alias = np.empty(self.prob.size, dtype=np.int32)
        for w in np.unique(W):  # one 2-D construction per width
            sel = np.flatnonzero(W == w)
            m, low = mu[sel, None], lo[sel, None]
            k = low + np.arange(w - 1)  # the support, (n, w − 1)
            logm = np.log(m)
            pmf = np.exp(k * logm - m - special.gammaln(k + 1.0))
            hi = low[:, 0] + w - 2
            esc = np.where(low[:, 0] > 0, special.gammaincc(low[:, 0], m[:, 0]), 0.0) \
                + special.gammainc(hi + 1.0, m[:, 0])
            q = np.concatenate((esc[:, None], pmf), axis=1)
            q *= w / q.sum(axis=1, keepdims=True)
            p, a = alias_sweep(q)
            cells = (off[sel, None] + np.arange(w)).ravel()
            self.prob[cells] = p.ravel()
            self.alias[cells] = a.ravel()
        self.mu, self.W, self.off, self.lo = mu, W, off, lo
        self.rows = []
        i = 0
        for b in big:
            s = slice(i, i + b.size)
            self.rows.append((b, W[s, None].astype(np.float64), off[s, None], lo[s, None] - 1,
                              i))
            i += b.size
        self._tails: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.build_seconds = time.perf_counter() - t0

    @property
    def nbytes(self) -> int:
        return self.prob.nbytes + self.alias.nbytes

    def law(self, t: int) -> tuple[np.ndarray, float]:
        """The law table ``t`` draws: probabilities of the support values ``lo…hi`` and of the
        escape cell (the inverse of the construction, as :func:`~ganx_dask.alias.
        alias_distributions`)."""
        w, o = int(self.W[t]), int(self.off[t])
        d = alias_distributions(self.prob[None, o:o + w], self.alias[None, o:o + w])[0]
        return d[1:], float(d[0])

    def tail(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Values and conditional CDF of ``Poisson(μ_t)`` outside the table's support.

        Lower tail ``0…lo − 1`` and upper tail ``hi + 1…hi + ⌈40·√μ⌉ + 40`` (beyond it the
        conditional mass is below ``e⁻⁸⁰⁰``), weights relative to the largest, one normaliser.
        """
        got = self._tails.get(t)
        if got is None:
            from scipy import special

            mu, lo = float(self.mu[t]), int(self.lo[t])
            hi = lo + int(self.W[t]) - 2
            k = np.concatenate((np.arange(lo), np.arange(
                hi + 1, hi + 2 + int(np.ceil(40 * np.sqrt(mu))) + 40))).astype(np.float64)
            lp = k * np.log(mu) - mu - special.gammaln(k + 1.0)
            cdf = np.cumsum(np.exp(lp - lp.max()))
            got = self._tails[t] = (k.astype(np.int64), cdf / cdf[-1])
        return got

    def draw_rows(self, rng: np.random.Generator, rows: np.ndarray, nk=None) -> RowDraws:
        """The ``big`` channels of pixels of rows ``rows`` of ``dist``: row by row in
        ascending order, :meth:`draw_row` for all the pixels of the row (``nk``: the numba
        kernels, same bits)."""
        rank = np.empty(rows.size, dtype=np.intp)
        values = {}
        for u in np.unique(rows):
            pix = np.flatnonzero(rows == u)
            rank[pix] = np.arange(pix.size)
            if self.rows[u][0].size:
                values[int(u)] = self.draw_row(rng, int(u), pix.size, nk)
        return RowDraws(values, rank)

    def draw_row(self, rng: np.random.Generator, u: int, n_pix: int, nk=None) -> np.ndarray:
        """Variates of the ``big`` channels of row ``u`` for ``n_pix`` pixels, ``(n_big,
        n_pix)`` int64; stream: ``n_big·n_pix`` uniforms channel by channel (pixels in order
        within a channel), then one per escape in the same order."""
        big, W, off, lo1, t0 = self.rows[u]
        x = rng.random((big.size, n_pix))
        if nk is not None:  # the same float64 steps, fused
            j = np.empty(x.shape, dtype=np.intp)
            scan = nk.table_values(x, W, off, lo1, self.prob, self.alias, j) > 0
        else:
            x *= W
            j = x.astype(np.intp)
            x -= j  # the coin
            j += off
            a = np.take(self.alias, j)
            swap = x >= np.take(self.prob, j)
            j -= off
            np.copyto(j, a, where=swap, casting="unsafe")
            j += lo1
            scan = True  # escapes not counted: look for them
        # the escape cell 0 is the value lo − 1, outside the support
        esc = np.flatnonzero(j == lo1) if scan else np.empty(0, dtype=np.intp)
        if esc.size:
            tab = t0 + esc // n_pix
            v = rng.random(esc.size)
            flat = j.reshape(-1)
            for i, t in enumerate(tab):
                k, cdf = self.tail(int(t))
                flat[esc[i]] = k[min(int(np.searchsorted(cdf, v[i], side="right")), k.size - 1)]
        return j


class RowDraws:
    """The ``big`` channels of a set of pixels drawn from :class:`PoissonTables`: per row of
    ``dist`` an ``(n_big, n_pix)`` int64 array (as drawn: channel-major, its pixels in order)
    and each pixel's rank among the pixels of its row."""

    def __init__(self, values: dict[int, np.ndarray], rank: np.ndarray):
        self.values, self.rank = values, rank

    def take(self, u: int, idx: np.ndarray) -> np.ndarray:
        """Values of pixels ``idx`` (ascending, all of row ``u``, consecutive in it),
        ``(idx.size, n_big)``."""
        a = int(self.rank[idx[0]])
        # a contiguous copy first: scattering from the transposed view reads ≈ 2× slower
        return np.ascontiguousarray(self.values[u][:, a:a + idx.size].T)


def _per_row(values: np.ndarray, rows: np.ndarray, n_rows: int) -> np.ndarray | None:
    """``values`` (one per pixel, first axis) as one per row of ``dist`` when every pixel of a
    row has the same (rows without pixels: 0), else ``None``."""
    out = np.zeros((n_rows,) + values.shape[1:], dtype=np.float64)
    out[rows] = values
    return out if np.array_equal(out[rows], values) else None


def _table_width(mu: np.ndarray, sigmas: float) -> np.ndarray:
    """Cells of each Poisson table: ``2·sigmas·√μ + 8`` values and the escape cell, rounded up
    to a multiple of 16 (≤ 256 cells) or 64 (above), so tables group into few widths."""
    need = 2.0 * sigmas * np.sqrt(mu) + 9.0
    step = np.where(need <= 256, 16, 64)
    return (np.ceil(need / step) * step).astype(np.int64)


def poisson_rows(rng: np.random.Generator, lam: np.ndarray, dist: np.ndarray,
                 rows: np.ndarray, split: _Split | None = None, drawn: RowDraws | None = None,
                 first: int = 0, pending: list | None = None, engine: str = "numpy"
                 ) -> np.ndarray:
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
        ``_Split.of(dist, lam_ref, shared)``; without it every channel is one Poisson variate.
        With ``split.tables`` every pixel's mean must be ``lam_ref``.
    drawn, first : optional
        The ``big`` channels already drawn for a whole tile (:meth:`PoissonTables.draw_rows`,
        batch pixel ``i`` is the tile's pixel ``first + i``); drawn here when missing.
    pending : list, optional
        When given, the photon-drawn channels are not counted into the result: their flat
        indices and photons per pixel are appended as ``(ch, n_small)`` for the caller
        (numpy engine only; the numba engine counts them at once).
    engine : {"numpy", "numba"}
        Kernels of the table draws, their placement and the photons (same bits).

    Returns
    -------
    ndarray (B, E) int64

    Notes
    -----
    Poisson splitting: independent Poissons over a set ``S`` of channels are, jointly, a total
    ``L ~ Poisson(λ·Σ_S d)`` whose ``L`` photons fall i.i.d. on ``S`` with probabilities
    ``d_e / Σ_S d``.  Channels with a small mean (most of a real spectrum: at 26 000 counts and
    1024 channels about half the channels expect < 1 count) are drawn that way, one uniform per
    photon; the others one variate each, or from ``split.tables``.  Stream order per batch: the
    variates of the ``big`` channels (row by row of ``dist`` in ascending order; within a row,
    its pixels in order and their channels in order; with tables and no ``drawn``, the order of
    :meth:`PoissonTables.draw_rows`), one ``L`` per pixel, then the photons.
    """
    if split is None:
        return rng.poisson(lam[:, None] * dist[rows])
    nk = _kernels(engine)
    B, E = rows.size, dist.shape[1]
    c = np.zeros((B, E), dtype=np.int64)
    if split.tables is not None and drawn is None:
        drawn, first = split.tables.draw_rows(rng, rows, nk), 0
    flat = c.reshape(-1)  # flat indices: 2× faster than c[pix[:, None], big] = …
    for u in np.unique(rows):  # rows in ascending order, their pixels in order
        big = split.big[u]
        if big.size:
            pix = np.flatnonzero(rows == u)
            if drawn is not None and nk is not None:
                nk.place_big(drawn.values[u], int(drawn.rank[first + pix[0]]), pix, big, c)
            elif drawn is not None:
                flat[pix[:, None] * E + big] = drawn.take(u, first + pix)
            else:
                flat[pix[:, None] * E + big] = rng.poisson(lam[pix, None] * dist[u, big])
    n_small = rng.poisson(lam * split.small[rows])
    if nk is not None:
        split.draw.count(rng, rows, n_small, c, nk)
    elif n_small.any():
        ch = split.draw(rng, np.repeat(rows, n_small))
        ch += np.repeat(np.arange(B, dtype=np.intp) * E, n_small)
        if pending is not None:  # the caller counts them
            pending.append((ch, n_small))
        else:
            c += np.bincount(ch, minlength=B * E).reshape(B, E)
    return c


def multinomial_rows(rng: np.random.Generator, n: np.ndarray, dist: np.ndarray,
                     rows: np.ndarray, draw=None, split: _Split | None = None,
                     drawn: RowDraws | None = None, first: int = 0, engine: str = "numpy"
                     ) -> np.ndarray:
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
    split, drawn, first : optional
        How the first, Poisson step is drawn (:func:`poisson_rows`).
    engine : {"numpy", "numba"}
        Kernels (same bits; the blur's mixture draws stay numpy).

    Returns
    -------
    ndarray (B, E) int64
        Counts; each row sums to ``n[i]`` exactly.

    Notes
    -----
    One Poisson per channel with mean ``λ·d``, ``λ = max(n − √n, 0)`` — or the mean of
    ``split.tables`` for every pixel (pile-up: ``n`` varies around the tables' total) —
    (total ``T ~ Poisson(λ)``; given ``T`` the vector is ``Multinomial(T, d)`` whatever ``λ``
    is), then ``n − T`` photons
    added from ``d`` or ``T − n`` removed uniformly without replacement: exactly
    ``Multinomial(n, d)`` in both cases.  Aiming one σ low makes the cheap additions
    (≈ 1.1·√n photons on average) the rule and the dearer removals rare (16 % of pixels,
    ≈ 0.08·√n photons on average).
    """
    n = np.asarray(n, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.intp)
    if split is not None and split.tables is not None:  # the tables' mean for every pixel
        lam = np.full(n.size, split.tables.lam)
    else:
        lam = np.maximum(n - AIM * np.sqrt(n), 0.0)
    pending: list = []
    nk = _kernels(engine)
    c = poisson_rows(rng, lam, dist, rows, split, drawn, first,
                     None if nk is not None else pending, engine)
    T = c.sum(axis=1)
    for _, n_small in pending:
        T += n_small
    _add_photons(rng, c, n - T, rows, _AliasDraw.of(dist) if draw is None else draw,
                 [ch for ch, _ in pending], nk)
    _remove_photons(rng, c, T - n, T, nk)
    return c


def sample_tile(
    labels: np.ndarray, spectra: np.ndarray, rng: np.random.Generator, *, counts: float,
    count_model: str, means: np.ndarray | None = None, true: np.ndarray | None = None,
    out: np.ndarray, effects=None, tables: tuple[np.ndarray, np.ndarray] | None = None,
    engine: str = "numpy",
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
    means : float, float array (V,) or None
        Photon mean of each valid pixel in row-major order (``poisson``/``luminosity``; dead
        time included), or one float shared by every pixel (``poisson`` without a luminosity
        map); the ``big`` channels are drawn from :class:`PoissonTables` when the means (and
        pile-up chain weights) are the same within every row; ``None`` for ``fixed``.
    true : float array (V,) or None
        Expected *true* photons of each valid pixel (sets the pile-up rate; not for ``fixed``).
    out : ndarray (h, w, E) unsigned
        Fully overwritten.
    effects : sampling.TileEffects, optional
        Blur (needs ``labels_padded`` and ``psf``) and pile-up (needs ``edges``); ``fixed``
        with both is not supported here (the per-photon path draws it).
    tables : (ptab, atab), optional
        :func:`~ganx_dask.alias.padded_tables` of ``spectra`` (built when missing).
    engine : {"numpy", "numba"}
        Kernels of the table draws and the photons (bit-identical; the numba kernels consume
        the uniforms numpy drew, as the per-photon path does).

    Returns
    -------
    ndarray (h, w, E)
    """
    h, w = labels.shape
    K, E = spectra.shape
    flat_lab = np.asarray(labels).ravel()
    vidx = np.flatnonzero(flat_lab >= 0)
    shared_mean = means is not None and np.ndim(means) == 0
    if shared_mean:
        means = np.full(vidx.size, float(means))
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
    chain_w = order = intensity = None
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
            row_w = None if blur else _per_row(chain_w, rows, dist.shape[0])
            if row_w is not None:  # the recorded spectrum of each row, in counts per channel
                intensity = np.einsum("uk,uke->ue", row_w, order)
    elif not fixed and not blur and not shared_mean:
        row_means = _per_row(means, rows, dist.shape[0])
        if row_means is not None:
            intensity = row_means[:, None] * dist
    row_total = 0.0 if intensity is None else float(intensity.sum(axis=1).max())
    if row_total > 0:
        # every pixel of a row expects the same counts in every channel (a calibrated cube's
        # per-cluster counts, a shared mean with pile-up): one shared mean over rows scaled
        # to it, so the big channels come from per-row Poisson tables
        lam_ref = row_total
        dist = intensity / lam_ref
        means = np.full(vidx.size, lam_ref)
        shared_mean, chain_w = True, None
    split = None
    if not blur and chain_w is None:
        if fixed:  # the Poisson step of the multinomial aims 1 σ below the (mean) total
            n_ref = n_fixed - (n_fixed - 1) * p if pileup else n_fixed
            lam_ref = float(np.maximum(n_ref - AIM * np.sqrt(n_ref), 0.0))
        else:
            lam_ref = float(means.max())
        # one mean for every pixel: fixed (with pile-up too: any mean gives the exact
        # multinomial, multinomial_rows), or a mean shared by every pixel
        shared = TABLES and (fixed or shared_mean)
        split = _Split.of(dist, lam_ref, shared)
    # the table draws of the whole tile first: each table is read for all its pixels in a row
    drawn = split.tables.draw_rows(rng, rows, _kernels(engine)) \
        if split is not None and split.tables is not None else None
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
            c = multinomial_rows(rng, n, dist, r, draw, split, drawn, b0, engine)[:, :E]
        elif chain_w is not None:
            lam = np.einsum("bk,bke->be", chain_w[sl], order[r])
            c = rng.poisson(lam)
        else:
            c = poisson_rows(rng, means[sl], dist, r, split, drawn, b0, engine=engine)
        if c.size and c.max() > top:
            raise OverflowError(
                f"a channel drew {int(c.max())} counts, more than {out.dtype.name} holds; "
                "use dtype=uint32")
        out[ys[sl], xs[sl]] = c
    return out
