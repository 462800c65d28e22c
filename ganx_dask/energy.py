"""Energy axes (keV) and count-conserving rebinning.

An MA-XRF spectrum is a histogram of photon energies over contiguous bins.  ganx-dask describes
the bins with :class:`EnergyAxis` (``start``/``stop`` are the outer bin *edges* in keV, ``n`` the
number of channels), parsed from the CLI form ``"START:STOP:N"`` (e.g. ``"0.5:38.5:1024"``, the
ganX paper's axis).  Arbitrary (monotonic, possibly non-uniform) axes are accepted as arrays of bin
centres; their edges are the mid-points between centres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from .errors import EnergyAxisError

__all__ = ["EnergyAxis", "as_energy_axis", "axis_edges", "rebin", "edges_from_centres"]

DEFAULT_ENERGY = "0.5:38.5:1024"


@dataclass(frozen=True)
class EnergyAxis:
    """A uniform energy axis of ``n`` contiguous channels from ``start`` to ``stop`` keV.

    Parameters
    ----------
    start, stop : float
        Lower edge of the first channel and upper edge of the last channel, keV.
    n : int
        Number of channels.
    """

    start: float
    stop: float
    n: int

    def __post_init__(self) -> None:
        if not (np.isfinite(self.start) and np.isfinite(self.stop)):
            raise EnergyAxisError(f"energy axis bounds must be finite, got {self.start}:{self.stop}")
        if self.start < 0 or self.stop <= self.start:
            raise EnergyAxisError(
                f"energy axis needs 0 <= start < stop (keV), got {self.start}:{self.stop}"
            )
        if int(self.n) != self.n or self.n < 2:
            raise EnergyAxisError(f"energy axis needs at least 2 channels, got {self.n}")
        object.__setattr__(self, "n", int(self.n))

    @classmethod
    def parse(cls, spec: str) -> EnergyAxis:
        """Parse ``"START:STOP:N"`` (keV, keV, channels), e.g. ``"0.5:38.5:1024"``."""
        parts = str(spec).split(":")
        if len(parts) != 3:
            raise EnergyAxisError(
                f"invalid energy axis {spec!r}: expected START:STOP:N, e.g. '0.5:38.5:1024'"
            )
        try:
            start, stop = float(parts[0]), float(parts[1])
            n_float = float(parts[2])
        except ValueError:
            raise EnergyAxisError(
                f"invalid energy axis {spec!r}: START and STOP must be numbers (keV), N an integer"
            ) from None
        if n_float != int(n_float):
            raise EnergyAxisError(f"invalid energy axis {spec!r}: N must be an integer")
        return cls(start, stop, int(n_float))

    @property
    def width(self) -> float:
        """Channel width, keV."""
        return (self.stop - self.start) / self.n

    @property
    def edges(self) -> np.ndarray:
        """The ``n + 1`` channel edges, keV."""
        return np.linspace(self.start, self.stop, self.n + 1)

    @property
    def centres(self) -> np.ndarray:
        """The ``n`` channel centres, keV."""
        e = self.edges
        return 0.5 * (e[:-1] + e[1:])

    def index(self, energy_kev: float | np.ndarray) -> np.ndarray:
        """Channel index containing ``energy_kev`` (``-1``/``n`` when outside)."""
        idx = np.floor((np.asarray(energy_kev, dtype=float) - self.start) / self.width)
        return np.clip(idx, -1, self.n).astype(np.int64)

    def to_coord(self) -> xr.DataArray:
        """The ``energy`` coordinate (bin centres, keV) with units and calibration attrs."""
        return xr.DataArray(
            self.centres,
            dims="energy",
            attrs={
                "units": "keV",
                "long_name": "photon energy (channel centre)",
                "channel_width_keV": self.width,
                "calibration_offset_keV": self.start + 0.5 * self.width,
                "calibration_gain_keV_per_channel": self.width,
            },
        )

    def __str__(self) -> str:
        return f"{self.start:g}:{self.stop:g}:{self.n}"


def edges_from_centres(centres: np.ndarray) -> np.ndarray:
    """Bin edges (keV) for strictly increasing bin centres: mid-points, outer edges mirrored."""
    c = np.asarray(centres, dtype=float)
    if c.ndim != 1 or c.size < 2:
        raise EnergyAxisError("an energy axis needs a 1-D array of at least 2 bin centres")
    if not np.all(np.isfinite(c)):
        raise EnergyAxisError("energy bin centres must be finite")
    d = np.diff(c)
    if np.any(d <= 0):
        raise EnergyAxisError("energy bin centres must be strictly increasing")
    mid = 0.5 * (c[:-1] + c[1:])
    return np.concatenate([[c[0] - d[0] / 2], mid, [c[-1] + d[-1] / 2]])


def as_energy_axis(energy) -> EnergyAxis | np.ndarray:
    """Normalise an energy specification.

    Parameters
    ----------
    energy : EnergyAxis, str, array-like or xarray.DataArray
        An :class:`EnergyAxis`, a ``"START:STOP:N"`` string, or bin centres in keV.

    Returns
    -------
    EnergyAxis
        When the input is uniform (array inputs that are uniform to 1e-9 relative are converted).
    numpy.ndarray
        The bin edges (keV) of a non-uniform axis.  Do not pass these edges on where an energy
        specification is expected (a plain array is read as bin *centres* there): pass the
        original centres, or use :func:`axis_edges` where edges are wanted.
    """
    if isinstance(energy, EnergyAxis):
        return energy
    if isinstance(energy, str):
        return EnergyAxis.parse(energy)
    c = np.asarray(energy.values if isinstance(energy, xr.DataArray) else energy, dtype=float)
    edges = edges_from_centres(c)
    d = np.diff(edges)
    if np.allclose(d, d[0], rtol=1e-9, atol=0):
        return EnergyAxis(float(edges[0]), float(edges[-1]), c.size)
    return edges


def axis_edges(energy) -> np.ndarray:
    """Bin edges (keV) of any accepted energy specification."""
    ax = as_energy_axis(energy)
    return ax.edges if isinstance(ax, EnergyAxis) else ax


def rebin(values: np.ndarray, src_edges: np.ndarray, dst_edges: np.ndarray) -> np.ndarray:
    """Rebin histogram(s) onto new bins, conserving counts in the overlap.

    Counts are assumed uniformly spread within each source bin; each destination bin receives
    the overlapping fraction.  Counts outside the destination range are dropped.

    Parameters
    ----------
    values : numpy.ndarray
        Counts, shape ``(..., n_src)``.
    src_edges, dst_edges : numpy.ndarray
        Increasing bin edges, keV, lengths ``n_src + 1`` and ``n_dst + 1``.

    Returns
    -------
    numpy.ndarray
        Float64 counts of shape ``(..., n_dst)``.

    Raises
    ------
    EnergyAxisError
        If the edges are not increasing, the lengths do not match, or the axes do not overlap.
    """
    v = np.asarray(values, dtype=float)
    s = np.asarray(src_edges, dtype=float)
    t = np.asarray(dst_edges, dtype=float)
    if s.ndim != 1 or t.ndim != 1 or s.size < 2 or t.size < 2:
        raise EnergyAxisError("bin edges must be 1-D arrays with at least 2 entries")
    if v.shape[-1] != s.size - 1:
        raise EnergyAxisError(
            f"spectrum has {v.shape[-1]} channels but its energy axis has {s.size - 1}"
        )
    if np.any(np.diff(s) <= 0) or np.any(np.diff(t) <= 0):
        raise EnergyAxisError("bin edges must be strictly increasing")
    if s[-1] <= t[0] or t[-1] <= s[0]:
        raise EnergyAxisError(
            f"energy axes do not overlap: source {s[0]:g}-{s[-1]:g} keV, "
            f"target {t[0]:g}-{t[-1]:g} keV"
        )
    # cumulative counts at the source edges, interpolated (piecewise linear) at target edges
    cum = np.concatenate([np.zeros(v.shape[:-1] + (1,)), np.cumsum(v, axis=-1)], axis=-1)
    tc = np.clip(t, s[0], s[-1])
    flat = cum.reshape(-1, cum.shape[-1])
    out = np.stack([np.interp(tc, s, row) for row in flat]) if flat.shape[0] else flat
    out = np.diff(out, axis=-1).reshape(v.shape[:-1] + (t.size - 1,))
    return np.maximum(out, 0.0)
