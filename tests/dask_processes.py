"""Real ``dask scheduler`` / ``dask worker`` subprocesses on 127.0.0.1 for the cluster tests.

:class:`ProcessCluster` starts them in their own process groups (so a worker's nanny and worker
process die together), waits for them by polling a condition with a bounded timeout, and kills
every group on exit, also when the test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["ProcessCluster", "REPO", "DASK", "wait_until", "kill_group", "ganx_cmd", "clean_environ"]

REPO = Path(__file__).resolve().parents[1]
_BIN = Path(sys.executable).parent
DASK = str(_BIN / "dask") if (_BIN / "dask").exists() else None
WORKER_DASK_CONFIG = REPO / "cluster_configs" / "dask" / "ganx-dask.yaml"


def ganx_cmd(*args: str) -> list[str]:
    """The ``ganx-dask`` CLI as a subprocess command line (this interpreter)."""
    return [sys.executable, "-m", "ganx_dask", *map(str, args)]


def wait_until(condition, timeout: float, what: str, procs=()) -> None:
    """Poll ``condition()`` until true; fail after ``timeout`` s or if a process in ``procs`` exits."""
    deadline = time.monotonic() + timeout
    while not condition():
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"process {p.args!r} exited with {p.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def kill_group(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGKILL the process group of ``proc`` (started with ``start_new_session``) and reap it.

    The group is signalled even when its leader has already exited: a ``dask worker`` nanny
    that died (or was reaped by an earlier ``poll()``) may leave its worker process behind, and
    that process is still in the group (whose id stays reserved while it has members).
    """
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # the group is gone
        pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:  # pragma: no cover
        pass


def clean_environ() -> dict:
    """This process's environment without ``MALLOC_TRIM_THRESHOLD_``: an in-process
    ``LocalCluster`` (other tests) makes distributed's nanny write its pre-spawn value into
    ``os.environ``, which every subprocess would inherit; the tests check what the shipped
    config and the launcher do, so workers must not inherit it."""
    return {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}


def _env(extra: dict | None = None) -> dict:
    env = clean_environ()
    env["DASK_CONFIG"] = str(WORKER_DASK_CONFIG)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra or {})
    return env


class ProcessCluster:
    """``dask scheduler`` + ``n_workers`` × ``dask worker --nworkers 1 --nthreads 1``.

    Parameters
    ----------
    tmp : Path
        Directory for the scheduler file, logs and worker scratch space.
    n_workers : int
    timeout : float
        Bound (s) on every wait.
    """

    def __init__(self, tmp: Path, n_workers: int = 2, timeout: float = 60.0) -> None:
        self.tmp = Path(tmp)
        self.n_workers = n_workers
        self.timeout = timeout
        self.scheduler_file = self.tmp / "scheduler.json"
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self._logs: list = []
        self.address: str | None = None

    def _popen(self, args: list[str], name: str, env: dict | None = None) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed in close()
        self._logs.append(log)
        return subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=env or _env(),
            start_new_session=True, cwd=self.tmp,
        )

    def _dask(self, *args: str) -> list[str]:
        if DASK is not None:
            return [DASK, *args]
        mod = {"scheduler": "distributed.cli.dask_scheduler", "worker": "distributed.cli.dask_worker"}
        return [sys.executable, "-m", mod[args[0]], *args[1:]]

    def start(self) -> ProcessCluster:
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.scheduler = self._popen(
            self._dask("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                       "--scheduler-file", str(self.scheduler_file)),
            "scheduler",
        )
        wait_until(self.scheduler_file.exists, self.timeout, "the scheduler file", [self.scheduler])
        import json

        wait_until(lambda: self._read_address(json) is not None, self.timeout, "scheduler address",
                   [self.scheduler])
        for i in range(self.n_workers):
            self.add_worker(i)
        self.wait_for_workers(self.n_workers)
        return self

    def _read_address(self, json):
        try:
            self.address = json.loads(self.scheduler_file.read_text())["address"]
        except (ValueError, KeyError, OSError):
            return None
        return self.address

    def add_worker(
        self, i: int, launcher: list[str] | None = None, env: dict | None = None
    ) -> subprocess.Popen:
        """Start worker ``i``: ``dask worker`` (or ``launcher`` + the same options).

        ``env`` replaces the environment (default: this one + ``DASK_CONFIG`` pointing at the
        shipped ``cluster_configs/dask/ganx-dask.yaml``).
        """
        opts = ["--scheduler-file", str(self.scheduler_file), "--host", "127.0.0.1",
                "--nworkers", "1", "--nthreads", "1", "--memory-limit", "1GiB",
                "--no-dashboard", "--local-directory", str(self.tmp / f"w{i}"), "--name", f"w{i}"]
        args = [*launcher, *opts] if launcher else self._dask("worker", *opts)
        proc = self._popen(args, f"worker{i}", env)
        self.workers.append(proc)
        return proc

    def n_connected(self) -> int:
        from distributed import Client

        with Client(self.address, timeout=self.timeout) as c:
            return len(c.scheduler_info(n_workers=-1)["workers"])

    def wait_for_workers(self, n: int) -> None:
        from distributed import Client

        with Client(self.address, timeout=self.timeout) as c:
            deadline = time.monotonic() + self.timeout
            while len(c.scheduler_info(n_workers=-1)["workers"]) < n:
                for p in self.workers:
                    if p.poll() is not None and p.returncode != -signal.SIGKILL:
                        raise RuntimeError(f"worker exited with {p.returncode}: {self.logs()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"fewer than {n} workers after {self.timeout:g} s: {self.logs()}")
                time.sleep(0.05)

    def kill_worker(self, i: int) -> None:
        """SIGKILL worker ``i`` (nanny and worker process)."""
        kill_group(self.workers[i])

    def logs(self) -> str:
        out = []
        for f in sorted(self.tmp.glob("*.log")):
            out.append(f"--- {f.name}\n{f.read_text(errors='replace')[-2000:]}")
        return "\n".join(out)

    def __enter__(self) -> ProcessCluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for p in self.workers:
            kill_group(p)
        if self.scheduler is not None:
            kill_group(self.scheduler)
        for log in self._logs:
            log.close()

    def __exit__(self, *exc) -> None:
        self.close()
