"""Matching defaults on the bundled demo page: pigments per cluster and the sum spectrum.

Compares the paper's matching (``mode="paper"``, threshold 0.2) with the default ``closest`` mode
on the 47-pigment default library: pigments per cluster (any weight, and ≥ 5 %), and the share of
the expected sum spectrum in the windows (±1 FWHM) of elements that a manuscript page should not
show (Ag, Cd, Sn, Sb, Ba) and of those it should (Ca, Fe, Cu, Hg, Pb, Au).  The expected sum
spectrum is ``Σ_k n_k · spectrum_k`` (``n_k`` pixels in cluster k): no Monte Carlo noise.

Usage::

    python benchmarks/bench_matching.py [--plot docs/matching_demo.png]
"""

from __future__ import annotations

import argparse

import numpy as np

ELEMENTS = {"implausible": [("Ag", "Ka"), ("Cd", "Ka"), ("Sn", "Ka"), ("Sb", "Ka"), ("Ba", "La")],
            "expected": [("Ca", "Ka"), ("Fe", "Ka"), ("Cu", "Ka"), ("Hg", "La"), ("Pb", "La"),
                         ("Au", "La")]}


def expected_sum(ds) -> np.ndarray:
    """Expected sum spectrum (probability per channel) of a generated dataset."""
    labels = ds.labels.values.ravel()
    n = np.bincount(labels[labels >= 0], minlength=ds.sizes["cluster"])
    s = n @ ds.spectrum.values
    return s / s.sum()


def element_pixel_share(ds, lib, element: str) -> float:
    """Share of the image's pixels (abundance-weighted) painted with pigments holding ``element``
    (in the pigment or its ground layers)."""
    import xraylib

    from ganx_dask.pigments.physics import element_mass_fractions

    z = xraylib.SymbolToAtomicNumber(element)

    def has(p) -> bool:
        comps = [p.composition or {}] + [layer.composition for layer in p.ground]
        return any(element_mass_fractions(c).get(z, 0.0) > 0 for c in comps)

    holds = np.array([has(lib[str(n)]) for n in ds.pigment.values])
    labels = ds.labels.values.ravel()
    n = np.bincount(labels[labels >= 0], minlength=ds.sizes["cluster"])
    return float(n @ (ds.abundance.values @ holds) / n.sum())


def window_share(spec: np.ndarray, energy: np.ndarray, el: str, line: str) -> float:
    from ganx_dask.analysis import element_window

    _, e0, e1 = element_window(el, line, energy)
    sel = (energy >= e0) & (energy <= e1)
    return float(spec[sel].sum())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plot", help="write a log-scale figure of both sum spectra here")
    args = ap.parse_args(argv)

    import ganx_dask as gx
    from ganx_dask.cli.generate import demo_image_path
    from ganx_dask.pigments import default_library

    lib = default_library()

    image = demo_image_path()
    res = {}
    for mode in ("paper", "closest"):
        ds = gx.generate(image, seed=0, mode=mode)
        ab = ds.abundance.values
        spec = expected_sum(ds)
        energy = ds.energy.values
        res[mode] = (ds, spec)
        print(f"\n== mode={mode} ({ds.sizes['cluster']} clusters, {ds.sizes['pigment']} pigments)")
        print("pigments per cluster (weight > 0):  ", (ab > 0).sum(1).tolist())
        print("pigments per cluster (weight >= 5%):", (ab >= 0.05).sum(1).tolist())
        for k in range(ab.shape[0]):
            top = np.argsort(-ab[k])[:3]
            names = ", ".join(f"{ds.pigment.values[i]} {ab[k, i]:.2f}" for i in top if ab[k, i] > 0)
            print(f"  cluster {k} rgb {ds.cluster_rgb.values[k].tolist()}: {names}")
        print("pixel share painted with a pigment holding: " + ", ".join(
            f"{el} {element_pixel_share(ds, lib, el):.1%}"
            for el in ("Ag", "Cd", "Sn", "Sb", "Ba", "Ca", "Cu", "Hg", "Pb", "Au")))
        for kind, els in ELEMENTS.items():
            shares = {f"{el} {ln}": window_share(spec, energy, el, ln) for el, ln in els}
            print(f"{kind:>11} line windows, share of all counts: "
                  + ", ".join(f"{k} {v:.2%}" for k, v in shares.items()))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4), dpi=120)
        for mode, (ds, spec) in res.items():
            ax.semilogy(ds.energy.values, spec, lw=0.8,
                        label={"paper": "paper (threshold 0.2)", "closest": "closest (default)"}[mode])
        ax.set(xlabel="energy (keV)", ylabel="expected counts (fraction per channel)",
               title="Demo page, 47-pigment library: expected sum spectrum", ylim=(1e-7, None))
        for el, ln in ELEMENTS["implausible"]:
            from ganx_dask.analysis import line_energy

            e = line_energy(el, ln)
            ax.axvline(e, color="0.7", lw=0.5, ls=":")
            ax.text(e, 2e-7, f"{el}", fontsize=7, ha="center", color="0.4")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot)
        print("wrote", args.plot)


if __name__ == "__main__":
    main()
