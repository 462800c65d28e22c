"""The Monte Carlo sampler alone, against ceilings this script measures itself (one core).

Ceilings:
* memory bandwidth: ``np.copyto`` between existing 256 MiB buffers (array bytes/s) and
  ``fill(0)`` (write-only); the sampler must at least write its ``P·E`` output once;
* RNG: ``Generator.random(out=buf)`` — the uniforms alone, one per photon, which every
  sampler consuming our random stream has to draw.

Sampler: :func:`ganx_dask.sampling.sample_block` on a 256×256 block of random labels (K=12
clusters, N=400 photons, E=1024 channels, uint16), numpy and numba engines, fixed and poisson.

Count levels (issue 12): µs of CPU per pixel at 400 / 4 000 / 26 000 / 100 000 photons per
pixel (E=1024, one 64×64 tile, one core), "before" = the per-photon alias path forced for every
tile, "after" = the count-adaptive choice (:func:`ganx_dask.per_channel.use_per_channel`);
on per-channel levels also "no_tables" (the same path with one ``rng.poisson`` variate per big
channel, ``per_channel.TABLES = False``: the A/B of the per-row Poisson tables in one process)
and "tables_build_ms", the one-off construction of the tables (memoised: the tiles of an image
share them), with their size.
CPU time (``time.process_time``), the minimum of the repetitions; the load average is printed
with the results because the machine is shared.
Prints one JSON line; ``python benchmarks/bench_sampler.py [--quick] [--levels-only]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def _best(fn, reps: int, clock=time.perf_counter) -> float:
    """Shortest of ``reps`` runs of ``fn`` on ``clock`` (wall by default), s."""
    best = float("inf")
    for _ in range(reps):
        t = clock()
        fn()
        best = min(best, clock() - t)
    return best


def _workload(rng, K: int, E: int, side: int):
    """Peaky random spectra (20 empty low channels), their alias tables and random labels."""
    from ganx_dask import sampling

    d = rng.random((K, E)) ** 8
    d[:, :20] = 0.0
    d /= d.sum(axis=1, keepdims=True)
    prob, alias = sampling.alias_tables(d)
    labels = rng.integers(0, K, size=(side, side)).astype(np.int16)
    return prob, alias, labels


def rng_ns_per_uniform(reps: int) -> float:
    """ns per float64 uniform of ``Generator.random(out=buf)`` (PCG64, one core): the host's
    speed for the random numbers every sampler draws (2026-11-26: 1.55 ns; compare figures of
    different days through it)."""
    rng = np.random.default_rng(0)
    buf = np.empty(1 << 22)
    return _best(lambda: rng.random(out=buf), reps) / buf.size * 1e9


def count_levels(reps: int = 3, levels=(400, 4000, 26000, 100000)) -> dict:
    """µs of CPU per pixel before (per-photon forced) and after (count-adaptive), per level."""
    from ganx_dask import per_channel, sampling

    E, K, side = 1024, 12, 64
    prob, alias, labels = _workload(np.random.default_rng(0), K, E, side)
    engines = ["numpy"] + (["numba"] if sampling.has_numba() else [])
    res: dict = {}
    threshold = per_channel.MIN_PHOTONS
    for N in levels:
        for model in ("fixed", "poisson"):
            for engine in engines:
                row = {}
                pcl = per_channel.use_per_channel(N, E)
                variants = [("before", 10**12, True), ("after", threshold, True)]
                if pcl:
                    variants.append(("no_tables", threshold, False))
                for when, floor, tables in variants:
                    per_channel.MIN_PHOTONS = floor
                    per_channel.TABLES = tables

                    def call(N=N, model=model, engine=engine):
                        return sampling.sample_block(labels, prob, alias, seed=1, counts=N,
                                                     count_model=model, engine=engine)

                    call()  # warm-up (numba compile, page faults)
                    row[when] = round(_best(call, reps, time.process_time) / labels.size * 1e6, 2)
                per_channel.MIN_PHOTONS = threshold
                per_channel.TABLES = True
                row["path"] = "per-channel" if pcl else "per-photon"
                if pcl and engine == "numpy":
                    d = sampling.alias_distributions(prob, alias)
                    lam = N - N ** 0.5 if model == "fixed" else float(N)
                    tab = per_channel._Split(d, lam, shared=True).tables
                    row["tables_build_ms"] = round(tab.build_seconds * 1e3, 1)
                    row["tables_MB"] = round(tab.nbytes / 1e6, 2)
                    row["tables_cells"] = int(tab.prob.size)
                    row["big_channels"] = int(tab.mu.size)
                res[f"{N}/{model}/{engine}"] = row
    res["loadavg"] = os.getloadavg()
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--levels-only", action="store_true",
                    help="only the count levels (µs/pixel before/after)")
    a = ap.parse_args(argv)
    reps = 3 if a.quick else 5
    from ganx_dask import sampling

    out: dict = {"loadavg_start": os.getloadavg()}
    out["rng_ns_per_uniform"] = rng_ns_per_uniform(reps)
    if a.levels_only:
        out["count_levels_us_per_pixel"] = count_levels(reps)
        print(json.dumps(out))
        return out
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
    out["rng_ceiling_Mpix_s"] = 1.0 / (N * out["rng_ns_per_uniform"] * 1e-9) / 1e6
    out["write_ceiling_Mpix_s"] = out["fill_GBps"] * 1e9 / (E * 2) / 1e6

    prob, alias, labels = _workload(rng, K, E, side)
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
    out["count_levels_us_per_pixel"] = count_levels(reps)
    out["params"] = {"N": N, "E": E, "K": K, "pixels": P, "dtype": "uint16"}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
