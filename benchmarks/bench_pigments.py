"""Benchmark: pigment-library rendering and physics (prints numbers; not a test).

* load the bundled default library (JSON, precomputed components);
* render the whole library onto 2048 channels over 0.5-38.5 keV (first call builds the cached
  continuum response matrix; later calls reuse it) — target < 1 s;
* compute the whole library for a non-default instrument with xraylib (the ``"portable-ag"``
  preset and a custom W-anode instrument), then render it;
* the cost of secondary fluorescence per pigment (on vs off, ``"portable-ag"``).

Usage::

    python benchmarks/bench_pigments.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import time


def _t(fn, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="pigment-library benchmark")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)

    from ganx_dask.pigments import default_library
    from ganx_dask.pigments import physics as ph
    from ganx_dask.pigments.library import _load_default

    _, t_load = _t(_load_default)
    lib, t_copy = _t(default_library)
    print(f"default library: {len(lib)} pigments; load {t_load:.3f} s (first), copy {t_copy:.4f} s")
    spec = "0.5:38.5:2048"
    _, t_first = _t(lib.spectra, spec)
    runs = [_t(lib.spectra, spec)[1] for _ in range(args.repeat)]
    print(f"render whole library onto 2048 channels: first {t_first:.3f} s, "
          f"then min {min(runs):.3f} s / median {sorted(runs)[len(runs) // 2]:.3f} s "
          f"({1e3 * min(runs) / len(lib):.1f} ms per pigment)")
    runs1k = [_t(lib.spectra, "0.5:38.5:1024")[1] for _ in range(args.repeat)]
    print(f"render whole library onto 1024 channels: min {min(runs1k):.3f} s")

    for inst in (ph.Instrument.preset("portable-ag"),
                 ph.Instrument(anode="W", kv=50, filters=(("Al", 100.0),), name="W 50 kV + Al")):
        ph._COMPONENT_CACHE.clear()
        _, t_tube = _t(ph.tube_spectrum, inst)
        _, t_comp = _t(lambda inst=inst: [ph.compute_components(p, inst) for p in lib])
        _, t_rend = _t(lib.spectra, spec, inst)
        _, t_again = _t(lib.spectra, spec, inst)
        print(f"instrument {inst.name!r}: tube {t_tube * 1e3:.1f} ms; compute all "
              f"{t_comp:.3f} s ({1e3 * t_comp / len(lib):.1f} ms per pigment); "
              f"spectra (cached components) {t_rend:.3f} s first, {t_again:.3f} s again")

    # secondary fluorescence: cost per pigment, on vs off (best of --repeat, fresh caches)
    inst_on = ph.Instrument.preset("portable-ag")
    inst_off = inst_on.replace(secondary_fluorescence=False)
    per = {}
    for p in lib:
        best = []
        for inst in (inst_off, inst_on):
            ts = []
            for _ in range(max(1, args.repeat // 2)):
                ph._COMPONENT_CACHE.clear()
                ts.append(_t(ph.compute_components, p, inst)[1])
            best.append(min(ts))
        per[p.name] = best
    off = sum(v[0] for v in per.values())
    on = sum(v[1] for v in per.values())
    print(f"secondary fluorescence ('portable-ag', 47 pigments): primary only {off:.2f} s, "
          f"with SF {on:.2f} s (x{on / off:.2f}; median per pigment "
          f"{1e3 * sorted(v[0] for v in per.values())[len(per) // 2]:.0f} -> "
          f"{1e3 * sorted(v[1] for v in per.values())[len(per) // 2]:.0f} ms)")
    for name, (a, b) in sorted(per.items(), key=lambda kv: -kv[1][1])[:5]:
        print(f"  slowest with SF: {name}: {1e3 * a:.0f} -> {1e3 * b:.0f} ms")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
