"""Benchmark the PyTorch patch loader (prints numbers; not a test).

Builds a local store (one image, ``--size`` × ``--size`` px × ``--channels`` channels, ~N
photons per pixel from a few spectra) in the default layout (256² zarr chunks) and a training
layout (:func:`ganx_dask.ml.rechunk` to 64²), then measures 64² patches/s:

* **ceiling**: the store's raw decode rate — every ``counts`` chunk read and decompressed in
  ``--workers`` processes (disjoint chunks), as patch-equivalents (voxels / 64²·E) per s, the
  best of three ways: zarr into one reused buffer per process (``get_basic_selection(out=…)``),
  zarr into a fresh array per chunk, and the loaders' own reader (``ganx_dask.ml._read_into``:
  chunk bytes fetched through the zarr store, decompressed straight into a reused buffer).
  Each rate is printed too (``ceiling_zarr``, ``ceiling_zarr_fresh``, ``ceiling_direct``; and
  ``ceiling_direct_threads``: the direct reader in ``--workers`` threads of one process);
* **map**: ``DataLoader(PatchDataset(..., "abundance"), shuffle=True, num_workers=W,
  batch_size=16, persistent_workers=True)`` — random access, each patch reads the chunks it
  touches;
* **stream**: ``DataLoader(PatchDataset(...).stream(), num_workers=W, batch_size=16)`` — each
  chunk read once, shuffled within a 2-chunk buffer;
* **stream_batched**: ``DataLoader(PatchDataset(...).stream(batch_size=16), batch_size=None,
  num_workers=W)`` — the same batches, built by the workers in shared memory (no collate copy);
* **stream_batched_u16_hwc**: the same with ``dtype=torch.uint16, layout="hwc"`` (the stored
  counts, channels last: no conversion, no transpose, half the bytes between processes);
* **threaded**: ``PatchDataset(...).loader(16, threads=W)`` — the same batches as the stream,
  read by ``W`` threads in this process into recycled buffers (no worker processes);
* **threaded_f32_hwc** / **threaded_u16_hwc**: the same, float32 or the stored uint16 counts
  channels last (no transpose).

Every loader rate is the best epoch after the first (persistent workers, one threaded loader
object kept between epochs: start-up excluded).  Loader items are ``(E, 64, 64)`` tensors (or
``(64, 64, E)``, ``hwc``) plus abundance targets (the conversion and the transfer are part of
the measured cost; the ceiling is decode only).  The machine is shared: each of ``--repeat``
rounds measures the ceiling and every loader in turn (A/B in one run); medians of the rates
and of each loader's share of its round's ceiling are reported with the load average.

Usage::

    python benchmarks/bench_ml.py [--size 512] [--channels 1024] [--workers 2] [--repeat 3]
                                  [--loaders map,threaded,…] [--json OUT] [--store-dir DIR]

Prints the JSON results, then a table: patches/s and % of the ceiling per loader and layout,
with the load average before and after each layout.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

import xarray as xr  # noqa: E402

import ganx_dask  # noqa: E402
from ganx_dask.energy import EnergyAxis  # noqa: E402

PATCH = 64


def make_store(path: Path, size: int, channels: int, photons: int, chunk: int) -> None:
    rng = np.random.default_rng(0)
    k = 6
    labels = (np.add.outer(np.arange(size) // 37, np.arange(size) // 53) % k).astype(np.int16)
    spectra = rng.dirichlet(np.full(channels, 0.05), k)
    cdf = np.cumsum(spectra, 1)
    counts = np.zeros(size * size * channels, np.uint32)
    flat = labels.ravel()
    for c in range(k):
        pix = np.flatnonzero(flat == c)
        ch = np.searchsorted(cdf[c], rng.random((pix.size, photons)))
        ch = np.minimum(ch, channels - 1)
        counts += np.bincount((pix[:, None] * channels + ch).ravel(),
                              minlength=counts.size).astype(np.uint32)
    ax = EnergyAxis(0.5, 38.5, channels)
    ds = xr.Dataset(
        {"counts": (("y", "x", "energy"), counts.astype(np.uint16).reshape(size, size, channels)),
         "labels": (("y", "x"), labels),
         "abundance": (("cluster", "pigment"), rng.dirichlet(np.ones(5), k))},
        coords={"y": np.arange(size), "x": np.arange(size), "energy": ax.to_coord(),
                "cluster": np.arange(k), "pigment": [f"p{i}" for i in range(5)]},
        attrs={"energy_axis": str(ax)})
    ganx_dask.to_zarr(ds, path, region=chunk)


def _decode(args) -> int:
    """Voxels decoded: the chunks ``blocks`` of ``path/counts``, ``how`` = ``zarr`` (into one
    reused buffer), ``zarr_fresh`` (a new array per chunk) or ``direct`` (the loaders' reader)."""
    import zarr
    from zarr.core.buffer import default_buffer_prototype

    from ganx_dask.ml import _read_into

    path, blocks, how = args
    a = zarr.open_array(f"{path}/counts", mode="r")
    cy, cx = a.chunks[:2]
    buf = np.empty(a.chunks, a.dtype)
    out = default_buffer_prototype().nd_buffer.from_numpy_array(buf)
    scratch: dict = {}
    n = 0
    for by, bx in blocks:
        sel = (slice(by * cy, (by + 1) * cy), slice(bx * cx, (bx + 1) * cx))
        if how == "zarr":
            a.get_basic_selection(sel + (slice(None),), out=out)
            n += buf.size
        elif how == "direct":
            n += _read_into(a, sel, scratch, 0).size
        else:
            n += a[sel].size
    return n


def ceiling(path: Path, workers: int, how: str = "zarr", threads: bool = False) -> float:
    """Patch-equivalents per second of raw chunk decoding (:func:`_decode`) in ``workers``
    processes (or threads of this process)."""
    from concurrent.futures import ThreadPoolExecutor

    import zarr

    a = zarr.open_array(f"{path}/counts", mode="r")
    ny, nx = (-(-s // c) for s, c in zip(a.shape[:2], a.chunks[:2], strict=True))
    assert a.shape[0] % a.chunks[0] == 0 and a.shape[1] % a.chunks[1] == 0, "whole chunks only"
    blocks = [(y, x) for y in range(ny) for x in range(nx)]
    jobs = [(str(path), blocks[w::workers], how) for w in range(workers)]
    pool = ThreadPoolExecutor(workers) if threads else mp.get_context("fork").Pool(workers)
    with pool:
        list(pool.map(_decode, jobs))  # warm-up (imports, page cache)
        t0 = time.perf_counter()
        n = sum(pool.map(_decode, jobs))
        dt = time.perf_counter() - t0
    return n / (PATCH * PATCH * a.shape[2]) / dt


LOADERS = ("map", "stream", "stream_batched", "stream_batched_u16_hwc", "threaded",
           "threaded_f32_hwc", "threaded_u16_hwc")


def loader_rate(path: Path, workers: int, kind: str, epochs: int = 3) -> float:
    """Patches/s of the best epoch after the first (persistent workers: start-up excluded)."""
    import torch
    from torch.utils.data import DataLoader

    from ganx_dask.ml import PatchDataset

    kw = {"dtype": torch.uint16, "layout": "hwc"} if kind.endswith("u16_hwc") else \
        {"layout": "hwc"} if kind.endswith("f32_hwc") else {}
    ds = PatchDataset(path, "abundance", patch=PATCH, **kw)
    if kind.startswith("threaded"):
        return _best_epoch(ds.loader(16, threads=workers), epochs)
    bs, kw = 16, {}
    if kind == "map":
        src, kw = ds, {"shuffle": True, "generator": torch.Generator().manual_seed(0)}
    elif kind == "stream":
        src = ds.stream()
    else:
        src, bs = ds.stream(batch_size=16), None
    return _best_epoch(DataLoader(src, batch_size=bs, num_workers=workers,
                                  persistent_workers=workers > 0, **kw), epochs)


def _best_epoch(loader, epochs: int) -> float:
    best = 0.0
    for e in range(epochs):
        t0 = time.perf_counter()
        n = 0
        for x, _ in loader:
            n += x.shape[0]
        if e:
            best = max(best, n / (time.perf_counter() - t0))
    return best


def table(res: dict, loaders: list[str]) -> str:
    """Markdown table: ceiling and loader patches/s (% of the ceiling) per layout."""
    names = {"default": "default (256² chunks)", "train": "training (64² chunks)"}
    # per loader: median patches/s, and the median over rounds of its share of the same
    # round's ceiling
    lines = ["| layout | load avg (1 min, before → after) | decode ceiling | "
             + " | ".join(loaders) + " |", "|---" * (len(loaders) + 3) + "|"]
    for layout in res.get("layout_loadavg", {}):
        r = res[layout]
        la = res["layout_loadavg"][layout]
        cells = [f"{r[f'{k}_patches_s']:.1f} ({100 * r[f'{k}_vs_ceiling']:.0f} %)" for k in loaders]
        lines.append(f"| {names.get(layout, layout)} | {la[0]:.2f} → {la[-1]:.2f} | "
                     f"{r['ceiling_patches_s']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + (f"\n\npatches/s (% of the ceiling), medians of {res['repeat']} "
                               f"round(s); {res['workers']} workers/threads, 64² patches × "
                               f"{res['channels']} channels") if res.get("layout_loadavg") else ""


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="image edge, pixels")
    ap.add_argument("--channels", type=int, default=1024)
    ap.add_argument("--photons", type=int, default=400, help="photons per pixel")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    ap.add_argument("--repeat", type=int, default=3, help="measurement rounds (medians)")
    ap.add_argument("--loaders", default=",".join(LOADERS),
                    help=f"comma-separated subset of {','.join(LOADERS)}")
    ap.add_argument("--layouts", default="default,train", help="which of default,train")
    ap.add_argument("--json", help="write the results to this JSON file")
    ap.add_argument("--store-dir", help="build the two stores here (kept; reused when present) "
                    "instead of a temporary folder")
    args = ap.parse_args(argv)
    loaders = [k for k in args.loaders.split(",") if k]
    if set(loaders) - set(LOADERS):
        ap.error(f"unknown loader(s) {sorted(set(loaders) - set(LOADERS))}")
    from ganx_dask.ml import rechunk

    tmp = Path(args.store_dir or tempfile.mkdtemp(prefix="bench_ml_"))
    try:
        t0 = time.perf_counter()
        if not (tmp / "train.zarr").exists():
            make_store(tmp / "default.zarr", args.size, args.channels, args.photons, 256)
            rechunk(tmp / "default.zarr", tmp / "train.zarr", chunk=PATCH)
        build = time.perf_counter() - t0
        res = {"size": args.size, "channels": args.channels, "photons": args.photons,
               "workers": args.workers, "repeat": args.repeat,
               "patches_per_epoch": (args.size // PATCH) ** 2, "build_s": round(build, 1)}
        load = [os.getloadavg()]
        for layout in args.layouts.split(","):
            res.setdefault("layout_loadavg", {})[layout] = [round(os.getloadavg()[0], 2)]
            p = tmp / f"{layout}.zarr"
            runs: dict[str, list[float]] = {}
            for _ in range(args.repeat):
                ways = {f"ceiling_{how}": ceiling(p, args.workers, how)
                        for how in ("zarr", "zarr_fresh", "direct")}
                ways["ceiling_direct_threads"] = ceiling(p, args.workers, "direct", threads=True)
                runs.setdefault("ceiling", []).append(max(ways.values()))
                for k, v in ways.items():
                    runs.setdefault(k, []).append(v)
                for kind in loaders:
                    runs.setdefault(kind, []).append(loader_rate(p, args.workers, kind))
                load.append(os.getloadavg())
            res["layout_loadavg"][layout].append(round(os.getloadavg()[0], 2))
            med = {k: float(np.median(v)) for k, v in runs.items()}
            res[layout] = {
                **{f"{k}_patches_s": round(v, 1) for k, v in med.items()},
                # the share of the ceiling measured in the same round (A/B), median of rounds
                **{f"{k}_vs_ceiling": round(float(np.median(
                    np.divide(runs[k], runs["ceiling"]))), 3) for k in loaders},
                "runs": {k: [round(x, 1) for x in v] for k, v in runs.items()}}
        res["loadavg_1min"] = [round(v[0], 2) for v in load]
        res["loadavg"] = [round(v, 2) for v in os.getloadavg()]
    finally:
        if not args.store_dir:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(res, indent=1))
    print(table(res, loaders))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
