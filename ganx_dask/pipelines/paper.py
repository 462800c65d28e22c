"""The ganX paper's experiment (§3), reproduced on the bundled demo image.

The paper generated one manuscript page (Antiphonary M, folio 32) with nine pigments at
similarity thresholds 0.2 and 0.6 (N = 400 counts per pixel, N_start = 10, δN = 2, patience −1,
score batch 1024), and compared each synthetic cube with the measured scan: sum-spectrum metrics
(its Table 1), SSIM/MS-SSIM of the flattened cubes (Table 2), with a Poisson-noise cube as the
reference, and element maps (Figures 2-4), the clustered image (Figure 1), the sum spectra
(Figure 5) and the flattened cubes (Figure 6).

We have no measured scan of the demo image, so the analogues are **fake vs fake**
(threshold 0.2 vs 0.6) and **each fake vs a Poisson-noise cube** with the same counts per pixel
(:func:`ganx_dask.metrics.poisson_reference`, drawn from the 0.2 cube's per-pixel totals).

Outputs (in ``output``):

==============================  =================================================================
``fake_t0.2.zarr``, ``_t0.6``   the two generated cubes (ganx-dask stores)
``poisson.zarr``                the Poisson-noise reference cube (``counts`` only)
``tables.md``, ``tables.json``  Table 1 (sum-spectrum metrics) and Table 2 (SSIM, MS-SSIM)
``figure1_rgb.png``             original vs clustered RGB
``figure2_element_maps_t0.2``   element maps (K, Ca, Fe, Zn, Cu Kα; Au, Hg, Pb Lα), threshold 0.2
``figure3_element_maps_t0.6``   the same at threshold 0.6
``figure4_ground_truth_t0.2``   the ground truth of each cube (``_t0.6`` too): cluster ×
                                pigment abundance (the paper's Figure 4 shows the measured
                                scan's maps instead)
``figure5_sum_spectra.png``     normalised sum spectra, log y: 0.2 dotted, 0.6 dashed,
                                Poisson dash-dotted, with line markers
``figure6_flattened.png``       the flattened cubes after x → tanh(log(1 + x))
==============================  =================================================================

Run with ``ganx-dask paper [CONFIG] [-o DIR] [--small]`` (``pipelines/paper/config.yaml`` is the
paper's configuration; ``--small`` is the CI size).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .._staging import staged_output
from ..errors import ConfigError, GanxError
from ..storage import local_path
from .config import Option, load_config

log = logging.getLogger(__name__)

__all__ = ["PAPER_SCHEMA", "run_paper", "load_paper_config", "demo_image_path"]

_PAPER = ("minium", "vermilion", "red lake", "lead-tin yellow I", "natural ultramarine",
          "azurite", "indigo", "malachite", "chalk")
_ELEMENTS = ["K:Ka", "Ca:Ka", "Fe:Ka", "Zn:Ka", "Cu:Ka", "Au:La", "Hg:La", "Pb:La"]

#: The configuration keys of the paper pipeline (see ``pipelines/paper/README.md``).
PAPER_SCHEMA: dict[str, Any] = {
    "image": Option(str, None, "Input image (default: the bundled demo image).", nullable=True),
    "output": Option(str, "paper-output", "Output directory (created; in a config file, relative to the file)."),
    "seed": Option(int, 2024, "Master seed of the generation.", minimum=0),
    "poisson_seed": Option(int, None, "Seed of the Poisson-noise cube (default: seed + 1).",
                           nullable=True, minimum=0),
    "library": Option(str, None, "Pigment library file (default: the bundled library).",
                      nullable=True),
    "pigments": Option(list, list(_PAPER), "Pigments used (the paper's nine)."),
    "elements": Option(list, list(_ELEMENTS), "Element maps drawn, 'El:Line'."),
    "generation": {
        "thresholds": Option(list, [0.2, 0.6], "Similarity thresholds, one cube each."),
        "counts": Option(int, 400, "Counts per pixel N (paper: 400).", minimum=1),
        "n_start": Option(int, 10, "Central number of clusters (paper: 10).", minimum=2),
        "delta": Option(int, 2, "Cluster sweep half-width δN (paper: 2).", minimum=0),
        "patience": Option(int, -1, "Clustering patience (paper: -1 = none).", minimum=-1),
        "score_batch": Option(int, 1024, "Pixels per silhouette score (paper: 1024).",
                              minimum=2),
        "energy": Option(str, "0.5:38.5:1024", "Energy axis START:STOP:N, keV."),
        "similarity": Option(str, "ciede2000", "Colour similarity.",
                             choices=("ciede2000", "cie94", "cie76", "cosine")),
        "chunks": Option(int, 256, "Chunk edge, pixels (multiple of 64).", minimum=64),
    },
    "small": {
        "size": Option(int, 64, "--small: longest image side after downscaling, pixels.",
                       minimum=8),
        "energy": Option(str, "0.5:38.5:256", "--small: energy axis START:STOP:N, keV."),
        "chunks": Option(int, 64, "--small: chunk edge, pixels.", minimum=64),
    },
}


def demo_image_path() -> Path:
    """The bundled demo image (``ganx_dask/data/demo.png``)."""
    return Path(__file__).resolve().parent.parent / "data" / "demo.png"


def load_paper_config(config: str | os.PathLike | Mapping | None) -> dict[str, Any]:
    """Validate a paper configuration (path, mapping or None for the defaults).

    Raises
    ------
    ConfigError
        Unknown key, wrong type, or a bad list entry (the message names the file and key).
    """
    source = ("paper defaults" if config is None
              else "paper config" if isinstance(config, Mapping) else os.fspath(config))
    # in a file, relative paths are relative to the file's folder (as for batch and mosaic)
    cfg = load_config(config, PAPER_SCHEMA, name="paper", path_keys=("image", "output", "library"))
    for key in ("pigments", "elements"):
        if not cfg[key] or not all(isinstance(v, str) for v in cfg[key]):
            raise ConfigError(f"{source}: key {key!r} must be a non-empty list of strings")
    th = cfg["generation"]["thresholds"]
    if len(th) != 2 or not all(isinstance(t, (int, float)) and not isinstance(t, bool)
                               and 0 <= t <= 1 for t in th):
        raise ConfigError(f"{source}: key 'generation.thresholds' must be two numbers in [0, 1], "
                          f"got {th!r}")
    from ..analysis import parse_element

    for e in cfg["elements"]:
        try:
            parse_element(e)
        except GanxError as exc:
            raise ConfigError(f"{source}: key 'elements': {exc}") from None
    return cfg


def _load_image(cfg: dict, small: bool) -> tuple[np.ndarray, str]:
    from PIL import Image

    path = Path(cfg["image"]) if cfg["image"] else demo_image_path()
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if small:
                side = cfg["small"]["size"]
                w, h = im.size
                scale = side / max(w, h)
                im = im.resize((max(8, round(w * scale)), max(8, round(h * scale))),
                               Image.Resampling.BOX)
            arr = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise ConfigError(f"paper config 'image': no such file {path}") from None
    except OSError as exc:
        raise ConfigError(f"paper config 'image': cannot read {path} ({exc})") from None
    return arr, str(path)


def _library(cfg: dict):
    from ..pigments import default_library

    if cfg["library"]:
        from ..pigments.formats import read_library

        lib = read_library(cfg["library"])
    else:
        lib = default_library()
    missing = [p for p in cfg["pigments"] if p not in lib]
    if missing:
        raise ConfigError(f"paper config 'pigments': not in library {lib.name!r}: {missing}")
    return lib.select(cfg["pigments"])


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _tables_markdown(pairs: list[str], t1: dict, t2: dict, meta: dict) -> str:
    from ..metrics import DISTANCES

    names = {"cosine": "Cosine distance", "jensen_shannon": "Jensen-Shannon",
             "chebyshev": "Chebyshev", "correlation": "Correlation", "bray_curtis": "Bray-Curtis",
             "chi_square": "Chi-square", "bhattacharyya": "Bhattacharyya (coeff.)",
             "hellinger": "Hellinger"}
    head = "| metric | " + " | ".join(pairs) + " | better |"
    sep = "|---|" + "---|" * len(pairs) + "---|"
    lines = [
        "# ganX paper reproduction (ganx-dask)",
        "",
        f"Image: `{meta['image']}` ({meta['shape'][0]}×{meta['shape'][1]} px), energy axis "
        f"{meta['energy']} keV, N = {meta['counts']} counts/pixel, N_start = {meta['n_start']}, "
        f"δN = {meta['delta']}, patience {meta['patience']}, score batch {meta['score_batch']}, "
        f"seed {meta['seed']}, Poisson seed {meta['poisson_seed']}, chosen k = {meta['k']}.",
        f"Pigments: {', '.join(meta['pigments'])}.",
        "",
        "## Table 1: sum-spectrum metrics (spectra normalised to sum 1)",
        "",
        head,
        sep,
    ]
    for m in t1[pairs[0]]:
        lines.append(f"| {names.get(m, m)} | " + " | ".join(_fmt(t1[p][m]) for p in pairs)
                     + f" | {'lower' if m in DISTANCES else 'higher'} |")
    lines += ["", "## Table 2: SSIM and MS-SSIM of the flattened cubes (x → tanh(log(1+x)))", "",
              "| score | " + " | ".join(pairs) + " |", "|---|" + "---|" * len(pairs)]
    for m in ("ssim", "ms_ssim"):
        lines.append(f"| {m.upper().replace('_', '-')} | "
                     + " | ".join(_fmt(t2[p][m]) for p in pairs) + " |")
    lines += ["", f"Generated {meta['created']} by ganx-dask {meta['version']} in "
              f"{meta['wall_s']:.1f} s."]
    return "\n".join(lines) + "\n"


def run_paper(config=None, output: str | os.PathLike | None = None, *, small: bool = False,
              overwrite: bool = False) -> dict[str, Any]:
    """Run the paper reproduction.

    Parameters
    ----------
    config : path, mapping or None
        Configuration (:data:`PAPER_SCHEMA`); None = the paper's parameters.
    output : path-like, optional
        Output directory (overrides ``config["output"]``); must not exist or be empty unless
        ``overwrite``.
    small : bool
        CI size: the image downscaled to ``small.size`` pixels on its longest side and the
        ``small.energy`` axis.
    overwrite : bool
        Replace an existing output directory.

    Returns
    -------
    dict
        ``output`` (str), ``tables`` (Table 1 and 2 values), ``figures`` (file names), ``meta``.
    """
    import time

    from .. import plotting
    from .._version import __version__
    from ..analysis import element_maps, flatten, parse_element, sum_spectrum
    from ..generator import generate
    from ..metrics import ms_ssim as ms_ssim_fn
    from ..metrics import poisson_reference, spectral_metrics
    from ..metrics import ssim as ssim_fn
    from ..store import open_cube, to_zarr

    t0 = time.perf_counter()
    cfg = load_paper_config(config)
    gen = cfg["generation"]
    thresholds = [float(t) for t in gen["thresholds"]]
    energy = cfg["small"]["energy"] if small else gen["energy"]
    chunks = cfg["small"]["chunks"] if small else gen["chunks"]
    image, image_path = _load_image(cfg, small)
    lib = _library(cfg)
    seed = cfg["seed"]
    pseed = cfg["poisson_seed"] if cfg["poisson_seed"] is not None else seed + 1
    out = local_path(output if output is not None else cfg["output"], "the paper's output")
    labels = [f"fake {t:g}" for t in thresholds]
    figures: list[str] = []
    with staged_output(out, overwrite) as tmp:
        cubes, store_names = {}, []
        for t, lbl in zip(thresholds, labels, strict=True):
            ds = generate(image, lib, seed=seed, energy=energy, counts=gen["counts"],
                          mode="paper", threshold=t, similarity=gen["similarity"],
                          n_start=gen["n_start"],
                          delta=gen["delta"], patience=gen["patience"],
                          score_batch=gen["score_batch"], chunks=chunks)
            store = tmp / f"fake_t{t:g}.zarr"
            log.info("generating threshold %g -> %s", t, store.name)
            store_names.append(store.name)
            to_zarr(ds, store)
            cubes[lbl] = open_cube(store)
        first = cubes[labels[0]]
        # drawn once, chunk-wise, and stored: every table and figure reads the same cube
        log.info("Poisson-noise reference (seed %d) -> poisson.zarr", pseed)
        noise = poisson_reference(first["counts"], pseed).to_dataset(name="counts")
        noise.attrs = {"seed": pseed, "reference_for": store_names[0],
                       "model": "per channel Poisson(n_pixel / E), ganx_dask.metrics"}
        noise.to_zarr(tmp / "poisson.zarr", zarr_format=3, consolidated=False)
        cubes["Poisson noise"] = xr.open_zarr(tmp / "poisson.zarr", zarr_format=3,
                                              consolidated=False)
        energy_c = first["energy"].values
        specs = [parse_element(e, energy_c) for e in cfg["elements"]]

        # -- tables ------------------------------------------------------------------------
        log.info("Table 1: sum spectra")
        sums = {k: np.asarray(sum_spectrum(v).values, dtype=float) for k, v in cubes.items()}
        flats = {k: flatten(v).data for k, v in cubes.items()}
        pairs = [(labels[0], labels[1]), (labels[0], "Poisson noise"),
                 (labels[1], "Poisson noise")]
        names = [f"{a} vs {b}" for a, b in pairs]
        t1, t2 = {}, {}
        for (a, b), name in zip(pairs, names, strict=True):
            t1[name] = spectral_metrics(sums[a], sums[b])
            log.info("Table 2: %s", name)
            t2[name] = {"ssim": ssim_fn(flats[a], flats[b])}
            try:
                t2[name]["ms_ssim"] = ms_ssim_fn(flats[a], flats[b])
            except GanxError:
                t2[name]["ms_ssim"] = None

        # -- figures -----------------------------------------------------------------------
        log.info("figures")
        k = int(first.sizes["cluster"])
        plotting.rgb_comparison(first["rgb"], first["labels"], first["cluster_rgb"], k=k,
                                title="Figure 1: original and clustered RGB",
                                path=tmp / "figure1_rgb.png")
        figures.append("figure1_rgb.png")
        for i, (t, lbl) in enumerate(zip(thresholds, labels, strict=True)):
            fname = f"figure{2 + i}_element_maps_t{t:g}.png"
            maps = element_maps(cubes[lbl], specs, skip_missing=True)
            plotting.element_map_grid(maps, title=f"Figure {2 + i}: element maps, threshold "
                                                  f"α = {t:g}", path=tmp / fname)
            figures.append(fname)
        for t, lbl in zip(thresholds, labels, strict=True):
            ds = cubes[lbl]
            used = ds["abundance"].sum("cluster") > 0
            plotting.abundance_heatmap(ds["abundance"].isel(pigment=used.values),
                                       cluster_rgb=ds["cluster_rgb"],
                                       title=f"ground truth, threshold α = {t:g}",
                                       path=tmp / f"figure4_ground_truth_t{t:g}.png")
            figures.append(f"figure4_ground_truth_t{t:g}.png")
        plotting.sum_spectra({k_: sum_spectrum(v) for k_, v in cubes.items()}, lines=specs,
                             title="Figure 5: normalised sum spectra",
                             path=tmp / "figure5_sum_spectra.png")
        figures.append("figure5_sum_spectra.png")
        plotting.flattened_image({k_: flatten(v) for k_, v in cubes.items()},
                                 title="Figure 6: flattened cubes",
                                 path=tmp / "figure6_flattened.png")
        figures.append("figure6_flattened.png")

        meta = {
            "image": image_path if not small else f"{image_path} (downscaled, --small)",
            "shape": [int(first.sizes["y"]), int(first.sizes["x"])],
            "energy": energy, "counts": gen["counts"], "n_start": gen["n_start"],
            "delta": gen["delta"], "patience": gen["patience"],
            "score_batch": gen["score_batch"], "seed": seed, "poisson_seed": pseed, "k": k,
            "pigments": list(lib.names), "thresholds": thresholds, "small": small,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "version": __version__, "wall_s": time.perf_counter() - t0,
            "clustering": first.xrf.meta.get("clustering"),
        }
        tables = {"table1": t1, "table2": t2}
        (tmp / "tables.md").write_text(_tables_markdown(names, t1, t2, meta), encoding="utf-8")
        (tmp / "tables.json").write_text(
            json.dumps({"meta": meta, **tables}, indent=2, default=str) + "\n", encoding="utf-8")
        for c in cubes.values():
            c.close()
    return {"output": str(out), "tables": tables, "figures": figures, "meta": meta}
