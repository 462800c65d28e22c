"""From cluster colours to pigment weights and photon-energy distributions (SPEC §2.3, paper Alg. 1).

For a cluster colour ``r`` and every pigment ``p`` of the library, ``α_p = similarity(r, c_p)``
(:func:`ganx_dask.color.similarity`, CIEDE2000 by default).

``mode="threshold"`` (the paper)
    Pigments with ``α_p > threshold`` contribute; the cluster's distribution is
    ``d = Σ α_p h_p / Σ α_p`` (each ``h_p`` sums to 1, so ``d`` does too).  When no pigment passes,
    the single most similar pigment is used with weight 1.
``mode="nearest"``
    Weight 1 on the most similar pigment (clean, single-pigment labels).

The weights ``α_p / Σ α`` are the cluster's ground-truth pigment abundances (rows sum to 1).
Ties in "most similar" go to the first pigment in library order.
"""

from __future__ import annotations

import numbers

import numpy as np
import xarray as xr

from .color import SIMILARITY_METHODS, similarity
from .errors import ConfigError, PigmentError

__all__ = ["MATCH_MODES", "pigment_weights", "cluster_distributions"]

#: Matching modes.
MATCH_MODES = ("threshold", "nearest")


def _check_params(threshold, similarity_method: str, mode: str) -> None:
    """Validate the matching parameters (ConfigError naming the parameter)."""
    if mode not in MATCH_MODES:
        raise ConfigError(f"unknown matching mode {mode!r}; choose one of {', '.join(MATCH_MODES)}")
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
    mode: str = "threshold",
) -> np.ndarray:
    """Abundance weights of each pigment in each cluster (pure numpy).

    Parameters
    ----------
    cluster_rgb : numpy.ndarray
        ``(K, 3)`` 8-bit sRGB cluster colours.
    library_rgb : numpy.ndarray
        ``(P, 3)`` 8-bit sRGB pigment colours.
    threshold : float
        Similarity threshold in [0, 1] (``mode="threshold"``); strictly greater passes.
    similarity_method : str
        One of :data:`ganx_dask.color.SIMILARITY_METHODS`.
    mode : {"threshold", "nearest"}

    Returns
    -------
    numpy.ndarray
        ``(K, P)`` float64, non-negative, rows sum to 1.
    """
    _check_params(threshold, similarity_method, mode)
    c = np.asarray(cluster_rgb).reshape(-1, 3)
    lib = np.asarray(library_rgb).reshape(-1, 3)
    if lib.shape[0] == 0:
        raise PigmentError("the pigment library is empty")
    sim = similarity(c[:, None, :], lib[None, :, :], similarity_method)  # (K, P)
    best = np.argmax(sim, axis=1)
    one_hot = np.zeros_like(sim)
    one_hot[np.arange(sim.shape[0]), best] = 1.0
    if mode == "nearest":
        return one_hot
    w = np.where(sim > threshold, sim, 0.0)
    tot = w.sum(axis=1, keepdims=True)
    none = tot[:, 0] <= 0
    w = np.where(none[:, None], one_hot, w / np.where(tot > 0, tot, 1.0))
    return w


def cluster_distributions(
    cluster_rgb,
    library_rgb,
    spectra,
    *,
    threshold: float = 0.2,
    similarity: str = "ciede2000",
    mode: str = "threshold",
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
    mode : {"threshold", "nearest"}

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
    w = pigment_weights(crgb, lib, threshold=threshold, similarity_method=similarity, mode=mode)
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
               "similarity": similarity, "threshold": float(threshold), "mode": mode},
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
