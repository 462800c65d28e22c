"""The ``batch`` pipeline: an image collection → one dataset store with a manifest.

``DATASET.zarr`` is a Zarr v3 group holding one sub-group per image (the layout of
:func:`ganx_dask.store.to_zarr`) plus, in the root group's attributes:

``manifest``
    one record per image: ``name`` (= group), ``image`` (absolute path), ``sha256`` (content
    hash), ``seed``, ``shape`` ``[y, x]`` (pixels), ``status`` (``complete``, ``failed``,
    ``stale``, or ``pending`` while an image is being generated, and after an interrupted run
    until the next run resumes it), ``group`` (path inside the store), ``error``,
    ``parameters`` (hash of the batch parameters it was generated with).
``skipped``
    files that were not images (``path``, ``reason``).
``batch``
    the master seed and the generation parameters; a re-run must use the same ones.

Per-image seeds come from the master seed and the image's **name** (the group name: the file
name without its extension), never from its position in the list, so reordering or extending the
collection changes no existing image's seed or bytes.  On a re-run, images whose group is complete
and whose content hash is unchanged are skipped; interrupted groups are resumed (only their missing
regions are computed).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, GanxError, ImageError
from ..io import IMAGE_SUFFIXES, file_sha256, group_name
from ..seeding import check_seed, image_seed
from ..storage import is_url, location, remote_error, with_storage_errors
from .config import Option, load_config, validate
from .image_pool import ImageJob

__all__ = [
    "BATCH_SCHEMA",
    "IMAGE_SUFFIXES",
    "BatchReport",
    "batch_schema",
    "generation_schema",
    "load_batch_config",
    "image_seed",
    "group_name",
    "collect_images",
    "file_sha256",
    "run_batch",
    "read_manifest",
]

log = logging.getLogger(__name__)

#: Top-level keys of a batch config (the ``generation`` section is added from ``generate()``).
BATCH_SCHEMA: dict[str, Any] = {
    "seed": Option(int, 0, "Master seed; each image's seed derives from it and the image name.", minimum=0),
    "images": Option((list, str), None, "Images: a folder, a glob, a file, or a list of these (the CLI's IMAGES replace it).", nullable=True),
    "output": Option(str, None, "Dataset store DATASET.zarr (the CLI's -o replaces it).", nullable=True),
    "recursive": Option(bool, False, "Also scan sub-folders of a folder."),
    "overwrite": Option(bool, False, "Regenerate images whose content changed since the last run (and allow changed parameters)."),
    "scheduler": Option(str, None, "Scheduler: threads, processes, synchronous, tcp://ADDRESS or a scheduler file.", nullable=True),
    "cluster_config": Option(str, None, "Cluster configuration YAML (cluster_configs/); relative to this file.", nullable=True),
    "randomize": Option(dict, {}, "Domain randomisation: per-image distributions of instrument, detector, counts, palette (see ganx_dask.pipelines.randomize)."),
}

#: Keyword arguments of ``generate()`` that are not generation options of a batch.
_NOT_OPTIONS = {"image", "library", "seed", "client"}


def generation_schema() -> dict[str, Option]:
    """Schema of the ``generation`` section: the keyword options of :func:`ganx_dask.generate`.

    Each option's type is that of its default (``int`` defaults also accept nothing else; ``None``
    defaults accept any value), plus ``library`` (a pigment-library file path).
    """
    import inspect

    from ..generator import generate

    schema: dict[str, Option] = {
        "library": Option(str, None, "Pigment library file (null = the bundled default library).", nullable=True),
        "pigments": Option((list, str), None, "Use only these pigments of the library: a list, comma-separated names, or `paper` (the paper's nine).", nullable=True),
    }
    doc = "see `ganx-dask generate --help` / `ganx_dask.generate`"
    for name, p in inspect.signature(generate).parameters.items():
        if name in _NOT_OPTIONS or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        d = p.default
        if d is inspect.Parameter.empty:
            continue
        ann = str(p.annotation)
        if d is None:
            schema[name] = Option(object, None, doc, nullable=True)
        elif isinstance(d, bool) or ann == "bool":
            schema[name] = Option(bool, d, doc)
        elif isinstance(d, (int, float)) and ann in ("float", "<class 'float'>"):
            schema[name] = Option(float, d, doc)
        elif isinstance(d, (int, float, str)):
            schema[name] = Option(type(d), d, doc)
        else:  # e.g. an energy axis given as a string or an array
            schema[name] = Option(object, d, doc)
    return schema


def batch_schema() -> dict[str, Any]:
    """The full batch schema: :data:`BATCH_SCHEMA` plus the ``generation`` section."""
    return {**BATCH_SCHEMA, "generation": generation_schema()}


def load_batch_config(
    config: str | os.PathLike | Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Validate a batch config (YAML path, dict or ``None`` for the defaults).

    Relative ``images``, ``output``, ``cluster_config`` and ``generation.library`` paths in a file
    are taken relative to the file's folder.

    Raises
    ------
    ConfigError
        Unknown key or wrong type (naming the dotted key), missing or malformed file.
    """
    cfg = load_config(config, batch_schema(), name="batch",
                      path_keys=("images", "output", "cluster_config", "generation.library"))
    if isinstance(cfg["images"], str):
        cfg["images"] = [cfg["images"]]
    if cfg["images"] is not None and not all(isinstance(i, str) for i in cfg["images"]):
        raise ConfigError(f"{config}: key 'images' must be a string or a list of strings")
    return cfg


def _is_image_name(path: Path) -> bool:
    return path.name.lower().endswith(IMAGE_SUFFIXES) and not path.name.startswith(".")


def collect_images(
    sources: Sequence[str | os.PathLike], *, recursive: bool = False
) -> tuple[list[Path], list[dict[str, str]]]:
    """Expand folders, globs and files into the list of image files.

    Parameters
    ----------
    sources : sequence of path-like
        Folders (their image files), glob patterns, or files.
    recursive : bool
        Scan sub-folders of folders too.

    Returns
    -------
    list of Path
        Image files (absolute, in order of first appearance, duplicates removed).
    list of dict
        Skipped files: ``{"path", "reason"}`` (wrong extension, hidden file).

    Raises
    ------
    ImageError
        A source that does not exist, a glob matching nothing, or no image at all.
    ConfigError
        Two different files mapping to the same group name.
    """
    images: list[Path] = []
    skipped: list[dict[str, str]] = []

    def consider(p: Path) -> None:
        p = p.resolve()
        if p.is_dir():
            return
        if _is_image_name(p):
            if p not in images:
                images.append(p)
        else:
            reason = "hidden file" if p.name.startswith(".") else (
                f"not an image (extension {p.suffix or 'none'!r})")
            skipped.append({"path": str(p), "reason": reason})

    for src in sources:
        s = os.fspath(src)
        if is_url(s):
            raise ImageError(f"{s.split('://', 1)[0]}://...: images are read from local or shared "
                             "file systems; object-store URLs are for stores only")
        p = Path(s).expanduser()
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            for f in sorted(it):
                if f.is_file():
                    consider(f)
        elif p.is_file():
            consider(p)
        elif glob.has_magic(s):
            matches = sorted(glob.glob(os.path.expanduser(s), recursive=recursive))
            if not matches:
                raise ImageError(f"no file matches {s!r}")
            for m in matches:
                consider(Path(m))
        else:
            raise ImageError(f"image file or folder not found: {s}")
    if not images:
        listed = "; ".join(f"{Path(s['path']).name}: {s['reason']}" for s in skipped[:10])
        raise ImageError(
            f"no images found in {', '.join(map(str, sources))} "
            f"(image extensions: {', '.join(IMAGE_SUFFIXES)})"
            + (f"; skipped {listed}" if listed else "")
        )
    names: dict[str, Path] = {}
    for p in images:
        n = group_name(p)
        if n in names:
            raise ConfigError(
                f"images {names[n]} and {p} both map to the dataset group {n!r}; rename one"
            )
        names[n] = p
    if skipped:
        listed = "; ".join(f"{s['path']} ({s['reason']})" for s in skipped)
        warnings.warn(f"skipping {len(skipped)} file(s) that are not images: {listed}",
                      UserWarning, stacklevel=2)
    return images, skipped


@dataclass
class BatchReport:
    """What a batch run did.

    Attributes
    ----------
    output : str
        The dataset store.
    manifest : list of dict
        The manifest as written (one record per image of this run and earlier runs).
    generated, resumed, skipped_complete, failed, stale : list of str
        Image names by outcome in this run.
    skipped : list of dict
        Non-image files (``path``, ``reason``).
    planned : list of dict or None
        With ``dry_run``: per image ``name``, ``image``, ``seed``, ``randomized`` (nothing written).
    """

    output: str
    manifest: list[dict[str, Any]] = field(default_factory=list)
    generated: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    skipped_complete: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    planned: list[dict[str, Any]] | None = None

    def summary(self) -> str:
        """One line per outcome, for the CLI."""
        if self.planned is not None:
            return "\n".join([f"dry run: {len(self.planned)} image(s), nothing written"] + [
                f"  {p['name']}  seed {p['seed']}  {json.dumps(p['randomized'], sort_keys=True)}"
                for p in self.planned])
        lines = [
            f"{self.output}: {len(self.manifest)} image(s) in the manifest",
            f"  generated {len(self.generated)}, resumed {len(self.resumed)}, "
            f"already complete {len(self.skipped_complete)}, failed {len(self.failed)}, "
            f"stale {len(self.stale)}, non-images skipped {len(self.skipped)}",
        ]
        lines += [f"  skipped {s['path']}: {s['reason']}" for s in self.skipped]
        for rec in self.manifest:
            if rec["status"] in ("failed", "stale"):
                lines.append(f"  {rec['status']} {rec['name']}: {rec.get('error')}")
        return "\n".join(lines)


@with_storage_errors("cannot read")
def read_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The manifest records of a dataset store (local path or object-store URL; empty list if
    it has none).

    Raises
    ------
    ConfigError
        When ``path`` is not a Zarr group.
    """
    import zarr

    try:
        root = zarr.open_group(location(path).zarr_store(read_only=True), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise ConfigError(f"{path}: not a ganx-dask dataset store") from exc
    return list(root.attrs.get("manifest", []))


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _open_root(output: str, params: dict[str, Any], overwrite: bool):
    import zarr

    loc = location(output)
    try:
        root = zarr.open_group(loc.zarr_store(), mode="a", zarr_format=3)
    except (PermissionError, OSError) as exc:
        if loc.is_remote:
            raise remote_error(loc, "cannot write", exc) from None
        raise ConfigError(f"output {output} is not writable: {exc}") from exc
    except (zarr.errors.ContainsArrayError, ValueError) as exc:
        raise ConfigError(f"output {output} exists and is not a dataset group: {exc}") from exc
    old = root.attrs.get("batch")
    changed = old is not None and old != params
    if changed and not overwrite:
        diff = sorted(k for k in set(old) | set(params) if old.get(k) != params.get(k))
        raise ConfigError(
            f"{output} was made with different batch parameters ({', '.join(diff)}); "
            "use a new output or --overwrite (regenerates every image)"
        )
    return root, changed


def _check_writable(output: str) -> None:
    """Fail before any work when the output cannot be created (a real probe: works as root)."""
    location(output).check_writable()  # the one implementation (storage.py)


def _check_shared_inputs(gen: dict[str, Any], library_path: str | None, pigments=None):
    """Validate the generation parameters and load + render the pigment library once.

    Returns the loaded :class:`~ganx_dask.pigments.PigmentLibrary`, reduced to ``pigments``
    when given (``None``: the default library).  Raises the :class:`GanxError` that every image
    would otherwise fail with.
    """
    from ..generator import _resolve_library, _validate
    from ..pigments.library import select_pigments

    ax = _validate({"seed": 0, "luminosity": None, **gen})
    library = _resolve_library(library_path)
    if pigments is not None:
        library = select_pigments(library, pigments)
    library.spectra(ax, gen.get("instrument"))  # unknown instrument, axes that do not overlap
    return library if library_path is not None or pigments is not None else None


def run_batch(
    images: Sequence[str | os.PathLike] | None,
    output: str | os.PathLike | None,
    config: str | os.PathLike | Mapping[str, Any] | None = None,
    *,
    seed: int | None = None,
    overwrite: bool | None = None,
    generation: Mapping[str, Any] | None = None,
    progress: bool = False,
    dry_run: bool = False,
) -> BatchReport:
    """Generate one cube per image into ``output`` (one group each) and maintain the manifest.

    Runs on the active dask scheduler (the CLI sets one up); builds no cluster.

    Parameters
    ----------
    images : sequence of path-like or None
        Folders, globs or files; ``None`` uses the config's ``images``.
    output : path-like or None
        Dataset store (local path or object-store URL, ``s3://bucket/prefix/ds.zarr``); ``None``
        uses the config's ``output``.
    config : path-like, mapping or None
        Batch configuration (see ``pipelines/batch/README.md``).
    seed : int or None
        Master seed, overriding the config.
    overwrite : bool or None
        Overrides the config's ``overwrite``.
    generation : mapping or None
        Generation options overriding the config's ``generation`` section (validated the same).
    progress : bool
        Show a progress bar per image.
    dry_run : bool
        Only validate and draw: the report's ``planned`` lists each image's seed and randomised
        parameters; nothing is written (no output needed).

    Returns
    -------
    BatchReport

    Raises
    ------
    ConfigError
        Invalid configuration, no output, an unwritable output, or a dataset made with different
        parameters.
    ImageError
        No images found.
    """
    from ..store import is_complete
    from . import randomize

    cfg = load_batch_config(config)
    if generation:
        merged = {**{k: v for k, v in cfg["generation"].items()}, **dict(generation)}
        cfg["generation"] = validate(merged, generation_schema(), source="generation options",
                                     prefix="generation.")
    if seed is not None:
        cfg["seed"] = validate({"seed": seed}, {"seed": BATCH_SCHEMA["seed"]}, source="--seed")["seed"]
    check_seed(cfg["seed"], "batch key 'seed'")
    if overwrite is not None:
        cfg["overwrite"] = bool(overwrite)
    sources = list(images) if images else cfg["images"]
    if not sources:
        raise ConfigError("no images given (IMAGES arguments or the config's 'images')")
    out = os.fspath(output) if output is not None else cfg["output"]
    if not out and not dry_run:
        raise ConfigError("no output dataset given (-o DATASET.zarr or the config's 'output')")
    if out:
        location(out)  # an unsupported URL scheme fails before any work
    files, skipped = collect_images(sources, recursive=cfg["recursive"])
    if not dry_run:
        _check_writable(out)

    gen = dict(cfg["generation"])
    library_path, pigments = gen.pop("library"), gen.pop("pigments")
    params = _jsonable({"seed": cfg["seed"], "generation": gen, "library": library_path})
    if pigments is not None:  # only then: datasets made without the key keep their parameters
        params["pigments"] = pigments
    # inputs shared by every image are checked once, before the dataset is created or touched:
    # a bad parameter, library file, instrument or energy axis fails the whole batch up front
    library = _check_shared_inputs(gen, library_path, pigments)
    draws, params = randomize.batch_draws(cfg, config, files, gen, library, params)
    if dry_run:
        return BatchReport(output=out or "", skipped=skipped, planned=[
            {"name": group_name(p), "image": str(p), "seed": image_seed(cfg["seed"], group_name(p)),
             "randomized": draws[group_name(p)]} for p in files])

    root, _ = _open_root(out, params, cfg["overwrite"])
    phash = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    manifest = {rec["name"]: rec for rec in root.attrs.get("manifest", [])}
    old_skipped = {s["path"]: s for s in root.attrs.get("skipped", [])}
    old_skipped.update({s["path"]: s for s in skipped})
    report = BatchReport(output=out, skipped=skipped)

    def save() -> None:
        root.attrs.update(
            {
                "batch": params,
                "manifest": _jsonable(list(manifest.values())),
                "skipped": list(old_skipped.values()),
            }
        )

    save()
    jobs: list[ImageJob] = []
    for path in files:
        name = group_name(path)
        sha = file_sha256(path)
        img_seed = image_seed(cfg["seed"], name)
        prev = manifest.get(name)
        rec = {
            "name": name, "image": str(path), "sha256": sha, "seed": img_seed,
            "shape": prev.get("shape") if prev else None, "status": "pending",
            "group": name, "error": None, "parameters": phash,
        }
        if draws[name]:
            rec["randomized"] = draws[name]
        group_exists = name in root
        done = group_exists and is_complete(out, group=name)
        changed = None
        if group_exists and prev is not None and prev.get("parameters", phash) != phash:
            changed = "generated with different batch parameters"
        elif group_exists and prev is not None and prev.get("sha256") != sha:
            changed = "image content changed since it was generated"
        if changed:
            if not cfg["overwrite"]:
                rec.update(status="stale", error=f"{changed}; re-run with --overwrite to "
                           "regenerate", sha256=prev.get("sha256"),
                           parameters=prev.get("parameters"))
                manifest[name] = rec
                report.stale.append(name)
                warnings.warn(f"{path}: {rec['error']}", UserWarning, stacklevel=2)
                continue
            mode = {"overwrite": True}
        elif done:
            rec.update(status="complete", shape=prev.get("shape") if prev else None)
            if rec["shape"] is None:
                rec["shape"] = _group_shape(out, name)
            manifest[name] = rec
            report.skipped_complete.append(name)
            continue
        elif group_exists:
            mode = {"resume": True}
        else:
            mode = {}
        manifest[name] = rec
        try:
            img_gen, img_library = randomize.image_generation(gen, library, draws[name])
        except GanxError as exc:
            rec.update(status="failed", error=str(exc))
            report.failed.append(name)
            log.warning("%s: %s", path, exc)
            continue
        jobs.append(ImageJob(name, str(path), img_seed, mode, gen=img_gen,
                             library=None if img_library is library else img_library,
                             attrs={"randomized": draws[name]} if draws[name] else None))
    save()  # every image to generate is recorded as pending before any work starts
    _generate_images(jobs, out, library, gen, manifest, report, save, progress)
    report.manifest = list(manifest.values())
    return report


def _generate_images(jobs: list, out: str, library, gen: dict[str, Any],
                     manifest: dict[str, dict], report: BatchReport, save, progress: bool) -> None:
    """Run the pending images concurrently (:mod:`.image_pool`), recording each outcome.

    The manifest is saved at most every :data:`_SAVE_EVERY_S` seconds while images finish, and
    at the end: a run killed in between leaves finished images marked ``pending``, and the next
    run finds their groups complete and skips them (the groups' own ``complete`` flags decide).
    """
    import time

    from .image_pool import run_images

    order = {name: i for i, name in enumerate(manifest)}
    last = [time.monotonic()]

    def on_result(job, shape, error) -> None:
        rec = manifest[job.name]
        if shape is not None:
            rec["shape"] = shape
        if error is not None:
            rec.update(status="failed", error=error)
            report.failed.append(job.name)
            log.warning("%s: %s", job.path, error)
        else:
            rec.update(status="complete")
            (report.resumed if job.mode.get("resume") else report.generated).append(job.name)
        if time.monotonic() - last[0] >= _SAVE_EVERY_S:
            save()
            last[0] = time.monotonic()

    try:
        run_images(jobs, out, library, gen, on_result=on_result, progress=progress)
    finally:
        save()
        for names in (report.generated, report.resumed, report.failed):
            names.sort(key=order.__getitem__)  # input order, whatever the completion order


#: Minimum seconds between two manifest writes while images finish.
_SAVE_EVERY_S = 2.0


def _group_shape(out: str, name: str) -> list[int] | None:
    import zarr

    try:
        counts = zarr.open_group(location(out).zarr_store(read_only=True), mode="r")[name]["counts"]
    except (KeyError, FileNotFoundError):
        return None
    return [int(counts.shape[0]), int(counts.shape[1])]
