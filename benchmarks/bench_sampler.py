"""The Monte Carlo sampler alone, against ceilings this script measures itself (one core).

Ceilings:
* memory bandwidth: ``np.copyto`` between existing 256 MiB buffers (array bytes/s) and
  ``fill(0)`` (write-only); the sampler must at least write its ``P·E`` output once;
* RNG: ``Generator.random(out=buf)`` — the uniforms alone, one per photon, which every
  sampler consuming our random stream has to draw.

Sampler: :func:`ganx_dask.sampling.sample_block` on a 256×256 block of random labels (K=12
clusters, N=400 photons, E=1024 channels, uint16), numpy and numba engines, fixed and poisson.
Prints one JSON line; ``python benchmarks/bench_sampler.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _best(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    reps = 3 if a.quick else 5
    from ganx_dask import sampling

    out: dict = {}
    n = (64 if a.quick else 256) << 20
    src = np.ones(n // 8)
    dst = np.empty_like(src)
    dst.fill(1.0)
    out["copy_GBps"] = n / _best(lambda: np.copyto(dst, src), reps) / 1e9
    out["fill_GBps"] = n / _best(lambda: dst.fill(0.0), reps) / 1e9
    src = dst = None  # release 2 × n bytes before the sampler runs

    N, E, K, side = 400, 1024, 12, 256
    P = side * side
    rng = np.random.default_rng(0)
    buf = np.empty(1 << 22)
    t = _best(lambda: rng.random(out=buf), reps)
    out["rng_ns_per_uniform"] = t / buf.size * 1e9
    out["rng_ceiling_Mpix_s"] = 1.0 / (N * t / buf.size) / 1e6
    out["write_ceiling_Mpix_s"] = out["fill_GBps"] * 1e9 / (E * 2) / 1e6

    d = rng.random((K, E)) ** 8
    d[:, :20] = 0.0
    d /= d.sum(axis=1, keepdims=True)
    prob, alias = sampling.alias_tables(d)
    labels = rng.integers(0, K, size=(side, side)).astype(np.int16)
    engines = ["numpy"] + (["numba"] if sampling.has_numba() else [])
    runs = {}
    for engine in engines:
        for model in ("fixed", "poisson"):
            def call(engine=engine, model=model):
                return sampling.sample_block(labels, prob, alias, seed=1, counts=N,
                                             count_model=model, engine=engine)

            call()  # warm-up (numba compile / page faults)
            t = _best(call, reps)
            runs[f"{engine}/{model}"] = {
                "Mpix_s": P / t / 1e6,
                "Gvox_s": P * E / t / 1e9,
                "ns_per_photon": t / (P * N) * 1e9,
                "of_rng_ceiling": (P / t / 1e6) / out["rng_ceiling_Mpix_s"],
            }
    out["sampler"] = runs
    out["params"] = {"N": N, "E": E, "K": K, "pixels": P, "dtype": "uint16"}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
