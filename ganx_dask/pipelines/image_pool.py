"""Running many images on one pool of workers: the ``batch`` pipeline's scheduler.

Images are independent, so a collection keeps every worker busy by running them side by side
instead of one after another:

* a **small** image (at most :data:`WHOLE_IMAGE_REGIONS` regions) is one task that runs the whole
  image — read, clustering fit, template, Monte Carlo, write — on one worker thread, with dask's
  synchronous scheduler inside the task (no nested graph, no per-region round trip);
* a **large** image is fitted and its template written by the caller (while the workers run
  other images), then its regions are queued as separate tasks on the same pool, and its store is
  finished when the last one is done.

The pool is the active scheduler's: a ``distributed.Client`` (tasks on its workers); for
dask's local ``processes`` scheduler a pool of ``num_workers`` single-threaded worker processes
(default: the CPU count; ``forkserver`` start, the heavy imports done once in the fork server,
the batch's library sent once per worker), the default of ``ganx-dask batch``; for the local
threaded scheduler a thread pool of ``num_workers`` threads (the Python-heavy per-image work of
many small images then contends for the GIL).  With the ``synchronous`` scheduler the images
run one after another, each region by region.

Every image's bytes come from its own seed and per-tile random streams, so the store of an image
is identical whichever way, order or worker it runs on.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dask

from ..errors import GanxError
from ..pigments import PigmentLibrary

__all__ = ["ImageJob", "WHOLE_IMAGE_REGIONS", "run_image", "run_images", "synchronous_dask",
           "image_pixels", "spectra_memo"]

#: Images of at most this many regions (``chunks``² pixels each) run as one task.
WHOLE_IMAGE_REGIONS = 4


@dataclass
class ImageJob:
    """One image to generate into ``group`` of the dataset.

    Attributes
    ----------
    name : str
        Group name (also the manifest name).
    path : str
        Image file.
    seed : int
        The image's seed.
    mode : dict
        Keyword arguments of :func:`ganx_dask.store.to_zarr`: ``{}``, ``{"resume": True}`` or
        ``{"overwrite": True}``.
    gen : dict or None
        This image's generation options (e.g. with randomised draws); ``None``: the batch's.
    library : PigmentLibrary or None
        This image's library (e.g. a drawn palette); ``None``: the batch's.
    attrs : dict or None
        Extra dataset attributes (e.g. ``randomized``: the image's draws).
    """

    name: str
    path: str
    seed: int
    mode: dict = field(default_factory=dict)
    gen: dict | None = None
    library: Any = None
    attrs: dict | None = None

    def options(self, gen: Mapping[str, Any], library) -> tuple[Mapping[str, Any], Any]:
        """``(generation options, library)`` of this image, given the batch's."""
        return (self.gen if self.gen is not None else gen,
                self.library if self.library is not None else library)


#: ``on_result(job, shape, error)``: shape ``[y, x]`` (pixels) or None; error message or None.
OnResult = Callable[[ImageJob, "list[int] | None", "str | None"], None]

_SYNC_LOCK = threading.Lock()
_SYNC_STATE: dict[str, Any] = {"depth": 0, "saved": None}
_MISSING = object()


@contextmanager
def synchronous_dask() -> Iterator[None]:
    """Make dask computations of this process synchronous while any caller is inside.

    A whole-image task runs its small nested computations (the clustering subsample, the
    template's small variables, its regions) in its own thread: on a distributed worker they
    would otherwise be sent back to the scheduler from a task that holds a worker thread, and in
    a local thread pool they would start a second pool.  ``dask.config.set`` is process-global, so
    the setting is reference-counted: the first caller sets it, the last one restores it, and
    concurrent callers on other threads never see it undone under them.
    """
    with _SYNC_LOCK:
        if _SYNC_STATE["depth"] == 0:
            _SYNC_STATE["saved"] = dask.config.config.get("scheduler", _MISSING)
            dask.config.set(scheduler="synchronous")
        _SYNC_STATE["depth"] += 1
    try:
        yield
    finally:
        with _SYNC_LOCK:
            _SYNC_STATE["depth"] -= 1
            if _SYNC_STATE["depth"] == 0:
                saved = _SYNC_STATE["saved"]
                if saved is _MISSING:
                    dask.config.config.pop("scheduler", None)
                else:
                    dask.config.set(scheduler=saved)


def spectra_memo(library):
    """``library`` (``None``: the default library) as a copy that keeps the spectra it renders.

    Every image of a batch asks for the same pigment spectra (one energy axis, one
    instrument); rendering them costs about as much as clustering a small image.  The copy keys
    its memo on ``dask.base.tokenize(energy, instrument)`` and hands out copies, so the
    spectra, and the bytes, are those of a fresh render.  It lives for one batch: nobody
    changes its pigments meanwhile.
    """
    from ..generator import _resolve_library

    lib = _resolve_library(library)
    return _SpectraMemo(list(lib), name=lib.name, version=lib.version,
                        instrument=lib.instrument, description=lib.description)


class _SpectraMemo(PigmentLibrary):
    """A :class:`PigmentLibrary` that keeps the spectra it renders (see :func:`spectra_memo`)."""

    def spectra(self, energy, instrument=None):
        from dask.base import tokenize

        memo = self.__dict__.setdefault("_memo", {})
        key = tokenize(energy, instrument)
        if key not in memo:
            memo[key] = super().spectra(energy, instrument)
        return memo[key].copy(deep=True)


def run_image(path: str, library, seed: int, gen: Mapping[str, Any], out: str, group: str,
              mode: Mapping[str, Any], attrs: Mapping[str, Any] | None = None,
              synchronous: bool = True,
              progress: bool = False) -> tuple[list[int] | None, str | None]:
    """Generate one image into ``group`` of ``out`` (a task: module level, pickles by name).

    Returns
    -------
    shape : list of int or None
        ``[y, x]`` pixels (``None`` if the image could not be read).
    error : str or None
        The message of a :class:`~ganx_dask.errors.GanxError` (the image failed); other
        exceptions propagate.
    """
    from ..generator import generate
    from ..store import to_zarr

    if isinstance(library, _WorkerLibrary):
        library = _WORKER["library"]
    shape = None
    # a new image's group did not exist when the batch started: if it exists now, an earlier
    # attempt of this very task wrote it (a worker died, distributed retried): finish it
    mode = dict(mode) or {"resume": True}
    ctx = synchronous_dask() if synchronous else _nullcontext()
    with ctx:
        try:
            ds = generate(str(path), library, seed=seed, **gen)
            ds.attrs.update(attrs or {})
            shape = [int(ds.sizes["y"]), int(ds.sizes["x"])]
            to_zarr(ds, out, group=group, progress=progress, **mode)
        except GanxError as exc:
            return shape, str(exc)
    return shape, None


@contextmanager
def _nullcontext() -> Iterator[None]:
    yield


def _compute_sync(task) -> Any:
    """Compute one delayed region task in the calling thread."""
    return dask.compute(task, scheduler="synchronous")[0]


def image_pixels(path: str | os.PathLike) -> int | None:
    """Pixel count from the file header (nothing decoded); ``None`` when it cannot be read."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
        return int(w) * int(h)
    except Exception:  # noqa: BLE001 - e.g. BigTIFF, not a Pillow format: try tifffile
        pass
    try:
        import tifffile

        with tifffile.TiffFile(path) as tf:
            shape = tf.series[0].shape
            axes = tf.series[0].axes
        return int(shape[axes.index("Y")]) * int(shape[axes.index("X")])
    except Exception:  # noqa: BLE001 - unreadable: the generation reports it
        return None


# ------------------------------------------------------------------------------------- pools
class _ThreadPool:
    """dask's local threaded scheduler as a pool of ``n`` threads."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._ex = cf.ThreadPoolExecutor(max_workers=n, thread_name_prefix="ganx-batch")

    def submit(self, fn, *args):
        return self._ex.submit(fn, *args)

    def submit_tasks(self, tasks: Sequence) -> list:
        return [self._ex.submit(_compute_sync, t) for t in tasks]

    def share(self, obj):
        return obj

    @staticmethod
    def wait_first(futures) -> set:
        return cf.wait(futures, return_when=cf.FIRST_COMPLETED)[0]

    def close(self, cancel: bool) -> None:
        self._ex.shutdown(wait=True, cancel_futures=cancel)


class _ClientPool:
    """A ``distributed.Client``'s workers."""

    def __init__(self, client) -> None:
        self.client = client
        self.n = sum(w.get("nthreads", 1)
                     for w in client.scheduler_info().get("workers", {}).values()) or 1

    def submit(self, fn, *args):
        return self.client.submit(fn, *args, pure=False)

    def submit_tasks(self, tasks: Sequence) -> list:
        return list(self.client.compute(list(tasks)))

    def share(self, obj):
        # one copy per worker instead of one per task
        return obj if obj is None else self.client.scatter(obj, broadcast=True, hash=False)

    @staticmethod
    def wait_first(futures) -> set:
        from distributed import wait

        return set(wait(list(futures), return_when="FIRST_COMPLETED").done)

    def close(self, cancel: bool) -> None:
        pass


class _WorkerLibrary:
    """Stands for the batch's library in a task: the worker process's copy (sent once)."""


#: State of a worker process of :class:`_ProcessPool` (set by :func:`_init_worker`).
_WORKER: dict[str, Any] = {}

#: Imported once by the fork server, so that every worker process starts with them (the fork
#: server skips those that fail to import, e.g. the numba kernels without numba: ≈ 1–2 s of
#: imports saved per worker).
_PRELOAD = ["ganx_dask.pipelines.image_pool", "ganx_dask.generator", "ganx_dask.store",
            "ganx_dask.sampling", "ganx_dask.clustering", "sklearn.cluster", "sklearn.metrics",
            "threadpoolctl", "ganx_dask._numba_kernels"]


def _init_worker(library: bytes) -> None:
    """Initialiser of a worker process: single-threaded numerics, the batch's library."""
    import pickle

    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)  # one image per process: no BLAS/OpenMP oversubscription
    dask.config.set(scheduler="synchronous")  # nested computations stay in the task
    _WORKER["library"] = pickle.loads(library)


class _ProcessPool:
    """``n`` single-threaded worker processes (dask's local ``processes`` scheduler).

    Workers are forked from a fork server that imported the heavy modules once
    (:data:`_PRELOAD`), so each costs a fork, not an interpreter start; the batch's library
    (with the spectra it rendered) goes to each worker once, not with every task.
    """

    def __init__(self, n: int, library) -> None:
        import multiprocessing as mp
        import pickle

        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        ctx = mp.get_context(method)
        if method == "forkserver":
            ctx.set_forkserver_preload(_PRELOAD)
        self.n = n
        self._ex = cf.ProcessPoolExecutor(max_workers=n, mp_context=ctx,
                                          initializer=_init_worker,
                                          initargs=(pickle.dumps(library),))
        self._library = library

    def submit(self, fn, *args):
        return self._ex.submit(fn, *args)

    def submit_tasks(self, tasks: Sequence) -> list:
        from dask.delayed import Delayed
        from dask.optimization import cull

        # each task with only its own part of the graph (0.1–0.3 MB pickled, when it is sent to
        # a worker: a few at a time), not the whole image's (≈ 13 MB at 2048²)
        return [self._ex.submit(_compute_sync, Delayed(t.key, cull(dict(t.__dask_graph__()),
                                                                   [t.key])[0]))
                for t in tasks]

    def share(self, obj):
        return _WorkerLibrary() if obj is self._library else obj

    wait_first = staticmethod(_ThreadPool.wait_first)

    def close(self, cancel: bool) -> None:
        self._ex.shutdown(wait=True, cancel_futures=cancel)


def _pool(library):
    """The pool of the active scheduler, or ``None`` to run images one after another."""
    from ..scheduling import active_client

    client = active_client()
    if client is not None:
        return _ClientPool(client)
    scheduler = dask.config.get("scheduler", None)
    if scheduler in (None, "threads", "threading", "processes", "multiprocessing"):
        from dask.system import CPU_COUNT

        n = int(dask.config.get("num_workers", None) or CPU_COUNT)
        if scheduler in ("processes", "multiprocessing"):
            return _ProcessPool(n, library)
        return _ThreadPool(n)
    return None


@dataclass
class _Regions:
    """A large image whose regions are queued."""

    job: ImageJob
    plan: Any
    shape: list[int]
    left: int


def run_images(jobs: Sequence[ImageJob], out: str, library, gen: Mapping[str, Any], *,
               on_result: OnResult, progress: bool = False) -> None:
    """Generate every job's image into its group of ``out`` on the active scheduler's workers.

    Parameters
    ----------
    jobs : sequence of ImageJob
    out : str
        Dataset store.
    library : PigmentLibrary or None
        Loaded pigment library (``None``: the default).
    gen : mapping
        Keyword options of :func:`ganx_dask.generate` (without ``library`` and ``seed``).
    on_result : callable
        Called in the calling thread as each image finishes: ``on_result(job, shape, error)``.
    progress : bool
        Print ``done/total images`` to stderr as images finish (per-region bars when the
        images run one after another).
    """
    library = spectra_memo(library)
    pool = _pool(library)
    if pool is None:
        for job in jobs:
            job_gen, job_lib = job.options(gen, library)
            on_result(job, *run_image(job.path, job_lib, job.seed, job_gen, out, job.name,
                                      job.mode, job.attrs, synchronous=False,
                                      progress=progress))
        return
    small, large = [], []
    for job in jobs:
        chunks = int(job.options(gen, library)[0].get("chunks", 256))
        px = image_pixels(job.path)
        whole = px is not None and px <= WHOLE_IMAGE_REGIONS * chunks * chunks
        (small if whole else large).append(job)
    pending: dict[Any, tuple[str, Any]] = {}
    total, finished = len(jobs), [0]

    def report(job: ImageJob, shape, error) -> None:
        finished[0] += 1
        if progress:
            print(f"[batch] {finished[0]}/{total} images ({job.name}"
                  f"{': failed' if error else ''})", file=sys.stderr, flush=True)
        on_result(job, shape, error)

    def collect(futures) -> None:
        for fut in futures:
            kind, what = pending.pop(fut)
            if kind == "image":
                report(what, *fut.result())
                continue
            fut.result()  # a failed region task raises here
            what.left -= 1
            if what.left == 0:
                from ..store import finish_write

                finish_write(what.plan)
                report(what.job, what.shape, None)

    ok = False
    try:
        lib = pool.share(library)
        for job in small:
            job_gen, job_lib = job.options(gen, lib)
            fut = pool.submit(run_image, job.path, job_lib, job.seed, job_gen, out, job.name,
                              job.mode, job.attrs)
            pending[fut] = ("image", job)
        for job in large:
            collect([f for f in list(pending) if f.done()])
            _queue_regions(pool, job, out, library, gen, pending, report)
        while pending:
            collect(pool.wait_first(list(pending)))
        ok = True
    finally:
        pool.close(cancel=not ok)


def _queue_regions(pool, job: ImageJob, out: str, library, gen, pending: dict,
                   report: Callable) -> None:
    """Fit a large image and write its template here, then queue its regions on the pool."""
    from ..generator import generate
    from ..store import finish_write, plan_write

    shape = None
    job_gen, job_lib = job.options(gen, library)
    # with worker processes, this process's own computations (fit sample, template) use threads
    local = dask.config.set(scheduler="threads") if isinstance(pool, _ProcessPool) else (
        _nullcontext())
    try:
        with local:
            ds = generate(job.path, job_lib, seed=job.seed, **job_gen)
            ds.attrs.update(job.attrs or {})
            shape = [int(ds.sizes["y"]), int(ds.sizes["x"])]
            plan = plan_write(ds, out, group=job.name, **job.mode)
    except GanxError as exc:
        report(job, shape, str(exc))
        return
    if not plan.tasks:
        finish_write(plan)
        report(job, shape, None)
        return
    state = _Regions(job, plan, shape, len(plan.tasks))
    for fut in pool.submit_tasks(plan.tasks):
        pending[fut] = ("region", state)
