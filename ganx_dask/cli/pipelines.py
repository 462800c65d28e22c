"""``ganx-dask batch`` and ``ganx-dask mosaic``: whole production jobs on any dask cluster.

Generation options (``--counts``, ``--energy``, ...) are derived from the keyword options of
:func:`ganx_dask.generate` (the same keys as a config's ``generation`` section), so the two never
drift apart.  Values given on the command line override the config file.
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from ..errors import ConfigError

__all__ = ["register"]


#: Where ``ganx-dask batch`` runs without ``--scheduler``/``--cluster-config``: local worker
#: processes, one image (or region of a large image) each (``pipelines/image_pool.py``).
BATCH_DEFAULT_SCHEDULER = "processes"

#: Generation options that only a config file can set (arrays, mappings).
_CONFIG_ONLY = ("luminosity",)


def _add_generation_options(p: argparse.ArgumentParser) -> list[str]:
    from ..pipelines.batch import generation_schema

    grp = p.add_argument_group(
        "generation options (override the config's `generation` section; see `ganx-dask "
        "generate --help` for meanings and units)"
    )
    keys = []
    for key, opt in generation_schema().items():
        if key in _CONFIG_ONLY:
            continue
        flags = ["--" + key.replace("_", "-")] + (["--chunk"] if key == "chunks" else [])
        tname = opt.types.__name__ if opt.types in (int, float, str, bool) else "value"
        grp.add_argument(*flags, dest=f"gen_{key}", metavar=tname.upper(), default=None,
                         help=f"default {opt.default!r}")
        keys.append(key)
    return keys


def _generation_overrides(args: argparse.Namespace, keys: list[str]) -> dict:
    out = {}
    for key in keys:
        raw = getattr(args, f"gen_{key}")
        if raw is None:
            continue
        try:
            val = yaml.safe_load(raw)  # "400" -> 400, "0.2" -> 0.2, "true" -> True
        except yaml.YAMLError:
            val = raw
        if key in ("energy", "library", "similarity", "count_model", "mode", "engine", "pigments",
                   "calibration"):
            val = raw  # strings, even when they look like numbers
        out[key] = val
    return out


def _add_cluster_options(p: argparse.ArgumentParser) -> None:
    grp = p.add_argument_group("where to run (default: the config's, else local threads)")
    ex = grp.add_mutually_exclusive_group()
    ex.add_argument("--scheduler", default=None, metavar="ADDR",
                    help="threads | processes | synchronous | tcp://HOST:PORT | SCHEDULER.json")
    ex.add_argument("--cluster-config", default=None, metavar="FILE",
                    help="cluster YAML (cluster_configs/: local, processes, slurm, pbs, kubernetes)")
    grp.add_argument("--timeout", type=float, default=30.0, metavar="S",
                     help="seconds to wait for a remote scheduler (default 30)")


def _where(args, cfg) -> tuple[str | None, str | None]:
    if args.scheduler or args.cluster_config:
        return args.scheduler, args.cluster_config
    return cfg.get("scheduler"), cfg.get("cluster_config")


def _run_batch(args: argparse.Namespace) -> int:
    from ..pipelines.batch import load_batch_config, run_batch
    from ..scheduling import scheduler_context

    cfg = load_batch_config(args.config)
    scheduler, cluster_config = _where(args, cfg)
    if scheduler is None and cluster_config is None:
        scheduler = BATCH_DEFAULT_SCHEDULER
    gen = _generation_overrides(args, args.gen_keys)
    if args.dry_run:  # validation and draws only: no scheduler, nothing written
        report = run_batch(args.images or None, args.output, args.config, seed=args.seed,
                           generation=gen, dry_run=True)
        if args.json:
            json.dump({"planned": report.planned, "skipped": report.skipped}, sys.stdout, indent=1)
            print()
        else:
            print(report.summary())
        return 0
    with scheduler_context(scheduler, cluster_config, timeout=args.timeout):
        report = run_batch(
            args.images or None, args.output, args.config,
            seed=args.seed, overwrite=True if args.overwrite else None, generation=gen,
            progress=args.progress,
        )
    if args.json:
        json.dump({"output": report.output, "manifest": report.manifest,
                   "skipped": report.skipped, "generated": report.generated,
                   "resumed": report.resumed, "already_complete": report.skipped_complete,
                   "failed": report.failed, "stale": report.stale}, sys.stdout, indent=1)
        print()
    else:
        print(report.summary())
    return 1 if report.failed else 0


def _run_mosaic(args: argparse.Namespace) -> int:
    from ..pipelines.mosaic import load_mosaic_config, run_mosaic
    from ..scheduling import scheduler_context

    cfg = load_mosaic_config(args.config)
    scheduler, cluster_config = _where(args, cfg)
    gen = _generation_overrides(args, args.gen_keys)
    if args.region is not None:
        cfg["region"] = args.region
    if args.resume and args.no_resume:
        raise ConfigError("give either --resume or --no-resume")
    resume = True if args.resume else (False if args.no_resume else None)
    with scheduler_context(scheduler, cluster_config, timeout=args.timeout):
        report = run_mosaic(
            args.image, args.output, cfg, seed=args.seed, resume=resume,
            overwrite=True if args.overwrite else None, generation=gen, progress=args.progress,
        )
    print(report.summary())
    return 0


def register(subparsers) -> None:
    """Add the ``batch`` and ``mosaic`` sub-commands."""
    b = subparsers.add_parser(
        "batch",
        help="many images -> one dataset store (one group per image + manifest)",
        description=(
            "Generate one cube per image into DATASET.zarr (one Zarr group per image, named after "
            "the file) and keep a manifest (image path, sha256, seed, shape, status) in its "
            "attributes. Per-image seeds derive from --seed and the image name, so adding or "
            "reordering images changes nothing already generated. Re-running skips complete "
            "images and resumes interrupted ones; non-image files are skipped and listed."
        ),
    )
    b.add_argument("images", nargs="*", metavar="IMAGES",
                   help="folders, globs or image files (default: the config's `images`)")
    b.add_argument("-o", "--output", default=None, metavar="DATASET.zarr",
                   help="dataset store (default: the config's `output`)")
    b.add_argument("--config", default=None, metavar="FILE", help="batch config YAML "
                   "(pipelines/batch/config.yaml)")
    b.add_argument("--seed", type=int, default=None, help="master seed (default: config, 0)")
    b.add_argument("--overwrite", action="store_true",
                   help="regenerate images whose content changed; accept changed parameters")
    b.add_argument("--progress", action="store_true", help="progress bar per image")
    b.add_argument("--json", action="store_true", help="print the report as JSON")
    b.add_argument("--dry-run", action="store_true",
                   help="validate, then print each image's seed and randomised parameters "
                        "(the config's `randomize:` draws); write nothing")
    b.set_defaults(func=_run_batch, gen_keys=_add_generation_options(b))
    _add_cluster_options(b)

    m = subparsers.add_parser(
        "mosaic",
        help="one very large (tiled) image -> one store, region by region, resumable",
        description=(
            "Generate the cube of one very large image (tiled TIFF/BigTIFF read lazily) into "
            "STORE.zarr region by region with per-region completion records. Re-running the "
            "same command on an interrupted store computes only the missing regions (resume is "
            "the default) and reports how many."
        ),
    )
    m.add_argument("image", nargs="?", default=None, metavar="IMAGE",
                   help="the image (default: the config's `image`)")
    m.add_argument("-o", "--output", default=None, metavar="STORE.zarr")
    m.add_argument("--config", default=None, metavar="FILE",
                   help="mosaic config YAML (pipelines/mosaic/config.yaml)")
    m.add_argument("--seed", type=int, default=None, help="seed (default: config, 0)")
    m.add_argument("--resume", action="store_true", help="finish an interrupted store (default)")
    m.add_argument("--no-resume", action="store_true", help="refuse to touch an existing store")
    m.add_argument("--overwrite", action="store_true", help="replace an existing store")
    m.add_argument("--region", type=int, default=None, metavar="PX",
                   help="region (zarr chunk) edge in pixels (default: --chunks)")
    m.add_argument("--progress", action="store_true", help="progress bar")
    m.set_defaults(func=_run_mosaic, gen_keys=_add_generation_options(m))
    _add_cluster_options(m)
