"""Reading images into chunked ``DataArray(y, x, channel)`` of 8-bit sRGB.

Accepted sources:

* a path to a PNG, JPEG, TIFF (8/16-bit, stripped or tiled, BigTIFF, planar or interleaved;
  RGB, grayscale, palette, CMYK or min-is-white, with or without alpha) or any other format
  Pillow reads (palette, CMYK, bilevel, 16-bit gray… are converted to RGB).  TIFFs are read **lazily, chunk by chunk** through tifffile's
  Zarr interface (``tifffile.imread(path, aszarr=True)``): building the array reads only the
  header, and each dask chunk decodes only the TIFF tiles it overlaps (a stripped TIFF is read in
  full-width bands of ``chunks`` rows, so each strip is decoded once).  Other formats are
  decoded whole by Pillow (they cannot be read partially) and then chunked.
* a ``numpy`` array ``(y, x)``, ``(y, x, 1|2|3|4)`` of uint8, uint16, other integers in 0–255,
  bool, or floats in [0, 1];
* an ``xarray.DataArray`` with dims ``(y, x)`` or ``(y, x, channel)`` (any order), numpy- or
  dask-backed.

Normalisation: grayscale is expanded to RGB (with a warning); an alpha channel is dropped (with a
warning) and kept as an *opaque mask* (``alpha > 0``) so that fully transparent pixels get label −1
and no counts; 16-bit values are scaled to 8-bit by ``round(v · 255 / 65535)``; floats by
``round(v · 255)``; CMYK as Pillow does (``R = max − (C + K)``, clipped).

Bad input raises :class:`~ganx_dask.errors.ImageError` naming the file: missing, a directory,
unreadable, empty, not an image, truncated, no pixels, a stack or unsupported TIFF colour space
(CIELAB…), 32-bit float files outside [0, 1].  Pillow's decompression-bomb limit is lifted for
the file the user names (large scans are legitimate); above 100 Mpx a non-TIFF image warns that
it is decoded whole.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr

from .attrs import RGB8, pixel_coord_attrs
from .errors import ImageError
from .scheduling import compute

__all__ = ["read_image", "file_sha256", "group_name", "IMAGE_SUFFIXES", "TIFF_SUFFIXES"]

#: File suffixes read lazily with tifffile.
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".ome.tif")
#: File name endings treated as images when scanning a folder (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".btf", ".bmp", ".gif", ".webp")
#: Above this many pixels a non-TIFF image (decoded whole by Pillow) triggers a warning.
_BIG_PIXELS = 100_000_000
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


# ---------------------------------------------------------------------------------------------
# lazy TIFF access
class _TiffArray:
    """Array-like view of one TIFF series/level; every ``[...]`` opens the file and reads only the
    tiles/strips it needs.  Holds just the path, so it pickles for distributed workers."""

    def __init__(self, path: str, series: int = 0, level: int = 0) -> None:
        import tifffile

        self.path, self.series, self.level = path, series, level
        with tifffile.TiffFile(path) as tf:
            lv = tf.series[series].levels[level]
            self.shape = tuple(int(s) for s in lv.shape)
            self.dtype = np.dtype(lv.dtype)
            self.axes = str(lv.axes)
            page = lv.pages[0] if len(lv.pages) else None
            self.tiled = bool(page is not None and page.is_tiled)
            self.colormap = None
            self.photometric = None if page is None else page.photometric
            self.inkset = 1  # TIFF default: CMYK
            if page is not None and page.photometric == tifffile.PHOTOMETRIC.PALETTE:
                self.colormap = np.asarray(page.colormap)  # (3, 2**bits)
            if page is not None and "InkSet" in page.tags:
                self.inkset = int(page.tags["InkSet"].value)
        self.ndim = len(self.shape)

    def __getitem__(self, key) -> np.ndarray:
        import tifffile
        import zarr

        store = tifffile.imread(self.path, aszarr=True, series=self.series, level=self.level)
        try:
            return np.asarray(zarr.open(store, mode="r")[key])
        finally:
            store.close()


def _from_numpy(a: np.ndarray, chunks: int) -> da.Array:
    """Chunk an in-memory image spatially (each task holds only its block)."""
    return da.from_array(a, chunks=(chunks, chunks)[: a.ndim] + (-1,) * max(a.ndim - 2, 0))


def _is_tiff(path: Path) -> bool:
    if path.name.lower().endswith(TIFF_SUFFIXES):
        return True
    with open(path, "rb") as fh:
        return fh.read(4) in _TIFF_MAGIC


def _read_tiff(path: Path, chunks: int) -> tuple[da.Array, str]:
    try:
        arr = _TiffArray(str(path))
    except Exception as exc:  # tifffile raises many types on malformed files
        raise ImageError(f"{path}: not a readable TIFF image ({exc})") from None
    if 0 in arr.shape:
        raise ImageError(f"{path}: image has no pixels (shape {arr.shape})")
    axes = arr.axes
    if axes in ("YX", "YXS"):
        order = None
    elif axes in ("SYX", "CYX"):
        order = (1, 2, 0)
    else:
        raise ImageError(
            f"{path}: unsupported TIFF layout (axes {axes!r}, shape {arr.shape}); "
            "expected a single 2-D image, grayscale or RGB(A)"
        )
    # A strip spans the full width: a (chunks x chunks) read of a stripped TIFF decodes whole
    # strips, so each strip would be decoded once per column of chunks (width/chunks times).
    # Stripped files are read in full-width bands instead (split into chunks by _normalise).
    cx = chunks if arr.tiled else -1
    # meta given: dask would otherwise open the file once more to read an empty slice
    kw = dict(asarray=True, fancy=False, name=f"tiff-{_token(path)}",
              meta=np.empty((0,) * arr.ndim, arr.dtype))
    if order is None:
        c = (chunks, cx) + ((arr.shape[2],) if arr.ndim == 3 else ())
        d = da.from_array(arr, chunks=c, **kw)
    else:
        d = da.from_array(arr, chunks=(arr.shape[0], chunks, cx), **kw).transpose(order)
    d, info = _tiff_photometric(d, arr, path)
    if info:
        return d, info
    if arr.colormap is not None and d.ndim == 2:  # palette image: look the colours up lazily
        cmap = np.ascontiguousarray(arr.colormap.T)  # (2**bits, 3)
        d = d.map_blocks(lambda b: cmap[b], new_axis=2, chunks=d.chunks + ((3,),),
                         dtype=cmap.dtype)
        return d, f"TIFF palette {cmap.dtype}"
    return d, f"TIFF {axes} {arr.dtype}"


def _cmyk_to_rgb(b: np.ndarray) -> np.ndarray:
    """CMYK(+alpha) block → RGB(+alpha), Pillow's formula ``R = max − (C + K)`` clipped at 0."""
    top = np.iinfo(b.dtype).max if b.dtype.kind in "iu" else 1.0
    w = b.astype(np.float64)
    rgb = np.clip(top - (w[..., :3] + w[..., 3:4]), 0, top).astype(b.dtype)
    return np.concatenate([rgb, b[..., 4:5]], axis=-1)


def _tiff_photometric(d: da.Array, arr: _TiffArray, path: Path) -> tuple[da.Array, str]:
    """Turn CMYK and min-is-white TIFFs into RGB / gray (lazily); reject colour spaces we do not
    convert.  Returns ``(d, info)``; ``info`` is empty when nothing was done."""
    import tifffile

    pm = tifffile.PHOTOMETRIC
    photometric = arr.photometric
    if photometric is None or arr.colormap is not None:
        return d, ""
    if photometric == pm.MINISWHITE:
        if d.dtype == np.bool_:
            return ~d, f"TIFF min-is-white {arr.dtype}"
        if d.dtype.kind == "u":
            top = np.iinfo(d.dtype).max
            return d.map_blocks(lambda b: (top - b).astype(b.dtype), dtype=d.dtype), \
                f"TIFF min-is-white {arr.dtype}"
        raise ImageError(f"{path}: min-is-white TIFF with {arr.dtype} samples is not supported")
    if photometric == pm.SEPARATED:
        if arr.inkset != 1 or d.ndim != 3 or d.shape[2] not in (4, 5):
            raise ImageError(
                f"{path}: separated (ink) TIFF with {d.shape[2] if d.ndim == 3 else 1} inks "
                f"(InkSet {arr.inkset}) is not supported; only CMYK(+alpha) is converted to RGB"
            )
        nc = d.shape[2] - 1
        out = d.map_blocks(_cmyk_to_rgb, dtype=d.dtype,
                           chunks=d.chunks[:2] + ((nc,),))
        return out, f"TIFF CMYK {arr.dtype}"
    if photometric not in (pm.MINISBLACK, pm.RGB, pm.PALETTE, pm.YCBCR):
        raise ImageError(
            f"{path}: TIFF colour space {photometric.name} is not supported; save the image as "
            "RGB or grayscale"
        )
    return d, ""


def _token(path: Path) -> str:
    from dask.base import tokenize

    st = path.stat()
    return tokenize(str(path.resolve()), st.st_size, st.st_mtime_ns)


def _read_pillow(path: Path) -> tuple[np.ndarray, str]:
    from PIL import Image, ImageOps, UnidentifiedImageError

    limit = Image.MAX_IMAGE_PIXELS
    try:
        # the user asked for this file: no decompression-bomb limit (huge scans are legitimate)
        Image.MAX_IMAGE_PIXELS = None
        with Image.open(path) as im:
            if im.width * im.height > _BIG_PIXELS:
                warnings.warn(
                    f"{path}: {im.width}x{im.height} px decoded whole into memory; convert it "
                    "to a tiled TIFF to read it lazily chunk by chunk",
                    UserWarning, stacklevel=4,
                )
            im = ImageOps.exif_transpose(im)  # honour the EXIF orientation of photographs
            mode = im.mode
            if mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif mode in ("1", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
                im = im.convert("RGB")
            elif mode == "PA":
                im = im.convert("RGBA")
            elif mode == "F":
                raise ImageError(f"{path}: 32-bit float images are not supported; save 8/16-bit")
            a = np.asarray(im)
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image (cannot identify the file format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageError):
            raise
        raise ImageError(f"{path}: cannot decode image ({exc})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    if a.dtype.kind in "iu" and a.dtype not in (np.uint8, np.uint16):
        # Pillow's 'I'/'I;16' modes: 16-bit grayscale held in a wider integer
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ImageError(f"{path}: integer image outside 0-65535 (mode {mode})")
        a = a.astype(np.uint16)
    return a, f"{mode} {a.dtype}"


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int, inode: int) -> str:  # noqa: ARG001
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's content, e.g. an input image for provenance and resume checks.

    The result is cached per process on (resolved path, size, modification time, inode), so a
    large image used several times (a batch manifest, then ``generate()``; parameter sweeps) is
    read for hashing once.

    Parameters
    ----------
    path : str or os.PathLike
        The file.

    Returns
    -------
    str
        64 hex digits.
    """
    p = Path(path).resolve()
    st = p.stat()
    return _sha256_cached(str(p), st.st_size, st.st_mtime_ns, st.st_ino)


# ---------------------------------------------------------------------------------------------
# normalisation
def _to_uint8(d: da.Array, where: str) -> da.Array:
    if not d.dtype.isnative:  # e.g. big-endian '>u2' from h5py/FITS arrays: same values
        d = d.astype(d.dtype.newbyteorder("="))
    dt = d.dtype
    if dt == np.uint8:
        return d
    if dt == np.uint16:
        return d.map_blocks(
            lambda b: ((b.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8),
            dtype=np.uint8,
        )
    if dt == np.bool_:
        return d.astype(np.uint8) * np.uint8(255)
    if dt.kind == "f":
        lo, hi = compute(da.min(d), da.max(d))
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ImageError(f"{where}: float image contains NaN or infinite values")
        if lo < 0 or hi > 1:
            raise ImageError(
                f"{where}: float image values must lie in [0, 1], got {lo:g}..{hi:g}"
            )
        return d.map_blocks(lambda b: np.rint(b * 255.0).astype(np.uint8), dtype=np.uint8)
    if dt.kind in "iu":
        lo, hi = compute(da.min(d), da.max(d))
        if lo < 0 or hi > 255:
            raise ImageError(
                f"{where}: integer image of dtype {dt} must hold 8-bit values 0-255, "
                f"got {lo}..{hi} (use uint16 for 16-bit data)"
            )
        return d.astype(np.uint8)
    raise ImageError(
        f"{where}: unsupported pixel dtype {dt}; expected uint8, uint16 or float in [0, 1]"
    )


def _normalise(d: da.Array, where: str, chunks: int) -> tuple[da.Array, da.Array | None]:
    if d.ndim not in (2, 3) or (d.ndim == 3 and d.shape[2] not in (1, 2, 3, 4)):
        raise ImageError(
            f"{where}: expected an image of shape (y, x) or (y, x, 1|2|3|4 channels), "
            f"got shape {d.shape}"
        )
    if d.size == 0 or 0 in d.shape:
        raise ImageError(f"{where}: image has no pixels (shape {d.shape})")
    if d.ndim == 2:
        d = d[:, :, None]
    nchan = d.shape[2]
    alpha = None
    if nchan in (2, 4):
        warnings.warn(
            f"{where}: dropping the alpha channel; fully transparent pixels get label -1 "
            "and no counts",
            UserWarning,
            stacklevel=3,
        )
        alpha = d[:, :, nchan - 1]
        d = d[:, :, : nchan - 1]
    if d.shape[2] == 1:
        warnings.warn(f"{where}: grayscale image expanded to RGB", UserWarning, stacklevel=3)
        d = da.concatenate([d, d, d], axis=2)
    rgb = _to_uint8(d, where).rechunk((chunks, chunks, 3))
    opaque = None
    if alpha is not None:
        opaque = (alpha > 0).rechunk((chunks, chunks))
    return rgb, opaque


def _wrap(rgb: da.Array, opaque: da.Array | None, source: str, info: str):
    ny, nx = rgb.shape[:2]
    coords = {
        "y": xr.DataArray(np.arange(ny), dims="y", attrs=pixel_coord_attrs("y")),
        "x": xr.DataArray(np.arange(nx), dims="x", attrs=pixel_coord_attrs("x")),
    }
    img = xr.DataArray(
        rgb,
        dims=("y", "x", "channel"),
        coords={**coords, "channel": ["R", "G", "B"]},
        name="rgb",
        attrs={"long_name": "input image (8-bit sRGB)", **RGB8, "source": source,
               "source_format": info},
    )
    mask = None
    if opaque is not None:
        mask = xr.DataArray(opaque, dims=("y", "x"), coords=coords, name="opaque",
                            attrs={"long_name": "alpha > 0 (pixel receives counts)"})
    return img, mask


def read_image(
    source,
    *,
    chunks: int = 256,
    return_alpha: bool = False,
):
    """Read an image as a dask-backed ``DataArray(y, x, channel)`` of 8-bit sRGB.

    Parameters
    ----------
    source : str, os.PathLike, numpy.ndarray or xarray.DataArray
        Image file (PNG, JPEG, TIFF/BigTIFF, …) or array (see the module docstring).
    chunks : int
        Chunk edge in pixels; the result has dask chunks ``(chunks, chunks, 3)``.
    return_alpha : bool
        Also return the opaque mask.

    Returns
    -------
    xarray.DataArray
        Dims ``(y, x, channel)``, uint8, coords ``y``/``x`` (pixel) and ``channel`` = R, G, B;
        ``attrs["source"]`` is the path (or ``"array"``).
    xarray.DataArray or None
        Only with ``return_alpha``: bool ``(y, x)`` mask, True where ``alpha > 0``; ``None`` when
        the image has no alpha channel.

    Raises
    ------
    ImageError
        Missing file, not an image, no pixels, wrong dims or dtype, floats outside [0, 1].
    """
    if isinstance(chunks, bool) or not isinstance(chunks, (int, np.integer)) or chunks < 1:
        raise ImageError(f"chunks must be a positive number of pixels, got {chunks!r}")
    chunks = int(chunks)
    if isinstance(source, xr.DataArray):
        dims = set(source.dims)
        if dims == {"y", "x"}:
            arr = source.transpose("y", "x")
        elif dims == {"y", "x", "channel"}:
            arr = source.transpose("y", "x", "channel")
        else:
            raise ImageError(
                f"image DataArray must have dims (y, x) or (y, x, channel), got {source.dims}"
            )
        where = str(source.attrs.get("source", "DataArray"))
        data = arr.data if isinstance(arr.data, da.Array) else _from_numpy(
            np.asarray(arr.data), chunks)
        rgb, opaque = _normalise(data, where, chunks)
        info = f"DataArray {arr.dtype}"
    elif isinstance(source, np.ndarray):
        where = "array"
        if source.dtype.kind not in "biuf":
            raise ImageError(f"array: unsupported pixel dtype {source.dtype}")
        rgb, opaque = _normalise(_from_numpy(source, chunks), where, chunks)
        info = f"ndarray {source.dtype}"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        where = str(path)
        if not path.exists():
            raise ImageError(f"image file not found: {path}")
        if not path.is_file():
            raise ImageError(f"{path}: not a file")
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: empty file, not an image")
        try:
            tiff = _is_tiff(path)
        except OSError as exc:  # e.g. no read permission
            raise ImageError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
        if tiff:
            d, info = _read_tiff(path, chunks)
        else:
            a, info = _read_pillow(path)
            if a.size == 0:
                raise ImageError(f"{path}: image has no pixels (shape {a.shape})")
            d = _from_numpy(a, chunks)
        rgb, opaque = _normalise(d, where, chunks)
    else:
        raise ImageError(
            f"cannot read an image from {type(source).__name__}; give a path, a numpy array "
            "or an xarray.DataArray"
        )
    img, mask = _wrap(rgb, opaque, where, info)
    return (img, mask) if return_alpha else img


_BAD_CHARS = re.compile(r"[^A-Za-z0-9_.\-]+")


def group_name(path: str | os.PathLike) -> str:
    """Zarr group name of an image: its file name without extension, other characters than
    ``A-Z a-z 0-9 _ . -`` replaced by ``_`` (``"St Mark (detail).tif"`` → ``"St_Mark_detail_"``)."""
    stem = Path(path).name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    else:
        stem = Path(stem).stem or stem
    name = _BAD_CHARS.sub("_", stem).strip(".") or "image"
    if name.startswith("__"):
        name = "img" + name
    return name
