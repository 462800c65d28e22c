"""Tests of ganx_dask.detector: pile-up, dead time, beam-spot blur (and their sampler paths)."""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
import pytest
from scipy.special import erfc

from ganx_dask import detector as det
from ganx_dask import sampling
from ganx_dask.energy import EnergyAxis
from ganx_dask.errors import ConfigError
from tests.markers import requires_numba

AXIS = EnergyAxis(0.5, 38.5, 1024)


# --------------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------------
def test_detector_effects_roundtrip_and_switches():
    d = det.DetectorEffects(pulse_pair_ns=300, dwell_ms=10, dead_time_model="paralyzable",
                            dead_time_us=2.0, blur_fwhm_px=2.5)
    assert d.pileup and d.dead_time and d.blur and d.enabled
    assert det.DetectorEffects.from_dict(d.to_dict()) == d
    assert d.blur_radius == math.ceil(3 * 2.5 * det.FWHM_TO_SIGMA)
    off = det.DetectorEffects()
    assert not off.enabled and off.blur_radius == 0
    assert det.DetectorEffects.from_dict(None) == off


@pytest.mark.parametrize("kwargs, field", [
    ({"pulse_pair_ns": -1}, "pulse_pair_ns"),
    ({"pulse_pair_ns": float("nan")}, "pulse_pair_ns"),
    ({"pulse_pair_ns": 100}, "input_rate_cps"),  # no rate known
    ({"pulse_pair_ns": 100, "input_rate_cps": 1e4, "dwell_ms": 5}, "not both"),
    ({"dead_time_model": "sometimes"}, "dead_time_model"),
    ({"dead_time_model": "paralyzable", "dwell_ms": 5}, "dead_time_us"),
    ({"dead_time_model": "paralyzable", "dead_time_us": 1}, "dwell_ms"),
    ({"dwell_ms": 0}, "dwell_ms"),
    ({"blur_fwhm_px": "wide"}, "blur_fwhm_px"),
])
def test_detector_effects_rejects_bad_fields(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        det.DetectorEffects(**kwargs)


def test_from_dict_names_unknown_key():
    with pytest.raises(ConfigError, match="pulse_pair_us"):
        det.DetectorEffects.from_dict({"pulse_pair_us": 1.0})


# --------------------------------------------------------------------------------------------
# pile-up
# --------------------------------------------------------------------------------------------
def _chain_expectation(N: int, p: float, k: int) -> float:
    """Expected chains of exactly k photons among N photons with i.i.d. short gaps (k < N)."""
    return p ** (k - 1) * ((N - k - 1) * (1 - p) ** 2 + 2 * (1 - p))


def test_zero_rate_consumes_nothing():
    rng = np.random.default_rng(5)
    state = rng.bit_generator.state
    n = np.full(10, 50)
    assert det.draw_pileup_links(rng, n, 0.0).size == 0
    assert det.draw_pileup_links(rng, n, np.zeros(10)).size == 0
    assert rng.bit_generator.state == state
    assert not det.DetectorEffects(pulse_pair_ns=100, input_rate_cps=0.0).pileup


def test_links_never_cross_pixels_and_follow_p():
    rng = det.detector_rng(3, det.PILEUP_STREAM, 0, 0)
    n = np.random.default_rng(0).integers(0, 30, size=4000)
    p = 0.2
    links = det.draw_pileup_links(rng, n, p)
    ends = np.cumsum(n) - 1
    assert not np.isin(links, ends).any()  # never the last photon of a pixel
    assert np.all(np.diff(links) > 0)
    gaps = np.maximum(n - 1, 0).sum()
    z = (links.size - gaps * p) / math.sqrt(gaps * p * (1 - p))
    assert abs(z) < 4


def test_tiny_link_probabilities_stay_in_range():
    """Geometric skips near int64 range (p ≲ 1e-18) must neither wrap nor loop forever."""
    n = np.full(100, 400)
    for p in (1e-19, 1e-30, np.full(100, 1e-25)):
        links = det.draw_pileup_links(np.random.default_rng(0), n, p)
        assert np.all((links >= 0) & (links < n.sum()))


def test_per_pixel_probabilities_are_thinned_exactly():
    rng = det.detector_rng(4, det.PILEUP_STREAM, 1, 2)
    P, N = 3000, 40
    p = np.where(np.arange(P) % 2 == 0, 0.02, 0.2)
    links = det.draw_pileup_links(rng, np.full(P, N), p)
    per_pix = np.bincount(links // N, minlength=P)
    for val in (0.02, 0.2):
        sel = p == val
        obs = per_pix[sel].sum()
        exp = sel.sum() * (N - 1) * val
        assert abs(obs - exp) / math.sqrt(exp * (1 - val)) < 4


def test_summed_channel_uniform_axis_formula():
    edges = AXIS.edges
    rng = np.random.default_rng(1)
    links = np.sort(rng.choice(np.arange(0, 4000, 1), size=900, replace=False))
    links = links[(links % 40) != 39]
    ch = rng.integers(0, 200, size=4000)
    chains = det.pileup_chains(links)
    sums = det.summed_channels(ch[chains.members], chains, edges)
    m = np.bincount(chains.chain)
    isum = np.bincount(chains.chain, weights=ch[chains.members]).astype(np.int64)
    s_over_w = AXIS.start / AXIS.width
    expected = isum + np.floor((m - 1) * s_over_w + m / 2 + 1e-9).astype(np.int64)
    np.testing.assert_array_equal(sums, np.where(expected < AXIS.n, expected, -1))
    assert m.max() >= 3  # higher orders were exercised
    # brute force: the channel whose edges contain the sum of the centres, on this axis and on
    # a non-uniform one (generic path)
    for e in (edges, np.geomspace(0.5, 60.0, 1025)):
        centres = 0.5 * (e[:-1] + e[1:])
        esum = np.bincount(chains.chain, weights=centres[ch[chains.members]])
        ref = np.digitize(esum, e) - 1
        ref[ref >= e.size - 1] = -1
        np.testing.assert_array_equal(det.summed_channels(ch[chains.members], chains, e), ref)


@pytest.mark.parametrize("rate", [4e3, 2e4, 1e5])
def test_sum_peaks_follow_rate_and_counts_are_conserved(rate):
    d = det.DetectorEffects(pulse_pair_ns=500, input_rate_cps=rate)
    N, P = 200, 2000
    p = float(d.link_probability(N, N))
    assert p == pytest.approx(1 - math.exp(-rate * 500e-9))
    rng = np.random.default_rng(int(rate))
    a, b = AXIS.index(3.69)[()], AXIS.index(6.40)[()]  # Ca Kα, Fe Kα
    ch = np.where(rng.random(P * N) < 0.7, a, b)
    links = det.draw_pileup_links(det.detector_rng(7, 0, 0, 0), np.full(P, N), p)
    counts, merged, lost = det.pileup_counts(ch, np.full(P, N), links, AXIS.edges)
    # conservation, exactly: N photons in, N - merged counts out (nothing above the axis here)
    assert lost.sum() == 0
    np.testing.assert_array_equal(counts.sum(axis=1), N - merged)
    n1 = _chain_expectation(N, p, 1)
    n2 = _chain_expectation(N, p, 2)
    s_aa = det.summed_channels(np.array([a, a]), det.pileup_chains(np.array([0])), AXIS.edges)[0]
    s_ab = det.summed_channels(np.array([a, b]), det.pileup_chains(np.array([0])), AXIS.edges)[0]
    # the sum peak (Ca+Ca) relative to its parent follows p = 1 - exp(-rate·τ)
    for chan, exp_per_pix in ((a, n1 * 0.7), (s_aa, n2 * 0.49), (s_ab, n2 * 0.42)):
        x = counts[:, chan].astype(float)
        z = (x.sum() - P * exp_per_pix) / math.sqrt(P * max(x.var(), 1e-12))
        assert abs(z) < 4.5, (rate, chan, z)
    ratio = counts[:, s_aa].sum() / counts[:, a].sum()
    assert ratio == pytest.approx(n2 * 0.49 / (n1 * 0.7), rel=6 / math.sqrt(P * n2 * 0.49))


def test_chains_above_axis_are_lost_and_counted():
    axis = EnergyAxis(0.0, 10.0, 100)
    N, P = 50, 400
    ch = np.full(P * N, 70)  # 7 keV: any pair (14 keV) is above the axis
    links = det.draw_pileup_links(np.random.default_rng(2), np.full(P, N), 0.1)
    counts, merged, lost = det.pileup_counts(ch, np.full(P, N), links, axis.edges)
    assert lost.sum() > 0
    np.testing.assert_array_equal(counts.sum(axis=1), N - merged - lost)
    assert counts[:, :70].sum() == 0 and counts[:, 71:].sum() == 0


@pytest.mark.parametrize("edges", [np.linspace(0.0, 12.8, 65), np.geomspace(0.5, 20.0, 65)])
def test_apply_pileup_matches_reference_histogram(edges):
    rng = np.random.default_rng(11)
    h, w, E = 6, 5, 64
    n = rng.integers(0, 40, size=h * w)
    ch = rng.integers(0, 30, size=n.sum())
    links = det.draw_pileup_links(rng, n, 0.3)
    ref, _, lost = det.pileup_counts(ch, n, links, edges)
    pix = np.repeat(np.arange(h * w), n)
    plain = np.bincount(pix * E + ch, minlength=h * w * E).reshape(h, w, E).astype(np.uint16)
    chains = det.pileup_chains(links)
    # the same chains as the definition: members = links ∪ links+1, heads not preceded by a link
    np.testing.assert_array_equal(chains.members, np.union1d(links, links + 1))
    np.testing.assert_array_equal(chains.head, ~np.isin(chains.members, links + 1))
    assert chains.n_chains == chains.chain.max() + 1
    block = np.zeros((h + 3, w + 4, E), dtype=np.uint16)  # a tile view inside a larger block
    block[1:h + 1, 2:w + 2] = plain
    fortran = np.asfortranarray(plain)  # a layout without contiguous rows (slow path)
    for counts in (plain, block[1:h + 1, 2:w + 2], fortran):
        n_lost = det.apply_pileup(counts, links, pix[links], ch[links], ch[links + 1], edges)
        np.testing.assert_array_equal(counts.reshape(h * w, E), ref)
        assert n_lost == lost.sum()
    assert det.apply_pileup(plain, links[:0], links[:0], links[:0], links[:0], edges) == 0
    assert block[0].sum() == 0 and block[:, :2].sum() == 0 and block[h + 1:].sum() == 0
    np.testing.assert_array_equal(det.photon_pixels(np.arange(n.sum()), n), pix)


# --------------------------------------------------------------------------------------------
# dead time
# --------------------------------------------------------------------------------------------
def _simulate_dead_time(rng, rate, tau, T, model):
    """Event-by-event reference: Poisson arrivals through a dead-time detector."""
    t = np.cumsum(rng.exponential(1 / rate, size=int(rate * T * 1.2 + 100)))
    t = t[t < T]
    if model == "paralyzable":
        gaps = np.diff(np.concatenate([[-np.inf], t]))
        recorded = int((gaps >= tau).sum())
        dead = np.minimum(np.diff(np.concatenate([t, [T]])), tau).sum()
    else:
        recorded, dead, i = 0, 0.0, 0
        while i < t.size:
            recorded += 1
            dead += min(tau, T - t[i])
            i = int(np.searchsorted(t, t[i] + tau, side="left"))
    return recorded, T - dead


@pytest.mark.parametrize("model", ["nonparalyzable", "paralyzable"])
def test_dead_time_models_match_event_simulation(model):
    tau = 2e-6
    rng = np.random.default_rng(21)
    other = "paralyzable" if model == "nonparalyzable" else "nonparalyzable"
    for rate in (5e4, 2.5e5, 1e6):  # n·τ = 0.1, 0.5, 2
        T = 2e4 / rate  # ~20 000 true events
        rec, live = _simulate_dead_time(rng, rate, tau, T, model)
        m = float(det.recorded_rate(rate, tau, model)) * T
        # Poisson variance bounds the (sub-Poissonian) recorded count from above
        assert abs(rec - m) < 4 * math.sqrt(m), (model, rate, rec, m)
        assert live / T == pytest.approx(float(det.live_fraction(rate, tau, model)),
                                         abs=4 / math.sqrt(m) + 1e-3)
        if rate >= 2.5e5:  # the other model is clearly rejected
            m_other = float(det.recorded_rate(rate, tau, other)) * T
            assert abs(rec - m_other) > 6 * math.sqrt(m)


def test_dead_time_counts_and_live_time():
    lam = np.array([0.0, 100.0, 1000.0, 1e4])
    dwell, tau = 10e-3, 5e-6
    for model in ("nonparalyzable", "paralyzable"):
        rec, live = det.dead_time_counts(lam, dwell, tau, model)
        n = lam / dwell
        np.testing.assert_allclose(rec, det.recorded_rate(n, tau, model) * dwell)
        np.testing.assert_allclose(rec, n * live)  # recorded = input rate × live time
        assert live[0] == dwell and np.all(np.diff(live) < 0)
    d = det.DetectorEffects(dead_time_model="nonparalyzable", dead_time_us=5, dwell_ms=10)
    rec, live = d.recorded_counts(lam)
    np.testing.assert_allclose(rec, lam / (1 + lam / dwell * tau))
    np.testing.assert_allclose(live, dwell / (1 + lam / dwell * tau))
    rec0, live0 = det.DetectorEffects(dwell_ms=10).recorded_counts(lam)
    np.testing.assert_array_equal(rec0, lam)
    np.testing.assert_array_equal(live0, 10e-3)


# --------------------------------------------------------------------------------------------
# beam-spot blur
# --------------------------------------------------------------------------------------------
def test_psf_kernel_shape_and_width():
    dy, dx, w = det.psf_kernel(4.0)
    R = det.psf_radius(4.0)
    assert dy.size == (2 * R + 1) ** 2 and w.sum() == pytest.approx(1.0)
    sigma = 4.0 * det.FWHM_TO_SIGMA
    var_x = float((w * dx.astype(float) ** 2).sum())
    assert var_x == pytest.approx(sigma**2, rel=0.03)  # truncation at 3σ trims ~2.6 %
    t = det.psf_table(4.0)
    v = np.random.default_rng(0).random(200_000)
    hist = np.bincount(t.draw(v), minlength=w.size)
    assert hist[w.size:].sum() == 0 if hist.size > w.size else True
    chi2 = (((hist - v.size * w) ** 2) / (v.size * w)).sum()
    assert abs(chi2 - (w.size - 1)) / math.sqrt(2 * (w.size - 1)) < 4
    assert t.draw(np.array([np.nextafter(1.0, 0.0)]))[0] < w.size


def _boundary_fraction(fwhm, h=64, w=48, x0=24, N=300, seed=0):
    lab = np.zeros((h, w), dtype=np.int16)
    lab[:, x0:] = 1
    psf = det.psf_table(fwhm)
    R = psf.radius
    pad = np.pad(lab, R, constant_values=-1)
    src = det.blur_sources(det.detector_rng(seed, det.BLUR_STREAM, 0, 0), pad, psf,
                           np.arange(h * w), N)
    left = (src.reshape(h, w, N) == 0).sum(axis=(0, 2))
    return left / (h * N), lab, h * N


@pytest.mark.parametrize("fwhm", [2.0, 5.0])
def test_blur_boundary_is_an_error_function(fwhm):
    frac, lab, n_col = _boundary_fraction(fwhm)
    x = np.arange(lab.shape[1])
    sigma = fwhm * det.FWHM_TO_SIGMA
    expected = 0.5 * erfc((x - 23.5) / (sigma * math.sqrt(2)))
    # exact expectation of the discrete, truncated, edge-renormalised kernel
    exact = det.blurred_distributions(lab, np.eye(2), fwhm)[..., 0].mean(axis=0)
    sd = np.sqrt(np.maximum(exact * (1 - exact), 1e-12) / n_col)
    inner = np.abs(x - 23.5) < 4 * sigma
    z = (frac - exact)[inner] / sd[inner]
    assert np.abs(z).max() < 4.5
    trunc = 0.5 * erfc(3 / math.sqrt(2))  # mass beyond the 3σ kernel edge
    assert np.all(np.abs(frac - expected) < 4.5 * sd + trunc + 2e-3)
    # far from the boundary the pixels are pure (the profile is not an artefact of the edges)
    assert frac[0] == 1.0 and frac[-1] == 0.0


def test_blur_never_draws_from_transparent_pixels_and_renormalises():
    rng = np.random.default_rng(3)
    h, w, K = 16, 16, 3
    lab = rng.integers(0, K, size=(h, w)).astype(np.int16)
    lab[rng.random((h, w)) < 0.3] = -1
    fwhm = 3.0
    psf = det.psf_table(fwhm)
    pad = np.pad(lab, psf.radius, constant_values=-1)
    pix = np.flatnonzero(lab.ravel() >= 0)
    N = 2000
    src = det.blur_sources(det.detector_rng(1, 1, 0, 0), pad, psf, pix, N)
    assert src.min() >= 0
    obs = np.stack([np.bincount(s, minlength=K) for s in src.reshape(pix.size, N)])
    exact = det.blurred_distributions(lab, np.eye(K), fwhm).reshape(h * w, K)[pix]
    e = N * exact
    keep = e > 5
    chi2 = (((obs - e) ** 2)[keep] / e[keep]).sum()
    dof = keep.sum() - pix.size
    assert abs(chi2 - dof) / math.sqrt(2 * dof) < 4


@pytest.mark.parametrize("shape, chunks", [((5, 3), 64), ((130, 70), 64), ((130, 70), (128, 32))])
def test_overlap_labels_is_the_padded_neighbourhood(shape, chunks):
    a = np.arange(np.prod(shape)).reshape(shape).astype(np.int16)
    lab = da.from_array(a, chunks=chunks)
    R = 7
    o = det.overlap_labels(lab, R)
    pad = np.pad(a, R, constant_values=-1)
    ys = np.cumsum((0,) + lab.chunks[0])
    xs = np.cumsum((0,) + lab.chunks[1])
    for i in range(len(ys) - 1):
        for j in range(len(xs) - 1):
            blk = o.blocks[i, j].compute()
            np.testing.assert_array_equal(blk, pad[ys[i]:ys[i + 1] + 2 * R, xs[j]:xs[j + 1] + 2 * R])


def test_overlap_labels_rejects_thin_chunks():
    lab = da.zeros((40, 40), dtype=np.int16, chunks=((16, 4, 20), 40))
    with pytest.raises(ConfigError, match="chunk along y"):
        det.overlap_labels(lab, 7)


def test_presets_and_options():
    fx = det.as_detector("Lab-Rh")
    assert fx.pileup and fx.dead_time and not fx.blur
    assert det.as_detector(None) is None and det.as_detector(det.DetectorEffects()) is None
    assert det.as_detector(fx.to_dict()) == fx
    with pytest.raises(ConfigError, match="no-such"):
        det.as_detector("no-such")
    with pytest.raises(ConfigError, match="detector must be"):
        det.as_detector(3.0)
    over = det.detector_from_options("portable-ag", blur_fwhm_px=2.0, dead_time_us=None)
    assert over.blur_fwhm_px == 2.0 and over.dead_time_us == 4.0
    assert det.detector_from_options(None, pulse_pair_ns=None) is None
    with pytest.raises(ConfigError, match="not both"):
        det.detector_from_options("lab-rh", input_rate_cps=1e4)


def test_live_time_map_is_lazy_and_exact():
    lab = np.zeros((8, 6), dtype=np.int16)
    lab[0, 0] = -1
    scale = np.linspace(0, 2, 48).reshape(8, 6)
    fx = det.DetectorEffects(dead_time_model="paralyzable", dead_time_us=5, dwell_ms=2)
    lt = det.live_time_map(fx, da.from_array(lab, chunks=4), 400, da.from_array(scale, chunks=3))
    assert lt.dtype == np.float32 and lt.chunks == ((4, 4), (4, 2))
    out = lt.compute()
    n = 400 * scale / 2e-3
    expected = np.where(lab >= 0, 2e-3 * np.exp(-n * 5e-6), 2e-3)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# the effects inside the sampler (ganx_dask.sampling.sample_cube(detector=...))
# --------------------------------------------------------------------------------------------

ENGINES = ["numpy", pytest.param("numba", marks=requires_numba)]
SMALL = EnergyAxis(0.0, 25.6, 256)  # 0.1 keV channels


WIDE = EnergyAxis(0.0, 51.2, 512)  # same channels, room for chains of up to 7 Fe photons


def _two_line_spectra(axis=SMALL):
    d = np.zeros((2, axis.n))
    d[0, axis.index(6.40)[()]] = 1.0  # "Fe" pigment
    d[1, axis.index(3.69)[()]] = 1.0  # "Ca" pigment
    return d


def _cube(labels, spectra, detector, chunks=32, engine="numpy", axis=SMALL, **kw):
    kw.setdefault("counts", 100)
    lab = da.from_array(labels, chunks=chunks)
    cube = sampling.sample_cube(lab, spectra, seed=9, tile=16, engine=engine, detector=detector,
                                energy=axis, **kw)
    return cube.compute(scheduler="synchronous")


def _rand_labels(h=48, w=40, K=2, seed=0):
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, K, size=(h, w)).astype(np.int16)
    lab[rng.random((h, w)) < 0.05] = -1
    return lab


@pytest.mark.parametrize("model", ["fixed", "luminosity"])
def test_effects_off_reproduce_the_plain_sampler_bit_for_bit(model):
    lab = _rand_labels()
    spectra = np.random.default_rng(1).random((2, SMALL.n))
    kw = {"count_model": model}
    if model == "luminosity":
        kw["scale"] = da.from_array(np.random.default_rng(2).random(lab.shape), chunks=32)
    plain = _cube(lab, spectra, None, **kw)
    for d in (det.DetectorEffects(), det.DetectorEffects(pulse_pair_ns=400, input_rate_cps=0.0),
              det.DetectorEffects(blur_fwhm_px=0.0, dwell_ms=10)):
        np.testing.assert_array_equal(_cube(lab, spectra, d, **kw), plain)


@pytest.mark.parametrize("engine", ENGINES)
def test_cube_pileup_conserves_photons_exactly(engine):
    lab = _rand_labels()
    N = 100
    d = det.DetectorEffects(pulse_pair_ns=500, input_rate_cps=2e5)  # p ≈ 0.095
    cube = _cube(lab, _two_line_spectra(WIDE), d, engine=engine, counts=N, axis=WIDE)
    p = float(d.link_probability(N, N))
    merged = np.zeros(lab.shape, dtype=np.int64)
    for ty in range(-(-lab.shape[0] // 16)):
        for tx in range(-(-lab.shape[1] // 16)):
            t = lab[ty * 16:(ty + 1) * 16, tx * 16:(tx + 1) * 16]
            nph = np.where(t >= 0, N, 0).ravel()
            links = det.draw_pileup_links(det.detector_rng(9, 0, ty, tx), nph, p)
            merged[ty * 16:(ty + 1) * 16, tx * 16:(tx + 1) * 16] = np.bincount(
                det.photon_pixels(links, nph), minlength=nph.size).reshape(t.shape)
    np.testing.assert_array_equal(cube.sum(axis=2), np.where(lab >= 0, N - merged, 0))
    assert merged.sum() > 0
    # the piled-up counts sit exactly at the summed energies (Fe+Fe, Ca+Ca, triples, ...)
    fe, ca = SMALL.index(6.40)[()], SMALL.index(3.69)[()]
    occupied = set(np.flatnonzero(cube.sum(axis=(0, 1))).tolist())
    allowed = set()
    for i in range(9):
        for j in range(9 - i):
            chans = np.array([fe] * i + [ca] * j)
            if chans.size >= 2:
                one = det.pileup_chains(np.arange(chans.size - 1))
                allowed.add(int(det.summed_channels(chans, one, WIDE.edges)[0]))
    assert {fe, ca, 2 * fe + 1, 2 * ca + 1, 3 * fe + 1} <= occupied  # pure pixels: no Fe+Ca
    assert occupied <= allowed | {fe, ca}


def test_cube_pileup_sum_peak_grows_with_rate():
    lab = np.zeros((32, 32), dtype=np.int16)
    fe = SMALL.index(6.40)[()]
    N = 200
    ratios = []
    for rate in (1e4, 5e4, 2e5):
        d = det.DetectorEffects(pulse_pair_ns=500, input_rate_cps=rate)
        cube = _cube(lab, _two_line_spectra(), d, counts=N).reshape(-1, SMALL.n)
        p = float(d.link_probability(N, N))
        exp_ratio = _chain_expectation(N, p, 2) / _chain_expectation(N, p, 1)
        obs = cube[:, 2 * fe + 1].sum() / cube[:, fe].sum()
        sd = math.sqrt(cube[:, 2 * fe + 1].sum()) / cube[:, fe].sum()
        assert abs(obs - exp_ratio) < 4.5 * sd, (rate, obs, exp_ratio)
        ratios.append(obs)
    assert ratios[0] < ratios[1] < ratios[2]


@pytest.mark.parametrize("engine", ENGINES)
def test_blurred_cube_is_chunking_and_engine_invariant(engine):
    lab = _rand_labels(h=64, w=48, K=3, seed=4)
    spectra = np.random.default_rng(5).random((3, SMALL.n))
    d = det.DetectorEffects(blur_fwhm_px=3.0, pulse_pair_ns=300, input_rate_cps=1e5)
    a = _cube(lab, spectra, d, chunks=16, engine=engine)
    b = _cube(lab, spectra, d, chunks=(32, 48), engine="numpy")
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, _cube(lab, spectra, None, chunks=32))


@requires_numba
def test_all_effects_with_luminosity_identical_across_engines_and_chunkings():
    lab = _rand_labels(h=48, w=64, K=3, seed=6)
    spectra = np.random.default_rng(7).random((3, SMALL.n))
    scale = np.random.default_rng(8).uniform(0.0, 1.5, size=lab.shape)
    d = det.DetectorEffects(pulse_pair_ns=800, dwell_ms=1.0, dead_time_model="paralyzable",
                            dead_time_us=3.0, blur_fwhm_px=2.5)  # per-pixel p up to 0.11
    kw = dict(counts=120, count_model="luminosity")
    a = _cube(lab, spectra, d, chunks=16, engine="numpy",
              scale=da.from_array(scale, chunks=16), **kw)
    b = _cube(lab, spectra, d, chunks=32, engine="numba",
              scale=da.from_array(scale, chunks=32), **kw)
    assert a.tobytes() == b.tobytes()
    assert a.sum() > 0 and not a[lab < 0].any()


@requires_numba
@pytest.mark.parametrize("model", ["luminosity", "fixed"])
def test_per_channel_effects_identical_across_engines_and_chunkings(model):
    """High counts (per-channel tiles, stream (6, ty, tx)) with effects: numba == numpy."""
    lab = _rand_labels(h=48, w=64, K=3, seed=6)
    spectra = np.random.default_rng(7).random((3, SMALL.n))
    kw = dict(counts=2000, count_model=model)
    if model == "luminosity":  # tiles on both paths: dark ones per photon, bright per channel
        scale = np.where(np.arange(64)[None, :] < 32, 0.2, 1.0) * np.ones((48, 1))
        d = det.DetectorEffects(pulse_pair_ns=300, dwell_ms=20.0, dead_time_model="paralyzable",
                                dead_time_us=3.0, blur_fwhm_px=2.5)
    else:
        d = det.DetectorEffects(pulse_pair_ns=300, input_rate_cps=1e5)
    cubes = []
    for chunks, engine in ((16, "numpy"), (32, "numba")):
        if model == "luminosity":
            kw["scale"] = da.from_array(scale, chunks=chunks)
        cubes.append(_cube(lab, spectra, d, chunks=chunks, engine=engine, **kw))
    assert cubes[0].tobytes() == cubes[1].tobytes()
    assert cubes[0].sum() > 0 and not cubes[0][lab < 0].any()


@requires_numba
@pytest.mark.parametrize("holes", [False, True])
def test_blur_sources_numba_first_pass_is_identical(holes):
    rng = np.random.default_rng(12)
    lab = rng.integers(0, 4, size=(20, 24)).astype(np.int16)
    if holes:
        lab[rng.random(lab.shape) < 0.2] = -1
    psf = det.psf_table(3.0)
    pad = np.pad(lab, psf.radius, constant_values=-1)
    pix = np.flatnonzero(lab.ravel() >= 0)
    for nph in (50, rng.integers(0, 60, size=pix.size)):
        a = det.blur_sources(det.detector_rng(2, 1, 0, 0), pad, psf, pix, nph, engine="numpy")
        b = det.blur_sources(det.detector_rng(2, 1, 0, 0), pad, psf, pix, nph, engine="numba")
        np.testing.assert_array_equal(a, b)
        assert a.min() >= 0


@requires_numba
@pytest.mark.parametrize("model", ["fixed", "poisson"])
def test_pileup_engines_identical_on_a_non_uniform_axis(model):
    centres = np.geomspace(1.0, 40.0, 200)  # non-uniform: sums placed by searchsorted
    lab = _rand_labels(h=32, w=48, K=3, seed=9)
    spectra = np.random.default_rng(10).random((3, centres.size)) ** 4
    d = det.DetectorEffects(pulse_pair_ns=500, input_rate_cps=3e5)  # p ≈ 0.14: long chains
    kw = dict(counts=80, count_model=model, tile=16, seed=2, detector=d, energy=centres)
    lab_d = da.from_array(lab, chunks=16)
    a = sampling.sample_cube(lab_d, spectra, engine="numpy", **kw).compute(scheduler="sync")
    b = sampling.sample_cube(lab_d, spectra, engine="numba", **kw).compute(scheduler="sync")
    assert a.tobytes() == b.tobytes()
    plain = sampling.sample_cube(lab_d, spectra, engine="numpy",
                                 **{**kw, "detector": None}).compute(scheduler="sync")
    assert a.sum() < plain.sum()  # merged and lost events remove counts


def test_blurred_cube_boundary_is_an_error_function():
    h, w, x0, N = 32, 48, 24, 200
    lab = np.zeros((h, w), dtype=np.int16)
    lab[:, x0:] = 1
    fwhm = 4.0
    cube = _cube(lab, _two_line_spectra(), det.DetectorEffects(blur_fwhm_px=fwhm), counts=N)
    fe = cube[..., SMALL.index(6.40)[()]].sum(axis=0)
    frac = fe / (h * N)  # per-column Fe fraction ("element map" profile)
    sigma = fwhm * det.FWHM_TO_SIGMA
    x = np.arange(w)
    expected = 0.5 * erfc((x - (x0 - 0.5)) / (sigma * math.sqrt(2)))
    sd = np.sqrt(np.maximum(expected * (1 - expected), 1e-4) / (h * N))
    trunc = 0.5 * erfc(3 / math.sqrt(2))
    assert np.all(np.abs(frac - expected) < 4.5 * sd + trunc + 2e-3)
    assert frac[x0 - 2] > 0.75 and frac[x0 + 1] < 0.25 and frac[0] == 1.0


@pytest.mark.parametrize("model", ["nonparalyzable", "paralyzable"])
def test_cube_dead_time_recorded_counts(model):
    h, w = 48, 48
    lab = np.zeros((h, w), dtype=np.int16)
    scale = np.linspace(0.05, 1.0, h * w).reshape(h, w)
    N, dwell, tau = 400.0, 2e-3, 10e-6  # up to n·τ = 2
    d = det.DetectorEffects(dead_time_model=model, dead_time_us=tau * 1e6, dwell_ms=dwell * 1e3)
    cube = _cube(lab, _two_line_spectra(), d, counts=N, count_model="luminosity",
                 scale=da.from_array(scale, chunks=32))
    tot = cube.sum(axis=2).astype(float)
    n_true = N * scale / dwell
    m = det.recorded_rate(n_true, tau, model) * dwell
    chi2 = (((tot - m) ** 2) / m).sum()
    dof = tot.size
    assert abs(chi2 - dof) / math.sqrt(2 * dof) < 4
    # the wrong model is clearly rejected
    other = "paralyzable" if model == "nonparalyzable" else "nonparalyzable"
    m2 = det.recorded_rate(n_true, tau, other) * dwell
    assert (((tot - m2) ** 2) / m2).sum() > dof + 10 * math.sqrt(2 * dof)


def test_photons_for_events_inverts_the_expected_merges():
    """μ(1 − p) + p(1 − e^−μ) = events, checked against the Poisson sum of T − p·(T − 1)⁺."""
    from scipy.stats import poisson

    ev = np.array([0.0, 0.05, 1.0, 7.5, 400.0, 1e5])
    for p in (0.0, 0.012, 0.2, 0.6):
        mu = det.photons_for_events(ev, p)
        assert mu[0] == 0.0 and np.all(np.diff(mu) > 0)
        for m, e in zip(mu[1:5], ev[1:5], strict=True):
            t = np.arange(0, int(m + 40 * math.sqrt(m) + 50))
            got = float((poisson.pmf(t, m) * (t - p * np.maximum(t - 1, 0))).sum())
            assert got == pytest.approx(e, rel=1e-12, abs=1e-14)
    assert float(det.photons_for_events(400.0, 0.0)) == 400.0
    with pytest.raises(ConfigError, match="pile-up probability 1"):
        det.photons_for_events(10.0, 1.0)


@pytest.mark.parametrize("dwell_ms,model", [(10.0, "nonparalyzable"), (2.0, "nonparalyzable"),
                                            (0.5, "paralyzable")])
def test_pileup_and_dead_time_keep_counts_over_live_time_at_the_input_rate(dwell_ms, model):
    """Pile-up must not remove the events dead time already removed: counts / live = n."""
    N, tau_pp = 400.0, 300.0  # input rate n = N / dwell: 40, 200, 800 kcps
    lab = np.zeros((64, 64), dtype=np.int16)
    fx = det.DetectorEffects(pulse_pair_ns=tau_pp, dwell_ms=dwell_ms, dead_time_model=model,
                             dead_time_us=1.0)
    # one low line on a wide axis: chains of up to 13 photons stay on it (nothing is lost)
    cube = _cube(lab, _two_line_spectra(WIDE)[1:], fx, counts=N, count_model="poisson",
                 axis=WIDE)
    live = det.live_time_map(fx, da.from_array(lab, chunks=32), N).compute()
    n = N / (dwell_ms * 1e-3)
    p = float(fx.link_probability(N, N))
    total = float(cube.sum(dtype=np.int64))
    expected = n * float(live.sum(dtype=np.float64))  # counts / live_time = n
    sd = math.sqrt(expected)  # recorded events: variance ≈ μ(1 − p) ≈ their mean
    assert abs(total - expected) < 4.5 * sd, (n, total, expected)
    # the double-counting rate (1 − p)·n is clearly rejected at every rate tested
    assert abs(total - (1 - p) * expected) > 10 * sd, (n, p)


def test_sampler_rejects_inconsistent_detector_settings():
    lab = da.zeros((16, 16), dtype=np.int16, chunks=16)
    spectra = _two_line_spectra()
    with pytest.raises(ConfigError, match="dead-time"):
        sampling.sample_cube(lab, spectra, seed=0, counts=10, tile=16, detector=det.DetectorEffects(
            dead_time_model="paralyzable", dead_time_us=1, dwell_ms=1))
    with pytest.raises(ConfigError, match="energy axis"):
        sampling.sample_cube(lab, spectra, seed=0, counts=10, tile=16,
                             detector=det.DetectorEffects(pulse_pair_ns=100, input_rate_cps=1e4))


# --------------------------------------------------------------------------------------------
# generate(), the store and the CLI
# --------------------------------------------------------------------------------------------
AX64 = EnergyAxis(0.5, 38.5, 64)


@pytest.fixture(scope="module")
def two_pigments(tmp_path_factory):
    from PIL import Image

    from ganx_dask.pigments import MeasuredSpectrum, Pigment, PigmentLibrary
    from ganx_dask.pigments.formats import write_library

    d = tmp_path_factory.mktemp("detector")
    a = np.zeros(AX64.n)
    a[20], a[10:] = 1.0, a[10:] + 0.01
    b = np.zeros(AX64.n)
    b[12], b[10:] = 1.0, b[10:] + 0.01
    lib = PigmentLibrary([
        Pigment("red", (200, 40, 30), measured=MeasuredSpectrum(AX64.edges, a)),
        Pigment("blue", (40, 60, 180), measured=MeasuredSpectrum(AX64.edges, b)),
    ], name="detector-test", version="1")
    write_library(lib, d / "lib.json")
    img = np.zeros((64, 96, 3), np.uint8)
    img[:, :48] = (200, 40, 30)
    img[:, 48:] = (40, 60, 180)
    Image.fromarray(img).save(d / "img.png")
    return d, lib, img


def test_generate_records_effects_and_live_time(two_pigments, tmp_path):
    from ganx_dask.generator import generate, relative_luminance
    from ganx_dask.store import open_cube, to_zarr

    _, lib, img = two_pigments
    fx = det.DetectorEffects(pulse_pair_ns=300, dwell_ms=10, dead_time_model="nonparalyzable",
                             dead_time_us=50, blur_fwhm_px=2.0)
    kw = dict(seed=4, energy=AX64, counts=50, count_model="luminosity", n_start=2, delta=0,
              fit_samples=2000, tile=32, engine="numpy")
    ds = generate(img, lib, chunks=32, detector=fx, **kw)
    assert ds.xrf.meta["detector"] == fx.to_dict() == ds.xrf.meta["parameters"]["detector"]
    lt = ds["live_time"]
    assert lt.dims == ("y", "x") and lt.dtype == np.float32 and lt.attrs["units"] == "s"
    assert lt.attrs["dwell_time_s"] == pytest.approx(0.01)
    # the blurred, piled-up cube does not depend on the chunking
    big = generate(img, lib, chunks=64, detector=fx, **kw)
    np.testing.assert_array_equal(ds["counts"].values, big["counts"].values)
    store = to_zarr(ds, tmp_path / "fx.zarr", progress=False)
    back = open_cube(store)
    assert det.DetectorEffects.from_dict(back.xrf.meta["detector"]) == fx
    np.testing.assert_array_equal(back["live_time"].values, lt.values)
    n = 50 * relative_luminance(img).astype(float) / 0.01  # true input rate, counts/s
    np.testing.assert_allclose(lt.values, 0.01 / (1 + n * 50e-6), rtol=1e-6)
    with pytest.raises(ConfigError, match="dead-time"):
        generate(img, lib, chunks=32, detector=fx, **{**kw, "count_model": "fixed"})
    plain = generate(img, lib, chunks=32, detector=None, **kw)
    assert "live_time" not in plain and plain.xrf.meta["detector"] is None


def test_cli_generate_with_detector_options(two_pigments, tmp_path):
    from ganx_dask.cli import main

    d, _, _ = two_pigments
    base = ["generate", str(d / "img.png"), "--library", str(d / "lib.json"), "--energy",
            "0.5:38.5:64", "--counts", "30", "--chunk", "64", "--tile", "32", "--n-start", "2",
            "--delta", "0", "--no-progress", "--count-model", "poisson"]
    out = tmp_path / "cli.zarr"
    assert main(base + ["-o", str(out), "--detector-preset", "lab-rh", "--blur-fwhm-px", "1.5",
                        "--dead-time-model", "paralyzable", "--dead-time-us", "20"]) == 0
    from ganx_dask.store import open_cube

    ds = open_cube(out)
    fx = det.DetectorEffects.from_dict(ds.xrf.meta["detector"])
    assert fx == det.DetectorEffects(pulse_pair_ns=300, dwell_ms=10, dead_time_model="paralyzable",
                                     dead_time_us=20, blur_fwhm_px=1.5)
    expected = 0.01 * math.exp(-30 / 0.01 * 20e-6)
    np.testing.assert_allclose(ds["live_time"].values, expected, rtol=1e-6)
    bad = tmp_path / "bad.zarr"
    assert main(base + ["-o", str(bad), "--dead-time-model", "paralyzable",
                        "--dead-time-us", "2"]) == 1  # no dwell time
    assert not bad.exists()


def test_blurred_element_maps_show_the_error_function(tmp_path):
    """A sharp vermilion | azurite boundary, blurred: the Hg Lα and Cu Kα maps are erfc ramps."""
    from ganx_dask.analysis import element_map
    from ganx_dask.generator import generate
    from ganx_dask.pigments import MeasuredSpectrum, Pigment, PigmentLibrary

    axis = EnergyAxis(0.5, 38.5, 256)
    spec = {}
    for name, e in (("vermilion", 9.989), ("azurite", 8.048)):  # Hg Lα, Cu Kα
        c = np.zeros(axis.n)
        c[axis.index(e)[()]] = 1.0
        spec[name] = MeasuredSpectrum(axis.edges, c)
    lib = PigmentLibrary([Pigment("vermilion", (204, 52, 40), measured=spec["vermilion"]),
                          Pigment("azurite", (46, 96, 160), measured=spec["azurite"])],
                         name="edge", version="1")
    h, w, x0, N, fwhm = 32, 64, 32, 200, 5.0
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :x0] = (204, 52, 40)
    img[:, x0:] = (46, 96, 160)
    ds = generate(img, lib, seed=3, energy=axis, counts=N, mode="nearest", n_start=2, delta=0,
                  fit_samples=2000, chunks=32, tile=32, detector={"blur_fwhm_px": fwhm})
    hg = element_map(ds, "Hg", "La").values.sum(axis=0)
    cu = element_map(ds, "Cu", "Ka").values.sum(axis=0)
    assert np.all(hg + cu == h * N)  # every photon is in one of the two maps
    frac = hg / (h * N)
    sigma = fwhm * det.FWHM_TO_SIGMA
    expected = 0.5 * erfc((np.arange(w) - (x0 - 0.5)) / (sigma * math.sqrt(2)))
    sd = np.sqrt(np.maximum(expected * (1 - expected), 1e-4) / (h * N))
    trunc = 0.5 * erfc(3 / math.sqrt(2))
    assert np.all(np.abs(frac - expected) < 4.5 * sd + trunc + 2e-3)
    assert frac[x0 - 3] > 0.8 and frac[x0 + 2] < 0.2
