"""One ganx-dask run, end to end, as the benchmark's subprocess: image file -> Zarr store.

Prints one JSON line with the stage times (import, warm-up, generate = read + cluster + match,
write = Monte Carlo + encode + store), the cube size and the stored bytes.  Wall time, CPU time
and peak RSS of the whole process tree are measured from outside (``_measure.py``).

``--warmup PX`` first runs the same pipeline on the image's top-left PX × PX crop (written to a
scratch store), so that the timed run finds the modules ganx-dask imports on first use
(scikit-learn, distributed, the numba kernels), numba's JIT cache and the rendered library spectra
loaded: the per-image cost of a long-lived process (a notebook, a batch worker).

``--preload MOD,MOD`` imports those modules with ganx-dask, before the clock of the stages
starts: ``run.py`` preloads the libraries that ganx 0.0.2 also uses and imports when it is
imported (scikit-learn's ``sklearn.cluster``, scikit-image's ``skimage.color``), so that both
tools' stage times start from the same loaded stack; what only ganx-dask loads (numba and its
JIT cache, ``distributed`` when used, the rendered spectra) stays inside its stages.

    python benchmarks/case_ganx_dask.py --image IMG --out STORE.zarr [--scheduler threads|local:N]
                                        [--writer store|xarray] [--warmup PX] [--preload MODS]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

T0 = time.perf_counter()


def _du(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--image", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--scheduler", default="threads",
                    help="threads | synchronous | local:N (LocalCluster of N 1-thread workers)")
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--chunks", type=int, default=256)
    ap.add_argument("--counts", type=float, default=400)
    ap.add_argument("--energy", default="0.5:38.5:1024")
    ap.add_argument("--n-start", type=int, default=10)
    ap.add_argument("--delta", type=int, default=2)
    ap.add_argument("--patience", type=int, default=-1)
    ap.add_argument("--score-batch", type=int, default=1024)
    ap.add_argument("--library", default="paper", help="paper (the 9 pigments) | default")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--writer", default="store", choices=("store", "xarray"),
                    help="store: ganx_dask.to_zarr; xarray: the plain ds.to_zarr(path)")
    ap.add_argument("--warmup", type=int, default=0,
                    help="side of a crop run first, untimed by the other stages (0: none)")
    ap.add_argument("--preload", default="",
                    help="comma-separated modules imported before the stages' clock starts")
    a = ap.parse_args(argv)

    import contextlib
    import importlib

    import dask

    from ganx_dask import generate, store
    from ganx_dask.pigments.library import PAPER_PIGMENTS, default_library

    preload = [m for m in a.preload.split(",") if m]
    for m in preload:
        importlib.import_module(m)
    t_import = time.perf_counter() - T0
    lib = default_library()
    if a.library == "paper":
        lib = lib.select(PAPER_PIGMENTS)
    ctx: contextlib.AbstractContextManager
    if a.scheduler.startswith("local:"):
        from ganx_dask.scheduling import cluster_from_config

        n = int(a.scheduler.split(":")[1])
        cfg = os.path.join(tempfile.mkdtemp(prefix="ganx-bench-"), "local.yaml")
        with open(cfg, "w") as f:
            f.write(f"kind: local\nworkers: {n}\nthreads_per_worker: 1\nmemory_limit: 4GiB\n")
        ctx = cluster_from_config(cfg)
    else:
        ctx = dask.config.set(scheduler=a.scheduler)
    counts = int(a.counts) if a.counts == int(a.counts) else a.counts

    def run(image, out):
        ds = generate(image, lib, seed=a.seed, energy=a.energy, counts=counts,
                      n_start=a.n_start, delta=a.delta, patience=a.patience,
                      score_batch=a.score_batch, chunks=a.chunks, engine=a.engine)
        t = time.perf_counter()
        if a.writer == "xarray":
            ds.to_zarr(out, mode="w")  # the encoding generate() put on `counts` applies
        else:
            store.to_zarr(ds, out, overwrite=True)
        return ds, t

    with ctx:
        t0 = time.perf_counter()
        if a.warmup:
            from PIL import Image

            scratch = tempfile.mkdtemp(prefix="ganx-warmup-")
            crop = os.path.join(scratch, "crop.png")
            with Image.open(a.image) as im:
                im.convert("RGB").crop((0, 0, a.warmup, a.warmup)).save(crop)
            run(crop, os.path.join(scratch, "warmup.zarr"))
            shutil.rmtree(scratch, ignore_errors=True)
        t1 = time.perf_counter()
        ds, t2 = run(a.image, a.out)
        t3 = time.perf_counter()
    c = ds["counts"]
    raw = int(c.size * c.dtype.itemsize)
    stored = _du(os.path.join(a.out, "counts"))
    res = {
        "shape": list(c.shape), "dtype": str(c.dtype), "raw_bytes": raw, "stored_bytes": stored,
        "ratio": raw / max(stored, 1), "t_import_s": t_import, "t_warmup_s": t1 - t0,
        "warmup_px": a.warmup, "t_generate_s": t2 - t1,
        "t_write_s": t3 - t2, "t_total_s": t3 - T0, "k": int(ds.sizes["cluster"]),
        "scheduler": a.scheduler, "engine": a.engine, "writer": a.writer, "preload": preload,
    }
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    import gc
    import sys

    main()
    sys.stdout.flush()
    gc.freeze()  # exit as the `ganx-dask` console script does (ganx_dask.cli.console_main)
