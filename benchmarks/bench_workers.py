"""Throughput of generation + Zarr writing with 1 and 2 dask worker processes (and the ratio).

Builds the lazy dataset once (the clustering fit is not timed), then for each worker count starts
a ``distributed.LocalCluster`` from a ganx-dask cluster config (processes, 1 thread each,
``MALLOC_TRIM_THRESHOLD_`` unset), warms it up, and times ``store.to_zarr`` into a fresh store.
Prints a table (wall s, Mpix/s, raw GB/s) and the 2-vs-1 ratio; ``--json FILE`` saves it.
``--trim-default`` adds a 2-worker run with distributed's default ``MALLOC_TRIM_THRESHOLD_=65536``
to show what the setting costs.

    python benchmarks/bench_workers.py                 # 1024 x 1024 px, 1024 channels, N = 400
    python benchmarks/bench_workers.py --size 512 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _image(size: int) -> np.ndarray:
    from ganx_dask.cli.generate import demo_image_path
    from ganx_dask.io import read_image

    demo = np.asarray(read_image(demo_image_path()).values)
    reps = (-(-size // demo.shape[0]), -(-size // demo.shape[1]), 1)
    return np.ascontiguousarray(np.tile(demo, reps)[:size, :size])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1024, help="image edge, pixels (default 1024)")
    ap.add_argument("--channels", type=int, default=1024, help="energy channels (default 1024)")
    ap.add_argument("--counts", type=int, default=400, help="photons per pixel (default 400)")
    ap.add_argument("--chunks", type=int, default=256, help="chunk edge, pixels (default 256)")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per setting; best kept")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--trim-default", action="store_true",
                    help="also time 2 workers with distributed's MALLOC_TRIM_THRESHOLD_=65536")
    ap.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    args = ap.parse_args(argv)

    import dask

    from ganx_dask.generator import generate
    from ganx_dask.pipelines.config import validate
    from ganx_dask.scheduling import SCHEMAS, client_from_config
    from ganx_dask.store import to_zarr

    img = _image(args.size)
    with dask.config.set(scheduler="threads"):
        ds = generate(img, seed=1, energy=f"0.5:38.5:{args.channels}", counts=args.counts,
                      chunks=args.chunks, n_start=10, delta=2)
    raw_gb = ds["counts"].nbytes / 1e9
    settings = [(n, None) for n in args.workers]
    if args.trim_default:
        settings.append((2, 65536))
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="ganx-bench-workers-"))
    try:
        for n, trim in settings:
            cfg = validate({"kind": "local", "workers": n, "threads_per_worker": 1,
                            "memory_limit": "3GiB", "malloc_trim_threshold": trim},
                           SCHEMAS["local"], source="bench")
            best = float("inf")
            with client_from_config(cfg) as client:
                client.submit(sum, [1]).result()  # warm-up: workers started and connected
                for r in range(args.repeat):
                    out = tmp / f"w{n}-{trim}-{r}.zarr"
                    t0 = time.perf_counter()
                    to_zarr(ds, out)
                    best = min(best, time.perf_counter() - t0)
                    shutil.rmtree(out)
            rows.append({"workers": n, "malloc_trim_threshold": trim, "wall_s": best,
                         "mpix_per_s": args.size**2 / best / 1e6, "raw_gb_per_s": raw_gb / best})
            print(f"  {n} worker(s), trim {trim!s:>5}: {best:7.2f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{args.size}x{args.size} px x {args.channels} channels, N = {args.counts}, "
          f"chunks {args.chunks}, raw {raw_gb:.2f} GB, best of {args.repeat}\n")
    print("| workers | MALLOC_TRIM_THRESHOLD_ | wall s | Mpix/s | raw GB/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['malloc_trim_threshold'] or 'unset'} | {r['wall_s']:.2f} | "
              f"{r['mpix_per_s']:.3f} | {r['raw_gb_per_s']:.3f} |")
    one = next((r for r in rows if r["workers"] == 1 and r["malloc_trim_threshold"] is None), None)
    two = next((r for r in rows if r["workers"] == 2 and r["malloc_trim_threshold"] is None), None)
    result = {"size": args.size, "channels": args.channels, "counts": args.counts,
              "chunks": args.chunks, "raw_gb": raw_gb, "rows": rows}
    if one and two:
        result["ratio_2_vs_1"] = one["wall_s"] / two["wall_s"]
        print(f"\nthroughput ratio 2 workers / 1 worker: {result['ratio_2_vs_1']:.2f}x")
    trimmed = next((r for r in rows if r["malloc_trim_threshold"] == 65536), None)
    if trimmed and two:
        result["trim_default_slowdown"] = trimmed["wall_s"] / two["wall_s"]
        print(f"distributed's default trim (65536) is {result['trim_default_slowdown']:.2f}x "
              "slower with 2 workers")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
