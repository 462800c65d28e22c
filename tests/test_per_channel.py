"""Count-adaptive sampling: the per-channel path (ganx_dask.per_channel) and its choice per tile."""

from __future__ import annotations

import math

import dask
import dask.array as da
import numpy as np
import pytest
from scipy import stats

from ganx_dask import detector as det
from ganx_dask import per_channel as pc
from ganx_dask import sampling
from ganx_dask.energy import EnergyAxis
from tests.markers import has_numba, requires_numba

E = 64


def _spectra(K: int = 3, E: int = E, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    d = rng.random((K, E)) ** 4
    d[:, 5:9] = 0.0  # unreachable channels
    return d / d.sum(axis=1, keepdims=True)


def _labels(h: int, w: int, K: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, K, size=(h, w)).astype(np.int16)
    lab[rng.random((h, w)) < 0.05] = -1
    return lab


def _block(lab, d, N, model="fixed", **kw):
    prob, alias = sampling.alias_tables(d)
    return sampling.sample_block(lab, prob, alias, seed=3, counts=N, count_model=model, **kw)


def _per_photon(monkeypatch, *args, **kw):
    """The same block forced onto the per-photon path."""
    with monkeypatch.context() as m:
        m.setattr(pc, "MIN_PHOTONS", 10**12)
        return _block(*args, **kw)


def _channel_z(counts, lab, d, total, var_factor):
    """z-scores of every label's pooled channel sums against ``total·d`` (variance ·factor)."""
    zs = []
    for k in range(d.shape[0]):
        sel = lab == k
        obs = counts[sel].sum(axis=0).astype(float)
        exp = float(total[sel].sum()) * d[k]
        ok = exp > 0
        zs.append((obs[ok] - exp[ok]) / np.sqrt(exp[ok] * var_factor(d[k][ok])))
        assert np.all(obs[~ok] == 0)
    return np.concatenate(zs)


# ----------------------------------------------------------------------------------- the rule
def test_rule_keeps_the_paper_default_on_the_per_photon_path():
    assert not pc.use_per_channel(400, 1024) and not pc.use_per_channel(4000, 1024)
    assert pc.use_per_channel(26000, 1024) and pc.use_per_channel(100000, 1024)
    assert not pc.use_per_channel(999, 16) and pc.use_per_channel(1000, 16)
    # N = 400, E = 1024, fixed: exactly the per-photon bytes (tile_rng stream 0)
    d = _spectra(E=1024)
    lab = _labels(64, 64, 3)
    prob, alias = sampling.alias_tables(d)
    out = _block(lab, d, 400)
    ref = sampling.sample_tile(lab, prob, alias, sampling.tile_rng(3, 0, 0), counts=400)
    np.testing.assert_array_equal(out, ref)


def test_per_channel_tile_uses_its_own_stream():
    d = _spectra()
    lab = _labels(64, 64, 3)
    out = _block(lab, d, 5000)
    direct = np.empty_like(out)
    pc.sample_tile(lab, d, pc.channel_rng(3, 0, 0), counts=5000, count_model="fixed",
                   out=direct)
    np.testing.assert_array_equal(out, direct)


# ------------------------------------------------------------------------------ statistics
def test_fixed_is_an_exact_multinomial():
    N = 5000
    d = _spectra()
    lab = _labels(96, 96, 3)
    out = _block(lab, d, N).astype(np.int64)
    tot = out.sum(axis=2)
    assert np.all(tot[lab >= 0] == N) and np.all(out[lab < 0] == 0)
    assert out[..., 5:9].sum() == 0
    for k in range(3):  # per-channel mean and variance of Multinomial(N, d)
        x = out[lab == k]
        n = x.shape[0]
        m, v = N * d[k], N * d[k] * (1 - d[k])
        ok = m > 0
        zm = (x.mean(0)[ok] - m[ok]) / np.sqrt(v[ok] / n)
        assert np.max(np.abs(zm)) < 4.5
        big = m > 50  # sample variance: sd ≈ v·sqrt(2/(n−1)) for near-normal counts
        zv = (x.var(0, ddof=1)[big] - v[big]) / (v[big] * math.sqrt(2 / (n - 1)))
        assert np.max(np.abs(zv)) < 5, zv
        # covariance of two big channels: −N·d_i·d_j (multinomial, not independent Poissons)
        i, j = np.argsort(d[k])[-2:]
        cov = np.cov(x[:, i], x[:, j])[0, 1]
        assert abs(cov + N * d[k, i] * d[k, j]) < 5 * math.sqrt(v[i] * v[j] / n) + 1
    # chi-square of the pooled counts against N·d
    z = _channel_z(out, lab, d, tot, lambda p: 1 - p)
    chi2 = float((z ** 2).sum())
    assert stats.chi2.sf(chi2, z.size - 3) > 1e-4, chi2


def test_poisson_per_channel_statistics():
    N = 3000.0
    d = _spectra(seed=2)
    lab = _labels(96, 96, 3)
    out = _block(lab, d, N, "poisson").astype(np.int64)
    tot = out.sum(axis=2)[lab >= 0].astype(float)
    n = tot.size
    assert abs(tot.mean() - N) < 4.5 * math.sqrt(N / n)
    assert abs(tot.var(ddof=1) / N - 1) < 4.5 * math.sqrt(2 / (n - 1))
    for k in range(3):
        x = out[lab == k]
        m = N * d[k]
        big = m > 50
        zm = (x.mean(0)[big] - m[big]) / np.sqrt(m[big] / x.shape[0])
        zv = (x.var(0, ddof=1)[big] - m[big]) / (m[big] * math.sqrt(2 / (x.shape[0] - 1)))
        assert np.max(np.abs(zm)) < 4.5 and np.max(np.abs(zv)) < 5
    z = _channel_z(out, lab, d, np.full(lab.shape, N), lambda p: 1.0)
    assert stats.chi2.sf(float((z ** 2).sum()), z.size) > 1e-4


def test_luminosity_constant_per_cluster_uses_tables_and_is_poisson():
    """A calibrated cube's scale is one value per cluster: every pixel of a row expects the
    same counts, so the big channels come from per-row Poisson tables (one shared mean over
    rescaled rows); each channel is still Poisson(N·s_k·d_k[e])."""
    N = 3000.0
    d = _spectra(seed=2)
    lab = _labels(96, 96, 3)
    s_k = np.array([0.5, 1.0, 0.8])
    scale = np.where(lab >= 0, s_k[np.maximum(lab, 0)], 0.0)
    pc._SPLITS.clear()
    out = _block(lab, d, N, "luminosity", scale=scale).astype(np.int64)
    assert any(sp.tables is not None for sp in pc._SPLITS.values())
    for k in range(3):
        x = out[lab == k]
        m = N * s_k[k] * d[k]
        big = m > 50
        zm = (x.mean(0)[big] - m[big]) / np.sqrt(m[big] / x.shape[0])
        zv = (x.var(0, ddof=1)[big] - m[big]) / (m[big] * math.sqrt(2 / (x.shape[0] - 1)))
        assert np.max(np.abs(zm)) < 4.5 and np.max(np.abs(zv)) < 5
    z = _channel_z(out, lab, d, N * scale, lambda p: 1.0)
    assert stats.chi2.sf(float((z ** 2).sum()), z.size) > 1e-4
    pc._SPLITS.clear()
    varying = scale * np.random.default_rng(3).uniform(0.9, 1.1, scale.shape)
    _block(lab, d, N, "luminosity", scale=varying)  # a varying scale: one variate per channel
    assert all(sp.tables is None for sp in pc._SPLITS.values())


def test_poisson_rows_split_gives_independent_poissons():
    """Channels drawn as photons (Poisson splitting) and as variates: every channel an
    independent Poisson of mean λ·d (mean, variance, zero covariance), whatever its set."""
    d = _spectra(K=2, E=32, seed=5)
    B, lam = 40_000, 30.0
    rows = np.repeat(np.arange(2), B // 2)
    split = pc._Split(d, lam)
    assert all(0 < b.size < (d[u] > 0).sum() for u, b in enumerate(split.big))
    c = pc.poisson_rows(np.random.default_rng(11), np.full(B, lam), d, rows, split)
    for u in range(2):
        x = c[rows == u].astype(float)
        n, m = x.shape[0], lam * d[u]
        ok = m > 0
        assert np.all(x[:, ~ok] == 0)
        zm = (x.mean(0)[ok] - m[ok]) / np.sqrt(m[ok] / n)
        assert np.max(np.abs(zm)) < 4.5, zm
        # Poisson: variance = mean (sd of the sample variance ≈ sqrt((m + 2m²)/n))
        zv = (x.var(0, ddof=1)[ok] - m[ok]) / np.sqrt((m[ok] + 2 * m[ok] ** 2) / n)
        assert np.max(np.abs(zv)) < 5, zv
        small = np.setdiff1d(np.flatnonzero(ok), split.big[u])
        i, j = small[np.argsort(m[small])[-2:]]  # the two largest photon-drawn channels
        r = np.corrcoef(x[:, i], x[:, j])[0, 1]
        assert abs(r) < 5 / math.sqrt(n), r  # independent, not multinomial (r < 0)
        # the photon-drawn total is Poisson too: its variance equals its mean
        t = x[:, small].sum(1)
        assert abs(t.var(ddof=1) / t.mean() - 1) < 5 * math.sqrt(2 / (n - 1))


@pytest.mark.parametrize("model", ["fixed", "poisson"])
def test_per_channel_agrees_with_the_per_photon_path(model, monkeypatch):
    N = 2000
    d = _spectra(seed=4)
    lab = _labels(64, 128, 3)
    a = _block(lab, d, N, model).astype(np.int64)
    b = _per_photon(monkeypatch, lab, d, N, model).astype(np.int64)
    assert not np.array_equal(a, b)  # really two paths (different streams)
    for k in range(3):
        sel = lab == k
        sa, sb = a[sel].sum(0), b[sel].sum(0)
        ok = (sa + sb) > 0
        z = (sa - sb)[ok] / np.sqrt((sa + sb)[ok])  # two-sample Poisson-ish z (conservative)
        assert np.max(np.abs(z)) < 4.5
        va, vb = a[sel].sum(1).var(), b[sel].sum(1).var()
        if model == "fixed":
            assert va == vb == 0
        else:
            assert abs(va / vb - 1) < 6 * math.sqrt(2 / sel.sum())


def test_remove_photons_is_uniform_without_replacement():
    """Removing k of T photons: the removed counts are multivariate hypergeometric."""
    rng = np.random.default_rng(8)
    base = np.array([[3, 0, 5, 12]] * 20000, dtype=np.int64)
    c = base.copy()
    pc._remove_photons(rng, c, np.full(20000, 6))
    removed = base - c
    assert np.all(removed.sum(1) == 6) and np.all(c >= 0) and np.all(removed[:, 1] == 0)
    for col, K in ((0, 3), (2, 5), (3, 12)):
        obs = np.bincount(removed[:, col], minlength=7)[:7]
        exp = stats.hypergeom.pmf(np.arange(7), 20, K, 6) * 20000
        ok = exp > 5
        chi2 = float((((obs - exp) ** 2)[ok] / exp[ok]).sum())
        assert stats.chi2.sf(chi2, ok.sum() - 1) > 1e-4, (col, obs, exp)


def test_luminosity_chooses_the_path_per_tile(monkeypatch):
    d = _spectra()
    lab = _labels(64, 128, 3)
    scale = np.ones(lab.shape)
    scale[:, :64] = 0.01  # left tile: 50 photons per pixel, right: 5000
    out = _block(lab, d, 5000.0, "luminosity", scale=scale, tile=64)
    calls = []
    real = pc.sample_tile
    monkeypatch.setattr(pc, "sample_tile", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = _block(lab, d, 5000.0, "luminosity", scale=scale, tile=64)
    np.testing.assert_array_equal(out, again)
    assert calls == [1]  # one tile per channel
    tot = out.sum(axis=2).astype(float)
    for sl, lam in ((np.s_[:, :64], 50.0), (np.s_[:, 64:], 5000.0)):
        t = tot[sl][lab[sl] >= 0]
        assert abs(t.mean() - lam) < 4.5 * math.sqrt(lam / t.size)
        assert abs(t.var(ddof=1) / lam - 1) < 5 * math.sqrt(2 / t.size)


# ----------------------------------------------------------------------------- determinism
def test_per_channel_cube_identical_across_chunkings_schedulers_engines():
    d = _spectra()
    lab = _labels(128, 192, 3)
    scale = np.random.default_rng(0).uniform(0.5, 1.5, lab.shape)
    for model in ("fixed", "luminosity"):
        kw = {} if model == "fixed" else {"scale": None}
        ref = None
        configs = [(64, "synchronous", "numpy"), (128, "threads", "numpy"),
                   (64, "threads", "numba" if has_numba else "numpy")]
        if model == "fixed":  # separate processes once (they cost seconds to start)
            configs.append((192, "processes", "numpy"))
        for chunk, sched, engine in configs:
            if model == "luminosity":
                kw["scale"] = da.from_array(scale, chunks=chunk)
            cube = sampling.sample_cube(da.from_array(lab, chunks=chunk), d, seed=5,
                                        counts=4000, count_model=model, engine=engine, **kw)
            with dask.config.set(scheduler=sched, num_workers=2):
                got = cube.compute()
            if ref is None:
                ref = got
            np.testing.assert_array_equal(got, ref)


@requires_numba
@pytest.mark.parametrize("case", ["fixed", "poisson", "fixed-escapes", "poisson-dead-time",
                                  "fixed-pileup", "poisson-pileup", "fixed-blur", "poisson-blur",
                                  "luminosity", "luminosity-clusters", "luminosity-pileup"])
def test_per_channel_engines_give_the_same_bits(case, monkeypatch):
    """The numba kernels (table lookups and placement, photon draws and counts) consume the
    uniforms numpy drew: every per-channel variant gives the numpy engine's bytes."""
    d = _spectra(E=128, seed=4)
    lab = _labels(64, 128, 3, seed=2)
    model, _, extra = case.partition("-")
    kw: dict = {}
    if extra == "escapes":  # narrow tables: a third or more of the variates escape
        monkeypatch.setattr(pc.PoissonTables, "SIGMAS", 0.3)
        pc._SPLITS.clear()
    if extra == "dead":
        kw["detector"] = det.DetectorEffects(dead_time_model="nonparalyzable",
                                             dead_time_us=2.0, dwell_ms=20.0)
    if extra == "pileup":
        kw["detector"] = det.DetectorEffects(pulse_pair_ns=300, input_rate_cps=1e5)
        kw["energy"] = EnergyAxis(0.0, 25.6, 128)
    if extra == "blur":
        kw["detector"] = det.DetectorEffects(blur_fwhm_px=2.0)
    if model == "luminosity":
        scale = np.random.default_rng(0).uniform(0.5, 1.5, lab.shape)
        if extra == "clusters":  # one scale per cluster, as a calibration gives
            scale = np.array([0.6, 1.4, 1.0])[np.maximum(lab, 0)]
        kw["scale"] = da.from_array(scale, chunks=64)
    calls = []
    real = pc.sample_tile
    monkeypatch.setattr(pc, "sample_tile", lambda *a, **k: calls.append(1) or real(*a, **k))
    cubes = {}
    for engine in ("numpy", "numba"):
        c = sampling.sample_cube(da.from_array(lab, chunks=64), d, seed=9, counts=6000,
                                 count_model=model, engine=engine, **kw)
        cubes[engine] = c.compute(scheduler="synchronous")
    assert len(calls) == 4  # both tiles of both engines on the per-channel path
    assert cubes["numpy"].sum() > 0
    np.testing.assert_array_equal(cubes["numba"], cubes["numpy"])
    pc._SPLITS.clear()


# ------------------------------------------------------------------------ detector effects
def test_dead_time_per_channel_means():
    lab = np.zeros((64, 64), dtype=np.int16)
    d = _spectra(1)
    fx = det.DetectorEffects(dead_time_model="nonparalyzable", dead_time_us=5.0, dwell_ms=20.0)
    N = 8000.0  # 400 kcps, n·τ = 2: a third is recorded
    cube = sampling.sample_cube(da.from_array(lab, chunks=64), d, seed=1, counts=N,
                                count_model="poisson", detector=fx).compute()
    rec = float(fx.recorded_counts(N)[0])
    tot = cube.sum(axis=2).astype(float).ravel()
    assert abs(tot.mean() - rec) < 4.5 * math.sqrt(rec / tot.size)
    assert abs(tot.var(ddof=1) / rec - 1) < 5 * math.sqrt(2 / tot.size)


@pytest.mark.parametrize("model", ["fixed", "poisson"])
def test_blur_per_channel_matches_the_blurred_distributions(model, monkeypatch):
    K = 3
    d = _spectra(K, seed=6)
    lab = np.zeros((64, 64), dtype=np.int16)
    lab[:, 20:40] = 1
    lab[30:, :] = 2
    lab[:4, :4] = -1
    fx = det.DetectorEffects(blur_fwhm_px=3.0)
    N = 3000

    def cube():
        c = sampling.sample_cube(da.from_array(lab, chunks=64), d, seed=2, counts=N,
                                 count_model=model, detector=fx)
        return c.compute(scheduler="synchronous").astype(np.int64)

    a = cube()
    expected = det.blurred_distributions(lab, d, 3.0) * N
    valid = lab >= 0
    ok = expected[valid] >= 5
    z = (a[valid][ok] - expected[valid][ok]) / np.sqrt(expected[valid][ok])
    # one pixel's channel counts: Poisson (Pearson term mean 1) or multinomial (mean 1 − d)
    chi2 = float((z ** 2).sum())
    dof = z.size if model == "poisson" else float((1 - expected[valid][ok] / N).sum())
    assert abs(chi2 - dof) / math.sqrt(2 * z.size) < 4.5, (chi2, dof)
    assert np.all(a[~valid] == 0)
    if model == "fixed":
        assert np.all(a.sum(axis=2)[valid] == N)
    b = None
    with monkeypatch.context() as m:
        m.setattr(pc, "MIN_PHOTONS", 10**12)
        b = cube()
    za = (a.sum((0, 1)) - b.sum((0, 1))) / np.sqrt(a.sum((0, 1)) + b.sum((0, 1)) + 1e-9)
    assert np.max(np.abs(za)) < 4.5


AX = EnergyAxis(0.0, 25.6, 128)


def test_chain_weights_identities():
    for p in (0.01, 0.2):
        for mu in (50.0, 3000.0):
            kmax = det.pileup_order_count(p, mu)
            k = np.arange(1, kmax + 1)
            w = det.pileup_chain_weights(mu, p, kmax, fixed=False)
            assert (k * w).sum() == pytest.approx(mu, rel=1e-9)  # every photon in a chain
            ev = float(det.photons_for_events(1.0, p))  # f(μ) through its inverse
            assert ev > 1
            assert w.sum() == pytest.approx(mu * (1 - p) + p * (1 - math.exp(-mu)), rel=1e-9)
            wf = det.pileup_chain_weights(mu, p, kmax, fixed=True)
            assert (k * wf).sum() == pytest.approx(mu, rel=1e-9)
            assert wf.sum() == pytest.approx(mu - (mu - 1) * p, rel=1e-9)


@pytest.mark.parametrize("model", ["poisson", "fixed"])
def test_pileup_per_channel_against_the_per_photon_path(model, monkeypatch):
    """Exact expectation, documented noise: means, sum peaks and total variance agree."""
    N = 1500
    d = np.zeros((1, AX.n))
    d[0, AX.index(6.40)[()]] = 0.7
    d[0, AX.index(3.69)[()]] = 0.3
    lab = np.zeros((64, 96), dtype=np.int16)
    fx = det.DetectorEffects(pulse_pair_ns=500, input_rate_cps=2e5)  # p ≈ 0.095

    def cube():
        c = sampling.sample_cube(da.from_array(lab, chunks=64), d, seed=4, counts=N,
                                 count_model=model, detector=fx, energy=AX)
        return c.compute(scheduler="synchronous").astype(np.int64).reshape(-1, AX.n)

    a = cube()
    with monkeypatch.context() as m:
        m.setattr(pc, "MIN_PHOTONS", 10**12)
        b = cube()
    sa, sb = a.sum(0), b.sum(0)
    assert np.count_nonzero(sb) >= 8  # parents, pairs, triples, quadruples …
    ok = (sa + sb) > 20
    z = (sa - sb)[ok] / np.sqrt((sa + sb)[ok] * 1.5)  # allow for the chain correlations
    assert np.max(np.abs(z)) < 4.5, z
    ta, tb = a.sum(1).astype(float), b.sum(1).astype(float)
    assert abs(ta.mean() - tb.mean()) < 4.5 * math.sqrt((ta.var() + tb.var()) / ta.size)
    # total variance: fixed N − Binomial(N − 1, p) exactly; poisson ≈ its mean in both
    n = ta.size
    assert abs(ta.var(ddof=1) / tb.var(ddof=1) - 1) < 5 * math.sqrt(4 / (n - 1)), \
        (ta.var(), tb.var())
