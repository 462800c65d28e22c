"""Detector and scan realism for the Monte Carlo: pile-up, dead time and beam-spot blur.

Three effects of a real MA-XRF scan are applied *per photon inside the sampler* (no second pass
over the cube) and are all off by default.  Their parameters live in the frozen dataclass
:class:`DetectorEffects`; every store records them (``attrs["detector"]``).  The full physics and
the design notes are in ``docs/detector.md``.

Pile-up (sum peaks)
    Photons reach the detector as a Poisson process of rate ``r`` (counts/s).  Two consecutive
    photons closer in time than the pulse-pair resolution ``τ_pp`` cannot be resolved and are
    recorded as one count at the summed energy.  Inter-arrival times are i.i.d. ``Exp(r)``, so
    each *gap* between consecutive photons of a pixel is independently "short" with probability
    ``p = 1 − exp(−r·τ_pp)``.  A run of consecutive short gaps merges a whole chain of 2, 3, …
    photons into one count (all orders, each gap measured from the previous photon: the
    *extending* pulse-pair model).  The sampler's photons of a pixel are i.i.d., so their draw
    order serves as the time order.  Short gaps are drawn with geometric skips (one variate per
    *merged* gap, not per photon) from the tile's own stream ``spawn_key=(4, 0, ty, tx)``, so a
    zero rate consumes nothing and reproduces the plain sampler bit for bit.
Dead time / live time
    For a true input rate ``n`` (counts/s) and dead time ``τ`` per recorded event the recorded rate
    is ``m = n/(1 + nτ)`` (non-paralyzable) or ``m = n·exp(−nτ)`` (paralyzable); the detector is
    live for ``t_live = dwell·m/n`` (``dwell/(1 + nτ)`` resp. ``dwell·exp(−nτ)``) of each pixel's
    dwell time.  The sampler draws the recorded counts of a pixel as ``Poisson(m·dwell)``.
Beam-spot blur
    The excited spot is a Gaussian of FWHM ``b`` pixels.  Mixing the neighbours' *distributions*
    with the PSF weights before sampling is exactly equivalent to choosing, per photon, a
    neighbour offset from the PSF and drawing the photon from that neighbour's cluster
    distribution; so the per-cluster alias tables are kept and each photon costs one more uniform
    (stream ``spawn_key=(4, 1, ty, tx)``).  Neighbours outside the image or transparent
    (label −1) are rejected and the offset redrawn: the kernel is renormalised over the valid
    neighbours.

Units: times are given in the unit named by the field (``pulse_pair_ns`` ns, ``dead_time_us``
µs, ``dwell_ms`` ms); the pure functions take seconds.  Rates are counts/s, energies keV, the PSF
FWHM pixels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import dask.array as da
import numpy as np

from .alias import alias_tables
from .errors import ConfigError, check_known_fields

__all__ = [
    "DEAD_TIME_MODELS",
    "FWHM_TO_SIGMA",
    "PILEUP_STREAM",
    "BLUR_STREAM",
    "DETECTOR_PRESETS",
    "DetectorEffects",
    "PileupChains",
    "as_detector",
    "detector_from_options",
    "live_time_map",
    "PsfTable",
    "detector_rng",
    "pileup_probability",
    "photons_for_events",
    "draw_pileup_links",
    "pileup_chains",
    "summed_channels",
    "sum_axis_params",
    "photon_pixels",
    "pileup_counts",
    "pileup_order_count",
    "pileup_chain_weights",
    "pileup_order_spectra",
    "pileup_expectation_supported",
    "apply_pileup",
    "recorded_rate",
    "live_fraction",
    "dead_time_counts",
    "psf_radius",
    "psf_kernel",
    "psf_table",
    "blur_sources",
    "blurred_distributions",
    "psf_mixture_weights",
    "overlap_labels",
]

#: Dead-time models accepted by :class:`DetectorEffects` and :func:`recorded_rate`.
DEAD_TIME_MODELS = ("none", "nonparalyzable", "paralyzable")
#: σ = FWHM · FWHM_TO_SIGMA for a Gaussian (1 / (2·sqrt(2·ln 2)) ≈ 0.42466).
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
#: Spawn-key namespace of the detector effects (``docs/architecture.md``, determinism rule).
_DETECTOR_KEY = 4
#: Second spawn-key element of the pile-up stream: ``(4, 0, ty, tx)``.
PILEUP_STREAM = 0
#: Second spawn-key element of the beam-spot stream: ``(4, 1, ty, tx)``.
BLUR_STREAM = 1
#: Rejection rounds of :func:`blur_sources` before a photon falls back to its own pixel.
_MAX_REDRAW = 100_000


# --------------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------------
def _finite_nonneg(name: str, value: Any, *, positive: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"detector.{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        need = "positive" if positive else "non-negative"
        raise ConfigError(f"detector.{name} must be a finite {need} number, got {value!r}")
    return v


@dataclass(frozen=True)
class DetectorEffects:
    """Detector and scan effects applied by the Monte Carlo (all off by default).

    Parameters
    ----------
    pulse_pair_ns : float
        Pulse-pair resolution ``τ_pp`` of the pile-up model, **ns** (0 = pile-up off).  Typical
        SDD fast channels resolve 100–600 ns.
    input_rate_cps : float or None
        True input count rate of a pixel that receives the nominal ``counts``, **counts/s**; a
        pixel with expected counts ``λ`` has rate ``input_rate_cps·λ/counts``.  ``None``: the rate
        is ``λ / dwell`` (needs ``dwell_ms``).  Give either this or ``dwell_ms`` for pile-up,
        not both (the rate would be defined twice).
    dead_time_model : {"none", "nonparalyzable", "paralyzable"}
        Recorded-rate model (see :func:`recorded_rate`); needs ``dead_time_us`` and ``dwell_ms``
        and a count model whose totals are random (``poisson``/``luminosity``).
    dead_time_us : float
        Dead time per recorded event ``τ``, **µs** (typical SDD: 0.5–5 µs).
    dwell_ms : float or None
        Dwell (real) time per pixel, **ms**; sets the true rate ``λ/dwell`` and the live time.
    blur_fwhm_px : float
        FWHM of the Gaussian beam spot, **pixels** (0 = off).
    blur_truncate : float
        Half-width of the discrete PSF kernel in σ (square kernel of radius ``ceil(truncate·σ)``
        pixels, weights renormalised).

    Raises
    ------
    ConfigError
        For a negative, non-finite or inconsistent field (the message names it).
    """

    pulse_pair_ns: float = 0.0
    input_rate_cps: float | None = None
    dead_time_model: str = "none"
    dead_time_us: float = 0.0
    dwell_ms: float | None = None
    blur_fwhm_px: float = 0.0
    blur_truncate: float = 3.0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "pulse_pair_ns", _finite_nonneg("pulse_pair_ns", self.pulse_pair_ns))
        if self.input_rate_cps is not None:
            set_(self, "input_rate_cps", _finite_nonneg("input_rate_cps", self.input_rate_cps))
        if self.dwell_ms is not None:
            set_(self, "dwell_ms", _finite_nonneg("dwell_ms", self.dwell_ms, positive=True))
        set_(self, "dead_time_us", _finite_nonneg("dead_time_us", self.dead_time_us))
        set_(self, "blur_fwhm_px", _finite_nonneg("blur_fwhm_px", self.blur_fwhm_px))
        set_(self, "blur_truncate",
             _finite_nonneg("blur_truncate", self.blur_truncate, positive=True))
        if self.dead_time_model not in DEAD_TIME_MODELS:
            raise ConfigError(
                f"detector.dead_time_model must be one of {DEAD_TIME_MODELS}, "
                f"got {self.dead_time_model!r}"
            )
        if self.dead_time_model != "none":
            if self.dead_time_us <= 0:
                raise ConfigError(
                    f"detector.dead_time_us must be > 0 with dead_time_model "
                    f"{self.dead_time_model!r}"
                )
            if self.dwell_ms is None:
                raise ConfigError("detector.dwell_ms is required when a dead-time model is set")
        if self.pulse_pair_ns > 0:
            if self.input_rate_cps is None and self.dwell_ms is None:
                raise ConfigError(
                    "pile-up (detector.pulse_pair_ns > 0) needs detector.input_rate_cps or "
                    "detector.dwell_ms to know the count rate"
                )
            if self.input_rate_cps is not None and self.dwell_ms is not None:
                raise ConfigError(
                    "give detector.input_rate_cps or detector.dwell_ms, not both: with a dwell "
                    "time the input rate is counts / dwell"
                )

    # -- switches --------------------------------------------------------------------------
    @property
    def pileup(self) -> bool:
        """True when pile-up is simulated (``pulse_pair_ns > 0`` and a non-zero rate)."""
        return self.pulse_pair_ns > 0 and self.input_rate_cps != 0.0

    @property
    def dead_time(self) -> bool:
        """True when a dead-time model is active (a ``live_time`` map is produced)."""
        return self.dead_time_model != "none"

    @property
    def blur(self) -> bool:
        """True when the beam-spot blur is active (``blur_fwhm_px > 0``)."""
        return self.blur_fwhm_px > 0

    @property
    def enabled(self) -> bool:
        """True when any effect is active."""
        return self.pileup or self.dead_time or self.blur

    @property
    def blur_radius(self) -> int:
        """Radius of the PSF kernel, pixels (0 when the blur is off): the needed chunk overlap."""
        return psf_radius(self.blur_fwhm_px, self.blur_truncate) if self.blur else 0

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of every field (units in the field names)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> DetectorEffects:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError` naming them."""
        if d is None:
            return cls()
        return cls(**check_known_fields(d, cls, "detector settings"))

    # -- per-pixel quantities --------------------------------------------------------------
    def input_rate(self, expected_counts, counts: float) -> np.ndarray:
        """True input rate of each pixel, counts/s.

        Parameters
        ----------
        expected_counts : array-like
            Expected true photons of each pixel (``counts·scale`` for luminosity), counts.
        counts : float
            The nominal ``N`` of the count model, counts.
        """
        lam = np.asarray(expected_counts, dtype=np.float64)
        if self.input_rate_cps is not None:
            return lam * (self.input_rate_cps / float(counts))
        if self.dwell_ms is None:
            return np.zeros_like(lam)
        return lam / (self.dwell_ms * 1e-3)

    def link_probability(self, expected_counts, counts: float) -> np.ndarray:
        """Probability that a photon's successor arrives within ``τ_pp`` (per pixel).

        ``p = 1 − exp(−rate·τ_pp)``; see :func:`pileup_probability`.
        """
        return pileup_probability(self.input_rate(expected_counts, counts), self.pulse_pair_ns)

    def recorded_counts(self, expected_counts) -> tuple[np.ndarray, np.ndarray]:
        """Expected recorded counts and live time of each pixel under the dead-time model.

        Parameters
        ----------
        expected_counts : array-like
            Expected *true* photons of each pixel during the dwell, counts.

        Returns
        -------
        recorded : ndarray float64
            Expected recorded counts, counts (``= expected_counts`` with no dead-time model).
        live_time : ndarray float64
            Live time, s (the dwell time without dead time; ``nan`` if no dwell is known).
        """
        lam = np.asarray(expected_counts, dtype=np.float64)
        if not self.dead_time:
            dwell = np.nan if self.dwell_ms is None else self.dwell_ms * 1e-3
            return lam, np.full(lam.shape, dwell)
        return dead_time_counts(
            lam, self.dwell_ms * 1e-3, self.dead_time_us * 1e-6, self.dead_time_model
        )

    def photon_means(self, expected_counts, counts: float):
        """Mean photons the sampler draws per pixel (before pile-up merges them).

        Parameters
        ----------
        expected_counts : float or array-like
            Expected *true* photons of each pixel during the dwell ``λ``, counts.
        counts : float
            The nominal ``N`` of the count model, counts (sets the rate with
            ``input_rate_cps``).

        Returns
        -------
        float or ndarray float64
            ``λ`` without dead time (pile-up then removes the merged photons, so the recorded
            rate is ``(1 − p)·n``); the recorded mean ``λ_rec`` (:meth:`recorded_counts`) with
            dead time alone; with dead time *and* pile-up the ``μ`` whose recorded events
            after merging have mean ``λ_rec`` (:func:`photons_for_events`).  A dead-time model
            already removes every event that arrives while the detector is busy, including the
            second photon of a pulse pair, so pile-up must not remove it again: then
            ``counts / live_time = n``, the input rate.  The input is returned unchanged (the
            same object) when no dead-time model is set.
        """
        if not self.dead_time:
            return expected_counts
        rec = self.recorded_counts(expected_counts)[0]
        if self.pileup:
            rec = photons_for_events(rec, self.link_probability(expected_counts, counts))
        return float(rec) if np.ndim(expected_counts) == 0 else rec


def detector_rng(seed: int, stream: int, ty: int, tx: int) -> np.random.Generator:
    """Generator of a detector effect for tile ``(ty, tx)`` of the global grid.

    ``PCG64(SeedSequence(seed, spawn_key=(4, stream, ty, tx)))`` with ``stream`` =
    :data:`PILEUP_STREAM` (0) or :data:`BLUR_STREAM` (1).  Independent of the Monte Carlo stream
    ``(0, ty, tx)``, so switching an effect on changes no other random number.
    """
    ss = np.random.SeedSequence(int(seed), spawn_key=(_DETECTOR_KEY, int(stream), int(ty), int(tx)))
    return np.random.Generator(np.random.PCG64(ss))


#: Typical detector settings for the instrument presets of :mod:`ganx_dask.pigments.physics`
#: (same names).  Assumed values for the instrument class, not measurements of a device: SDD
#: fast-channel pulse-pair resolution, dead time per event of the slow channel, and a dwell
#: time that gives ~40 kcps (lab) or ~2 kcps (portable) at 400 counts per pixel.  They switch
#: pile-up and dead time on, so they need the ``poisson`` or ``luminosity`` count model.  The
#: blur depends on the pixel size of the scan: set ``blur_fwhm_px`` yourself.
DETECTOR_PRESETS: dict[str, dict[str, Any]] = {
    "lab-rh": {"pulse_pair_ns": 300.0, "dwell_ms": 10.0, "dead_time_model": "nonparalyzable",
               "dead_time_us": 1.0},
    "lab-rh-50kv-al": {"pulse_pair_ns": 300.0, "dwell_ms": 10.0,
                       "dead_time_model": "nonparalyzable", "dead_time_us": 1.0},
    "lab-mo": {"pulse_pair_ns": 300.0, "dwell_ms": 10.0, "dead_time_model": "nonparalyzable",
               "dead_time_us": 1.0},
    "lab-w": {"pulse_pair_ns": 300.0, "dwell_ms": 10.0, "dead_time_model": "nonparalyzable",
              "dead_time_us": 1.0},
    "portable-ag": {"pulse_pair_ns": 500.0, "dwell_ms": 200.0, "dead_time_model": "paralyzable",
                    "dead_time_us": 4.0},
}


def as_detector(detector) -> DetectorEffects | None:
    """Normalise a detector specification.

    Parameters
    ----------
    detector : DetectorEffects, dict, str or None
        Effects, their :meth:`DetectorEffects.to_dict` form, a preset name of
        :data:`DETECTOR_PRESETS`, or ``None``.

    Returns
    -------
    DetectorEffects or None
        ``None`` when no effect is active (the plain sampler).

    Raises
    ------
    ConfigError
        Unknown preset or key, invalid value.
    """
    if detector is None:
        return None
    if isinstance(detector, str):
        key = detector.strip().lower()
        if key not in DETECTOR_PRESETS:
            raise ConfigError(
                f"unknown detector preset {detector!r}; known: {sorted(DETECTOR_PRESETS)}"
            )
        fx = DetectorEffects(**DETECTOR_PRESETS[key])
    elif isinstance(detector, DetectorEffects):
        fx = detector
    elif isinstance(detector, dict):
        fx = DetectorEffects.from_dict(detector)
    else:
        raise ConfigError(
            f"detector must be a DetectorEffects, dict or preset name, got {type(detector).__name__}"
        )
    return fx if fx.enabled else None


def detector_from_options(preset: str | None = None, **options: Any) -> DetectorEffects | None:
    """Effects from a preset (optional) with the given fields overriding it (CLI helper).

    ``options`` are :class:`DetectorEffects` fields; ``None`` values are ignored.  Returns
    ``None`` when nothing is active.
    """
    d: dict[str, Any] = {}
    if preset is not None:
        key = preset.strip().lower()
        if key not in DETECTOR_PRESETS:
            raise ConfigError(
                f"unknown detector preset {preset!r}; known: {sorted(DETECTOR_PRESETS)}"
            )
        d.update(DETECTOR_PRESETS[key])
    d.update({k: v for k, v in options.items() if v is not None})
    return as_detector(d) if d else None


def live_time_map(
    detector: DetectorEffects, labels: da.Array, counts: float, scale: da.Array | None = None
) -> da.Array:
    """Lazy live time per pixel, float32 seconds (``dwell · live_fraction``).

    Parameters
    ----------
    detector : DetectorEffects
        With a dead-time model.
    labels : dask.array (y, x) int
        Cluster labels; pixels labelled −1 have no counts and the full dwell as live time.
    counts : float
        Nominal expected true counts per pixel ``N``, counts.
    scale : dask.array (y, x), optional
        Per-pixel scale of the expected counts (``luminosity``), dimensionless.
    """
    if scale is None:
        return da.map_blocks(_live_time_block, labels, counts=float(counts), detector=detector,
                             dtype=np.float32, meta=np.empty((0, 0), np.float32))
    return da.map_blocks(_live_time_block, labels, scale.rechunk(labels.chunks),
                         counts=float(counts), detector=detector, dtype=np.float32,
                         meta=np.empty((0, 0), np.float32))


def _live_time_block(labels, scale=None, *, counts, detector):
    lam = np.full(labels.shape, counts) if scale is None else counts * np.asarray(scale, float)
    lam = np.where(labels >= 0, lam, 0.0)
    return detector.recorded_counts(lam)[1].astype(np.float32)


# --------------------------------------------------------------------------------------------
# pile-up
# --------------------------------------------------------------------------------------------
def pileup_probability(rate_cps, pulse_pair_ns: float) -> np.ndarray:
    """Probability that a photon is followed by another within the pulse-pair resolution.

    Parameters
    ----------
    rate_cps : array-like
        True input count rate, counts/s.
    pulse_pair_ns : float
        Pulse-pair resolution ``τ_pp``, ns.

    Returns
    -------
    ndarray float64
        ``p = 1 − exp(−rate·τ_pp)`` (the Poisson probability of ≥ 1 arrival in ``τ_pp``).
    """
    x = np.asarray(rate_cps, dtype=np.float64) * (float(pulse_pair_ns) * 1e-9)
    return -np.expm1(-x)


def photons_for_events(events, p_link) -> np.ndarray:
    """Poisson mean of photons whose pile-up leaves ``events`` recorded events on average.

    A pixel with ``T ~ Poisson(μ)`` photons has ``max(T − 1, 0)`` gaps, each short (merged)
    with probability ``p``, so its expected events are
    ``f(μ) = μ − p·(μ − 1 + e^{−μ}) = μ(1 − p) + p(1 − e^{−μ})``.  ``f`` is increasing and
    concave with ``f(0) = 0``; this solves ``f(μ) = events`` by Newton's method from
    ``events/(1 − p)`` (above the root: the first step lands below it and the iterates then
    rise monotonically), to float64 precision.

    Parameters
    ----------
    events : float or array-like
        Wanted mean recorded events per pixel, counts (≥ 0).
    p_link : float or array-like
        Probability of a short gap (:func:`pileup_probability`), in [0, 1).

    Returns
    -------
    ndarray float64
        ``μ``, counts (``0`` where ``events`` is 0).

    Raises
    ------
    ConfigError
        When ``p ≥ 1`` and events > 0 (every photon would merge into one event).
    """
    ev, p = np.broadcast_arrays(np.asarray(events, dtype=np.float64),
                                np.asarray(p_link, dtype=np.float64))
    if np.any((p >= 1.0) & (ev > 0)):
        raise ConfigError("pile-up probability 1 (detector.pulse_pair_ns × rate far too large): "
                          "every photon would merge into one event")
    q = 1.0 - p
    mu = np.divide(ev, q, out=np.zeros_like(ev), where=ev > 0)
    for _ in range(60):
        e = np.exp(-mu)
        step = (mu * q + p * (1.0 - e) - ev) / (q + p * e)
        mu = np.maximum(mu - step, 0.0)
        if np.all(np.abs(step) <= 1e-15 * np.maximum(mu, 1.0)):
            break
    return mu


def _geometric_positions(rng: np.random.Generator, p: float, n: int) -> np.ndarray:
    """Sorted positions in ``[0, n)`` of a Bernoulli(p) process, by geometric skips."""
    parts = []
    last = -1
    while True:
        mean = (n - 1 - last) * p
        size = int(mean + 6.0 * math.sqrt(mean) + 16.0)
        # clipping a skip to n + 1 keeps every position < n and stops int64 overflow at tiny p
        pos = last + np.cumsum(np.minimum(rng.geometric(p, size=size), n + 1))
        if pos[-1] >= n:
            parts.append(pos[pos < n])
            break
        parts.append(pos)
        last = int(pos[-1])
    return np.concatenate(parts)


def draw_pileup_links(
    rng: np.random.Generator, photons_per_pixel, p_link
) -> np.ndarray:
    """Draw which consecutive photon pairs pile up (the "short gaps") in a batch of pixels.

    Photons are numbered flat: pixel by pixel, the photons of a pixel consecutive (the sampler's
    order).  Gap ``j`` lies between photon ``j`` and ``j + 1`` of the same pixel; each is short
    independently with the pixel's probability ``p``.

    Parameters
    ----------
    rng : numpy.random.Generator
        The tile's pile-up generator (:func:`detector_rng` with :data:`PILEUP_STREAM`).
    photons_per_pixel : int array (npix,)
        Photons of each pixel, counts.
    p_link : float or array (npix,)
        Probability of a short gap (:func:`pileup_probability`).  A scalar draws only geometric
        skips; an array draws skips at the largest ``p`` and thins them with one uniform each.

    Returns
    -------
    ndarray int64
        Sorted flat indices ``j`` of the short gaps (photon ``j`` merges with ``j + 1``).  Empty,
        and nothing consumed from ``rng``, when every ``p`` is 0 or no pixel has 2 photons.

    Notes
    -----
    Cost is proportional to the number of short gaps (≈ ``p·M`` for ``M`` photons): positions
    are drawn by geometric skips over all ``M`` gaps and the gap after each pixel's last photon
    is discarded (restricting a Bernoulli process to a subset leaves it Bernoulli).
    """
    n = np.asarray(photons_per_pixel, dtype=np.int64).ravel()
    scalar = np.ndim(p_link) == 0
    p = np.asarray(p_link, dtype=np.float64)
    if not scalar:
        p = p.ravel()
        if p.shape != n.shape:
            raise ValueError(f"p_link has shape {p.shape}, photons_per_pixel {n.shape}")
    if np.any(~np.isfinite(p)) or np.any(p < 0) or np.any(p > 1):
        raise ValueError("pile-up probabilities must lie in [0, 1]")
    m = int(n.sum())
    empty = np.empty(0, dtype=np.int64)
    pmax = float(p) if scalar else float(p[n >= 2].max(initial=0.0))
    if m < 2 or pmax <= 0.0 or not np.any(n >= 2):
        return empty
    cand = _geometric_positions(rng, pmax, m)
    ends = np.cumsum(n) - 1  # flat index of each pixel's last photon
    pix = np.searchsorted(ends, cand, side="left")
    keep = cand != ends[pix]
    if not scalar:
        keep &= rng.random(cand.size) * pmax < p[pix]
    return cand[keep]


@dataclass(frozen=True)
class PileupChains:
    """Chains of piled-up photons from a set of short gaps (:func:`pileup_chains`).

    Attributes
    ----------
    members : ndarray int64
        Sorted flat indices of every photon that belongs to a chain (≥ 2 photons each).
    chain : ndarray int64
        Chain number (0, 1, …) of each member.
    head : ndarray bool
        True for the first photon of each chain (``members[head]`` are the chain heads).
    """

    members: np.ndarray
    chain: np.ndarray
    head: np.ndarray

    @property
    def n_chains(self) -> int:
        """Number of chains (recorded pile-up events)."""
        return int(self.head.sum())


def pileup_chains(links: np.ndarray) -> PileupChains:
    """Group short gaps into chains: consecutive gaps ``j, j+1, …`` merge photons ``j … j+k+1``.

    Parameters
    ----------
    links : int array
        Sorted, unique flat gap indices (from :func:`draw_pileup_links`), never the last photon of
        a pixel.

    Notes
    -----
    O(n) (no sorting): a chain starts at every gap not preceded by the gap just before it; a
    chain of ``k`` gaps has the ``k + 1`` members ``head … head + k``.
    """
    links = np.asarray(links, dtype=np.int64)
    n = links.size
    if n == 0:
        e = np.empty(0, dtype=np.int64)
        return PileupChains(members=e, chain=e.copy(), head=np.empty(0, dtype=bool))
    start = np.empty(n, dtype=bool)
    start[0] = True
    np.not_equal(np.diff(links), 1, out=start[1:])
    first = np.flatnonzero(start)
    sizes = np.diff(np.append(first, n)) + 1  # photons per chain
    offsets = np.cumsum(sizes) - sizes  # position of each chain's head among the members
    total = n + first.size
    chain = np.repeat(np.arange(first.size, dtype=np.int64), sizes)
    members = np.arange(total, dtype=np.int64) + np.repeat(links[first] - offsets, sizes)
    head = np.zeros(total, dtype=bool)
    head[offsets] = True
    return PileupChains(members=members, chain=chain, head=head)


def summed_channels(
    member_channels: np.ndarray, chains: PileupChains, edges_kev: np.ndarray
) -> np.ndarray:
    """Channel of each chain's summed energy.

    Each photon is taken at its channel **centre** ``c_i``; a chain is recorded at
    ``E_sum = Σ c_i`` in the channel containing it (an ``E_sum`` on an edge goes to the upper
    channel).  On a uniform axis (start ``s``, width ``w``) that is computed exactly as
    ``index = Σ i + floor((m − 1)·s/w + m/2)`` for a chain of ``m`` photons in channels ``i``
    (a 1e-9 tolerance absorbs the rounding of ``s/w``); on other axes by ``searchsorted`` on the
    edges with a 1e-9-channel tolerance.

    Parameters
    ----------
    member_channels : int array
        Channel index of each chain member (same order as ``chains.members``).
    chains : PileupChains
    edges_kev : ndarray (E + 1,)
        Channel edges, keV.

    Returns
    -------
    ndarray int64 (n_chains,)
        Channel of each chain, ``−1`` when ``E_sum`` lies above the last edge (the event is lost).
    """
    return _chain_sums(member_channels, chains.chain, chains.n_chains, edges_kev)


def _chain_sums(member_channels, chain, n_chains: int, edges_kev) -> np.ndarray:
    """:func:`summed_channels` on a chain-number array (members in photon order)."""
    edges = np.asarray(edges_kev, dtype=np.float64)
    n_e = edges.size - 1
    ch = np.asarray(member_channels, dtype=np.int64)
    uniform, s_over_w, centres, tol = sum_axis_params(edges)
    if uniform:
        m = np.bincount(chain, minlength=n_chains)
        isum = np.bincount(chain, weights=ch, minlength=n_chains).astype(np.int64)
        shift = np.floor((m - 1) * s_over_w + 0.5 * m + 1e-9).astype(np.int64)
        idx = isum + shift
    else:  # bincount adds in input order, from 0.0: the numba kernel adds in the same order
        esum = np.bincount(chain, weights=centres[ch], minlength=n_chains)
        idx = np.searchsorted(edges, esum + tol, side="right").astype(np.int64) - 1
    idx[idx >= n_e] = -1
    return idx


def sum_axis_params(edges_kev: np.ndarray) -> tuple[bool, float, np.ndarray, float]:
    """How :func:`summed_channels` places sums on an axis (shared with the numba kernel).

    Returns
    -------
    uniform : bool
        True when all channel widths agree to 1e-9 (relative): the integer formula is used.
    s_over_w : float
        ``start / width`` (uniform axes).
    centres : ndarray float64 (E,)
        Channel centres, keV.
    tol : float
        Tolerance added to ``E_sum`` before ``searchsorted`` (non-uniform axes), keV.
    """
    edges = np.asarray(edges_kev, dtype=np.float64)
    width = np.diff(edges)
    uniform = bool(np.all(np.abs(width - width[0]) <= 1e-9 * width[0]))
    centres = 0.5 * (edges[:-1] + edges[1:])
    return uniform, float(edges[0] / width[0]), centres, 1e-9 * float(width.min())


def photon_pixels(photon_index: np.ndarray, photons_per_pixel) -> np.ndarray:
    """Pixel (position in ``photons_per_pixel``) of each flat photon index."""
    ends = np.cumsum(np.asarray(photons_per_pixel, dtype=np.int64).ravel())
    return np.searchsorted(ends, np.asarray(photon_index, dtype=np.int64), side="right")


def pileup_order_count(p_max: float, photons_max: float, tol: float = 1e-12) -> int:
    """Longest chain kept by the expected-spectrum pile-up model (:func:`pileup_expectation`).

    The expected number of chains longer than ``k`` photons is at most ``photons·p^k``; this
    returns the smallest ``k ≥ 1`` with ``photons_max · p_max^k ≤ tol`` counts (at most 256).
    """
    if p_max <= 0.0 or photons_max <= 0.0:
        return 1
    k = math.ceil(math.log(tol / photons_max) / math.log(p_max)) if p_max < 1.0 else 256
    return int(min(max(k, 1), 256))


def pileup_chain_weights(photons, p_link, kmax: int, *, fixed: bool) -> np.ndarray:
    """Expected number of chains of exactly ``k = 1 … kmax`` photons in a pixel.

    Parameters
    ----------
    photons : float or array (P,)
        ``N`` photons (``fixed=True``) or the Poisson mean ``μ`` of the photons, counts.
    p_link : float or array (P,)
        Probability of a short gap (:func:`pileup_probability`).
    kmax : int
        Longest chain (:func:`pileup_order_count`).
    fixed : bool
        Exactly ``N`` photons, else ``T ~ Poisson(μ)``.

    Returns
    -------
    ndarray (P, kmax) float64 (``(kmax,)`` for scalar inputs)
        For ``T`` photons and ``k < T``: ``p^(k−1)·((T − k − 1)(1 − p)² + 2(1 − p))``; for
        ``k = T``: ``p^(T−1)``.  With Poisson ``T`` this is averaged in closed form with
        ``E[(T − a)⁺] = μ·P(T ≥ a) − a·P(T ≥ a + 1)``.  ``Σ k·n_k`` is the photon mean and
        ``Σ n_k`` the mean recorded events (both tested).
    """
    from scipy.special import pdtrc
    from scipy.stats import poisson

    scalar = np.ndim(photons) == 0 and np.ndim(p_link) == 0
    n, p = np.broadcast_arrays(np.atleast_1d(np.asarray(photons, dtype=np.float64)),
                               np.atleast_1d(np.asarray(p_link, dtype=np.float64)))
    n, p = n[:, None], p[:, None]
    k = np.arange(1, kmax + 1, dtype=np.float64)[None, :]
    pk = p ** (k - 1.0)
    q = 1.0 - p
    if fixed:
        w = np.where(k < n, pk * ((n - k - 1.0) * q * q + 2.0 * q), np.where(k == n, pk, 0.0))
    else:
        ge1 = pdtrc(k, n)  # P(T ≥ k + 1)
        ge2 = pdtrc(k + 1.0, n)  # P(T ≥ k + 2)
        excess = np.maximum(n * ge1 - (k + 1.0) * ge2, 0.0)  # E[(T − k − 1)⁺]
        w = pk * (q * q * excess + 2.0 * q * ge1 + poisson.pmf(k, n))
    return w[0] if scalar else w


def pileup_order_spectra(distributions: np.ndarray, edges_kev: np.ndarray, kmax: int
                         ) -> np.ndarray:
    """Channel distribution of a chain of ``k = 1 … kmax`` photons (uniform axes).

    A chain of ``k`` i.i.d. photons from ``d`` is recorded at ``Σ i + shift_k`` with
    ``shift_k = floor((k − 1)·s/w + k/2)`` (:func:`summed_channels`), so its law is the
    ``k``-fold convolution of ``d`` shifted by ``shift_k``; mass beyond the last channel is
    lost (the rows of order ``k`` sum to less than 1).

    Parameters
    ----------
    distributions : ndarray (U, E)
        Photon distributions (rows sum to 1).
    edges_kev : ndarray (E + 1,)
        A uniform axis starting at or above ``−w/2`` (:func:`pileup_expectation_supported`).
    kmax : int

    Returns
    -------
    ndarray (U, kmax, E) float64
    """
    d = np.asarray(distributions, dtype=np.float64)
    U, E = d.shape
    uniform, s_over_w, _, _ = sum_axis_params(edges_kev)
    if not pileup_expectation_supported(edges_kev):
        raise ValueError("pile-up expectation needs a uniform axis starting at ≥ −width/2")
    out = np.zeros((U, kmax, E))
    out[:, 0] = d
    nfft = 1 << int(math.ceil(math.log2(2 * E)))
    fd = np.fft.rfft(d, nfft, axis=1)
    cur = d
    for k in range(2, kmax + 1):
        cur = np.fft.irfft(np.fft.rfft(cur, nfft, axis=1) * fd, nfft, axis=1)[:, :E]
        np.maximum(cur, 0.0, out=cur)  # FFT round-off (~1e-17) below zero
        shift = int(math.floor((k - 1) * s_over_w + 0.5 * k + 1e-9))
        if shift < E:
            out[:, k - 1, shift:] = cur[:, :E - shift]
    return out


def pileup_expectation_supported(edges_kev) -> bool:
    """True when :func:`pileup_order_spectra` applies: a uniform axis with ``s/w ≥ −1/2``."""
    uniform, s_over_w, _, _ = sum_axis_params(edges_kev)
    return bool(uniform and s_over_w >= -0.5)


def pileup_counts(
    channels: np.ndarray, photons_per_pixel, links: np.ndarray, edges_kev: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Histogram photons with pile-up (reference, whole batch): counts, merged and lost events.

    Parameters
    ----------
    channels : int array (M,)
        Channel of each photon, flat (pixel by pixel, photons of a pixel consecutive).
    photons_per_pixel : int array (npix,)
        Photons of each pixel (``sum == M``).
    links : int array
        Short gaps (:func:`draw_pileup_links`).
    edges_kev : ndarray (E + 1,)
        Channel edges, keV.

    Returns
    -------
    counts : ndarray int64 (npix, E)
        Recorded counts.
    merged : ndarray int64 (npix,)
        Short gaps of each pixel (each one removes one count).
    lost : ndarray int64 (npix,)
        Chains whose summed energy is above the axis (each removes one more count).

    Notes
    -----
    Conservation, exactly: ``counts.sum(1) == photons_per_pixel − merged − lost``.
    """
    n = np.asarray(photons_per_pixel, dtype=np.int64).ravel()
    ch = np.asarray(channels, dtype=np.int64).ravel()
    E = np.asarray(edges_kev).size - 1
    npix = n.size
    pix = np.repeat(np.arange(npix, dtype=np.int64), n)
    keys = pix * E + ch
    chains = pileup_chains(links)
    sums = summed_channels(ch[chains.members], chains, edges_kev)
    heads = chains.members[chains.head]
    trash = npix * E
    keys[chains.members] = trash
    ok = sums >= 0
    keys[heads[ok]] = pix[heads[ok]] * E + sums[ok]
    counts = np.bincount(keys, minlength=trash + 1)[:trash].reshape(npix, E)
    merged = np.bincount(pix[np.asarray(links, dtype=np.int64)], minlength=npix)
    lost = np.bincount(pix[heads[~ok]], minlength=npix)
    return counts, merged, lost


def _flat_rows(counts: np.ndarray) -> tuple[np.ndarray, int] | None:
    """A 1-D view over the memory spanned by a (h, w, E) block whose rows are contiguous.

    Returns the view and the row stride in elements, or None for other layouts.  Lets
    ``ufunc.at`` use its fast 1-D path on a tile view of a larger block.
    """
    h, w, E = counts.shape
    it = counts.itemsize
    s0, s1, s2 = counts.strides
    if s2 != it or s1 != E * it or s0 % it or s0 < w * E * it or counts.size == 0:
        return None
    n = (h - 1) * (s0 // it) + w * E
    return np.lib.stride_tricks.as_strided(counts, shape=(n,), strides=(it,)), s0 // it


def apply_pileup(
    counts: np.ndarray,
    links: np.ndarray,
    link_pixel: np.ndarray,
    first_channel: np.ndarray,
    next_channel: np.ndarray,
    edges_kev: np.ndarray,
) -> int:
    """Correct a histogram, in place, for the piled-up photons it already counts.

    The sampler histograms every photon.  For each chain of short gaps this removes every
    member from its channel and adds one count at the chain's summed channel
    (:func:`summed_channels`); chains above the axis are dropped.  Everything is given per short
    gap, so the caller needs only the two photons of each gap.  Cost is proportional to the
    number of gaps.

    Parameters
    ----------
    counts : ndarray (h, w, E) unsigned int
        Counts of a block of pixels (a view is fine), modified in place.
    links : int array (n,)
        Sorted short gaps (:func:`draw_pileup_links`): photon ``links[i]`` merges with
        ``links[i] + 1``.
    link_pixel : int array (n,)
        Flat (row-major) pixel index, within ``counts``, of each gap's photons.
    first_channel, next_channel : int array (n,)
        Channel of photon ``links[i]`` and of photon ``links[i] + 1`` (``first_channel`` is
        only read where a chain starts).
    edges_kev : ndarray (E + 1,)
        Channel edges, keV.

    Returns
    -------
    int
        Number of chains lost above the axis.
    """
    h, w, E = counts.shape
    links = np.asarray(links, dtype=np.int64)
    n = links.size
    if n == 0:
        return 0
    link_pixel = np.asarray(link_pixel, dtype=np.int64)
    ch1 = np.asarray(first_channel, dtype=np.int64)
    ch2 = np.asarray(next_channel, dtype=np.int64)
    start = np.empty(n, dtype=bool)
    start[0] = True
    np.not_equal(np.diff(links), 1, out=start[1:])
    first = np.flatnonzero(start)  # the gap that opens each chain
    sizes = np.diff(np.append(first, n)) + 1  # photons per chain
    ch1 = ch1[first]
    uniform, s_over_w, _, _ = sum_axis_params(edges_kev)
    if uniform:  # integer sums per chain: the same numbers as _chain_sums, without a chain array
        isum = ch1 + np.add.reduceat(ch2, first)
        sums = isum + np.floor((sizes - 1) * s_over_w + 0.5 * sizes + 1e-9).astype(np.int64)
        sums[sums >= E] = -1
    else:
        ch_mem = np.insert(ch2, first, ch1)  # members in photon order, chain by chain
        chain = np.repeat(np.arange(first.size, dtype=np.int64), sizes)
        sums = _chain_sums(ch_mem, chain, first.size, edges_kev)
    ok = sums >= 0
    one = counts.dtype.type(1)
    flat = _flat_rows(counts)
    if flat is not None:
        buf, row = flat
        # offset of each pixel's spectrum in the flat view (a gather instead of a divmod)
        pix_off = (np.arange(h, dtype=np.int64)[:, None] * row
                   + np.arange(w, dtype=np.int64)[None, :] * E).ravel()
        off = pix_off[link_pixel]
        np.subtract.at(buf, off[first] + ch1, one)
        np.subtract.at(buf, off + ch2, one)
        np.add.at(buf, off[first][ok] + sums[ok], one)
    else:
        r, c = np.divmod(link_pixel, w)
        np.subtract.at(counts, (r[first], c[first], ch1), one)
        np.subtract.at(counts, (r, c, ch2), one)
        np.add.at(counts, (r[first][ok], c[first][ok], sums[ok]), one)
    return int((~ok).sum())


# --------------------------------------------------------------------------------------------
# dead time
# --------------------------------------------------------------------------------------------
def _check_dt_model(model: str) -> None:
    if model not in DEAD_TIME_MODELS:
        raise ConfigError(f"dead-time model must be one of {DEAD_TIME_MODELS}, got {model!r}")


def live_fraction(true_rate_cps, tau_s: float, model: str) -> np.ndarray:
    """Fraction of the real time the detector is live.

    Parameters
    ----------
    true_rate_cps : array-like
        True input rate ``n``, counts/s.
    tau_s : float
        Dead time per recorded event ``τ``, s.
    model : {"none", "nonparalyzable", "paralyzable"}

    Returns
    -------
    ndarray float64
        ``1/(1 + nτ)`` (non-paralyzable: each recorded event blocks ``τ``, so the dead fraction
        is ``m·τ``), ``exp(−nτ)`` (paralyzable: live iff no arrival in the preceding ``τ``), or 1.
    """
    _check_dt_model(model)
    x = np.asarray(true_rate_cps, dtype=np.float64) * float(tau_s)
    if model == "nonparalyzable":
        return 1.0 / (1.0 + x)
    if model == "paralyzable":
        return np.exp(-x)
    return np.ones_like(x)


def recorded_rate(true_rate_cps, tau_s: float, model: str) -> np.ndarray:
    """Recorded (output) count rate for a true input rate, counts/s.

    ``m = n/(1 + nτ)`` (non-paralyzable), ``m = n·exp(−nτ)`` (paralyzable), ``m = n`` (none);
    in each case ``m = n · live_fraction``.
    """
    n = np.asarray(true_rate_cps, dtype=np.float64)
    return n * live_fraction(n, tau_s, model)


def dead_time_counts(
    true_counts, dwell_s: float, tau_s: float, model: str
) -> tuple[np.ndarray, np.ndarray]:
    """Expected recorded counts and live time per pixel from expected true counts.

    Parameters
    ----------
    true_counts : array-like
        Expected true photons per pixel during the dwell ``λ``, counts (rate ``n = λ/dwell``).
    dwell_s : float
        Dwell (real) time per pixel, s.
    tau_s : float
        Dead time per recorded event, s.
    model : {"none", "nonparalyzable", "paralyzable"}

    Returns
    -------
    recorded : ndarray float64
        Expected recorded counts ``m·dwell = λ·live_fraction``, counts.
    live_time : ndarray float64
        Live time ``dwell·live_fraction``, s (the full dwell where ``λ = 0``).

    Notes
    -----
    The sampler draws the recorded total as ``Poisson(recorded)``: the Poisson stream thinned
    to the right mean.  The real recorded stream is a renewal process with sub-Poissonian
    counts (for the non-paralyzable model the variance is ``recorded/(1 + nτ)²``); the mean and
    the live time are exact, the variance is overstated at high rates (documented in
    ``docs/detector.md``).
    """
    lam = np.asarray(true_counts, dtype=np.float64)
    dwell_s = float(dwell_s)
    if not (math.isfinite(dwell_s) and dwell_s > 0):
        raise ConfigError(f"dwell time must be a positive number of seconds, got {dwell_s!r}")
    f = live_fraction(lam / dwell_s, tau_s, model)
    return lam * f, dwell_s * f


# --------------------------------------------------------------------------------------------
# beam-spot blur
# --------------------------------------------------------------------------------------------
def psf_radius(fwhm_px: float, truncate: float = 3.0) -> int:
    """Radius of the discrete PSF kernel, pixels: ``ceil(truncate·σ)`` (0 for FWHM 0)."""
    if fwhm_px <= 0:
        return 0
    return max(1, int(math.ceil(truncate * fwhm_px * FWHM_TO_SIGMA - 1e-12)))


def psf_kernel(fwhm_px: float, truncate: float = 3.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Discrete Gaussian beam-spot kernel.

    Parameters
    ----------
    fwhm_px : float
        FWHM of the spot, pixels (> 0).
    truncate : float
        Kernel half-width in σ; the kernel is the square ``|dy|, |dx| ≤ R = ceil(truncate·σ)``.

    Returns
    -------
    dy, dx : ndarray int64 (K,)
        Offsets of the kernel entries, pixels (row-major over the square).
    weights : ndarray float64 (K,)
        ``exp(−(dy² + dx²)/(2σ²))`` normalised to sum 1.  Separable, so the x-marginal is the
        1-D Gaussian sampled at integer offsets and truncated at ``R``.
    """
    if not (math.isfinite(fwhm_px) and fwhm_px > 0):
        raise ConfigError(f"beam-spot FWHM must be a positive number of pixels, got {fwhm_px!r}")
    sigma = fwhm_px * FWHM_TO_SIGMA
    R = psf_radius(fwhm_px, truncate)
    o = np.arange(-R, R + 1, dtype=np.int64)
    g = np.exp(-0.5 * (o / sigma) ** 2)
    w2 = np.outer(g, g)
    dy, dx = np.meshgrid(o, o, indexing="ij")
    return dy.ravel(), dx.ravel(), (w2 / w2.sum()).ravel()


@dataclass(frozen=True)
class PsfTable:
    """Alias table over the offsets of a discrete PSF (:func:`psf_table`).

    ``prob``/``alias`` have ``K + 1`` entries: the extra entry (prob 0, alias ``K − 1``) catches
    ``floor(v·K) == K`` when ``v·K`` rounds up, as in the sampler's tables.
    """

    dy: np.ndarray
    dx: np.ndarray
    weights: np.ndarray
    prob: np.ndarray
    alias: np.ndarray
    radius: int

    def draw(self, v: np.ndarray, *, overwrite: bool = False) -> np.ndarray:
        """Kernel entry (0 … K−1) for each uniform ``v`` in [0, 1), by the alias method.

        ``overwrite=True`` lets the call reuse ``v`` as scratch (it becomes the coin).
        """
        K = self.weights.size
        x = v if overwrite else v.copy()
        np.multiply(x, K, out=x)
        j = x.astype(np.intp)
        np.subtract(x, j, out=x)  # coin in [0, 1)
        np.copyto(j, self.alias[j], where=x >= self.prob[j])
        return j


def psf_table(fwhm_px: float, truncate: float = 3.0) -> PsfTable:
    """The PSF kernel of :func:`psf_kernel` with its alias table (exact in float64)."""
    dy, dx, w = psf_kernel(fwhm_px, truncate)
    prob, alias = alias_tables(w[None, :])
    K = w.size
    p = np.zeros(K + 1)
    p[:K] = prob[0]
    a = np.empty(K + 1, dtype=np.intp)
    a[:K] = alias[0]
    a[K] = K - 1
    return PsfTable(dy=dy, dx=dx, weights=w, prob=p, alias=a, radius=psf_radius(fwhm_px, truncate))


def blur_sources(
    rng: np.random.Generator,
    labels_padded: np.ndarray,
    psf: PsfTable,
    pixels: np.ndarray,
    photons_per_pixel,
    *,
    engine: str = "numpy",
) -> np.ndarray:
    """Source cluster of each photon under the beam-spot blur.

    Each photon of pixel ``(y, x)`` takes a PSF offset ``(dy, dx)`` (one uniform, alias method)
    and is drawn from the cluster of pixel ``(y + dy, x + dx)``.  Offsets that land on a
    label < 0 (transparent, or outside the image: the padding) are redrawn, so the kernel is
    renormalised over valid neighbours.  Uniforms are consumed in photon order, then one per
    redraw in order of the redrawn photons, round after round.

    Parameters
    ----------
    rng : numpy.random.Generator
        The tile's blur generator (:func:`detector_rng` with :data:`BLUR_STREAM`).
    labels_padded : int ndarray (h + 2R, w + 2R)
        Labels of a block of ``h × w`` pixels with a halo of ``R = psf.radius`` pixels on each
        side (−1 outside the image).
    psf : PsfTable
    pixels : int array (P,)
        Flat (row-major, within the ``h × w`` block) index of each emitting pixel.
    photons_per_pixel : int or int array (P,)
        Photons of each emitting pixel (a scalar for the fixed count model).
    engine : {"numpy", "numba"}
        ``"numba"`` fuses the first pass (offset draw and label gather) in
        ``ganx_dask._numba_kernels.psf_sources``, with the same uniforms and float64
        operations, so the result is identical.

    Returns
    -------
    ndarray (M,), the dtype of ``labels_padded``
        Source cluster of each photon (≥ 0), photons pixel by pixel.
    """
    R = psf.radius
    lab = np.asarray(labels_padded)
    wp = lab.shape[1]
    w = wp - 2 * R
    pixels = np.asarray(pixels, dtype=np.intp)
    py, px = np.divmod(pixels, w)
    base = (py + R) * wp + (px + R)
    if np.ndim(photons_per_pixel) == 0:
        nph = np.full(base.shape, int(photons_per_pixel), dtype=np.int64)
    else:
        nph = np.asarray(photons_per_pixel, dtype=np.int64)
    off = psf.dy.astype(np.intp) * wp + psf.dx.astype(np.intp)
    labf = lab.ravel()
    m = int(nph.sum())
    base_ph = None
    if engine == "numba":
        from ._numba_kernels import psf_sources

        src = np.empty(m, dtype=labf.dtype)
        psf_sources(rng.random(m), psf.prob, psf.alias, off, base, nph, labf, src)
    else:
        base_ph = np.repeat(base, nph)
        src_idx = off[psf.draw(rng.random(m), overwrite=True)]
        src_idx += base_ph
        src = labf[src_idx]
    if labf.size and labf.min() >= 0:
        return src
    bad = np.flatnonzero(src < 0)
    if bad.size and base_ph is None:
        base_ph = np.repeat(base, nph)
    rounds = 0
    while bad.size:
        rounds += 1
        if rounds > _MAX_REDRAW:  # pragma: no cover - probability < exp(-1e5 · w0)
            src[bad] = labf[base_ph[bad]]
            break
        o = psf.draw(rng.random(bad.size), overwrite=True)
        s = labf[base_ph[bad] + off[o]]
        src[bad] = s
        bad = bad[s < 0]
    return src


def psf_mixture_weights(labels_padded: np.ndarray, psf: PsfTable, n_clusters: int
                        ) -> np.ndarray:
    """Weight of each cluster in each pixel's blurred distribution (the per-channel blur).

    ``W[p, k] = Σ_j w_j·[label(p + off_j) = k] / Σ_j w_j·[label(p + off_j) ≥ 0]``: the law
    of the source cluster that :func:`blur_sources` draws for a photon of pixel ``p`` (offsets
    on transparent or outside pixels are redrawn, i.e. the kernel is renormalised).

    Parameters
    ----------
    labels_padded : int ndarray (h + 2R, w + 2R)
        Labels with a halo of ``R = psf.radius`` pixels (−1 outside the image).
    psf : PsfTable
    n_clusters : int

    Returns
    -------
    ndarray (h·w, K) float64
        Row-major pixels; rows of pixels labelled −1 are zero.
    """
    R = psf.radius
    lab = np.asarray(labels_padded, dtype=np.int64)
    h, w = lab.shape[0] - 2 * R, lab.shape[1] - 2 * R
    K1 = int(n_clusters) + 1
    base = np.arange(h * w, dtype=np.int64) * K1
    acc = np.zeros(h * w * K1)
    for dy, dx, wt in zip(psf.dy, psf.dx, psf.weights, strict=True):
        nb = lab[R + dy:R + dy + h, R + dx:R + dx + w].ravel()
        acc += np.bincount(base + nb + 1, minlength=acc.size) * wt  # slot 0: label −1
    W = acc.reshape(h * w, K1)[:, 1:]
    norm = W.sum(axis=1, keepdims=True)
    W = np.divide(W, norm, out=np.zeros_like(W), where=norm > 0)
    W[lab[R:R + h, R:R + w].ravel() < 0] = 0.0
    return W


def blurred_distributions(
    labels: np.ndarray, spectra: np.ndarray, fwhm_px: float, truncate: float = 3.0
) -> np.ndarray:
    """Expected photon distribution of every pixel under the blur (reference, small images).

    ``d_blur(y, x) = Σ_k w_k d[labels(y+dy_k, x+dx_k)] / Σ_k w_k`` over the kernel entries that
    land on a valid (in-image, label ≥ 0) pixel; pixels labelled −1 get zeros.  This is the
    distribution :func:`blur_sources` samples from, written out (loop over kernel entries).

    Parameters
    ----------
    labels : int ndarray (h, w)
    spectra : ndarray (K, E)
        Cluster distributions (rows sum to 1).
    fwhm_px, truncate : float
        As in :func:`psf_kernel`.

    Returns
    -------
    ndarray float64 (h, w, E)
    """
    lab = np.asarray(labels)
    d = np.asarray(spectra, dtype=np.float64)
    h, w = lab.shape
    dy, dx, wt = psf_kernel(fwhm_px, truncate)
    R = psf_radius(fwhm_px, truncate)
    pad = np.pad(lab, R, constant_values=-1)
    acc = np.zeros((h, w, d.shape[1]))
    norm = np.zeros((h, w))
    for a, b, c in zip(dy, dx, wt, strict=True):
        nb = pad[R + a:R + a + h, R + b:R + b + w]
        ok = nb >= 0
        acc[ok] += c * d[nb[ok]]
        norm += c * ok
    valid = lab >= 0
    acc[valid] /= norm[valid][:, None]
    acc[~valid] = 0.0
    return acc


def overlap_labels(labels: da.Array, radius: int) -> da.Array:
    """Labels with a halo of ``radius`` pixels around every chunk (−1 beyond the image).

    Block ``(i, j)`` of the result is block ``(i, j)`` of ``labels`` extended by ``radius``
    pixels on each side, taken from the neighbouring blocks or, beyond the image, filled with
    −1.  Its chunks are ``labels``' chunks + ``2·radius``, so a block's blurred counts depend
    only on the labels, never on the chunking.

    Raises
    ------
    ConfigError
        When an interior chunk is narrower than ``radius`` (use larger chunks).
    """
    if radius <= 0:
        return labels
    R = int(radius)
    for ax, ch in zip(("y", "x"), labels.chunks, strict=True):
        if len(ch) > 2 and min(ch[1:-1]) < R:
            raise ConfigError(
                f"the beam-spot kernel radius ({R} px) exceeds a chunk along {ax} "
                f"({min(ch[1:-1])} px): use larger chunks"
            )
    padded = da.pad(labels, R, mode="constant", constant_values=-1)
    padded = padded.rechunk(tuple(
        (ch[0] + 2 * R,) if len(ch) == 1 else (ch[0] + R, *ch[1:-1], ch[-1] + R)
        for ch in labels.chunks
    ))
    return da.overlap.overlap(padded, depth={0: R, 1: R}, boundary={0: "none", 1: "none"})
