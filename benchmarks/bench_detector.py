"""Benchmark the detector effects inside the sampler (prints numbers; not a test).

CPU time (``time.process_time``) of the calling thread's process, minimum over round-robin
repeats; the dask layer is not involved (``sampling.sample_block`` on one block).

* Sampler throughput (one core, one 256 × 256 block, N = 400 photons/pixel, E = 1024 channels,
  12 clusters, random labels) without effects and with pile-up at several count rates
  (pulse-pair resolution 500 ns), for each available engine; the ratio to the plain sampler is
  the cost of pile-up (target ≤ 1.5×).
* Beam-spot blur: the same block with FWHM 2 and 5 pixels; CPU seconds per raw GB of counts.
* Dead time (luminosity model): the same with a non-paralyzable dead time.

Usage::

    python benchmarks/bench_detector.py [--size 256] [--counts 400] [--repeat 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

from ganx_dask import detector as det  # noqa: E402
from ganx_dask import sampling  # noqa: E402
from ganx_dask.energy import EnergyAxis  # noqa: E402


def _spectra(K: int, E: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    d = rng.random((K, E)) ** 8
    d[:, :20] = 0.0
    return d / d.sum(axis=1, keepdims=True)


def _cpu(fn) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256, help="block edge, pixels")
    ap.add_argument("--counts", type=int, default=400, help="photons per pixel")
    ap.add_argument("--channels", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", help="write the results to this JSON file")
    args = ap.parse_args(argv)
    size, N, E = args.size, args.counts, args.channels
    axis = EnergyAxis(0.5, 38.5, E)
    spectra = _spectra(12, E)
    prob, alias = sampling.alias_tables(spectra)
    labels = np.random.default_rng(1).integers(0, 12, size=(size, size)).astype(np.int16)
    scale = np.random.default_rng(2).uniform(0.5, 1.0, size=(size, size))
    raw_gb = size * size * E * 2 / 1e9
    photons = size * size * N
    engines = ["numpy"] + (["numba"] if sampling.has_numba() else [])
    cases = []  # (name, engine, fn, baseline name)

    def add(name, engine, detector, count_model="fixed", labels_in=labels, base=None):
        kw = {"scale": scale} if count_model == "luminosity" else {}

        def fn():
            return sampling.sample_block(
                labels_in, prob, alias, seed=1, counts=N, count_model=count_model,
                tile=64, engine=engine, detector=detector, energy_edges=axis.edges, **kw)

        cases.append((name, engine, fn, base))

    for engine in engines:
        add("plain", engine, None)
        for rate in (1e3, 1e4, 1e5, 5e5):
            d = det.DetectorEffects(pulse_pair_ns=500, input_rate_cps=rate)
            p = float(d.link_probability(N, N))
            add(f"pile-up {rate:.0e} cps (p={p:.1e})", engine, d, base="plain")
        for fwhm in (2.0, 5.0):
            d = det.DetectorEffects(blur_fwhm_px=fwhm)
            padded = np.pad(labels, d.blur_radius, constant_values=-1)
            add(f"blur FWHM {fwhm:g} px", engine, d, labels_in=padded, base="plain")
        add("luminosity", engine, None, count_model="luminosity")
        d = det.DetectorEffects(dead_time_model="nonparalyzable", dead_time_us=2, dwell_ms=10)
        add("luminosity + dead time", engine, d, count_model="luminosity", base="luminosity")
    for _, _, fn, _ in cases:  # warm-up: numba compilation, scratch buffers, page faults
        fn()
    times = {(c[0], c[1]): [] for c in cases}
    for _ in range(args.repeat):  # round-robin, so machine-load drifts hit every case alike
        for name, engine, fn, _ in cases:
            times[(name, engine)].append(_cpu(fn))
    rows = []
    for name, engine, _, base in cases:
        cpu = min(times[(name, engine)])
        row = {"case": name, "engine": engine, "cpu_s": cpu,
               "Mphotons_per_s": photons / cpu / 1e6, "cpu_s_per_raw_GB": cpu / raw_gb}
        if base is not None:
            row["ratio_to_plain"] = cpu / min(times[(base, engine)])
        rows.append(row)

    print(f"block {size}x{size}, N={N}, E={E}: {photons / 1e6:.1f} M photons, "
          f"{raw_gb * 1e3:.0f} MB raw (uint16); one core, min CPU time of {args.repeat} round-robin runs")
    print(f"{'case':38s} {'engine':6s} {'CPU s':>7s} {'Mphot/s':>8s} {'CPU-s/GB':>9s} {'x plain':>8s}")
    for r in rows:
        ratio = f"{r['ratio_to_plain']:.2f}" if "ratio_to_plain" in r else ""
        print(f"{r['case']:38s} {r['engine']:6s} {r['cpu_s']:7.3f} {r['Mphotons_per_s']:8.1f} "
              f"{r['cpu_s_per_raw_GB']:9.2f} {ratio:>8s}")
    result = {"size": size, "counts": N, "channels": E, "rows": rows}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    main()
