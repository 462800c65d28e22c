"""Tests of ganx_dask.plotting: every figure is written as a non-empty PNG of sensible size."""

import numpy as np
import pytest
import xarray as xr
from PIL import Image

from ganx_dask import analysis as A
from ganx_dask import plotting as P
from ganx_dask.errors import GanxError

from .test_analysis import make_cube


@pytest.fixture(scope="module")
def ds():
    return make_cube(h=32, w=24)


def _check_png(path, min_w=300, min_h=200):
    assert path.stat().st_size > 2000
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        assert w >= min_w and h >= min_h
        arr = np.asarray(im.convert("L"))
        assert arr.std() > 5  # not a blank canvas
    return w, h


def test_element_map_grid(tmp_path, ds):
    maps = A.element_maps(ds, [("Cu", "Ka"), ("Pb", "La"), ("Ca", "Ka")])
    P.element_map_grid(maps, ncols=2, title="maps", path=tmp_path / "m.png")
    w, h = _check_png(tmp_path / "m.png")
    assert h > 0.8 * w  # 2 × 2 panels of a tall image
    with pytest.raises(GanxError):
        P.element_map_grid({}, path=tmp_path / "none.png")


def test_sum_spectra_log_and_lines(tmp_path, ds):
    s = A.sum_spectrum(ds)
    fig = P.sum_spectra({"a": s, "b": s * 2}, lines=[("Pb", "La"), ("Pb", "Ka")])
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert ax.get_xlabel() == "energy (keV)"
    assert len(ax.get_lines()) == 3  # two spectra + one line marker (Pb Kα is off-axis)
    P.save(fig, tmp_path / "s.png")
    _check_png(tmp_path / "s.png")


def test_flattened_image_single_and_panels(tmp_path, ds):
    flat = A.flatten(ds)
    P.flattened_image(flat, path=tmp_path / "f.png", max_rows=100)
    _check_png(tmp_path / "f.png")
    P.flattened_image({"A": flat, "B": flat}, path=tmp_path / "f2.png")
    w2, _ = _check_png(tmp_path / "f2.png")
    with pytest.raises(GanxError, match="pixel, energy"):
        P.flattened_image(ds.counts.data, path=tmp_path / "bad.png")


def test_rgb_comparison_and_clustered_rgb(tmp_path, ds):
    clus = P.clustered_rgb(ds.labels, ds.cluster_rgb)
    assert clus.shape == (32, 24, 3)
    np.testing.assert_array_equal(clus[0, 0], [200, 30, 30])
    np.testing.assert_array_equal(clus[0, -1], [30, 30, 200])
    lab = ds.labels.values.copy()
    lab[0, 0] = -1
    assert tuple(P.clustered_rgb(lab, ds.cluster_rgb.values)[0, 0]) == (255, 255, 255)
    P.rgb_comparison(ds.rgb, ds.labels, ds.cluster_rgb, path=tmp_path / "rgb.png")
    _check_png(tmp_path / "rgb.png")


def test_abundance_heatmap(tmp_path, ds):
    P.abundance_heatmap(ds.abundance, cluster_rgb=ds.cluster_rgb, path=tmp_path / "a.png")
    _check_png(tmp_path / "a.png", min_w=200, min_h=150)
    with pytest.raises(GanxError, match="cluster, pigment"):
        P.abundance_heatmap(xr.DataArray(np.ones((2, 2)), dims=("a", "b")))
