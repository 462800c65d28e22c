"""Tests for ganx_dask.color: CIEDE2000 against the published test data, similarity semantics."""

from pathlib import Path

import numpy as np
import pytest
from skimage import color as skcolor

from ganx_dask.color import delta_e, rgb_to_lab, similarity
from ganx_dask.errors import GanxError

DATA = Path(__file__).parent / "data" / "ciede2000_sharma2005.txt"


def test_ciede2000_matches_sharma_2005_all_34_pairs():
    d = np.loadtxt(DATA)
    assert d.shape == (34, 8)
    de = delta_e(d[:, 1:4], d[:, 4:7], "ciede2000")
    np.testing.assert_allclose(de, d[:, 7], atol=1e-4, rtol=0)
    # symmetric
    np.testing.assert_allclose(delta_e(d[:, 4:7], d[:, 1:4]), d[:, 7], atol=1e-4, rtol=0)


def test_rgb_to_lab_reference_points():
    lab = rgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0]], np.uint8))
    np.testing.assert_allclose(lab[0], [100, 0, 0], atol=0.01)
    np.testing.assert_allclose(lab[1], [0, 0, 0], atol=1e-3)
    # sRGB red in CIELAB D65: L*=53.24, a*=80.09, b*=67.20
    np.testing.assert_allclose(lab[2], [53.24, 80.09, 67.20], atol=0.02)


def test_cie76_is_euclidean_and_cie94_matches_skimage():
    a = np.array([50.0, 10.0, -20.0])
    b = np.array([55.0, 13.0, -16.0])
    assert delta_e(a, b, "cie76") == pytest.approx(np.sqrt(25 + 9 + 16))
    assert delta_e(a, b, "cie94") == pytest.approx(float(skcolor.deltaE_ciede94(a, b)))
    assert delta_e(a, b, "cie94") < delta_e(a, b, "cie76")


def test_similarity_paper_eq4_and_clip():
    red = np.array([255, 0, 0])
    assert similarity(red, red) == pytest.approx(1.0)
    de = delta_e(rgb_to_lab(red), rgb_to_lab([200, 30, 30]))
    assert similarity(red, [200, 30, 30]) == pytest.approx((100 - de) / 100)
    # black vs white: dE2000 = 100 -> similarity 0; never negative
    assert similarity([0, 0, 0], [255, 255, 255]) == pytest.approx(0.0, abs=1e-6)
    s = similarity(np.array([[0, 0, 255]]), np.array([[255, 255, 0], [0, 255, 0]]), "cie76")
    assert s.shape == (2,) and np.all(s >= 0) and np.all(s <= 1)


def test_similarity_broadcasts_cluster_by_pigment():
    clusters = np.array([[10, 20, 30], [200, 100, 50], [90, 90, 90]], np.uint8)
    pigments = np.array([[0, 0, 0], [255, 255, 255]], np.uint8)
    s = similarity(clusters[:, None, :], pigments[None, :, :])
    assert s.shape == (3, 2)
    assert s[0, 0] > s[0, 1]  # dark cluster closer to black


def test_cosine_similarity():
    assert similarity([100, 0, 0], [50, 0, 0], "cosine") == pytest.approx(1.0)
    assert similarity([100, 0, 0], [0, 70, 0], "cosine") == pytest.approx(0.0)
    assert similarity([1, 1, 0], [1, 0, 0], "cosine") == pytest.approx(1 / np.sqrt(2))
    assert similarity([0, 0, 0], [0, 0, 0], "cosine") == 1.0
    assert similarity([0, 0, 0], [10, 0, 0], "cosine") == 0.0


def test_unknown_method_is_a_clear_error():
    with pytest.raises(GanxError, match="unknown similarity 'cie2001'"):
        similarity([1, 2, 3], [1, 2, 3], "cie2001")
    with pytest.raises(GanxError, match="colour-difference"):
        delta_e([50, 0, 0], [50, 0, 0], "cosine")
