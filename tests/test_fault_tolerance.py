"""Fault tolerance with real processes: a worker SIGKILLed mid-run, a client SIGKILLed and resumed.

Both end byte-identical (counts values and every zarr chunk file) to an uninterrupted
single-process (synchronous) run.
"""

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from ganx_dask.attrs import decode

from .dask_processes import ProcessCluster, ganx_cmd, kill_group, wait_until

pytestmark = pytest.mark.cluster

#: generation options shared by every run here: 256x512 px, 64-px regions -> 32 regions
OPTS = ["--seed", "3", "--energy", "0.5:38.5:128", "--counts", "2000", "--chunk", "64",
        "--n-start", "4", "--delta", "1", "--fit-samples", "4000", "--score-batch", "512",
        "--no-progress"]
N_REGIONS = 32
TIMEOUT = 120


def _image(path: Path) -> Path:
    rng = np.random.default_rng(1)
    h, w = 256, 512
    cols = np.array([[200, 40, 30], [30, 60, 170], [240, 230, 210], [40, 120, 60]])
    lab = ((np.arange(h)[:, None] // 64) + (np.arange(w)[None, :] // 96)) % 4
    a = np.clip(cols[lab] + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(a).save(path)
    return path


def _run(args, log: Path, timeout=TIMEOUT) -> subprocess.CompletedProcess:
    with open(log, "wb") as fh:
        proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        finally:
            kill_group(proc)
    out = log.read_text(errors="replace")
    assert proc.returncode == 0, out
    return subprocess.CompletedProcess(args, proc.returncode, out)


def _records(store: Path) -> int:
    """Region records written: chunk files of ``region_complete`` (named by their integer index;
    a worker SIGKILLed mid-write may leave a temporary file beside them, which zarr ignores)."""
    d = store / "_internal" / "region_complete" / "c"
    return sum(1 for p in d.rglob("*") if p.is_file() and p.name.isdigit()) if d.is_dir() else 0


def _data_files(store: Path) -> dict[str, bytes]:
    """Every chunk file of every array (metadata ``zarr.json`` files carry timestamps)."""
    return {str(p.relative_to(store)): p.read_bytes()
            for p in sorted(store.rglob("*")) if p.is_file() and p.name != "zarr.json"}


def assert_byte_identical(store: Path, ref: Path) -> None:
    a, b = zarr.open_group(str(store), mode="r"), zarr.open_group(str(ref), mode="r")
    assert a.attrs["complete"] == 1
    assert np.array_equal(a["counts"][...], b["counts"][...])
    fa, fb = _data_files(store), _data_files(ref)
    assert sorted(fa) == sorted(fb)
    assert any(k.startswith("counts/c/") for k in fa)
    diff = [k for k in fa if fa[k] != fb[k]]
    assert diff == []


@pytest.fixture(scope="module")
def image_and_reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ft")
    img = _image(tmp / "painting.png")
    ref = tmp / "reference.zarr"
    _run(ganx_cmd("generate", img, "-o", ref, *OPTS, "--scheduler", "synchronous"),
         tmp / "reference.log")
    assert _records(ref) == N_REGIONS
    return img, ref


def test_worker_killed_mid_run_gives_identical_bytes(tmp_path, image_and_reference):
    img, ref = image_and_reference
    out = tmp_path / "cluster.zarr"
    log = tmp_path / "client.log"
    with ProcessCluster(tmp_path / "cluster", n_workers=2, timeout=60) as pc:
        with open(log, "wb") as fh:
            client = subprocess.Popen(
                ganx_cmd("generate", img, "-o", out, *OPTS, "--scheduler", pc.address),
                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            # kill worker 0 once the first region is recorded, while most are still to do
            wait_until(lambda: _records(out) >= 1, TIMEOUT, "the first region record", [client])
            done_at_kill = _records(out)
            assert pc.workers[0].poll() is None
            pc.kill_worker(0)
            assert pc.workers[0].returncode is not None
            client.wait(timeout=TIMEOUT)
        finally:
            kill_group(client)
        output = log.read_text(errors="replace")
        assert client.returncode == 0, output + pc.logs()
        assert pc.workers[1].poll() is None  # the surviving worker finished the job
        scheduler_log = (tmp_path / "cluster" / "scheduler.log").read_text(errors="replace")
        assert "Remove worker" in scheduler_log  # the scheduler saw the loss
    assert done_at_kill < N_REGIONS  # the kill happened mid-run
    assert _records(out) == N_REGIONS
    assert_byte_identical(out, ref)


def test_client_killed_then_resume_computes_only_missing_regions(tmp_path, image_and_reference):
    img, ref = image_and_reference
    out = tmp_path / "resumed.zarr"
    log = tmp_path / "killed.log"
    with open(log, "wb") as fh:
        client = subprocess.Popen(
            ganx_cmd("generate", img, "-o", out, *OPTS, "--scheduler", "synchronous"),
            stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_until(lambda: _records(out) >= 2, TIMEOUT, "two region records", [client])
        kill_group(client)  # SIGKILL: no cleanup code runs
    finally:
        kill_group(client)
    done = _records(out)
    assert 2 <= done < N_REGIONS, log.read_text(errors="replace")
    assert zarr.open_group(str(out), mode="r").attrs["complete"] == 0

    res = _run(ganx_cmd("generate", img, "-o", out, *OPTS, "--resume"), tmp_path / "resume.log")
    m = re.search(r"computing (\d+) of (\d+) regions", res.stdout)
    assert m, res.stdout
    computed, total = int(m.group(1)), int(m.group(2))
    assert total == N_REGIONS and computed == N_REGIONS - done
    assert 0 < computed < total
    rec = decode(zarr.open_group(str(out), mode="r").attrs)["resumed"]
    assert rec[-1]["regions_computed"] == computed
    assert_byte_identical(out, ref)
    assert os.path.getsize(out / "zarr.json") > 0
