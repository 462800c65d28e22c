"""``ganx-dask pigments ...``: list, show, add, export and import pigment libraries.

Sub-commands
------------
``list``      table of the library (name, colour, formula/composition, density); ``--json``.
``show NAME`` composition, colour, elements and their main X-ray lines (xraylib energies);
              ``--plot FILE.png`` draws the spectrum (log y) with the lines labelled.
``add NAME``  add a pigment by formula to a user library file (created if missing).
``export``    write a library in our JSON format or as a ganX database (ganx 0.0.2).
``import``    convert a ganX database into a user library file.

Every command works on the bundled default library unless ``--library FILE`` names a user
library (our JSON format or a ganX database JSON; the kind is detected).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from ..energy import DEFAULT_ENERGY, as_energy_axis
from ..errors import PigmentError

__all__ = ["register", "main_lines", "plot_pigment_spectrum"]

#: Lines listed by ``show`` (Siegbahn label, xraylib macro name, shell whose edge must be excited).
_LINES = (
    ("Ka1", "KA1_LINE", "K_SHELL"),
    ("Kb1", "KB1_LINE", "K_SHELL"),
    ("La1", "LA1_LINE", "L3_SHELL"),
    ("Lb1", "LB1_LINE", "L2_SHELL"),
    ("Ma1", "MA1_LINE", "M5_SHELL"),
)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _load(args) -> object:
    """The library named by ``--library`` or the bundled default one."""
    path = getattr(args, "library", None)
    if path:
        from ..pigments.formats import load_library

        return load_library(path)
    try:
        from ..pigments.library import default_library
    except ImportError as exc:  # pragma: no cover - library module not built yet
        raise PigmentError(f"the default pigment library is not available ({exc}); "
                           f"pass --library FILE") from None
    return default_library()


def _hex(rgb) -> str:
    return "#{:02X}{:02X}{:02X}".format(*rgb)


def _composition_text(p, limit: int = 3) -> str:
    if p.formula:
        return p.formula
    if p.composition:
        items = sorted(p.composition.items(), key=lambda kv: -kv[1])
        text = " + ".join(f"{f} {100 * w:.0f}%" for f, w in items[:limit])
        return text + (" + ..." if len(items) > limit else "")
    return "measured spectrum"


def _parse_rgb(text: str) -> tuple[int, int, int]:
    s = text.strip()
    try:
        if s.startswith("#") and len(s) == 7:
            vals = [int(s[i:i + 2], 16) for i in (1, 3, 5)]
        else:
            vals = [int(v) for v in s.replace(" ", "").split(",")]
    except ValueError:
        vals = []
    if len(vals) != 3 or not all(0 <= v <= 255 for v in vals):
        raise PigmentError(f"--rgb: expected R,G,B (integers 0-255) or #RRGGBB, got {text!r}")
    return vals[0], vals[1], vals[2]


def _parse_formula(text: str) -> str | dict[str, float]:
    """``"HgS"`` or a mix ``"FeO(OH):0.4,Al2Si2O5(OH)4:0.6"`` (mass fractions)."""
    if ":" not in text:
        return text.strip()
    mix = {}
    for part in text.split(","):
        f, sep, w = part.rpartition(":")
        try:
            mix[f.strip()] = float(w)
        except ValueError:
            f = ""
        if not sep or not f.strip():
            raise PigmentError(f"--formula: expected FORMULA or FORMULA:FRACTION,... "
                               f"(mass fractions), got {part!r}")
    return mix


def main_lines(pigment, energy=DEFAULT_ENERGY, instrument=None) -> list[dict]:
    """Main characteristic lines of a pigment's elements inside the energy range.

    Line energies are xraylib's (``LineEnergy``); a line is listed when it lies inside the axis and
    the instrument's tube voltage excites its shell.

    Parameters
    ----------
    pigment : Pigment
    energy : EnergyAxis, str or array-like
        Energy axis (keV).
    instrument : Instrument, str or None
        For the tube voltage (kV); default preset when ``None``.

    Returns
    -------
    list of dict
        ``{"element", "line", "energy_keV", "mass_fraction", "layer"}`` sorted by energy;
        ``layer`` is ``"paint"`` or the ground layer's name.
    """
    import xraylib as xl

    from ..pigments.physics import element_mass_fractions

    ax = as_energy_axis(energy)
    edges = ax.edges if hasattr(ax, "edges") else ax
    lo, hi = float(edges[0]), float(edges[-1])
    kv = _instrument(instrument).kv
    layers = []
    if pigment.composition:
        layers.append(("paint", pigment.composition))
    layers += [(g.name or f"ground {i}", g.composition) for i, g in enumerate(pigment.ground)]
    out = []
    for layer, comp in layers:
        for z, frac in element_mass_fractions(comp, where=f"pigment {pigment.name!r}").items():
            for label, macro, shell in _LINES:
                try:
                    e = xl.LineEnergy(int(z), getattr(xl, macro))
                    edge = xl.EdgeEnergy(int(z), getattr(xl, shell))
                except ValueError:
                    continue
                if lo <= e <= hi and edge < kv:
                    out.append({"element": xl.AtomicNumberToSymbol(int(z)), "line": label,
                                "energy_keV": float(e), "mass_fraction": float(frac),
                                "layer": layer})
    return sorted(out, key=lambda d: d["energy_keV"])


def _instrument(instrument):
    from ..pigments.physics import Instrument

    if instrument is None:
        return Instrument.preset("lab-rh")
    if isinstance(instrument, str):
        return Instrument.preset(instrument)
    return instrument


def _check_plot_path(path: Path, overwrite: bool) -> None:
    """Raise before any work if ``path`` cannot receive a plot (format, existing file, folder)."""
    from matplotlib.figure import Figure

    from ..errors import StoreExistsError

    supported = Figure().canvas.get_supported_filetypes()
    if path.suffix.lower().lstrip(".") not in supported:
        raise PigmentError(f"{path}: unsupported plot format {path.suffix!r} "
                           f"(use one of {', '.join(sorted(supported))})")
    if path.exists() and (path.is_dir() or not overwrite):
        raise StoreExistsError(f"{path}: exists (pass --overwrite to replace it)"
                               if not path.is_dir() else f"{path}: is a directory")
    if not path.parent.is_dir():
        what = "is not a folder" if path.parent.exists() else "does not exist"
        raise PigmentError(f"{path}: folder {path.parent} {what}")


def plot_pigment_spectrum(pigment, path: str | os.PathLike, energy=DEFAULT_ENERGY,
                          instrument=None, *, overwrite: bool = False) -> Path:
    """Save a log-y plot of a pigment's spectrum with its main lines labelled (matplotlib Agg).

    Parameters
    ----------
    pigment : Pigment
    path : str or path-like
        Output image (any format matplotlib writes, e.g. ``.png``); written atomically.
    energy : EnergyAxis, str or array-like
        Energy axis, keV.
    instrument : Instrument, str or None
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    pathlib.Path
    """
    from matplotlib.figure import Figure

    from .._staging import atomic_file

    path = Path(path)
    ax_e = as_energy_axis(energy)
    edges = ax_e.edges if hasattr(ax_e, "edges") else ax_e
    centres = 0.5 * (edges[1:] + edges[:-1])
    y = pigment.spectrum(ax_e, instrument)
    lines = main_lines(pigment, ax_e, instrument) if pigment.composition else []

    _check_plot_path(path, overwrite)
    fig = Figure(figsize=(9, 4.8), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    positive = y[y > 0]
    floor = positive.min() if positive.size else 1e-12
    ax.step(centres, np.maximum(y, floor), where="mid", color=np.array(pigment.rgb) / 255 * 0.8,
            lw=1.0)
    ax.set_yscale("log")
    ax.set_ylim(max(floor, y.max() * 1e-6), y.max() * 3)
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel("energy (keV)")
    ax.set_ylabel("probability per channel")
    inst_name = getattr(_instrument(instrument), "name", "") if pigment.composition else ""
    ax.set_title(f"{pigment.name} - {_composition_text(pigment)}"
                 + (f" ({inst_name})" if inst_name else ""))
    greek = {"Ka1": "Kα", "Kb1": "Kβ", "La1": "Lα", "Lb1": "Lβ", "Ma1": "Mα"}
    seen = set()
    for ln in lines:
        label = f"{ln['element']} {greek.get(ln['line'], ln['line'])}"
        i = int(np.clip(np.searchsorted(edges, ln["energy_keV"]) - 1, 0, y.size - 1))
        h = y[max(i - 1, 0):i + 2].max()
        if h < y.max() * 1e-4 or label in seen:
            continue
        seen.add(label)
        ax.axvline(ln["energy_keV"], color="0.6", lw=0.5, ls=":")
        ax.annotate(label, (ln["energy_keV"], h), xytext=(0, 4),
                    textcoords="offset points", rotation=90, ha="center", va="bottom",
                    fontsize=7)
    atomic_file(path, overwrite=overwrite,
                   write=lambda tmp: fig.savefig(tmp, format=path.suffix[1:].lower()))
    return path


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------
def _cmd_list(args) -> int:
    lib = _load(args)
    rows = [
        {
            "name": p.name,
            "hex": _hex(p.rgb),
            "rgb": list(p.rgb),
            "formula": p.formula,
            "composition": None if p.composition is None else dict(p.composition),
            "density_g_cm3": p.density,
            "thickness_um": p.thickness_um,
            "aliases": list(p.aliases),
            "measured": p.measured is not None,
        }
        for p in lib
    ]
    if args.json:
        json.dump({"library": lib.name, "version": lib.version, "pigments": rows}, sys.stdout,
                  indent=1, ensure_ascii=False)
        print()
        return 0
    table = [(r["name"], r["hex"], _composition_text(p),
              "" if r["density_g_cm3"] is None else f"{r['density_g_cm3']:.2f}")
             for r, p in zip(rows, lib, strict=True)]
    head = ("name", "colour", "formula / composition", "density g/cm³")
    widths = [max(len(head[i]), *(len(t[i]) for t in table)) if table else len(head[i])
              for i in range(4)]
    print(f"library {lib.name!r} version {lib.version}: {len(lib)} pigments")
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:3]) + f"  {{:>{widths[3]}}}"
    print(fmt.format(*head))
    print(fmt.format(*("-" * w for w in widths)))
    for t in table:
        print(fmt.format(*t))
    return 0


def _cmd_show(args) -> int:
    lib = _load(args)
    try:
        p = lib[args.name]
    except KeyError:
        raise PigmentError(f"no pigment {args.name!r} in library {lib.name!r} "
                           f"(see `ganx-dask pigments list`)") from None
    energy = as_energy_axis(args.energy)
    # one instrument for the spectrum, the line table and the plot: --instrument, else the
    # library's reference instrument
    instrument = args.instrument if args.instrument else lib.instrument
    # everything that can fail is checked before anything is printed
    y = p.spectrum(energy, instrument)
    if args.plot:
        _check_plot_path(Path(args.plot), args.overwrite)
    print(p.name + (f"  (aliases: {', '.join(p.aliases)})" if p.aliases else ""))
    print(f"  colour       {_hex(p.rgb)}  RGB {tuple(p.rgb)}"
          + (f"  source: {p.rgb_source}" if p.rgb_source else ""))
    if p.formula:
        print(f"  formula      {p.formula}")
    if p.composition:
        import xraylib as xl

        from ..pigments.physics import element_mass_fractions

        comp = ", ".join(f"{f} {100 * w:.1f}%" for f, w in p.composition.items())
        print(f"  composition  {comp} (mass)")
        el = element_mass_fractions(p.composition, where=f"pigment {p.name!r}")
        print("  elements     " + ", ".join(
            f"{xl.AtomicNumberToSymbol(z)} {100 * w:.1f}%"
            for z, w in sorted(el.items(), key=lambda kv: -kv[1])))
        print(f"  density      {p.density:g} g/cm³")
        print("  thickness    " + ("infinite" if p.thickness_um is None
                                   else f"{p.thickness_um:g} µm"))
    for g in p.ground:
        comp = ", ".join(f"{f} {100 * w:.0f}%" for f, w in g.composition.items())
        thick = "infinite" if g.thickness_um is None else f"{g.thickness_um:g} µm"
        print(f"  ground       {g.name or 'layer'}: {comp}, {g.density:g} g/cm³, {thick}")
    if p.measured is not None:
        m = p.measured
        print(f"  measured     {m.counts.size} channels, {m.edges[0]:.3f}-{m.edges[-1]:.3f} keV, "
              f"{m.counts.sum():.6g} counts; {m.source}")
    if p.provenance:
        print(f"  provenance   {json.dumps(p.provenance, ensure_ascii=False, default=str)}")

    edges = energy.edges if hasattr(energy, "edges") else energy
    if p.composition:
        inst = _instrument(instrument)
        lines = main_lines(p, energy, inst)
        print(f"  main lines   (xraylib energies; tube {inst.kv:g} kV; axis {energy}; "
              f"'peak' = channel height / spectrum maximum)")
        print(f"    {'element':<8}{'line':<6}{'energy keV':>11}{'peak':>9}  layer")
        for ln in lines:
            i = int(np.clip(np.searchsorted(edges, ln["energy_keV"]) - 1, 0, y.size - 1))
            print(f"    {ln['element']:<8}{ln['line']:<6}{ln['energy_keV']:>11.3f}"
                  f"{100 * y[i] / y.max():>8.1f}%  {ln['layer']}")
        if not lines:
            print("    (no characteristic lines in range: scatter only)")
    else:
        from scipy.signal import find_peaks

        idx, props = find_peaks(y, prominence=y.max() * 0.02)
        order = idx[np.argsort(-props["prominences"])][:8]
        centres = 0.5 * (edges[1:] + edges[:-1])
        print("  main peaks   " + (", ".join(f"{centres[i]:.3f} keV" for i in sorted(order))
                                   or "(none)"))
    if args.plot:
        out = plot_pigment_spectrum(p, args.plot, energy, instrument,
                                    overwrite=args.overwrite)
        print(f"wrote {out}")
    return 0


def _cmd_add(args) -> int:
    from ..pigments.formats import read_library, write_library
    from ..pigments.model import Layer, Pigment, PigmentLibrary

    path = Path(args.library)
    formula = _parse_formula(args.formula)
    rgb = _parse_rgb(args.rgb)
    if not (args.density > 0 and np.isfinite(args.density)):
        raise PigmentError(f"--density: must be > 0 g/cm³, got {args.density}")
    if args.thickness_um is not None and not (args.thickness_um > 0):
        raise PigmentError(f"--thickness-um: must be > 0 µm, got {args.thickness_um}")
    if args.ground and not (args.ground_density > 0 and np.isfinite(args.ground_density)):
        raise PigmentError(f"--ground-density: must be > 0 g/cm³, got {args.ground_density}")
    ground = ()
    if args.ground:
        gform = _parse_formula(args.ground)
        from ..pigments.physics import validate_composition

        gcomp = {gform: 1.0} if isinstance(gform, str) else gform
        validate_composition(gcomp, where="--ground")
        ground = (Layer(gcomp, args.ground_density, None, "ground"),)
    pigment = Pigment.from_formula(
        args.name, formula, rgb, density=args.density, thickness_um=args.thickness_um,
        ground=ground, aliases=tuple(args.alias or ()), rgb_source=args.rgb_source,
        provenance={"model": "ganx_dask.pigments.physics", "added_by": "ganx-dask pigments add"},
    )
    if path.exists():
        lib = read_library(path)
    else:
        lib = PigmentLibrary(name=path.stem, version="1", description="user pigment library")
    try:
        lib.add(pigment)
    except PigmentError as exc:
        raise PigmentError(f"{path}: {exc}") from None
    write_library(lib, path, overwrite=True)
    print(f"added {pigment.name!r} to {path} ({len(lib)} pigments)")
    return 0


def _cmd_export(args) -> int:
    from ..pigments.formats import write_ganx_database, write_library

    lib = _load(args)
    if args.format == "json":
        out = write_library(lib, args.output, overwrite=args.overwrite)
    else:
        out = write_ganx_database(lib, args.output, energy=args.energy or "0.5:38.5:2048",
                                  instrument=args.instrument, overwrite=args.overwrite)
    print(f"wrote {len(lib)} pigments to {out}")
    return 0


def _cmd_import(args) -> int:
    from ..pigments.formats import read_ganx_database, write_library

    lib = read_ganx_database(args.database, energy=args.energy, name=args.name)
    out = write_library(lib, args.output, overwrite=args.overwrite)
    print(f"imported {len(lib)} pigments from {args.database} into {out}")
    return 0


# ---------------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------------
class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except for options without one."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.required:
            return action.help
        return super()._get_help_string(action)


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``pigments`` command group to the top-level sub-parsers."""
    fmt = _HelpFormatter
    parser = subparsers.add_parser(
        "pigments", help="list, show, add, export and import pigment libraries",
        description=__doc__.split("\n\n")[0], formatter_class=fmt)
    sub = parser.add_subparsers(dest="pigments_command", metavar="ACTION")
    sub.required = True

    def lib_opt(p):
        p.add_argument("--library", metavar="FILE",
                       help="user library (ganx-dask JSON or ganX database JSON) instead of the "
                            "bundled default")

    p = sub.add_parser("list", help="table of the pigments", formatter_class=fmt)
    lib_opt(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("show", help="composition, colour and main lines of one pigment",
                       formatter_class=fmt)
    p.add_argument("name", metavar="NAME", help="pigment name or alias (case-insensitive)")
    lib_opt(p)
    p.add_argument("--energy", default=DEFAULT_ENERGY, metavar="START:STOP:N",
                   help="energy axis: lower/upper edge (keV) and number of channels")
    p.add_argument("--instrument", default=None, metavar="PRESET",
                   help="instrument preset for computed spectra (e.g. lab-rh, portable-ag); "
                        "default: the library's reference instrument")
    p.add_argument("--plot", metavar="FILE.png", help="save a log-y spectrum plot here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --plot file")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("add", help="add a pigment by formula to a user library file",
                       formatter_class=fmt)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--formula", required=True,
                   help="chemical formula (hydrates as CaSO4·2H2O or CaSO4*2H2O), or a mix "
                        "'FORMULA:FRACTION,...' of mass fractions")
    p.add_argument("--rgb", required=True, metavar="R,G,B", help="8-bit sRGB colour or #RRGGBB")
    p.add_argument("--density", required=True, type=float, help="paint-layer density, g/cm³")
    p.add_argument("--thickness-um", type=float, default=None,
                   help="paint-layer thickness, µm (default: infinitely thick)")
    p.add_argument("--ground", default=None, metavar="FORMULA",
                   help="an infinitely thick ground below the paint (e.g. CaSO4*2H2O)")
    p.add_argument("--ground-density", type=float, default=2.3, help="ground density, g/cm³")
    p.add_argument("--alias", action="append", metavar="NAME", help="another name (repeatable)")
    p.add_argument("--rgb-source", default="user", help="where the colour comes from")
    p.add_argument("--library", required=True, metavar="USER.json",
                   help="user library file (created if missing; names must be unique)")
    p.set_defaults(func=_cmd_add)

    p = sub.add_parser("export", help="write a library as ganx-dask JSON or a ganX database",
                       formatter_class=fmt)
    lib_opt(p)
    p.add_argument("--format", choices=("json", "ganx"), default="json",
                   help="json: our library format; ganx: folder with JSON + HDF5 for ganx 0.0.2")
    p.add_argument("-o", "--output", required=True, metavar="PATH",
                   help="output file (json) or folder (ganx)")
    p.add_argument("--energy", default=None, metavar="START:STOP:N",
                   help="energy axis of ganX spectra (default 0.5:38.5:2048)")
    p.add_argument("--instrument", default=None, metavar="PRESET",
                   help="instrument preset for the ganX spectra")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("import", help="convert a ganX database into a user library file",
                       formatter_class=fmt)
    p.add_argument("database", metavar="GANX.json",
                   help="ganX database: {name: {'RGB': [r,g,b], 'xrf': 'file.h5'}}")
    p.add_argument("-o", "--output", required=True, metavar="USER.json")
    p.add_argument("--energy", default=None, metavar="START:STOP:N",
                   help="rebin the spectra onto this axis at import (default: keep channels)")
    p.add_argument("--name", default=None, help="library name (default: the file name)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=_cmd_import)
    return parser
