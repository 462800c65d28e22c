"""The bundled default pigment library (``ganx-dask-default``).

The definitions below (composition, density, colour and its source) are the single source of
truth; ``scripts/build_default_library.py`` computes every pigment's spectrum components for the
reference instrument (the ``"lab-rh"`` preset) with :mod:`ganx_dask.pigments.physics` and writes
``ganx_dask/pigments/data/default_library.json`` (format: :mod:`ganx_dask.pigments.formats`).
:func:`default_library` reads that file (no xraylib call, no network) and caches it.

Colours
-------
8-bit sRGB, **approximate**: no colorimetric measurement of reference paint-outs was available
when the library was made.  Each pigment's ``rgb_source`` says which kind of value it is:

* ``CSS``: a named colour of the W3C CSS Color Module Level 4 (a published standard colour, chosen
  because its name is the pigment's or its hue matches the pigment's masstone).
* ``Wikipedia``: the hex value in the infobox of the Wikipedia colour article of that name (a
  conventional web rendering of the pigment colour, not a measurement; values quoted from the
  articles as recalled by the library's author, Nov 2026 — check before relying on them).
* ``estimate``: the author's approximation of the masstone of the pigment in oil/egg on a white
  ground, from descriptions in the conservation literature (e.g. *Artists' Pigments*, vols. 1–4).

Replace them with measured values (``PigmentLibrary.add`` / a user library file) when colour
fidelity matters.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

from ..errors import PigmentError
from .model import Layer, Pigment, PigmentLibrary

__all__ = [
    "DEFAULT_LIBRARY_NAME",
    "DEFAULT_LIBRARY_VERSION",
    "PAPER_PIGMENTS",
    "PIGMENT_DEFINITIONS",
    "build_default_library",
    "default_library",
    "default_library_path",
    "resolve_library",
    "select_pigments",
]

DEFAULT_LIBRARY_NAME = "ganx-dask-default"
DEFAULT_LIBRARY_VERSION = "2026.12.1"

#: The nine pigments of the ganX paper, in the paper's order.
PAPER_PIGMENTS: tuple[str, ...] = (
    "minium", "vermilion", "red lake", "lead-tin yellow I", "natural ultramarine", "azurite",
    "indigo", "malachite", "chalk",
)

_WP = "Wikipedia colour article '{}' ({}); conventional web colour, approximate, not a measurement"
_CSS = "W3C CSS Color Module Level 4 named colour '{}' ({}); approximate stand-in for the masstone"
_EST = "estimate: author's approximation of the masstone ({}); not a measurement"

_GYPSUM = {"CaSO4·2H2O": 1.0}
_KAOLIN = "Al2Si2O5(OH)4"
_BOLE = {_KAOLIN: 0.80, "Fe2O3": 0.15, "SiO2": 0.05}


def _layers_gilding() -> tuple[Layer, ...]:
    return (
        Layer({_KAOLIN: 0.80, "Fe2O3": 0.15, "SiO2": 0.05}, 2.6, 20.0, "red bole"),
        Layer(dict(_GYPSUM), 2.32, None, "gypsum gesso"),
    )


# name, aliases, composition (formula or mass-fraction mix), density g/cm³, rgb, rgb source,
# optional (thickness_um, ground layers)
PIGMENT_DEFINITIONS: tuple[dict, ...] = (
    # ---- the paper's nine ----------------------------------------------------------------
    dict(name="minium", aliases=("lead red", "red lead"), formula="Pb3O4", density=8.9,
         rgb=(226, 88, 34), rgb_source=_EST.format("orange-red")),
    dict(name="vermilion", aliases=("cinnabar",), formula="HgS", density=8.1,
         rgb=(227, 66, 52), rgb_source=_WP.format("Vermilion", "#E34234")),
    dict(name="red lake", aliases=("organic red dye", "madder lake"),
         composition={"Al(OH)3": 0.80, "KAl(SO4)2·12H2O": 0.08, "C14H8O4": 0.12}, density=1.8,
         rgb=(227, 38, 54), rgb_source=_WP.format("Alizarin crimson", "#E32636")
         + "; organic dye (alizarin, C14H8O4) on an alum/aluminium hydroxide substrate"),
    dict(name="lead-tin yellow I", aliases=("lead tin yellow type I",), formula="Pb2SnO4",
         density=8.0, rgb=(238, 214, 98), rgb_source=_EST.format("lemon yellow")),
    dict(name="natural ultramarine", aliases=("ultramarine", "lapis lazuli"),
         composition={"Na8Al6Si6O24S3": 0.85, "CaCO3": 0.10, "CaMgSi2O6": 0.05}, density=2.4,
         rgb=(18, 10, 143), rgb_source=_WP.format("Ultramarine", "#120A8F")
         + "; composition: lazurite with calcite and diopside from lapis lazuli"),
    dict(name="azurite", aliases=("blue verditer",), formula="Cu3(CO3)2(OH)2", density=3.8,
         rgb=(38, 84, 160), rgb_source=_EST.format("mid blue, greener and paler than ultramarine")),
    dict(name="indigo", aliases=("indigo dye", "woad"), formula="C16H10N2O2", density=1.2,
         rgb=(0, 65, 106), rgb_source=_WP.format("Indigo dye", "#00416A")),
    dict(name="malachite", aliases=("mountain green",), formula="Cu2CO3(OH)2", density=4.0,
         rgb=(11, 218, 81), rgb_source=_WP.format("Malachite", "#0BDA51")
         + "; the ground pigment is paler"),
    dict(name="chalk", aliases=("chalk white", "calcium carbonate"), formula="CaCO3",
         density=2.71, rgb=(240, 238, 228), rgb_source=_EST.format("warm off-white")),
    # ---- whites ----------------------------------------------------------------------------
    dict(name="lead white", aliases=("flake white", "cremnitz white"), formula="2PbCO3·Pb(OH)2",
         density=6.14, rgb=(250, 249, 242), rgb_source=_EST.format("slightly warm white")),
    dict(name="zinc white", aliases=("chinese white",), formula="ZnO", density=5.6,
         rgb=(254, 254, 250), rgb_source=_EST.format("cool white")),
    dict(name="titanium white", aliases=("rutile",), formula="TiO2", density=4.2,
         rgb=(255, 255, 255), rgb_source=_CSS.format("white", "#FFFFFF")),
    dict(name="gypsum", aliases=("gesso", "gypsum white"), formula="CaSO4·2H2O", density=2.32,
         rgb=(245, 245, 238), rgb_source=_EST.format("off-white")),
    dict(name="lithopone", aliases=(), composition={"ZnS": 0.30, "BaSO4": 0.70}, density=4.3,
         rgb=(248, 248, 246), rgb_source=_EST.format("neutral white")),
    dict(name="barium white", aliases=("blanc fixe", "barite"), formula="BaSO4", density=4.5,
         rgb=(252, 251, 248), rgb_source=_EST.format("neutral white")),
    # ---- blacks ----------------------------------------------------------------------------
    dict(name="bone black", aliases=("ivory black",),
         composition={"Ca5(PO4)3(OH)": 0.80, "C": 0.15, "CaCO3": 0.05}, density=2.3,
         rgb=(32, 30, 28), rgb_source=_EST.format("warm black")),
    dict(name="carbon black", aliases=("lamp black", "soot"), formula="C", density=1.8,
         rgb=(0, 0, 0), rgb_source=_CSS.format("black", "#000000")),
    # ---- earths ----------------------------------------------------------------------------
    dict(name="yellow ochre", aliases=("ochre",),
         composition={"FeO(OH)": 0.40, _KAOLIN: 0.55, "SiO2": 0.04, "TiO2": 0.01}, density=3.0,
         rgb=(204, 119, 34), rgb_source=_WP.format("Ochre", "#CC7722")),
    dict(name="red ochre", aliases=("indian red", "hematite"),
         composition={"Fe2O3": 0.60, _KAOLIN: 0.35, "SiO2": 0.05}, density=3.5,
         rgb=(205, 92, 92), rgb_source=_CSS.format("indianred", "#CD5C5C")),
    dict(name="raw umber", aliases=(),
         composition={"FeO(OH)": 0.45, "MnO2": 0.15, _KAOLIN: 0.30, "SiO2": 0.10}, density=3.2,
         rgb=(130, 102, 68), rgb_source=_WP.format("Raw umber", "#826644")),
    dict(name="burnt umber", aliases=(),
         composition={"Fe2O3": 0.50, "MnO2": 0.16, _KAOLIN: 0.24, "SiO2": 0.10}, density=3.4,
         rgb=(138, 51, 36), rgb_source=_WP.format("Burnt umber", "#8A3324")),
    dict(name="raw sienna", aliases=(),
         composition={"FeO(OH)": 0.55, _KAOLIN: 0.30, "SiO2": 0.13, "MnO2": 0.02}, density=3.1,
         rgb=(214, 138, 89), rgb_source=_WP.format("Raw sienna", "#D68A59")),
    dict(name="burnt sienna", aliases=(),
         composition={"Fe2O3": 0.60, _KAOLIN: 0.25, "SiO2": 0.13, "MnO2": 0.02}, density=3.4,
         rgb=(233, 116, 81), rgb_source=_WP.format("Burnt sienna", "#E97451")),
    dict(name="green earth", aliases=("terre verte", "celadonite"),
         composition={"KMgFeSi4O10(OH)2": 0.85, _KAOLIN: 0.10, "SiO2": 0.05}, density=2.8,
         rgb=(116, 130, 96), rgb_source=_EST.format("greyish olive green")),
    dict(name="red bole", aliases=("armenian bole", "bole"), composition=dict(_BOLE),
         density=2.6, rgb=(150, 70, 50), rgb_source=_EST.format("brownish red")),
    # ---- blues -----------------------------------------------------------------------------
    dict(name="smalt", aliases=(),
         composition={"SiO2": 0.66, "K2O": 0.18, "CoO": 0.10, "As2O3": 0.02, "Fe2O3": 0.02,
                      "Al2O3": 0.02}, density=2.5,
         rgb=(0, 51, 153), rgb_source=_WP.format("Smalt (Dark powder blue)", "#003399")),
    dict(name="cobalt blue", aliases=("thenard's blue",), formula="CoAl2O4", density=4.4,
         rgb=(0, 71, 171), rgb_source=_WP.format("Cobalt blue", "#0047AB")),
    dict(name="cerulean blue", aliases=(), formula="Co2SnO4", density=5.0,
         rgb=(42, 82, 190), rgb_source=_WP.format("Cerulean blue", "#2A52BE")),
    dict(name="prussian blue", aliases=("berlin blue",), formula="Fe4(Fe(CN)6)3·14H2O",
         density=1.8, rgb=(0, 49, 83), rgb_source=_WP.format("Prussian blue", "#003153")),
    dict(name="egyptian blue", aliases=("cuprorivaite",), formula="CaCuSi4O10", density=3.05,
         rgb=(16, 52, 166), rgb_source=_WP.format("Egyptian blue", "#1034A6")),
    dict(name="vivianite", aliases=("blue ochre",), formula="Fe3(PO4)2·8H2O", density=2.7,
         rgb=(70, 90, 120), rgb_source=_EST.format("greyish blue")),
    # ---- greens ----------------------------------------------------------------------------
    dict(name="emerald green", aliases=("paris green", "schweinfurt green"),
         formula="Cu(C2H3O2)2·3Cu(AsO2)2", density=3.3,
         rgb=(80, 200, 120), rgb_source=_WP.format("Emerald", "#50C878")),
    dict(name="verdigris", aliases=("copper acetate",), formula="Cu(C2H3O2)2·H2O", density=1.9,
         rgb=(67, 179, 174), rgb_source=_WP.format("Verdigris", "#43B3AE")),
    dict(name="scheele's green", aliases=("scheeles green",), formula="CuHAsO3", density=3.0,
         rgb=(90, 160, 70), rgb_source=_EST.format("yellowish green")),
    dict(name="viridian", aliases=("hydrated chromium oxide",), formula="Cr2O3·2H2O",
         density=3.3, rgb=(64, 130, 109), rgb_source=_WP.format("Viridian", "#40826D")),
    dict(name="chromium oxide green", aliases=("chrome oxide green",), formula="Cr2O3",
         density=5.2, rgb=(98, 121, 66), rgb_source=_EST.format("opaque olive green")),
    # ---- yellows, oranges, reds ------------------------------------------------------------
    dict(name="orpiment", aliases=("king's yellow",), formula="As2S3", density=3.49,
         rgb=(250, 190, 40), rgb_source=_EST.format("golden yellow")),
    dict(name="realgar", aliases=(), formula="As4S4", density=3.56,
         rgb=(222, 90, 38), rgb_source=_EST.format("orange-red")),
    dict(name="naples yellow", aliases=("lead antimonate yellow",), formula="Pb2Sb2O7",
         density=6.6, rgb=(250, 218, 94), rgb_source=_WP.format("Naples yellow", "#FADA5E")),
    dict(name="chrome yellow", aliases=("lead chromate",), formula="PbCrO4", density=6.1,
         rgb=(255, 167, 0), rgb_source=_WP.format("Chrome yellow", "#FFA700")),
    dict(name="cadmium yellow", aliases=("greenockite",), formula="CdS", density=4.8,
         rgb=(255, 246, 0), rgb_source=_WP.format("Cadmium yellow", "#FFF600")),
    dict(name="cadmium red", aliases=("cadmium selenide red",), formula="CdS0.4Se0.6",
         density=5.0, rgb=(227, 0, 34), rgb_source=_WP.format("Cadmium red", "#E30022")),
    dict(name="lead-tin yellow II", aliases=("lead tin yellow type II",),
         formula="PbSn0.76Si0.24O3", density=6.0,
         rgb=(232, 200, 74), rgb_source=_EST.format("warm yellow, less lemon than type I")),
    dict(name="massicot", aliases=("litharge", "lead monoxide"), formula="PbO", density=9.6,
         rgb=(240, 196, 90), rgb_source=_EST.format("pale orange-yellow")),
    # ---- metals and stratigraphies ---------------------------------------------------------
    dict(name="gold leaf", aliases=("gold", "gilding"), formula="Au", density=19.3,
         rgb=(212, 175, 55), rgb_source=_WP.format("Metallic gold", "#D4AF37"),
         thickness_um=0.2, ground=_layers_gilding),
    dict(name="silver leaf", aliases=("silver",), formula="Ag", density=10.5,
         rgb=(192, 192, 192), rgb_source=_CSS.format("silver", "#C0C0C0"),
         thickness_um=0.3, ground=_layers_gilding),
    dict(name="vermilion on gypsum", aliases=("vermilion over gesso",), formula="HgS",
         density=8.1, rgb=(222, 70, 58),
         rgb_source=_EST.format("vermilion slightly lightened by the gesso"),
         thickness_um=15.0, ground=lambda: (Layer(dict(_GYPSUM), 2.32, None, "gypsum gesso"),)),
)


def _pigment_from_definition(d: dict, provenance: dict) -> Pigment:
    ground = d.get("ground")
    formula = d.get("formula")
    comp = d.get("composition") or formula
    return Pigment.from_formula(
        d["name"], comp, d["rgb"], density=d["density"],
        thickness_um=d.get("thickness_um"),
        ground=ground() if callable(ground) else (),
        aliases=d.get("aliases", ()), rgb_source=d["rgb_source"],
        provenance=dict(provenance),
    )


def build_default_library(instrument=None) -> PigmentLibrary:
    """Compute the default library from :data:`PIGMENT_DEFINITIONS` (needs xraylib).

    Parameters
    ----------
    instrument : Instrument, optional
        Reference instrument of the precomputed components; default the ``"lab-rh"`` preset.

    Returns
    -------
    PigmentLibrary
        Every pigment carries its precomputed components.
    """
    import xraylib

    from .physics import Instrument, compute_components

    inst = instrument if instrument is not None else Instrument.preset("lab-rh")
    prov = {
        "model": "ganx_dask.pigments.physics: primary FP (K, L, M lines, cascade)"
                 + (" + secondary fluorescence within layers" if inst.secondary_fluorescence
                    else "")
                 + ", Rayleigh + Compton scatter, simplified Ebel tube, detector efficiency, "
                   "Si escape",
        "xraylib_version": getattr(xraylib, "__version__", "unknown"),
        "instrument": inst.name,
    }
    pigments = []
    for d in PIGMENT_DEFINITIONS:
        p = _pigment_from_definition(d, prov)
        p._components = compute_components(p, inst)
        pigments.append(p)
    return PigmentLibrary(
        pigments, name=DEFAULT_LIBRARY_NAME, version=DEFAULT_LIBRARY_VERSION, instrument=inst,
        description=(
            "Default ganx-dask pigment library: spectra computed from composition by a "
            "fundamental-parameters model (xraylib "
            f"{prov['xraylib_version']}) for the '{inst.name}' instrument preset; colours are "
            "approximate (see each rgb_source)."
        ),
    )


def default_library_path() -> Path:
    """Path of the bundled data file ``default_library.json``."""
    return Path(str(resources.files("ganx_dask.pigments") / "data" / "default_library.json"))


@lru_cache(maxsize=1)
def _load_default() -> PigmentLibrary:
    from .formats import read_library

    path = default_library_path()
    if not path.is_file():
        raise PigmentError(
            f"bundled pigment library {path} is missing; regenerate it with "
            "scripts/build_default_library.py"
        )
    return read_library(path)


def default_library() -> PigmentLibrary:
    """The bundled default library (>= 40 pigments; spectra precomputed for ``"lab-rh"``).

    Reads ``ganx_dask/pigments/data/default_library.json`` once (no network, no xraylib call) and
    returns a fresh copy each time, so ``.add()`` on the result never changes later calls.

    Returns
    -------
    PigmentLibrary
    """
    return _load_default().copy()


def select_pigments(library: PigmentLibrary | None, names) -> PigmentLibrary:
    """The sub-library of the named pigments (``--pigments`` / a config's ``pigments``).

    Parameters
    ----------
    library : PigmentLibrary or None
        The library (``None``: the default library).
    names : str or sequence of str
        Comma-separated names, a list of names, or ``"paper"`` (the ganX paper's nine pigments,
        :data:`PAPER_PIGMENTS`).

    Raises
    ------
    PigmentError
        No names, or a name that is not in the library (the message lists how to see the names).
    """
    lib = default_library() if library is None else library
    if isinstance(names, str):
        wanted = (list(PAPER_PIGMENTS) if names.strip().lower() == "paper"
                  else [n.strip() for n in names.split(",") if n.strip()])
    else:
        wanted = [str(n).strip() for n in names]
    if not wanted:
        raise PigmentError("--pigments: no pigment names given")
    missing = [n for n in wanted if n not in lib]
    if missing:
        raise PigmentError(
            f"--pigments: {', '.join(repr(m) for m in missing)} not in library {lib.name!r} "
            "(see `ganx-dask pigments list`)"
        )
    return lib.select(wanted)


def resolve_library(library) -> PigmentLibrary:
    """A non-empty :class:`PigmentLibrary` from a library, a library file path or ``None``.

    ``None`` is :func:`default_library`; a path is read with
    :func:`ganx_dask.pigments.formats.load_library` (our JSON or a ganX database).

    Raises
    ------
    PigmentError
        Not a library, an empty library, or an unreadable file (named).
    """
    import os

    if library is None:
        return default_library()
    if isinstance(library, (str, os.PathLike)):
        from .formats import load_library

        library = load_library(library)
    if not isinstance(library, PigmentLibrary):
        raise PigmentError(
            f"library must be a PigmentLibrary or a library file, got {type(library).__name__}"
        )
    if len(library) == 0:
        raise PigmentError(f"pigment library {library.name!r} is empty")
    return library
