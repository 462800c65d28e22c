"""Benchmark and real-data checks of :func:`ganx_dask.calibration.calibrate` (prints numbers).

Sub-commands (each prints a JSON line; ``os.getloadavg()`` is included: the machine is shared):

``speed``
    Calibration time of a synthetic 512 × 512 × 1024 scan (a Zarr store written first, 6 colours,
    9 pigments, ~200 counts/pixel; target < 60 s on 2 cores).
``memory``
    Peak RSS of calibrating a lazy 4096 × 4096 × 1024 cube (uint16, made chunk by chunk from 6
    cluster spectra: never materialised), measured on a child process (target < 1 GB).
``real``
    Fit the measured multi-element spectrum ``../shared/data/real/XRFSpectrum.mca`` (PyMca demo
    data, MIT, © ESRF; not shipped) as a one-pixel scan with a monochromatic 17.5 keV source;
    cosine and Jensen–Shannon of data vs fit above 2.4 keV; writes ``docs/calibration_real.png``
    (log scale).  Skips when the file is absent.
``crossval``
    Synthetic scan with smooth colour/abundance variation: calibrate on the left half, generate
    the right half from colour alone; sum-spectrum metrics and element-map SSIM per element.

Usage::

    python benchmarks/bench_calibrate.py speed|memory|real|crossval [--size N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT.parent.parent / "shared" / "data" / "real" / "XRFSpectrum.mca"
if not REAL.exists():
    REAL = Path("/work/shared/data/real/XRFSpectrum.mca")


def _emit(d: dict) -> None:
    d["loadavg"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(d))


def _truth():
    sys.path.insert(0, str(ROOT))
    import ganx_dask as g
    from tests.test_calibration import NAMES, RGB, _truth

    lib = g.default_library().select(NAMES)
    return lib, _truth(lib), RGB


def bench_speed(size: int) -> None:
    import ganx_dask as g
    from ganx_dask.calibration import calibrate
    from ganx_dask.store import to_zarr

    lib, truth, rgb = _truth()
    truth.colour.counts = truth.colour.counts / 8.0  # ~200 counts/pixel: a quick synthetic scan
    img = np.zeros((size, size, 3), np.uint8)
    w = size // len(rgb) + 1
    for i, c in enumerate(rgb):
        img[:, i * w:(i + 1) * w] = c
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ds = g.generate(img, lib, seed=1, calibration=truth, n_start=len(rgb), delta=0)
        to_zarr(ds, Path(tmp) / "scan.zarr", progress=False)
        t_gen = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        cal = calibrate(Path(tmp) / "scan.zarr", img, library=lib, instrument="lab-rh")
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    _emit({"bench": "calibrate speed", "scan": f"{size}x{size}x1024", "generate_s": round(t_gen, 1),
           "calibrate_wall_s": round(wall, 2), "calibrate_cpu_s": round(cpu, 2),
           "nfev": cal.diagnostics["detector"]["nfev"],
           "fano_rel_err": cal.instrument.fano / truth.instrument.fano - 1})


def _lazy_cube(size: int, chunk: int = 256):
    """A uint16 cube whose pixels are 6 fixed spectra by vertical stripe (made per chunk)."""
    import dask.array as da

    lib, truth, rgb = _truth()
    from ganx_dask.energy import EnergyAxis

    ax = EnergyAxis(0.5, 38.5, 1024)
    h = lib.spectra(ax, truth.instrument).values
    spec = (truth.colour.abundance @ h) * 60.0
    spec = np.round(spec).astype(np.uint16)
    stripe = size // len(rgb) + 1

    def block(block_info=None):
        (y0, y1), (x0, x1), _ = block_info[None]["array-location"]
        lab = np.arange(x0, x1) // stripe
        return np.broadcast_to(spec[lab][None, :, :], (y1 - y0, x1 - x0, spec.shape[1])).copy()

    cube = da.map_blocks(block, chunks=((chunk,) * (size // chunk), (chunk,) * (size // chunk),
                                        (1024,)), dtype=np.uint16)
    img = np.zeros((size, size, 3), np.uint8)
    for i, c in enumerate(rgb):
        img[:, i * stripe:(i + 1) * stripe] = c
    coord = xr.DataArray(ax.centres, dims="energy", attrs={"units": "keV"})
    return xr.DataArray(cube, dims=("y", "x", "energy"), coords={"energy": coord}), img, lib


def bench_memory_child(size: int) -> None:
    import dask

    from ganx_dask.calibration import calibrate

    cube, img, lib = _lazy_cube(size)
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=2):
        cal = calibrate(cube, img, library=lib, instrument="lab-rh", pileup=False,
                        groups=6, check_lines=False)
    print(json.dumps({"wall_s": round(time.perf_counter() - t0, 1),
                      "groups": len(cal.colour.counts)}))


def bench_memory(size: int) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _measure import run_measured

    r = run_measured([sys.executable, __file__, "memory-child", "--size", str(size)])
    _emit({"bench": "calibrate memory", "scan": f"{size}x{size}x1024 uint16 (lazy)",
           "raw_gb": round(size * size * 1024 * 2 / 1e9, 1),
           "peak_rss_mb": round(r["peak_rss_bytes"] / 2**20, 1), "wall_s": round(r["wall_s"], 1),
           "cpu_s": round(r["cpu_s"], 1), "returncode": r["returncode"],
           "child": r.get("result"), "stderr": r["stderr"][-400:] if r["returncode"] else ""})


def real_library():
    """Thin films (0.01 µm) of the visible elements: the water matrix's scatter is left to the
    calibration's Rayleigh/Compton background components."""
    from ganx_dask.pigments import Pigment, PigmentLibrary

    elements = ["K", "Ca", "Ti", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Se", "Sr", "Pb", "Ar",
                "Br", "Rb", "Ga", "As"]
    pigs = [Pigment(name=el, rgb=(128, 128, 128), composition={el: 1.0},
                    density=1.0, thickness_um=0.01) for el in elements]
    return PigmentLibrary(pigs, name="thin-standard", version="1")


def bench_real(plot: Path) -> dict | None:
    from ganx_dask.calibration import calibrate
    from ganx_dask.metrics import cosine, jensen_shannon
    from ganx_dask.pigments.physics import Instrument

    if not REAL.exists():
        _emit({"bench": "real spectrum", "skipped": f"{REAL} absent"})
        return None
    y = np.loadtxt(REAL, comments="#")
    ch = np.arange(y.size)
    e = 0.00505596 * ch - 0.52743
    spec = xr.DataArray(y, dims="energy",
                        coords={"energy": ("energy", e, {"units": "keV"})},
                        attrs={"source": str(REAL)})
    inst = Instrument(excitation_kev=17.5, incidence_deg=0.1, takeoff_deg=90.0, air_cm=0.2,
                      det_si_um=450.0, det_be_um=8.0, noise_fwhm_kev=0.1, name="esrf-demo")
    t0 = time.perf_counter()
    cal = calibrate(spec, np.full((1, 1, 3), 128, np.uint8), library=real_library(),
                    instrument=inst, fit_range=(2.4, 18.5), check_lines=False)
    wall = time.perf_counter() - t0
    s = cal.diagnostics["sum_spectrum"]
    data, fit, ee = np.array(s["data"]), np.array(s["fit"]), np.array(s["energy"])
    m = ee > 2.4
    out = {"bench": "real spectrum", "file": str(REAL), "wall_s": round(wall, 1),
           "cosine_above_2.4keV": float(cosine(data[m], fit[m])),
           "jensen_shannon_above_2.4keV": float(jensen_shannon(data[m], fit[m])),
           "gain": cal.energy["gain"], "offset": cal.energy["offset"],
           "noise_fwhm_ev": cal.instrument.noise_fwhm_kev * 1e3, "fano": cal.instrument.fano,
           "tail_fraction": cal.instrument.tail_fraction,
           "shelf_fraction": cal.instrument.shelf_fraction,
           "pileup_p": cal.diagnostics["detector"]["fitted"][
               "pileup_link_probability_at_mean_counts"],
           "background_fraction": cal.diagnostics["groups"]["background_fraction"],
           "pigments_used": cal.colour.pigments,
           "energy_check_rms_ev": cal.diagnostics["energy"].get("rms_residual_ev")}
    fig = cal.plot_fit()
    fig.axes[0].set_xlim(2.4, 20.0)
    fig.axes[0].set_title(f"{REAL.name} (PyMca demo data, © ESRF, MIT): monochromatic 17.5 keV; "
                          f"above 2.4 keV cosine distance {out['cosine_above_2.4keV']:.4f}, "
                          f"JS {out['jensen_shannon_above_2.4keV']:.4f}", fontsize=9)
    fig.savefig(plot, dpi=110)
    out["plot"] = str(plot)
    _emit(out)
    return out


def bench_crossval(size: int = 128) -> None:
    """Smooth colour/abundance field; calibrate on the left half, predict the right half."""
    import ganx_dask as g
    from ganx_dask.analysis import element_maps
    from ganx_dask.attrs import decode
    from ganx_dask.calibration import background_components, calibrate
    from ganx_dask.energy import EnergyAxis
    from ganx_dask.metrics import cosine, jensen_shannon, ssim

    names = ["lead white", "vermilion", "azurite", "yellow ochre"]
    lib = g.default_library().select(names + ["gypsum", "chalk", "zinc white", "orpiment"])
    inst = g.Instrument.preset("lab-rh").replace(noise_fwhm_kev=0.1, tail_fraction=0.02,
                                                 shelf_fraction=0.01)
    ax = EnergyAxis(0.5, 38.5, 1024)
    h = lib.spectra(ax, inst).values[:4]
    bg = background_components(inst)
    from ganx_dask.pigments.physics import render_many

    flat = render_many([bg["flat"]], ax.edges, inst)[0]
    flat /= flat.sum()
    yy, xx = np.mgrid[0:size, 0:size] / size
    # smooth positive fields that take their whole range in both halves (period < half width)
    f = np.stack([1.2 + np.sin(2 * np.pi * 3 * xx) * np.cos(2 * np.pi * 2 * yy),
                  1.0 + np.cos(2 * np.pi * 2.5 * xx + 1.0) * np.sin(2 * np.pi * 1.5 * yy + 0.3),
                  0.9 + np.sin(2 * np.pi * 2 * (xx + yy)),
                  0.8 + np.cos(2 * np.pi * 3 * yy - 2 * np.pi * xx)], axis=-1)
    ab = np.maximum(f, 0.0) ** 2
    ab /= ab.sum(axis=-1, keepdims=True)
    # colour: linear-light mix of the pigment colours
    from skimage.color import rgb2xyz  # noqa: F401  (only to assert skimage is there)

    prgb = np.array([lib[n].rgb for n in names], float) / 255.0
    lin = np.where(prgb <= 0.04045, prgb / 12.92, ((prgb + 0.055) / 1.055) ** 2.4)
    mix = ab @ lin
    srgb = np.where(mix <= 0.0031308, 12.92 * mix, 1.055 * mix ** (1 / 2.4) - 0.055)
    img = np.clip(np.round(srgb * 255), 0, 255).astype(np.uint8)
    rng = np.random.default_rng(0)
    spec = 0.92 * (ab @ h) + 0.08 * flat[None, None, :]
    cube = rng.poisson(spec * 1500.0).astype(np.uint16)
    coord = xr.DataArray(ax.centres, dims="energy", attrs={"units": "keV"})
    full = xr.DataArray(cube, dims=("y", "x", "energy"), coords={"energy": coord})
    half = size // 2
    t0 = time.perf_counter()
    cal = calibrate(full[:, :half], img[:, :half], library=lib, instrument="lab-rh", groups=16,
                    pileup=False)
    t_cal = time.perf_counter() - t0
    ds = g.generate(img[:, half:], lib, seed=2, calibration=cal, n_start=24, delta=0)
    pred = ds.counts.compute()
    truth = full[:, half:].assign_coords(energy=pred.energy.values)
    a, b = truth.sum(("y", "x")).values.astype(float), pred.sum(("y", "x")).values.astype(float)
    els = ["Pb", "Hg", "Cu", "Fe", "Ca", "Zn"]
    ma = element_maps(truth, els).compute()
    mb = element_maps(pred, els).compute()
    ss = {el: round(float(ssim(ma.sel(element=el).values, mb.sel(element=el).values)), 3)
          for el in [str(v) for v in ma.element.values]}
    _emit({"bench": "cross-validation (calibrate left half, generate right half from colour)",
           "size": size, "calibrate_s": round(t_cal, 1), "groups": len(cal.colour.counts),
           "sum_cosine": float(cosine(a, b)), "sum_js": float(jensen_shannon(a, b)),
           "ssim_per_element": ss,
           "out_of_gamut_clusters": len(
               decode(ds.attrs)["parameters"]["calibration"]["out_of_gamut"])})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["speed", "memory", "memory-child", "real", "crossval"])
    ap.add_argument("--size", type=int, default=None)
    a = ap.parse_args()
    if a.what == "speed":
        bench_speed(a.size or 512)
    elif a.what == "memory":
        bench_memory(a.size or 4096)
    elif a.what == "memory-child":
        bench_memory_child(a.size or 4096)
    elif a.what == "real":
        bench_real(ROOT / "docs" / "calibration_real.png")
    else:
        bench_crossval(a.size or 128)


if __name__ == "__main__":
    main()
