"""Colour science for pigment matching: sRGB → CIELAB, colour differences and similarity.

Conversions and colour differences are scikit-image's (``skimage.color``): sRGB (IEC 61966-2-1)
→ CIELAB under illuminant D65, 2° observer; CIEDE2000, CIE94 (graphic-arts weights) and CIE76.
The similarity of the ganX paper (eq. 4) is ``(100 − ΔE) / 100`` clipped at 0, so identical
colours have similarity 1 and colours ΔE ≥ 100 apart have 0.  (ganx 0.0.2 divides by 101
instead; we follow the paper.)  ``"cosine"`` is the cosine similarity of the RGB vectors.
"""

from __future__ import annotations

import numpy as np
from skimage import color as skcolor

from .errors import ConfigError

__all__ = ["SIMILARITY_METHODS", "DELTA_E_METHODS", "rgb_to_lab", "delta_e", "similarity"]

#: Colour-difference formulas accepted by :func:`delta_e`.
DELTA_E_METHODS = ("ciede2000", "cie94", "cie76")
#: Methods accepted by :func:`similarity`.
SIMILARITY_METHODS = DELTA_E_METHODS + ("cosine",)


def _as_rgb8(rgb) -> np.ndarray:
    a = np.asarray(rgb)
    if a.shape[-1:] != (3,):
        raise ValueError(f"RGB colours need a last axis of length 3, got shape {a.shape}")
    return a


def rgb_to_lab(rgb) -> np.ndarray:
    """Convert 8-bit sRGB colours to CIELAB (D65, 2° observer).

    Parameters
    ----------
    rgb : array-like, shape ``(..., 3)``
        8-bit sRGB values (0–255, any integer or float dtype holding 0–255).

    Returns
    -------
    numpy.ndarray
        ``(..., 3)`` float64 L* (0–100), a*, b*.
    """
    a = _as_rgb8(rgb).astype(np.float64) / 255.0
    return skcolor.rgb2lab(a, illuminant="D65", observer="2")


def delta_e(lab1, lab2, method: str = "ciede2000", k_l: float = 1.0) -> np.ndarray:
    """Colour difference ΔE between CIELAB colours (broadcasting over leading axes).

    Parameters
    ----------
    lab1, lab2 : array-like, shape ``(..., 3)``
        CIELAB colours (L*, a*, b*).  For CIE94, ``lab1`` is the reference.
    method : {"ciede2000", "cie94", "cie76"}
        CIEDE2000 (kC = kH = 1), CIE94 (graphic arts: k1 = 0.045, k2 = 0.015) or CIE76
        (Euclidean distance in CIELAB).
    k_l : float
        Parametric lightness factor kL (dimensionless, > 0): the lightness difference counts
        ``1/k_l`` as much.  1 is the reference condition; 2 is the textile convention (CIE
        116/142), for surfaces whose texture and lighting change lightness more than hue.

    Returns
    -------
    numpy.ndarray
        ΔE (CIELAB units), the broadcast shape without the last axis.
    """
    l1, l2 = np.broadcast_arrays(np.asarray(lab1, float), np.asarray(lab2, float))
    if method == "ciede2000":
        return skcolor.deltaE_ciede2000(l1, l2, kL=k_l)
    if method == "cie94":
        return skcolor.deltaE_ciede94(l1, l2, kL=k_l)
    if method == "cie76":
        scale = np.array([1.0 / k_l, 1.0, 1.0])
        return skcolor.deltaE_cie76(l1 * scale, l2 * scale)
    raise ConfigError(
        f"unknown colour-difference method {method!r}; choose one of {', '.join(DELTA_E_METHODS)}"
    )


def similarity(rgb_a, rgb_b, method: str = "ciede2000", k_l: float = 1.0) -> np.ndarray:
    """Colour similarity in [0, 1] of 8-bit sRGB colours (broadcasting over leading axes).

    Parameters
    ----------
    rgb_a, rgb_b : array-like, shape ``(..., 3)``
        8-bit sRGB colours; ``rgb_a`` is the reference for the asymmetric CIE94.
    method : {"ciede2000", "cie94", "cie76", "cosine"}
        ΔE methods give ``max(0, (100 − ΔE) / 100)`` (ganX paper eq. 4).  ``"cosine"`` is
        ``a·b / (|a| |b|)`` of the RGB vectors; black (0, 0, 0) has no direction, so its cosine
        similarity is 1 with black and 0 with any other colour.
    k_l : float
        Parametric lightness factor of the ΔE methods (see :func:`delta_e`); no effect on
        ``"cosine"``.

    Returns
    -------
    numpy.ndarray
        Similarity (dimensionless, 1 = identical), the broadcast shape without the last axis.
    """
    if method not in SIMILARITY_METHODS:
        raise ConfigError(
            f"unknown similarity {method!r}; choose one of {', '.join(SIMILARITY_METHODS)}"
        )
    a = _as_rgb8(rgb_a).astype(np.float64)
    b = _as_rgb8(rgb_b).astype(np.float64)
    if method == "cosine":
        a, b = np.broadcast_arrays(a, b)
        na = np.linalg.norm(a, axis=-1)
        nb = np.linalg.norm(b, axis=-1)
        dot = np.sum(a * b, axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = dot / (na * nb)
        both_black = (na == 0) & (nb == 0)
        cos = np.where(both_black, 1.0, np.where((na == 0) | (nb == 0), 0.0, cos))
        return np.clip(cos, 0.0, 1.0)
    de = delta_e(rgb_to_lab(a), rgb_to_lab(b), method, k_l)
    return np.clip((100.0 - de) / 100.0, 0.0, 1.0)
