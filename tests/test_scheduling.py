"""scheduler_context and joining real ``dask scheduler``/``dask worker`` processes."""

import os
import socket
import sys
import time

import dask
import dask.array as da
import numpy as np
import pytest
import yaml

from ganx_dask.errors import ConfigError
from ganx_dask.scheduling import cluster_from_config, compute, scheduler_context, worker_malloc_trim

from .dask_processes import ProcessCluster, clean_environ

pytestmark = pytest.mark.cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(("name", "expected"), [("synchronous", "synchronous"),
                                                ("sync", "synchronous"), ("processes", "processes"),
                                                (None, "threads")])
def test_local_schedulers_are_activated_and_restored(name, expected):
    before = dask.config.get("scheduler", None)
    with scheduler_context(name) as client:
        assert client is None
        assert dask.config.get("scheduler") == expected
        assert da.ones(10, chunks=5).sum().compute() == 10
    assert dask.config.get("scheduler", None) == before


def test_unreachable_scheduler_is_a_clear_error_within_the_timeout():
    addr = f"tcp://127.0.0.1:{_free_port()}"  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"cannot reach dask scheduler .*127\.0\.0\.1.* 1 s"):
        with scheduler_context(addr, timeout=1.0):
            pass
    assert time.monotonic() - t0 < 30  # bounded: the 1 s timeout plus client start-up


def test_bad_scheduler_arguments(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        with scheduler_context(str(tmp_path / "scheduler.json")):
            pass
    with pytest.raises(ConfigError, match="expected one of"):
        with scheduler_context("thredas"):
            pass
    cfg = tmp_path / "local.yaml"
    cfg.write_text("kind: local\n")
    with pytest.raises(ConfigError, match="not both"):
        with scheduler_context("tcp://127.0.0.1:1", cluster_config=str(cfg)):
            pass


def test_unreachable_scheduler_from_a_processes_config(tmp_path):
    p = tmp_path / "processes.yaml"
    p.write_text(yaml.safe_dump({"kind": "processes", "address": f"tcp://127.0.0.1:{_free_port()}",
                                 "timeout": 1}))
    with pytest.raises(ConfigError, match=f"{p}: cannot reach dask scheduler"):
        with cluster_from_config(p):
            pass
    p.write_text(yaml.safe_dump({"kind": "processes", "scheduler_file": "missing.json"}))
    with pytest.raises(ConfigError, match="missing.json does not exist"):
        with cluster_from_config(p):
            pass


def test_real_scheduler_and_worker_processes(tmp_path):
    """Join `dask scheduler` + 2 `dask worker` processes by address, scheduler file and config;
    the shipped dask config and the launcher unset MALLOC_TRIM_THRESHOLD_, plain workers warn."""
    with ProcessCluster(tmp_path, n_workers=2) as pc:
        with scheduler_context(pc.address, timeout=10) as client:
            assert len(client.scheduler_info(n_workers=-1)["workers"]) == 2
            x = da.arange(1000, chunks=100)
            assert int(x.sum().compute()) == 499500  # runs on the worker processes
            who = client.run(os.getpid)
            assert os.getpid() not in who.values() and len(set(who.values())) == 2
            assert set(client.run(worker_malloc_trim).values()) == {None}
        with scheduler_context(str(pc.scheduler_file), timeout=10) as client:
            assert len(client.scheduler_info(n_workers=-1)["workers"]) == 2
        cfg = tmp_path / "processes.yaml"
        cfg.write_text("kind: processes\nscheduler_file: scheduler.json\nwait_for_workers: 2\n"
                       "timeout: 20\n")
        with cluster_from_config(cfg) as client:
            assert len(client.scheduler_info(n_workers=-1)["workers"]) == 2

        # a worker started by the launcher without any dask config: trim unset
        env = {k: v for k, v in clean_environ().items() if k != "DASK_CONFIG"}
        pc.add_worker(2, launcher=[sys.executable, "-m", "ganx_dask.scheduling"], env=env)
        # a plain `dask worker` without the shipped config: distributed's 65536, and a warning
        pc.add_worker(3, env=env)
        pc.wait_for_workers(4)
        with pytest.warns(RuntimeWarning, match="MALLOC_TRIM_THRESHOLD_=65536"):
            with scheduler_context(pc.address, timeout=10) as client:
                values = client.run(worker_malloc_trim)
        assert sorted(values.values(), key=str) == sorted([None, None, None, "65536"], key=str)


def test_local_runs_do_not_import_distributed(tmp_path):
    """A local generate + write never imports ``distributed`` (dask's scheduler lookup would,
    ≈ 0.5 s): ``scheduling.compute`` passes the configured local scheduler itself."""
    from PIL import Image

    img = tmp_path / "img.png"
    Image.new("RGB", (24, 16), (200, 30, 30)).save(img)
    code = f"""
import sys, threading, dask, dask.array as da
from ganx_dask import generate, store
from ganx_dask.scheduling import compute
ds = generate({str(img)!r}, seed=1, energy="1:20:32", counts=50, chunks=64)
store.to_zarr(ds, {str(tmp_path / 'out.zarr')!r})
seen = []
x = da.ones(8, chunks=4).map_blocks(lambda b: seen.append(threading.current_thread()) or b)
with dask.config.set(scheduler="synchronous"):
    compute(x)
assert set(seen) == {{threading.main_thread()}}, seen
assert "distributed" not in sys.modules
print("ok")
"""
    import subprocess

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=clean_environ(), timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]


@pytest.mark.parametrize("name, error, match", [
    ("dask.distributed", RuntimeError, "no Client"),  # asked for a cluster that is not there
    ("bogus", ValueError, "Expected one of"),
])
def test_compute_keeps_dask_errors_for_unusable_schedulers(name, error, match):
    """``scheduling.compute`` only short-cuts local schedulers it knows: a distributed scheduler
    without a client, or an unknown name, fails with dask's own clear error (nothing runs)."""
    ran = []
    x = da.ones(4, chunks=2).map_blocks(lambda b: ran.append(1) or b, meta=np.array(()))
    with dask.config.set(scheduler=name), pytest.raises(error, match=match):
        compute(x)
    with pytest.raises(error, match=match):
        compute(x, scheduler=name)
    assert ran == []
