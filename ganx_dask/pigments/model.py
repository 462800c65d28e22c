"""Data model of the pigment library: :class:`Pigment`, :class:`MeasuredSpectrum`, :class:`PigmentLibrary`.

A pigment is either *computed* (a composition rendered by the fundamental-parameters model of
:mod:`ganx_dask.pigments.physics` for an :class:`~ganx_dask.pigments.physics.Instrument`) or
*measured* (a spectrum on its own energy calibration, rebinned onto the requested axis conserving
counts).  Either way :meth:`PigmentLibrary.spectra` returns one probability distribution per pigment
on the requested energy axis.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import xarray as xr

from ..attrs import RGB8
from ..energy import as_energy_axis, axis_edges, rebin
from ..errors import EnergyAxisError, PigmentError

__all__ = [
    "MeasuredSpectrum", "Pigment", "PigmentLibrary", "Layer", "sample_components", "sample_spectrum",
]


def _check_rgb(rgb: Any, where: str) -> tuple[int, int, int]:
    try:
        vals = [int(v) for v in rgb]
        exact = all(float(v) == int(v) for v in rgb)
    except (TypeError, ValueError):
        raise PigmentError(f"{where}: RGB must be three integers 0-255, got {rgb!r}") from None
    if len(vals) != 3 or not exact or any(v < 0 or v > 255 for v in vals):
        raise PigmentError(f"{where}: RGB must be three integers 0-255, got {rgb!r}")
    return (vals[0], vals[1], vals[2])


def _positive_or_none(v: Any) -> bool:
    """True for ``None`` or a finite number > 0."""
    if v is None:
        return True
    try:
        f = float(v)
    except (TypeError, ValueError):
        return False
    return bool(np.isfinite(f) and f > 0)


def _key(name: str) -> str:
    """Case- and separator-insensitive lookup key: 'Lead-Tin Yellow I' -> 'lead tin yellow i'."""
    return re.sub(r"[\s_\-]+", " ", str(name).strip().lower())


@dataclass(frozen=True)
class MeasuredSpectrum:
    """A measured (or externally computed) spectrum with its energy calibration.

    Parameters
    ----------
    edges : numpy.ndarray
        Channel edges, keV, length ``n + 1`` (strictly increasing).
    counts : numpy.ndarray
        Counts per channel, length ``n``; non-negative, finite, not all zero.
    source : str
        Where it came from (file name, instrument, author).
    """

    edges: np.ndarray
    counts: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        e = np.asarray(self.edges, dtype=float)
        c = np.asarray(self.counts, dtype=float)
        where = self.source or "measured spectrum"
        if c.ndim != 1 or e.ndim != 1 or e.size != c.size + 1:
            raise PigmentError(
                f"{where}: spectrum needs n counts and n+1 energy edges, got {c.size} and {e.size}"
            )
        if not np.all(np.isfinite(c)):
            raise PigmentError(f"{where}: spectrum contains NaN or infinite counts")
        if np.any(c < 0):
            raise PigmentError(f"{where}: spectrum contains negative counts")
        if not np.any(c > 0):
            raise PigmentError(f"{where}: spectrum is all zero")
        if not np.all(np.isfinite(e)) or np.any(np.diff(e) <= 0):
            raise PigmentError(f"{where}: energy axis must be finite and strictly increasing")
        object.__setattr__(self, "edges", e)
        object.__setattr__(self, "counts", c)

    def on(self, energy) -> np.ndarray:
        """Counts rebinned (count-conserving) onto ``energy`` (see :func:`ganx_dask.energy.as_energy_axis`)."""
        return rebin(self.counts, self.edges, axis_edges(energy))


@dataclass(frozen=True)
class Layer:
    """One layer of a stratigraphy (paint layer or ground).

    Parameters
    ----------
    composition : Mapping[str, float]
        Mass fractions of compounds or elements by formula (e.g. ``{"CaSO4(H2O)2": 1.0}``).
    density : float
        g/cm³.
    thickness_um : float or None
        Thickness in µm; ``None`` means infinitely thick.
    name : str
        Label (e.g. ``"gypsum ground"``).
    """

    composition: Mapping[str, float]
    density: float
    thickness_um: float | None = None
    name: str = ""


@dataclass
class Pigment:
    """A pigment: name, characteristic colour and either a composition or a measured spectrum.

    Parameters
    ----------
    name : str
        Display name; lookup is case-insensitive and also matches ``aliases``.
    rgb : tuple of 3 int
        Characteristic sRGB colour, 8-bit.
    composition : Mapping[str, float] or None
        Mass fractions of compounds by chemical formula (normalised to sum 1), e.g.
        ``{"Pb3O4": 1.0}`` or ``{"FeO(OH)": 0.4, "Al2Si2O5(OH)4": 0.55, ...}``.
    density : float or None
        g/cm³ of the paint layer.
    thickness_um : float or None
        Paint-layer thickness, µm; ``None`` = infinitely thick.
    ground : tuple of Layer
        Layers below the paint layer, top first (e.g. a gypsum gesso).
    aliases : tuple of str
        Other names.
    rgb_source : str
        Where the colour comes from (citation).
    provenance : dict
        How the spectrum is made (model and parameters) or who measured it.
    measured : MeasuredSpectrum or None
        A measured spectrum; when given, it is used instead of the physical model.
    """

    name: str
    rgb: tuple[int, int, int]
    composition: Mapping[str, float] | None = None
    density: float | None = None
    thickness_um: float | None = None
    ground: tuple[Layer, ...] = ()
    aliases: tuple[str, ...] = ()
    rgb_source: str = ""
    provenance: dict = field(default_factory=dict)
    measured: MeasuredSpectrum | None = None
    formula: str | None = None
    # Precomputed physics for the library's reference instrument (set by the physics module /
    # the data-file loader); private, recomputed when another instrument is requested.
    _components: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise PigmentError(f"pigment name must be a non-empty string, got {self.name!r}")
        self.rgb = _check_rgb(self.rgb, f"pigment {self.name!r}")
        self.aliases = tuple(self.aliases)
        self.ground = tuple(self.ground)
        if self.composition is None and self.measured is None:
            raise PigmentError(f"pigment {self.name!r} needs a composition or a measured spectrum")
        if self.composition is not None:
            comp = {str(k): float(v) for k, v in dict(self.composition).items()}
            if not comp or any(not np.isfinite(v) or v < 0 for v in comp.values()):
                raise PigmentError(f"pigment {self.name!r}: mass fractions must be >= 0 and finite")
            tot = sum(comp.values())
            if tot <= 0:
                raise PigmentError(f"pigment {self.name!r}: mass fractions sum to zero")
            self.composition = {k: v / tot for k, v in comp.items()}
            if self.density is None or not (np.isfinite(self.density) and self.density > 0):
                raise PigmentError(f"pigment {self.name!r}: density (g/cm³) must be > 0")
        # checked here, not only when a spectrum is computed, so an invalid pigment can never be
        # added to a library and written to a file that then cannot be read back
        if not _positive_or_none(self.thickness_um):
            raise PigmentError(f"pigment {self.name!r}: thickness_um must be > 0 µm or None "
                               f"(infinitely thick), got {self.thickness_um!r}")
        for i, layer in enumerate(self.ground):
            where = f"pigment {self.name!r} ground[{i}] ({getattr(layer, 'name', '') or 'layer'})"
            if not isinstance(layer, Layer):
                raise PigmentError(f"{where}: must be a Layer, got {layer!r}")
            if layer.density is None or not _positive_or_none(layer.density):
                raise PigmentError(f"{where}: density must be > 0 g/cm³, got {layer.density!r}")
            if not _positive_or_none(layer.thickness_um):
                raise PigmentError(f"{where}: thickness_um must be > 0 µm or None, "
                                   f"got {layer.thickness_um!r}")

    @classmethod
    def from_formula(
        cls,
        name: str,
        formula: str | Mapping[str, float],
        rgb: Iterable[int],
        *,
        density: float,
        thickness_um: float | None = None,
        ground: Iterable[Layer] = (),
        aliases: Iterable[str] = (),
        rgb_source: str = "user",
        provenance: dict | None = None,
    ) -> Pigment:
        """A computed pigment from a chemical formula or a mass-fraction mix of formulas.

        Formulas are parsed by xraylib; hydrates and double salts may be written with ``·``,
        ``*`` or ``.`` (``"CaSO4·2H2O"``) and are expanded to element mass fractions.

        Parameters
        ----------
        name : str
        formula : str or Mapping[str, float]
            ``"Pb3O4"`` or ``{"FeO(OH)": 0.4, "Al2Si2O5(OH)4": 0.6}`` (mass fractions).
        rgb : iterable of 3 int
            8-bit sRGB colour.
        density : float
            g/cm³.

        Raises
        ------
        PigmentError
            Unknown element or unparsable formula (the message names the formula).
        """
        from .physics import validate_composition  # local import: physics needs xraylib

        comp = {formula: 1.0} if isinstance(formula, str) else dict(formula)
        validate_composition(comp, where=f"pigment {name!r}")
        ground = tuple(ground)
        for i, layer in enumerate(ground):
            if not isinstance(layer, Layer):
                raise PigmentError(f"pigment {name!r}: ground[{i}] must be a Layer, got {layer!r}")
            validate_composition(dict(layer.composition),
                                 where=f"pigment {name!r} ground[{i}] ({layer.name or 'layer'})")
        return cls(
            name=name,
            rgb=tuple(rgb),
            composition=comp,
            density=density,
            thickness_um=thickness_um,
            ground=ground,
            aliases=tuple(aliases),
            rgb_source=rgb_source,
            provenance=dict(provenance or {"model": "ganx_dask.pigments.physics"}),
            formula=formula if isinstance(formula, str) else None,
        )

    def matches(self, name: str) -> bool:
        """True when ``name`` is this pigment's name or an alias (case-insensitive)."""
        k = _key(name)
        return k == _key(self.name) or any(k == _key(a) for a in self.aliases)

    def spectrum(self, energy, instrument=None) -> np.ndarray:
        """This pigment's spectrum on ``energy`` as a probability distribution (sums to 1)."""
        if self.measured is not None:
            try:
                y = self.measured.on(energy)
            except EnergyAxisError as exc:
                raise PigmentError(
                    f"pigment {self.name!r} ({self.measured.source or 'measured spectrum'}): {exc}"
                ) from None
        else:
            from .physics import pigment_spectrum

            y = pigment_spectrum(self, energy, instrument)
        return self._normalised(y, energy)

    def _normalised(self, y: np.ndarray, energy) -> np.ndarray:
        tot = float(np.sum(y))
        if not np.isfinite(tot) or tot <= 0:
            raise PigmentError(
                f"pigment {self.name!r} has no counts on the energy axis {as_energy_axis(energy)}"
            )
        return y / tot


class PigmentLibrary:
    """An ordered, named, versioned collection of pigments.

    Parameters
    ----------
    pigments : iterable of Pigment
    name : str
    version : str
    instrument : Instrument or None
        The reference instrument for which precomputed components are valid (the default
        instrument when ``None``).
    """

    def __init__(
        self,
        pigments: Iterable[Pigment] = (),
        *,
        name: str = "user",
        version: str = "0",
        instrument=None,
        description: str = "",
    ) -> None:
        self.name = name
        self.version = str(version)
        self.instrument = instrument
        self.description = description
        self._pigments: list[Pigment] = []
        for p in pigments:
            self.add(p)

    # -- collection protocol -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._pigments)

    def __iter__(self) -> Iterator[Pigment]:
        return iter(self._pigments)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(p.matches(name) for p in self._pigments)

    def __getitem__(self, name: str | int) -> Pigment:
        if isinstance(name, (int, np.integer)):
            return self._pigments[int(name)]
        for p in self._pigments:
            if p.matches(name):
                return p
        raise KeyError(f"no pigment {name!r} in library {self.name!r} (see .names)")

    def __repr__(self) -> str:
        return f"<PigmentLibrary {self.name!r} v{self.version}: {len(self)} pigments>"

    @property
    def names(self) -> list[str]:
        """Pigment names in library order."""
        return [p.name for p in self._pigments]

    def add(self, pigment: Pigment) -> None:
        """Append a pigment; raises :class:`PigmentError` if its name or an alias is taken."""
        if not isinstance(pigment, Pigment):
            raise PigmentError(f"expected a Pigment, got {type(pigment).__name__}")
        for n in (pigment.name, *pigment.aliases):
            if n in self:
                raise PigmentError(
                    f"duplicate pigment name {n!r} in library {self.name!r}"
                )
        self._pigments.append(pigment)

    def select(self, names: Iterable[str]) -> PigmentLibrary:
        """A new library with the named pigments, in the given order."""
        return PigmentLibrary(
            [self[n] for n in names],
            name=f"{self.name}[subset]",
            version=self.version,
            instrument=self.instrument,
        )

    def copy(self, **changes) -> PigmentLibrary:
        """A shallow copy (pigments shared) with ``name``/``version``/... replaced."""
        kw = dict(name=self.name, version=self.version, instrument=self.instrument,
                  description=self.description)
        kw.update(changes)
        return PigmentLibrary([replace(p) for p in self._pigments], **kw)

    # -- arrays ----------------------------------------------------------------------------
    def _spectra_rows(self, energy, instrument) -> list[np.ndarray]:
        """Normalised spectra; computed pigments are rendered together (one batched pass)."""
        rows: list[np.ndarray | None] = [None] * len(self._pigments)
        computed = [i for i, p in enumerate(self._pigments) if p.measured is None]
        if computed:
            from .physics import pigment_components, render_many

            # None = the library's reference instrument (equal to the precomputed components'
            # instrument for a library read from file: the fast path); a pigment without
            # precomputed components is then computed for that instrument too, not for lab-rh.
            inst = self.instrument if instrument is None else instrument
            comps = [pigment_components(self._pigments[i], inst) for i in computed]
            block = render_many(comps, axis_edges(energy), inst)
            for j, i in enumerate(computed):
                rows[i] = self._pigments[i]._normalised(block[j], energy)
        for i, p in enumerate(self._pigments):
            if rows[i] is None:
                rows[i] = p.spectrum(energy, instrument)
        return rows

    @property
    def rgb(self) -> xr.DataArray:
        """Characteristic colours, dims ``(pigment, channel)``, uint8."""
        arr = np.array([p.rgb for p in self._pigments], dtype=np.uint8).reshape(-1, 3)
        return xr.DataArray(
            arr,
            dims=("pigment", "channel"),
            coords={"pigment": self.names, "channel": ["R", "G", "B"]},
            attrs={"long_name": "characteristic colour (8-bit sRGB)", **RGB8},
        )

    def spectra(self, energy, instrument=None) -> xr.DataArray:
        """Pigment spectra as probability distributions on ``energy``.

        Parameters
        ----------
        energy : EnergyAxis, str or array-like
            Bin centres in keV, an :class:`~ganx_dask.energy.EnergyAxis` or ``"START:STOP:N"``.
        instrument : Instrument, str or None
            Instrument (or preset name) for computed pigments; ``None`` = the library's reference
            instrument (fast: precomputed components).

        Returns
        -------
        xarray.DataArray
            Dims ``(pigment, energy)``, float64, each row non-negative and summing to 1.
        """
        from ..energy import EnergyAxis

        ax = as_energy_axis(energy)
        if isinstance(ax, EnergyAxis):
            spec, coord = ax, ax.to_coord()
        else:  # non-uniform: keep the caller's bin centres (``ax`` holds the derived edges)
            spec = np.asarray(energy.values if isinstance(energy, xr.DataArray) else energy,
                              dtype=float)
            coord = xr.DataArray(spec, dims="energy", attrs={"units": "keV"})
        rows = self._spectra_rows(spec, instrument)
        data = np.vstack(rows) if rows else np.zeros((0, coord.size))
        return xr.DataArray(
            data,
            dims=("pigment", "energy"),
            coords={"pigment": self.names, "energy": coord},
            attrs={
                "long_name": "pigment XRF spectrum (probability per channel)",
                "units": "1",
                "library": self.name,
                "library_version": self.version,
            },
        )


def sample_components(composition: Mapping[str, float], density: float,
                      thickness_um: float | None = None, ground=(),
                      instrument=None,
                      name: str = "sample"):
    """Components of any sample (not a library pigment): a layer of ``composition`` over ``ground``.

    Parameters
    ----------
    composition : Mapping[str, float]
        Formula or element -> mass fraction (normalised), e.g. ``{"H2O": 1.0, "Co": 5e-4}``
        for water with 500 ppm Co.
    density : float
        g/cm³.
    thickness_um : float or None
        Layer thickness, µm (None = infinitely thick).
    ground : sequence of Layer
        Layers below, top first (see :class:`ganx_dask.pigments.model.Layer`).
    instrument : :class:`~ganx_dask.pigments.physics.Instrument`, preset name, dict or None
    name : str
        Used in error messages.

    Returns
    -------
    ganx_dask.pigments.physics.SpectrumComponents
        Every line labelled ``"<element> <IUPAC line>"`` (e.g. ``"Co KL3"``), so per-element
        parts can be picked with :meth:`SpectrumComponents.lines_of`.

    Raises
    ------
    PigmentError
        Bad composition, density or thickness (the message names ``name``).
    """
    from .physics import compute_components  # local import: physics needs xraylib

    pig = Pigment(name=name, rgb=(0, 0, 0), composition=composition, density=density,
                  thickness_um=thickness_um, ground=tuple(ground))
    return compute_components(pig, instrument)


def sample_spectrum(composition: Mapping[str, float], energy, density: float,
                    thickness_um: float | None = None, ground=(),
                    instrument=None) -> np.ndarray:
    """Counts per channel of :func:`sample_components` on ``energy`` (not normalised).

    Parameters
    ----------
    composition, density, thickness_um, ground, instrument
        See :func:`sample_components`.
    energy : EnergyAxis, str or array-like
        See :func:`ganx_dask.energy.as_energy_axis`.
    """
    from .physics import render

    comps = sample_components(composition, density, thickness_um, ground, instrument)
    return render(comps, axis_edges(energy), comps.instrument)
