"""Figures a reader can use: line presence/overlap, map scales, spectrum labels, abundance scale."""

import numpy as np
import pytest
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg

from ganx_dask import analysis as A
from ganx_dask import plotting as P
from ganx_dask.energy import EnergyAxis
from ganx_dask.errors import GanxError

AX = EnergyAxis.parse("0.5:38.5:1024")


def _spectrum(peaks: dict[float, float], background: float = 200.0, seed: int = 0):
    """Poisson sum spectrum: flat background (counts/channel) + Gaussian peaks (total counts)."""
    e = AX.centres
    lam = np.full(e.size, background)
    for en, total in peaks.items():
        sig = float(A.detector_fwhm(en)) / 2.3548
        lam += total * AX.width * np.exp(-0.5 * ((e - en) / sig) ** 2) / (sig * np.sqrt(2 * np.pi))
    y = np.random.default_rng(seed).poisson(lam)
    return xr.DataArray(y, dims="energy", coords={"energy": AX.to_coord()})


def test_line_peak_present_only_above_noise():
    cu = A.line_energy("Cu", "Ka")
    spec = _spectrum({cu: 50_000})
    p = A.line_peak(spec, "Cu", "Ka")
    # the ±1 FWHM window holds 98 % of a Gaussian peak; σ of the net ≈ √(gross + baseline)
    assert p["net"] == pytest.approx(0.98 * 50_000, rel=0.05) and A.line_present(p)
    for el in ("Na", "Sr", "Pb"):  # background only: net within ±4σ of 0, not present
        q = A.line_peak(spec, el)
        assert abs(q["z"]) < 4 and not A.line_present(q), q
    # 60 counts over ≈ 9 channels × 200 of background: z ≈ 60 / √3600 ≈ 1, noise
    weak = A.line_peak(_spectrum({cu: 60}, seed=1), "Cu", "Ka")
    assert not A.line_present(weak)


def test_line_overlaps_flags_unresolved_pairs_only():
    e = AX.centres
    assert [t[:2] for t in A.line_overlaps("As", "Ka", e, elements=["Pb", "Cu"])] == [("Pb", "La")]
    assert ("Pb", "Ma") in [t[:2] for t in A.line_overlaps("S", "Ka", e, elements=["Pb"])]
    assert ("Ba", "La") in [t[:2] for t in A.line_overlaps("Ti", "Ka", e, elements=["Ba"])]
    assert A.line_overlaps("Cu", "Ka", e, elements=["Pb", "Hg", "As"]) == []
    assert A.line_overlaps("Pb", "La", e, elements=["Pb"]) == []  # own lines don't count


def _maps():
    y, x = np.mgrid[0:40, 0:30]
    a = (x > 15) * 100.0 + 1
    b = (y > 20) * 2.0 + 0.1
    return xr.DataArray(np.stack([a, b]), dims=("element", "y", "x"),
                        coords={"element": ["Pb La", "As Ka"], "line_energy": ("element",
                                                                             [10.55, 10.54])})


def test_element_map_grid_scales_colour_bars_and_notes():
    m = _maps()
    fig = P.element_map_grid(m, notes={"As Ka": "⚠ unresolved from Pb Lα"}, pixel_size=0.5)
    ims = [ax.images[0] for ax in fig.axes if ax.images]
    assert [im.get_clim()[1] for im in ims] == pytest.approx([101, 2.1])  # own 99.5th pct
    assert all(im.get_clim()[0] == 0 for im in ims)
    assert len(fig.axes) == 4  # two panels + two colour bars
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert titles[0] == "Pb Lα (10.55 keV)" and "unresolved from Pb Lα" in titles[1]
    bars = [c for c in fig.axes[0].artists if type(c).__name__ == "AnchoredSizeBar"]
    assert bars and bars[0].txt_label.get_text() == "2 mm"  # 30 px × 0.5 mm = 15 mm wide
    shared = P.element_map_grid(m, scale="shared")
    ims = [ax.images[0] for ax in shared.axes if ax.images]
    assert ims[0].get_clim() == ims[1].get_clim() and len(shared.axes) == 3  # one colour bar
    with pytest.raises(GanxError, match="scale"):
        P.element_map_grid(m, scale="log")


def _overlap(a, b) -> bool:
    return not (a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0)


def test_sum_spectrum_line_labels_merge_and_never_overlap():
    lines = [(el, "Ka") for el in ("S", "Ca", "Ti", "Cr", "Mn", "Fe", "Co", "Cu", "Zn", "As")]
    lines += [("Pb", "La"), ("Pb", "Ma"), ("Hg", "La"), ("Ba", "La")]
    fig = P.sum_spectra(_spectrum({}), lines=lines, normalise=False)
    renderer = FigureCanvasAgg(fig).get_renderer()
    texts = [t for t in fig.axes[0].texts]
    labels = [t.get_text() for t in texts]
    # unresolved lines share one marker and label; every line is named exactly once
    assert {"As Kα / Pb Lα", "S Kα / Pb Mα", "Ba Lα / Ti Kα"} <= set(labels)
    names = sorted(n for lbl in labels for n in lbl.split(" / "))
    assert names == sorted(P._pretty_line(f"{el} {ln}") for el, ln in lines)
    boxes = [t.get_window_extent(renderer) for t in texts]
    clash = [(labels[i], labels[j]) for i in range(len(boxes)) for j in range(i)
             if _overlap(boxes[i], boxes[j])]
    assert clash == []


def test_abundance_scale_follows_the_data():
    vals = np.full((3, 47), 1 / 47) + np.linspace(0, 0.01, 47)
    ab = xr.DataArray(vals, dims=("cluster", "pigment"),
                      coords={"cluster": [0, 1, 2], "pigment": [f"p{i}" for i in range(47)]})
    fig = P.abundance_heatmap(ab)
    im = fig.axes[0].images[0]
    assert im.get_clim() == (0, pytest.approx(vals.max()))
    assert fig.axes[0].texts[0].get_text() == ".021"
