"""Batch throughput: many small images against one big image of the same pixels (issue 12).

    python benchmarks/bench_batch.py                 # 64 × 256² vs 1 × 2048², then 1000 × 64²
    python benchmarks/bench_batch.py --small-only    # only the 1000 × 64² case
    python benchmarks/bench_batch.py --tiles 16 --side 1024   # quicker: 16 × 256² vs 1 × 1024²

The big image is the bundled demo image resized to ``side``²; the small images are its
``tiles``² crops (exactly the same pixels).  Each case is one ``ganx-dask batch`` process (same
command, same scheduler: the default, worker processes, or ``--scheduler``) measured from outside (``_measure.py``: wall, CPU of
the process tree, peak RSS); utilisation = CPU-s / (wall-s × cores).  The 64² case prints
images/s and where the time goes (``cProfile`` of an in-process run, top cumulative entries).
Parameters: N=400, 1024 channels, N_start=10, δ=2 (the benchmark's ``PARAMS``).  Prints the load
average: the machine is shared, so compare the CPU-s ratios, which are less load-sensitive.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _measure import run_measured  # noqa: E402

PARAMS = {"counts": 400, "energy": "0.5:38.5:1024", "n_start": 10, "delta": 2, "patience": -1,
          "score_batch": 1024}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def make_tiles(work: Path, side: int, tile: int) -> tuple[Path, Path]:
    """``big.png`` (side²) and a folder of its (side/tile)² crops of tile² pixels."""
    import numpy as np
    from PIL import Image

    demo = Image.open(ROOT / "ganx_dask" / "data" / "demo.png").convert("RGB")
    arr = np.asarray(demo.resize((side, side), Image.BILINEAR))
    big_dir = work / f"big{side}"
    if not big_dir.exists():  # the 64² case may reuse the side of the first case
        big_dir.mkdir()
        Image.fromarray(arr).save(big_dir / "big.png")
    small = work / f"tiles{tile}"
    small.mkdir()
    for i in range(side // tile):
        for j in range(side // tile):
            Image.fromarray(arr[i * tile:(i + 1) * tile, j * tile:(j + 1) * tile]).save(
                small / f"t{i:03d}_{j:03d}.png")
    return big_dir, small


def batch_cmd(images: Path, out: Path, extra: list[str] = ()) -> list[str]:
    cmd = [sys.executable, "-m", "ganx_dask", "batch", str(images), "-o", str(out), "--seed", "1"]
    for k, v in PARAMS.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    return cmd + list(extra)


def measure(images: Path, out: Path, n_images: int, extra: list[str] = ()) -> dict:
    r = run_measured(batch_cmd(images, out, extra), env=dict(os.environ))
    cores = os.cpu_count() or 1
    res = {"images": n_images, "wall_s": r["wall_s"], "cpu_s": r["cpu_s"],
           "peak_rss_MB": r["peak_rss_bytes"] / 1e6, "returncode": r["returncode"],
           "utilisation": r["cpu_s"] / (r["wall_s"] * cores), "images_per_s": n_images / r["wall_s"]}
    if r["returncode"] != 0:
        res["stderr"] = r["stderr"][-2000:]
    shutil.rmtree(out, ignore_errors=True)
    return res


def profile_small(images: Path, out: Path, top: int = 25) -> str:
    """cProfile of an in-process batch (cumulative), for 'where the time goes'."""
    code = (
        "import cProfile, pstats, io, sys, dask\n"
        "from ganx_dask.pipelines.batch import run_batch\n"
        f"gen = {PARAMS!r}\n"
        "pr = cProfile.Profile(); pr.enable()\n"
        f"run_batch([{str(images)!r}], {str(out)!r}, seed=1, generation=gen)\n"
        "pr.disable(); s = io.StringIO()\n"
        f"pstats.Stats(pr, stream=s).sort_stats('tottime').print_stats({top})\n"
        "print(s.getvalue())\n"
    )
    import subprocess

    # synchronous: a profile of the main thread only sees the work when it runs there
    env = dict(os.environ, DASK_SCHEDULER="synchronous")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    shutil.rmtree(out, ignore_errors=True)
    return p.stdout[-6000:] + p.stderr[-2000:]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--side", type=int, default=2048)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--n-small", type=int, default=1000, help="images of the 64² case (0: skip)")
    ap.add_argument("--small-only", action="store_true")
    ap.add_argument("--profile", action="store_true", help="profile the 64² case")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--scheduler", default=None, help="ganx-dask batch --scheduler (default: "
                    "the command's default)")
    a = ap.parse_args(argv)
    extra = ["--scheduler", a.scheduler] if a.scheduler else []
    work = Path(tempfile.mkdtemp(prefix="ganx-bench-batch-", dir=a.workdir))
    res: dict = {"load_start": _load(), "cores": os.cpu_count(), "params": PARAMS,
                 "scheduler": a.scheduler or "default"}
    try:
        if not a.small_only:
            big, tiles = make_tiles(work, a.side, a.tile)
            n = (a.side // a.tile) ** 2
            res["one_big"] = measure(big, work / "big.zarr", 1, extra)
            print(f"1 × {a.side}²: {json.dumps(res['one_big'])}  load {_load()}", flush=True)
            res["tiles"] = measure(tiles, work / "tiles.zarr", n, extra)
            print(f"{n} × {a.tile}²: {json.dumps(res['tiles'])}  load {_load()}", flush=True)
            b, t = res["one_big"], res["tiles"]
            res["wall_ratio"] = t["wall_s"] / b["wall_s"]
            res["cpu_ratio"] = t["cpu_s"] / b["cpu_s"]
            print(f"{n} × {a.tile}² / 1 × {a.side}²: wall {res['wall_ratio']:.2f}×, "
                  f"CPU {res['cpu_ratio']:.2f}× (target ≤ 1.3× both); utilisation "
                  f"{t['utilisation']:.0%} vs {b['utilisation']:.0%}", flush=True)
        if a.n_small:
            side = 64
            per_row = int(round(a.n_small ** 0.5))
            rows = -(-a.n_small // per_row)
            _, small = make_tiles(work, side * max(per_row, rows), side)
            files = sorted(small.iterdir())
            for f in files[a.n_small:]:
                f.unlink()
            res["small64"] = measure(small, work / "s64.zarr", a.n_small, extra)
            s = res["small64"]
            print(f"{a.n_small} × 64²: {s['images_per_s']:.1f} images/s, wall {s['wall_s']:.1f} s, "
                  f"CPU {s['cpu_s']:.1f} s, utilisation {s['utilisation']:.0%}, peak RSS "
                  f"{s['peak_rss_MB']:.0f} MB  load {_load()}", flush=True)
            if a.profile:
                print(profile_small(small, work / "p64.zarr"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["load_end"] = _load()
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
