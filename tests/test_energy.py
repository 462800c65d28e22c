import numpy as np
import pytest

from ganx_dask.energy import EnergyAxis, as_energy_axis, edges_from_centres, rebin
from ganx_dask.errors import EnergyAxisError


def test_parse_paper_axis():
    ax = EnergyAxis.parse("0.5:38.5:1024")
    assert ax.n == 1024
    assert ax.edges[0] == 0.5 and ax.edges[-1] == 38.5
    assert np.isclose(ax.width, 38.0 / 1024)
    assert np.allclose(np.diff(ax.centres), ax.width)
    assert str(ax) == "0.5:38.5:1024"
    c = ax.to_coord()
    assert c.attrs["units"] == "keV" and c.dims == ("energy",)


@pytest.mark.parametrize(
    "spec", ["", "1:2", "a:b:10", "1:2:3.5", "2:1:10", "0:1:1", "-1:2:10", "1:nan:10", "1:2:3:4"]
)
def test_invalid_specs(spec):
    with pytest.raises(EnergyAxisError):
        EnergyAxis.parse(spec)


def test_as_energy_axis_roundtrip_from_centres():
    ax = EnergyAxis(1.0, 11.0, 10)
    assert as_energy_axis(ax.centres) == ax
    assert as_energy_axis("1:11:10") == ax
    nonuni = np.array([1.0, 2.0, 4.0, 8.0])
    e = as_energy_axis(nonuni)
    assert isinstance(e, np.ndarray) and e.size == 5


def test_edges_from_centres_rejects_bad():
    with pytest.raises(EnergyAxisError):
        edges_from_centres([1.0, 1.0, 2.0])
    with pytest.raises(EnergyAxisError):
        edges_from_centres([1.0])


def test_rebin_conserves_counts_and_is_exact_on_aligned_bins():
    rng = np.random.default_rng(0)
    v = rng.random((3, 100))
    src = np.linspace(0, 10, 101)
    dst = np.linspace(0, 10, 26)  # 4 source bins per target bin
    out = rebin(v, src, dst)
    assert out.shape == (3, 25)
    np.testing.assert_allclose(out.sum(-1), v.sum(-1), rtol=1e-12)
    np.testing.assert_allclose(out, v.reshape(3, 25, 4).sum(-1), rtol=1e-12)
    # non-aligned target conserves the total too
    dst2 = np.linspace(-1, 11, 37)
    np.testing.assert_allclose(rebin(v, src, dst2).sum(-1), v.sum(-1), rtol=1e-12)


def test_rebin_partial_overlap_drops_outside_and_rejects_disjoint():
    v = np.ones(10)
    src = np.linspace(0, 10, 11)
    out = rebin(v, src, np.linspace(5, 15, 11))
    assert np.isclose(out.sum(), 5.0)
    with pytest.raises(EnergyAxisError, match="do not overlap"):
        rebin(v, src, np.linspace(20, 30, 5))
    with pytest.raises(EnergyAxisError):
        rebin(np.ones(9), src, src)
