"""Tests of ganx_dask.detector: pile-up, dead time, beam-spot blur (and their sampler paths)."""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
import pytest
from scipy.special import erfc

from ganx_dask import detector as det
from ganx_dask.energy import EnergyAxis
from ganx_dask.errors import ConfigError

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


def test_apply_pileup_matches_reference_histogram():
    rng = np.random.default_rng(11)
    h, w, E = 6, 5, 64
    edges = np.linspace(0.0, 12.8, E + 1)
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
        n_lost = det.apply_pileup(counts, pix[chains.members], ch[chains.members], chains, edges)
        np.testing.assert_array_equal(counts.reshape(h * w, E), ref)
        assert n_lost == lost.sum()
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
