"""From cluster colours to pigment weights and photon-energy distributions (SPEC §2.3, paper Alg. 1).

For a cluster colour ``r`` and every pigment ``p`` of the library, ``α_p = similarity(r, c_p)``
(:func:`ganx_dask.color.similarity`, CIEDE2000 by default).

``mode="closest"`` (the default)
    Similarities use the CIEDE2000 lightness factor ``kL = 2`` (``lightness_factor``; the textile
    convention, CIE 116/142): in a photograph of a painting, shading, texture and varnish change a
    region's lightness far more than its hue and chroma, which identify the pigment.  Only the
    pigments whose colour is as good as indistinguishable from the best match take part:
    ``α_best − α_p ≤ margin`` (default 0.02, i.e. ΔE2000 ≤ 2 worse than the best — below the
    ≈ 2.3 just-noticeable difference), at most ``max_pigments`` of them (default 3, most similar
    first) and only those with ``α_p > threshold`` (the best always takes part).  Their weights
    fall linearly from the best to zero at the margin, ``w_p ∝ margin − (α_best − α_p)`` (the best
    gets the largest share; a pigment exactly ``margin`` worse gets none), so a cluster holds one
    to three pigments that its colour cannot tell apart instead of the whole library.
``mode="threshold"`` (the paper; alias ``"paper"``)
    Pigments with ``α_p > threshold`` contribute; the cluster's distribution is
    ``d = Σ α_p h_p / Σ α_p`` (each ``h_p`` sums to 1, so ``d`` does too).  When no pigment passes,
    the single most similar pigment is used with weight 1.  With the paper's threshold 0.2 (set for
    its nine-pigment database) every pigment within ΔE 80 passes: with the 47-pigment default
    library nearly every cluster mixes nearly every pigment.
``mode="nearest"``
    Weight 1 on the most similar pigment (clean, single-pigment labels).

The weights (normalised) are the cluster's ground-truth pigment abundances (rows sum to 1).
Ties in "most similar" go to the first pigment in library order.

Why ``closest`` is the default (measured on the bundled demo page, 7 clusters, 47 pigments):
``threshold`` 0.2 gives 46–47 pigments in every cluster, none above 5 % weight, and the sum
spectrum shows Ag, Cd, Sn, Sb and Ba lines; ``closest`` gives 1–3 pigments per cluster, each one a
colour match of the cluster (docs/pigments.md, "Matching"; ``benchmarks/bench_matching.py``).
"""

from __future__ import annotations

import numbers

import numpy as np
import xarray as xr

from .color import SIMILARITY_METHODS, similarity
from .errors import ConfigError, PigmentError

__all__ = ["MATCH_MODES", "pigment_weights", "cluster_distributions", "canonical_mode",
           "lightness_factor_for"]

#: Matching modes (``"paper"`` is accepted as an alias of ``"threshold"``).
MATCH_MODES = ("closest", "threshold", "nearest")
_ALIASES = {"paper": "threshold"}


def canonical_mode(mode: str) -> str:
    """The matching mode a name stands for (``"paper"`` → ``"threshold"``); others unchanged."""
    return _ALIASES.get(mode, mode) if isinstance(mode, str) else mode


def lightness_factor_for(mode: str, lightness_factor: float | None = None) -> float:
    """The CIEDE2000 lightness factor kL used: the one given, else 2 for ``closest``, 1 otherwise
    (the paper's ``threshold`` and ``nearest`` keep the reference condition)."""
    if lightness_factor is not None:
        return lightness_factor
    return 2.0 if canonical_mode(mode) == "closest" else 1.0


def _check_params(threshold, similarity_method: str, mode: str, margin: float = 0.02,
                  max_pigments: int = 3, lightness_factor: float | None = None) -> None:
    """Validate the matching parameters (ConfigError naming the parameter)."""
    if canonical_mode(mode) not in MATCH_MODES:
        raise ConfigError(f"unknown matching mode {mode!r}; choose one of "
                          f"{', '.join((*MATCH_MODES, *_ALIASES))}")
    if (isinstance(margin, (bool, np.bool_)) or not isinstance(margin, numbers.Real)
            or not (0.0 < margin <= 1.0)):
        raise ConfigError(f"margin must be a similarity difference in (0, 1], got {margin!r}")
    if (isinstance(max_pigments, (bool, np.bool_)) or not isinstance(max_pigments, numbers.Integral)
            or max_pigments < 1):
        raise ConfigError(f"max_pigments must be an integer >= 1, got {max_pigments!r}")
    if lightness_factor is not None and (
            isinstance(lightness_factor, (bool, np.bool_))
            or not isinstance(lightness_factor, numbers.Real)
            or not (0.0 < lightness_factor < np.inf)):
        raise ConfigError(f"lightness_factor must be a number > 0, got {lightness_factor!r}")
    if similarity_method not in SIMILARITY_METHODS:
        raise ConfigError(
            f"unknown similarity {similarity_method!r}; "
            f"choose one of {', '.join(SIMILARITY_METHODS)}"
        )
    if (isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, numbers.Real)
            or not (0.0 <= threshold <= 1.0)):  # NaN fails the comparison
        raise ConfigError(f"threshold must be a similarity in [0, 1], got {threshold!r}")


def pigment_weights(
    cluster_rgb: np.ndarray,
    library_rgb: np.ndarray,
    *,
    threshold: float = 0.2,
    similarity_method: str = "ciede2000",
    mode: str = "closest",
    margin: float = 0.02,
    max_pigments: int = 3,
    lightness_factor: float | None = None,
) -> np.ndarray:
    """Abundance weights of each pigment in each cluster (pure numpy).

    Parameters
    ----------
    cluster_rgb : numpy.ndarray
        ``(K, 3)`` 8-bit sRGB cluster colours.
    library_rgb : numpy.ndarray
        ``(P, 3)`` 8-bit sRGB pigment colours.
    threshold : float
        Similarity threshold in [0, 1] (modes ``threshold`` and ``closest``); strictly greater
        passes.
    similarity_method : str
        One of :data:`ganx_dask.color.SIMILARITY_METHODS`.
    mode : {"closest", "threshold" (alias "paper"), "nearest"}
    margin : float
        ``closest``: largest similarity deficit to the best match (dimensionless; 0.02 = ΔE2000 2).
    max_pigments : int
        ``closest``: most pigments per cluster.
    lightness_factor : float or None
        CIEDE2000/CIE94 parametric lightness factor kL (see :func:`ganx_dask.color.delta_e`);
        ``None``: 2 for ``closest``, 1 for the other modes.

    Returns
    -------
    numpy.ndarray
        ``(K, P)`` float64, non-negative, rows sum to 1.
    """
    _check_params(threshold, similarity_method, mode, margin, max_pigments, lightness_factor)
    mode = canonical_mode(mode)
    k_l = lightness_factor_for(mode, lightness_factor)
    c = np.asarray(cluster_rgb).reshape(-1, 3)
    lib = np.asarray(library_rgb).reshape(-1, 3)
    if lib.shape[0] == 0:
        raise PigmentError("the pigment library is empty")
    sim = similarity(c[:, None, :], lib[None, :, :], similarity_method, k_l)  # (K, P)
    best = np.argmax(sim, axis=1)
    one_hot = np.zeros_like(sim)
    one_hot[np.arange(sim.shape[0]), best] = 1.0
    if mode == "nearest":
        return one_hot
    if mode == "closest":
        return _closest_weights(sim, best, threshold, margin, max_pigments)
    w = np.where(sim > threshold, sim, 0.0)
    tot = w.sum(axis=1, keepdims=True)
    none = tot[:, 0] <= 0
    w = np.where(none[:, None], one_hot, w / np.where(tot > 0, tot, 1.0))
    return w


def _closest_weights(sim: np.ndarray, best: np.ndarray, threshold: float, margin: float,
                     max_pigments: int) -> np.ndarray:
    """``mode="closest"`` weights from a ``(K, P)`` similarity matrix (rows sum to 1)."""
    k = np.arange(sim.shape[0])
    deficit = sim[k, best][:, None] - sim                       # ≥ 0, 0 at the best
    w = np.where((deficit < margin) & (sim > threshold), margin - deficit, 0.0)
    # keep the max_pigments most similar (stable: ties go to library order, as for the best)
    order = np.argsort(-sim, axis=1, kind="stable")
    drop = order[:, max_pigments:]
    w[k[:, None], drop] = 0.0
    w[k, best] = margin                                         # the best always takes part
    return w / w.sum(axis=1, keepdims=True)


def cluster_distributions(
    cluster_rgb,
    library_rgb,
    spectra,
    *,
    threshold: float = 0.2,
    similarity: str = "ciede2000",
    mode: str = "closest",
    margin: float = 0.02,
    max_pigments: int = 3,
    lightness_factor: float | None = None,
) -> tuple[xr.DataArray, xr.DataArray]:
    """Ground-truth abundances and photon-energy distribution of every cluster.

    Parameters
    ----------
    cluster_rgb : array-like or xarray.DataArray
        ``(cluster, channel)`` 8-bit sRGB.
    library_rgb : array-like or xarray.DataArray
        ``(pigment, channel)`` 8-bit sRGB (e.g. ``PigmentLibrary.rgb``).
    spectra : array-like or xarray.DataArray
        ``(pigment, energy)`` pigment spectra, rows summing to 1 (e.g.
        ``PigmentLibrary.spectra(energy)``); its ``pigment``/``energy`` coords are reused.
    threshold : float
        Similarity threshold in [0, 1] (paper: 0.2 and 0.6).
    similarity : str
        ``"ciede2000"`` (default), ``"cie94"``, ``"cie76"`` or ``"cosine"``.
    mode : {"closest", "threshold" (alias "paper"), "nearest"}
        See the module docstring.
    margin, max_pigments, lightness_factor
        See :func:`pigment_weights`.

    Returns
    -------
    abundance : xarray.DataArray
        ``(cluster, pigment)`` float64, rows sum to 1.
    spectrum : xarray.DataArray
        ``(cluster, energy)`` float64, rows sum to 1: ``Σ_p abundance[k, p] · h_p``.
    """
    h = spectra if isinstance(spectra, xr.DataArray) else xr.DataArray(
        np.asarray(spectra, dtype=np.float64), dims=("pigment", "energy"))
    h = h.transpose("pigment", "energy")
    hv = np.asarray(h.values, dtype=np.float64)
    lib = np.asarray(library_rgb.values if isinstance(library_rgb, xr.DataArray) else library_rgb)
    crgb = np.asarray(cluster_rgb.values if isinstance(cluster_rgb, xr.DataArray) else cluster_rgb)
    if lib.reshape(-1, 3).shape[0] != hv.shape[0]:
        raise PigmentError(
            f"library has {lib.reshape(-1, 3).shape[0]} colours but {hv.shape[0]} spectra"
        )
    if not np.all(np.isfinite(hv)) or np.any(hv < 0):
        raise PigmentError("pigment spectra must be finite and non-negative")
    w = pigment_weights(crgb, lib, threshold=threshold, similarity_method=similarity, mode=mode,
                        margin=margin, max_pigments=max_pigments,
                        lightness_factor=lightness_factor)
    mode = canonical_mode(mode)
    d = w @ hv
    tot = d.sum(axis=1, keepdims=True)
    if np.any(tot <= 0):
        empty = [str(n) for n in np.asarray(h.coords["pigment"].values if "pigment" in h.coords
                                            else np.arange(hv.shape[0]))[hv.sum(axis=1) <= 0]]
        raise PigmentError(
            "a cluster's distribution has no counts on this energy axis: its matched pigments "
            f"have empty spectra ({', '.join(empty)})"
        )
    d /= tot
    k = np.arange(w.shape[0])
    pig_coord = h.coords["pigment"] if "pigment" in h.coords else np.arange(hv.shape[0])
    abundance = xr.DataArray(
        w, dims=("cluster", "pigment"), coords={"cluster": k, "pigment": pig_coord},
        name="abundance",
        attrs={"long_name": "ground-truth pigment abundance (alpha_p / sum alpha)", "units": "1",
               "similarity": similarity, "threshold": float(threshold), "mode": mode,
               "lightness_factor": float(lightness_factor_for(mode, lightness_factor)),
               **({"margin": float(margin), "max_pigments": int(max_pigments)}
                  if mode == "closest" else {})},
    )
    coords = {"cluster": k}
    if "energy" in h.coords:
        coords["energy"] = h.coords["energy"]
    spectrum = xr.DataArray(
        d, dims=("cluster", "energy"), coords=coords, name="spectrum",
        attrs={"long_name": "cluster photon-energy distribution (probability per channel)",
               "units": "1"},
    )
    return abundance, spectrum
