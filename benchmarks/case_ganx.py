"""One ganx 0.0.2 run (the reference), as the benchmark's subprocess; runs in benchmarks/.venv-ganx.

Loads the image with Pillow, builds ``ganx.XRF_generator_classes.XRFGenerator`` with the paper's
parameters and calls ``generate_xrf()`` (its output stays in memory: ganx has no writer).  One
crash of ganx is patched (top energy bin never drawn; see below) without changing its cost.
Prints one JSON line with the stage times.  Must not import ganx_dask.

    .venv-ganx/bin/python benchmarks/case_ganx.py --db pigments.json --image IMG.png
"""

from __future__ import annotations

import argparse
import json
import time

T0 = time.perf_counter()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--db", required=True, help="ganX pigment database JSON")
    ap.add_argument("--image", required=True)
    ap.add_argument("--counts", type=int, default=400)
    ap.add_argument("--channels", type=int, default=1024)
    ap.add_argument("--n-start", type=int, default=10)
    ap.add_argument("--delta", type=int, default=2)
    ap.add_argument("--patience", type=int, default=-1)
    ap.add_argument("--score-batch", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=0,
                    help="side of a top-left crop run first, outside the timed stage (0: none)")
    a = ap.parse_args()

    import contextlib
    import io

    import numpy as np
    from ganx.XRF_generator_classes import XRFGenerator
    from PIL import Image

    # ganx 0.0.2 crashes ("cannot reshape") whenever the top energy bin is never drawn, because
    # bincount2d sizes its output by the largest drawn index.  Same function with the bin count
    # given explicitly: identical algorithm and cost (rng.choice(p=) + np.add.at), no crash.
    def get_xrf_distr_2D(num_of_counts, distr, size):  # noqa: N802 - ganx's name
        rng = np.random.default_rng()
        return XRFGenerator.bincount2d(
            rng.choice(distr.size, size=(size[0] * size[1], num_of_counts), p=distr, axis=-1),
            bins=distr.size,
        ).reshape(size[0], size[1], distr.size)

    XRFGenerator.get_xrf_distr_2D = staticmethod(get_xrf_distr_2D)
    t_import = time.perf_counter() - T0
    rgb = np.asarray(Image.open(a.image).convert("RGB"))
    with open(a.db) as f:
        db = json.load(f)

    def run(image):
        gen = XRFGenerator(db, image, a.n_start, num_of_counts=a.counts, E_int=[0.5, 38.5],
                           rebin_size=a.channels, delta_N=a.delta, N_patience=a.patience,
                           score_batch=a.score_batch)
        with contextlib.redirect_stdout(io.StringIO()):  # ganx prints one line per cluster
            return gen.generate_xrf()

    t0 = time.perf_counter()
    if a.warmup:
        run(np.ascontiguousarray(rgb[: a.warmup, : a.warmup]))
    t1 = time.perf_counter()
    cube = run(rgb)
    t2 = time.perf_counter()
    print(json.dumps({"shape": list(cube.shape), "dtype": str(cube.dtype),
                      "total_counts": float(cube.sum()), "t_import_s": t_import,
                      "t_warmup_s": t1 - t0, "warmup_px": a.warmup,
                      "t_generate_s": t2 - t1, "t_total_s": t2 - T0}))


if __name__ == "__main__":
    main()
