"""Tests for ganx_dask.clustering: k recovery, sweep semantics, determinism, chunk-wise labels."""

import warnings

import dask
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from ganx_dask.clustering import (
    ClusterModel,
    fit_iterative_kmeans,
    nearest_centroid,
    predict_labels,
    subsample_pixels,
)
from ganx_dask.errors import GanxError, ImageError
from ganx_dask.io import read_image

PALETTE = np.array(
    [[230, 30, 30], [30, 60, 200], [40, 160, 60], [240, 220, 80], [20, 20, 20],
     [245, 245, 235], [150, 80, 200], [120, 70, 30]], np.uint8)


def synthetic(k, seed=0, ny=96, nx=96):
    """k well-separated colours with +-6 noise, random pixel layout; returns image and truth."""
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, k, (ny, nx))
    img = PALETTE[:k][lab].astype(int) + rng.integers(-6, 7, (ny, nx, 3))
    return np.clip(img, 0, 255).astype(np.uint8), lab


@pytest.mark.parametrize("k", [3, 5, 7])
def test_recovers_k_and_partition(k):
    a, truth = synthetic(k, seed=k)
    img = read_image(a, chunks=32)
    px = subsample_pixels(img, 4000, seed=1)
    model = fit_iterative_kmeans(px, n_start=5, delta=3, seed=1)
    assert model.k == k
    assert max(model.scores, key=model.scores.get) == k
    assert sorted(model.scores) == list(range(2, 9))  # 5-3 .. 5+3 inclusive
    labels = predict_labels(img, model).values
    assert labels.dtype == np.int16
    assert adjusted_rand_score(truth.ravel(), labels.ravel()) == 1.0
    # cluster colours are the members' mean colours, close to the palette
    for c in model.cluster_rgb:
        assert np.abs(PALETTE[:k].astype(int) - c).sum(axis=1).min() <= 6


def test_sweep_never_below_two_and_patience():
    a, _ = synthetic(3, seed=2)
    px = a.reshape(-1, 3)[:3000]
    m = fit_iterative_kmeans(px, n_start=2, delta=3, seed=0)
    assert min(m.scores) == 2 and max(m.scores) == 5
    # scores fall after k=3: patience 0 stops at the first non-improving k, 1 at the second
    m0 = fit_iterative_kmeans(px, n_start=3, delta=1, patience=0, seed=0)
    assert list(m0.scores) == [2, 3, 4] and m0.k == 3
    m0w = fit_iterative_kmeans(px, n_start=5, delta=3, patience=0, seed=0)  # room to go on
    assert list(m0w.scores) == [2, 3, 4] and m0w.k == 3
    m1 = fit_iterative_kmeans(px, n_start=5, delta=3, patience=1, seed=0)
    assert list(m1.scores) == [2, 3, 4, 5] and m1.k == 3
    mall = fit_iterative_kmeans(px, n_start=5, delta=3, patience=-1, seed=0)
    assert list(mall.scores) == list(range(2, 9))


def test_deterministic_and_chunk_independent():
    a, _ = synthetic(4, seed=5, ny=130, nx=100)
    models = []
    for chunks in (32, 64):
        img = read_image(a, chunks=chunks)
        px = subsample_pixels(img, 2000, seed=7)
        models.append((px, fit_iterative_kmeans(px, n_start=4, delta=1, seed=7)))
    np.testing.assert_array_equal(models[0][0], models[1][0])
    np.testing.assert_array_equal(models[0][1].centroids, models[1][1].centroids)
    l32 = predict_labels(read_image(a, chunks=32), models[0][1]).values
    l64 = predict_labels(read_image(a, chunks=64), models[0][1]).values
    np.testing.assert_array_equal(l32, l64)
    other = subsample_pixels(read_image(a, chunks=32), 2000, seed=8)
    assert not np.array_equal(other, models[0][0])


def test_subsample_positions_and_mask():
    a = np.arange(40 * 50 * 3, dtype=np.uint64).reshape(40, 50, 3) % 256
    img = read_image(a.astype(np.uint8), chunks=16)
    assert subsample_pixels(img, 10_000, seed=0).shape == (2000, 3)  # all pixels
    assert subsample_pixels(img, 300, seed=0).shape == (300, 3)
    opaque = np.ones((40, 50), bool)
    opaque[:, :25] = False
    rgb = np.zeros((40, 50, 3), np.uint8)
    rgb[:, 25:] = 200
    import xarray as xr

    s = subsample_pixels(read_image(rgb, chunks=16), 400, seed=3,
                         mask=xr.DataArray(opaque, dims=("y", "x")))
    assert 100 < s.shape[0] < 300 and np.all(s == 200)


def test_transparent_pixels_get_minus_one():
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[:10, :, :3] = (200, 20, 20)
    rgba[10:, :, :3] = (20, 20, 200)
    rgba[..., 3] = 255
    rgba[:5, :5, 3] = 0
    with pytest.warns(UserWarning, match="alpha"):
        img, mask = read_image(rgba, chunks=8, return_alpha=True)
    m = fit_iterative_kmeans(subsample_pixels(img, 1000, 0, mask=mask), n_start=2, delta=0)
    lab = predict_labels(img, m, mask).values
    assert np.all(lab[:5, :5] == -1)
    assert (lab == -1).sum() == 25
    assert set(np.unique(lab[10:])) == {lab[15, 15]} and lab[15, 15] != lab[7, 7]


def test_single_colour_image_gives_one_cluster():
    px = np.full((50, 3), 77, np.uint8)
    with pytest.warns(UserWarning, match="single colour"):
        m = fit_iterative_kmeans(px)
    assert m.k == 1 and m.cluster_rgb.tolist() == [[77, 77, 77]]
    assert np.all(m.predict(np.array([[0, 0, 0], [255, 255, 255]])) == 0)


def test_two_colours_fewer_than_n_start():
    px = np.array([[0, 0, 0]] * 30 + [[250, 250, 250]] * 30, np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = fit_iterative_kmeans(px, n_start=10, delta=3)
    assert m.k == 2 and list(m.scores) == [2]


def test_errors():
    with pytest.raises(ImageError, match="at least 2 pixels"):
        fit_iterative_kmeans(np.zeros((1, 3), np.uint8))
    with pytest.raises(GanxError, match="n_start"):
        fit_iterative_kmeans(np.zeros((9, 3), np.uint8), n_start=1)
    with pytest.raises(GanxError, match="patience"):
        fit_iterative_kmeans(np.zeros((9, 3), np.uint8), patience=-2)
    with pytest.raises(GanxError, match="delta"):
        fit_iterative_kmeans(np.zeros((9, 3), np.uint8), delta=-1)


def test_nearest_centroid_ties_and_attrs():
    c = np.array([[0, 0, 0], [10, 0, 0]], float)
    assert nearest_centroid(np.array([[5, 0, 0], [9, 0, 0]]), c).tolist() == [0, 1]
    m = ClusterModel(c, c.astype(np.uint8), 2, {2: 0.5, 3: float("nan")}, 10, 5, {"seed": 1})
    at = m.to_attrs()
    assert at["k"] == 2 and at["silhouette"] == {"2": 0.5, "3": None} and at["seed"] == 1
    import json

    json.dumps(at)


def test_predict_is_lazy():
    a, _ = synthetic(3)
    img = read_image(a, chunks=32)
    m = fit_iterative_kmeans(subsample_pixels(img, 500, 0), n_start=3, delta=0)

    def boom(*args, **kwargs):
        raise AssertionError("computed")

    with dask.config.set(scheduler=boom):
        lab = predict_labels(img, m)
    assert lab.data.chunks == ((32, 32, 32), (32, 32, 32))


def test_silhouette_and_distances_are_scikit_learns_bit_for_bit():
    """The vectorised silhouette and the integer distance matrix reproduce scikit-learn's
    ``silhouette_score``/``pairwise_distances`` exactly (cube bytes depend on the chosen k)."""
    from sklearn.metrics import pairwise_distances, silhouette_score

    from ganx_dask.clustering import _silhouette, distance_matrix

    rng = np.random.default_rng(4)
    for n, k in [(5, 2), (40, 3), (300, 7), (1024, 12), (700, 9)]:
        px = rng.integers(0, 256, (n, 3)).astype(np.uint8)
        if n == 700:
            px = px // 64 * 64  # duplicate colours: zero distances, ties
        d = distance_matrix(px)
        np.testing.assert_array_equal(d, pairwise_distances(px.astype(np.float64)))
        lab = rng.integers(0, k, n) * 5 + 2  # any label values; singletons possible
        lab[:2] = [2, 7]  # at least two clusters
        assert _silhouette(d, lab) == silhouette_score(d, lab, metric="precomputed")
    d = distance_matrix(np.zeros((4, 3), np.uint8))
    assert np.isnan(_silhouette(d, np.zeros(4, int)))  # one cluster
    assert np.isnan(_silhouette(d, np.arange(4)))  # n clusters
