"""Tests of ganx_dask.sampling: alias tables, count-model statistics, determinism, overflow."""

from __future__ import annotations

import hashlib

import dask
import dask.array as da
import numpy as np
import pytest

from ganx_dask import per_channel, sampling
from ganx_dask.errors import GanxError
from tests.markers import has_numba, requires_numba

ENGINES = ["numpy", pytest.param("numba", marks=requires_numba)]


def _spectra(K: int = 4, E: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    d = rng.random((K, E)) ** 6
    d[:, 5:9] = 0.0  # zero-probability channels inside the axis
    d[0, 0] = 0.3  # first channel reachable
    d[-1, -1] = 0.3  # last channel reachable
    return d / d.sum(axis=1, keepdims=True)


def _labels(h: int, w: int, K: int, seed: int = 1, holes: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, K, size=(h, w)).astype(np.int16)
    if holes:
        lab[rng.random((h, w)) < 0.05] = -1
    return lab


def _implied(prob: np.ndarray, alias: np.ndarray) -> np.ndarray:
    K, E = prob.shape
    out = prob.copy()
    for k in range(K):
        np.add.at(out[k], alias[k], 1.0 - prob[k])  # test oracle only, not the hot path
    return out / E


def _pooled_chi2_z(counts: np.ndarray, labels: np.ndarray, spectra: np.ndarray, total) -> list:
    """z-score of the pooled Pearson chi-square per label; bins with expectation < 5 merged."""
    zs = []
    for k in range(spectra.shape[0]):
        sel = labels == k
        obs = counts[sel].sum(axis=0).astype(np.float64)
        exp = total[sel].sum() * spectra[k]
        big = exp >= 5
        o = np.append(obs[big], obs[~big].sum())
        e = np.append(exp[big], exp[~big].sum())
        keep = e > 0
        chi2 = float((((o - e) ** 2)[keep] / e[keep]).sum())
        dof = int(keep.sum()) - 1
        zs.append((chi2 - dof) / np.sqrt(2 * dof))
    return zs


# ------------------------------------------------------------------------------------ tables
def test_alias_tables_exact_and_zero_channels():
    d = _spectra(K=5, E=257)
    prob, alias = sampling.alias_tables(d)
    assert prob.dtype == np.float64 and alias.dtype == np.int32 and prob.shape == d.shape
    np.testing.assert_allclose(_implied(prob, alias), d, rtol=0, atol=1e-15)
    assert np.all(prob[:, 5:9] == 0.0)
    assert np.all(d[np.arange(5)[:, None], alias[:, 5:9]] > 0)
    assert np.all((prob >= 0) & (prob <= 1))


def test_alias_tables_rejects_bad_spectra():
    with pytest.raises(GanxError, match="all zero"):
        sampling.alias_tables(np.zeros((2, 8)))
    with pytest.raises(GanxError, match="negative"):
        sampling.alias_tables(np.array([[0.5, -0.1, 0.6]]))
    with pytest.raises(GanxError, match="NaN"):
        sampling.alias_tables(np.array([[0.5, np.nan]]))


@pytest.mark.parametrize("engine", ENGINES)
def test_top_uniform_never_leaves_axis(engine):
    """The largest uniforms stay in the axis; even u·E == E (guard column) lands on d > 0."""
    E = 1000
    d = np.zeros((1, E))
    d[0, :10] = 1.0
    prob, alias = sampling.alias_tables(d)
    ptab, atab = sampling._padded_tables(prob, alias)
    top = np.nextafter(1.0, 0.0)
    assert all(int(top * e) == e - 1 for e in (3, 1000, 1023, 1025, 2047, 4095))
    u = np.array([top, 1.0] * 4)  # 1.0 never comes from numpy: exercises the guard column
    lab = np.zeros((1, 1), dtype=np.int64)
    if engine == "numpy":
        c = sampling._alias_count_numpy(u.copy(), lab.ravel(), np.array([0]), 8, ptab, atab, E, 1)
    else:
        from ganx_dask import _numba_kernels as nk

        c = np.zeros((1, 1, E), dtype=np.uint16)
        nk.alias_count(u.copy(), lab, np.array([[8]]), ptab, atab, c)
    c = c.ravel()
    assert c.sum() == 8 and c[10:].sum() == 0


def test_counts_dtype():
    assert sampling.counts_dtype("fixed", 400) == np.uint16
    assert sampling.counts_dtype("fixed", 65535) == np.uint16
    assert sampling.counts_dtype("fixed", 65536) == np.uint32
    assert sampling.counts_dtype("poisson", 400) == np.uint16
    assert sampling.counts_dtype("poisson", 65000) == np.uint32
    assert sampling.counts_dtype("luminosity", 400, scale_max=200.0) == np.uint32
    with pytest.raises(GanxError):
        sampling.counts_dtype("fixed", 10.5)
    with pytest.raises(GanxError):
        sampling.counts_dtype("gaussian", 10)
    with pytest.raises(GanxError):
        sampling.counts_dtype("poisson", 0)


# ------------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("engine", ENGINES)
def test_fixed_model_statistics(engine):
    K, E, N = 4, 64, 400
    d = _spectra(K, E)
    prob, alias = sampling.alias_tables(d)
    lab = _labels(128, 128, K)
    out = sampling.sample_block(lab, prob, alias, seed=7, counts=N, engine=engine)
    assert out.dtype == np.uint16 and out.shape == (128, 128, E)
    tot = out.sum(axis=2, dtype=np.int64)
    assert np.all(tot[lab >= 0] == N)
    assert np.all(out[lab < 0] == 0)
    assert out[..., 5:9].sum() == 0  # never where d == 0
    assert out[lab == 0][:, 0].sum() > 0 and out[lab == K - 1][:, -1].sum() > 0
    zs = _pooled_chi2_z(out, lab, d, tot)
    assert max(abs(z) for z in zs) < 4.5, zs


@pytest.mark.parametrize("engine", ENGINES)
def test_poisson_model_statistics(engine):
    K, E, N = 3, 64, 50.0
    d = _spectra(K, E, seed=3)
    prob, alias = sampling.alias_tables(d)
    lab = _labels(128, 128, K, holes=False)
    out = sampling.sample_block(lab, prob, alias, seed=11, counts=N, count_model="poisson",
                                engine=engine)
    tot = out.sum(axis=2, dtype=np.float64).ravel()
    n = tot.size
    # mean: z-test; dispersion: var/mean of Poisson totals is 1 with sd sqrt(2/(n-1))
    assert abs(tot.mean() - N) < 5 * np.sqrt(N / n)
    ratio = tot.var(ddof=1) / tot.mean()
    assert abs(ratio - 1.0) < 5 * np.sqrt(2.0 / (n - 1)), ratio
    # per-channel sums are independent Poissons with mean n_k·N·d
    expected_tot = np.full(lab.shape, N)
    zs = _pooled_chi2_z(out, lab, d, expected_tot)
    # the Poisson-sum statistic has one more dof than the multinomial one: allow for it
    assert max(abs(z) for z in zs) < 5, zs
    assert out[..., 5:9].sum() == 0


def test_luminosity_model_means():
    K, E, N = 2, 32, 200.0
    d = _spectra(K, E, seed=4)
    prob, alias = sampling.alias_tables(d)
    lab = _labels(64, 128, K, holes=False)
    scale = np.where(np.arange(128)[None, :] < 64, 0.25, 1.0) * np.ones((64, 1))
    out = sampling.sample_block(lab, prob, alias, seed=5, counts=N, count_model="luminosity",
                                scale=scale.astype(np.float32), engine="numpy")
    tot = out.sum(axis=2, dtype=np.float64)
    for s, part in ((0.25, tot[:, :64]), (1.0, tot[:, 64:])):
        lam = N * s
        assert abs(part.mean() - lam) < 5 * np.sqrt(lam / part.size)
        assert abs(part.var(ddof=1) / part.mean() - 1) < 5 * np.sqrt(2.0 / part.size)


def test_overflow_never_wraps(monkeypatch):
    d = _spectra(1, 4)
    prob, alias = sampling.alias_tables(d)
    lab = np.zeros((2, 2), dtype=np.int16)
    with monkeypatch.context() as m:  # per photon: a pixel total beyond uint16 raises
        m.setattr(per_channel, "MIN_PHOTONS", 10**12)
        with pytest.raises(OverflowError):
            sampling.sample_block(lab, prob, alias, seed=0, counts=70000.0,
                                  count_model="poisson", dtype=np.uint16)
    # per channel: only a channel beyond uint16 raises; otherwise the counts are exact
    ok = sampling.sample_block(lab, prob, alias, seed=0, counts=70000.0, count_model="poisson",
                               dtype=np.uint16)
    assert ok.max() < 65535 and abs(ok.sum(axis=2).mean() - 70000) < 4 * 132
    one = sampling.alias_tables(np.array([[1.0, 0.0, 0.0, 0.0]]))
    with pytest.raises(OverflowError, match="channel"):
        sampling.sample_block(lab, *one, seed=0, counts=70000.0, count_model="poisson",
                              dtype=np.uint16)
    big = sampling.sample_block(lab, prob, alias, seed=0, counts=70000)
    assert big.dtype == np.uint32 and np.all(big.sum(axis=2) == 70000)
    with pytest.raises(GanxError, match="overflow"):
        sampling.sample_cube(da.from_array(lab), d, seed=0, counts=70000, dtype=np.uint16)


# ------------------------------------------------------------------------------ determinism
def _cube_bytes(cube) -> str:
    return hashlib.sha256(np.ascontiguousarray(cube.compute()).tobytes()).hexdigest()


def test_cube_identical_across_chunkings_schedulers_engines():
    K, E = 3, 32
    d = _spectra(K, E)
    lab = _labels(192, 256, K)
    ref = sampling.sample_block(lab, *sampling.alias_tables(d), seed=42, counts=30,
                                engine="numpy")
    digests = set()
    for chunk in (64, 128, 192):
        cube = sampling.sample_cube(da.from_array(lab, chunks=chunk), d, seed=42, counts=30,
                                    engine="numpy")
        assert cube.chunks[0][0] == chunk and cube.dtype == np.uint16
        with dask.config.set(scheduler="synchronous"):
            digests.add(_cube_bytes(cube))
    cube = sampling.sample_cube(da.from_array(lab, chunks=128), d, seed=42, counts=30)
    for sched in ("threads", "processes"):
        with dask.config.set(scheduler=sched, num_workers=2):
            digests.add(_cube_bytes(cube))
    if has_numba:
        cube = sampling.sample_cube(da.from_array(lab, chunks=64), d, seed=42, counts=30,
                                    engine="numba")
        digests.add(_cube_bytes(cube))
    assert digests == {hashlib.sha256(ref.tobytes()).hexdigest()}
    other = sampling.sample_cube(da.from_array(lab, chunks=128), d, seed=43, counts=30)
    assert _cube_bytes(other) not in digests


@pytest.fixture
def fresh_auto(monkeypatch):
    """A process that has not drawn anything under ``engine="auto"`` yet."""
    auto = sampling._AutoEngine()
    monkeypatch.setattr(sampling, "_AUTO", auto)
    return auto


def test_auto_engine_rents_numpy_until_numba_pays(fresh_auto, monkeypatch):
    """Ski rental: a job is drawn with numpy while the photons given to numpy in this process,
    its own included, stay within AUTO_NUMPY_PHOTONS; then numba for good.  A named job is
    decided once, whichever of its blocks asks first.  Without numba: always numpy."""
    B = sampling.AUTO_NUMPY_PHOTONS
    later = "numba" if has_numba else "numpy"
    assert sampling._resolve_engine("auto", B / 2, job="a") == "numpy"
    assert sampling._resolve_engine("auto", B / 2, job="a") == "numpy"  # decided: not counted again
    assert fresh_auto.numpy_photons == B / 2
    assert sampling._resolve_engine("auto", B / 2) == "numpy"  # exactly B given: still numpy
    assert fresh_auto.numpy_photons == B
    assert sampling._resolve_engine("auto", 1, job="b") == later
    assert sampling._resolve_engine("auto", B / 2, job="a") == later  # loaded: numba from now on
    monkeypatch.setattr(sampling, "_AUTO", sampling._AutoEngine())
    assert sampling._resolve_engine("auto", B + 1, job="big") == later  # worth loading at once
    assert sampling._resolve_engine("numpy", 10 * B) == "numpy"  # explicit engines as given


@requires_numba
def test_explicit_numba_makes_auto_use_it(fresh_auto):
    assert sampling._resolve_engine("numba") == "numba"
    assert sampling._resolve_engine("auto", 1) == "numba"


def test_auto_engine_switching_between_cubes_keeps_the_bytes(fresh_auto, monkeypatch):
    """A cube within the budget is drawn with numpy (4 blocks of 64² px × 30 photons here, the
    budget 5 blocks); the next one, which would exceed it, with numba from its first block: both
    are the numpy engine's bytes."""
    K, E = 3, 32
    d = _spectra(K, E)
    lab = _labels(128, 128, K)
    cube_photons = 128 * 128 * 30
    monkeypatch.setattr(sampling, "AUTO_NUMPY_PHOTONS", 5 * 64 * 64 * 30)
    for seed, numba in ((4, False), (5, has_numba)):
        ref = sampling.sample_block(lab, *sampling.alias_tables(d), seed=seed, counts=30,
                                    engine="numpy")
        cube = sampling.sample_cube(da.from_array(lab, chunks=64), d, seed=seed, counts=30)
        with dask.config.set(scheduler="synchronous"):
            assert _cube_bytes(cube) == hashlib.sha256(ref.tobytes()).hexdigest()
        assert (fresh_auto.numpy_photons, fresh_auto.numba) == (cube_photons, numba)


@pytest.mark.parametrize("model", ["poisson", "luminosity"])
def test_random_models_chunking_invariant(model):
    K, E = 2, 16
    d = _spectra(K, E)
    lab = _labels(128, 192, K)
    scale = np.random.default_rng(0).random(lab.shape).astype(np.float32)
    outs = []
    for chunk in (64, 128):
        sc = da.from_array(scale, chunks=chunk) if model == "luminosity" else None
        cube = sampling.sample_cube(da.from_array(lab, chunks=chunk), d, seed=9, counts=20.0,
                                    count_model=model, scale=sc)
        outs.append(cube.compute(scheduler="threads"))
    np.testing.assert_array_equal(outs[0], outs[1])
    assert np.all(outs[0][lab < 0] == 0)


def test_sample_cube_is_lazy_and_validates():
    d = _spectra(2, 16)
    lab = da.from_array(_labels(128, 128, 2), chunks=64)
    calls = []

    def counting_get(dsk, keys, **kwargs):
        calls.append(1)
        return dask.get(dsk, keys, **kwargs)

    with dask.config.set(scheduler=counting_get):
        cube = sampling.sample_cube(lab, d, seed=1, counts=10)
    assert calls == [] and cube.shape == (128, 128, 16)
    with pytest.raises(GanxError, match="tile"):
        sampling.sample_cube(da.from_array(_labels(128, 128, 2), chunks=96), d, seed=1,
                             counts=10)
    with pytest.raises(GanxError, match="scale"):
        sampling.sample_cube(lab, d, seed=1, counts=10, count_model="luminosity")
    with pytest.raises(GanxError, match="seed"):
        sampling.sample_cube(lab, d, seed=-1, counts=10)
    with pytest.raises(GanxError, match="no spectrum"):
        sampling.sample_block(np.full((4, 4), 5, np.int16), *sampling.alias_tables(d), seed=1,
                              counts=10)


@pytest.mark.parametrize("engine", ENGINES)
def test_large_counts_batches_bounded_and_bit_identical(engine, monkeypatch):
    """N·w beyond the batch budget: runs of pixels, not whole rows; the cube does not change."""
    monkeypatch.setattr(per_channel, "MIN_PHOTONS", 10**12)  # this is the per-photon path
    K, E, N = 2, 32, 5000
    d = _spectra(K, E)
    prob, alias = sampling.alias_tables(d)
    lab = _labels(16, 64, K)
    budget = sampling._BATCH_PHOTONS_NUMBA if engine == "numba" else sampling._BATCH_PHOTONS
    assert N * 64 > budget
    sampling._scratch.bufs = {}
    out = sampling.sample_block(lab, prob, alias, seed=2, counts=N, engine=engine)
    assert sampling._scratch.bufs["u"].size <= max(N, budget)
    assert np.all(out.sum(axis=2, dtype=np.int64)[lab >= 0] == N)
    monkeypatch.setattr(sampling, "_BATCH_PHOTONS", 1 << 30)  # whole tiles in one batch
    monkeypatch.setattr(sampling, "_BATCH_PHOTONS_NUMBA", 1 << 30)
    whole = sampling.sample_block(lab, prob, alias, seed=2, counts=N, engine=engine)
    sampling._scratch.bufs = {}
    np.testing.assert_array_equal(out, whole)


def test_luminosity_scale_above_one_chooses_a_wide_enough_dtype():
    """Review finding: with no dtype given, the dtype ignored the luminosity scale, so a scale
    > 1 picked uint16 and the write failed midway with OverflowError."""
    spectra = np.zeros((1, 4))
    spectra[0, 1] = 1.0  # every photon in one channel: its count is the pixel total
    lab = da.zeros((8, 8), dtype=np.int16, chunks=8)
    scale = da.full((8, 8), 3.0, dtype=np.float32, chunks=8)
    cube = sampling.sample_cube(lab, spectra, seed=1, counts=40_000, count_model="luminosity",
                                scale=scale, tile=8, engine="numpy")
    assert cube.dtype == np.uint32  # 120 000 expected photons per pixel > 65 535
    with dask.config.set(scheduler="synchronous"):
        tot = cube.compute()[..., 1].astype(np.float64)
    assert abs(tot.mean() - 120_000) < 5 * np.sqrt(120_000 / tot.size)
    small = sampling.sample_cube(lab, spectra, seed=1, counts=40_000, count_model="luminosity",
                                 scale=scale / 3, tile=8, engine="numpy")
    assert small.dtype == np.uint16


@requires_numba
@pytest.mark.parametrize("model", ["fixed", "poisson"])
def test_per_channel_path_identical_across_engines(model):
    """Above max(5·E, 1000) photons the tiles are drawn per channel: still numba == numpy."""
    d = _spectra(3, 64)
    lab = _labels(64, 128, 3)
    assert per_channel.use_per_channel(3000, 64)
    a = sampling.sample_block(lab, *sampling.alias_tables(d), seed=4, counts=3000,
                              count_model=model, engine="numpy")
    b = sampling.sample_block(lab, *sampling.alias_tables(d), seed=4, counts=3000,
                              count_model=model, engine="numba")
    np.testing.assert_array_equal(a, b)
    if model == "fixed":
        assert np.all(a.sum(axis=2)[lab >= 0] == 3000)
