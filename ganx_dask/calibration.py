"""Calibration: fit the instrument, detector, background and colour → composition model to a scan.

:func:`calibrate` takes a measured MA-XRF cube ``(y, x, energy)`` and a photo of the same area and
returns a :class:`Calibration`; ``generate(image, calibration=cal)`` then produces cubes that
look like that scanner's output.  The models and the fit order are documented in
``docs/calibration.md``; in short:

0. **Colour groups.**  The photo is clustered (k-means in RGB, the generator's clustering) and
   every scan chunk is reduced to per-group sum spectra and per-pixel totals (one streaming dask
   pass: the cube is never loaded).
1. **Energy calibration check.**  The strongest peaks of the sum spectrum are located
   (log-parabola centroids) and matched to the strongest lines of the library pigments that
   explain the scan; a weighted linear fit ``E = offset + gain·channel`` gives the starting
   gain/offset (keV/channel, keV at the centre of channel 0).
2. **Detector response, pile-up, background and energy** (joint, variable projection).  Model of
   group ``k``::

       Y_k = (1 − p_k)² [m_k + p_k (m_k ⊛ m_k)/T_k + p_k² (m_k ⊛ m_k ⊛ m_k)/T_k²]
       m_k = Σ_p x_kp h_p(θ) + Σ_j x_kj g_j(θ),   T_k = Σ_E m_k

   ``h_p`` are the library's pigment spectra (components of :mod:`~ganx_dask.pigments.physics`
   rendered with the detector response θ: gain, offset, electronic noise, Fano factor, Hypermet
   tail fraction and slope, shelf fraction), ``g_j`` the background components (a flat shelf
   from 0 keV to the tube voltage, and the tube spectrum scattered by a cellulose matrix),
   ``p_k = 1 − exp(−κ λ_k)`` the pile-up link probability of the extending pulse-pair model of
   :mod:`ganx_dask.detector` at the group's incident counts per pixel ``λ_k``.  For every θ the
   non-negative ``x`` are solved by NNLS (Poisson-weighted) and θ is fitted by
   ``scipy.optimize.least_squares``.
3. **Source** (optional, ``fit_source=True``): the tube voltage is chosen on a grid by the same
   χ² (pigment components recomputed with xraylib for each kV).
4. **Colour → composition.**  With the final θ, each group's spectrum is fitted once more over
   the whole library; abundances (fractions of the pigment photons), background fractions and
   incident counts per pixel are stored per group with the group's CIELAB colour.  A new colour
   gets a Gaussian-kernel (ΔE2000) average of the groups' values; colours farther than
   ``gamut_de`` from every group are *out of gamut* and fall back to the paper's matching.

Energies keV, counts photons, colours 8-bit sRGB / CIELAB.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from ._version import __version__
from .attrs import plain
from .errors import ConfigError, EnergyAxisError, GanxError, ImageError, PigmentError

__all__ = ["Calibration", "ColourModel", "calibrate", "background_components",
           "pileup_spectrum", "BACKGROUNDS"]

#: Background components (see :func:`background_components`).
BACKGROUNDS = ("flat", "rayleigh", "compton")
#: Detector-response parameters fitted in step 2 (Instrument field names), then pile-up.
_DET_FIELDS = ("noise_fwhm_kev", "fano", "tail_fraction", "tail_slope_sigma", "shelf_fraction")
_FORMAT = "ganx-dask-calibration"
_FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------
def library_hash(library) -> str:
    """SHA-256 of the library's canonical JSON (:func:`~ganx_dask.pigments.formats.library_to_dict`)."""
    from .pigments.formats import library_to_dict

    text = json.dumps(library_to_dict(library), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _edges(gain: float, offset: float, n: int) -> np.ndarray:
    """Channel edges (keV) of ``n`` channels centred at ``offset + gain·i``."""
    return offset + gain * (np.arange(n + 1) - 0.5)


def _shift_add(out: np.ndarray, conv: np.ndarray, shift: int) -> None:
    """``out[i + shift] += conv[i]`` for the indices that land on ``out``."""
    n = out.size
    lo = max(0, -shift)
    hi = min(conv.size, n - shift)
    if hi > lo:
        out[lo + shift:hi + shift] += conv[lo:hi]


def pileup_spectrum(m: np.ndarray, p: float, edges: np.ndarray) -> np.ndarray:
    """Expected recorded spectrum of incident photons ``m`` with pile-up link probability ``p``.

    Extending pulse-pair model of :mod:`ganx_dask.detector` (chains of 2 and 3 photons; a chain
    is recorded at the sum of its members' channel centres)::

        Y = (1 − p)² [m + p (m ⊛ m)/T + p² (m ⊛ m ⊛ m)/T²],  T = Σ m

    Parameters
    ----------
    m : numpy.ndarray
        ``(E,)`` expected incident photons per channel.
    p : float
        Probability that a photon's successor arrives within the pulse-pair time.
    edges : numpy.ndarray
        ``(E + 1,)`` uniform channel edges, keV.

    Returns
    -------
    numpy.ndarray
        ``(E,)`` expected recorded counts per channel.
    """
    from scipy.signal import fftconvolve

    if p <= 0:
        return m.copy()
    tot = float(m.sum())
    out = m.copy()
    if tot <= 0:
        return out * (1 - p) ** 2
    s_over_w = edges[0] / (edges[1] - edges[0])
    c2 = np.maximum(fftconvolve(m, m), 0.0)
    _shift_add(out, p * c2 / tot, int(math.floor(s_over_w + 1.0 + 1e-9)))
    c3 = np.maximum(fftconvolve(c2, m), 0.0)
    _shift_add(out, p * p * c3 / tot**2, int(math.floor(2 * s_over_w + 1.5 + 1e-9)))
    return out * (1 - p) ** 2


# ------------------------------------------------------------------------------------------
# background components
# ------------------------------------------------------------------------------------------
def background_components(instrument, e_top_kev: float | None = None) -> dict:
    """Background components of the model, as :class:`~ganx_dask.pigments.physics.SpectrumComponents`.

    ``"flat"``
        A flat shelf of unit area from 0 keV to ``e_top_kev`` (default: the tube voltage or the
        monochromatic energy): incomplete charge collection of all photons, electronic
        background, scatter from the scanner itself.
    ``"rayleigh"``, ``"compton"``
        The source lines Rayleigh- resp. Compton-scattered by an infinitely thick cellulose
        matrix (C6H10O5, 1.5 g/cm³), the scattered tube continuum split likewise: the scatter
        of the binder/support.  Separate, because their ratio depends on the matrix.

    Parameters
    ----------
    instrument : Instrument
    e_top_kev : float, optional
        Upper end of the flat shelf, keV.
    """
    from .pigments import Pigment
    from .pigments.physics import SpectrumComponents, compute_components

    inst = instrument
    top = float(e_top_kev if e_top_kev is not None else _source_energy(inst))
    flat = SpectrumComponents(line_energy=[], line_intensity=[], line_label=(), line_width=[],
                              box_lo=[0.0], box_hi=[top], box_intensity=[1.0], instrument=inst)
    matrix = Pigment(name="cellulose matrix", rgb=(255, 255, 255),
                     composition={"C6H10O5": 1.0}, density=1.5)
    c = compute_components(matrix, inst)
    out = {"flat": flat}
    # continuum boxes: the first half of the grid is Rayleigh, the second Compton (physics);
    # boxes of zero intensity are dropped there, so split at the boxes' own energy order
    nb = c.box_lo.size
    ray_box = np.zeros(nb, bool)
    if nb:
        t = _tube_boxes(inst)
        ray_box = np.isin(np.round(c.box_lo, 9), np.round(t, 9)) if t is not None else ray_box
    for kind, boxes in (("rayleigh", ray_box), ("compton", ~ray_box)):
        keep = np.array([kind.capitalize() in s for s in c.line_label], dtype=bool)
        out[kind] = SpectrumComponents(
            line_energy=c.line_energy[keep], line_intensity=c.line_intensity[keep],
            line_label=tuple(s for s, k in zip(c.line_label, keep, strict=True) if k),
            line_width=c.line_width[keep], box_lo=c.box_lo[boxes], box_hi=c.box_hi[boxes],
            box_intensity=c.box_intensity[boxes], instrument=inst)
    return out


def _tube_boxes(inst) -> np.ndarray | None:
    """Lower edges of the unscattered source continuum boxes, keV (None: no continuum)."""
    from .pigments.physics import source_spectrum

    try:
        t = source_spectrum(inst)
    except GanxError:
        return None
    return np.asarray(t.box_lo, float)


def _source_energy(inst) -> float:
    """Highest photon energy of the source, keV (monochromatic energy or tube voltage)."""
    e = getattr(inst, "excitation_kev", None)
    return float(e) if e else float(inst.kv)


# ------------------------------------------------------------------------------------------
# basis rendering (fast path for the nonlinear fit)
# ------------------------------------------------------------------------------------------
class _Basis:
    """Rows ``h_p(θ)`` of the model: lines rendered exactly per θ, continuum from a fine-grid CDF.

    The continuum (scattered tube continuum, flat shelf) is smooth: its detector blur is taken at
    the θ of :meth:`prepare` (refreshed between fit rounds) and re-binned exactly onto the
    channel edges of each θ, which makes an evaluation ~10× cheaper than a full render.
    """

    def __init__(self, comps: list, names: list[str], rel_cut: float = 1e-4) -> None:
        from .pigments.physics import SpectrumComponents

        self.names = list(names)
        self.full = comps
        self.lines = []
        self.cont = []
        for c in comps:
            tot = max(c.total, 1e-300)
            k = c.line_intensity > rel_cut * tot
            self.lines.append(SpectrumComponents(
                line_energy=c.line_energy[k], line_intensity=c.line_intensity[k],
                line_label=tuple(s for s, kk in zip(c.line_label, k, strict=True) if kk),
                line_width=c.line_width[k], box_lo=[], box_hi=[], box_intensity=[],
                instrument=c.instrument))
            self.cont.append(SpectrumComponents(
                line_energy=[], line_intensity=[], line_label=(), line_width=[],
                box_lo=c.box_lo, box_hi=c.box_hi, box_intensity=c.box_intensity,
                instrument=c.instrument))
        self._compton = [np.array(["Compton" in s for s in c.line_label], dtype=bool)
                         for c in self.lines]
        self._fine_edges = None
        self._cdf = None

    def _scaled_lines(self, scale: float) -> list:
        """Line components with the Compton Doppler widths scaled by ``scale``."""
        from dataclasses import replace as dc_replace

        if scale == 1.0:
            return self.lines
        out = []
        for c, m in zip(self.lines, self._compton, strict=True):
            if m.any():
                c = dc_replace(c, line_width=np.where(m, c.line_width * scale, c.line_width))
            out.append(c)
        return out

    def prepare(self, inst, lo: float, hi: float, step: float) -> None:
        from .pigments.physics import render_many

        lo = max(lo, 0.0)
        n = int(math.ceil((hi - lo) / step))
        fe = lo + step * np.arange(n + 1)
        cont = render_many(self.cont, fe, inst)
        self._fine_edges = fe
        self._cdf = np.concatenate([np.zeros((len(self.cont), 1)), np.cumsum(cont, axis=1)], axis=1)

    def render(self, edges: np.ndarray, inst, full: bool = False,
               compton_scale: float = 1.0) -> np.ndarray:
        """``(B, E)`` rows normalised to sum 1 on ``edges`` (zero rows stay zero)."""
        from .pigments.physics import render_many

        if full:
            rows = render_many(self.full, edges, inst)
        else:
            rows = render_many(self._scaled_lines(float(compton_scale)), edges, inst)
            cdf = np.stack([np.interp(edges, self._fine_edges, c) for c in self._cdf])
            rows = rows + np.maximum(np.diff(cdf, axis=1), 0.0)
        tot = rows.sum(axis=1, keepdims=True)
        return np.where(tot > 0, rows / np.where(tot > 0, tot, 1.0), 0.0)


# ------------------------------------------------------------------------------------------
# colour -> composition model
# ------------------------------------------------------------------------------------------
@dataclass
class ColourModel:
    """Per colour group: CIELAB colour, pigment abundances, background fractions, counts.

    Attributes
    ----------
    rgb : numpy.ndarray
        ``(G, 3)`` uint8 mean colour of each group.
    pigments : list of str
        Library pigment names of the abundance columns.
    abundance : numpy.ndarray
        ``(G, P)`` fraction of the pigment photons from each pigment (rows sum to 1).
    background : numpy.ndarray
        ``(G, B)`` fraction of all incident photons in each background component.
    counts : numpy.ndarray
        ``(G,)`` mean incident photons per pixel (before pile-up), counts.
    counts_spread : numpy.ndarray
        ``(G,)`` relative standard deviation of the recorded per-pixel totals (diagnostic).
    pixels : numpy.ndarray
        ``(G,)`` pixels of each group in the scan.
    bandwidth_de : float
        Kernel width of the colour regression, ΔE2000.
    gamut_de : float
        Colours farther than this (ΔE2000) from every group are out of gamut.
    """

    rgb: np.ndarray
    pigments: list[str]
    abundance: np.ndarray
    background: np.ndarray
    counts: np.ndarray
    counts_spread: np.ndarray
    pixels: np.ndarray
    bandwidth_de: float
    gamut_de: float
    background_names: list[str] = field(default_factory=lambda: list(BACKGROUNDS))

    @property
    def lab(self) -> np.ndarray:
        from .color import rgb_to_lab

        return rgb_to_lab(np.asarray(self.rgb, np.uint8))

    def predict(self, rgb) -> dict[str, np.ndarray]:
        """Abundances, background fractions and counts of colours ``rgb`` (``(n, 3)`` uint8).

        Returns
        -------
        dict
            ``abundance (n, P)``, ``background (n, B)``, ``counts (n,)``, ``in_gamut (n,)``
            bool and ``distance (n,)`` ΔE2000 to the nearest group.
        """
        from .color import delta_e, rgb_to_lab

        lab = rgb_to_lab(np.asarray(rgb, np.uint8).reshape(-1, 3))
        d = delta_e(lab[:, None, :], self.lab[None, :, :], "ciede2000")  # (n, G)
        dmin = d.min(axis=1)
        # Gaussian kernel in ΔE2000 (shifted by the nearest distance: no underflow far out)
        w = np.exp(-0.5 * (d**2 - dmin[:, None] ** 2) / max(self.bandwidth_de, 1e-6) ** 2)
        w /= w.sum(axis=1, keepdims=True)
        ab = w @ self.abundance
        ab /= np.maximum(ab.sum(axis=1, keepdims=True), 1e-300)
        return {"abundance": ab, "background": w @ self.background,
                "counts": w @ self.counts, "in_gamut": dmin <= self.gamut_de, "distance": dmin}

    def to_dict(self) -> dict:
        return {
            "rgb": np.asarray(self.rgb).astype(int).tolist(),
            "lab": np.round(self.lab, 4).tolist(),
            "pigments": list(self.pigments),
            "abundance": np.asarray(self.abundance, float).tolist(),
            "background_names": list(self.background_names),
            "background": np.asarray(self.background, float).tolist(),
            "counts": np.asarray(self.counts, float).tolist(),
            "counts_spread": np.round(self.counts_spread, 6).tolist(),
            "pixels": np.asarray(self.pixels).astype(int).tolist(),
            "bandwidth_de": float(self.bandwidth_de),
            "gamut_de": float(self.gamut_de),
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "colour_model") -> ColourModel:
        try:
            m = cls(rgb=np.asarray(d["rgb"], np.uint8).reshape(-1, 3),
                    pigments=[str(s) for s in d["pigments"]],
                    abundance=np.asarray(d["abundance"], float),
                    background=np.asarray(d["background"], float),
                    counts=np.asarray(d["counts"], float),
                    counts_spread=np.asarray(d.get("counts_spread", []), float),
                    pixels=np.asarray(d["pixels"], np.int64),
                    bandwidth_de=float(d["bandwidth_de"]), gamut_de=float(d["gamut_de"]),
                    background_names=[str(s) for s in d.get("background_names", BACKGROUNDS)])
        except KeyError as exc:
            raise ConfigError(f"{where}: field {exc.args[0]!r} is missing") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: malformed ({exc})") from None
        g = m.rgb.shape[0]
        if (m.abundance.shape != (g, len(m.pigments)) or m.counts.shape != (g,)
                or m.background.shape != (g, len(m.background_names))):
            raise ConfigError(f"{where}: array shapes disagree with {g} colour groups")
        for name in ("abundance", "background", "counts"):
            a = getattr(m, name)
            if not np.all(np.isfinite(a)) or np.any(a < 0):
                raise ConfigError(f"{where}.{name}: values must be finite and non-negative")
        return m


# ------------------------------------------------------------------------------------------
# the calibration object
# ------------------------------------------------------------------------------------------
@dataclass
class Calibration:
    """A fitted scanner model: instrument, detector effects, background, colour model.

    Attributes
    ----------
    instrument : Instrument
        Source and detector response (noise, Fano, tail, shelf fitted).
    detector : DetectorEffects or None
        Pile-up (``pulse_pair_ns`` and ``dwell_ms`` reproduce the fitted link probability at the
        fitted counts); None when no pile-up was found.
    energy : dict
        ``gain`` (keV/channel), ``offset`` (keV at the centre of channel 0), ``channels`` and the
        scan's stated ``stated_gain``/``stated_offset``.
    background : dict
        Name -> :class:`~ganx_dask.pigments.physics.SpectrumComponents`.
    colour : ColourModel
    library : dict
        ``name``, ``version``, ``sha256`` (content hash), ``pigments`` (names).
    diagnostics : dict
        Per-step results (see docs/calibration.md), the sum spectrum of data and fit.
    """

    instrument: Any
    detector: Any
    energy: dict
    background: dict
    colour: ColourModel
    library: dict
    diagnostics: dict = field(default_factory=dict)
    created: str = ""
    source: str = ""

    # -- axis -------------------------------------------------------------------------------
    @property
    def energy_axis(self):
        """The fitted energy axis of the scan: an EnergyAxis (start ≥ 0) or bin centres."""
        from .energy import EnergyAxis

        g, o, n = self.energy["gain"], self.energy["offset"], int(self.energy["channels"])
        start = o - g / 2
        if start >= 0:
            return EnergyAxis(start, start + g * n, n)
        return o + g * np.arange(n)

    # -- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": _FORMAT, "format_version": _FORMAT_VERSION,
            "ganx_dask_version": __version__, "created": self.created, "source": self.source,
            "instrument": self.instrument.to_dict(),
            "detector": None if self.detector is None else self.detector.to_dict(),
            "energy": {k: (float(v) if isinstance(v, (float, np.floating)) else v)
                       for k, v in self.energy.items()},
            "background": {k: v.to_dict(digits=17) for k, v in self.background.items()},
            "colour_model": self.colour.to_dict(),
            "library": dict(self.library),
            "diagnostics": plain(self.diagnostics, finite=True),
        }

    def to_json(self, path, *, overwrite: bool = True) -> Path:
        """Write the calibration as JSON (atomically: a temporary file renamed)."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise GanxError(f"{path}: exists (pass overwrite=True to replace it)")
        text = json.dumps(self.to_dict(), indent=1)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, d: Any, where: str = "calibration") -> Calibration:
        from .detector import DetectorEffects
        from .pigments.physics import Instrument, SpectrumComponents

        if not isinstance(d, dict) or d.get("format") != _FORMAT:
            raise ConfigError(f"{where}: not a ganx-dask calibration (field 'format' must be "
                              f"{_FORMAT!r})")
        for key in ("instrument", "energy", "background", "colour_model", "library"):
            if key not in d:
                raise ConfigError(f"{where}: field {key!r} is missing")
        try:
            inst = Instrument.from_dict(d["instrument"])
            det = None if d.get("detector") is None else DetectorEffects.from_dict(d["detector"])
        except GanxError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        energy = d["energy"]
        for key in ("gain", "offset", "channels"):
            v = energy.get(key) if isinstance(energy, dict) else None
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"{where}: field 'energy.{key}' must be a number, got {v!r}")
        if energy["gain"] <= 0 or int(energy["channels"]) < 1:
            raise ConfigError(f"{where}: field 'energy.gain' must be > 0 and 'energy.channels' >= 1")
        try:
            bg = {str(k): SpectrumComponents.from_dict(v) for k, v in d["background"].items()}
        except (GanxError, AttributeError) as exc:
            raise ConfigError(f"{where}: field 'background': {exc}") from None
        colour = ColourModel.from_dict(d["colour_model"], f"{where}: field 'colour_model'")
        if sorted(bg) != sorted(colour.background_names):
            raise ConfigError(f"{where}: field 'background' names {sorted(bg)} differ from "
                              f"colour_model.background_names {colour.background_names}")
        lib = d["library"]
        if not isinstance(lib, dict) or "sha256" not in lib:
            raise ConfigError(f"{where}: field 'library.sha256' is missing")
        return cls(instrument=inst, detector=det, energy=dict(energy), background=bg,
                   colour=colour, library=dict(lib), diagnostics=d.get("diagnostics", {}),
                   created=str(d.get("created", "")), source=str(d.get("source", "")))

    @classmethod
    def from_json(cls, path) -> Calibration:
        """Read a calibration file.

        Raises
        ------
        ConfigError
            Unreadable file, invalid JSON, or a missing/invalid field (named with the file).
        """
        path = Path(os.fspath(path))
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read calibration file ({exc})") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return cls.from_dict(d, str(path))

    # -- use ---------------------------------------------------------------------------------
    def check_library(self, library) -> None:
        """ConfigError when ``library`` is not the one the calibration refers to."""
        h = library_hash(library)
        if h != self.library.get("sha256"):
            raise ConfigError(
                f"calibration refers to library {self.library.get('name')!r} "
                f"v{self.library.get('version')} (sha256 {str(self.library.get('sha256'))[:12]}…), "
                f"got library {library.name!r} v{library.version} (sha256 {h[:12]}…); pass the "
                "library used for the calibration")

    def background_spectra(self, energy, instrument=None) -> np.ndarray:
        """``(B, E)`` background components rendered on ``energy``, rows summing to 1."""
        from .energy import axis_edges
        from .pigments.physics import render_many

        inst = instrument if instrument is not None else self.instrument
        names = self.colour.background_names
        rows = render_many([self.background[n] for n in names], axis_edges(energy), inst)
        tot = rows.sum(axis=1, keepdims=True)
        return np.where(tot > 0, rows / np.where(tot > 0, tot, 1.0), 0.0)

    def cluster_distributions(self, cluster_rgb, library, lib_spectra, energy, *,
                              instrument=None, **match):
        """Abundances, spectra and incident counts of new clusters from the colour model.

        Parameters
        ----------
        cluster_rgb : array-like
            ``(K, 3)`` uint8 cluster colours.
        library : PigmentLibrary
        lib_spectra : xarray.DataArray
            ``(pigment, energy)`` library spectra (rows sum to 1).
        energy : axis
            The generation axis (for the background components).
        **match
            Matching parameters (:func:`ganx_dask.matching.cluster_distributions`) for
            out-of-gamut colours.

        Returns
        -------
        abundance : xarray.DataArray ``(cluster, pigment)``
        spectrum : xarray.DataArray ``(cluster, energy)``
        counts : numpy.ndarray ``(K,)`` incident photons per pixel
        report : dict
            ``out_of_gamut`` (cluster ids and colours), ``distance_de``.
        """
        from .matching import cluster_distributions as paper

        crgb = np.asarray(cluster_rgb, np.uint8).reshape(-1, 3)
        names = list(library.names)
        pred = self.colour.predict(crgb)
        k, p = crgb.shape[0], len(names)
        ab = np.zeros((k, p))
        idx = [names.index(n) for n in self.colour.pigments]
        ab[:, idx] = pred["abundance"]
        ab_paper, _ = paper(crgb, library.rgb, lib_spectra, **match)
        out = ~pred["in_gamut"]
        bg = pred["background"]
        counts = pred["counts"].copy()
        if np.any(out):
            w = self.colour.pixels / max(self.colour.pixels.sum(), 1)
            ab[out] = ab_paper.values[out]
            bg[out] = w @ self.colour.background
            counts[out] = float(w @ self.colour.counts)
        h = np.asarray(lib_spectra.values, float)
        g = self.background_spectra(energy, instrument)
        beta = bg.sum(axis=1, keepdims=True)
        spec = (1.0 - beta) * (ab @ h) + bg @ g
        spec /= spec.sum(axis=1, keepdims=True)
        cl = np.arange(k)
        abundance = xr.DataArray(
            ab, dims=("cluster", "pigment"), coords={"cluster": cl, "pigment": names},
            name="abundance",
            attrs={"long_name": "pigment abundance from the calibrated colour model "
                                "(fraction of pigment photons)", "units": "1",
                   "calibration": self.source or "calibration"})
        spectrum = xr.DataArray(
            spec, dims=("cluster", "energy"),
            coords={"cluster": cl, "energy": lib_spectra.coords["energy"]}, name="spectrum",
            attrs={"long_name": "cluster photon-energy distribution (probability per channel)",
                   "units": "1"})
        report = {"out_of_gamut": [int(i) for i in np.nonzero(out)[0]],
                  "out_of_gamut_rgb": crgb[out].astype(int).tolist(),
                  "distance_de": np.round(pred["distance"], 3).tolist(),
                  "background_fraction": np.round(beta[:, 0], 6).tolist()}
        return abundance, spectrum, counts, report

    def plot_fit(self, path=None, *, log: bool = True):
        """Figure of the scan's sum spectrum, the fit and its parts, with the residuals.

        Parameters
        ----------
        path : path-like, optional
            Write the figure (PNG/PDF/SVG by extension).
        log : bool
            Logarithmic counts axis.

        Returns
        -------
        matplotlib.figure.Figure
        """
        from matplotlib.figure import Figure

        s = self.diagnostics.get("sum_spectrum")
        if not s:
            raise GanxError("calibration has no sum-spectrum diagnostics to plot")
        e = np.asarray(s["energy"], float)
        data = np.asarray(s["data"], float)
        fit = np.asarray(s["fit"], float)
        fig = Figure(figsize=(9, 6), layout="constrained")
        ax, axr = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
        ax.step(e, data, where="mid", color="0.3", lw=0.8, label="scan (sum)")
        ax.plot(e, fit, color="C3", lw=1.0, label="fit")
        for name, comp in s.get("background", {}).items():
            ax.plot(e, np.asarray(comp, float), lw=0.8, ls="--", label=f"background: {name}")
        if log:
            ax.set_yscale("log")
            pos = data[data > 0]
            ax.set_ylim(max(pos.min() * 0.5, 0.5) if pos.size else 0.5, data.max() * 2)
        ax.set_ylabel("counts per channel")
        met = s.get("metrics", {})
        ax.set_title(f"calibration fit: cosine distance {met.get('cosine', float('nan')):.4g}, "
                     f"JS {met.get('jensen_shannon', float('nan')):.4g}")
        ax.legend(fontsize=8)
        lo, hi = self.diagnostics.get("fit_range_kev", [e[0], e[-1]])
        m = (e >= lo) & (e <= hi)
        res = (data - fit) / np.sqrt(np.maximum(fit, 1.0))
        axr.plot(e[m], res[m], color="C0", lw=0.6)
        axr.axhline(0, color="0.5", lw=0.5)
        axr.set_ylabel("(data − fit)/√fit")
        axr.set_xlabel("energy (keV)")
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig


def as_calibration(calibration) -> Calibration | None:
    """A :class:`Calibration` from an object, a path or None."""
    if calibration is None or isinstance(calibration, Calibration):
        return calibration
    if isinstance(calibration, (str, os.PathLike)):
        return Calibration.from_json(calibration)
    raise ConfigError(f"calibration must be a Calibration or a calibration JSON file, got "
                      f"{type(calibration).__name__}")


# ------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------
def _open_scan(scan, energy_kw: dict) -> tuple[xr.DataArray, str]:
    """The scan as a dask-backed ``(y, x, energy)`` DataArray and its name for messages."""
    from .readers import open_any

    where = "scan"
    if isinstance(scan, (str, os.PathLike)):
        where = str(scan)
        ds = open_any(scan, **energy_kw)
        da_ = ds["counts"]
    elif isinstance(scan, xr.Dataset):
        if "counts" not in scan:
            raise GanxError("scan dataset has no 'counts' variable")
        da_ = scan["counts"]
        where = str(scan.attrs.get("source", where))
    elif isinstance(scan, xr.DataArray):
        da_ = scan
        where = str(scan.attrs.get("source", where))
    else:
        raise GanxError(f"scan must be a file/store path or an xarray (y, x, energy) cube, got "
                        f"{type(scan).__name__}")
    if da_.ndim == 1 and da_.dims == ("energy",):  # a single spectrum: a one-pixel scan
        da_ = da_.expand_dims(y=[0], x=[0]).transpose("y", "x", "energy")
    if set(da_.dims) != {"y", "x", "energy"}:
        raise GanxError(f"{where}: counts must have dims (y, x, energy), got {da_.dims}")
    da_ = da_.transpose("y", "x", "energy")
    if "energy" not in da_.coords:
        raise EnergyAxisError(f"{where}: field 'energy': no energy coordinate (bin centres in keV)")
    units = str(da_.coords["energy"].attrs.get("units", "")).strip()
    if units.lower() != "kev":
        raise EnergyAxisError(
            f"{where}: field 'energy': units must be 'keV' (bin centres), got "
            f"{units or 'no units'}; set energy.attrs['units'] = 'keV' after converting")
    if da_.dtype.kind not in "biuf":
        raise GanxError(f"{where}: field 'counts': must be numeric, got dtype {da_.dtype}")
    data = da_.data
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=(256, 256, -1))
    if data.numblocks[2] != 1:
        data = data.rechunk({2: -1})
    return da_.copy(data=data), where


def _open_rgb(rgb, shape: tuple[int, int], chunks, mask, where_scan: str):
    from .io import read_image

    img, opaque = read_image(rgb, chunks=256, return_alpha=True)
    where = img.attrs.get("source", "rgb image") if not isinstance(rgb, (str, os.PathLike)) \
        else str(rgb)
    ny, nx = int(img.sizes["y"]), int(img.sizes["x"])
    if (ny, nx) != tuple(shape):
        raise ImageError(f"{where}: photo is {ny}x{nx} pixels (y, x) but the scan {where_scan} is "
                         f"{shape[0]}x{shape[1]}: they must share the (y, x) grid")
    valid = None
    if opaque is not None:
        valid = opaque.data
    if mask is not None:
        m = mask.transpose("y", "x").data if isinstance(mask, xr.DataArray) else mask
        m = m if isinstance(m, da.Array) else np.asarray(m)
        if m.shape != (ny, nx):
            raise ImageError(f"mask has shape {m.shape}, the scan is {(ny, nx)} (y, x)")
        if m.dtype != bool:
            raise ImageError(f"mask must be boolean (True = ignore the pixel), got {m.dtype}")
        keep = ~(m if isinstance(m, da.Array) else da.from_array(m, chunks=256))
        valid = keep if valid is None else (valid & keep)
    img = img.chunk({"y": chunks[0], "x": chunks[1]})
    if valid is not None:
        valid = xr.DataArray(valid.rechunk((chunks[0], chunks[1])), dims=("y", "x"))
    return img, valid, where


def _block_stats(block: np.ndarray, labels: np.ndarray, n_groups: int,
                 slab: int = 8192) -> dict:
    """Per-group sums of one scan block (labels −1 are ignored).

    Pixels are taken ``slab`` at a time and summed with numpy's buffered accumulation, so the
    temporaries stay ~``slab·E`` values whatever the block size.
    """
    b = np.asarray(block)
    lab_all = np.asarray(labels).reshape(-1)
    flat_all = b.reshape(-1, b.shape[-1])
    is_f = b.dtype.kind == "f"
    sums = np.zeros((n_groups, flat_all.shape[1]))
    npx = np.zeros(n_groups)
    s1 = np.zeros(n_groups)
    s2 = np.zeros(n_groups)
    bad_nan = neg = 0
    for s0 in range(0, flat_all.shape[0], slab):
        flat = flat_all[s0:s0 + slab]
        lab = lab_all[s0:s0 + slab]
        if is_f:
            bad_nan += int(np.count_nonzero(~np.isfinite(flat)))
        if b.dtype.kind in "if":
            neg += int(np.count_nonzero(flat < 0))
        tot = np.nansum(flat, axis=1, dtype=np.float64) if is_f else flat.sum(axis=1,
                                                                              dtype=np.float64)
        ok = lab >= 0
        for g in np.unique(lab[ok]):
            m = lab == g
            rows = flat[m]
            sums[g] += (np.nansum(rows, axis=0, dtype=np.float64) if is_f
                        else rows.sum(axis=0, dtype=np.float64))
        npx += np.bincount(lab[ok], minlength=n_groups)
        s1 += np.bincount(lab[ok], weights=tot[ok], minlength=n_groups)
        s2 += np.bincount(lab[ok], weights=tot[ok] ** 2, minlength=n_groups)
    return {"sums": sums, "n": npx, "s1": s1, "s2": s2, "nan": bad_nan, "neg": neg}


def _reduce(scan: xr.DataArray, labels: da.Array, n_groups: int) -> dict:
    """Stream the scan chunk by chunk into per-group statistics (one dask pass).

    Reading a block and reducing it are one blockwise layer (dask fuses them into one task per
    block), so a worker holds one scan block at a time and only ``(G·E)``-sized partial sums
    travel; they are tree-summed.
    """
    data = scan.data
    labels = labels.rechunk(data.chunks[:2])
    n_e = int(data.shape[2])
    size = n_groups * n_e + 3 * n_groups + 2

    def fn(block, lab):
        st = _block_stats(block, lab[:, :, 0], n_groups)
        packed = np.concatenate([st["sums"].ravel(), st["n"], st["s1"], st["s2"],
                                 [st["nan"], st["neg"]]])
        return packed[None, None, :]

    parts = da.map_blocks(fn, data, labels[:, :, None], dtype=np.float64,
                          chunks=((1,) * data.numblocks[0], (1,) * data.numblocks[1], (size,)),
                          meta=np.empty((0, 0, 0), np.float64))
    tot = parts.sum(axis=(0, 1), split_every=8).compute()
    g, e = n_groups, n_e
    o = g * e
    return {"sums": tot[:o].reshape(g, e), "n": tot[o:o + g], "s1": tot[o + g:o + 2 * g],
            "s2": tot[o + 2 * g:o + 3 * g], "nan": int(tot[-2]), "neg": int(tot[-1])}


# ------------------------------------------------------------------------------------------
# fitting
# ------------------------------------------------------------------------------------------
def _nnls_weighted(h: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    a = (h * w[None, :]).T
    scale = np.maximum(np.linalg.norm(a, axis=0), 1e-300)
    x, _ = nnls(a / scale, y * w, maxiter=50 * a.shape[1])
    return x / scale


def _group_model(h: np.ndarray, y: np.ndarray, w: np.ndarray, sel: np.ndarray, p: float,
                 edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NNLS coefficients (incident photons per basis row) and the recorded model of one group."""
    hs, ws = h[:, sel], w[sel]
    x = _nnls_weighted(hs, y[sel] / (1 - p) ** 2, ws)
    if p > 0:
        for _ in range(2):  # fixed point: remove the pile-up of the current estimate
            m = x @ h
            extra = pileup_spectrum(m, p, edges) / (1 - p) ** 2 - m
            x = _nnls_weighted(hs, np.maximum(y[sel] / (1 - p) ** 2 - extra[sel], 0.0), ws)
    m = x @ h
    return x, pileup_spectrum(m, p, edges)


def _link_probs(kappa: float, recorded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-group link probability and incident counts per pixel from recorded counts per pixel.

    Recorded = λ·(1 − p) with p = 1 − exp(−κλ) (chains merge); solved by fixed point.
    """
    lam = np.asarray(recorded, float).copy()
    for _ in range(30):
        lam = recorded * np.exp(np.minimum(kappa * lam, 50.0))
    p = 1.0 - np.exp(-kappa * lam)
    return p, lam


def _find_peaks(y: np.ndarray, n: int = 12) -> np.ndarray:
    """Channel centroids of the strongest peaks (log-parabola through 3 channels)."""
    from scipy.signal import find_peaks

    ys = np.convolve(y, np.ones(3) / 3, mode="same")
    base = np.sqrt(np.maximum(ys, 1.0))
    idx, props = find_peaks(ys, prominence=8 * base, distance=3)
    if idx.size == 0:
        return np.zeros(0)
    order = np.argsort(props["prominences"])[::-1][:n]
    out = []
    for i in idx[order]:
        if i < 1 or i >= y.size - 1 or min(y[i - 1:i + 2]) <= 0:
            continue
        a, b, c = np.log(y[i - 1:i + 2])
        den = a - 2 * b + c
        out.append(i + (0.5 * (a - c) / den if den < 0 else 0.0))
    return np.asarray(out, float)


def _reference_lines(comps: list, weights: np.ndarray, inst, min_rel: float = 0.02
                     ) -> list[tuple[float, float, str]]:
    """Blends (energy keV, weight, label) of the strongest lines of the weighted components."""
    from .pigments.physics import fwhm_kev

    e, i, lab = [], [], []
    for c, wt in zip(comps, weights, strict=True):
        if wt <= 0 or c.line_energy.size == 0:
            continue
        tot = max(c.total, 1e-300)
        e.append(c.line_energy)
        i.append(c.line_intensity / tot * wt)
        lab.extend(c.line_label)
    if not e:
        return []
    e, i = np.concatenate(e), np.concatenate(i)
    order = np.argsort(e)
    e, i = e[order], i[order]
    lab = [lab[k] for k in order]
    blends = []
    k = 0
    while k < e.size:
        j = k
        fw = fwhm_kev(e[k], inst)
        while j + 1 < e.size and e[j + 1] - e[k] < 0.5 * fw:
            j += 1
        ww = i[k:j + 1]
        main = k + int(np.argmax(ww))
        blends.append((float((e[k:j + 1] * ww).sum() / ww.sum()), float(ww.sum()), lab[main]))
        k = j + 1
    top = max(b[1] for b in blends)
    return [b for b in blends if b[1] >= min_rel * top]


def _energy_check(y: np.ndarray, gain: float, offset: float, ref: list, inst) -> dict:
    """Step 1: match measured peaks to reference lines; linear fit channel → keV."""
    from .pigments.physics import fwhm_kev

    peaks = _find_peaks(y)
    rows = []
    if ref:
        re_ = np.array([r[0] for r in ref])
        for c in peaks:
            e_stated = offset + gain * c
            tol = max(0.015 * e_stated, 1.5 * fwhm_kev(e_stated, inst))
            d = np.abs(re_ - e_stated)
            j = int(np.argmin(d))
            if d[j] <= tol:
                rows.append({"channel": float(c), "stated_kev": float(e_stated),
                             "line_kev": float(re_[j]), "line": ref[j][2],
                             "weight": float(ref[j][1])})
    out = {"peaks": rows, "stated_gain": gain, "stated_offset": offset,
           "gain": gain, "offset": offset, "used": False}
    if len({round(r["line_kev"], 3) for r in rows}) >= 2:
        ch = np.array([r["channel"] for r in rows])
        ek = np.array([r["line_kev"] for r in rows])
        if np.ptp(ch) > 0.1 * y.size:  # a lever arm: peaks spread over 10 % of the axis
            g, o = np.polyfit(ch, ek, 1)
            if 0.9 * gain < g < 1.1 * gain:
                out.update(gain=float(g), offset=float(o), used=True)
                res = ek - (o + g * ch)
                for r, v in zip(rows, res, strict=True):
                    r["residual_ev"] = float(v * 1e3)
                out["rms_residual_ev"] = float(np.sqrt(np.mean(res**2)) * 1e3)
    return out


def calibrate(
    scan,
    rgb,
    *,
    library=None,
    instrument=None,
    detector=None,
    seed: int = 0,
    mask=None,
    groups: int | None = None,
    fit_range: tuple[float, float] | None = None,
    fit_source: bool = False,
    kv_grid=None,
    pileup: bool = True,
    fit_samples: int = 100_000,
    gamut_de: float = 12.0,
    bandwidth_de: float | None = None,
    max_nfev: int = 60,
    systematic: float = 0.005,
    energy=None,
    gain: float | None = None,
    offset: float | None = None,
    check_lines: bool = True,
) -> Calibration:
    """Fit a scanner model to a measured scan and a photo of the same area.

    Parameters
    ----------
    scan : path or xarray.DataArray/Dataset
        Measured cube ``(y, x, energy)``, ``energy`` in keV (bin centres), or a file/store that
        :func:`ganx_dask.readers.open_any` opens; a single spectrum (dim ``energy`` only) is a
        one-pixel scan.
    rgb : path, array or DataArray
        Photo on the same ``(y, x)`` grid (transparent pixels are ignored).
    library : PigmentLibrary, path or None
        Candidate pigments (default library).
    instrument : Instrument, preset name, dict or None
        What is known about the scanner: the starting point the fit refines (default: the
        library's instrument).
    detector : DetectorEffects, dict or None
        Known detector effects; its ``pulse_pair_ns`` (default 300 ns) sets the time scale of
        the fitted pile-up.
    seed : int
        Seed of the colour clustering subsample.
    mask : bool array (y, x), optional
        True = ignore the pixel.
    groups : int, optional
        Number of colour groups (default: k-means silhouette choice in 2–16).
    fit_range : (float, float), optional
        Energy range of the spectral fit, keV (default: from 0.9 keV to the end of the axis).
    fit_source : bool
        Also fit the tube voltage on ``kv_grid`` (kV; default ±20 % in 8 steps).
    pileup : bool
        Fit pile-up.
    fit_samples : int
        Pixels in the clustering subsample.
    gamut_de, bandwidth_de : float
        Colour-model gamut and kernel width, ΔE2000 (bandwidth default: a quarter of the
        median nearest-group distance, clipped to 1–5).
    max_nfev : int
        Function evaluations per nonlinear fit round.
    systematic : float
        Relative model uncertainty added to the Poisson variance of each channel
        (``σ² = y + 1 + (systematic·y)²``), so the strongest peaks do not decide the detector
        response alone.
    energy, gain, offset
        Energy calibration for a scan file without one (see :mod:`ganx_dask.readers`).
    check_lines : bool
        Raise when the library leaves strong lines of the scan unexplained.

    Returns
    -------
    Calibration

    Raises
    ------
    GanxError
        Bad input (named file and field), or a library that cannot explain the scan's lines.
    """
    from scipy.optimize import least_squares

    from .clustering import fit_iterative_kmeans, predict_labels, subsample_pixels
    from .detector import DetectorEffects, as_detector
    from .metrics import cosine, jensen_shannon
    from .pigments.library import resolve_library
    from .pigments.physics import as_instrument, pigment_components

    lib = resolve_library(library)
    inst0 = as_instrument(instrument if instrument is not None else lib.instrument)
    det0 = as_detector(detector)
    cube, where = _open_scan(scan, {"energy": energy, "gain": gain, "offset": offset})
    ny, nx, ne = (int(v) for v in cube.shape)
    chunks = (cube.data.chunks[0][0], cube.data.chunks[1][0])
    centres = np.asarray(cube.coords["energy"].values, float)
    if ne < 16:
        raise EnergyAxisError(f"{where}: field 'energy': {ne} channels are too few to calibrate")
    g_stated, o_stated = np.polyfit(np.arange(ne), centres, 1)
    if not g_stated > 0:
        raise EnergyAxisError(f"{where}: field 'energy': channel energies must increase")

    # -- step 0: colour groups and the streaming reduction -------------------------------------
    img, valid, where_rgb = _open_rgb(rgb, (ny, nx), chunks, mask, where)
    if ny * nx == 1:
        labels = da.zeros((1, 1), dtype=np.int16, chunks=1)
        if valid is not None:
            labels = da.where(valid.data, labels, -1).astype(np.int16)
        n_groups = 1
        rgb_groups = np.asarray(img.values, np.uint8).reshape(1, 3)
    else:
        px = subsample_pixels(img, fit_samples, seed, mask=valid)
        if groups is None:
            kw = dict(n_start=9, delta=7)
        else:
            if not isinstance(groups, int) or groups < 1:
                raise ConfigError(f"groups must be a positive integer, got {groups!r}")
            kw = dict(n_start=groups, delta=0)
        try:
            model = fit_iterative_kmeans(px, seed=seed, **kw)
        except ImageError as exc:
            raise ImageError(f"{where_rgb}: {exc}") from None
        labels = predict_labels(img, model, valid).data
        n_groups = int(model.k)
        rgb_groups = np.asarray(model.cluster_rgb, np.uint8)
    st = _reduce(cube, labels, n_groups)
    if st["nan"]:
        raise GanxError(f"{where}: field 'counts': {st['nan']} NaN or infinite values")
    if st["neg"]:
        raise GanxError(f"{where}: field 'counts': {st['neg']} negative values")
    keep = (st["n"] > 0) & (st["sums"].sum(axis=1) > 0)
    if not np.any(keep):
        raise GanxError(f"{where}: field 'counts': no counts in the unmasked pixels")
    y_all = st["sums"][keep]
    npix = st["n"][keep]
    rgb_groups = rgb_groups[keep]
    mean_tot = st["s1"][keep] / npix
    var_tot = np.maximum(st["s2"][keep] / npix - mean_tot**2, 0.0)
    spread = np.sqrt(var_tot) / np.maximum(mean_tot, 1e-300)
    y_sum = y_all.sum(axis=0)

    lo, hi = fit_range if fit_range is not None else (max(0.9, centres[0]), centres[-1])
    sel = (centres >= lo) & (centres <= hi)
    if sel.sum() < 16:
        raise ConfigError(f"fit_range {lo}-{hi} keV holds {sel.sum()} channels of {where}")
    w_all = 1.0 / np.sqrt(y_all + 1.0 + (float(systematic) * y_all) ** 2)

    # -- basis: library pigments + background ---------------------------------------------------
    ref = as_instrument(lib.instrument)

    def make_basis(inst, names):
        # line/continuum components do not depend on the detector response (rendering does):
        # compute them for the instrument with the library's response -> precomputed fast path
        phys = inst.replace(**{f: getattr(ref, f) for f in _DET_FIELDS})
        comps = [pigment_components(lib[n], None if phys == ref else phys) for n in names]
        bgc = background_components(phys, None)
        return _Basis(comps + [bgc[b] for b in BACKGROUNDS], list(names) + list(BACKGROUNDS)), bgc

    diag: dict[str, Any] = {"scan": where, "photo": where_rgb, "groups": int(keep.sum()),
                            "fit_range_kev": [float(lo), float(hi)]}
    all_names = list(lib.names)
    basis, bgc = make_basis(inst0, all_names)
    # -- step 1: energy check --------------------------------------------------------------------
    gain_, off_ = float(g_stated), float(o_stated)
    ed = _edges(gain_, off_, ne)
    h_full = basis.render(ed, inst0, full=True)
    x_sum = _nnls_weighted(h_full[:, sel], y_sum[sel], 1.0 / np.sqrt(y_sum[sel] + 1.0))
    ecal = _energy_check(y_sum, gain_, off_, _reference_lines(basis.full, x_sum, inst0), inst0)
    if ecal["used"]:
        gain_, off_ = ecal["gain"], ecal["offset"]
        ed = _edges(gain_, off_, ne)
        h_full = basis.render(ed, inst0, full=True)
        x_sum = _nnls_weighted(h_full[:, sel], y_sum[sel], 1.0 / np.sqrt(y_sum[sel] + 1.0))
    diag["energy"] = ecal

    # -- step 2: detector response, pile-up, background, energy (variable projection) -----------
    rec_pp = mean_tot  # recorded counts per pixel per group
    lam_ref = float(np.average(rec_pp, weights=npix))
    tau_ns = det0.pulse_pair_ns if (det0 is not None and det0.pulse_pair_ns > 0) else 300.0
    # θ = gain, offset, noise, Fano, tail fraction, tail slope, shelf, pile-up p_ref, Compton
    # width scale
    v0 = np.array([gain_, off_] + [getattr(inst0, f) for f in _DET_FIELDS] + [0.0, 1.0])
    lb = np.array([0.95 * gain_, off_ - 0.2, 0.005, 0.03, 0.0, 0.2, 0.0, 0.0, 0.2])
    ub = np.array([1.05 * gain_, off_ + 0.2, 0.5, 0.4, 0.5, 20.0, 0.5, 0.45 if pileup else 1e-12,
                   4.0])
    v0 = np.clip(v0, lb, ub)
    v0[5] = np.clip(v0[5], 0.25, 19.0)
    fit_pileup = bool(pileup)

    def inst_of(v):
        kw = dict(zip(_DET_FIELDS, (float(t) for t in v[2:7]), strict=True))
        kw["tail_fraction"] = min(kw["tail_fraction"], 0.99 - kw["shelf_fraction"])
        kw["compton_profile_au"] = inst_cur.compton_profile_au * float(v[8])
        return inst_cur.replace(**kw)

    def probs(v):
        pref = float(v[7]) if fit_pileup else 0.0
        kappa = -math.log1p(-pref) / max(lam_ref, 1e-300) if pref > 0 else 0.0
        return _link_probs(kappa, rec_pp) + (kappa,)

    def residuals(v, basis_, rows=None):
        edg = _edges(v[0], v[1], ne)
        h = basis_.render(edg, inst_of(v), compton_scale=float(v[8]))
        p, _, _ = probs(v)
        out = []
        for k in range(y_all.shape[0]):
            _, model_k = _group_model(h, y_all[k], w_all[k], sel, float(p[k]), edg)
            out.append(((y_all[k] - model_k) * w_all[k])[sel])
        return np.concatenate(out)

    inst_cur = inst0
    kv_report = None
    v = v0.copy()
    support = None
    nfev = 0
    for rnd in range(2):
        edg = _edges(v[0], v[1], ne)
        h_full = basis.render(edg, inst_of(v), full=True)
        p, _, _ = probs(v)
        xs = np.array([_group_model(h_full, y_all[k], w_all[k], sel, float(p[k]), edg)[0]
                       for k in range(y_all.shape[0])])
        frac = xs / np.maximum(xs.sum(axis=1, keepdims=True), 1e-300)
        npig = len(all_names)
        support = [i for i in range(npig) if frac[:, i].max() > 1e-3]
        if not support:
            support = [int(np.argmax(xs[:, :npig].sum(axis=0)))]
        sub_names = [all_names[i] for i in support]
        sub, _ = make_basis(inst_cur, sub_names)
        sub.prepare(inst_of(v), max(0.0, edg[0] - 1.0), edg[-1] + 1.0, v[0] / 4)
        r = least_squares(residuals, v, bounds=(lb, ub), args=(sub,), x_scale=np.abs(
            np.array([gain_ * 1e-3, 0.01, 0.01, 0.01, 0.01, 0.5, 0.002, 0.01, 0.1])) + 1e-12,
            diff_step=1e-4, max_nfev=max_nfev, method="trf")
        v = r.x
        nfev += int(r.nfev)
        if fit_source and rnd == 0:
            inst_cur, kv_report = _fit_kv(inst_of(v), kv_grid, lib, sub_names, residuals, v,
                                          make_basis)
            v[8] = 1.0  # the Compton width is now in inst_cur
            basis, bgc = make_basis(inst_cur, all_names)
    inst_fit = inst_of(v)
    p, lam, kappa = probs(v)

    # -- step 4: final abundances over the whole library ------------------------------------------
    basis, bgc = make_basis(inst_fit, all_names)
    edg = _edges(v[0], v[1], ne)
    h_full = basis.render(edg, inst_fit, full=True)
    xs, models = [], []
    for k in range(y_all.shape[0]):
        x, m = _group_model(h_full, y_all[k], w_all[k], sel, float(p[k]), edg)
        xs.append(x)
        models.append(m)
    xs, models = np.array(xs), np.array(models)
    npig = len(all_names)
    pig_tot = xs[:, :npig].sum(axis=1, keepdims=True)
    all_tot = xs.sum(axis=1, keepdims=True)
    used = [i for i in range(npig) if (xs[:, i] / np.maximum(all_tot[:, 0], 1e-300)).max() > 1e-3]
    ab = xs[:, used] / np.maximum(pig_tot, 1e-300)
    ab /= np.maximum(ab.sum(axis=1, keepdims=True), 1e-300)
    bgfrac = xs[:, npig:] / np.maximum(all_tot, 1e-300)
    # incident photons per pixel: fitted totals (before pile-up) over pixels
    counts_pp = all_tot[:, 0] / npix

    fit_sum = models.sum(axis=0)
    chi2 = ((y_all - models) ** 2 / np.maximum(models, 1.0))[:, sel].sum(axis=1)
    dof = max(int(sel.sum()) - len(used) - len(BACKGROUNDS), 1)
    if check_lines:
        _check_unexplained(y_sum, fit_sum, sel, centres=0.5 * (edg[:-1] + edg[1:]),
                           inst=inst_fit, where=where, lib=lib)

    # -- detector effects -------------------------------------------------------------------------
    det_fit = None
    if kappa > 0 and float(v[7]) > 1e-5:
        dwell_ms = tau_ns * 1e-6 / kappa  # p = 1 − exp(−λ τ / dwell):  κ = τ / dwell
        det_fit = DetectorEffects(pulse_pair_ns=tau_ns, dwell_ms=dwell_ms)

    # -- colour model ----------------------------------------------------------------------------
    colour = ColourModel(rgb=rgb_groups, pigments=[all_names[i] for i in used], abundance=ab,
                         background=bgfrac, counts=counts_pp, counts_spread=spread,
                         pixels=npix.astype(np.int64), bandwidth_de=1.0, gamut_de=float(gamut_de),
                         background_names=list(BACKGROUNDS))
    if bandwidth_de is None:
        from .color import delta_e

        lab = colour.lab
        if lab.shape[0] > 1:
            dd = delta_e(lab[:, None, :], lab[None, :, :], "ciede2000")
            np.fill_diagonal(dd, np.inf)
            bandwidth_de = float(np.clip(0.25 * np.median(dd.min(axis=1)), 1.0, 5.0))
        else:
            bandwidth_de = 1.0
    colour.bandwidth_de = float(bandwidth_de)

    cen = 0.5 * (edg[:-1] + edg[1:])
    bg_parts = {}
    for j, b in enumerate(BACKGROUNDS):
        bg_parts[b] = (xs[:, npig + j].sum() * h_full[npig + j] * (1 - p.mean()) ** 2).tolist()
    diag.update({
        "detector": {
            "initial": {"gain": gain_, "offset": off_,
                        **{f: getattr(inst0, f) for f in _DET_FIELDS}},
            "fitted": {"gain": float(v[0]), "offset": float(v[1]),
                       **{f: getattr(inst_fit, f) for f in _DET_FIELDS},
                       "compton_profile_au": inst_fit.compton_profile_au,
                       "pileup_link_probability_at_mean_counts": float(v[7]),
                       "kappa_per_count": float(kappa)},
            "nfev": nfev,
        },
        "source": kv_report,
        "groups": {
            "rgb": rgb_groups.astype(int).tolist(), "pixels": npix.astype(int).tolist(),
            "chi2_reduced": (chi2 / dof).tolist(),
            "pileup_link_probability": p.tolist(),
            "background_fraction": bgfrac.sum(axis=1).tolist(),
        },
        "pigments_used": [all_names[i] for i in used],
        "sum_spectrum": {
            "energy": cen.tolist(), "data": y_sum.tolist(), "fit": fit_sum.tolist(),
            "background": bg_parts,
            "metrics": {"cosine": float(cosine(y_sum[sel], fit_sum[sel])),
                        "jensen_shannon": float(jensen_shannon(y_sum[sel], fit_sum[sel])),
                        "chi2_reduced": float(((y_sum - fit_sum) ** 2 / np.maximum(fit_sum, 1.0)
                                               )[sel].sum() / dof)},
        },
    })
    return Calibration(
        instrument=inst_fit, detector=det_fit,
        energy={"gain": float(v[0]), "offset": float(v[1]), "channels": ne,
                "stated_gain": float(g_stated), "stated_offset": float(o_stated)},
        background=bgc, colour=colour,
        library={"name": lib.name, "version": lib.version, "sha256": library_hash(lib),
                 "pigments": all_names},
        diagnostics=diag,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        source=where,
    )


def _fit_kv(inst, kv_grid, lib, names, residuals, v, make_basis):
    """Step 3: tube voltage on a grid by the χ² of the step-2 model (other θ fixed)."""
    grid = (np.linspace(0.8, 1.2, 8) * inst.kv if kv_grid is None
            else np.asarray(list(kv_grid), float))
    rows = []
    for kv in grid:
        cand = inst.replace(kv=float(kv))
        b, _ = make_basis(cand, names)
        b.prepare(cand, 0.0, max(cand.kv, 1.0) + 1.0, v[0] / 4)
        rows.append((float(kv), float(np.sum(residuals(v, b) ** 2))))
    best = min(rows, key=lambda t: t[1])
    return inst.replace(kv=best[0]), {"kv_grid": [r[0] for r in rows],
                                      "chi2": [r[1] for r in rows], "kv": best[0]}


def _check_unexplained(y: np.ndarray, fit: np.ndarray, sel: np.ndarray, *, centres, inst, where,
                       lib) -> None:
    """PigmentError when strong peaks of the scan are left in the residual of the best fit."""
    from .pigments.physics import fwhm_kev

    res = np.where(sel, y - fit, 0.0)
    sig = np.sqrt(np.maximum(fit, 1.0))
    from scipy.signal import find_peaks

    rs = np.convolve(res, np.ones(3), mode="same")
    ss = np.sqrt(np.convolve(sig**2, np.ones(3), mode="same"))
    idx, _ = find_peaks(rs, height=0)
    bad = [i for i in idx if rs[i] > 30 * ss[i] and rs[i] > 0.25 * max(y[i] * 3, 1)
           and rs[i] > 0.002 * (y[sel].max() * 3)]
    if not bad:
        return
    bad = sorted(bad, key=lambda i: -rs[i])[:4]
    names = []
    for i in bad:
        e = float(centres[i])
        names.append(f"{e:.2f} keV ({_guess_line(e, fwhm_kev(e, inst))})")
    raise PigmentError(
        f"{where}: library {lib.name!r} has no pigment that explains the line(s) at "
        f"{', '.join(names)}; add a pigment containing that element (or pass check_lines=False)")


def _guess_line(e: float, tol: float) -> str:
    """Element line nearest ``e`` keV among K/L/M lines (xraylib), e.g. ``"Cu Kα?"``."""
    import xraylib as xl

    best = (np.inf, "unknown")
    for z in range(11, 93):
        for macro, name in ((xl.KL3_LINE, "Kα"), (xl.KM3_LINE, "Kβ"), (xl.L3M5_LINE, "Lα"),
                            (xl.L2M4_LINE, "Lβ"), (xl.M5N7_LINE, "Mα")):
            try:
                le = xl.LineEnergy(z, macro)
            except ValueError:
                continue
            if le > 0 and abs(le - e) < best[0]:
                best = (abs(le - e), f"{xl.AtomicNumberToSymbol(z)} {name}")
    return best[1] + "?" if best[0] <= max(tol, 0.05) else "unknown element"


def calibrated_cluster_inputs(cal: Calibration, cluster_rgb, labels: da.Array, library,
                              lib_spectra, energy, instrument, **match):
    """What :func:`ganx_dask.generate` needs from a calibration for the clusters of a new image.

    Returns
    -------
    abundance, spectrum : xarray.DataArray
        ``(cluster, pigment)`` and ``(cluster, energy)``.
    counts : float
        The largest per-cluster incident counts per pixel (the count model's ``N``).
    scale : dask.array.Array
        ``(y, x)`` float32 per-pixel factor (cluster counts / N; 0 for label −1).
    report : dict
        Provenance for ``attrs["parameters"]["calibration"]`` (out-of-gamut clusters etc.).
    """
    from .pigments.physics import as_instrument

    inst = as_instrument(instrument) if instrument is not None else cal.instrument
    abundance, spectrum, cl_counts, report = cal.cluster_distributions(
        cluster_rgb, library, lib_spectra, energy, instrument=inst, **match)
    counts = float(max(np.max(cl_counts), 1e-9))
    lut = np.r_[0.0, cl_counts / counts].astype(np.float32)

    def fn(lab):
        return lut[lab.astype(np.int64) + 1]

    scale = labels.map_blocks(fn, dtype=np.float32, meta=np.empty((0, 0), np.float32))
    if report["out_of_gamut"]:
        warnings.warn(
            f"{len(report['out_of_gamut'])} cluster colour(s) lie outside the calibrated gamut "
            f"(ΔE2000 > {cal.colour.gamut_de:g} from every calibrated colour): they use the "
            f"paper's matching instead: {report['out_of_gamut_rgb']}", stacklevel=3)
    report = {"source": cal.source, "created": cal.created,
              "library_sha256": cal.library.get("sha256"),
              "counts_per_cluster": np.round(cl_counts, 4).tolist(), **report}
    return abundance, spectrum, counts, scale, report
