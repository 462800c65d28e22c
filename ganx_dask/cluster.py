"""Choosing where dask runs: a local scheduler, an existing cluster, or one built from a config.

Library functions never build clusters: they use whatever dask scheduler is active (a
``distributed.Client`` made current, or the local default).  The CLI and the pipelines call
:func:`scheduler_context` to set one up from ``--scheduler``/``--cluster-config``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import dask

from .errors import ConfigError

__all__ = ["scheduler_context", "LOCAL_SCHEDULERS"]

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
        from .clusters import cluster_from_config  # built by the distributed-production work

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
        from .clusters import check_worker_settings

        if client.scheduler_info().get("workers"):
            check_worker_settings(client)
        yield client
    finally:
        client.close()
