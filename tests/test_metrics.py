"""Tests of ganx_dask.metrics: spectral distances vs scipy, SSIM vs scikit-image, MS-SSIM, Poisson
reference cube."""

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import distance
from skimage.metrics import structural_similarity

from ganx_dask import metrics as M
from ganx_dask.errors import GanxError

SCIPY = {
    "cosine": distance.cosine,
    "jensen_shannon": distance.jensenshannon,
    "chebyshev": distance.chebyshev,
    "correlation": distance.correlation,
    "bray_curtis": distance.braycurtis,
}


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(12)
    out = [(rng.random(64), rng.random(64)) for _ in range(3)]
    # spectra with zeros in both (chi-square 0/0, JS 0·log 0)
    u = rng.poisson(3, 128).astype(float)
    v = rng.poisson(3, 128).astype(float)
    u[:5] = v[:5] = 0
    out.append((u, v))
    return out


@pytest.mark.parametrize("name", sorted(SCIPY))
def test_spectral_metric_equals_scipy(name, pairs):
    for u, v in pairs:
        assert M.SPECTRAL_METRICS[name](u, v) == pytest.approx(SCIPY[name](u, v), rel=1e-12,
                                                               abs=1e-14)


def test_chi_square_bhattacharyya_hellinger_hand_computed():
    u = np.array([1.0, 0.0, 2.0, 0.0])
    v = np.array([0.0, 0.0, 1.0, 3.0])
    # ½ [(1)²/1 + 0/0 := 0 + (1)²/3 + 9/3]
    assert M.chi_square(u, v) == pytest.approx(0.5 * (1 + 1 / 3 + 3))
    p = np.array([0.5, 0.5, 0.0])
    q = np.array([0.25, 0.25, 0.5])
    bc = 2 * np.sqrt(0.125)
    assert M.bhattacharyya(p, q) == pytest.approx(bc)
    assert M.hellinger(p, q) == pytest.approx(np.sqrt(1 - bc))


def test_identical_inputs_give_zero_distance_and_unit_similarity(pairs):
    u = pairs[3][0]
    res = M.spectral_metrics(u, 5 * u)  # normalised: scale does not matter
    for name in M.DISTANCES:
        assert res[name] == pytest.approx(0.0, abs=1e-7), name
    assert res["bhattacharyya"] == pytest.approx(1.0)
    assert list(res) == list(M.SPECTRAL_METRICS)


def test_spectral_metrics_normalise_and_dask_stays_lazy(pairs):
    u, v = pairs[0]
    res = M.spectral_metrics(u, v)
    p, q = u / u.sum(), v / v.sum()
    assert res["chebyshev"] == pytest.approx(distance.chebyshev(p, q))
    lazy = M.cosine(da.from_array(u, chunks=16), da.from_array(v, chunks=16))
    assert isinstance(lazy, da.Array)
    assert float(lazy.compute()) == pytest.approx(distance.cosine(u, v))


def test_spectral_metric_errors():
    with pytest.raises(GanxError, match="same shape"):
        M.cosine(np.ones(3), np.ones(4))
    with pytest.raises(GanxError, match="all zero"):
        M.spectral_metrics(np.zeros(4), np.ones(4))
    with pytest.raises(GanxError, match="negative"):
        M.spectral_metrics(-np.ones(4), np.ones(4))


@pytest.fixture(scope="module")
def cubes():
    rng = np.random.default_rng(3)
    a = rng.poisson(2.0, (260, 200)).astype(np.uint16)
    noisy = (a + rng.poisson(1.0, a.shape)).astype(np.uint16)
    other = rng.poisson(2.0, a.shape).astype(np.uint16)
    return a, noisy, other


def test_ssim_matches_skimage_numpy_and_dask(cubes):
    a, b, _ = cubes
    ta, tb = np.tanh(np.log1p(a.astype(float))), np.tanh(np.log1p(b.astype(float)))
    ref = structural_similarity(ta, tb, data_range=1.0)
    assert M.ssim(a, b) == pytest.approx(ref, rel=1e-12)
    lazy = M.ssim(da.from_array(a, chunks=(70, 64)), da.from_array(b, chunks=(50, 200)))
    assert lazy == pytest.approx(ref, rel=1e-10)
    assert M.ssim(a, a) == pytest.approx(1.0)


def test_ssim_shape_errors(cubes):
    a, b, _ = cubes
    with pytest.raises(GanxError, match="same shape"):
        M.ssim(a, b[:-1])
    with pytest.raises(GanxError, match="flattened"):
        M.ssim(a[None], a[None])


def test_ms_ssim_weights_and_single_scale_equals_gaussian_ssim(cubes):
    assert M.MS_SSIM_WEIGHTS == (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    a, b, _ = cubes
    ta, tb = np.tanh(np.log1p(a.astype(float))), np.tanh(np.log1p(b.astype(float)))
    ref = structural_similarity(ta, tb, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    assert M.ms_ssim(a, b, weights=(1.0,)) == pytest.approx(ref, rel=1e-12)


def test_ms_ssim_two_scales_hand_computed(cubes):
    a, b, _ = cubes
    ta, tb = np.tanh(np.log1p(a.astype(float))), np.tanh(np.log1p(b.astype(float)))

    def g(x):
        return ndimage.gaussian_filter(x, 1.5, mode="reflect", truncate=5 / 1.5)

    c2 = 0.03 ** 2
    ux, uy = g(ta), g(tb)
    vx, vy, vxy = g(ta * ta) - ux ** 2, g(tb * tb) - uy ** 2, g(ta * tb) - ux * uy
    cs1 = ((2 * vxy + c2) / (vx + vy + c2))[5:-5, 5:-5].mean()
    h, w = ta.shape

    def down(x):
        return x.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    ssim2 = structural_similarity(down(ta), down(tb), data_range=1.0, gaussian_weights=True,
                                  sigma=1.5, use_sample_covariance=False)
    expected = cs1 ** 0.3 * ssim2 ** 0.7
    assert M.ms_ssim(a, b, weights=(0.3, 0.7)) == pytest.approx(expected, rel=1e-10)


def test_ms_ssim_properties(cubes):
    a, _, other = cubes
    a2 = np.vstack([a, a])[:, :190]  # >= 176 per side with the default 5 scales
    o2 = np.vstack([other, other])[:, :190]
    assert M.ms_ssim(a2, a2) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    scores = [M.ms_ssim(a2, (a2 + rng.poisson(lam, a2.shape)).astype(np.uint16))
              for lam in (0.5, 2.0, 8.0)]
    assert scores[0] > scores[1] > scores[2]
    assert M.ms_ssim(a2, o2) == pytest.approx(M.ms_ssim(o2, a2), rel=1e-12)
    lazy = M.ms_ssim(da.from_array(a2, chunks=(100, 64)), da.from_array(o2, chunks=(64, 190)))
    assert lazy == pytest.approx(M.ms_ssim(a2, o2), rel=1e-10)


def test_ms_ssim_too_small():
    x = np.ones((100, 300))
    with pytest.raises(GanxError, match="176"):
        M.ms_ssim(x, x)


def test_poisson_reference_deterministic_chunk_independent_and_matched():
    rng = np.random.default_rng(5)
    totals = rng.integers(50, 400, (130, 100))
    cube = np.zeros((130, 100, 32), dtype=np.uint16)
    cube[..., 0] = totals  # all counts in one channel
    d1 = da.from_array(cube, chunks=(64, 64, 32))
    d2 = da.from_array(cube, chunks=(128, 128, 32))
    r1 = M.poisson_reference(d1, seed=7)
    assert isinstance(r1, da.Array) and r1.dtype == np.uint16
    v1 = r1.compute()
    np.testing.assert_array_equal(v1, M.poisson_reference(d2, seed=7).compute())
    assert not np.array_equal(v1, M.poisson_reference(d1, seed=8).compute())
    # total counts ~ Poisson(sum of totals): z-score
    lam = totals.sum()
    assert abs(v1.sum() - lam) / np.sqrt(lam) < 4
    # spread uniformly over the channels: per-channel sums vs expectation, chi-square-like bound
    per_channel = v1.sum(axis=(0, 1))
    z = (per_channel - lam / 32) / np.sqrt(lam / 32)
    assert np.all(np.abs(z) < 5)
    exact = M.poisson_reference(d1, seed=7, exact=True).compute()
    np.testing.assert_array_equal(exact.sum(axis=-1), totals)


def test_poisson_reference_rejects_bad_seed():
    with pytest.raises(GanxError, match="seed"):
        M.poisson_reference(np.zeros((2, 2, 3), np.uint16), seed=-1)
