"""Writing and reading MA-XRF cubes as Zarr v3 stores: template first, region by region, resumable.

Layout of a store (or of ``group`` inside one)
----------------------------------------------
* every variable of the dataset, written by xarray (``zarr_format=3``): the big
  ``counts(y, x, energy)`` with zarr chunks ``(cy, cx, E)`` equal to one *region*, compressed with
  ``BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle")`` (measured best speed × ratio,
  ``docs/performance.md``); the small variables (``labels``, ``rgb``, ``abundance`` …) with
  xarray's defaults;
* ``_internal/region_complete(region_y, region_x)``, bool, chunks ``(1, 1)``: the per-region
  completion record, in a sub-group so that a plain ``xr.open_zarr`` does not list it (stores of
  ganx-dask 0.1.0 have it at the top level as ``region_complete``; both are read).  Region ``(ry, rx)`` covers ``y ∈ [ry·cy, (ry+1)·cy)``, ``x ∈ [rx·cx, (rx+1)·cx)``;
  its entry is set to True by the task that wrote that region, *after* the chunk is written
  (one tiny object per region, so concurrent tasks never write the same object);
* group attributes, encoded by :func:`ganx_dask.attrs.encode` (nested values as JSON text,
  booleans as 0/1, so a plain ``xr.open_zarr(...).to_netcdf()`` works): the dataset's attrs plus
  ``complete`` (0 until the very last step), ``template_complete``, ``regions_total``, ``region_size`` ([cy, cx] pixels), ``fingerprint``
  (SHA-256 of everything that determines the bytes: attrs except ``created``, variable names,
  dims, shapes and dtypes, region size and codec) and ``resumed`` (a list, one entry per resume:
  time and regions computed).

Write protocol
--------------
1. checks (existing store without ``overwrite``/``resume`` → :class:`StoreExistsError`;
   unwritable location → :class:`GanxError`) — nothing is written before they pass;
2. template: all small variables, the coordinates, the metadata of ``counts`` (no data), the
   region record, attrs with ``complete: False``; then ``template_complete: True``;
3. one task per region: compute the counts block, write its zarr chunk, set its record entry;
4. the temporary files of writers killed mid-write (zarr's local ``KEY.<hex>.partial``) are
   removed, then ``complete: True``, then (stores without ``group``) consolidated metadata, so a
   plain ``xr.open_zarr`` needs no fallback; an interrupted store has none and is opened without.

A run killed at any point leaves a store that ``resume=True`` finishes: the template is redone if
it was not complete, then only regions whose record is False are computed (per-tile seeding makes
a recomputed region byte-identical, so a region whose chunk was written but not recorded is simply
written again with the same bytes).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass, field

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
from dask.base import tokenize
from zarr.codecs import BloscCodec

from .attrs import decode, encode, encode_dataset, plain
from .errors import GanxError, IncompleteStoreWarning, StoreExistsError
from .scheduling import active_client, compute
from .storage import Location, location, remote_error, with_storage_errors

__all__ = [
    "DEFAULT_COMPRESSOR",
    "RECORD",
    "to_zarr",
    "plan_write",
    "finish_write",
    "WritePlan",
    "open_cube",
    "is_complete",
    "missing_regions",
    "default_compressor",
    "cube_encoding",
]

log = logging.getLogger(__name__)

#: Path (in the store or group) of the per-region completion record array.
RECORD = "_internal/region_complete"
#: Where ganx-dask 0.1.0 kept it (still read).
_LEGACY_RECORD = "region_complete"
#: Name of the big variable written region by region.
CUBE = "counts"
#: Attributes that do not determine the stored bytes (excluded from the fingerprint).
_VOLATILE = {"created", "history", "complete", "template_complete", "regions_total", "region_size",
             "fingerprint", "resumed"}


def default_compressor() -> BloscCodec:
    """``BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle")``: ~14.7× at ~740 MB/s/core."""
    return BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle")


DEFAULT_COMPRESSOR = default_compressor()


def cube_encoding(region: tuple[int, int], n_energy: int, codec=None) -> dict:
    """xarray/zarr encoding of ``counts``: one region (pixels) × all ``n_energy`` channels per
    chunk, ``codec`` (default :func:`default_compressor`), and ``write_empty_chunks=True``,
    which skips zarr's all-zero scan of every chunk (``docs/performance.md``).

    :func:`ganx_dask.generate` sets it on ``counts``, so a plain ``ds.to_zarr(path)`` writes the
    same ``counts`` chunks, as fast, as :func:`to_zarr`.
    """
    return {"chunks": (int(region[0]), int(region[1]), int(n_energy)),
            "compressors": [default_compressor() if codec is None else codec],
            "write_empty_chunks": True}


# ------------------------------------------------------------------------------------ helpers
def _group_dir(path: Location, group: str | None) -> Location:
    return path.child(group)


def _attrs_diff(stored: dict, requested: dict) -> list[str]:
    """Keys whose values differ, one level into dict values: ``"parameters.counts (30 -> 31)"``."""
    out = []
    for k in sorted(set(stored) | set(requested)):
        a, b = stored.get(k), requested.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(f"{k}.{s} ({a.get(s)!r} -> {b.get(s)!r})"
                       for s in sorted(set(a) | set(b)) if a.get(s) != b.get(s))
        else:
            out.append(f"{k} ({a!r} -> {b!r})")
    return out


def _canonical_attrs(attrs) -> dict:
    """Attributes that determine the stored bytes (decoded, plain Python)."""
    out = {k: v for k, v in plain(decode(attrs)).items() if k not in _VOLATILE}
    if isinstance(out.get("parameters"), dict):  # engines are bit-identical: not a parameter
        out["parameters"] = {k: v for k, v in out["parameters"].items() if k != "engine"}
    return out


def _in_memory_contents(ds: xr.Dataset) -> dict[str, str]:
    """SHA-256 of the values of every in-memory variable and coordinate (``abundance``,
    ``spectrum``, ``pigment_rgb``, ``energy``, ...).  Dask-backed variables (``counts``,
    ``labels``, ``rgb``) derive from the seed, the parameters and the image hash, which the
    attrs already cover; the small in-memory ones hold what a library contributes."""
    out = {}
    for name, var in ds.variables.items():
        if name == CUBE or isinstance(var.data, da.Array):
            continue
        values = np.asarray(var.values)
        if values.dtype.kind == "O":
            raw = json.dumps(plain(values), default=str).encode()
        else:
            raw = np.ascontiguousarray(values).tobytes()
        out[str(name)] = hashlib.sha256(values.dtype.str.encode() + raw).hexdigest()
    return dict(sorted(out.items()))


def _changed_contents(path: Location, group: str | None, ds: xr.Dataset) -> list[str]:
    """Names of the in-memory variables whose values differ from those stored."""
    try:
        stored = xr.open_zarr(path.zarr_store(read_only=True), group=group, consolidated=False,
                              zarr_format=3)
    except Exception:  # noqa: BLE001 - only used to word an error message
        return []
    out = []
    for name, var in ds.variables.items():
        if name == CUBE or isinstance(var.data, da.Array):
            continue
        if name not in stored.variables or not np.array_equal(
                np.asarray(stored[name].values), np.asarray(var.values)):
            out.append(f"contents of {name}")
    return out


def _fingerprint(ds: xr.Dataset, region: tuple[int, int], codec) -> tuple[str, dict]:
    desc = {
        "attrs": _canonical_attrs(ds.attrs),
        "contents": _in_memory_contents(ds),
        "variables": {
            str(n): [list(map(str, v.dims)), list(v.shape), str(v.dtype)]
            for n, v in sorted(ds.variables.items(), key=lambda kv: str(kv[0]))
        },
        "region": list(region),
        "codec": repr(codec),
    }
    text = json.dumps(desc, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest(), desc


def _region_size(counts: xr.DataArray, region) -> tuple[int, int]:
    if region is not None:
        r = (region, region) if np.isscalar(region) else tuple(region)
        if len(r) != 2 or any(int(v) != v or v < 1 for v in r):
            raise GanxError(f"region must be a positive int or (ry, rx) pixels, got {region!r}")
        return int(r[0]), int(r[1])
    if counts.chunks is None:
        return int(counts.shape[0]), int(counts.shape[1])
    return int(counts.chunks[0][0]), int(counts.chunks[1][0])


def _prepare(ds: xr.Dataset, region, compressor) -> tuple[xr.Dataset, tuple[int, int], object]:
    if not isinstance(ds, xr.Dataset):
        raise GanxError(f"to_zarr needs an xarray.Dataset, got {type(ds).__name__}")
    if CUBE not in ds.data_vars:
        raise GanxError(f"dataset has no {CUBE!r} variable")
    counts = ds[CUBE]
    if counts.dims[:2] != ("y", "x") or counts.ndim != 3:
        raise GanxError(f"{CUBE!r} must have dims (y, x, energy), got {counts.dims}")
    if _LEGACY_RECORD in ds.variables:
        raise GanxError(f"dataset must not contain a variable named {_LEGACY_RECORD!r}")
    cy, cx = _region_size(counts, region)
    E = counts.shape[2]
    data = counts.data if isinstance(counts.data, da.Array) else da.asarray(counts.data)
    want = (cy, cx, E)
    if any(c[:-1] != (w,) * (len(c) - 1) or c[-1] > w for c, w in zip(data.chunks, want,
                                                                        strict=True)):
        data = data.rechunk(want)
    ds = encode_dataset(ds.drop_encoding())  # e.g. a dataset read from another store: its chunks/codecs don't apply
    ds[CUBE] = counts.copy(data=data).drop_encoding()
    # fixed-width numpy strings have no Zarr v3 data type (zarr warns "unstable"); variable-length
    # UTF-8 ("string") does: store pigment names, channel names... as object arrays
    for name, var in list(ds.variables.items()):
        if var.dtype.kind == "U":
            new = var.astype(object)
            if name in ds.coords:
                ds = ds.assign_coords({name: new})
            else:
                ds[name] = new
    ds = ds.copy()
    codec = default_compressor() if compressor is None else compressor
    return ds, (cy, cx), codec


def _n_regions(shape, region) -> tuple[int, int]:
    return -(-shape[0] // region[0]), -(-shape[1] // region[1])


def _open_group(path: Location | str | os.PathLike, group: str | None, mode: str = "r"):
    return zarr.open_group(location(path).zarr_store(read_only=mode == "r"), path=group or "", mode=mode,
                           zarr_format=3)


#: Templates whose variables other than ``counts`` hold at most this many bytes are built in
#: memory and copied to the store in one batch of concurrent writes (≈ 50 sequential metadata
#: round trips per image → 3; the batch of many small images pays them per image).
_MEM_TEMPLATE_BYTES = 32 << 20


def _write_template(ds: xr.Dataset, path: Location, group, region, codec, fp: str) -> None:
    ny, nx = _n_regions(ds[CUBE].shape, region)
    attrs = decode(ds.attrs)
    attrs.update(complete=False, template_complete=False, regions_total=int(ny * nx),
                 region_size=list(region), fingerprint=fp)
    attrs["resumed"] = []  # a dataset read from another store carries that store's history
    attrs = encode(attrs)
    # the group appears with its fingerprint in one metadata write: a process killed at any
    # later point leaves a group that resume recognises (``template_complete`` still False) and
    # rewrites, never a bare group that looks foreign ("not written by ganx_dask.store")
    zarr.create_group(path.zarr_store(), path=group or "", overwrite=True, attributes=attrs,
                      zarr_format=3)
    if ds.drop_vars(CUBE).nbytes <= _MEM_TEMPLATE_BYTES:
        # the same writes into memory (the small variables computed here, in this thread),
        # then every key but the group's metadata copied at once; same bytes as writing directly
        mem = zarr.storage.MemoryStore()
        zarr.create_group(mem, attributes=attrs, zarr_format=3)
        compute(_template_writes(ds, mem, None, region, codec, attrs), scheduler="synchronous")
        _copy_nodes(mem, path.zarr_store(), group)
    else:
        compute(_template_writes(ds, path.zarr_store(), group, region, codec, attrs))
    _update_attrs(_open_group(path, group, "r+"), template_complete=True)


def _template_writes(ds: xr.Dataset, zstore, group, region, codec, attrs) -> list:
    """Write the template's arrays below an existing group of ``zstore``: the variables but
    ``counts`` (their data as the returned delayed writes), the metadata of ``counts`` and the
    record."""
    small = ds.drop_vars(CUBE)
    small.attrs = attrs
    delayed = [small.to_zarr(zstore, group=group, mode="a", zarr_format=3, consolidated=False,
                             compute=False)]
    counts = ds[CUBE]
    enc = cube_encoding(region, counts.shape[2], codec)
    if set(ds.coords) <= set(ds.dims) and not counts.encoding:
        # only its metadata, as xarray writes it (its attrs; no coordinates attribute without
        # non-index coordinates), in one write instead of a second ``to_zarr`` (≈ 25 ms/image)
        zarr.create_array(zstore, name=f"{group.strip('/')}/{CUBE}" if group else CUBE,
                          shape=counts.shape, chunks=enc["chunks"], dtype=counts.dtype,
                          compressors=enc["compressors"], attributes=encode(dict(counts.attrs)),
                          dimension_names=counts.dims, zarr_format=3)
    else:
        cube = ds[[CUBE]]
        cube.attrs = attrs
        # metadata only: the delayed write of its data is dropped (the regions write it)
        cube.to_zarr(zstore, group=group, mode="a", zarr_format=3, consolidated=False,
                     compute=False, encoding={CUBE: enc})
    g = zarr.open_group(zstore, path=group or "", mode="r+", zarr_format=3)
    ry, rx = _n_regions(counts.shape, region)
    parent, name = RECORD.split("/")
    g.require_group(parent).create_array(name, shape=(ry, rx), chunks=(1, 1), dtype="bool", fill_value=False,
                   dimension_names=("region_y", "region_x"), compressors=None,
                   attributes={"description": "True once region (region_y, region_x) of "
                               f"{CUBE!r} is written", "region_size": list(region)})
    return delayed


def _copy_nodes(src, dst, group: str | None) -> None:
    """Copy every key of store ``src`` except its root ``zarr.json`` below ``group`` of ``dst``,
    all at once (concurrent writes: one round trip instead of one per key)."""
    import asyncio

    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    prefix = f"{group.strip('/')}/" if group and group.strip("/") else ""
    proto = default_buffer_prototype()

    async def copy() -> None:
        nonlocal dst
        if isinstance(dst, str):  # a local path
            dst = await zarr.storage.LocalStore.open(dst)
        keys = [k async for k in src.list() if k != "zarr.json"]

        async def one(key: str) -> None:
            await dst.set(prefix + key, await src.get(key, prototype=proto))

        await asyncio.gather(*(one(k) for k in keys))

    sync(copy())


def _update_attrs(g, **values) -> None:
    """Set some group attributes, encoded (and ``json_attrs`` kept in step)."""
    g.attrs.put(encode({**decode(g.attrs), **values}))  # a 0.1.0 store is migrated as a whole


def _record_path(g) -> str:
    """The record's path in group ``g`` (0.1.0 stores: top level); KeyError when absent."""
    for p in (RECORD, _LEGACY_RECORD):
        try:
            g[p]
        except KeyError:
            continue
        return p
    raise KeyError(RECORD)


def _write_region(block: np.ndarray, path: str, group: str | None, ry: int, rx: int,
                  y0: int, x0: int, record: str = RECORD) -> int:
    """Task: write one region of ``counts`` then record it (module level: pickles by ref)."""
    prefix = f"{group.strip('/')}/" if group else ""
    store = location(path).zarr_store()
    # write_empty_chunks=True skips zarr's all-zero scan of every chunk (~0.1 CPU-s per 128 MB
    # region); an all-zero region is then stored like any other, identically on every run
    arr = zarr.open_array(store, path=prefix + CUBE, mode="r+", zarr_format=3).with_config(
        {"write_empty_chunks": True})
    arr[y0:y0 + block.shape[0], x0:x0 + block.shape[1], :] = block
    rec = zarr.open_array(store, path=prefix + record, mode="r+", zarr_format=3)
    rec[ry, rx] = True
    return int(block.nbytes)


def _compute(tasks: list, progress: bool) -> list:
    client = active_client()
    if client is not None:
        from distributed import progress as dprogress

        futures = client.compute(tasks)
        if progress:
            dprogress(futures)
        return client.gather(futures)
    if progress:
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            return list(compute(*tasks))
    return list(compute(*tasks))


def _consolidate(path: Location, group) -> None:
    """Consolidated metadata, written last, so a plain ``xr.open_zarr`` finds it (no fallback
    warning).  Only finished stores have it: an interrupted one is opened without.

    Not for groups: xarray looks for consolidated metadata at the store root, and a root
    consolidated while other groups are still being written would freeze their in-progress
    attributes (``complete: False``) for consolidated readers.
    """
    if group:
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        zarr.consolidate_metadata(path.zarr_store(), path=group or "", zarr_format=3)


def _is_consolidated(path: Location | str | os.PathLike, group) -> bool:
    if group:
        return False
    meta = _group_dir(location(path), group).child("zarr.json").read_json()
    return isinstance(meta, dict) and meta.get("consolidated_metadata") is not None


def _record(path: Location, group) -> np.ndarray:
    g = _open_group(path, group)
    return np.asarray(g[_record_path(g)][...], dtype=bool)


# --------------------------------------------------------------------------------- public API
@with_storage_errors("cannot write")
def to_zarr(
    ds: xr.Dataset,
    path: str | os.PathLike,
    *,
    group: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
    region: int | tuple[int, int] | None = None,
    compressor=None,
) -> str:
    """Write a (lazy) cube dataset to a Zarr v3 store, region by region, resumably.

    Parameters
    ----------
    ds : xarray.Dataset
        Must contain ``counts(y, x, energy)`` (usually dask-backed); every other variable is
        written with the template.
    path : str or path-like
        Store directory (local or shared file system reachable by every worker) or object-store
        URL (``s3://bucket/prefix/cube.zarr``; see :mod:`ganx_dask.storage`).
    group : str, optional
        Group inside the store (e.g. one image of a batch dataset).
    overwrite : bool
        Replace an existing store/group.  Only a Zarr store (or an empty directory) is ever
        replaced; any other existing path raises.
    resume : bool
        Finish an interrupted store: verifies the fingerprint (parameters, seed, shapes, dtypes,
        region size, codec) matches ``ds`` (else :class:`GanxError` naming the differing keys),
        then computes only the regions not recorded as written.  The number computed is logged
        (logger ``ganx_dask.store``) and appended to the ``resumed`` attribute.  A missing
        store is written from scratch.
    progress : bool
        Show progress: ``distributed.progress`` under an active ``distributed.Client``, else
        ``dask.diagnostics.ProgressBar``.
    region : int or (int, int), optional
        Region (= zarr chunk) size in pixels along ``(y, x)``; default: the dask chunks of
        ``counts``.  Each region holds all energies: ``cy × cx × E`` voxels.
    compressor : zarr v3 bytes-to-bytes codec, optional
        Default :func:`default_compressor` (blosc zstd level 1, bitshuffle).

    Returns
    -------
    str
        The store path.

    Raises
    ------
    StoreExistsError
        The store (or group) exists and neither ``overwrite`` nor ``resume`` is set; the existing
        files are left untouched.
    GanxError
        Unwritable location, malformed dataset, or a resume against different parameters.
    """
    plan = plan_write(ds, path, group=group, overwrite=overwrite, resume=resume, region=region,
                      compressor=compressor)
    if plan.tasks:
        _compute(plan.tasks, progress)
    finish_write(plan)
    return str(plan.path)


@dataclass
class WritePlan:
    """A store whose template is written and whose region tasks are built but not computed.

    Made by :func:`plan_write`; compute ``tasks`` on any scheduler (each is independent and
    idempotent), then call :func:`finish_write`.  :func:`to_zarr` is exactly these two halves;
    the ``batch`` pipeline uses them to run the regions of many stores on one pool of workers.

    Attributes
    ----------
    path : ganx_dask.storage.Location
        The store.
    group : str or None
        Group inside the store.
    tasks : list of dask.delayed.Delayed
        One task per region still to compute.
    complete : bool
        The store was already complete: nothing to compute or finish.
    """

    path: Location
    group: str | None
    tasks: list = field(default_factory=list)
    complete: bool = False


def plan_write(
    ds: xr.Dataset,
    path: str | os.PathLike,
    *,
    group: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    region: int | tuple[int, int] | None = None,
    compressor=None,
) -> WritePlan:
    """First half of :func:`to_zarr`: checks, template, resume record, the region tasks.

    Parameters and exceptions as :func:`to_zarr`.  Nothing is computed but the template.
    """
    if overwrite and resume:
        raise GanxError("give either overwrite=True or resume=True, not both")
    path = location(path)
    ds, reg, codec = _prepare(ds, region, compressor)
    fp, desc = _fingerprint(ds, reg, codec)
    target = _group_dir(path, group)
    exists = target.exists()
    if exists and not target.is_file() and not target.is_zarr_node():
        if overwrite or resume:
            raise GanxError(
                f"{str(target)!r} exists and is not a Zarr store: refusing to overwrite or resume"
            )
    if exists and target.is_file():
        raise StoreExistsError(f"{str(target)!r} exists and is a file")
    if exists and not (overwrite or resume):
        raise StoreExistsError(
            f"store {str(target)!r} already exists; pass overwrite=True (--overwrite) to replace "
            "it or resume=True (--resume) to finish it"
        )
    target.check_writable()

    need_template = True
    if exists and resume:
        try:
            attrs = decode(_open_group(path, group).attrs)
        except Exception as exc:  # noqa: BLE001 - any unreadable store is a user error here
            raise GanxError(f"cannot resume {str(target)!r}: not a readable Zarr group ({exc})") from exc
        if "fingerprint" not in attrs:
            raise GanxError(f"cannot resume {str(target)!r}: not written by ganx_dask.store")
        if attrs["fingerprint"] != fp:
            diff = _attrs_diff(_canonical_attrs(attrs), desc["attrs"])
            if not diff:
                diff = _changed_contents(path, group, ds)
            if not diff:
                diff = ["variables/shapes/dtypes/region size/codec"]
            raise GanxError(
                f"cannot resume {str(target)!r}: it was written with different parameters "
                f"(differs in: {', '.join(diff)})"
            )
        need_template = not attrs.get("template_complete", False)
        if attrs.get("complete") and not need_template:
            log.info("store %s is already complete: 0 regions to compute", target)
            _remove_write_leftovers(target)
            if not _is_consolidated(path, group):  # killed between the last two steps
                _consolidate(path, group)
            return WritePlan(path, group, complete=True)
        resumed = list(attrs.get("resumed", []))
    elif exists and overwrite:
        target.clear_zarr_node()
        if group and not target.is_remote:
            target.path.rmdir()
        resumed = []
    else:
        resumed = []

    if need_template:
        _write_template(ds, path, group, reg, codec, fp)
    done = _record(path, group)
    todo = [(int(ry), int(rx)) for ry, rx in zip(*np.nonzero(~done), strict=True)]
    if exists and resume:
        resumed.append({"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                        "regions_computed": len(todo), "regions_total": int(done.size)})
        _update_attrs(_open_group(path, group, "r+"), resumed=resumed)
        log.warning("resuming %s: computing %d of %d regions", target, len(todo), done.size)
    blocks = ds[CUBE].data.to_delayed()
    write = dask.delayed(_write_region, pure=True)
    record = _record_path(_open_group(path, group))
    # keys unique per target: two stores of identical content written at once on one
    # distributed cluster must not share (and so skip) each other's write tasks
    token = tokenize(fp, path.token(), group)
    tasks = [
        write(blocks[ry, rx, 0], str(path), group, ry, rx, ry * reg[0], rx * reg[1], record,
              dask_key_name=f"ganx-write-region-{token}-{ry}-{rx}")
        for ry, rx in todo
    ]
    return WritePlan(path, group, tasks)


def finish_write(plan: WritePlan) -> None:
    """Second half of :func:`to_zarr`, after every task of ``plan`` ran: ``complete: True``,
    then consolidated metadata (stores without a group)."""
    if plan.complete:
        return
    path, group = plan.path, plan.group
    if not _record(path, group).all():  # pragma: no cover - a task failed silently
        raise GanxError(f"store {str(_group_dir(path, group))!r}: some regions were not "
                        "recorded as written")
    _remove_write_leftovers(_group_dir(path, group))
    _update_attrs(_open_group(path, group, "r+"), complete=True)
    _consolidate(path, group)


def _remove_write_leftovers(target: Location) -> None:
    """Every region is written: the temporary files of writers killed mid-write (a dead worker,
    an interrupted run) are litter; remove them so a finished store holds its objects only."""
    removed = target.remove_write_leftovers()
    if removed:
        log.warning("store %s: removed %d temporary file(s) left by interrupted writers (%s)",
                    target, len(removed), ", ".join(removed[:3]) + (" ..." if len(removed) > 3 else ""))


def is_complete(path: str | os.PathLike, group: str | None = None) -> bool:
    """True when the store exists and its ``complete`` flag is set (False for anything else)."""
    try:
        return bool(decode(_open_group(location(path), group).attrs).get("complete", False))
    except Exception:  # noqa: BLE001 - missing/unreadable store is simply not complete
        return False


@with_storage_errors("cannot read")
def missing_regions(path: str | os.PathLike, group: str | None = None) -> list[tuple[int, int]]:
    """Regions ``(region_y, region_x)`` of ``counts`` not yet recorded as written.

    All regions are missing when the template itself is incomplete; raises :class:`GanxError`
    if ``path`` is not a ganx-dask store.
    """
    p = location(path)
    try:
        g = _open_group(p, group)
    except Exception as exc:  # noqa: BLE001
        raise GanxError(f"{str(_group_dir(p, group))!r} is not a Zarr store ({exc})") from exc
    try:
        record = _record_path(g)
    except KeyError:
        record = None
    if record is None or not decode(g.attrs).get("template_complete", False):
        if record is not None:
            shape = g[record].shape
        elif CUBE in g and "region_size" in g.attrs:
            shape = _n_regions(g[CUBE].shape, g.attrs["region_size"])
        else:
            raise GanxError(f"{str(_group_dir(p, group))!r} has no region record")
        return [(ry, rx) for ry in range(shape[0]) for rx in range(shape[1])]
    rec = np.asarray(g[record][...], dtype=bool)
    return [(int(a), int(b)) for a, b in zip(*np.nonzero(~rec), strict=True)]


@with_storage_errors("cannot read")
def open_cube(path: str | os.PathLike, group: str | None = None, *,
              decode_attrs: bool = False) -> xr.Dataset:
    """Open a store lazily (dask arrays with the zarr chunks).

    Warns :class:`~ganx_dask.errors.IncompleteStoreWarning` when the store's ``complete`` flag is
    not set (an interrupted run: missing regions read as zeros).  The internal region record is
    not part of the returned dataset (see :func:`missing_regions`).

    Parameters
    ----------
    path : str or path-like
        The store.
    group : str, optional
        Group inside the store.
    decode_attrs : bool
        ``False`` (default): attrs encoded as every ganx-dask dataset carries them
        (:mod:`ganx_dask.attrs`; nested values as JSON text, so ``ds.to_netcdf()`` works — also
        for a 0.1.0 store, whose nested dicts are encoded on reading).  ``True``: the Python
        view, nested values as dicts/lists (:func:`ganx_dask.attrs.decode`).
    """
    p = location(path)
    if not _group_dir(p, group).exists():
        if p.is_remote and not p.bucket_exists():
            raise GanxError(f"cannot read {p}: bucket {p.bucket!r} does not exist")
        raise GanxError(f"store {str(_group_dir(p, group))!r} does not exist")
    try:
        ds = xr.open_zarr(p.zarr_store(read_only=True), group=group, zarr_format=3,
                          consolidated=_is_consolidated(p, group),
                          drop_variables=[_LEGACY_RECORD])
    except Exception as exc:  # noqa: BLE001
        if p.is_remote and isinstance(exc, OSError):
            raise remote_error(p, "cannot read", exc) from None
        raise GanxError(f"cannot open {str(_group_dir(p, group))!r} as a Zarr store: {exc}") from exc
    ds = encode_dataset(ds)
    if decode_attrs:
        ds.attrs = decode(ds.attrs)
    if not ds.attrs.get("complete", False):
        warnings.warn(
            f"store {str(_group_dir(p, group))!r} is incomplete (generation was interrupted); "
            "finish it with resume=True / --resume",
            IncompleteStoreWarning,
            stacklevel=2,
        )
    return ds
