"""Per-row Poisson tables of the per-channel path (ganx_dask.per_channel.PoissonTables)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from ganx_dask import alias, sampling
from ganx_dask import detector as det
from ganx_dask import per_channel as pc
from ganx_dask.energy import EnergyAxis

#: Poisson means of the tests: just above TABLE_SPLIT_MEAN and SPLIT_MEAN up to the tens of
#: thousands.
MUS = np.array([2.05, 4.05, 4.5, 9.7, 37.3, 250.0, 3100.0, 27000.0])


def _tables(sigmas=None, mus=MUS):
    """Two rows of ``dist`` whose big channels have the means ``mus`` (row 0) and ``mus / 2``
    above TABLE_SPLIT_MEAN (row 1), in shuffled channel order, with small channels in
    between."""
    E = 3 * mus.size
    lam = 1000.0
    d = np.full((2, E), 1e-3 / lam)  # small channels: mean 1e-3 each
    ch = np.random.default_rng(0).permutation(E)[:mus.size]
    d[0, ch] = mus / lam
    d[1, ch] = mus / (2 * lam)
    big = [np.flatnonzero(lam * r >= pc.TABLE_SPLIT_MEAN) for r in d]
    return pc.PoissonTables(d, lam, big, sigmas=sigmas), d, lam


def test_alias_sweep_reproduces_the_weights():
    rng = np.random.default_rng(1)
    for W in (2, 7, 64, 300):
        q = rng.random((30, W)) ** 6
        q[:, ::5] = 0.0
        q[q.sum(1) == 0, 0] = 1.0
        q *= W / q.sum(axis=1, keepdims=True)
        p, a = alias.alias_sweep(q)
        assert p.min() >= 0 and p.max() <= 1 and a.min() >= 0 and a.max() < W
        got = np.array([p[i] + np.bincount(a[i], weights=1 - p[i], minlength=W)
                        for i in range(q.shape[0])])
        np.testing.assert_allclose(got, q, rtol=0, atol=1e-12 * W)
        assert np.all(got[q == 0] < 1e-12 * W)  # zero-weight cells are (up to rounding) never drawn


@pytest.mark.parametrize("sigmas", [None, 0.3])
def test_tables_hold_the_poisson_law_and_the_exact_tail_mass(sigmas):
    tab, d, lam = _tables(sigmas)
    assert tab.mu.size == 2 * MUS.size - 1  # 2.05 / 2 is below TABLE_SPLIT_MEAN
    for t, mu in enumerate(tab.mu):
        law, esc = tab.law(t)
        k = tab.lo[t] + np.arange(law.size)
        np.testing.assert_allclose(law, stats.poisson.pmf(k, mu), rtol=1e-9, atol=1e-15)
        tail = stats.poisson.cdf(tab.lo[t] - 1, mu) + stats.poisson.sf(k[-1], mu)
        assert esc == pytest.approx(tail, rel=1e-9, abs=1e-300)
    # each row's tables are its own channels' means, in channel order
    np.testing.assert_allclose(tab.mu, np.concatenate([lam * d[u, r[0]]
                                                       for u, r in enumerate(tab.rows)]))


def _chi2_pvalue(x: np.ndarray, mu: float) -> float:
    """Chi-square p-value of draws ``x`` against Poisson(mu), cells pooled to ≥ 20 expected."""
    n = x.size
    lo, hi = int(stats.poisson.ppf(1e-7, mu)), int(stats.poisson.isf(1e-7, mu))
    k = np.arange(lo, hi + 1)
    exp = n * stats.poisson.pmf(k, mu)
    exp[0] += n * stats.poisson.cdf(lo - 1, mu)
    exp[-1] += n * stats.poisson.sf(hi, mu)
    obs = np.bincount(np.clip(x, lo, hi) - lo, minlength=k.size).astype(float)
    # pool neighbouring cells until each expects ≥ 20
    edges, acc = [0], 0.0
    for i, e in enumerate(exp):
        acc += e
        if acc >= 20:
            edges.append(i + 1)
            acc = 0.0
    edges[-1] = k.size
    eo = np.add.reduceat(exp, edges[:-1])
    oo = np.add.reduceat(obs, edges[:-1])
    chi2 = float(((oo - eo) ** 2 / eo).sum())
    return float(stats.chi2.sf(chi2, eo.size - 1))


@pytest.mark.parametrize("sigmas", [None, 0.3])
def test_table_draws_are_poisson(sigmas):
    """Mean, variance and histogram of every (row, channel) against Poisson(μ); with
    ``sigmas=0.3`` a third to two thirds of the draws escape the tables and come from the
    exact tail draw (the law must still hold, and values outside the support must appear)."""
    tab, d, lam = _tables(sigmas)
    n = 20_000
    rows = np.repeat([0, 1], n)
    drawn = tab.draw_rows(np.random.default_rng(7 if sigmas is None else 8), rows)
    t = 0
    outside = 0
    for u in (0, 1):
        x = drawn.values[u].T  # (pixels, channels)
        assert x.shape == (n, tab.rows[u][0].size)
        for i in range(x.shape[1]):
            mu, xi = tab.mu[t], x[:, i]
            assert abs(xi.mean() - mu) / math.sqrt(mu / n) < 4.5
            sd_var = math.sqrt((mu + 2 * mu ** 2) / n)
            assert abs(xi.var(ddof=1) - mu) / sd_var < 5
            assert _chi2_pvalue(xi, mu) > 1e-4, (u, i, mu)
            hi = tab.lo[t] + tab.W[t] - 2
            out = int(((xi < tab.lo[t]) | (xi > hi)).sum())
            _, esc = tab.law(t)
            # escapes happen as often as the exact tail mass says (binomial z-score)
            assert abs(out - n * esc) <= 5 * math.sqrt(n * esc * (1 - esc)) + 1e-9
            outside += out
            t += 1
    if sigmas is not None:
        assert outside > 1000


def test_shared_split_draws_independent_poissons():
    """With a mean shared by a row's pixels the big channels come from the tables: still every
    channel an independent Poisson of mean λ·d (zero covariance between table channels)."""
    rng = np.random.default_rng(5)
    d = rng.random((2, 40)) ** 3
    d /= d.sum(axis=1, keepdims=True)
    B, lam = 30_000, 200.0
    rows = np.tile([0, 1], B // 2)
    split = pc._Split(d, lam, shared=True)
    assert split.tables is not None and all(b.size > 5 for b in split.big)
    c = pc.poisson_rows(np.random.default_rng(3), np.full(B, lam), d, rows, split)
    for u in (0, 1):
        x = c[rows == u].astype(float)
        n, m = x.shape[0], lam * d[u]
        zm = (x.mean(0) - m) / np.sqrt(m / n)
        assert np.max(np.abs(zm)) < 4.5, zm
        zv = (x.var(0, ddof=1) - m) / np.sqrt((m + 2 * m ** 2) / n)
        assert np.max(np.abs(zv)) < 5, zv
        i, j = split.big[u][np.argsort(m[split.big[u]])[-2:]]
        assert abs(np.corrcoef(x[:, i], x[:, j])[0, 1]) < 5 / math.sqrt(n)


def test_tables_only_when_the_pixels_of_a_row_share_the_mean(monkeypatch):
    """``fixed`` and ``poisson`` draw from the tables, and so does ``luminosity`` when every
    pixel of a row has the same mean (a constant map; one value per cluster, as a calibration
    gives); a map that varies within a row keeps one ``rng.poisson`` variate per channel."""
    rng = np.random.default_rng(2)
    d = rng.random((3, 64)) ** 4
    d /= d.sum(axis=1, keepdims=True)
    lab = rng.integers(0, 3, size=(64, 64)).astype(np.int16)
    prob, alias = sampling.alias_tables(d)
    calls = []
    real = pc.PoissonTables.draw_rows
    monkeypatch.setattr(pc.PoissonTables, "draw_rows",
                        lambda self, *a: calls.append(1) or real(self, *a))
    varying = rng.uniform(0.5, 1.0, size=(64, 64))
    for model, scale, used in (("fixed", None, True), ("poisson", None, True),
                               ("luminosity", np.ones((64, 64)), True),
                               ("luminosity", np.array([0.5, 1.0, 0.8])[lab], True),
                               ("luminosity", varying, False)):
        calls.clear()
        out = sampling.sample_block(lab, prob, alias, seed=4, counts=4000.0, count_model=model,
                                    scale=scale)
        assert bool(calls) == used, model
        if model == "fixed":
            assert np.all(out.sum(axis=2) == 4000)
    # fixed with pile-up: each pixel's event count varies, the Poisson step at the tables' mean
    # still gives its exact multinomial (tested against the per-photon path in test_per_channel)
    calls.clear()
    fx = det.DetectorEffects(pulse_pair_ns=500, input_rate_cps=1e5)
    sampling.sample_block(lab, prob, alias, seed=4, counts=4000, detector=fx,
                          energy_edges=EnergyAxis(0.0, 25.6, 64).edges)
    assert calls
