"""PyTorch patch datasets over ganx-dask stores and batch datasets (extra ``[ml]``).

A *source* is a store written by :func:`ganx_dask.to_zarr` or a batch dataset
(:func:`ganx_dask.pipelines.run_batch`: one group per image, ``manifest`` in the root attrs),
given as a local path or any URL zarr opens (``s3://…`` with ``storage_options``).  Patches are
``patch × patch`` pixels with all energy channels; each sample is ``(counts, targets)``:

==============  ================================  =========  ======================================
name            tensor shape                      dtype      meaning
==============  ================================  =========  ======================================
counts          ``(E, p, p)`` (``layout="chw"``)  float32    photon counts after ``transforms``
                or ``(p, p, E)`` (``"hwc"``)                 (``E`` after rebinning); other
                                                             dtypes with ``dtype=``
``abundance``   ``(P, p, p)``                     float32    ground-truth pigment weights per pixel
                                                             (rows of ``abundance[labels]``; 0 at
                                                             ``labels == -1``); ``P`` pigments in
                                                             :attr:`PatchDataset.pigments` order
``labels``      ``(p, p)``                        int64      cluster id (−1: no counts)
``elements``    ``(n, p, p)``                     float32    raw counts in each element window of
                                                             ``elements=`` (``ds.xrf.element_map``)
``rgb``         ``(3, p, p)``                     uint8      the source image
==============  ================================  =========  ======================================

``targets="abundance"`` gives that tensor; a list of names gives a dict name → tensor (the default
``collate_fn`` stacks both).

Three ways to iterate, all seeded (every ``DataLoader`` worker opens its own zarr handles; a
dataset pickles without them):

* :meth:`PatchDataset.loader` (:class:`PatchLoader`): the stream's batches, read and converted
  by a pool of threads in this process into recycled batch buffers (no worker processes, no
  inter-process copy; the fastest on a few cores).

* :class:`PatchDataset` (map-style): ``DataLoader(ds, shuffle=True, num_workers=…)``.  Each item
  reads its patch; zarr decodes every chunk the patch touches, so with the default 256×256-pixel
  chunks a 64² patch decodes 16× its size — use a training layout (:func:`rechunk` to 64²).
* :meth:`PatchDataset.stream` (iterable): groups the patches by the zarr chunk they lie in, reads
  each chunk once, and shuffles within a buffer of chunks (chunk order shuffled per epoch, chunks
  dealt to workers): the same decode work at any chunk layout.  ``stream(batch_size=B)`` yields
  ready batches built in shared memory by the workers (``DataLoader(..., batch_size=None)``):
  no per-patch tensor and no collate copy.

Per patch, after decoding, the loader converts and transposes the counts in one pass straight
into the output tensor (plain Blosc/Zstd chunks are decompressed straight into a reused buffer
per worker or thread); ``dtype=torch.uint16``
skips the conversion and halves the bytes sent between processes (see docs/ml.md for measured
rates against the decode ceiling).

Randomness (patch positions, shuffling, Poisson thinning) comes from
``SeedSequence(seed, spawn_key=(8, …))`` keyed on the epoch, the image name and the patch
position, never on worker order: the same seed gives the same patches and noise with any number
of workers.
"""

from __future__ import annotations

import os
import weakref
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError, GanxError

__all__ = [
    "TARGETS",
    "PatchDataset",
    "PatchStream",
    "PatchLoader",
    "Rebin",
    "Log1p",
    "Normalise",
    "PoissonThin",
    "list_images",
    "split_images",
    "rechunk",
    "chunk_advice",
    "xbatcher_dataset",
]

#: Target names accepted by ``targets=``.
TARGETS = ("abundance", "labels", "elements", "rgb")

#: Spawn-key namespace of this module (see docs/architecture.md, determinism rule).
_NS = 8


def _torch():
    try:
        import torch
    except ImportError:
        raise GanxError("ganx_dask.ml needs PyTorch: pip install 'ganx-dask[ml]'") from None
    return torch


def _key(name: str) -> int:
    return zlib.crc32(name.encode())


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_NS, *key)))


def _is_local(source: str) -> bool:
    return "://" not in source


def _open_root(source: str, storage_options):
    import zarr

    try:
        return zarr.open_group(source, mode="r", storage_options=storage_options)
    except Exception as exc:  # noqa: BLE001 - any unreadable source is a user error here
        raise GanxError(f"{source}: not a ganx-dask store or batch dataset ({exc})") from None


def list_images(source: str | os.PathLike, *, storage_options: Mapping | None = None
                ) -> list[str | None]:
    """Groups of the images in ``source``: ``[None]`` for a single-image store, else the
    ``group`` of every ``complete`` manifest record of a batch dataset (sorted by name).

    Raises
    ------
    GanxError
        ``source`` is neither, or a batch dataset with no complete image.
    """
    src = os.fspath(source)
    root = _open_root(src, storage_options)
    if "counts" in root:
        return [None]
    manifest = root.attrs.get("manifest")
    if manifest is None:
        raise GanxError(f"{src}: no 'counts' array and no batch manifest: not a ganx-dask store "
                        "or batch dataset")
    out = sorted(rec["group"] for rec in manifest if rec.get("status") == "complete")
    if not out:
        raise GanxError(f"{src}: the batch dataset has no complete image")
    return out


def split_images(images: Sequence[str], val_fraction: float = 0.2, seed: int = 0
                 ) -> tuple[list[str], list[str]]:
    """Split image names into ``(train, val)`` by image (never patches of one image in both).

    Each name gets a seeded uniform key from ``(seed, name)``; the ``round(val_fraction · n)``
    names with the smallest keys are validation.  Adding images later keeps the existing
    relative order, and the split does not depend on the order of ``images``.
    """
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    names = sorted(set(images))
    keys = [_rng(seed, 3, _key(n)).random() for n in names]
    order = [n for _, n in sorted(zip(keys, names, strict=True))]
    n_val = int(round(val_fraction * len(names)))
    val = set(order[:n_val])
    return [n for n in names if n not in val], [n for n in names if n in val]


# --------------------------------------------------------------------------- transforms
class Rebin:
    """Sum ``factor`` adjacent channels (count-conserving; ``E`` must be divisible)."""

    def __init__(self, factor: int) -> None:
        if int(factor) != factor or factor < 1:
            raise ConfigError(f"Rebin factor must be a positive integer, got {factor!r}")
        self.factor = int(factor)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:  # noqa: ARG002
        h, w, e = x.shape
        if e % self.factor:
            raise ConfigError(f"Rebin({self.factor}) does not divide {e} channels")
        acc = np.uint32 if x.dtype.kind == "u" else x.dtype
        return x.reshape(h, w, e // self.factor, self.factor).sum(-1, dtype=acc)


class Log1p:
    """``log(1 + counts)`` (float32)."""

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:  # noqa: ARG002
        return np.log1p(x.astype(np.float32))


class Normalise:
    """Divide each pixel's spectrum by its total (``"total"``: spectra sum to 1; empty pixels
    stay 0) or the patch by its maximum (``"max"``)."""

    def __init__(self, mode: str = "total") -> None:
        if mode not in ("total", "max"):
            raise ConfigError(f"Normalise mode must be 'total' or 'max', got {mode!r}")
        self.mode = mode

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:  # noqa: ARG002
        x = x.astype(np.float32)
        d = x.sum(-1, keepdims=True) if self.mode == "total" else np.max(x, keepdims=True)
        return np.divide(x, d, out=np.zeros_like(x), where=d > 0)


class PoissonThin:
    """Re-noise at a lower count: keep each photon with probability ``p`` (binomial thinning).

    Thinning a Poisson(λ) channel gives exactly Poisson(p·λ), i.e. the same pixel measured with
    ``p`` times the dwell.  Give ``fraction`` (``p``) or ``counts`` (target mean counts per pixel:
    ``p = counts / pixel total``, capped at 1).  Needs integer counts: put it first.
    """

    def __init__(self, fraction: float | None = None, counts: float | None = None) -> None:
        if (fraction is None) == (counts is None):
            raise ConfigError("PoissonThin needs fraction= or counts=, not both")
        if fraction is not None and not 0 < fraction <= 1:
            raise ConfigError(f"PoissonThin fraction must be in (0, 1], got {fraction!r}")
        if counts is not None and not counts > 0:
            raise ConfigError(f"PoissonThin counts must be > 0, got {counts!r}")
        self.fraction, self.counts = fraction, counts

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if x.dtype.kind not in "ui":
            raise ConfigError("PoissonThin needs integer counts: put it before other transforms")
        if self.fraction is not None:
            p = np.float64(self.fraction)
        else:
            tot = x.sum(-1, keepdims=True, dtype=np.float64)
            p = np.minimum(1.0, np.divide(self.counts, tot, out=np.ones_like(tot), where=tot > 0))
        return rng.binomial(x.astype(np.int64), p).astype(x.dtype)


def _chw(x: np.ndarray, out: np.ndarray | None = None, dtype=np.float32,
         block: int = 64) -> np.ndarray:
    """``(h, w, E)`` → contiguous ``(E, h, w)`` in ``dtype``, converted and transposed in one
    pass, ``block`` pixels of a row at a time (cache-friendly: ≈ 5× faster than one strided
    copy for 64² × 1024; works on views of a larger region without copying them first).
    ``out``: write there instead (e.g. one slot of a batch in shared memory)."""
    h, w, e = x.shape
    if out is None:
        out = np.empty((e, h, w), dtype)
    for y in range(h):
        for x0 in range(0, w, block):
            out[:, y, x0:x0 + block] = x[y, x0:x0 + block].T
    return out


def _np_dtype(dtype) -> np.dtype:
    """A numpy dtype from a torch dtype (``torch.float32``), a numpy dtype or its name."""
    try:
        dt = np.dtype(str(dtype).removeprefix("torch.") if not isinstance(dtype, np.dtype)
                      else dtype)
    except TypeError:
        dt = None
    if dt is None or dt.kind not in "fiu" or dt.itemsize < 2:
        raise GanxError(f"dtype must be a float or ≥ 16-bit integer dtype (torch.float32, "
                        f"torch.uint16, torch.int32 …), got {dtype!r}")
    return dt


def _empty(shape: tuple[int, ...], dtype: np.dtype):
    """An uninitialised tensor; in a ``DataLoader`` worker it is allocated in shared memory, so
    sending it to the main process needs no copy (what ``default_collate`` does for batches)."""
    torch = _torch()
    tdt = torch.from_numpy(np.empty(0, dtype)).dtype
    n = int(np.prod(shape))
    from torch.utils.data import get_worker_info

    if get_worker_info() is not None and hasattr(torch.UntypedStorage, "_new_shared"):
        storage = torch.UntypedStorage._new_shared(n * dtype.itemsize)
        return torch.empty(0, dtype=tdt).set_(storage).view(shape)
    return torch.empty(shape, dtype=tdt)


def _chunk_decoder(arr) -> Callable | None:
    """``decode(chunk bytes, out)`` decompressing one chunk of ``arr`` straight into ``out``,
    for a plain zarr v3 layout (``bytes`` codec in native byte order + one Blosc or Zstd
    compressor, no sharding, one chunk along the last axis); ``None`` for anything else (then
    zarr's own pipeline reads the region)."""
    import sys

    import numcodecs.blosc
    import numcodecs.zstd
    from zarr.codecs import BloscCodec, BytesCodec, ZstdCodec

    codecs = getattr(getattr(arr, "metadata", None), "codecs", None)
    if (codecs is None or len(codecs) != 2 or not isinstance(codecs[0], BytesCodec)
            or arr.chunks[2:] != arr.shape[2:] or not isinstance(arr.dtype, np.dtype)):
        return None
    endian = getattr(codecs[0].endian, "value", codecs[0].endian)
    if arr.dtype.itemsize > 1 and endian != sys.byteorder:
        return None
    if isinstance(codecs[1], BloscCodec):
        return lambda src, out: numcodecs.blosc.decompress(src, out)
    if isinstance(codecs[1], ZstdCodec) and not codecs[1].checksum:
        dec = numcodecs.zstd.Zstd()
        return lambda src, out: dec.decode(src, out)
    return None


def _chunk_bytes(arr, keys: list[str], scratch: dict) -> Iterator[np.ndarray | None]:
    """The stored bytes of the chunks ``keys`` of ``arr`` (``None``: never written), one at a
    time.  A local store's chunk files are read into one reused buffer (``scratch["bytes"]``;
    each item is valid until the next); other stores are read through zarr, concurrently."""
    from zarr.storage import LocalStore

    store = arr.store_path.store
    if isinstance(store, LocalStore):
        base = Path(store.root) / arr.store_path.path
        for key in keys:
            try:
                with open(base / key, "rb", buffering=0) as fh:
                    n = os.fstat(fh.fileno()).st_size
                    raw = scratch.get("bytes")
                    if raw is None or raw.size < n:
                        raw = scratch["bytes"] = np.empty(max(n, 1 << 20), np.uint8)
                    got = fh.readinto(memoryview(raw)[:n])
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                yield None
                continue
            yield raw[:got]
        return
    import asyncio

    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    proto = default_buffer_prototype()

    async def fetch():
        return await asyncio.gather(*[(arr.store_path / k).get(prototype=proto) for k in keys])

    for raw in sync(fetch()):
        yield None if raw is None else raw.as_numpy_array()


def _read_chunks(arr, decode: Callable, sel: tuple[slice, slice], buf: np.ndarray,
                 scratch: dict) -> None:
    """Fill ``buf`` with ``arr[sel]``: the chunk bytes under the region are read (local store:
    straight from the chunk files into a reused byte buffer; other stores: through the zarr
    store, all chunks concurrently, so remote stores pay one round trip) and each chunk is
    decompressed by ``decode`` straight into ``buf`` when the region is exactly that chunk,
    else into a reusable chunk buffer (``scratch["chunk"]``) and copied over."""
    ys, xs = sel
    cy, cx = arr.chunks[:2]
    coords = [(by, bx) for by in range(ys.start // cy, -(-ys.stop // cy))
              for bx in range(xs.start // cx, -(-xs.stop // cx))]
    tail = (0,) * (arr.ndim - 2)
    keys = [arr.metadata.encode_chunk_key((by, bx) + tail) for by, bx in coords]
    for (by, bx), raw in zip(coords, _chunk_bytes(arr, keys, scratch), strict=True):
        y0, x0 = by * cy, bx * cx
        a0, a1 = max(ys.start, y0), min(ys.stop, y0 + cy)
        b0, b1 = max(xs.start, x0), min(xs.stop, x0 + cx)
        whole = (ys.start, ys.stop, xs.start, xs.stop) == (y0, y0 + cy, x0, x0 + cx)
        if whole:
            dest = buf
        else:
            dest = scratch.get("chunk")
            if dest is None or dest.shape != tuple(arr.chunks):
                dest = scratch["chunk"] = np.empty(arr.chunks, arr.dtype)
        if raw is None:  # never written: the fill value
            dest[...] = arr.metadata.fill_value
        else:
            decode(raw, dest)
        if not whole:
            buf[a0 - ys.start:a1 - ys.start, b0 - xs.start:b1 - xs.start] = \
                dest[a0 - y0:a1 - y0, b0 - x0:b1 - x0]


def _read_into(arr, sel: tuple[slice, slice], scratch: dict, key: int) -> np.ndarray:
    """``arr[sel]`` decoded into the reusable buffer ``scratch[key]`` (made or re-made when the
    region shape changes): no fresh allocation (page faults) per read.  Plain Blosc/Zstd
    arrays are decompressed chunk by chunk straight into it (:func:`_read_chunks`: no
    intermediate array per chunk); other layouts go through zarr's pipeline with ``out=``."""
    from zarr.core.buffer import default_buffer_prototype

    shape = tuple(s.stop - s.start for s in sel) + tuple(arr.shape[2:])
    buf = scratch.get(key)
    if buf is None or buf.shape != shape:
        buf = scratch[key] = np.empty(shape, arr.dtype)
    decode = _chunk_decoder(arr)
    if decode is not None:
        _read_chunks(arr, decode, sel, buf, scratch)
        return buf
    nd = default_buffer_prototype().nd_buffer.from_numpy_array(buf)
    arr.get_basic_selection(sel + (slice(None),) * (len(shape) - 2), out=nd)
    return buf


# --------------------------------------------------------------------------- images
@dataclass(frozen=True)
class _Image:
    """What a worker needs to read one image (picklable, no open handles)."""

    name: str
    group: str | None
    shape: tuple[int, int, int]
    chunks: tuple[int, int]
    table: np.ndarray           # (n_cluster + 1, P) float32: abundance rows, last = zeros
    lut: np.ndarray             # cluster id -> row of table
    windows: tuple[tuple[int, int], ...]  # element windows (channel start, stop)


def _describe(source: str, group: str | None, storage_options, elements):
    import xarray as xr

    from .analysis import parse_element
    from .store import open_cube

    where = f"{source}" + (f" (group {group})" if group else "")
    try:
        if _is_local(source):
            ds = open_cube(source, group)
        else:
            ds = xr.open_zarr(source, group=group, zarr_format=3,
                              storage_options=storage_options)
    except GanxError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise GanxError(f"{where}: cannot open ({exc})") from None
    c = ds["counts"].transpose("y", "x", "energy")
    zchunks = c.encoding.get("chunks") or (c.data.chunks[0][0], c.data.chunks[1][0])
    table = np.zeros((1, 0), np.float32)
    lut = np.zeros(1, np.int64)
    if "abundance" in ds and "labels" in ds:
        ab = ds["abundance"].values.astype(np.float32)
        table = np.vstack([ab, np.zeros((1, ab.shape[1]), np.float32)])
        ids = [int(v) for v in ds["abundance"]["cluster"].values]
        lut = np.full(max(ids) + 2 if ids else 1, len(ids), np.int64)
        lut[ids] = np.arange(len(ids))
    windows = []
    for spec in elements:
        el, ln = parse_element(spec, c["energy"].values)
        lo, hi = ds.xrf.element_map(el, ln).attrs["channels"]
        windows.append((int(lo), int(hi)))
    name = group if group is not None else Path(source.rstrip("/")).stem
    return _Image(name=name, group=group, shape=tuple(int(v) for v in c.shape),
                  chunks=(int(zchunks[0]), int(zchunks[1])), table=table, lut=lut,
                  windows=tuple(windows)), ds


class PatchDataset:
    """Map-style PyTorch dataset of ``patch × patch`` patches of one store or a batch dataset.

    Parameters
    ----------
    source : path-like or str
        A ganx-dask store or batch dataset (local path or zarr URL).
    targets : str or sequence of str
        Target name(s) from :data:`TARGETS` (see the module docstring for shapes and dtypes).
    patch : int
        Patch edge, pixels (default 64).
    mode : {"grid", "random"}
        ``grid``: every patch on a grid of step ``stride`` (default ``patch``; patches that would
        cross the image edge are dropped); ``random``: ``patches_per_image`` uniformly placed
        patches per image, positions seeded by ``(seed, image name)``.
    stride : int, optional
        Grid step, pixels.
    patches_per_image : int
        Random mode: patches per image.
    images : sequence of str, optional
        Batch datasets: only these image names (e.g. one side of :func:`split_images`).
    elements : sequence, optional
        Element maps for the ``"elements"`` target, e.g. ``["Pb:La", "Hg", ("Cu", "Ka")]``.
    transforms : sequence of callables, optional
        ``t(counts (p, p, E) ndarray, rng) -> ndarray`` applied in order (:class:`PoissonThin`,
        :class:`Rebin`, :class:`Log1p`, :class:`Normalise`); ``rng`` is seeded per patch.
    layout : {"chw", "hwc"}
        Counts tensor layout: ``(E, p, p)`` (default, channels first) or ``(p, p, E)``.
    dtype : torch or numpy dtype, or its name
        Counts tensor dtype (default ``float32``).  ``torch.uint16`` ships the stored counts
        unconverted (half the bytes through the loader; convert on the consumer, e.g. the GPU);
        integer dtypes refuse the float output of :class:`Log1p`/:class:`Normalise`.
    seed : int
        Seeds random positions and transforms (:meth:`set_epoch` changes the transform noise).
    storage_options : mapping, optional
        For zarr URLs (fsspec).

    Raises
    ------
    GanxError
        Unreadable source, unknown target/image names, a patch larger than an image.
    """

    def __init__(self, source, targets: str | Sequence[str] = "abundance", *, patch: int = 64,
                 mode: str = "grid", stride: int | None = None, patches_per_image: int = 16,
                 images: Sequence[str] | None = None, elements: Sequence = (),
                 transforms: Sequence[Callable] = (), layout: str = "chw", dtype="float32",
                 seed: int = 0,
                 storage_options: Mapping | None = None) -> None:
        self.source = os.fspath(source)
        self.single = isinstance(targets, str)
        self.targets = (targets,) if self.single else tuple(targets)
        bad = [t for t in self.targets if t not in TARGETS]
        if bad or not self.targets:
            raise GanxError(f"unknown target(s) {bad or '(none)'}; choose from {', '.join(TARGETS)}")
        if "elements" in self.targets and not elements:
            raise GanxError("the 'elements' target needs elements=, e.g. ['Pb:La', 'Hg']")
        if mode not in ("grid", "random"):
            raise GanxError(f"mode must be 'grid' or 'random', got {mode!r}")
        if layout not in ("chw", "hwc"):
            raise GanxError(f"layout must be 'chw' or 'hwc', got {layout!r}")
        if int(patch) != patch or patch < 1:
            raise GanxError(f"patch must be a positive number of pixels, got {patch!r}")
        self.patch, self.mode, self.layout, self.seed = int(patch), mode, layout, int(seed)
        self.dtype = _np_dtype(dtype)
        self.stride = int(stride or patch)
        self.transforms = tuple(transforms)
        self.storage_options = dict(storage_options) if storage_options else None
        self.epoch = 0
        groups = list_images(self.source, storage_options=self.storage_options)
        if images is not None:
            if groups == [None]:
                raise GanxError(f"{self.source} is a single-image store: images= applies to "
                                "batch datasets")
            missing = sorted(set(images) - set(groups))
            if missing:
                raise GanxError(f"{self.source}: no complete image(s) {', '.join(missing)}")
            groups = [g for g in groups if g in set(images)]
        self.images: list[_Image] = []
        pigments = None
        for g in groups:
            img, ds = _describe(self.source, g, self.storage_options, elements)
            names = [str(p) for p in ds["pigment"].values] if "pigment" in ds.coords else []
            if "abundance" in self.targets:
                if pigments is not None and names != pigments:
                    raise GanxError(f"{self.source}: image {img.name} has other pigments than "
                                    "the first image (abundance targets need one pigment list)")
                pigments = names
            for t in self.targets:
                need = {"abundance": ("abundance", "labels"), "labels": ("labels",),
                        "rgb": ("rgb",)}.get(t, ())
                if any(v not in ds for v in need):
                    raise GanxError(f"{self.source}: image {img.name} has no {t!r} data")
            if img.shape[0] < self.patch or img.shape[1] < self.patch:
                raise GanxError(f"{self.source}: image {img.name} ({img.shape[0]}×{img.shape[1]}"
                                f" px) is smaller than the {self.patch}-px patch")
            self.images.append(img)
        self.pigments: list[str] = pigments or []
        self.index = self._positions(patches_per_image)
        self._handles: dict | None = None
        self._scratch: dict = {}
        self._pid = None

    # ------------------------------------------------------------------ positions
    def _positions(self, n_random: int) -> np.ndarray:
        rows = []
        p = self.patch
        for i, img in enumerate(self.images):
            h, w, _ = img.shape
            if self.mode == "grid":
                ys, xs = np.arange(0, h - p + 1, self.stride), np.arange(0, w - p + 1, self.stride)
                yy, xx = np.meshgrid(ys, xs, indexing="ij")
                yy, xx = yy.ravel(), xx.ravel()
            else:
                rng = _rng(self.seed, 0, _key(img.name))
                yy = rng.integers(0, h - p + 1, n_random)
                xx = rng.integers(0, w - p + 1, n_random)
            rows.append(np.column_stack([np.full(yy.size, i), yy, xx]))
        return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 3), np.int64)

    def set_epoch(self, epoch: int) -> None:
        """Change the transform noise (and the stream's order) for a new epoch."""
        self.epoch = int(epoch)

    # ------------------------------------------------------------------ reading
    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"], state["_pid"] = None, None  # each worker opens its own
        state["_scratch"] = {}
        return state

    def _arrays(self, i: int) -> dict:
        if self._handles is None or self._pid != os.getpid():
            self._handles, self._scratch, self._pid = {}, {}, os.getpid()
        if i not in self._handles:
            root = _open_root(self.source, self.storage_options)
            g = root if self.images[i].group is None else root[self.images[i].group]
            self._handles[i] = {k: g[k] for k in ("counts", "labels", "rgb") if k in g}
        return self._handles[i]

    def read_region(self, i: int, y0: int, y1: int, x0: int, x1: int,
                    scratch: int | None = None, pool: dict | None = None) -> dict:
        """Raw arrays of image ``i`` over ``[y0, y1) × [x0, x1)``: ``counts`` (h, w, E) and the
        variables the targets need (numpy, as stored).

        ``scratch``: decode ``counts`` into this worker's reusable buffer number ``scratch``
        (no fresh allocation per read; the array is overwritten by the next read with the
        same number and shape); ``pool``: a dict of such buffers to use instead of the
        worker's (one per thread when threads read concurrently)."""
        a = self._arrays(i)
        if scratch is None:
            out = {"counts": a["counts"][y0:y1, x0:x1, :]}
        else:
            out = {"counts": _read_into(a["counts"], (slice(y0, y1), slice(x0, x1)),
                                        self._scratch if pool is None else pool, scratch)}
        for name, need in (("labels", ("abundance", "labels")), ("rgb", ("rgb",))):
            if any(t in self.targets for t in need):
                out[name] = (a[name][y0:y1, x0:x1] if scratch is None else _read_into(
                    a[name], (slice(y0, y1), slice(x0, x1)),
                    self._scratch if pool is None else pool, (name, scratch)))
        return out

    def _sample(self, i: int, y0: int, x0: int, raw: dict, oy: int = 0, ox: int = 0,
                out=None):
        """Item at ``(y0, x0)`` of image ``i`` from ``raw`` (a region read at ``y0 - oy,
        x0 - ox``).  ``out``: a counts tensor to write into (one slot of a batch), or a callable
        ``out(shape)`` returning one for the transformed counts' shape."""
        torch = _torch()
        p, img = self.patch, self.images[i]
        sl = (slice(oy, oy + p), slice(ox, ox + p))
        counts = raw["counts"][sl]
        tg = {}
        for t in self.targets:
            if t == "abundance":
                lab = raw["labels"][sl].astype(np.int64)
                rows = np.where(lab >= 0, img.lut[np.clip(lab, 0, img.lut.size - 1)],
                                img.table.shape[0] - 1)
                tg[t] = torch.from_numpy(np.ascontiguousarray(img.table[rows].transpose(2, 0, 1)))
            elif t == "labels":
                tg[t] = torch.from_numpy(raw["labels"][sl].astype(np.int64))
            elif t == "rgb":
                tg[t] = torch.from_numpy(np.ascontiguousarray(raw["rgb"][sl].transpose(2, 0, 1)))
            else:
                tg[t] = torch.from_numpy(np.stack(
                    [counts[:, :, a:b].sum(-1, dtype=np.float64) for a, b in img.windows]
                ).astype(np.float32))
        if self.transforms:
            rng = _rng(self.seed, 1, self.epoch, _key(img.name), y0, x0)
            for tf in self.transforms:
                counts = tf(counts, rng)
        if self.dtype.kind != "f" and not np.can_cast(counts.dtype, self.dtype):
            lim = np.iinfo(self.dtype)
            if counts.dtype.kind == "f" or counts.min() < lim.min or counts.max() > lim.max:
                raise GanxError(f"dtype={self.dtype} cannot hold the {counts.dtype} counts of "
                                "the transforms (use a float or wider integer dtype)")
        shape = counts.shape if self.layout == "hwc" else counts.shape[2:] + counts.shape[:2]
        if out is None:  # private memory: the collate copies it once into shared memory
            out = torch.from_numpy(np.empty(shape, self.dtype))
        elif callable(out):
            out = out(shape)
        if self.layout == "chw":
            _chw(counts, out.numpy())
        else:
            np.copyto(out.numpy(), counts, casting="unsafe")
        return out, (tg[self.targets[0]] if self.single else tg)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def __getitem__(self, k: int):
        i, y0, x0 = (int(v) for v in self.index[k])
        p = self.patch
        return self._sample(i, y0, x0, self.read_region(i, y0, y0 + p, x0, x0 + p, scratch=0))

    def position(self, k: int) -> tuple[str, int, int]:
        """``(image name, y0, x0)`` of item ``k`` (top-left pixel of the patch)."""
        i, y0, x0 = (int(v) for v in self.index[k])
        return self.images[i].name, y0, x0

    def stream(self, *, buffer: int = 2, shuffle: bool = True,
               batch_size: int | None = None) -> PatchStream:
        """An iterable view reading each zarr chunk once (see :class:`PatchStream`);
        ``batch_size``: yield ready batches (``DataLoader(..., batch_size=None)``)."""
        return PatchStream(self, buffer=buffer, shuffle=shuffle, batch_size=batch_size)

    def loader(self, batch_size: int = 16, *, threads: int | None = None, prefetch: int = 2,
               hold: int = 1, buffer: int = 2, shuffle: bool = True) -> PatchLoader:
        """Batches read and converted by ``threads`` threads in this process, into recycled
        buffers (see :class:`PatchLoader`; same batches as ``stream(batch_size=…)`` in one
        process)."""
        return PatchLoader(self, batch_size, threads=threads, prefetch=prefetch, hold=hold,
                           buffer=buffer, shuffle=shuffle)


def _iterable_base():
    try:
        from torch.utils.data import IterableDataset
    except ImportError:  # pragma: no cover - the class still documents itself without torch
        return object
    return IterableDataset


class PatchStream(_iterable_base()):
    """Iterable view of a :class:`PatchDataset` that reads every zarr chunk once.

    Patches are grouped by the chunk holding their top-left pixel; one group is read as one
    region (the bounding box of its patches: exactly one chunk for grid patches whose stride
    divides the chunk).  Per epoch (:meth:`PatchDataset.set_epoch`) the group order is shuffled
    with ``(seed, epoch)``, groups are dealt round-robin to the ``DataLoader`` workers, and each
    worker yields the patches of ``buffer`` groups at a time in shuffled order.  Items carry the
    same tensors as the map-style dataset; with ``shuffle=False`` the order is the dataset's.

    With ``batch_size`` each worker yields ``(counts, targets)`` batches of up to ``batch_size``
    patches (its last one may be short) — what ``DataLoader(stream, batch_size=…)`` gives, but
    each patch's counts are converted straight into the batch tensor, allocated in shared
    memory: no per-patch tensor, no collate copy.  Use ``DataLoader(stream, batch_size=None,
    num_workers=…)``.
    """

    def __init__(self, dataset: PatchDataset, *, buffer: int = 2, shuffle: bool = True,
                 batch_size: int | None = None) -> None:
        if int(buffer) != buffer or buffer < 1:
            raise GanxError(f"buffer must be a positive number of chunks, got {buffer!r}")
        if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
            raise GanxError(f"batch_size must be a positive number of patches, got "
                            f"{batch_size!r}")
        self.dataset, self.buffer, self.shuffle = dataset, int(buffer), bool(shuffle)
        self.batch_size = None if batch_size is None else int(batch_size)

    def __len__(self) -> int:
        if self.batch_size is not None:  # per-worker partial batches: no exact count
            raise TypeError("a batched PatchStream has no exact length; "
                            "len(stream.dataset) is the number of patches")
        return len(self.dataset)

    def groups(self) -> list[np.ndarray]:
        """Item indices grouped by (image, chunk row, chunk column), in index order."""
        ds = self.dataset
        idx = ds.index
        cy = np.array([img.chunks[0] for img in ds.images])[idx[:, 0]]
        cx = np.array([img.chunks[1] for img in ds.images])[idx[:, 0]]
        key = np.column_stack([idx[:, 0], idx[:, 1] // cy, idx[:, 2] // cx])
        _, inv = np.unique(key, axis=0, return_inverse=True)
        inv = np.ravel(inv)
        order = np.argsort(inv, kind="stable")
        return np.split(order, np.flatnonzero(np.diff(inv[order])) + 1) if order.size else []

    def _blocks(self, worker: tuple[int, int] | None = None) -> Iterator[tuple[list, list]]:
        """The read plan of one epoch: ``(regions, items)`` per block of ``buffer`` groups, where
        ``regions[j] = (i, y0, y1, x0, x1)`` is the region of the block's group ``j`` and
        ``items`` lists ``(k, j)`` (item ``k``, read from region ``j``) in yield order.
        ``worker = (id, n)``: only the groups dealt to that worker."""
        ds, p = self.dataset, self.dataset.patch
        groups = self.groups()
        if self.shuffle:
            perm = _rng(ds.seed, 2, ds.epoch).permutation(len(groups))
            groups = [groups[j] for j in perm]
        if worker is not None:
            groups = groups[worker[0]::worker[1]]
        for b in range(0, len(groups), self.buffer):
            regions, items = [], []
            for j, grp in enumerate(groups[b: b + self.buffer]):
                rows = ds.index[grp]
                regions.append((int(rows[0, 0]), int(rows[:, 1].min()),
                                int(rows[:, 1].max()) + p, int(rows[:, 2].min()),
                                int(rows[:, 2].max()) + p))
                items += [(int(k), j) for k in grp]
            if self.shuffle:
                ks = [it[0] for it in items]
                order = _rng(ds.seed, 4, ds.epoch, *ks[:1], len(ks)).permutation(len(items))
                items = [items[j] for j in order]
            yield regions, items

    def __iter__(self) -> Iterator:
        ds = self.dataset
        info = None
        try:
            from torch.utils.data import get_worker_info

            info = get_worker_info()
        except ImportError:  # pragma: no cover
            pass
        bs = self.batch_size
        x, tgs = None, []

        def slot(shape):  # the batch's counts, written in place (shared memory in a worker)
            nonlocal x
            if x is None:
                x = _empty((bs, *shape), ds.dtype)
            return x[len(tgs)]

        for regions, items in self._blocks(None if info is None else (info.id, info.num_workers)):
            raws = [ds.read_region(i, y0, y1, x0, x1, scratch=j)
                    for j, (i, y0, y1, x0, x1) in enumerate(regions)]
            for k, j in items:
                i, py, px = (int(v) for v in ds.index[k])
                oy, ox = py - regions[j][1], px - regions[j][3]
                if bs is None:
                    yield ds._sample(i, py, px, raws[j], oy, ox)
                    continue
                tgs.append(ds._sample(i, py, px, raws[j], oy, ox, out=slot)[1])
                if len(tgs) == bs:
                    yield self._batch(x, tgs)
                    x, tgs = None, []
        if tgs:
            yield self._batch(x[:len(tgs)], tgs)

    @staticmethod
    def _batch(x, targets: list):
        from torch.utils.data import default_collate

        return x, default_collate(targets)


class PatchLoader(_iterable_base()):
    """Batches of a :class:`PatchDataset` decoded and converted by a pool of threads in this
    process: the in-process alternative to a multi-worker ``DataLoader``.

    Yields exactly the batches of ``DataLoader(dataset.stream(batch_size=…, buffer=…,
    shuffle=…), batch_size=None)`` in one process (same patches, order, transforms and targets
    for a given seed and epoch), but ``threads`` threads read the stream's chunk regions
    concurrently (zarr's decompression and the numpy conversion release the GIL) and write each
    patch straight into a recycled batch buffer: no process start, no inter-process copy, no
    fresh shared memory per batch.

    **Buffer rule.**  The counts tensor of a batch is a view of one of ``prefetch + hold``
    preallocated buffers (more when one chunk's patches spread over more batches, see
    ``prefetch``).  The ``hold`` most recent batches yielded stay valid (default 1: a batch
    is valid until you ask for the next one); older ones are overwritten by batches being
    prefetched — ``.clone()`` a batch to keep it longer.  Targets are fresh tensors (always
    valid).

    Parameters
    ----------
    dataset : PatchDataset
    batch_size : int
        Patches per batch (the last batch may be short).
    threads : int, optional
        Reader threads (default: the CPUs available to this process).
    prefetch : int
        Batches filled ahead of the one being consumed; raised to the number of batches a
        block's patches spread over, so that every chunk region is read once.
    hold : int
        Batches the caller may hold at once (see the buffer rule).
    buffer, shuffle
        As for :class:`PatchStream`.

    Use it directly (``for x, y in ds.loader(16): …``) or through ``DataLoader(loader,
    batch_size=None, num_workers=0)`` (e.g. for ``pin_memory``); in a ``DataLoader`` worker
    process it refuses to run (it has its own threads).  Call :meth:`PatchDataset.set_epoch`
    before each epoch.  Leaving a loop early (``break``) or :meth:`close` stops the threads.

    Raises
    ------
    GanxError
        Bad parameters; iterated in a ``DataLoader`` worker; a reader thread failed (the message
        names the image and region; the original exception is chained).
    """

    def __init__(self, dataset: PatchDataset, batch_size: int = 16, *, threads: int | None = None,
                 prefetch: int = 2, hold: int = 1, buffer: int = 2, shuffle: bool = True) -> None:
        for name, v in (("batch_size", batch_size), ("prefetch", prefetch), ("hold", hold)):
            if int(v) != v or v < 1:
                raise GanxError(f"{name} must be a positive integer, got {v!r}")
        if threads is None:
            threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
                else (os.cpu_count() or 1)
        if int(threads) != threads or threads < 1:
            raise GanxError(f"threads must be a positive integer, got {threads!r}")
        self.stream = PatchStream(dataset, buffer=buffer, shuffle=shuffle, batch_size=batch_size)
        self.dataset, self.batch_size = dataset, int(batch_size)
        self.threads, self.prefetch, self.hold = int(threads), int(prefetch), int(hold)
        self._live: weakref.WeakSet = weakref.WeakSet()  # iterations in progress
        self._ring: tuple[list, int] | None = None  # (buffers, batches yielded) between epochs
        self._pools: list[dict] = []  # the reader threads' decode buffers, between epochs

    def __getstate__(self):
        return {**self.__dict__, "_live": None, "_ring": None, "_pools": []}

    def __setstate__(self, state):
        self.__dict__.update(state, _live=weakref.WeakSet())

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def _tasks(self) -> list[tuple[tuple, list[tuple[int, int]]]]:
        """``(region, [(k, position in the epoch), …])`` per chunk region, in stream order."""
        tasks, f = [], 0
        for regions, items in self.stream._blocks():
            per = [[] for _ in regions]
            for k, j in items:
                per[j].append((k, f))
                f += 1
            tasks += [(r, its) for r, its in zip(regions, per, strict=True) if its]
        return tasks

    def close(self) -> None:
        """Stop the reader threads of any iteration in progress (waits for running reads)."""
        for gen in list(self._live):
            gen.close()

    def __enter__(self) -> PatchLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator:
        try:
            from torch.utils.data import get_worker_info
        except ImportError:  # pragma: no cover
            get_worker_info = None  # noqa: N806
        if get_worker_info is not None and get_worker_info() is not None:
            raise GanxError("PatchLoader runs its own threads: use it in the main process "
                            "(DataLoader(loader, batch_size=None, num_workers=0))")
        gen = self._run()
        self._live.add(gen)
        return gen

    def _run(self) -> Iterator:
        import threading
        from concurrent.futures import ThreadPoolExecutor

        torch = _torch()
        ds, bs = self.dataset, self.batch_size
        tasks = self._tasks()
        n = sum(len(its) for _, its in tasks)
        nb = -(-n // bs)
        span = max((its[-1][1] // bs - its[0][1] // bs + 1 for _, its in tasks), default=1)
        ahead = max(self.prefetch, span)
        # the ring of batch buffers is kept between epochs (numbering continues, so the buffer
        # rule holds across an epoch boundary); a second concurrent iteration gets its own
        ring, self._ring = self._ring, None
        if ring is None or len(ring[0]) != ahead + self.hold:
            ring = ([None] * (ahead + self.hold), 0)
        bufs, base = ring
        yielded = 0
        left = {j: min(bs, n - j * bs) for j in range(nb)}
        targets: dict[int, list] = {j: [None] * left[j] for j in range(nb)}
        cond = threading.Condition()
        failed: list = []
        local = threading.local()
        spare, used = self._pools, []  # per-thread decode buffers, reused between epochs
        self._pools = []
        tdt = torch.from_numpy(np.empty(0, ds.dtype)).dtype
        for i in {r[0] for r, _ in tasks}:  # open the zarr handles once, before the threads
            ds._arrays(i)

        def run(task):
            (i, y0, y1, x0, x1), its = task
            if failed:
                return
            try:
                pool = getattr(local, "pool", None)
                if pool is None:
                    with cond:
                        pool = local.pool = spare.pop() if spare else {}
                        used.append(pool)
                raw = ds.read_region(i, y0, y1, x0, x1, scratch=0, pool=pool)
                for k, f in its:
                    j, s = divmod(f, bs)
                    _, py, px = (int(v) for v in ds.index[k])

                    def slot(shape, j=j, s=s):
                        r = (base + j) % len(bufs)
                        with cond:
                            if bufs[r] is None or bufs[r].shape[1:] != shape:
                                bufs[r] = torch.empty((bs, *shape), dtype=tdt)
                        return bufs[r][s]

                    targets[j][s] = ds._sample(i, py, px, raw, py - y0, px - x0, out=slot)[1]
                    with cond:
                        left[j] -= 1
                        if not left[j]:
                            cond.notify_all()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
                with cond:
                    failed.append((task, exc))
                    cond.notify_all()

        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="ganx-ml-loader")
        try:
            t = 0
            for j in range(nb):
                # batches ≤ j - 1 - hold are released: fill up to j - 1 + ahead
                while t < len(tasks) and tasks[t][1][-1][1] // bs <= j - 1 + ahead:
                    pool.submit(run, tasks[t])
                    t += 1
                with cond:
                    while left[j] and not failed:
                        cond.wait()
                if failed:
                    (i, y0, y1, x0, x1), exc = failed[0][0][0], failed[0][1]
                    raise GanxError(
                        f"PatchLoader: reading image {ds.images[i].name} rows {y0}:{y1}, "
                        f"columns {x0}:{x1} failed in a reader thread: "
                        f"{type(exc).__name__}: {exc}") from exc
                x = bufs[(base + j) % len(bufs)]
                del left[j]
                yielded = j + 1
                yield PatchStream._batch(x[:bs if (j + 1) * bs <= n else n - j * bs],
                                         targets.pop(j))
        finally:
            failed.append(None)  # queued reads return at once
            pool.shutdown(wait=True, cancel_futures=True)
            if not failed[:-1]:  # a failed epoch may leave a half-written ring: drop it
                self._ring = (bufs, (base + yielded) % len(bufs))
            self._pools = used + spare


# --------------------------------------------------------------------------- layout
def chunk_advice(patch: int = 64, channels: int = 1024, itemsize: int = 2) -> str:
    """One paragraph: which ``--chunk`` (zarr chunk edge) to generate or :func:`rechunk` to for
    training on ``patch``-pixel patches, with the bytes a random patch decodes."""
    def mib(edge):
        return edge * edge * channels * itemsize / 2**20

    return (f"Random {patch}² patches decode every chunk they touch: with 256² chunks "
            f"({mib(256):.0f} MiB each) a patch reads ≥ {mib(256):.0f} MiB for {mib(patch):.0f} MiB "
            f"of data; with --chunk {patch} (and --tile {patch}) a grid patch decodes exactly "
            f"one {mib(patch):.0f} MiB chunk.  Generate with `--chunk {patch}` or convert with "
            f"`ganx-dask rechunk SRC DST --chunk {patch}`; or keep 256² and iterate with "
            "PatchDataset.stream(), which reads each chunk once.")


def rechunk(source: str | os.PathLike, dest: str | os.PathLike, *, chunk: int = 64,
            overwrite: bool = False, progress: bool = False) -> str:
    """Copy a store or batch dataset to a training-friendly layout: ``counts`` in
    ``(chunk, chunk, E)`` zarr chunks (same bytes, same attrs, same compressor).

    Each image is written with :func:`ganx_dask.to_zarr` (region = ``chunk``), so the copy is
    resumable and complete-flagged like any store; a batch dataset keeps its manifest.  Runs on
    the active dask scheduler.

    Raises
    ------
    StoreExistsError
        ``dest`` exists and ``overwrite`` is false.
    GanxError
        ``source`` is not a store or batch dataset, or ``dest`` is ``source``.
    """
    import zarr

    from .errors import StoreExistsError
    from .storage import location
    from .store import open_cube, to_zarr

    src, dst = Path(os.fspath(source)), Path(os.fspath(dest))
    if int(chunk) != chunk or chunk < 1:
        raise GanxError(f"chunk must be a positive number of pixels, got {chunk!r}")
    if dst.resolve() == src.resolve():
        raise GanxError(f"{dst}: rechunk needs a new destination, not the source")
    groups = list_images(src)
    if dst.exists() and any(dst.iterdir()):
        if not overwrite:
            raise StoreExistsError(f"store {str(dst)!r} already exists; pass overwrite=True "
                                   "(--overwrite) to replace it")
        target = location(dst)
        if not target.is_zarr_node():
            raise GanxError(f"{str(dst)!r} exists and is not a Zarr store: refusing to "
                            "overwrite it")
        target.clear_zarr_node()
    if groups == [None]:
        return to_zarr(open_cube(src), dst, region=int(chunk), progress=progress)
    root_attrs = dict(zarr.open_group(str(src), mode="r").attrs)
    out = zarr.open_group(str(dst), mode="a", zarr_format=3)
    out.attrs.update({**root_attrs, "rechunked_from": str(src)})
    for g in groups:
        to_zarr(open_cube(src, g), dst, group=g, region=int(chunk), progress=progress)
    return str(dst)


# --------------------------------------------------------------------------- xbatcher
def xbatcher_dataset(ds, patch: int = 64):
    """The correct xbatcher recipe: a ``xbatcher.loaders.torch.MapDataset`` of
    ``(counts (E, p, p) float32, abundance (P, p, p) float32)`` grid patches of one cube.

    ``xbatcher.BatchGenerator(ds, input_dims={"y": 64, "x": 64})`` on the whole dataset folds
    every dimension not in ``input_dims`` (energy × pigment, cluster …) into one ``sample``
    dimension.  Instead, give each generator a single variable and *all* its dims::

        X = BatchGenerator(ds.counts, input_dims={"y": p, "x": p, "energy": E})
        Y = BatchGenerator(ds.xrf.abundance_map(), input_dims={"y": p, "x": p, "pigment": P})
        MapDataset(X, Y, transform=to_chw, target_transform=to_chw)

    Patches come in grid order (shuffle with the ``DataLoader``); every patch decodes whole zarr
    chunks, so a 64²-chunk layout (:func:`rechunk`) matters here too.
    """
    torch = _torch()
    import xbatcher
    from xbatcher.loaders.torch import MapDataset

    from .analysis import abundance_map

    counts = ds["counts"].transpose("y", "x", "energy")
    truth = abundance_map(ds).astype(np.float32)
    X = xbatcher.BatchGenerator(counts, input_dims={"y": patch, "x": patch,
                                                    "energy": counts.sizes["energy"]})
    Y = xbatcher.BatchGenerator(truth, input_dims={"y": patch, "x": patch,
                                                   "pigment": truth.sizes["pigment"]})

    def to_chw(a):  # an xarray patch (y, x, c) -> float32 tensor (c, y, x)
        return torch.from_numpy(np.ascontiguousarray(
            np.asarray(a.values, dtype=np.float32).transpose(2, 0, 1)))

    return MapDataset(X, Y, transform=to_chw, target_transform=to_chw)
