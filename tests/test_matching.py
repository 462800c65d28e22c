"""Tests for ganx_dask.matching: closest (default), threshold (paper) and nearest modes."""

import numpy as np
import pytest
import xarray as xr

from ganx_dask.color import similarity
from ganx_dask.errors import GanxError
from ganx_dask.matching import cluster_distributions, pigment_weights

PAPER = {"mode": "paper"}

LIB_RGB = np.array([[227, 66, 52],    # vermilion-like red
                    [38, 97, 156],    # ultramarine-like blue
                    [245, 245, 240],  # lead white
                    [30, 30, 30]], np.uint8)  # carbon black
E = 16


def _spectra():
    h = np.zeros((4, E))
    h[0, 2] = 1.0
    h[1, 5:7] = 0.5
    h[2, 9] = 1.0
    h[3, 15] = 1.0
    return xr.DataArray(h, dims=("pigment", "energy"),
                        coords={"pigment": ["vermilion", "ultramarine", "lead white", "black"],
                                "energy": np.linspace(1, 16, E)})


def test_threshold_semantics_and_abundances():
    clusters = np.array([[220, 70, 60], [40, 100, 150]], np.uint8)
    thr = 0.6
    ab, sp = cluster_distributions(clusters, LIB_RGB, _spectra(), threshold=thr, **PAPER)
    sim = similarity(clusters[:, None], LIB_RGB[None])
    expect = np.where(sim > thr, sim, 0)
    expect /= expect.sum(1, keepdims=True)
    np.testing.assert_allclose(ab.values, expect)
    np.testing.assert_allclose(ab.sum("pigment"), 1.0)
    assert ab.dims == ("cluster", "pigment") and list(ab.pigment.values)[0] == "vermilion"
    np.testing.assert_allclose(sp.values, expect @ _spectra().values)
    np.testing.assert_allclose(sp.sum("energy"), 1.0)
    assert sp.dims == ("cluster", "energy") and sp.energy.size == E
    # strict ">": putting the threshold exactly at a similarity excludes that pigment
    s01 = float(sim[0, 1])
    w = pigment_weights(clusters, LIB_RGB, threshold=s01, **PAPER)
    assert w[0, 1] == 0 and w[0, 0] > 0


def test_low_threshold_mixes_more_pigments():
    c = np.array([[200, 90, 80]], np.uint8)
    w_lo = pigment_weights(c, LIB_RGB, threshold=0.2, **PAPER)
    w_hi = pigment_weights(c, LIB_RGB, threshold=0.6, **PAPER)
    assert (w_lo > 0).sum() > (w_hi > 0).sum() >= 1


def test_fallback_to_nearest_when_none_passes():
    c = np.array([[0, 255, 0]], np.uint8)  # pure green, no green pigment
    sim = similarity(c[:, None], LIB_RGB[None])[0]
    w = pigment_weights(c, LIB_RGB, threshold=0.99, **PAPER)
    assert w.tolist() == [np.eye(4)[np.argmax(sim)].tolist()]
    ab, sp = cluster_distributions(c, LIB_RGB, _spectra(), threshold=1.0, **PAPER)
    np.testing.assert_array_equal(sp.values[0], _spectra().values[np.argmax(sim)])
    assert ab.values.sum() == 1.0


def test_nearest_mode_and_zero_support():
    clusters = np.array([[225, 70, 50], [35, 35, 35], [250, 250, 250]], np.uint8)
    ab, sp = cluster_distributions(clusters, LIB_RGB, _spectra(), mode="nearest", threshold=0.0)
    np.testing.assert_array_equal(ab.values, np.eye(4)[[0, 3, 2]])
    # channels where no chosen pigment emits stay exactly zero
    assert sp.values[0, 2] == 1.0 and np.count_nonzero(sp.values[0]) == 1


def test_other_similarities():
    c = np.array([[220, 70, 60]], np.uint8)
    for method in ("cie94", "cie76", "cosine"):
        ab, _ = cluster_distributions(c, LIB_RGB, _spectra(), similarity=method, threshold=0.5,
                                      **PAPER)
        assert ab.attrs["similarity"] == method
        np.testing.assert_allclose(ab.values.sum(), 1.0)
        assert ab.values[0, 0] == ab.values.max()


@pytest.mark.parametrize("kw, match", [
    ({"threshold": 1.5}, "threshold"), ({"threshold": -0.1}, "threshold"),
    ({"mode": "best"}, "mode"), ({"similarity": "cmc"}, "similarity"),
    ({"margin": 0.0}, "margin"), ({"margin": 1.5}, "margin"), ({"margin": True}, "margin"),
    ({"max_pigments": 0}, "max_pigments"), ({"max_pigments": 2.5}, "max_pigments"),
    ({"lightness_factor": 0}, "lightness_factor"), ({"lightness_factor": "2"}, "lightness_factor"),
])
def test_bad_parameters(kw, match):
    with pytest.raises(GanxError, match=match):
        cluster_distributions(LIB_RGB[:1], LIB_RGB, _spectra(), **kw)


def test_mismatched_library():
    with pytest.raises(GanxError, match="3 colours but 4 spectra"):
        cluster_distributions(LIB_RGB[:1], LIB_RGB[:3], _spectra())


def test_matched_pigment_with_empty_spectrum_is_a_pigment_error():
    h = _spectra().copy()
    h[0] = 0.0  # vermilion has no counts on this axis
    with pytest.raises(GanxError, match="vermilion"):
        cluster_distributions(np.array([[227, 66, 52]], np.uint8), LIB_RGB, h, mode="nearest")


def test_paper_alias_is_the_threshold_method():
    c = np.array([[200, 90, 80], [40, 100, 150]], np.uint8)
    np.testing.assert_array_equal(pigment_weights(c, LIB_RGB, mode="paper", threshold=0.3),
                                  pigment_weights(c, LIB_RGB, mode="threshold", threshold=0.3))
    ab, _ = cluster_distributions(c, LIB_RGB, _spectra(), mode="paper")
    assert ab.attrs["mode"] == "threshold"


# A library of near-duplicates: three reds within ΔE2000 ≈ 1-3 of each other, then others.
NEAR = np.array([[227, 66, 52], [225, 68, 55], [222, 70, 57], [215, 75, 60], [205, 60, 50],
                 [38, 97, 156], [245, 245, 240]], np.uint8)


def test_closest_keeps_only_indistinguishable_colours_weighted_by_similarity():
    c = np.array([[227, 66, 52]], np.uint8)
    sim = similarity(c[:, None], NEAR[None], k_l=2.0)[0]  # closest uses kL = 2 by default
    for margin in (0.01, 0.02, 0.05):
        w = pigment_weights(c, NEAR, margin=margin, max_pigments=10)[0]
        best = sim.max()
        inside = (best - sim) < margin
        # exactly the pigments within the margin take part, with weights ∝ margin − deficit
        assert np.array_equal(w > 0, inside)
        expect = np.where(inside, margin - (best - sim), 0.0)
        np.testing.assert_allclose(w, expect / expect.sum(), rtol=1e-12)
        assert w.argmax() == sim.argmax() and w.sum() == pytest.approx(1.0)


def test_closest_caps_the_number_of_pigments_most_similar_first():
    c = np.array([[227, 66, 52]], np.uint8)
    sim = similarity(c[:, None], NEAR[None], k_l=2.0)[0]
    w_all = pigment_weights(c, NEAR, margin=0.2, max_pigments=10)[0]
    assert (w_all > 0).sum() >= 3
    for cap in (1, 2, 3):
        w = pigment_weights(c, NEAR, margin=0.2, max_pigments=cap)[0]
        assert (w > 0).sum() == cap
        assert set(np.flatnonzero(w)) == set(np.argsort(-sim, kind="stable")[:cap])
    np.testing.assert_array_equal(pigment_weights(c, NEAR, max_pigments=1, lightness_factor=1),
                                  pigment_weights(c, NEAR, mode="nearest"))


def test_lightness_factor_discounts_lightness_only():
    """kL = 2 halves the weight of a pure lightness difference in CIEDE2000 (the same hue and
    chroma, darker) but leaves a pure hue difference unchanged."""
    from ganx_dask.color import delta_e

    lab = np.array([50.0, 20.0, 10.0])
    darker = lab - [10.0, 0, 0]
    np.testing.assert_allclose(delta_e(lab, darker, k_l=2.0), delta_e(lab, darker) / 2, rtol=0.02)
    hue = np.array([50.0, 10.0, 20.0])
    np.testing.assert_allclose(delta_e(lab, hue, k_l=2.0), delta_e(lab, hue))
    np.testing.assert_allclose(delta_e(lab, darker, "cie76", k_l=2.0), 5.0)


def test_closest_honours_the_threshold_but_always_keeps_the_best():
    c = np.array([[0, 255, 0]], np.uint8)  # no green pigment: every similarity is low
    sim = similarity(c[:, None], NEAR[None], k_l=2.0)[0]
    w = pigment_weights(c, NEAR, threshold=0.99, margin=0.5, max_pigments=7)[0]
    assert w.tolist() == np.eye(len(NEAR))[sim.argmax()].tolist()


def test_closest_on_the_default_library_gives_few_pigments():
    """The default mode on the bundled 47-pigment library: ≤ 3 pigments per colour (the paper's
    threshold 0.2 mixes nearly all of them)."""
    from ganx_dask.pigments import default_library

    lib = default_library()
    rgb = np.asarray(lib.rgb.values if hasattr(lib.rgb, "values") else lib.rgb, np.uint8)
    rng = np.random.default_rng(3)
    colours = rng.integers(0, 256, (200, 3), dtype=np.uint8)
    w = pigment_weights(colours, rgb)
    n = (w > 0).sum(axis=1)
    assert n.min() >= 1 and n.max() <= 3
    paper = (pigment_weights(colours, rgb, mode="paper") > 0).sum(axis=1)
    assert np.median(paper) > 30
