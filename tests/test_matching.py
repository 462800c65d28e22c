"""Tests for ganx_dask.matching: threshold semantics, nearest fallback, abundances, nearest mode."""

import numpy as np
import pytest
import xarray as xr

from ganx_dask.color import similarity
from ganx_dask.errors import GanxError
from ganx_dask.matching import cluster_distributions, pigment_weights

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
    ab, sp = cluster_distributions(clusters, LIB_RGB, _spectra(), threshold=thr)
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
    w = pigment_weights(clusters, LIB_RGB, threshold=s01)
    assert w[0, 1] == 0 and w[0, 0] > 0


def test_low_threshold_mixes_more_pigments():
    c = np.array([[200, 90, 80]], np.uint8)
    w_lo = pigment_weights(c, LIB_RGB, threshold=0.2)
    w_hi = pigment_weights(c, LIB_RGB, threshold=0.6)
    assert (w_lo > 0).sum() > (w_hi > 0).sum() >= 1


def test_fallback_to_nearest_when_none_passes():
    c = np.array([[0, 255, 0]], np.uint8)  # pure green, no green pigment
    sim = similarity(c[:, None], LIB_RGB[None])[0]
    w = pigment_weights(c, LIB_RGB, threshold=0.99)
    assert w.tolist() == [np.eye(4)[np.argmax(sim)].tolist()]
    ab, sp = cluster_distributions(c, LIB_RGB, _spectra(), threshold=1.0)
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
        ab, _ = cluster_distributions(c, LIB_RGB, _spectra(), similarity=method, threshold=0.5)
        assert ab.attrs["similarity"] == method
        np.testing.assert_allclose(ab.values.sum(), 1.0)
        assert ab.values[0, 0] == ab.values.max()


@pytest.mark.parametrize("kw, match", [
    ({"threshold": 1.5}, "threshold"), ({"threshold": -0.1}, "threshold"),
    ({"mode": "best"}, "mode"), ({"similarity": "cmc"}, "similarity"),
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
