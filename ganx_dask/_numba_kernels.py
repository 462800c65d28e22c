"""Optional numba kernels (extra ``[fast]``) for :mod:`ganx_dask.sampling`.

They consume exactly the uniforms the numpy kernels consume (drawn by numpy from the same tile
generator) and apply the same float64 operations, so cubes are bit-identical with and without
numba.  Only the per-photon alias gather and the count are fused here: no temporaries, no
``bincount`` over a fresh array.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["alias_count"]


@numba.njit(cache=True, nogil=True)
def alias_count(
    u: np.ndarray, lab: np.ndarray, tot: np.ndarray, ptab: np.ndarray, atab: np.ndarray,
    out: np.ndarray,
) -> None:
    """Add the photons of a batch of pixels to ``out`` (in place).

    Parameters
    ----------
    u : ndarray (m,) float64
        One uniform in [0, 1) per photon, pixels in row-major order (``m = tot.sum()``).
    lab : ndarray (r, w) int64
        Cluster of each pixel (−1 pixels must have ``tot == 0``).
    tot : ndarray (r, w) int64
        Photons of each pixel, counts.
    ptab, atab : ndarray (K, E + 1)
        Padded alias tables (``sampling._padded_tables``): thresholds and absolute alias indices.
    out : ndarray (r, w, E) unsigned int
        Zeroed counts, incremented in place.
    """
    E = out.shape[2]
    W = E + 1
    pf = ptab.ravel()
    af = atab.ravel()
    i = 0
    for r in range(lab.shape[0]):
        for c in range(lab.shape[1]):
            n = tot[r, c]
            if n == 0:
                continue
            kw = lab[r, c] * W
            row = out[r, c]
            for _ in range(n):
                x = u[i] * E
                j = np.intp(x)
                f = x - j
                a = kw + j
                al = af[a]  # load both outcomes: a select instead of an unpredictable branch
                a = al if f >= pf[a] else a
                row[a - kw] += 1
                i += 1
