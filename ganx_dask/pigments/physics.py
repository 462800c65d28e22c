"""Fundamental-parameters model of a pigment layer's XRF spectrum, built on xraylib.

The model (documented in ``docs/pigments.md``) has four parts:

1. **Tube** (:func:`tube_spectrum`): a simplified Ebel (1999) model — Kramers-type continuum
   ``dN/dE = 1.35e9 · Z · (E0/E − 1)^x`` with anode self-absorption ``f(χ)``, plus K and L
   characteristic lines of the anode (Ebel's ionisation term, backscatter factor, fluorescence
   yields and radiative rates from xraylib), transmitted through the Be window and beam filters.
2. **Sample** (:func:`compute_components`): primary fluorescence of every K, L and M line
   (``CS_FluorLine_Kissel_Cascade``) in a stack of layers (paint over ground), with
   self-absorption of the exciting and emerging radiation in each layer of given or infinite
   thickness and attenuation by the layers above; Rayleigh and Compton scattering (differential
   cross sections ``DCS_Rayl``/``DCS_Compt``) of the tube lines and continuum; air path (both
   ways), detector window and Si-crystal efficiency, exact disc solid angle, Si escape peaks.
3. **Components** (:class:`SpectrumComponents`): the result as lines (energy, intensity, extra
   width) and continuum boxes (``lo``/``hi`` keV, intensity) — JSON-able, instrument-specific but
   independent of the energy axis.
4. **Detector response** (:func:`render`): each line becomes a Gaussian (FWHM from
   :func:`fwhm_kev`) plus a Hypermet-style low-energy exponential tail and a flat shelf; each
   continuum box becomes a box convolved with the Gaussian, in closed form.  Rendering needs numpy
   and scipy only.

Energies are keV, thicknesses µm (``Instrument``, ``Layer``) and densities g/cm³.
"""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from functools import lru_cache
from typing import Any

import numpy as np
import xraylib as xl
import xraylib_np as xn
from scipy.special import log_ndtr, ndtr
from threadpoolctl import ThreadpoolController

from ..energy import axis_edges
from ..errors import ConfigError, EnergyAxisError, PigmentError, check_known_fields

__all__ = [
    "ANODES",
    "PRESETS",
    "Instrument",
    "SpectrumComponents",
    "TubeSpectrum",
    "air_transmission",
    "as_instrument",
    "compute_components",
    "detector_efficiency",
    "element_mass_fractions",
    "fwhm_kev",
    "line_response",
    "parse_formula",
    "pigment_components",
    "pigment_spectrum",
    "render",
    "read_excitation_spectrum",
    "render_many",
    "secondary_geometry",
    "solid_angle_sr",
    "source_spectrum",
    "tube_spectrum",
    "validate_composition",
]

ANODES = ("Rh", "W", "Mo", "Ag", "Cu", "Cr")
_SQRT2 = math.sqrt(2.0)
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))  # 2.3548
_AIR = {7: 0.7553, 8: 0.2318, 18: 0.0128, 6: 0.0001}  # mass fractions (dry air)
_AIR_DENSITY = 0.0012048  # g/cm³ at 20 °C, 1 atm
_SI_DENSITY = 2.33
_BE_DENSITY = 1.848
_SI_KA = 1.7398  # keV
_SI_KB = 1.8359
_SI_K_EDGE = 1.8389


@lru_cache(maxsize=1)
def _controller() -> ThreadpoolController:
    return ThreadpoolController()


def _single_threaded():
    """Context limiting OpenMP (xraylib_np) and BLAS to one thread: on small arrays and a busy
    machine (dask worker threads) their thread teams cost 10-100x the actual work."""
    return _controller().limit(limits=1)


# ------------------------------------------------------------------------------------------
# xraylib line tables
# ------------------------------------------------------------------------------------------
def _build_line_table() -> tuple[np.ndarray, tuple[str, ...], tuple[str, ...]]:
    """All individual radiative lines: xraylib macro, IUPAC name, initial shell."""
    pat = re.compile(r"([KLMNOPQ]\d*)([KLMNOPQ]\d+)")
    found: dict[int, str] = {}
    for n in dir(xl):
        if not n.endswith("_LINE"):
            continue
        v = getattr(xl, n)
        base = n[:-5]
        if isinstance(v, int) and v < 0 and pat.fullmatch(base) and v not in found:
            found[v] = base
    macros = sorted(found, reverse=True)
    names = tuple(found[m] for m in macros)
    shells = tuple(pat.fullmatch(s).group(1) for s in names)
    return np.array(macros, dtype=int), names, shells


_LINE_MACROS, _LINE_NAMES, _LINE_SHELLS = _build_line_table()
_SIEGBAHN = {"KL3": "Ka1", "KL2": "Ka2", "KM3": "Kb1", "KM2": "Kb3", "L3M5": "La1", "L3M4": "La2",
             "L2M4": "Lb1", "L3N5": "Lb2", "L2N4": "Lg1", "M5N7": "Ma1", "M5N6": "Ma2",
             "M4N6": "Mb"}


def _symbol(z: int) -> str:
    return xl.AtomicNumberToSymbol(int(z))


# ------------------------------------------------------------------------------------------
# formulas and compositions
# ------------------------------------------------------------------------------------------
# a "." separating parts: followed by an (optionally decimal) multiplier and water or a bracket,
# or directly by an element symbol; never the decimal point of such a multiplier
# ("CaSO4.0.5H2O" is CaSO4 + 0.5 H2O, not CaSO4.0 + 5 H2O)
_HYDRATE_DOT = re.compile(r"(?<![.·]\d)\.(?=\s*(?:\d*(?:\.\d+)?\s*(?:H2O|\()|[A-Z]))")


def parse_formula(formula: str) -> dict[int, float]:
    """Atoms per formula unit of a chemical formula, hydrates and double salts allowed.

    ``·``, ``•`` and ``*`` always separate parts (``"CaSO4·2H2O"``, ``"2PbCO3*Pb(OH)2"``); ``.``
    separates parts when followed by water, a bracket or an element symbol (``"CaSO4.2H2O"``),
    otherwise it is a decimal point (``"Fe0.5O"``).  A leading integer or decimal multiplies a
    part.  Element symbols are parsed by ``xraylib.CompoundParser``.

    Parameters
    ----------
    formula : str

    Returns
    -------
    dict
        Atomic number -> number of atoms.

    Raises
    ------
    PigmentError
        Unparsable formula or unknown element; the message names the formula.
    """
    if not isinstance(formula, str) or not formula.strip():
        raise PigmentError(f"empty chemical formula {formula!r}")
    return dict(_parse_formula_cached(formula))  # a copy: the cached dict must stay unchanged


@lru_cache(maxsize=4096)
def _parse_formula_cached(formula: str) -> dict[int, float]:
    text = _HYDRATE_DOT.sub("·", formula.strip().replace("•", "·").replace("*", "·"))
    atoms: dict[int, float] = {}
    for part in text.split("·"):
        part = part.strip()
        m = re.match(r"^(\d+(?:\.\d+)?)\s*(.*)$", part)
        mult, body = (float(m.group(1)), m.group(2)) if m else (1.0, part)
        if not body:
            raise PigmentError(f"unparsable chemical formula {formula!r}: empty part")
        try:
            d = xl.CompoundParser(body)
        except ValueError as exc:
            raise PigmentError(f"unparsable chemical formula {formula!r}: {exc}") from None
        for z, n in zip(d["Elements"], d["nAtoms"], strict=True):
            atoms[int(z)] = atoms.get(int(z), 0.0) + mult * float(n)
    return atoms


def _formula_mass_fractions(formula: str) -> dict[int, float]:
    atoms = parse_formula(formula)
    masses = {z: n * xl.AtomicWeight(z) for z, n in atoms.items()}
    tot = sum(masses.values())
    return {z: m / tot for z, m in masses.items()}


def element_mass_fractions(composition: Mapping[str, float], where: str = "") -> dict[int, float]:
    """Element mass fractions (atomic number -> fraction, sum 1) of a mass-fraction mix of formulas.

    Parameters
    ----------
    composition : Mapping[str, float]
        Formula -> mass fraction (normalised here).
    where : str
        Context for error messages (e.g. ``"pigment 'azurite'"``).
    """
    validate_composition(composition, where)
    tot = float(sum(composition.values()))
    out: dict[int, float] = {}
    for f, w in composition.items():
        for z, x in _formula_mass_fractions(f).items():
            out[z] = out.get(z, 0.0) + x * float(w) / tot
    return dict(sorted(out.items()))


def validate_composition(comp: Mapping[str, float], where: str = "") -> None:
    """Check a mass-fraction mix of formulas.

    Raises
    ------
    PigmentError
        Unparsable formula or unknown element (naming the formula), or mass fractions that are
        negative, non-finite or all zero.
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(comp, Mapping) or not comp:
        raise PigmentError(f"{prefix}composition must be a non-empty mapping formula -> mass fraction")
    for f, w in comp.items():
        try:
            parse_formula(str(f))
        except PigmentError as exc:
            raise PigmentError(f"{prefix}{exc}") from None
        try:
            wf = float(w)
        except (TypeError, ValueError):
            raise PigmentError(f"{prefix}mass fraction of {f!r} is not a number: {w!r}") from None
        if not math.isfinite(wf) or wf < 0:
            raise PigmentError(f"{prefix}mass fraction of {f!r} must be finite and >= 0, got {w!r}")
    if sum(float(w) for w in comp.values()) <= 0:
        raise PigmentError(f"{prefix}mass fractions sum to zero")


# ------------------------------------------------------------------------------------------
# instrument
# ------------------------------------------------------------------------------------------
# fields serialised only when they differ from these defaults (added after 0.1.0: older
# instruments, libraries and store attributes keep their exact JSON)
_OPTIONAL_FIELDS: dict[str, Any] = {
    "excitation_kev": None, "excitation_spectrum": [], "polarisation_degree": 0.0,
    "polarisation_azimuth_deg": 0.0,
}


def read_excitation_spectrum(path) -> tuple[tuple[float, float, bool], ...]:
    """Rows ``(energy keV, relative flux, is_line)`` of an excitation-spectrum text file.

    Parameters
    ----------
    path : str or os.PathLike
        Two or three columns (energy keV, relative flux, optional line flag 0/1), separated by
        whitespace or commas; lines starting with ``#`` are comments.

    Raises
    ------
    ConfigError
        Missing/unreadable file or malformed content (the message names the file).
    """
    import os

    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"instrument.excitation_spectrum: cannot read {name!r}: "
                          f"{exc.strerror or exc}") from None
    rows = []
    for k, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].replace(",", " ").strip()
        if not line:
            continue
        parts = line.split()
        try:
            rows.append([float(v) for v in parts])
        except ValueError:
            raise ConfigError(f"instrument.excitation_spectrum: {name!r} line {k}: not numbers: "
                              f"{line!r}") from None
    try:
        return _excitation_rows(rows)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (file {name!r})") from None


def _excitation_rows(spec) -> tuple[tuple[float, float, bool], ...]:
    """Validated, energy-sorted rows ``(energy, flux, is_line)`` from rows or a file path."""
    import os

    where = "instrument.excitation_spectrum"
    if spec is None:
        return ()
    if isinstance(spec, (str, os.PathLike)):
        return read_excitation_spectrum(spec)
    try:
        raw = [list(r) for r in spec]
    except TypeError:
        raise ConfigError(f"{where}: must be rows of (energy_kev, flux[, is_line]) or a file "
                          f"path, got {spec!r}") from None
    if not raw:
        return ()
    rows = []
    for i, r in enumerate(raw):
        if len(r) not in (2, 3):
            raise ConfigError(f"{where}: row {i} must have 2 or 3 values (energy_kev, flux"
                              f"[, is_line]), got {r!r}")
        try:
            e, f = float(r[0]), float(r[1])
            line = float(r[2]) if len(r) == 3 else 0.0
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: row {i} is not numeric: {r!r}") from None
        if not (math.isfinite(e) and 0.0 < e <= 200.0):
            raise ConfigError(f"{where}: row {i}: energy must be within (0, 200] keV, got {r[0]!r}")
        if not (math.isfinite(f) and f >= 0.0):
            raise ConfigError(f"{where}: row {i}: flux must be finite and >= 0, got {r[1]!r}")
        if line not in (0.0, 1.0):
            raise ConfigError(f"{where}: row {i}: is_line must be 0 or 1, got {r[2]!r}")
        rows.append((e, f, bool(line)))
    rows.sort(key=lambda r: (r[0], r[2]))
    if sum(r[1] for r in rows) <= 0:
        raise ConfigError(f"{where}: flux sums to zero")
    cont = [r[0] for r in rows if not r[2]]
    if len(cont) == 1:
        raise ConfigError(f"{where}: a continuum needs at least two rows (bin edges lie midway "
                          f"between neighbouring energies); flag a single energy as a line "
                          f"(third column 1)")
    if len(set(cont)) != len(cont):
        raise ConfigError(f"{where}: repeated continuum energy (bins need distinct energies)")
    if cont and cont[0] - 0.5 * (cont[1] - cont[0]) <= 0:
        raise ConfigError(f"{where}: the first continuum bin would reach below 0 keV")
    return tuple(rows)


@dataclass(frozen=True)
class Instrument:
    """Excitation and detection parameters of an MA-XRF scanner (hashable, equal by value).

    Parameters
    ----------
    anode : str
        Tube anode element, one of ``ANODES`` (Rh, W, Mo, Ag, Cu, Cr). Default ``"Rh"``.
    kv : float
        Tube voltage, kV (= maximum photon energy, keV). Default 40.
    tube_be_um : float
        Tube Be exit window, µm. Default 125.
    tube_electron_angle_deg, tube_takeoff_deg : float
        Electron incidence and X-ray take-off angles at the anode (to the anode surface),
        degrees (Ebel's φ and ε). Defaults 90 and 20 (side-window tube).
    filters : tuple of (str, float)
        Primary-beam filters as (formula, thickness µm), e.g. ``(("Al", 100.0),)``. Default none.
        An element filter has the element's density; a compound filter is taken at a nominal
        2.5 g/cm³ (give its thickness as the 2.5 g/cm³-equivalent).
    incidence_deg, takeoff_deg : float
        Beam incidence and detector take-off angles to the sample surface, degrees. Default
        45/45 (scattering angle 180° − 45° − 45° = 90°).
    air_cm : float
        Air path tube–sample and, again, sample–detector, cm. Default 1.0.
    det_area_mm2, det_distance_mm : float
        Detector active area (mm²) and sample distance (mm): solid angle of the exact disc.
        Defaults 50 mm², 10 mm.
    det_si_um, det_be_um : float
        Si crystal thickness and Be window, µm. Defaults 450 and 8.
    noise_fwhm_kev : float
        Electronic noise as a FWHM, keV: FWHM² = 2.3548²·ε·F·E + noise². Default 0.08, which
        gives 141 eV at Mn Kα (5.9 keV), a typical SDD; 0.1 keV would give 153 eV.
    fano, epsilon_kev : float
        Fano factor (0.114) and energy per electron-hole pair in Si (0.0036 keV).
    escape : bool
        Si Kα/Kβ escape peaks of every line. Default True.
    tail_fraction : float
        Fraction of each line's area in the low-energy exponential tail (incomplete charge
        collection). Default 0.01.
    tail_slope_sigma : float
        Decay length β of the tail in units of the Gaussian σ at the line. Default 2.0.
    shelf_fraction : float
        Fraction of each line's area in a flat shelf from 0 keV up to the line. Default 0.001.
    compton_profile_au : float
        Standard deviation of the electron momentum p_z (atomic units) used for the Doppler
        broadening of Compton-scattered tube lines. Default 0.7.
    continuum_step_kev : float
        Width of the tube-continuum boxes, keV. Default 0.1.
    excitation_kev : float or None
        Monochromatic excitation (synchrotron beamline, monochromatised source), keV (1-200).
        When set, the tube fields (``anode``, ``kv``, ``tube_*``, ``filters``) are ignored and the
        sample sees one line of unit flux: its Rayleigh and Compton peaks replace the tube's.
        Default None (X-ray tube).
    excitation_spectrum : rows of (energy keV, relative flux[, is_line]) or a file path
        A user-given excitation spectrum (polycapillary optics, secondary targets, measured or
        simulated source spectra); the tube fields are ignored.  Rows with ``is_line`` true
        (third column 1) are discrete lines; the others are bins of a continuum whose edges lie
        midway between neighbouring continuum energies (the first and last bins are symmetric
        about their energy), like the tube's continuum boxes.  A ``str``/``os.PathLike`` is read
        as a text file of two or three whitespace- or comma-separated columns (``#`` comments);
        the rows are stored (sorted by energy), so the instrument stays self-contained when
        serialised.  Default ``()`` (X-ray tube).  Exclusive with ``excitation_kev``.
    polarisation_degree : float
        Degree of linear polarisation P of the excitation, 0-1 (0 = unpolarised, a tube;
        synchrotron beams ≈ 0.9-0.99).  Default 0.
    polarisation_azimuth_deg : float
        Azimuth of the detector direction about the beam, measured from the polarisation vector,
        degrees (0-180): 0 = detector in the polarisation plane (the usual synchrotron geometry:
        horizontal plane, where Rayleigh scatter at 90° vanishes), 90 = perpendicular to it.
        Used only when ``polarisation_degree > 0``.  Default 0.
    secondary_fluorescence : bool
        Add secondary fluorescence within each layer (lines of one element exciting another's,
        e.g. Ni/Cu K exciting Fe K; :func:`secondary_geometry`).  Default True (added after 0.1.0;
        spectra computed before had primary fluorescence only: set False to reproduce them).
    name : str
        Label only (not compared).

    Notes
    -----
    ``to_dict()`` leaves out the excitation and polarisation fields while they have their
    defaults, so instruments (and libraries, store attributes) written before these fields
    existed serialise byte-identically.
    """

    anode: str = "Rh"
    kv: float = 40.0
    tube_be_um: float = 125.0
    tube_electron_angle_deg: float = 90.0
    tube_takeoff_deg: float = 20.0
    filters: tuple[tuple[str, float], ...] = ()
    incidence_deg: float = 45.0
    takeoff_deg: float = 45.0
    air_cm: float = 1.0
    det_area_mm2: float = 50.0
    det_distance_mm: float = 10.0
    det_si_um: float = 450.0
    det_be_um: float = 8.0
    noise_fwhm_kev: float = 0.08
    fano: float = 0.114
    epsilon_kev: float = 0.0036
    escape: bool = True
    tail_fraction: float = 0.01
    tail_slope_sigma: float = 2.0
    shelf_fraction: float = 0.001
    compton_profile_au: float = 0.7
    continuum_step_kev: float = 0.1
    excitation_kev: float | None = None
    excitation_spectrum: tuple[tuple[float, float, bool], ...] = ()
    polarisation_degree: float = 0.0
    polarisation_azimuth_deg: float = 0.0
    secondary_fluorescence: bool = True
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        def bad(fieldname: str, msg: str) -> ConfigError:
            return ConfigError(f"instrument.{fieldname}: {msg}")

        anode = str(self.anode).strip().capitalize()
        if anode not in ANODES:
            raise bad("anode", f"must be one of {', '.join(ANODES)}, got {self.anode!r}")
        object.__setattr__(self, "anode", anode)
        floats = [f.name for f in fields(self) if f.type in ("float", float)]
        for fn in floats:
            v = getattr(self, fn)
            try:
                fv = float(v)
            except (TypeError, ValueError):
                raise bad(fn, f"must be a number, got {v!r}") from None
            if not math.isfinite(fv) or fv < 0:
                raise bad(fn, f"must be finite and >= 0, got {v!r}")
            object.__setattr__(self, fn, fv)
        if not 5.0 <= self.kv <= 100.0:
            raise bad("kv", f"must be within 5-100 kV, got {self.kv}")
        for fn in ("incidence_deg", "takeoff_deg", "tube_electron_angle_deg", "tube_takeoff_deg"):
            if not 0 < getattr(self, fn) <= 90:
                raise bad(fn, f"must be in (0, 90] degrees, got {getattr(self, fn)}")
        for fn in ("det_area_mm2", "det_distance_mm", "det_si_um", "fano", "epsilon_kev",
                   "continuum_step_kev", "tail_slope_sigma"):
            if getattr(self, fn) <= 0:
                raise bad(fn, f"must be > 0, got {getattr(self, fn)}")
        if self.tail_fraction + self.shelf_fraction >= 1:
            raise bad("tail_fraction", "tail_fraction + shelf_fraction must be < 1")
        if self.incidence_deg + self.takeoff_deg > 180:
            raise bad("takeoff_deg", "incidence + take-off angles must be <= 180 degrees")
        try:
            filt = tuple((str(f), float(t)) for f, t in self.filters)
        except (TypeError, ValueError):
            raise bad("filters", f"must be a list of (formula, thickness_um), got {self.filters!r}") from None
        for f, t in filt:
            try:
                parse_formula(f)
            except PigmentError as exc:
                raise bad("filters", str(exc)) from None
            if not math.isfinite(t) or t < 0:
                raise bad("filters", f"thickness of {f!r} must be >= 0 µm, got {t}")
        object.__setattr__(self, "filters", filt)
        object.__setattr__(self, "escape", bool(self.escape))
        object.__setattr__(self, "secondary_fluorescence", bool(self.secondary_fluorescence))
        if self.excitation_kev is not None:
            try:
                ex = float(self.excitation_kev)
            except (TypeError, ValueError):
                raise bad("excitation_kev", f"must be a number or null, got "
                                            f"{self.excitation_kev!r}") from None
            if not (math.isfinite(ex) and 1.0 <= ex <= 200.0):
                raise bad("excitation_kev", f"must be within 1-200 keV, got {self.excitation_kev!r}")
            object.__setattr__(self, "excitation_kev", ex)
        rows = _excitation_rows(self.excitation_spectrum)
        object.__setattr__(self, "excitation_spectrum", rows)
        if rows and self.excitation_kev is not None:
            raise bad("excitation_spectrum", "give either excitation_kev (monochromatic) or "
                                             "excitation_spectrum, not both")
        if not 0.0 <= self.polarisation_degree <= 1.0:
            raise bad("polarisation_degree", f"must be within 0-1, got {self.polarisation_degree}")
        if not 0.0 <= self.polarisation_azimuth_deg <= 180.0:
            raise bad("polarisation_azimuth_deg",
                      f"must be within 0-180 degrees, got {self.polarisation_azimuth_deg}")
        object.__setattr__(self, "name", str(self.name))

    @property
    def scattering_angle_deg(self) -> float:
        """Scattering angle, degrees (180 − incidence − take-off, coplanar geometry)."""
        return 180.0 - self.incidence_deg - self.takeoff_deg

    @property
    def source(self) -> str:
        """``"tube"``, ``"monochromatic"`` (``excitation_kev``) or ``"spectrum"``."""
        if self.excitation_kev is not None:
            return "monochromatic"
        return "spectrum" if self.excitation_spectrum else "tube"

    def to_dict(self) -> dict:
        """JSON-able dict of every parameter (``filters`` and ``excitation_spectrum`` as lists;
        excitation/polarisation fields only when they differ from their defaults)."""
        d = asdict(self)
        d["filters"] = [[f, t] for f, t in self.filters]
        d["excitation_spectrum"] = [[e, f, b] for e, f, b in self.excitation_spectrum]
        for k, default in _OPTIONAL_FIELDS.items():
            if d[k] == default:
                del d[k]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Instrument:
        """Inverse of :meth:`to_dict`; missing keys take defaults.

        Raises
        ------
        ConfigError
            Unknown key or invalid value (the message names the field).
        """
        kw = check_known_fields(d, cls, "instrument")
        if "filters" in kw and kw["filters"] is not None:
            kw["filters"] = tuple(tuple(x) for x in kw["filters"])
        if kw.get("excitation_spectrum") is None:
            kw.pop("excitation_spectrum", None)
        return cls(**kw)

    @classmethod
    def preset(cls, name: str) -> Instrument:
        """A named preset (see ``PRESETS``)."""
        key = str(name).strip().lower()
        if key not in PRESETS:
            raise ConfigError(f"unknown instrument preset {name!r}; known: {sorted(PRESETS)}")
        return PRESETS[key]

    def replace(self, **changes) -> Instrument:
        """A copy with some parameters changed."""
        return replace(self, **changes)

    def key(self) -> str:
        """Canonical JSON of the compared parameters (cache key)."""
        d = self.to_dict()
        d.pop("name")
        return json.dumps(d, sort_keys=True)


PRESETS: dict[str, Instrument] = {
    # Laboratory MA-XRF scanner (e.g. Bruker M6-class): Rh tube 40 kV, 50 mm² SDD at 10 mm.
    "lab-rh": Instrument(name="lab-rh"),
    # Rh scanner at 50 kV with a 100 µm Al primary filter (suppresses tube L lines / low continuum).
    "lab-rh-50kv-al": Instrument(kv=50.0, filters=(("Al", 100.0),), name="lab-rh-50kv-al"),
    # Hand-held / portable XRF: Ag anode 40 kV, thin Be window, 25 mm² SDD at 15 mm, 2 cm air.
    "portable-ag": Instrument(
        anode="Ag", kv=40.0, tube_be_um=75.0, tube_takeoff_deg=20.0, det_area_mm2=25.0,
        det_distance_mm=15.0, det_be_um=12.5, air_cm=2.0, noise_fwhm_kev=0.1,
        incidence_deg=60.0, takeoff_deg=60.0, name="portable-ag"),
    # Mo-anode laboratory scanner.
    "lab-mo": Instrument(anode="Mo", kv=40.0, name="lab-mo"),
    # W-anode scanner at 50 kV.
    "lab-w": Instrument(anode="W", kv=50.0, name="lab-w"),
    # Synchrotron MA-XRF beamline: monochromatic 16 keV, 98 % linearly polarised in the
    # horizontal plane, sample at 45°, 50 mm² SDD at 20 mm and 90° in that plane (elastic and
    # Compton scatter ≈ 17× below an unpolarised beam's).
    "synchrotron-16kev": Instrument(excitation_kev=16.0, polarisation_degree=0.98,
                                    polarisation_azimuth_deg=0.0, det_distance_mm=20.0,
                                    name="synchrotron-16kev"),
}


def _as_instrument(instrument) -> Instrument:
    if instrument is None:
        return PRESETS["lab-rh"]
    if isinstance(instrument, Instrument):
        return instrument
    if isinstance(instrument, str):
        return Instrument.preset(instrument)
    if isinstance(instrument, Mapping):
        return Instrument.from_dict(instrument)
    raise ConfigError(f"instrument must be an Instrument, preset name or dict, got {instrument!r}")


def as_instrument(instrument) -> Instrument:
    """An :class:`Instrument` from an instrument, a preset name, a dict or ``None`` ("lab-rh").

    Raises
    ------
    ConfigError
        Unknown preset, unknown key or invalid value.
    """
    return _as_instrument(instrument)


def fwhm_kev(energy_kev, instrument: Instrument | None = None) -> np.ndarray:
    """Detector resolution, FWHM in keV: ``sqrt(2.3548²·ε·F·E + noise_fwhm²)``.

    Parameters
    ----------
    energy_kev : float or array
        Photon energy, keV.
    instrument : Instrument, optional
        Default: the ``"lab-rh"`` preset (ε = 0.0036 keV, F = 0.114, noise 0.08 keV).

    Returns
    -------
    numpy.ndarray or float
        FWHM, keV (0.141 at 5.9 keV with the defaults).
    """
    inst = _as_instrument(instrument)
    e = np.maximum(np.asarray(energy_kev, dtype=float), 0.0)
    out = np.sqrt(_FWHM_PER_SIGMA**2 * inst.epsilon_kev * inst.fano * e + inst.noise_fwhm_kev**2)
    return float(out) if out.ndim == 0 else out


def solid_angle_sr(instrument: Instrument | None = None) -> float:
    """Solid angle of the detector disc, sr: ``2π(1 − d/sqrt(d² + r²))`` with ``r = sqrt(A/π)``."""
    inst = _as_instrument(instrument)
    r = math.sqrt(inst.det_area_mm2 / math.pi)
    d = inst.det_distance_mm
    return 2.0 * math.pi * (1.0 - d / math.hypot(d, r))


# ------------------------------------------------------------------------------------------
# attenuation helpers
# ------------------------------------------------------------------------------------------
def _mu(elements: Mapping[int, float], energy: np.ndarray, kind: str = "total") -> np.ndarray:
    """Mass attenuation coefficient, cm²/g, of an element mix at ``energy`` (keV)."""
    e = np.atleast_1d(np.asarray(energy, dtype=float))
    z = np.array(list(elements), dtype=int)
    w = np.array(list(elements.values()), dtype=float)
    fn = xn.CS_Total if kind == "total" else xn.CS_Photo
    flat = np.maximum(e.ravel(), 1e-3)
    return (w @ fn(z, flat)).reshape(e.shape)


def _transmission(elements: Mapping[int, float], rho_t: float, energy) -> np.ndarray:
    """exp(−μ(E)·ρt), ρt in g/cm²."""
    if rho_t <= 0:
        return np.ones(np.shape(np.atleast_1d(energy)))
    return np.exp(-_mu(elements, energy) * rho_t)


def _air_transmission(inst: Instrument, energy) -> np.ndarray:
    return _transmission(_AIR, _AIR_DENSITY * inst.air_cm, energy)


def air_transmission(energy_kev, instrument: Instrument | None = None) -> np.ndarray:
    """Transmission of one air path (``instrument.air_cm``; dry air, 1.2048 mg/cm³), 0..1."""
    return _air_transmission(_as_instrument(instrument), energy_kev)


def detector_efficiency(energy_kev, instrument: Instrument | None = None) -> np.ndarray:
    """Intrinsic detector efficiency: Be-window transmission × Si photo-absorption, 0..1.

    Parameters
    ----------
    energy_kev : array
        keV.
    instrument : Instrument, optional
    """
    inst = _as_instrument(instrument)
    e = np.atleast_1d(np.asarray(energy_kev, dtype=float))
    be = _transmission({4: 1.0}, _BE_DENSITY * inst.det_be_um * 1e-4, e)
    si = 1.0 - np.exp(-_mu({14: 1.0}, e, "photo") * _SI_DENSITY * inst.det_si_um * 1e-4)
    return be * si


def _escape_probability(energy: np.ndarray, inst: Instrument) -> np.ndarray:
    """Si K escape probability (normal incidence; Reed & Ware 1972): lines above the Si K edge."""
    e = np.asarray(energy, dtype=float)
    out = np.zeros_like(e)
    m = e > _SI_K_EDGE
    if not inst.escape or not np.any(m):
        return out
    omega = xl.FluorYield(14, xl.K_SHELL)
    jump = xl.JumpFactor(14, xl.K_SHELL)
    mu_e = _mu({14: 1.0}, e[m], "photo")
    mu_k = float(_mu({14: 1.0}, np.array([_SI_KA]))[0])
    r = mu_e / mu_k
    out[m] = 0.5 * omega * (1.0 - 1.0 / jump) * (1.0 - np.log1p(r) / r)
    return out


# ------------------------------------------------------------------------------------------
# tube
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TubeSpectrum:
    """Tube output after its window and filters.

    Attributes
    ----------
    line_energy : numpy.ndarray
        Characteristic line energies, keV.
    line_intensity : numpy.ndarray
        Photons / (s · sr · mA).
    line_label : tuple of str
    box_lo, box_hi : numpy.ndarray
        Continuum box edges, keV.
    box_intensity : numpy.ndarray
        Photons / (s · sr · mA) in each box.
    box_energy : numpy.ndarray or None
        Energy at which each box is evaluated (a user spectrum's given energies); ``None`` =
        the box centres.
    """

    line_energy: np.ndarray
    line_intensity: np.ndarray
    line_label: tuple[str, ...]
    box_lo: np.ndarray
    box_hi: np.ndarray
    box_intensity: np.ndarray
    box_energy: np.ndarray | None = None

    @property
    def box_centre(self) -> np.ndarray:
        """Energy at which each continuum box is evaluated, keV (``box_energy`` or the centre)."""
        return 0.5 * (self.box_lo + self.box_hi) if self.box_energy is None else self.box_energy


def _ebel_rhoz(z: int, e0: float, u0: np.ndarray) -> np.ndarray:
    """Ebel's mean depth of photon generation ρz̄ (g/cm²)."""
    a = xl.AtomicWeight(z)
    j = 0.0135 * z
    lz = math.log(z)
    m = 0.1382 - 0.9211 / math.sqrt(z)
    eta = e0**m * (-0.1904 - 0.2236 * lz + 0.1292 * lz**2 - 0.01491 * lz**3)
    rzm = (a / z) * (0.787e-5 * math.sqrt(j) * e0**1.5 + 0.735e-6 * e0**2)
    lu = np.log(np.maximum(u0, 1.0 + 1e-9))
    return rzm * (0.49269 - 1.0987 * eta + 0.78557 * eta**2) * lu / (
        0.70256 - 1.09865 * eta + 1.0046 * eta**2 + lu)


def _ebel_fchi(z: int, e0: float, energy: np.ndarray, u0: np.ndarray, inst: Instrument) -> np.ndarray:
    chi = _mu({z: 1.0}, energy) * math.sin(math.radians(inst.tube_electron_angle_deg)) / math.sin(
        math.radians(inst.tube_takeoff_deg))
    x = 2.0 * chi * _ebel_rhoz(z, e0, u0)
    return np.where(x > 1e-12, -np.expm1(-x) / np.maximum(x, 1e-300), 1.0)


def _tube_transmission(inst: Instrument, energy: np.ndarray) -> np.ndarray:
    t = _transmission({4: 1.0}, _BE_DENSITY * inst.tube_be_um * 1e-4, energy)
    for f, um in inst.filters:
        els = _formula_mass_fractions(f)
        if len(els) == 1:
            rho = xl.ElementDensity(next(iter(els)))
        else:
            rho = 2.5  # compound filters: nominal density (document thickness as mass-equivalent)
        t = t * _transmission(els, rho * um * 1e-4, energy)
    return t


@lru_cache(maxsize=32)
def _tube_cached(key: str) -> TubeSpectrum:
    inst = Instrument.from_dict(json.loads(key))
    z = xl.SymbolToAtomicNumber(inst.anode)
    e0 = inst.kv
    # continuum boxes from 1 keV (below, the Be window passes nothing) to kV
    step = inst.continuum_step_kev
    n = max(1, int(math.ceil((e0 - 1.0) / step - 1e-9)))
    edges = np.minimum(1.0 + step * np.arange(n + 1), e0)
    lo, hi = edges[:-1], edges[1:]
    # integrate each box with 4-point Gauss-Legendre (edge steps of f(χ) are rare and small)
    gx, gw = np.polynomial.legendre.leggauss(4)
    mid, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
    ee = mid[:, None] + half[:, None] * gx[None, :]
    x = 1.109 - 0.00435 * z + 0.00175 * e0
    dnde = 1.35e9 * z * np.maximum(e0 / ee - 1.0, 0.0) ** x
    dnde = dnde * _ebel_fchi(z, e0, ee, e0 / ee, inst) * _tube_transmission(inst, ee)
    box_i = (dnde * gw[None, :]).sum(axis=1) * half
    # characteristic lines (Ebel): N = const · zb/Z · [U lnU + 1 − U] · (1 + 16.05 sqrt(J/Ec) ·
    #   (sqrt(U) lnU + 2(1 − sqrt U))/(U lnU + 1 − U)) · R · ω · p · f(χ)
    j = 0.0135 * z
    # vacancies created per shell (Ebel's ionisation term without ω), subshell electrons z_s
    vac: dict[str, float] = {}
    for shell_name, shell, const, zj, bj in (
        ("K", xl.K_SHELL, 5.0e13, 2.0, 0.35),
        ("L1", xl.L1_SHELL, 6.9e13, 2.0, 0.25),
        ("L2", xl.L2_SHELL, 6.9e13, 2.0, 0.25),
        ("L3", xl.L3_SHELL, 6.9e13, 4.0, 0.25),
    ):
        try:
            ec = xl.EdgeEnergy(z, shell)
        except ValueError:
            continue
        if ec >= e0 or ec <= 0:
            continue
        u = e0 / ec
        lu = math.log(u)
        stop = u * lu + 1.0 - u
        corr = 1.0 + 16.05 * math.sqrt(j / ec) * (math.sqrt(u) * lu + 2.0 * (1.0 - math.sqrt(u))) / stop
        r = 1.0 - 0.0081517 * z + 3.613e-5 * z**2 + 0.009583 * z * math.exp(-u) + 0.001141 * e0
        vac[shell_name] = const * zj * bj / z * stop * corr * r
    # Coster-Kronig transfers L1 -> L2, L3 and L2 -> L3

    def ck(trans: int) -> float:
        try:
            return xl.CosKronTransProb(z, trans)
        except ValueError:
            return 0.0

    n1, n2, n3 = vac.get("L1", 0.0), vac.get("L2", 0.0), vac.get("L3", 0.0)
    f12, f13, f23 = ck(xl.FL12_TRANS), ck(xl.FL13_TRANS), ck(xl.FL23_TRANS)
    if "L2" in vac:
        vac["L2"] = n2 + f12 * n1
    if "L3" in vac:
        vac["L3"] = n3 + f23 * n2 + (f13 + f12 * f23) * n1
    shells = {"K": xl.K_SHELL, "L1": xl.L1_SHELL, "L2": xl.L2_SHELL, "L3": xl.L3_SHELL}
    le, li, ll = [], [], []
    for shell_name, nvac in vac.items():
        ec = xl.EdgeEnergy(z, shells[shell_name])
        try:
            omega = xl.FluorYield(z, shells[shell_name])
        except ValueError:
            continue
        u = e0 / ec
        for macro, lname, ini in zip(_LINE_MACROS, _LINE_NAMES, _LINE_SHELLS, strict=True):
            if ini != shell_name:
                continue
            try:
                p = xl.RadRate(z, int(macro))
                el = xl.LineEnergy(z, int(macro))
            except ValueError:
                continue
            if p <= 0 or el <= 0:
                continue
            f = _ebel_fchi(z, e0, np.array([el]), np.array([u]), inst)[0]
            val = nvac * omega * p * f * float(_tube_transmission(inst, np.array([el]))[0])
            if val > 0:
                le.append(el)
                li.append(val)
                ll.append(f"{inst.anode} {lname}")
    li_a = np.asarray(li, float)
    keep = li_a > 1e-5 * li_a.max() if li_a.size else np.zeros(0, bool)
    le = [v for v, k in zip(le, keep, strict=True) if k]
    ll = [v for v, k in zip(ll, keep, strict=True) if k]
    li = li_a[keep].tolist()
    order = np.argsort(le, kind="stable")
    return TubeSpectrum(
        line_energy=np.asarray(le, float)[order],
        line_intensity=np.asarray(li, float)[order],
        line_label=tuple(ll[i] for i in order),
        box_lo=lo, box_hi=hi, box_intensity=box_i,
    )


def tube_spectrum(instrument: Instrument | None = None) -> TubeSpectrum:
    """X-ray tube output (simplified Ebel 1999 model) after the Be window and filters.

    The continuum is ``dN/dE = 1.35e9 · Z · (E0/E − 1)^x · f(χ)`` photons/(s·sr·mA·keV), with
    ``x = 1.109 − 0.00435 Z + 0.00175 E0`` and the anode self-absorption
    ``f(χ) = (1 − exp(−2χρz̄))/(2χρz̄)``, ``χ = μ(E)·sin φ / sin ε``; characteristic K and L lines
    follow Ebel's ionisation term with backscatter factor, xraylib fluorescence yields and
    radiative rates.  Integrated over boxes of ``continuum_step_kev`` from 1 keV to kV.

    Parameters
    ----------
    instrument : Instrument, optional

    Returns
    -------
    TubeSpectrum
    """
    with _single_threaded():
        return _tube_cached(_as_instrument(instrument).key())


def source_spectrum(instrument: Instrument | str | None = None) -> TubeSpectrum:
    """The excitation reaching the air path: tube, monochromatic line or user spectrum.

    * tube (default): :func:`tube_spectrum`;
    * ``excitation_kev``: one line of unit flux labelled ``"beam <E> keV"``, no continuum;
    * ``excitation_spectrum``: its line rows as lines (``"beam <E> keV"``) and its continuum
      rows as boxes with edges midway between neighbouring energies, evaluated at the given
      energies, intensities = the given relative fluxes.

    Parameters
    ----------
    instrument : Instrument, preset name, dict or None

    Returns
    -------
    TubeSpectrum
        Intensities in the tube's photons/(s·sr·mA), or in the user's flux units.
    """
    inst = _as_instrument(instrument)
    if inst.source == "tube":
        return tube_spectrum(inst)
    if inst.source == "monochromatic":
        rows = ((inst.excitation_kev, 1.0, True),)
    else:
        rows = inst.excitation_spectrum
    lines = [(e, f) for e, f, is_line in rows if is_line]
    cont = np.array([(e, f) for e, f, is_line in rows if not is_line], dtype=float).reshape(-1, 2)
    ce = cont[:, 0]
    if ce.size:
        mid = 0.5 * (ce[1:] + ce[:-1])
        edges = np.concatenate([[ce[0] - (mid[0] - ce[0])], mid, [ce[-1] + (ce[-1] - mid[-1])]])
    else:
        edges = np.zeros(1)
    return TubeSpectrum(
        line_energy=np.array([e for e, _ in lines], dtype=float),
        line_intensity=np.array([f for _, f in lines], dtype=float),
        line_label=tuple(f"beam {e:.6g} keV" for e, _ in lines),
        box_lo=edges[:-1], box_hi=edges[1:], box_intensity=cont[:, 1], box_energy=ce,
    )


# ------------------------------------------------------------------------------------------
# spectrum components
# ------------------------------------------------------------------------------------------
def _arr(x) -> np.ndarray:
    return np.asarray(x, dtype=float).reshape(-1)


@dataclass(frozen=True, eq=False)
class SpectrumComponents:
    """A spectrum before detector broadening: lines and continuum boxes (absolute intensities).

    Intensities are detected photons per incident tube electron-mA-second per sr of tube
    emission (arbitrary but common units; spectra are normalised before use).

    Parameters
    ----------
    line_energy : array
        Line energies, keV.
    line_intensity : array
        Line areas.
    line_label : tuple of str
        E.g. ``"Pb L3M5"``, ``"Rh KL3 Rayleigh"``, ``"Pb L3M5 Si-esc"``.
    line_width : array
        Extra Gaussian σ (keV) added in quadrature to the detector σ (Compton Doppler
        broadening); 0 for fluorescence lines.
    box_lo, box_hi : array
        Continuum box edges, keV (Rayleigh- and Compton-scattered tube continuum).
    box_intensity : array
        Box areas.
    instrument : Instrument or None
        The instrument the components were computed for (its detector response is used when
        rendering).
    """

    line_energy: np.ndarray
    line_intensity: np.ndarray
    line_label: tuple[str, ...]
    line_width: np.ndarray
    box_lo: np.ndarray
    box_hi: np.ndarray
    box_intensity: np.ndarray
    instrument: Instrument | None = None

    def __post_init__(self) -> None:
        for fn in ("line_energy", "line_intensity", "line_width", "box_lo", "box_hi",
                   "box_intensity"):
            object.__setattr__(self, fn, _arr(getattr(self, fn)))
        object.__setattr__(self, "line_label", tuple(str(s) for s in self.line_label))
        n, m = self.line_energy.size, self.box_lo.size
        if not (self.line_intensity.size == self.line_width.size == len(self.line_label) == n):
            raise PigmentError("spectrum components: line arrays differ in length")
        if not (self.box_hi.size == self.box_intensity.size == m):
            raise PigmentError("spectrum components: continuum arrays differ in length")
        for fn in ("line_energy", "line_intensity", "line_width", "box_lo", "box_hi",
                   "box_intensity"):
            a = getattr(self, fn)
            if not np.all(np.isfinite(a)) or np.any(a < 0):
                raise PigmentError(f"spectrum components: {fn} must be finite and >= 0")
        if np.any(self.box_hi <= self.box_lo):
            raise PigmentError("spectrum components: continuum boxes need hi > lo")

    @property
    def total(self) -> float:
        """Total intensity (lines + continuum)."""
        return float(self.line_intensity.sum() + self.box_intensity.sum())

    def to_dict(self, digits: int = 7) -> dict:
        """JSON-able dict (numbers rounded to ``digits`` significant digits)."""

        def r(a: np.ndarray) -> list[float]:
            return [float(f"{v:.{digits}g}") for v in a.tolist()]

        return {
            "lines": {
                "energy": r(self.line_energy),
                "intensity": r(self.line_intensity),
                "width": r(self.line_width),
                "label": list(self.line_label),
            },
            "continuum": {
                "lo": r(self.box_lo),
                "hi": r(self.box_hi),
                "intensity": r(self.box_intensity),
            },
            "instrument": None if self.instrument is None else self.instrument.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SpectrumComponents:
        """Inverse of :meth:`to_dict`.

        Raises
        ------
        PigmentError
            Missing keys or malformed arrays (the message names the key).
        """
        try:
            lines, cont = d["lines"], d["continuum"]
            n = len(lines["energy"])
            kw = dict(
                line_energy=lines["energy"],
                line_intensity=lines["intensity"],
                line_width=lines.get("width", [0.0] * n),
                line_label=lines.get("label", [""] * n),
                box_lo=cont["lo"],
                box_hi=cont["hi"],
                box_intensity=cont["intensity"],
            )
        except (KeyError, TypeError) as exc:
            raise PigmentError(f"spectrum components: missing or malformed key {exc}") from None
        inst = d.get("instrument")
        try:
            return cls(**kw, instrument=None if inst is None else Instrument.from_dict(inst))
        except (TypeError, ValueError) as exc:
            if isinstance(exc, PigmentError):
                raise
            raise PigmentError(f"spectrum components: {exc}") from None

    def lines_of(self, prefix: str) -> tuple[np.ndarray, np.ndarray]:
        """Energies and intensities of the lines whose label starts with ``prefix``."""
        m = np.array([s.startswith(prefix) for s in self.line_label], dtype=bool)
        return self.line_energy[m], self.line_intensity[m]


# ------------------------------------------------------------------------------------------
# sample: fluorescence and scatter in a layer stack
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Mat:
    elements: dict  # Z -> mass fraction
    density: float  # g/cm³
    thickness_cm: float | None  # None = infinite
    name: str

    @property
    def rho_t(self) -> float:
        return math.inf if self.thickness_cm is None else self.density * self.thickness_cm


def _layers(pigment) -> list[_Mat]:
    where = f"pigment {pigment.name!r}"
    if pigment.composition is None:
        raise PigmentError(f"{where} has no composition (measured spectrum only)")
    th = pigment.thickness_um
    if th is not None and not (math.isfinite(th) and th > 0):
        raise PigmentError(f"{where}: thickness_um must be > 0 or None, got {th!r}")
    mats = [_Mat(element_mass_fractions(pigment.composition, where), float(pigment.density),
                 None if th is None else th * 1e-4, pigment.name)]
    if th is not None:
        for i, lay in enumerate(pigment.ground):
            lw = f"{where} ground layer {i} ({lay.name or 'unnamed'})"
            if lay.thickness_um is not None and not (
                    math.isfinite(lay.thickness_um) and lay.thickness_um > 0):
                raise PigmentError(f"{lw}: thickness_um must be > 0 or None")
            if not (lay.density and math.isfinite(lay.density) and lay.density > 0):
                raise PigmentError(f"{lw}: density must be > 0 g/cm³")
            mats.append(_Mat(element_mass_fractions(lay.composition, lw), float(lay.density),
                             None if lay.thickness_um is None else lay.thickness_um * 1e-4,
                             lay.name))
            if lay.thickness_um is None:
                break
    return mats


def _layer_integral(chi: np.ndarray, rho_t: float) -> np.ndarray:
    """∫_0^{ρt} exp(−χ ρz) d(ρz) = (1 − exp(−χρt))/χ (→ 1/χ when infinite)."""
    chi = np.maximum(chi, 1e-30)
    if math.isinf(rho_t):
        return 1.0 / chi
    return -np.expm1(-chi * rho_t) / chi


def _incident_beam(inst: Instrument) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Incident energies and weights (source lines then box energies) after the air path."""
    t = source_spectrum(inst)
    e = np.concatenate([t.line_energy, t.box_centre])
    w = np.concatenate([t.line_intensity, t.box_intensity]) * _air_transmission(inst, e)
    return e, w, t.box_lo, t.box_hi


@lru_cache(maxsize=64)
def _acceptance_nodes(theta0: float, azimuth0: float, half_angle: float,
                      n_polar: int = 4, n_azimuth: int = 8) -> tuple[np.ndarray, np.ndarray,
                                                                      np.ndarray]:
    """Directions (θ, φ, weight) covering the detector's cone, uniformly in solid angle.

    The beam runs along z, the polarisation vector along x; the detector's central direction
    has scattering angle ``theta0`` and azimuth ``azimuth0`` (rad, from x).  The cone of
    half-angle ``half_angle`` (the disc seen from the sample) is covered with Gauss-Legendre
    nodes in cos γ (γ = angle from the central direction) times equally spaced azimuths about
    it: exact for the solid-angle average of polynomials of degree ≤ 7 in cos γ and of
    trigonometric polynomials of degree ≤ 7 in the azimuth.  Weights sum to 1.
    """
    c = np.array([math.sin(theta0) * math.cos(azimuth0), math.sin(theta0) * math.sin(azimuth0),
                  math.cos(theta0)])
    helper = np.array([0.0, 0.0, 1.0]) if abs(c[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    u = np.cross(c, helper)
    u /= np.linalg.norm(u)
    v = np.cross(c, u)
    gx, gw = np.polynomial.legendre.leggauss(n_polar)
    cmin = math.cos(half_angle)
    cg = 0.5 * (1.0 + cmin) + 0.5 * (1.0 - cmin) * gx
    sg = np.sqrt(np.maximum(1.0 - cg**2, 0.0))
    az = 2.0 * math.pi * (np.arange(n_azimuth) + 0.5) / n_azimuth
    n = (cg[:, None, None] * c + sg[:, None, None] * (np.cos(az)[None, :, None] * u
                                                       + np.sin(az)[None, :, None] * v))
    n = n.reshape(-1, 3)
    th = np.arccos(np.clip(n[:, 2], -1.0, 1.0))
    ph = np.arctan2(n[:, 1], n[:, 0])
    w = np.repeat(gw / gw.sum(), n_azimuth) / n_azimuth
    return th, ph, w


def _detector_half_angle(inst: Instrument) -> float:
    """Half-angle of the cone the detector disc subtends at the sample, rad."""
    return math.atan(math.sqrt(inst.det_area_mm2 / math.pi) / inst.det_distance_mm)


def _scatter_dcs(z: np.ndarray, wz: np.ndarray, e0: np.ndarray, theta: float,
                 inst: Instrument) -> tuple[np.ndarray, np.ndarray]:
    """Rayleigh and Compton differential cross sections (cm²/g/sr) of a mix at ``e0``.

    Unpolarised excitation (``polarisation_degree == 0``): xraylib ``DCS_Rayl``/``DCS_Compt``
    at the central scattering angle ``theta`` (rad).  A beam with linear polarisation degree
    P: ``½(1 + P)·DCSP(θ, φ) + ½(1 − P)·DCSP(θ, φ + 90°)`` (``DCSP_Rayl``/``DCSP_Compt``, φ
    the azimuth from the polarisation vector), averaged over the detector's cone
    (:func:`_acceptance_nodes`), which is what fills in the zero of in-plane Rayleigh scatter
    at 90° for a real detector.
    """
    if inst.polarisation_degree == 0.0:
        th = np.array([theta])
        return (wz @ xn.DCS_Rayl(z, e0, th)[:, :, 0], wz @ xn.DCS_Compt(z, e0, th)[:, :, 0])
    p = inst.polarisation_degree
    th, ph, w = _acceptance_nodes(float(theta), math.radians(inst.polarisation_azimuth_deg),
                                  _detector_half_angle(inst))
    dr = np.zeros(e0.size)
    dc = np.zeros(e0.size)
    for t, f, wk in zip(th, ph, w, strict=True):
        for phi, frac in ((f, 0.5 * (1.0 + p)), (f + 0.5 * math.pi, 0.5 * (1.0 - p))):
            if frac == 0.0:
                continue
            a_t, a_p = np.array([t]), np.array([phi])
            dr += (wk * frac) * (wz @ xn.DCSP_Rayl(z, e0, a_t, a_p)[:, :, 0, 0])
            dc += (wk * frac) * (wz @ xn.DCSP_Compt(z, e0, a_t, a_p)[:, :, 0, 0])
    return dr, dc


# u = 1/t panels for ∫_1^∞ F(t)/t dt = ∫_0^1 F(1/u)/u du: geometric panels resolve the scales
# μ_i/p, μ_i/q and μ_i·ρt of the integrand (5-point Gauss-Legendre each)
def _sf_nodes() -> tuple[np.ndarray, np.ndarray]:
    gx, gw = np.polynomial.legendre.leggauss(5)
    bounds = [0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 0.3, 1.0]
    u, w = [], []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        u.append(0.5 * (a + b) + 0.5 * (b - a) * gx)
        w.append(0.5 * (b - a) * gw)
    return np.concatenate(u), np.concatenate(w)


_SF_U, _SF_W = _sf_nodes()


def _expm1_ratio(k: np.ndarray, rho_t: float) -> np.ndarray:
    """(1 − exp(−k·ρt))/k, → ρt as k → 0 (k ≥ 0)."""
    kt = k * rho_t
    safe = np.where(kt > 1e-12, k, 1.0)
    return np.where(kt > 1e-12, -np.expm1(-kt) / safe, rho_t)


def secondary_geometry(p, q, mu_i, rho_t: float) -> np.ndarray:
    """Depth integral of secondary fluorescence in one homogeneous layer, g²/cm⁴·(cm²/g)⁻¹.

    ``G = ½ ∫₀^{ρt}∫₀^{ρt} exp(−p x) E₁(μ_i |x − y|) exp(−q y) dx dy`` (x, y mass depths,
    g/cm²): primary radiation enters with ``p = μ(E0)/sin α``, the exciting line (energy E_i,
    layer attenuation ``mu_i`` cm²/g) is emitted isotropically at depth x and absorbed at depth
    y with the slab kernel ``½ μ E₁(μ|x − y|)``, the secondary line leaves with
    ``q = μ(E_j)/sin β``.  Infinitely thick layer (``rho_t = inf``), closed form (Sherman;
    Shiraiwa & Fujino 1966): ``G = [ln(1 + p/μ_i)/p + ln(1 + q/μ_i)/q] / (2(p + q))``.
    Finite layer: with ``E₁(s) = ∫₁^∞ exp(−s t)/t dt`` the x, y integrals are done in closed
    form for each t and the t integral by Gauss-Legendre on geometric panels of ``u = 1/t``.

    Parameters
    ----------
    p, q, mu_i : array
        cm²/g, broadcast together.
    rho_t : float
        Mass thickness of the layer, g/cm² (``math.inf``: infinitely thick).

    Returns
    -------
    numpy.ndarray
        G in (g/cm²)²/... i.e. such that the secondary intensity per incident photon is
        ``Σ c_i σ_i(E0) c_j σ_j(E_i) G / sin α`` (σ: line production cross sections, cm²/g).
    """
    p, q, mu = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (p, q, mu_i)))
    if math.isinf(rho_t):
        return 0.5 * (np.log1p(p / mu) / p + np.log1p(q / mu) / q) / (p + q)
    lpq = _expm1_ratio(p + q, rho_t)
    out = np.zeros(p.shape)
    for u, w in zip(_SF_U, _SF_W, strict=True):
        a = mu / u  # μ_i t
        # D(p; q, a) = (exp(−(p+q)T) − exp(−(p+a)T))/(a − q), symmetric in (q, a)
        lo = np.minimum(q, a)
        d_p = np.exp(-(p + lo) * rho_t) * _expm1_ratio(np.abs(a - q), rho_t)
        lo = np.minimum(p, a)
        d_q = np.exp(-(q + lo) * rho_t) * _expm1_ratio(np.abs(a - p), rho_t)
        f = (lpq - d_p) / (p + a) + (lpq - d_q) / (q + a)
        out += (w / u) * f
    return 0.5 * out


_SF_P_NODES = 32


def _log_interp_weights(x: np.ndarray, n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights ``Λ (len(x), K)`` of linear interpolation in ``log x``.

    ``f(x_e) ≈ Σ_k Λ[e, k] f(node_k)``; with at most ``n_nodes`` distinct values the nodes are
    the values themselves (exact).
    """
    u = np.unique(x)
    if u.size <= n_nodes:
        return u, (x[:, None] == u[None, :]).astype(float)
    s = np.log(x)
    nodes_s = np.linspace(s.min(), s.max(), n_nodes)
    k = np.clip(np.searchsorted(nodes_s, s, side="right") - 1, 0, n_nodes - 2)
    frac = (s - nodes_s[k]) / (nodes_s[k + 1] - nodes_s[k])
    lam = np.zeros((x.size, n_nodes))
    lam[np.arange(x.size), k] = 1.0 - frac
    lam[np.arange(x.size), k + 1] = frac
    return np.exp(nodes_s), lam


def _secondary_emission(mat: _Mat, z: np.ndarray, wz: np.ndarray, le: np.ndarray,
                        ok: np.ndarray, el: np.ndarray, src: np.ndarray, mu_el: np.ndarray,
                        p: np.ndarray, sb: float, n_nodes: int = _SF_P_NODES) -> np.ndarray:
    """Secondary fluorescence of every line of one layer, excited by its own primary lines.

    ``Σ_i Σ_E0 src_i(E0) · c_j σ_j(E_i) · G(p(E0), q_j, μ(E_i))`` (:func:`secondary_geometry`).
    The sum over the incident energies uses ``p·G``, a slowly varying function of ``log p``,
    interpolated linearly between ``n_nodes`` log-spaced values of p (exact when there are at
    most ``n_nodes`` incident energies, e.g. a monochromatic beam): the geometry is evaluated
    at 32 values of p instead of every tube energy (≈ 400).

    Parameters
    ----------
    mat : _Mat
        The layer.
    z, wz, le, ok : arrays
        Its elements, mass fractions, line energies ``(nZ, nL)`` and valid-line mask.
    el : array
        Energies of the primary (exciting) lines, keV ``(n,)``.
    src : array
        ``(n, nE)``: ``c_i σ_i(E0)·w(E0)·A_in(E0)/sin α`` of each exciting line.
    mu_el : array
        Layer attenuation at ``el``, cm²/g.
    p : array
        ``μ(E0)/sin α`` of the layer ``(nE,)``.
    sb : float
        sin of the take-off angle.
    n_nodes : int
        Interpolation nodes in p.

    Returns
    -------
    numpy.ndarray
        ``(nZ, nL)`` secondary emission of each line, in the units of the primary emission
        (before the exit attenuation, solid angle, air and detector).
    """
    out = np.zeros(le.shape)
    gen = src.sum(axis=1)
    if gen.size == 0 or gen.max() <= 0:
        return out
    # exciting lines: those carrying ≥ 1e-4 of the strongest line's primary emission
    keep = gen >= 1e-4 * gen.max()
    ei, srck, mui = el[keep], src[keep], mu_el[keep]
    used = srck.max(axis=0) > 0
    srck, pe = srck[:, used], p[used]
    p_nodes, lam = _log_interp_weights(pe, n_nodes)
    src_nodes = (srck / pe[None, :]) @ lam  # (nI, K): Σ_E0 src/p · Λ
    csj = xn.CS_FluorLine_Kissel_Cascade(z, _LINE_MACROS, ei)  # (nZ, nL, nI)
    csj = np.where(ok[:, :, None], csj, 0.0)
    a, b, c = np.nonzero(csj > 0)
    if a.size == 0:
        return out
    q = _mu(mat.elements, le[a, b]) / sb
    for start in range(0, a.size, 512):
        sl = slice(start, start + 512)
        h = p_nodes[:, None] * secondary_geometry(p_nodes[:, None], q[None, sl],
                                                  mui[None, c[sl]], mat.rho_t)  # (K, P)
        s_pair = np.einsum("pk,kp->p", src_nodes[c[sl]], h)
        np.add.at(out, (a[sl], b[sl]), wz[a[sl]] * csj[a[sl], b[sl], c[sl]] * s_pair)
    return out


def _compton(e: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Compton-scattered energy (keV) of photons ``e`` at angle ``theta[0]`` (rad)."""
    return xn.ComptonEnergy(np.asarray(e, float), theta)[:, 0]


def _compute(pigment, inst: Instrument) -> SpectrumComponents:
    mats = _layers(pigment)
    tube = source_spectrum(inst)
    e0, w0, blo, bhi = _incident_beam(inst)
    n_lines_tube = tube.line_energy.size
    sa = math.sin(math.radians(inst.incidence_deg))
    sb = math.sin(math.radians(inst.takeoff_deg))
    omega = solid_angle_sr(inst)
    theta = np.array([math.radians(inst.scattering_angle_deg)])
    # attenuation of each layer at the incident energies
    mu_in = [_mu(m.elements, e0) for m in mats]

    def above(j: int, mu_out_fn) -> np.ndarray:
        """Transmission through layers above j: (n_in, n_out)."""
        acc = None
        for k in range(j):
            chi = mu_in[k][:, None] / sa + mu_out_fn(k)[None, :] / sb
            t = np.exp(-chi * mats[k].rho_t)
            acc = t if acc is None else acc * t
        return acc

    def above_in(j: int) -> np.ndarray:
        """Transmission of the incident beam through the layers above j: (n_in,)."""
        return np.exp(-sum((mu_in[k] * mats[k].rho_t for k in range(j)), np.zeros_like(e0)) / sa)

    def above_out(j: int, energy: np.ndarray) -> np.ndarray:
        """Transmission of photons of ``energy`` leaving through the layers above j."""
        return np.exp(-sum((_mu(mats[k].elements, energy) * mats[k].rho_t for k in range(j)),
                           np.zeros_like(energy)) / sb)

    energies: list[float] = []
    intens: list[float] = []
    labels: list[str] = []
    widths: list[float] = []

    # ---- fluorescence ----------------------------------------------------------------------
    flu: dict[str, list] = {}
    for j, mat in enumerate(mats):
        z = np.array(list(mat.elements), dtype=int)
        wz = np.array(list(mat.elements.values()))
        le = xn.LineEnergy(z, _LINE_MACROS)  # (nZ, nL)
        ok = le > 0.1
        if not np.any(ok):
            continue
        cs = xn.CS_FluorLine_Kissel_Cascade(z, _LINE_MACROS, e0)  # (nZ, nL, nE)
        cs = np.where(ok[:, :, None], cs, 0.0)
        zi, li = np.nonzero(cs.max(axis=2) > 0)
        if zi.size == 0:
            continue
        el = le[zi, li]
        csl = cs[zi, li, :]  # (n, nE)
        mu_out = _mu(mat.elements, el)
        chi = mu_in[j][None, :] / sa + mu_out[:, None] / sb  # (n, nE)
        g = _layer_integral(chi, mat.rho_t)
        if j > 0:
            t_above = above(j, lambda k, el=el: _mu(mats[k].elements, el)).T  # (n, nE)
            g = g * t_above
        val = wz[zi] * ((csl * g) @ w0) / sa * omega / (4.0 * math.pi)
        val = val * _air_transmission(inst, el) * detector_efficiency(el, inst)
        if inst.secondary_fluorescence:
            # secondary fluorescence within the layer (element-to-element enhancement)
            src = wz[zi, None] * csl * (w0 * above_in(j) / sa)[None, :]
            sec = _secondary_emission(mat, z, wz, le, ok, el, src, mu_out, mu_in[j] / sa, sb)
            zs, ls = np.nonzero(sec > 0)
            es = le[zs, ls]
            vs = (sec[zs, ls] * omega / (4.0 * math.pi) * above_out(j, es)
                  * _air_transmission(inst, es) * detector_efficiency(es, inst))
            zi, li = np.concatenate([zi, zs]), np.concatenate([li, ls])
            el, val = np.concatenate([el, es]), np.concatenate([val, vs])
        for k in range(el.size):
            lab = f"{_symbol(z[zi[k]])} {_LINE_NAMES[li[k]]}"
            if lab in flu:
                flu[lab][1] += float(val[k])
            else:
                flu[lab] = [float(el[k]), float(val[k])]
    if flu:
        vmax = max(v for _, v in flu.values())
        for lab, (e, v) in flu.items():
            if v > 1e-5 * vmax:  # drop lines below 1e-5 of the strongest (invisible)
                energies.append(e)
                intens.append(v)
                labels.append(lab)
                widths.append(0.0)

    # ---- scatter ---------------------------------------------------------------------------
    ec = _compton(e0, theta)
    ray = np.zeros_like(e0)
    com = np.zeros_like(e0)
    for j, mat in enumerate(mats):
        z = np.array(list(mat.elements), dtype=int)
        wz = np.array(list(mat.elements.values()))
        dr, dc = _scatter_dcs(z, wz, e0, theta[0], inst)
        mu_c = _mu(mat.elements, ec)
        g_r = _layer_integral(mu_in[j] / sa + mu_in[j] / sb, mat.rho_t)
        g_c = _layer_integral(mu_in[j] / sa + mu_c / sb, mat.rho_t)
        if j > 0:
            t_r = np.ones_like(e0)
            t_c = np.ones_like(e0)
            for k in range(j):
                mk_in = mu_in[k]
                t_r = t_r * np.exp(-(mk_in / sa + mk_in / sb) * mats[k].rho_t)
                t_c = t_c * np.exp(-(mk_in / sa + _mu(mats[k].elements, ec) / sb) * mats[k].rho_t)
            g_r, g_c = g_r * t_r, g_c * t_c
        ray += dr * g_r
        com += dc * g_c
    ray = ray * w0 / sa * omega * _air_transmission(inst, e0) * detector_efficiency(e0, inst)
    com = com * w0 / sa * omega * _air_transmission(inst, ec) * detector_efficiency(ec, inst)
    nl = n_lines_tube
    # Compton Doppler broadening: dE'/dp_z ≈ sqrt(E² + E'² − 2EE'cosθ)/137 keV per a.u.
    cos_t = math.cos(theta[0])
    dop = np.sqrt(e0**2 + ec**2 - 2 * e0 * ec * cos_t) / 137.036 * inst.compton_profile_au
    for i in range(nl):
        for kind, e, v, wdt in (("Rayleigh", e0[i], ray[i], 0.0),
                                ("Compton", ec[i], com[i], dop[i])):
            if v > 0:
                energies.append(float(e))
                intens.append(float(v))
                labels.append(f"{tube.line_label[i]} {kind}")
                widths.append(float(wdt))
    box_lo = np.concatenate([blo, _compton(blo, theta)])
    box_hi = np.concatenate([bhi, _compton(bhi, theta)])
    box_i = np.concatenate([ray[nl:], com[nl:]])

    # ---- Si escape peaks of every line ------------------------------------------------------
    energies_a = np.array(energies, dtype=float)
    intens_a = np.array(intens, dtype=float)
    widths_a = np.array(widths, dtype=float)
    if inst.escape and energies_a.size:
        p = _escape_probability(energies_a, inst)
        ka_frac = 1.0 / (1.0 + xl.RadRate(14, xl.KM3_LINE) / max(
            xl.RadRate(14, xl.KL3_LINE) + xl.RadRate(14, xl.KL2_LINE), 1e-12))
        m = p > 0
        esc_e, esc_i, esc_l, esc_w = [], [], [], []
        for k in np.nonzero(m)[0]:
            for de, frac, tag in ((_SI_KA, ka_frac, "Si-esc"), (_SI_KB, 1.0 - ka_frac, "Si-esc-Kb")):
                e = energies_a[k] - de
                v = intens_a[k] * p[k] * frac
                if e > 0 and v > 1e-6 * intens_a.max():
                    esc_e.append(e)
                    esc_i.append(v)
                    esc_l.append(f"{labels[k]} {tag}")
                    esc_w.append(widths_a[k])
        intens_a = intens_a * (1.0 - p)
        energies_a = np.concatenate([energies_a, esc_e])
        intens_a = np.concatenate([intens_a, esc_i])
        widths_a = np.concatenate([widths_a, esc_w])
        labels = labels + esc_l
    keep = box_i > 0
    return SpectrumComponents(
        line_energy=energies_a, line_intensity=intens_a, line_label=tuple(labels),
        line_width=widths_a, box_lo=box_lo[keep], box_hi=box_hi[keep],
        box_intensity=box_i[keep], instrument=inst,
    )


def _pigment_key(pigment) -> str:
    return json.dumps({
        "composition": dict(sorted(pigment.composition.items())) if pigment.composition else None,
        "density": pigment.density,
        "thickness_um": pigment.thickness_um,
        "ground": [[dict(sorted(dict(g.composition).items())), g.density, g.thickness_um]
                   for g in pigment.ground],
    }, sort_keys=True)


_COMPONENT_CACHE: OrderedDict[tuple[str, str], SpectrumComponents] = OrderedDict()


def compute_components(pigment, instrument: Instrument | str | None = None) -> SpectrumComponents:
    """Fluorescence lines, scattered tube lines and continuum of a pigment (stack) for an instrument.

    Parameters
    ----------
    pigment : Pigment
        With a composition, density (g/cm³), optional ``thickness_um`` (µm; None = infinitely
        thick) and optional ``ground`` layers (top first; used only when the paint has a
        thickness).
    instrument : Instrument, preset name or None
        Default ``"lab-rh"``.

    Returns
    -------
    SpectrumComponents
        Cached per (pigment content, instrument).
    """
    inst = _as_instrument(instrument)
    key = (_pigment_key(pigment), inst.key())
    hit = _COMPONENT_CACHE.get(key)
    if hit is not None:
        _COMPONENT_CACHE.move_to_end(key)
        # the key ignores the instrument's name (a label): return the caller's instrument
        return hit if hit.instrument is inst else replace(hit, instrument=inst)
    # xraylib_np loops use OpenMP: on small arrays and a busy machine (dask threads) the thread
    # team costs 10-100x the work, so keep them (and BLAS) single-threaded here.
    with _single_threaded():
        comp = _compute(pigment, inst)
    _COMPONENT_CACHE[key] = comp
    while len(_COMPONENT_CACHE) > 512:
        _COMPONENT_CACHE.popitem(last=False)
    return comp


# ------------------------------------------------------------------------------------------
# detector response and rendering
# ------------------------------------------------------------------------------------------
#: |x/σ| from which Φ is exactly 0 or 1 and φ exactly 0 in float64 (Φ(−40) ≈ 1e-350).
_SATURATED = 40.0


def _box_cdf_term(x: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """F(x) = ∫_{-∞}^{x} Φ(t/σ) dt = x·Φ(x/σ) + σ·φ(x/σ).

    Evaluated only where ``|x/σ| < 40``; elsewhere ``F`` is exactly ``x`` or ``+0.0`` in float64
    (the same bits as the full formula), which skips most of a box matrix's ``ndtr``/``exp``.
    """
    u = x / sigma
    out = np.where(u > 0.0, x, 0.0)
    band = np.abs(u) < _SATURATED
    ub = u[band]
    sb = np.broadcast_to(sigma, u.shape)[band]
    out[band] = x[band] * ndtr(ub) + sb * np.exp(-0.5 * ub * ub) / math.sqrt(2.0 * math.pi)
    return out


def _tail_cdf_exact(x: np.ndarray, sigma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    # X = E0 + G − Y; P(X ≤ E0 + x) = P(Y − G ≥ −x) with Z = Y + G' (EMG, G' ~ N(0,σ)):
    # F_Z(z) = Φ(z/σ) − exp(−z/β + σ²/2β² + log Φ(z/σ − σ/β)); P = 1 − F_Z(−x)
    z = -x
    expo = -z / beta + 0.5 * (sigma / beta) ** 2 + log_ndtr(z / sigma - sigma / beta)
    return 1.0 - (ndtr(z / sigma) - np.exp(expo))


def line_response(energy_kev, edges, instrument: Instrument | None = None,
                  extra_sigma=0.0) -> dict[str, np.ndarray]:
    """Detector response of unit-area lines, integrated over channels, split into its parts.

    Parameters
    ----------
    energy_kev : float or array
        Line energies, keV (shape ``(n,)``).
    edges : array
        Channel edges, keV (``m + 1``).
    instrument : Instrument, optional
        Resolution (:func:`fwhm_kev`), ``tail_fraction``, ``tail_slope_sigma``, ``shelf_fraction``.
    extra_sigma : float or array
        Extra Gaussian σ, keV (added in quadrature).

    Returns
    -------
    dict
        ``"gaussian"``, ``"tail"``, ``"shelf"``: arrays ``(n, m)`` of counts per channel; their
        sums over a channel range covering 0 … E0 + 10σ are ``1 − f_tail − f_shelf``, ``f_tail``
        and ``f_shelf``.
    """
    inst = _as_instrument(instrument)
    e0 = np.atleast_1d(np.asarray(energy_kev, dtype=float))[:, None]
    ed = np.asarray(edges, dtype=float)[None, :]
    sdet = fwhm_kev(e0, inst) / _FWHM_PER_SIGMA
    sig = np.sqrt(sdet**2 + np.atleast_1d(np.asarray(extra_sigma, float))[:, None] ** 2)
    ft, fs = inst.tail_fraction, inst.shelf_fraction
    x = ed - e0
    gauss = np.diff(ndtr(x / sig), axis=1) * (1.0 - ft - fs)
    beta = inst.tail_slope_sigma * sdet  # a detector property: the detector σ, as in render()
    tail = np.diff(_tail_cdf_exact(x, sig, beta), axis=1) * ft if ft > 0 else np.zeros_like(gauss)
    if fs > 0:
        # box [0, E0] ⊗ Gaussian(σ at E0), sharp at 0 keV: h·(clip(e, 0, E0) − c(e − E0))
        cdf = (np.clip(ed, 0.0, e0) - (_box_cdf_term(x, sig) - np.maximum(x, 0.0))) / e0
        shelf = np.diff(cdf, axis=1) * fs
    else:
        shelf = np.zeros_like(gauss)
    return {"gaussian": gauss, "tail": tail, "shelf": shelf}


_BOX_MATRIX_CACHE: OrderedDict[tuple, np.ndarray] = OrderedDict()


def _box_matrix(lo: np.ndarray, hi: np.ndarray, edges: np.ndarray, inst: Instrument) -> np.ndarray:
    """(n_box, n_chan) response of unit-area boxes convolved with the detector Gaussian."""
    key = (lo.tobytes(), hi.tobytes(), edges.tobytes(), inst.epsilon_kev, inst.fano,
           inst.noise_fwhm_kev)
    hit = _BOX_MATRIX_CACHE.get(key)
    if hit is not None:
        _BOX_MATRIX_CACHE.move_to_end(key)
        return hit
    sig = (fwhm_kev(0.5 * (lo + hi), inst) / _FWHM_PER_SIGMA)[:, None]
    ed = edges[None, :]
    cdf = (_box_cdf_term(ed - lo[:, None], sig) - _box_cdf_term(ed - hi[:, None], sig)) / (
        hi - lo)[:, None]
    mat = np.diff(cdf, axis=1)
    _BOX_MATRIX_CACHE[key] = mat
    while len(_BOX_MATRIX_CACHE) > 8:
        _BOX_MATRIX_CACHE.popitem(last=False)
    return mat


def render(components: SpectrumComponents, edges, instrument: Instrument | None = None) -> np.ndarray:
    """Counts per channel of ``components`` seen by the detector.

    Lines: Gaussian (FWHM from :func:`fwhm_kev`, plus the line's extra width) with a low-energy
    exponential tail and a flat shelf (``instrument.tail_fraction``, ``tail_slope_sigma``,
    ``shelf_fraction``).  Continuum boxes: box ⊗ Gaussian in closed form
    (``Σ ±F(edge − box edge)``, ``F(x) = x·Φ(x/σ) + σ·φ(x/σ)``), no tail/shelf.

    Parameters
    ----------
    components : SpectrumComponents
    edges : array or energy axis
        Channel edges in keV (``m + 1`` increasing values), or anything
        :func:`ganx_dask.energy.as_energy_axis` accepts (an axis, ``"START:STOP:N"``, centres).
    instrument : Instrument, optional
        Detector response; default ``components.instrument`` (or ``"lab-rh"``).

    Returns
    -------
    numpy.ndarray
        Counts per channel (same units as the components' intensities), shape ``(m,)``.
    """
    with _single_threaded():
        return _render_one(components, edges, instrument)


def _check_axis_reached(components: list[SpectrumComponents], ed: np.ndarray) -> None:
    """EnergyAxisError when the axis starts above every photon energy of the components (e.g.
    50-60 keV with a 40 kV tube): the rows would be normalised numerical tails, not spectra."""
    tops = [max(c.line_energy.max(initial=-np.inf), c.box_hi.max(initial=-np.inf))
            for c in components]
    emax = max(tops, default=-np.inf)
    if np.isfinite(emax) and ed[0] >= emax:
        kv = {getattr(c.instrument, "kv", None) for c in components
              if getattr(c.instrument, "source", "tube") == "tube"} - {None}
        tube = f"; tube {', '.join(f'{v:g}' for v in sorted(kv))} kV" if kv else ""
        raise EnergyAxisError(
            f"energy axis {ed[0]:g}-{ed[-1]:g} keV starts above the highest photon energy of "
            f"the computed spectra ({emax:.4g} keV{tube}): no fluorescence or scatter reaches it"
        )


def _render_one(components: SpectrumComponents, edges, instrument) -> np.ndarray:
    inst = _as_instrument(instrument if instrument is not None else components.instrument)
    ed = _edges_of(edges)
    _check_axis_reached([components], ed)
    out = np.zeros(ed.size - 1)
    if components.box_intensity.size:
        out += components.box_intensity @ _box_matrix(components.box_lo, components.box_hi, ed, inst)
    if components.line_energy.size:
        out += _render_lines(components.line_energy, components.line_intensity,
                             components.line_width, ed, inst)[0]
    return np.maximum(out, 0.0)


def _edges_of(edges) -> np.ndarray:
    if isinstance(edges, np.ndarray) and edges.ndim == 1 and edges.dtype.kind == "f":
        return edges
    return axis_edges(edges)


def _render_lines(e0: np.ndarray, area: np.ndarray, width: np.ndarray, ed: np.ndarray,
                  inst: Instrument, owner: np.ndarray | None = None, n_owner: int = 1) -> np.ndarray:
    """Lines rendered on windows of channels around each line (exact outside the window).

    Returns ``(n_owner, n_chan)`` counts (``owner[i]`` = output row of line ``i``).
    """
    nchan = ed.size - 1
    out = np.zeros(n_owner * nchan)
    if e0.size == 0:
        return out.reshape(n_owner, nchan)
    if owner is None:
        owner = np.zeros(e0.size, dtype=np.int64)
    sdet = fwhm_kev(e0, inst) / _FWHM_PER_SIGMA
    sig = np.sqrt(sdet**2 + width**2)
    ft, fs = inst.tail_fraction, inst.shelf_fraction
    beta = inst.tail_slope_sigma * sdet
    # window: Gaussian ±9σ, tail down to 28β below (exp(−28) ≈ 7e-13 of the tail)
    w_lo = e0 - 9.0 * sig - (28.0 * beta if ft > 0 else 0.0)
    w_hi = e0 + 9.0 * sig
    i0 = np.clip(np.searchsorted(ed, w_lo, side="right") - 1, 0, ed.size - 1)
    i1 = np.clip(np.searchsorted(ed, w_hi, side="left") + 1, 0, ed.size - 1)
    span = i1 - i0 + 1
    order = np.argsort(span, kind="stable")
    for start in range(0, order.size, 64):  # groups of similar window length: little padding
        sel = order[start:start + 64]
        k = int(min(span[sel].max(), ed.size))
        idx = np.minimum(i0[sel, None] + np.arange(k)[None, :], ed.size - 1)
        x = ed[idx] - e0[sel, None]
        s = sig[sel, None]
        cdf = (1.0 - ft - fs) * ndtr(x / s)
        if ft > 0:
            cdf = cdf + ft * _tail_cdf_exact(x, s, beta[sel, None])
        a = area[sel, None]
        cnt = np.diff(cdf, axis=1) * a
        if fs > 0:
            # shelf (box [0, E0] ⊗ Gaussian): smooth part near E0 here, linear part below
            corr = _box_cdf_term(x, s) - np.maximum(x, 0.0)
            cnt -= np.diff(corr, axis=1) * (fs * a / e0[sel, None])
        chan = idx[:, :-1]
        valid = idx[:, 1:] > chan
        flat = owner[sel, None] * nchan + chan
        out += np.bincount(flat[valid], weights=cnt[valid], minlength=out.size)
    out = out.reshape(n_owner, nchan)
    if fs > 0:
        # linear part of the shelf on the full grid: Σ h_i clip(e, 0, E0_i) per owner
        h = fs * area / e0
        lin = np.clip(ed[None, :], 0.0, e0[:, None])  # (n, m+1)
        weights = np.zeros((n_owner, e0.size))
        weights[owner, np.arange(e0.size)] = h
        out += np.diff(weights @ lin, axis=1)
    return out


def render_many(components: list[SpectrumComponents], edges,
                instrument: Instrument | None = None) -> np.ndarray:
    """Render several components on one axis at once: ``(len(components), n_chan)`` counts.

    Same result as :func:`render` row by row; all continuum boxes sharing one grid are rendered
    with one matrix product and all lines in one windowed pass.

    Parameters
    ----------
    components : list of SpectrumComponents
    edges : array or energy axis
        Channel edges, keV, or anything :func:`ganx_dask.energy.as_energy_axis` accepts.
    instrument : Instrument, optional
        Detector response for all rows; default each row's own instrument.
    """
    with _single_threaded():
        return _render_many(components, edges, instrument)


def _render_many(components: list[SpectrumComponents], edges, instrument) -> np.ndarray:
    ed = _edges_of(edges)
    _check_axis_reached(components, ed)
    out = np.zeros((len(components), ed.size - 1))
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(components):
        inst = _as_instrument(instrument if instrument is not None else c.instrument)
        groups.setdefault(inst.key(), []).append(i)
    for rows in groups.values():
        cs = [components[i] for i in rows]
        inst = _as_instrument(instrument if instrument is not None else cs[0].instrument)
        # continuum: one matrix per distinct box grid
        grids: dict[bytes, list[int]] = {}
        for j, c in enumerate(cs):
            if c.box_intensity.size:
                grids.setdefault(c.box_lo.tobytes() + c.box_hi.tobytes(), []).append(j)
        for js in grids.values():
            c0 = cs[js[0]]
            mat = _box_matrix(c0.box_lo, c0.box_hi, ed, inst)
            inten = np.vstack([cs[j].box_intensity for j in js])
            out[[rows[j] for j in js]] += inten @ mat
        e0 = np.concatenate([c.line_energy for c in cs])
        if e0.size:
            area = np.concatenate([c.line_intensity for c in cs])
            width = np.concatenate([c.line_width for c in cs])
            owner = np.concatenate([np.full(c.line_energy.size, j) for j, c in enumerate(cs)])
            out[rows] += _render_lines(e0, area, width, ed, inst, owner.astype(np.int64), len(cs))
    return np.maximum(out, 0.0)


def pigment_components(pigment, instrument: Instrument | str | None = None) -> SpectrumComponents:
    """The components used for ``pigment`` with ``instrument``.

    ``None``, or an instrument equal to that of the pigment's precomputed components, gives the
    precomputed components (fast path); otherwise they are computed with xraylib (cached).
    """
    pre = getattr(pigment, "_components", None)
    inst = None if instrument is None else _as_instrument(instrument)
    if pre is not None and (inst is None or inst == pre.instrument):
        return pre
    return compute_components(pigment, inst)


def pigment_spectrum(pigment, energy, instrument: Instrument | str | None = None) -> np.ndarray:
    """Counts per channel of a computed pigment on ``energy`` (not normalised).

    Parameters
    ----------
    pigment : Pigment
    energy : EnergyAxis, str or array-like
        See :func:`ganx_dask.energy.as_energy_axis` (bin centres in keV).
    instrument : Instrument, preset name or None
        ``None``, or equal to the instrument of the pigment's precomputed components: the fast
        path (numpy rendering only).  Otherwise computed with xraylib (cached).

    Returns
    -------
    numpy.ndarray
        Non-negative counts per channel.
    """
    comps = pigment_components(pigment, instrument)
    inst = None if instrument is None else _as_instrument(instrument)
    return render(comps, axis_edges(energy), inst if inst is not None else comps.instrument)
