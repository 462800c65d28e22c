"""Publication-quality figures of cubes and their analysis (matplotlib, Agg backend).

Every function returns a :class:`matplotlib.figure.Figure` and, when ``path`` is given, saves it
in the format of the path's suffix (PNG at ``dpi``; PDF and SVG are vector, with images such as
element maps embedded at their own pixel resolution).  Figures are built without :mod:`matplotlib.pyplot`, so importing this module
neither selects a backend nor registers figures in pyplot's global state (a notebook keeps its
backend; a CLI run needs no display and leaks no open figures).  Inputs are xarray objects from :mod:`ganx_dask.analysis`; they are
computed here (element maps and sum spectra are small), so call these after reducing a big cube.

* :func:`element_map_grid` — one panel per element map, a colour bar in counts per pixel (one per
  panel or one shared), a scale bar, and notes such as unresolved line overlaps;
* :func:`sum_spectra` — sum spectra overlaid on a log y axis with emission-line markers whose
  labels are merged when coincident and staggered so that none overlap;
* :func:`flattened_image` — the ``(pixel, energy)`` image after ``x → tanh(log(1 + x))``;
* :func:`rgb_comparison` — original vs clustered RGB (labels → ``cluster_rgb``);
* :func:`abundance_heatmap` — cluster × pigment ground-truth abundance.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from .errors import GanxError

__all__ = [
    "element_map_grid",
    "sum_spectra",
    "flattened_image",
    "rgb_comparison",
    "clustered_rgb",
    "abundance_heatmap",
    "save",
]

_STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "figure.dpi": 100,
    "savefig.bbox": "tight",
}
_LINESTYLES = (":", "--", "-.", "-", (0, (5, 1)), (0, (3, 1, 1, 1)))


#: Output formats of :func:`save` (by the path's suffix).
FORMATS = ("png", "pdf", "svg")


def save(fig: Figure, path: str | os.PathLike | None, dpi: int = 150) -> Figure:
    """Save ``fig`` to ``path`` (if given) in the format of its suffix (``.png`` at ``dpi`` dots
    per inch; ``.pdf``/``.svg`` vector); returns ``fig``."""
    if path is not None:
        with matplotlib.rc_context(_STYLE):
            fig.savefig(os.fspath(path), dpi=dpi)
    return fig


def _values(a) -> np.ndarray:
    if isinstance(a, xr.DataArray):
        return np.asarray(a.values)
    return np.asarray(a)


def _nice_length(span: float) -> float:
    """A round length (1, 2 or 5 × 10ⁿ) close to a fifth of ``span``."""
    target = max(span / 5.0, 1e-12)
    mag = 10.0 ** np.floor(np.log10(target))
    return float(min((m * mag for m in (1, 2, 5, 10)), key=lambda v: abs(v - target)))


def _scale_bar(ax, width_px: int, pixel_size: float | None) -> None:
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    if pixel_size:
        length_mm = _nice_length(width_px * pixel_size)
        size, label = length_mm / pixel_size, f"{length_mm:g} mm"
    else:
        size = _nice_length(width_px)
        label = f"{size:g} px"
    bar = AnchoredSizeBar(ax.transData, size, label, "lower right", pad=0.3, sep=2,
                          color="white", frameon=False, size_vertical=max(1, width_px / 150),
                          fontproperties={"size": 7})
    ax.add_artist(bar)


def element_map_grid(maps: xr.DataArray | Mapping[str, xr.DataArray], *, ncols: int = 4,
                     title: str | None = None, cmap: str = "viridis", scale: str = "panel",
                     notes: Mapping[str, str] | None = None, pixel_size: float | None = None,
                     path=None, dpi: int = 150) -> Figure:
    """Grid of element maps with colour bars in counts per pixel and a scale bar.

    Parameters
    ----------
    maps : DataArray (element, y, x) or mapping label → DataArray (y, x)
        E.g. :func:`ganx_dask.analysis.element_maps`.
    ncols : int
        Panels per row.
    scale : {"panel", "shared"}
        ``"panel"`` (default): each map on its own colour scale, from 0 to its 99.5th
        percentile (line intensities differ by orders of magnitude, so a shared scale would
        leave weak elements black); each panel has its own colour bar, read the panel by it.
        ``"shared"``: one scale (0 to the 99.5th percentile of all maps) and one colour bar, to
        compare intensities between elements.
    notes : mapping label → str, optional
        A second title line per panel (keys: element names such as ``"As Ka"``), e.g. an
        unresolved overlap with another element's line.
    pixel_size : float, optional
        Pixel size in mm for the scale bar (else it is in pixels).
    """
    if scale not in ("panel", "shared"):
        raise GanxError(f"scale must be 'panel' or 'shared', got {scale!r}")
    notes = dict(notes or {})
    if isinstance(maps, xr.DataArray):
        if "element" not in maps.dims:
            raise GanxError("element_map_grid needs a DataArray with an 'element' dimension")
        keys = [str(e) for e in maps["element"].values]
        items = [(k, maps.sel(element=k)) for k in keys]
        energies = maps.coords.get("line_energy")
        if energies is not None:
            items = [(f"{_pretty_line(lbl)} ({float(en):.2f} keV)", m)
                     for (lbl, m), en in zip(items, energies.values, strict=True)]
        labels = dict(zip(keys, (lbl for lbl, _ in items), strict=True))
        notes = {labels.get(k, k): v for k, v in notes.items()}
    else:
        items = list(maps.items())
    if not items:
        raise GanxError("no element maps to plot")
    arrays = [(lbl, _values(m).astype(float)) for lbl, m in items]
    n = len(arrays)
    tops = [max(float(np.percentile(a, 99.5)), float(a.max()) * 1e-3, 1e-9) if a.size else 1.0
            for _, a in arrays]
    shared_top = max(float(np.percentile(np.concatenate([a.ravel() for _, a in arrays]), 99.5)),
                     1e-9)
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    h, w = arrays[0][1].shape
    panel_w = 3.0
    panel_h = panel_w * h / max(w, 1) + 0.4
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(panel_w * ncols + 0.6 * ncols, panel_h * nrows + (0.4 if title else 0)),
                     layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for ax in axes.flat[n:]:
            ax.axis("off")
        im = None
        for i, (ax, (lbl, arr)) in enumerate(zip(axes.flat, arrays, strict=False)):
            top = tops[i] if scale == "panel" else shared_top
            im = ax.imshow(arr, cmap=cmap, interpolation="nearest", vmin=0, vmax=top)
            note = notes.get(lbl)
            ax.set_title(lbl if not note else f"{lbl}\n{note}",
                         color="black" if not note else "firebrick", fontsize=9 if not note else 8)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                _scale_bar(ax, arr.shape[1], pixel_size)
            if scale == "panel":
                cb = fig.colorbar(im, ax=ax, shrink=0.85, pad=0.02,
                                  extend="max" if arr.max() > top else "neither")
                cb.set_label("counts per pixel")
        if scale == "shared" and im is not None:
            cb = fig.colorbar(im, ax=list(axes.flat), shrink=0.6, pad=0.02, extend="max")
            cb.set_label("counts per pixel (shared scale)")
        if title:
            fig.suptitle(title)
    return save(fig, path, dpi)


def sum_spectra(spectra: Mapping[str, xr.DataArray] | xr.DataArray, *,
                lines: Sequence[tuple[str, str]] | None = None, normalise: bool = True,
                title: str | None = None, path=None, dpi: int = 150) -> Figure:
    """Sum spectra overlaid on a log y axis, with vertical markers at emission lines.

    Parameters
    ----------
    spectra : mapping label → DataArray (energy) or one DataArray
        Sum spectra with an ``energy`` coordinate (keV).
    lines : sequence of (element, line), optional
        Lines to mark (xraylib energies); those outside the axis are skipped.
    normalise : bool
        Plot each spectrum normalised to sum 1 (paper's Figure 5) instead of counts.
    """
    from .analysis import line_energy

    if isinstance(spectra, xr.DataArray):
        spectra = {spectra.name or "sum spectrum": spectra}
    if not spectra:
        raise GanxError("no spectra to plot")
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(7.0, 3.8), layout="constrained")
        ax = fig.subplots()
        lo, hi = np.inf, -np.inf
        for i, (lbl, s) in enumerate(spectra.items()):
            e = _values(s["energy"])
            y = _values(s).astype(float)
            if normalise and y.sum() > 0:
                y = y / y.sum()
            lo, hi = min(lo, e.min()), max(hi, e.max())
            ax.plot(e, np.where(y > 0, y, np.nan), lw=1.0, label=str(lbl),
                    ls=_LINESTYLES[i % len(_LINESTYLES)] if len(spectra) > 1 else "-")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_xlabel("energy (keV)")
        ax.set_ylabel("fraction of counts per channel" if normalise else "counts per channel")
        marks = []
        for el, ln in lines or ():
            try:
                en = line_energy(el, ln)
            except GanxError:
                continue
            if lo <= en <= hi:
                marks.append((en, f"{el} {_pretty_line(ln).split()[-1]}"))
        tiers = _label_lines(ax, fig, marks, lo, hi)
        ax.legend(loc="upper right", frameon=False)
        if title:
            ax.set_title(title, pad=8 + 11 * tiers)
    return save(fig, path, dpi)


def _pretty_line(name: str) -> str:
    """``"Pb La"`` → ``"Pb Lα"``, ``"Ka"`` → ``"Kα"``."""
    head, _, tail = str(name).rpartition(" ")
    greek = {"a": "α", "b": "β"}
    if len(tail) == 2 and tail[0] in "KLM" and tail[1] in greek:
        tail = tail[0] + greek[tail[1]]
    return f"{head} {tail}".strip()


def _label_lines(ax, fig, marks: list[tuple[float, str]], lo: float, hi: float) -> int:
    """Vertical markers at line energies with horizontal labels above the axes.

    Lines closer than half a label height on screen share one marker and one label
    ("As Kα / Pb Lα"); labels are stacked in tiers so that no two overlap.  Returns the number
    of tiers used.
    """
    if not marks:
        return 0
    from matplotlib.textpath import TextPath

    marks.sort()
    fig.draw_without_rendering()  # settle the layout: the axes' real width
    width_pt = ax.get_window_extent().width * 72.0 / fig.dpi
    to_pt = width_pt / max(hi - lo, 1e-9)
    merged: list[list] = []
    for en, text in marks:
        if merged and (en - merged[-1][0]) * to_pt < 4:
            if text not in merged[-1][1]:
                merged[-1][1].append(text)
            continue
        merged.append([en, [text]])
    ends: list[float] = []  # right end (pt) of the last label of each tier
    for en, texts in merged:
        text = " / ".join(texts)
        x = (en - lo) * to_pt
        half = 0.5 * TextPath((0, 0), text, size=7).get_extents().width + 3  # pt, with a gap
        tier = next((i for i, end in enumerate(ends) if x - half > end), len(ends))
        if tier == len(ends):
            ends.append(x + half)
        else:
            ends[tier] = x + half
        ax.axvline(en, color="0.6", lw=0.6, zorder=0)
        ax.annotate(text, (en, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(0, 2 + 11 * tier), textcoords="offset points", va="bottom",
                    ha="center", fontsize=7, color="0.25", annotation_clip=False)
    return len(ends)


def flattened_image(flat, *, transform: bool = True, title: str | None = None,
                    max_rows: int = 4096, path=None, dpi: int = 150) -> Figure:
    """Image(s) of flattened cubes ``(pixel, energy)`` after ``x → tanh(log(1 + x))``.

    Parameters
    ----------
    flat : DataArray (pixel, energy), array, or mapping label → one of those
        A mapping gives one panel per cube, side by side (paper's Figure 6).
    max_rows : int
        Tall cubes are shown with rows averaged in groups so at most this many rows are drawn
        (only the reduced image is computed).
    """
    panels = dict(flat) if isinstance(flat, Mapping) else {"": flat}
    if not panels:
        raise GanxError("no flattened cube to plot")
    imgs = [(lbl, *_reduced(f, transform, max_rows)) for lbl, f in panels.items()]
    n = len(imgs)
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(4.2 * n + 0.8, 4.5), layout="constrained")
        axes = fig.subplots(1, n, squeeze=False)
        im = None
        for ax, (lbl, img, e, rows, step) in zip(axes.flat, imgs, strict=True):
            im = ax.imshow(img, aspect="auto", cmap="magma", interpolation="nearest",
                           extent=(float(e[0]), float(e[-1]), rows, 0), vmin=0,
                           vmax=1 if transform else None)
            ax.set_xlabel("energy (keV)")
            ax.set_ylabel("pixel (raster order)" + (f", mean of {step}" if step > 1 else ""))
            if lbl:
                ax.set_title(lbl)
        cb = fig.colorbar(im, ax=list(axes.flat), pad=0.02)
        cb.set_label("tanh(log(1 + counts))" if transform else "counts")
        if title:
            fig.suptitle(title)
    return save(fig, path, dpi)


def _reduced(flat, transform: bool, max_rows: int):
    from .metrics import display_transform

    data = flat.data if isinstance(flat, xr.DataArray) else flat
    if data.ndim != 2:
        raise GanxError(f"flattened_image needs a (pixel, energy) array, got shape {data.shape}")
    img = display_transform(data) if transform else data.astype(float)
    step = max(1, -(-data.shape[0] // max_rows))
    if step > 1:
        n = (data.shape[0] // step) * step
        img = img[:n].reshape(n // step, step, data.shape[1]).mean(axis=1)
    img = np.asarray(img.compute() if hasattr(img, "compute") else img)
    e = _values(flat["energy"]) if isinstance(flat, xr.DataArray) and "energy" in flat.coords \
        else np.arange(data.shape[1])
    return img, e, data.shape[0], step


def clustered_rgb(labels: xr.DataArray | np.ndarray, cluster_rgb: xr.DataArray | np.ndarray
                  ) -> np.ndarray:
    """The clustered image: each pixel's cluster colour (uint8 ``(H, W, 3)``; label −1 → white).

    ``cluster_rgb`` rows are indexed by position, or by its ``cluster`` coordinate when given.
    """
    lab = _values(labels).astype(np.int64)
    table = _values(cluster_rgb).astype(np.uint8)
    if isinstance(cluster_rgb, xr.DataArray) and "cluster" in cluster_rgb.coords:
        ids = np.asarray(cluster_rgb["cluster"].values, dtype=np.int64)
        lut = np.full(max(int(ids.max()) + 1, int(lab.max()) + 1, 1), -1, dtype=np.int64)
        lut[ids] = np.arange(ids.size)
        pos = np.where(lab >= 0, lut[np.clip(lab, 0, None)], -1)
    else:
        pos = lab
    table = np.vstack([table, [[255, 255, 255]]])
    return table[np.where(pos >= 0, pos, table.shape[0] - 1)]


def rgb_comparison(rgb, labels, cluster_rgb, *, title: str | None = None,
                   k: int | None = None, path=None, dpi: int = 150) -> Figure:
    """Original vs clustered RGB side by side (paper's Figure 1), axes in pixels."""
    orig = _values(rgb)
    if orig.ndim != 3 or orig.shape[-1] != 3:
        raise GanxError(f"rgb must be (y, x, 3), got shape {orig.shape}")
    clus = clustered_rgb(labels, cluster_rgb)
    h, w = orig.shape[:2]
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(8.0, 4.0 * h / max(w, 1) + 0.6), layout="constrained")
        axes = fig.subplots(1, 2)
        axes[0].imshow(orig.astype(np.uint8), interpolation="nearest")
        axes[0].set_title("original RGB")
        axes[1].imshow(clus, interpolation="nearest")
        ncl = k if k is not None else int(_values(cluster_rgb).shape[0])
        axes[1].set_title(f"clustered RGB (k = {ncl})")
        for ax in axes:
            ax.set_xlabel("x (pixel)")
            ax.set_ylabel("y (pixel)")
        if title:
            fig.suptitle(title)
    return save(fig, path, dpi)


def abundance_heatmap(abundance: xr.DataArray, *, cluster_rgb=None, title: str | None = None,
                      path=None, dpi: int = 150) -> Figure:
    """Heatmap of ``abundance(cluster, pigment)`` (fraction) with values annotated.

    The colour scale runs from 0 to the largest abundance (not to 1), so that a library of 47
    pigments each at ≈ 0.02 is not drawn blank; the colour bar gives the scale.  With
    ``cluster_rgb`` each cluster's row label gets a swatch of its colour.
    """
    if not isinstance(abundance, xr.DataArray) or set(abundance.dims) != {"cluster", "pigment"}:
        raise GanxError("abundance_heatmap needs a DataArray with dims (cluster, pigment)")
    ab = abundance.transpose("cluster", "pigment")
    vals = np.asarray(ab.values, dtype=float)
    nc, npg = vals.shape
    with matplotlib.rc_context(_STYLE):
        size = (max(4.0, 1.0 + 0.34 * npg + 1.4), 1.6 + 0.3 * nc + 1.0)
        fig = Figure(figsize=size, layout="constrained")
        if cluster_rgb is not None:
            sax, ax = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [0.5, npg]})
            sw = _values(cluster_rgb).astype(np.uint8)[:nc, None, :]
            sax.imshow(sw, aspect="auto", interpolation="nearest")
            sax.set_xticks([])
            sax.set_title("colour", fontsize=7)
            sax.set_yticks(range(nc), [f"cluster {c}" for c in ab["cluster"].values])
        else:
            ax = fig.subplots()
            ax.set_yticks(range(nc), [f"cluster {c}" for c in ab["cluster"].values])
        top = float(np.nanmax(vals)) if vals.size and np.nanmax(vals) > 0 else 1.0
        im = ax.imshow(vals, cmap="Blues", vmin=0, vmax=top, aspect="auto")
        ax.set_xticks(range(npg), [str(p) for p in ab["pigment"].values], rotation=60,
                      ha="right", rotation_mode="anchor")
        fmt = "{:.2f}" if top >= 0.1 else "{:.3f}"
        if nc * npg <= 400:
            for i in range(nc):
                for j in range(npg):
                    if vals[i, j] >= 0.005 * top:
                        ax.text(j, i, fmt.format(vals[i, j]).lstrip("0"), ha="center",
                                va="center", fontsize=5.5 if top < 0.1 else 6,
                                color="white" if vals[i, j] > 0.6 * top else "black")
        cb = fig.colorbar(im, ax=ax, pad=0.02)
        cb.set_label("pigment abundance (fraction)")
        ax.set_xlabel("pigment")
        if title:
            ax.set_title(title)
    return save(fig, path, dpi)
