"""``ganx-dask inspect``, ``ganx-dask compare`` and ``ganx-dask paper``.

* ``inspect STORE -o REPORT_DIR``: element maps, sum spectrum, flattened cube, original vs
  clustered RGB and the abundance heatmap as PNGs plus ``report.md`` (shape, parameters,
  provenance).  The report directory is written under a temporary name and renamed at the end.
* ``compare A B``: the paper's sum-spectrum metrics (Table 1) and SSIM/MS-SSIM of the flattened
  cubes (Table 2).  Inputs are ganx-dask stores or measured cubes (HDF5, npy/npz, netCDF/Zarr,
  Amptek ``.mca`` folders, see :mod:`ganx_dask.readers`).  Different energy axes are rebinned
  (count-conserving) onto a common axis: the overlap at the coarser channel width, or
  ``--energy``.  Cubes of different spatial shapes are an error unless ``--spectral-only``.
* ``paper CONFIG``: the paper reproduction (:mod:`ganx_dask.pipelines.paper`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import sys
from pathlib import Path

from ..errors import GanxError

__all__ = ["register", "inspect_store", "write_inspect_report", "default_elements",
           "format_compare"]


def _common_scheduler_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="dask scheduler: threads (default), processes, synchronous, or a "
                        "tcp://host:port / scheduler-file.json of a running cluster")


def _reader_args(p: argparse.ArgumentParser, suffix: str = "") -> None:
    p.add_argument(f"--dataset{suffix}", default=None, metavar="NAME",
                   help="HDF5 dataset path of the cube (default: img, else a PyMca/NeXus detector's data)")
    p.add_argument(f"--calibration{suffix}", default=None, metavar="GAIN,OFFSET",
                   help="energy calibration of a measured cube: keV per channel and keV at "
                        "the centre of channel 0 (default: read from the file)")
    p.add_argument(f"--mca-shape{suffix}", default=None, metavar="ROWSxCOLS",
                   help="rows×cols of an Amptek .mca folder named by raster index")


def register(subparsers) -> None:
    """Add ``inspect``, ``compare`` and ``paper`` to the ``ganx-dask`` parser."""
    p = subparsers.add_parser(
        "inspect", help="plots and a Markdown report of a cube",
        description="Element maps, sum spectrum, flattened cube, original vs clustered RGB and "
                    "abundance heatmap (PNG) plus report.md with parameters and provenance.")
    p.add_argument("store", help="a ganx-dask Zarr store or a measured cube (see compare)")
    p.add_argument("-o", "--output", required=True, metavar="REPORT_DIR",
                   help="report directory (created; must not exist unless --overwrite)")
    p.add_argument("--elements", default=None, metavar="EL[:LINE],...",
                   help="element maps to draw, e.g. 'Pb,Hg:La,Cu:Ka' (default: the elements of "
                        "the cube's pigments, else the paper's K,Ca,Fe,Zn,Cu,Au,Hg,Pb)")
    p.add_argument("--width", type=float, default=None, metavar="KEV",
                   help="element-map window width, keV (default ±1 detector FWHM at the line)")
    p.add_argument("--format", default="png", metavar="FMT[,FMT]",
                   help="figure formats, comma-separated: png, pdf, svg (PDF/SVG are vector; "
                        "default: %(default)s)")
    p.add_argument("--dpi", type=int, default=150,
                   help="resolution of PNG figures, dots per inch (default: %(default)s)")
    p.add_argument("--map-scale", choices=("panel", "shared"), default="panel",
                   help="element-map colour scale: one per panel (default; intensities differ "
                        "by orders of magnitude) or one shared by all maps")
    p.add_argument("--overwrite", action="store_true", help="replace an existing REPORT_DIR")
    _reader_args(p)
    _common_scheduler_args(p)
    p.set_defaults(func=_run_inspect)

    c = subparsers.add_parser(
        "compare", help="metrics between two cubes (paper Tables 1-2)",
        description="Sum-spectrum distances (cosine, Jensen-Shannon, Chebyshev, correlation, "
                    "Bray-Curtis, chi-square, Bhattacharyya coefficient, Hellinger) and "
                    "SSIM/MS-SSIM of the flattened cubes after x -> tanh(log(1+x)).  Different "
                    "energy axes are rebinned (counts conserved) onto a common one.")
    c.add_argument("a", help="first cube (Zarr store, .h5, .npy/.npz, .nc, .mca folder)")
    c.add_argument("b", help="second cube")
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    c.add_argument("--energy", default=None, metavar="START:STOP:N",
                   help="common energy axis, keV (default: the overlap at the coarser width)")
    c.add_argument("--spectral-only", action="store_true",
                   help="only sum-spectrum metrics (needed when the spatial shapes differ)")
    c.add_argument("-o", "--output", default=None, metavar="DIR",
                   help="also write sum_spectra.png, flattened_a.png, flattened_b.png and "
                        "compare.json there (must not exist unless --overwrite)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing DIR")
    _reader_args(c, "")
    c.add_argument("--calibration-b", default=None, metavar="GAIN,OFFSET",
                   help="calibration of B when it differs from --calibration (A)")
    _common_scheduler_args(c)
    c.set_defaults(func=_run_compare)

    q = subparsers.add_parser(
        "paper", help="reproduce the ganX paper's experiment (Tables 1-2, Figures 1-6)",
        description="Generate the demo image with the paper's nine pigments at thresholds 0.2 "
                    "and 0.6 (N=400, N_start=10, delta=2, patience -1, batch 1024), compare "
                    "them with each other and with a Poisson-noise cube, and write the tables "
                    "(Markdown + JSON) and figures (PNG).  See pipelines/paper/README.md.")
    q.add_argument("config", nargs="?", default=None,
                   help="YAML config (default: the built-in paper configuration)")
    q.add_argument("-o", "--output", default=None, metavar="DIR",
                   help="output directory (overrides the config's 'output')")
    q.add_argument("--small", action="store_true",
                   help="CI size: small image and energy axis (minutes -> seconds)")
    q.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    _common_scheduler_args(q)
    q.set_defaults(func=_run_paper)


# --------------------------------------------------------------------------- helpers
def _calibration(text: str | None, opt: str) -> tuple[float | None, float | None]:
    if text is None:
        return None, None
    try:
        gain, offset = (float(v) for v in text.split(","))
    except ValueError:
        raise GanxError(f"{opt} must be GAIN,OFFSET in keV/channel and keV, got {text!r}") from None
    return gain, offset


def _shape(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        r, c = (int(v) for v in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise GanxError(f"--mca-shape must be ROWSxCOLS, got {text!r}") from None
    return r, c


def _open(path: str, dataset=None, calibration=None, mca_shape=None, opt="--calibration"):
    from ..readers import open_any

    gain, offset = _calibration(calibration, opt)
    kw = {"gain": gain, "offset": offset}
    suffix = Path(path).suffix.lower()
    if suffix in (".h5", ".hdf5", ".hdf", ".nxs"):
        kw["dataset"] = dataset
    elif dataset is not None:
        raise GanxError(f"--dataset applies to HDF5 inputs only, not {path}")
    if mca_shape is not None:
        kw.update(layout="raster", shape=_shape(mca_shape))
    return open_any(path, **kw)  # a local path or an object-store URL


def default_elements(ds, energy) -> list[tuple[str, str]]:
    """Elements to map: those of the cube's pigments (``pigment`` coordinate, looked up in the
    default library; Z ≥ 11 with a line inside the axis), else the paper's eight."""
    from ..analysis import PAPER_ELEMENTS, default_line, parse_element

    found: list[int] = []
    names = [str(p) for p in ds["pigment"].values] if "pigment" in ds.coords else []
    if names:
        try:
            from ..pigments import default_library
            from ..pigments.physics import element_mass_fractions

            lib = default_library()
            for n in names:
                if n in lib and lib[n].composition:
                    found += [z for z, w in element_mass_fractions(lib[n].composition).items()
                              if z >= 11 and w > 1e-4]
        except (ImportError, GanxError, KeyError):
            found = []
    out: list[tuple[str, str]] = []
    if found:
        import xraylib

        for z in sorted(set(found)):
            el = xraylib.AtomicNumberToSymbol(z)
            try:
                out.append((el, default_line(el, energy)))
            except GanxError:
                continue
    if not out:
        for spec in PAPER_ELEMENTS:
            try:
                out.append(parse_element(spec, energy))
            except GanxError:
                continue
    return out


def _fmt_attr(v) -> str:
    if isinstance(v, (dict, list)):
        return "`" + json.dumps(v, default=str)[:400] + "`"
    return f"`{v}`"


def _formats(spec: str | None) -> list[str]:
    from ..plotting import FORMATS

    fmts = [f.strip().lower().lstrip(".") for f in (spec or "png").split(",") if f.strip()]
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise GanxError(f"--format: unknown figure format {', '.join(bad) or spec!r}; choose "
                        f"from {', '.join(FORMATS)}")
    return list(dict.fromkeys(fmts))


def line_table(spec, specs, energy, *, width=None, instrument=None) -> list[dict]:
    """Per requested (element, line): :func:`~ganx_dask.analysis.line_peak` plus ``present``
    and ``overlaps`` (lines of the other *present* elements within the detector FWHM)."""
    from ..analysis import line_overlaps, line_peak, line_present

    rows = []
    for el, ln in specs:
        try:
            row = line_peak(spec, el, ln, width=width, instrument=instrument)
        except GanxError:  # line outside the axis
            continue
        row["present"] = line_present(row)
        rows.append(row)
    present = {r["element"] for r in rows if r["present"]}
    for r in rows:
        r["overlaps"] = line_overlaps(r["element"], r["line"], energy, elements=present,
                                      instrument=instrument)
    return rows


def inspect_store(ds, outdir: Path, *, elements=None, width=None, formats=("png",),
                  dpi: int = 150, map_scale: str = "panel"):
    """Draw the inspection figures of ``ds`` into ``outdir``.

    Element maps: with ``elements=None`` those of the cube's pigments whose line stands above
    noise in the sum spectrum (:func:`~ganx_dask.analysis.line_present`); with ``elements``
    exactly those.  A map whose line is not resolved from a line of another present element
    is titled with the overlap.

    Returns ``(figure file names, element maps, sum spectrum, line table)`` (maps and spectrum
    computed; the line table as from :func:`line_table`).
    """
    import dask

    from .. import plotting
    from ..analysis import element_maps, flatten, parse_element, sum_spectrum

    energy = ds["energy"].values
    if elements is None:
        specs = default_elements(ds, energy)
        skip = True
    else:
        specs = [parse_element(s.strip(), energy) for s in elements.split(",") if s.strip()]
        skip = False
    instrument = ds.xrf._instrument(None)
    maps = element_maps(ds, specs, width=width, skip_missing=skip, instrument=instrument)
    spec = sum_spectrum(ds)
    maps, spec = dask.compute(maps, spec)  # one pass over the cube for both
    table = line_table(spec, specs, energy, width=width, instrument=instrument)
    shown = [f"{r['element']} {r['line']}" for r in table if r["present"] or elements]
    notes = {}
    for r in table:
        if r["overlaps"]:
            notes[f"{r['element']} {r['line']}"] = "⚠ unresolved from " + ", ".join(
                plotting._pretty_line(f"{el} {ln}") for el, ln, _ in r["overlaps"][:2])
    px = ds["x"].attrs.get("pixel_size") if "x" in ds.coords else None
    files: list[str] = []

    def out(fig, stem):
        for f in formats:
            plotting.save(fig, outdir / f"{stem}.{f}", dpi)
            files.append(f"{stem}.{f}")

    if shown:
        out(plotting.element_map_grid(maps.sel(element=shown), ncols=5, scale=map_scale,
                                      notes=notes, pixel_size=px,
                                      title="element maps (lines above noise)" if elements is None
                                      else "element maps"), "element_maps")
    lines = [(r["element"], r["line"]) for r in table if r["present"] or elements]
    out(plotting.sum_spectra({"sum spectrum": spec}, lines=lines, normalise=False),
        "sum_spectrum")
    out(plotting.flattened_image(flatten(ds), title="flattened cube (pixel × energy)"),
        "flattened")
    if all(v in ds for v in ("rgb", "labels", "cluster_rgb")):
        clustering = ds.xrf.meta.get("clustering")
        k = clustering.get("k") if isinstance(clustering, dict) else None
        out(plotting.rgb_comparison(ds["rgb"], ds["labels"], ds["cluster_rgb"], k=k), "rgb")
    if "abundance" in ds:
        out(plotting.abundance_heatmap(
            ds["abundance"], cluster_rgb=ds["cluster_rgb"] if "cluster_rgb" in ds else None,
            title="ground-truth pigment abundance"), "abundance")
    return files, maps, spec, table


def write_inspect_report(ds, source: str, outdir: Path, files, maps, spec,
                         table=None) -> Path:
    """``report.md``: what was inspected, with which parameters, and the figures."""
    import numpy as np

    c = ds["counts"]
    total = float(np.asarray(spec.values).sum())
    lines = [
        f"# ganx-dask inspect: `{source}`",
        "",
        f"Generated {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')} by "
        f"ganx-dask {_version()}.",
        "",
        "## Cube",
        "",
        "| property | value |",
        "|---|---|",
        f"| shape (y, x, energy) | {c.sizes['y']} × {c.sizes['x']} × {c.sizes['energy']} |",
        f"| dtype | {c.dtype} |",
        f"| chunks | {tuple(c.data.chunksize) if hasattr(c.data, 'chunksize') else 'in memory'} |",
        f"| energy | {float(ds['energy'][0]):.4f} – {float(ds['energy'][-1]):.4f} keV (channel "
        "centres) |",
        f"| total counts | {total:.0f} |",
        f"| mean counts per pixel | {total / max(1, c.sizes['y'] * c.sizes['x']):.2f} |",
        f"| complete | {ds.attrs.get('complete', 'n/a')} |",
        "",
        "## Element maps",
        "",
        "Window: ±1 detector FWHM around the xraylib line energy unless `--width` was given. "
        "Net counts: window minus a baseline from side bands of the same width; *z* = net / σ "
        "(Poisson). A line is above noise when z ≥ 5 and net ≥ 10 % of the window; only those "
        "are drawn unless `--elements` was given. *Overlaps*: lines of other present elements "
        "closer than the detector FWHM — that map also shows them.",
        "",
        "| map | line energy (keV) | counts | fraction of all counts | net | z | above noise "
        "| overlaps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    tot_maps = np.asarray(maps.sum(("y", "x")).values, dtype=float)
    rows = {f"{r['element']} {r['line']}": r for r in table or []}
    for name, en, t in zip(maps["element"].values, maps["line_energy"].values, tot_maps,
                           strict=True):
        r = rows.get(str(name))
        extra = ("| | | | " if r is None else
                 f"| {r['net']:.0f} | {r['z']:.1f} | {'yes' if r['present'] else 'no'} | "
                 + ", ".join(f"{el} {ln} ({e:.3f} keV)" for el, ln, e in r["overlaps"]) + " ")
        lines.append(f"| {name} | {en:.3f} | {t:.0f} | {t / total if total else 0:.4f} "
                     + extra + "|")
    if maps.attrs.get("skipped"):
        lines += ["", f"Skipped (line outside the energy axis): {', '.join(maps.attrs['skipped'])}"]
    lines += ["", "## Figures", ""]
    shown = [f for f in files if f.endswith(".png")] or [f for f in files if f.endswith(".svg")]
    lines += [f"![{f}]({f})" for f in shown]
    other = [f for f in files if f not in shown]
    if other:
        lines += ["", "Also: " + ", ".join(f"[{f}]({f})" for f in other)]
    lines += ["", "## Parameters and provenance", "", "| attribute | value |", "|---|---|"]
    for k, v in ds.xrf.meta.items():
        lines.append(f"| {k} | {_fmt_attr(v)} |")
    path = outdir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _version() -> str:
    from .._version import __version__

    return __version__


def _run_inspect(args) -> int:
    from .._staging import staged_output
    from ..scheduling import scheduler_context
    from ..storage import local_path

    output = local_path(args.output, "the report")
    fmts = _formats(args.format)
    if not 10 <= args.dpi <= 2400:
        raise GanxError(f"--dpi must be between 10 and 2400, got {args.dpi}")
    # output problems surface before any work; the directory appears only when complete
    with staged_output(output, args.overwrite) as tmp, scheduler_context(args.scheduler):
        ds = _open(args.store, args.dataset, args.calibration, args.mca_shape)
        files, maps, spec, table = inspect_store(ds, tmp, elements=args.elements,
                                                 width=args.width, formats=fmts, dpi=args.dpi,
                                                 map_scale=args.map_scale)
        write_inspect_report(ds, args.store, tmp, files, maps, spec, table)
    print(f"wrote {output}/report.md and {len(files)} figures: {', '.join(files)}")
    return 0


def format_compare(res: dict, name_a: str, name_b: str) -> str:
    """The result of :func:`ganx_dask.analysis.compare` as a Markdown table."""
    from ..metrics import DISTANCES

    rows = [f"A: {name_a}  {res['shape_a']}", f"B: {name_b}  {res['shape_b']}",
            f"energy axis: {res['energy_axis']}" + (" (rebinned)" if res["rebinned"] else ""),
            "", "| metric | value | better |", "|---|---|---|"]
    for k, v in res["spectral"].items():
        rows.append(f"| {k} | {v:.4f} | {'lower' if k in DISTANCES else 'higher'} |")
    for k in ("ssim", "ms_ssim"):
        v = res.get(k)
        rows.append(f"| {k.upper().replace('_', '-')} | "
                    f"{'n/a' if v is None else f'{v:.4f}'} | higher |")
    rows += [f"note: {n}" for n in res.get("notes", [])]
    return "\n".join(rows)


def _run_compare(args) -> int:
    from .. import plotting
    from .._staging import staged_output
    from ..analysis import compare, flatten, sum_spectrum
    from ..scheduling import scheduler_context

    staging = (staged_output(args.output, args.overwrite) if args.output
               else contextlib.nullcontext(None))
    with staging as tmp, scheduler_context(args.scheduler):
        a = _open(args.a, args.dataset, args.calibration, args.mca_shape)
        b = _open(args.b, args.dataset, args.calibration_b or args.calibration,
                  args.mca_shape, opt="--calibration-b")
        res = compare(a, b, energy=args.energy, spectral_only=args.spectral_only)
        res["a"], res["b"] = str(args.a), str(args.b)
        if tmp is not None:
            plotting.sum_spectra({"A": sum_spectrum(a), "B": sum_spectrum(b)},
                                 path=tmp / "sum_spectra.png", title="normalised sum spectra")
            plotting.flattened_image(flatten(a), title="A (flattened)",
                                     path=tmp / "flattened_a.png")
            plotting.flattened_image(flatten(b), title="B (flattened)",
                                     path=tmp / "flattened_b.png")
            (tmp / "compare.json").write_text(json.dumps(res, indent=2) + "\n")
    if args.json:
        json.dump(res, sys.stdout, indent=2)
        print()
    else:
        print(format_compare(res, args.a, args.b))
    return 0


def _run_paper(args) -> int:
    from ..pipelines.paper import run_paper
    from ..scheduling import scheduler_context

    with scheduler_context(args.scheduler):
        result = run_paper(args.config, output=args.output, small=args.small,
                           overwrite=args.overwrite)
    print(f"wrote {result['output']}: tables.md, tables.json and {len(result['figures'])} figures")
    return 0
