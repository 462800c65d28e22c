"""Where dask runs: the active scheduler of a CLI/pipeline run, and clusters built from configs.

Library functions never build clusters: they use whatever dask scheduler is active (a
``distributed.Client`` made current, or the local default).  The CLI and the pipelines call
:func:`scheduler_context` to set one up from ``--scheduler``/``--cluster-config``: a local dask
scheduler, an existing distributed scheduler (address or scheduler file), or a cluster built from
one of the YAML files in ``cluster_configs/`` (:func:`cluster_from_config`).  A cluster
configuration is a YAML mapping whose ``kind`` chooses the backend:

=============  ===========================================================  =====================
``kind``       what is built                                                needs
=============  ===========================================================  =====================
``local``      :class:`distributed.LocalCluster` on this machine            ``distributed``
``processes``  a :class:`distributed.Client` joining ``dask scheduler`` +   ``distributed``
               ``dask worker`` processes through a scheduler file/address
``slurm``      :class:`dask_jobqueue.SLURMCluster`, scaled to ``jobs``      extra ``[jobqueue]``
``pbs``        :class:`dask_jobqueue.PBSCluster`, scaled to ``jobs``        extra ``[jobqueue]``
``kubernetes`` :class:`dask_kubernetes.operator.KubeCluster` from a         extra ``[kubernetes]``
               ``DaskCluster`` spec
=============  ===========================================================  =====================

Worker settings the workload needs are applied here: threads per worker, memory limits, and the
nanny's ``MALLOC_TRIM_THRESHOLD_``.  distributed's nanny exports ``MALLOC_TRIM_THRESHOLD_=65536``
to every worker (``distributed.nanny.pre-spawn-environ``); for this workload (many >128 KiB
temporaries per tile) that costs +30–40 % wall time and +35–45 % CPU (measured, see
``docs/distributed.md``).  ``malloc_trim_threshold: null`` (the default) leaves the variable unset
so glibc keeps its dynamic mmap threshold; an integer sets it (bytes).

Workers started by a batch system or Kubernetes cannot see our process's dask config, so those
backends start workers with the launcher ``python -m ganx_dask.scheduling [dask worker options]``,
which is ``dask worker`` with ``MALLOC_TRIM_THRESHOLD_`` removed from the nanny's pre-spawn
environment.  For hand-started workers, point ``DASK_CONFIG`` at
``cluster_configs/dask/ganx-dask.yaml`` (or copy it into ``~/.config/dask/``), or use the launcher.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import dask

from .errors import ConfigError
from .pipelines.config import Option, load_yaml, validate

__all__ = [
    "active_client",
    "compute",
    "scheduler_context",
    "LOCAL_SCHEDULERS",
    "KINDS",
    "SCHEMAS",
    "MALLOC_TRIM_KEY",
    "load_cluster_config",
    "make_cluster",
    "kubernetes_spec",
    "cluster_from_config",
    "client_from_config",
    "worker_malloc_trim",
    "check_worker_settings",
    "worker_config",
]


def active_client():
    """The ``distributed.Client`` that dask computations go to, or ``None`` (local scheduler).

    Never imports ``distributed`` (≈ 0.5 s): a client exists only if it was imported already
    (the same fact :func:`compute` relies on).
    """
    if (dask.config.get("scheduler", None) not in (None, "dask.distributed")
            or "distributed" not in sys.modules):
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


def compute(*collections, **kwargs) -> tuple:
    """:func:`dask.compute` (of arrays and delayed objects) without importing ``distributed``
    needlessly.

    dask's scheduler lookup imports ``distributed`` to look for a client (≈ 0.4–0.5 s, paid
    inside a process's first computation).  No client can exist before ``distributed`` was
    imported, so until then the local scheduler asked for (``scheduler=`` by name, else
    ``dask.config`` ``scheduler``, default the threaded one) is passed as its function: the
    same scheduler dask would choose.
    """
    if "distributed" not in sys.modules:
        from dask.base import named_schedulers
        from dask.threaded import get as threaded_get

        name = kwargs.get("scheduler", dask.config.get("scheduler", None))
        if name is None:
            kwargs["scheduler"] = threaded_get
        elif isinstance(name, str) and name.lower() in named_schedulers:
            kwargs["scheduler"] = named_schedulers[name.lower()]
    return dask.compute(*collections, **kwargs)


#: dask config key of the nanny's malloc-trim environment variable.
MALLOC_TRIM_KEY = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"

#: distributed's default value of ``MALLOC_TRIM_THRESHOLD_`` (bytes), which slows this workload.
_DISTRIBUTED_DEFAULT_TRIM = "65536"

#: ``python -m`` target that starts a dask worker with ganx-dask's worker settings.
WORKER_MODULE = "ganx_dask.scheduling"

_MALLOC = Option(
    int,
    None,
    "glibc `MALLOC_TRIM_THRESHOLD_` for worker processes, bytes; null = unset (recommended: "
    "distributed's 65536 costs +30-40 % wall time on this workload).",
    nullable=True,
    minimum=0,
)
_TIMEOUT = Option(float, 60.0, "Seconds to wait for the scheduler and the first workers.", minimum=0)
_WAIT = Option(int, 1, "Workers to wait for before starting work (0 = do not wait).", minimum=0)
_ENV = Option(dict, {}, "Extra environment variables for worker processes (name: value).")
_KIND = {
    "local": Option(str, "local", "Backend.", choices=("local",)),
    "processes": Option(str, "processes", "Backend.", choices=("processes",)),
    "slurm": Option(str, "slurm", "Backend.", choices=("slurm",)),
    "pbs": Option(str, "pbs", "Backend.", choices=("pbs",)),
    "kubernetes": Option(str, "kubernetes", "Backend.", choices=("kubernetes",)),
}

_JOBQUEUE: dict[str, Option] = {
    "jobs": Option(int, 1, "Batch jobs to submit (each runs `processes` workers).", minimum=0),
    "maximum_jobs": Option(
        int, None, "If set, scale adaptively between `jobs` and this many jobs.", nullable=True,
        minimum=1,
    ),
    "cores": Option(int, 2, "CPU cores per job (threads per worker = cores / processes).", minimum=1),
    "processes": Option(int, 2, "Worker processes per job.", minimum=1),
    "memory": Option(str, "8GiB", "Memory per job (split evenly between its workers)."),
    "walltime": Option(str, "01:00:00", "Job wall-clock limit, HH:MM:SS."),
    "queue": Option(str, None, "Queue / partition.", nullable=True),
    "account": Option(str, None, "Account / project to charge.", nullable=True),
    "job_name": Option(str, "ganx-dask", "Name of the batch jobs."),
    "job_extra_directives": Option(list, [], "Extra `#SBATCH`/`#PBS` directive lines."),
    "job_script_prologue": Option(list, [], "Shell lines run before the worker (module load, venv activation)."),
    "worker_extra_args": Option(list, [], "Extra `dask worker` options."),
    "local_directory": Option(str, None, "Worker scratch directory on the node (spilling).", nullable=True),
    "log_directory": Option(str, None, "Directory for the job logs.", nullable=True),
    "interface": Option(str, None, "Network interface of workers and scheduler (e.g. ib0).", nullable=True),
    "python": Option(str, None, "Python executable on the nodes (default: this one).", nullable=True),
    "death_timeout": Option(float, 120.0, "Seconds a worker waits for an absent scheduler before exiting.", minimum=0),
    "malloc_trim_threshold": _MALLOC,
    "worker_env": _ENV,
    "timeout": Option(float, 600.0, "Seconds to wait for the first workers (queue wait).", minimum=0),
    "wait_for_workers": _WAIT,
}

#: Schema of each cluster kind (see :func:`ganx_dask.pipelines.config.describe`).
SCHEMAS: dict[str, dict[str, Option]] = {
    "local": {
        "kind": _KIND["local"],
        "workers": Option(int, 2, "Worker processes (or threads pools if `processes: false`).", minimum=1),
        "threads_per_worker": Option(int, 1, "Threads per worker.", minimum=1),
        "memory_limit": Option((str, int), "auto", "Memory limit per worker (`4GiB`, bytes, or `auto`)."),
        "processes": Option(bool, True, "Workers in separate processes (true) or threads (false)."),
        "dashboard_address": Option(str, None, "Dashboard address, e.g. `:8787`; null = no dashboard.", nullable=True),
        "local_directory": Option(str, None, "Worker scratch directory (spilling).", nullable=True),
        "malloc_trim_threshold": _MALLOC,
        "worker_env": _ENV,
        "timeout": _TIMEOUT,
    },
    "processes": {
        "kind": _KIND["processes"],
        "scheduler_file": Option(str, None, "Scheduler file written by `dask scheduler --scheduler-file` (relative paths: to the config file).", nullable=True),
        "address": Option(str, None, "Scheduler address `tcp://host:port` (instead of a scheduler file).", nullable=True),
        "timeout": _TIMEOUT,
        "wait_for_workers": _WAIT,
    },
    "slurm": {"kind": _KIND["slurm"], **_JOBQUEUE},
    "pbs": {
        "kind": _KIND["pbs"],
        **_JOBQUEUE,
        "resource_spec": Option(str, None, "PBS `-l` resource request (default from cores/memory).", nullable=True),
    },
    "kubernetes": {
        "kind": _KIND["kubernetes"],
        "name": Option(str, "ganx-dask", "Name of the DaskCluster resource."),
        "namespace": Option(str, None, "Kubernetes namespace (null = current context's).", nullable=True),
        "image": Option(str, "ghcr.io/dask/dask:latest", "Container image; must contain ganx-dask (see README)."),
        "n_workers": Option(int, 2, "Worker pods.", minimum=0),
        "threads_per_worker": Option(int, 1, "Threads per worker pod.", minimum=1),
        "memory_limit": Option(str, "auto", "dask worker memory limit per pod (`4GiB` or `auto`)."),
        "resources": Option(dict, None, "Pod resources `{requests: {...}, limits: {...}}`.", nullable=True),
        "scheduler_service_type": Option(str, "ClusterIP", "Service type of the scheduler.", choices=("ClusterIP", "NodePort", "LoadBalancer")),
        "idle_timeout": Option(int, 0, "Seconds of idleness before the operator deletes the cluster (0 = never).", minimum=0),
        "malloc_trim_threshold": _MALLOC,
        "worker_env": _ENV,
        "timeout": _TIMEOUT,
        "wait_for_workers": _WAIT,
    },
}

#: Supported values of ``kind``.
KINDS = tuple(SCHEMAS)


def load_cluster_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a cluster configuration YAML.

    Parameters
    ----------
    path : path-like
        The YAML file (see ``cluster_configs/``).

    Returns
    -------
    dict
        Every key of the kind's schema (defaults filled in), plus ``_path`` (the file).

    Raises
    ------
    ConfigError
        Missing file, invalid YAML, missing/unknown ``kind``, an unknown key or a wrong type (the
        message names the key).
    """
    path = os.fspath(path)
    data = load_yaml(path)
    kind = data.get("kind")
    if kind is None:
        raise ConfigError(f"{path}: missing key 'kind' (one of {list(KINDS)})")
    if kind not in SCHEMAS:
        raise ConfigError(f"{path}: key 'kind' must be one of {list(KINDS)}, got {kind!r}")
    cfg = validate(data, SCHEMAS[kind], source=path)
    for key in ("worker_env",):
        if key in cfg:
            cfg[key] = _env_mapping(cfg[key], f"{path}: key {key!r}")
    for key in ("job_extra_directives", "job_script_prologue", "worker_extra_args"):
        if key in cfg and not all(isinstance(v, (str, int, float)) for v in cfg[key]):
            raise ConfigError(f"{path}: key {key!r} must be a list of strings")
    if kind == "processes":
        if (cfg["scheduler_file"] is None) == (cfg["address"] is None):
            raise ConfigError(f"{path}: give exactly one of 'scheduler_file' and 'address'")
        if cfg["scheduler_file"] is not None:
            cfg["scheduler_file"] = os.path.join(
                os.path.dirname(os.path.abspath(path)), os.path.expanduser(cfg["scheduler_file"])
            )
    cfg["_path"] = path
    return cfg


def _env_mapping(env: Mapping[str, Any], where: str) -> dict[str, str]:
    out = {}
    for k, v in env.items():
        if not isinstance(k, str) or isinstance(v, (dict, list)) or v is None:
            raise ConfigError(f"{where}: entry {k!r} must map a name to a string or number")
        out[k] = str(v)
    return out


def worker_config(malloc_trim_threshold: int | None = None) -> dict[str, Any]:
    """The dask config ganx-dask wants in worker nannies.

    Parameters
    ----------
    malloc_trim_threshold : int or None
        Bytes, or ``None`` to leave ``MALLOC_TRIM_THRESHOLD_`` unset (recommended).
    """
    return {MALLOC_TRIM_KEY: malloc_trim_threshold}


def _worker_env(cfg: Mapping[str, Any]) -> dict[str, str]:
    env = dict(cfg.get("worker_env") or {})
    if cfg.get("malloc_trim_threshold") is not None:
        env["MALLOC_TRIM_THRESHOLD_"] = str(cfg["malloc_trim_threshold"])
    return env


def _jobqueue_kwargs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    prologue = [f"export {k}={_shell_quote(v)}" for k, v in _worker_env(cfg).items()]
    prologue += [str(line) for line in cfg["job_script_prologue"]]
    extra_args = ["--nanny"]
    if cfg["processes"] > 1:
        extra_args += ["--nworkers", str(cfg["processes"])]
    extra_args += [str(a) for a in cfg["worker_extra_args"]]
    kwargs: dict[str, Any] = {
        "cores": cfg["cores"],
        "processes": cfg["processes"],
        "memory": cfg["memory"],
        "walltime": cfg["walltime"],
        "queue": cfg["queue"],
        "account": cfg["account"],
        "job_name": cfg["job_name"],
        "job_extra_directives": [str(d) for d in cfg["job_extra_directives"]],
        "job_script_prologue": prologue,
        "worker_command": WORKER_MODULE,
        "worker_extra_args": extra_args,
        "local_directory": cfg["local_directory"],
        "log_directory": cfg["log_directory"],
        "interface": cfg["interface"],
        "death_timeout": cfg["death_timeout"],
        "python": cfg["python"] or sys.executable,
        "n_workers": 0,
    }
    if cfg["kind"] == "pbs" and cfg["resource_spec"] is not None:
        kwargs["resource_spec"] = cfg["resource_spec"]
    return {k: v for k, v in kwargs.items() if v is not None}


def _shell_quote(value: str) -> str:
    import shlex

    return shlex.quote(value)


def kubernetes_spec(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``DaskCluster`` resource (a dict) for a validated ``kind: kubernetes`` config.

    Built with :func:`dask_kubernetes.operator.make_cluster_spec`; workers run the ganx-dask
    launcher (``python -m ganx_dask.scheduling``) with the configured threads and memory limit, so
    the nanny does not export ``MALLOC_TRIM_THRESHOLD_`` (unless ``malloc_trim_threshold`` is set).

    Raises
    ------
    ConfigError
        When dask-kubernetes is not installed (``pip install 'ganx-dask[kubernetes]'``).
    """
    try:
        from dask_kubernetes.operator import make_cluster_spec
    except ImportError as exc:
        raise ConfigError(
            f"{cfg.get('_path', 'cluster config')}: kind 'kubernetes' needs dask-kubernetes "
            "(pip install 'ganx-dask[kubernetes]')"
        ) from exc
    command = (
        f"python -m {WORKER_MODULE} --nthreads {cfg['threads_per_worker']} "
        f"--memory-limit {cfg['memory_limit']}"
    )
    spec = make_cluster_spec(
        name=cfg["name"],
        image=cfg["image"],
        n_workers=cfg["n_workers"],
        resources=cfg["resources"],
        env=_worker_env(cfg) or None,
        worker_command=command,
        scheduler_service_type=cfg["scheduler_service_type"],
        idle_timeout=cfg["idle_timeout"],
    )
    return spec


@contextlib.contextmanager
def _restore_spawn_environ() -> Iterator[None]:
    """Undo what distributed's nanny writes into *this* process's ``os.environ``.

    Before spawning a worker process the nanny runs ``os.environ.update(pre_spawn_env)`` in the
    calling process (``MALLOC_TRIM_THRESHOLD_``, ``PYTHONHASHSEED``, ...) and never restores it,
    so a local cluster built with ``malloc_trim_threshold: 1048576`` would leave that value in the
    client's environment, inherited by every later subprocess and worker.  The keys the nanny can
    set are restored to their previous values (or removed) on exit.
    """
    keys = set(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    keys |= {"MALLOC_TRIM_THRESHOLD_", "PYTHONHASHSEED"}
    saved = {k: os.environ.get(k) for k in keys}
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def make_cluster(cfg: Mapping[str, Any]) -> Any:
    """Build (but do not scale) the cluster object of a validated config.

    For ``slurm``/``pbs`` this starts a local scheduler and submits nothing (call ``.scale()``);
    ``cluster.job_script()`` shows what would be submitted.  For ``local`` the workers start.
    ``processes`` and ``kubernetes`` have no cluster object here (see :func:`cluster_from_config`).

    Raises
    ------
    ConfigError
        When the backend's optional dependency is missing.
    """
    kind = cfg["kind"]
    if kind == "local":
        from distributed import LocalCluster

        with dask.config.set(worker_config(cfg["malloc_trim_threshold"])), _restore_spawn_environ():
            return LocalCluster(
                n_workers=cfg["workers"],
                threads_per_worker=cfg["threads_per_worker"],
                processes=cfg["processes"],
                memory_limit=cfg["memory_limit"],
                dashboard_address=cfg["dashboard_address"],
                local_directory=cfg["local_directory"],
                env=_worker_env(cfg) or None,
                host="127.0.0.1",
            )
    if kind in ("slurm", "pbs"):
        try:
            import dask_jobqueue
        except ImportError as exc:
            raise ConfigError(
                f"{cfg.get('_path', 'cluster config')}: kind {kind!r} needs dask-jobqueue "
                "(pip install 'ganx-dask[jobqueue]')"
            ) from exc
        cls = dask_jobqueue.SLURMCluster if kind == "slurm" else dask_jobqueue.PBSCluster
        return cls(**_jobqueue_kwargs(cfg))
    raise ConfigError(f"kind {kind!r} has no cluster object; use cluster_from_config")


def worker_malloc_trim() -> str | None:
    """Value of ``MALLOC_TRIM_THRESHOLD_`` in the calling process (run on workers)."""
    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


def check_worker_settings(client: Any) -> dict[str, str | None]:
    """Warn when connected workers run with distributed's slow malloc-trim default.

    Parameters
    ----------
    client : distributed.Client

    Returns
    -------
    dict
        Worker address → its ``MALLOC_TRIM_THRESHOLD_`` (None = unset).
    """
    import warnings

    values = client.run(worker_malloc_trim, on_error="return")  # a dying worker is no error
    values = {w: v for w, v in values.items() if v is None or isinstance(v, str)}
    slow = [w for w, v in values.items() if v == _DISTRIBUTED_DEFAULT_TRIM]
    if slow:
        warnings.warn(
            f"{len(slow)} dask worker(s) run with MALLOC_TRIM_THRESHOLD_={_DISTRIBUTED_DEFAULT_TRIM} "
            "(distributed's default), which makes generation ~30 % slower; start workers with "
            "DASK_CONFIG=cluster_configs/dask/ganx-dask.yaml or `python -m ganx_dask.scheduling`",
            RuntimeWarning,
            stacklevel=2,
        )
    return values


def _wait(client: Any, n: int, timeout: float, what: str) -> None:
    if n <= 0:
        return
    try:
        client.wait_for_workers(n, timeout=timeout)
    except (TimeoutError, OSError) as exc:
        raise ConfigError(f"{what}: fewer than {n} worker(s) joined within {timeout:g} s") from exc


@contextlib.contextmanager
def _quiet_distributed() -> Iterator[None]:
    """Keep distributed's INFO chatter (scheduler/nanny start and stop) out of a CLI run whose
    root logger is at WARNING or above; restores the level afterwards."""
    import distributed  # noqa: F401 - importing it configures its loggers; do that first

    logger = logging.getLogger("distributed")
    old = logger.level
    if logging.getLogger().level >= logging.WARNING and logger.getEffectiveLevel() < logging.WARNING:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(old)


@contextlib.contextmanager
def client_from_config(cfg: Mapping[str, Any]) -> Iterator[Any]:
    """Like :func:`cluster_from_config`, from an already validated config dict."""
    with _quiet_distributed(), _client_from_config(cfg) as client:
        yield client


@contextlib.contextmanager
def _client_from_config(cfg: Mapping[str, Any]) -> Iterator[Any]:
    from distributed import Client

    kind = cfg["kind"]
    where = cfg.get("_path", "cluster config")
    if kind == "processes":
        target = cfg["scheduler_file"] or cfg["address"]
        kwargs = (
            {"scheduler_file": cfg["scheduler_file"]}
            if cfg["scheduler_file"]
            else {"address": cfg["address"]}
        )
        if cfg["scheduler_file"] and not os.path.exists(cfg["scheduler_file"]):
            raise ConfigError(
                f"{where}: scheduler file {cfg['scheduler_file']} does not exist "
                "(start `dask scheduler --scheduler-file ...` first)"
            )
        try:
            client = Client(timeout=cfg["timeout"], **kwargs)
        except (OSError, TimeoutError) as exc:
            raise ConfigError(
                f"{where}: cannot reach dask scheduler {target} within {cfg['timeout']:g} s: {exc}"
            ) from exc
        with client:
            _wait(client, cfg["wait_for_workers"], cfg["timeout"], where)
            check_worker_settings(client)
            yield client
        return
    if kind == "kubernetes":
        try:
            from dask_kubernetes.operator import KubeCluster
        except ImportError as exc:
            raise ConfigError(
                f"{where}: kind 'kubernetes' needs dask-kubernetes "
                "(pip install 'ganx-dask[kubernetes]')"
            ) from exc
        kwargs = {"custom_cluster_spec": kubernetes_spec(cfg)}
        if cfg["namespace"]:
            kwargs["namespace"] = cfg["namespace"]
        with KubeCluster(**kwargs) as cluster, Client(cluster) as client:
            _wait(client, cfg["wait_for_workers"], cfg["timeout"], where)
            yield client
        return
    # the nanny may respawn workers (after a crash) while the cluster lives: restore at the end too
    with _restore_spawn_environ(), make_cluster(cfg) as cluster:
        if kind in ("slurm", "pbs"):
            if cfg["maximum_jobs"] is not None:
                cluster.adapt(minimum_jobs=cfg["jobs"], maximum_jobs=cfg["maximum_jobs"])
            else:
                cluster.scale(jobs=cfg["jobs"])
        with Client(cluster) as client:
            if kind in ("slurm", "pbs"):
                _wait(client, cfg["wait_for_workers"], cfg["timeout"], where)
            yield client


@contextlib.contextmanager
def cluster_from_config(path: str | os.PathLike) -> Iterator[Any]:
    """Build the cluster described by a ``cluster_configs/*.yaml`` file and yield a client.

    Parameters
    ----------
    path : path-like
        Cluster configuration (``kind: local | processes | slurm | pbs | kubernetes``).

    Yields
    ------
    distributed.Client
        Connected, with at least ``wait_for_workers`` workers; the cluster (if this function
        built it) is shut down when the block exits.

    Raises
    ------
    ConfigError
        Invalid configuration, missing optional dependency, unreachable scheduler, or no workers
        within ``timeout`` seconds.
    """
    cfg = load_cluster_config(path)
    with client_from_config(cfg) as client:
        yield client


#: Names accepted by ``--scheduler`` that use dask's single-machine schedulers.
LOCAL_SCHEDULERS = ("threads", "processes", "synchronous", "sync", "single-threaded")


@contextlib.contextmanager
def scheduler_context(
    scheduler: str | None = None,
    cluster_config: str | None = None,
    *,
    timeout: float = 10.0,
) -> Iterator[object | None]:
    """Activate a dask scheduler for the duration of the ``with`` block.

    Parameters
    ----------
    scheduler : str or None
        ``None`` or ``"threads"`` (default local threaded scheduler), ``"processes"``,
        ``"synchronous"``, or the address of a running distributed scheduler (``tcp://host:port``)
        or a scheduler file (``*.json``).
    cluster_config : str or None
        Path to a cluster configuration YAML (see ``cluster_configs/``); mutually exclusive with a
        scheduler address.
    timeout : float
        Seconds to wait when connecting to a remote scheduler.

    Yields
    ------
    distributed.Client or None
        The client when a distributed scheduler is used, else ``None``.
    """
    if cluster_config is not None:
        if scheduler not in (None, "threads"):
            raise ConfigError("give either --scheduler ADDRESS or --cluster-config FILE, not both")
        with cluster_from_config(cluster_config) as client:
            yield client
        return
    if scheduler is None or scheduler in LOCAL_SCHEDULERS:
        name = {"sync": "synchronous", "single-threaded": "synchronous"}.get(
            scheduler or "threads", scheduler or "threads"
        )
        with dask.config.set(scheduler=name):
            yield None
        return
    from distributed import Client

    kwargs = {"scheduler_file": scheduler} if scheduler.endswith(".json") else {"address": scheduler}
    if "scheduler_file" in kwargs and not os.path.exists(scheduler):
        raise ConfigError(f"scheduler file {scheduler} does not exist (is `dask scheduler` running?)")
    if "address" in kwargs and "://" not in scheduler and ":" not in scheduler:
        raise ConfigError(
            f"--scheduler {scheduler!r}: expected one of {', '.join(LOCAL_SCHEDULERS)}, "
            "an address tcp://HOST:PORT or a scheduler file *.json"
        )
    try:
        client = Client(timeout=timeout, **kwargs)
    except (OSError, TimeoutError) as exc:
        raise ConfigError(
            f"cannot reach dask scheduler {scheduler!r} within {timeout:g} s: {exc}"
        ) from exc
    try:
        if client.scheduler_info().get("workers"):
            check_worker_settings(client)
        yield client
    finally:
        client.close()


def _worker_main(argv: list[str] | None = None) -> None:
    """``dask worker`` with ganx-dask's nanny settings (``python -m ganx_dask.scheduling ...``)."""
    from distributed.cli.dask_worker import main

    dask.config.set(worker_config(None))
    main(args=argv if argv is not None else sys.argv[1:], prog_name="ganx-dask-worker")


if __name__ == "__main__":  # pragma: no cover - exercised through subprocesses
    _worker_main()
