"""Run a command as a subprocess and measure wall time, CPU time and peak RSS of its process tree.

Peak RSS is the maximum over time of the summed resident set size of the process and all its
descendants (dask worker processes included), polled every ``interval`` seconds (default 0.05)
with psutil (a dependency of distributed).  CPU time is the user+system time of the whole tree: the larger of
``getrusage(RUSAGE_CHILDREN)`` after the wait (which includes every descendant its parent reaped)
and the sum of the last polled CPU times of each process seen (which covers descendants that were
not reaped, e.g. killed workers).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time

import psutil

__all__ = ["run_measured"]


def run_measured(cmd: list[str], *, env: dict | None = None, interval: float = 0.05,
                 timeout: float | None = None, cwd: str | None = None) -> dict:
    """Run ``cmd`` and return ``{"wall_s", "cpu_s", "peak_rss_bytes", "returncode", "stdout",
    "stderr", "result"}``; ``result`` is the JSON object printed on the last stdout line, if any."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=cwd)
    peak = 0
    cpu_seen: dict[int, float] = {}
    stop = threading.Event()

    def poll() -> None:
        nonlocal peak
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not stop.is_set():
            total = 0
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            for p in procs:
                try:
                    total += p.memory_info().rss
                    t = p.cpu_times()
                    cpu_seen[p.pid] = t.user + t.system
                except psutil.NoSuchProcess:
                    pass
            peak = max(peak, total)
            stop.wait(interval)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_rusage = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result = None
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                pass
            break
    return {
        "wall_s": wall,
        "cpu_s": max(cpu_rusage, sum(cpu_seen.values())),
        "peak_rss_bytes": int(peak),
        "returncode": proc.returncode,
        "stdout": out[-4000:],
        "stderr": err[-4000:],
        "result": result,
    }


if __name__ == "__main__":  # pragma: no cover - manual use: python _measure.py CMD...
    r = run_measured(sys.argv[1:], env=dict(os.environ))
    print(json.dumps({k: v for k, v in r.items() if k not in ("stdout", "stderr")}, indent=1))
