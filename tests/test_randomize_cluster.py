"""A randomised batch on a real cluster (``dask scheduler`` + 2 ``dask worker`` processes), one
worker SIGKILLed when the first image is complete: the dataset is byte-identical to a
synchronous run."""

import json
import subprocess

import dask
import numpy as np
import pytest
import yaml
import zarr

from ganx_dask.attrs import decode
from ganx_dask.pipelines.batch import read_manifest, run_batch

from .dask_processes import ProcessCluster, ganx_cmd, kill_group, wait_until
from .test_randomize import _images

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

N_IMAGES = 20
TIMEOUT = 600
CONFIG = {
    "seed": 21,
    "generation": {"energy": "0.5:38.5:64", "counts": 200, "chunks": 32, "tile": 32,
                   "n_start": 3, "delta": 0, "fit_samples": 400, "score_batch": 128},
    "randomize": {
        "counts": {"log_uniform": [100, 400], "integer": True},
        "count_model": {"choices": ["fixed", "poisson"]},
        "threshold": {"uniform": [0.3, 0.7]},
        "pigments": {"subset": [3, 5], "from": ["vermilion", "natural ultramarine", "chalk",
                                                "malachite", "lead-tin yellow I"]},
        "instrument": {"preset": {"choices": ["lab-rh", "lab-mo"]}},
        "detector": {"pulse_pair_ns": {"uniform": [100, 600]},
                     "input_rate_cps": {"log_uniform": [1e4, 2e5]},
                     "blur_fwhm_px": {"uniform": [0, 1.5]}},
    },
}


def _data_files(store):
    """Every chunk file (metadata ``zarr.json`` files carry creation timestamps)."""
    return {str(p.relative_to(store)): p.read_bytes()
            for p in sorted(store.rglob("*")) if p.is_file() and p.name != "zarr.json"}


def _n_complete(store) -> int:
    try:  # the root zarr.json is rewritten while we read it: an unreadable moment is "not yet"
        return sum(r["status"] == "complete" for r in read_manifest(store))
    except (ValueError, KeyError, OSError, json.JSONDecodeError):
        return 0
    except Exception:  # noqa: BLE001 - zarr's own error for a half-written metadata file
        return 0


def test_worker_killed_mid_randomised_batch_gives_identical_bytes(tmp_path):
    _images(tmp_path / "imgs", N_IMAGES)
    cfg = tmp_path / "batch.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    ref = tmp_path / "sync.zarr"
    with dask.config.set(scheduler="synchronous"):
        report = run_batch([tmp_path / "imgs"], ref, cfg)
    assert len(report.generated) == N_IMAGES and not report.failed
    out = tmp_path / "cluster.zarr"
    with ProcessCluster(tmp_path / "cluster", n_workers=2, timeout=120) as pc:
        log = open(tmp_path / "batch.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            ganx_cmd("batch", tmp_path / "imgs", "-o", out, "--config", cfg,
                     "--scheduler", pc.scheduler_file),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            # progress, not time, triggers the kill: the first image recorded complete
            wait_until(lambda: _n_complete(out) >= 1, TIMEOUT, "the first complete image",
                       [proc])
            assert _n_complete(out) < N_IMAGES, "the batch ended before the kill"
            pc.kill_worker(0)
            assert proc.wait(timeout=TIMEOUT) == 0, (tmp_path / "batch.log").read_text()
        finally:
            kill_group(proc)
            log.close()
        assert pc.workers[0].poll() is not None  # really dead; the other worker finished
    manifest = read_manifest(out)
    assert [r["status"] for r in manifest] == ["complete"] * N_IMAGES
    assert _data_files(out) == _data_files(ref)
    ref_root, root = zarr.open_group(str(ref), mode="r"), zarr.open_group(str(out), mode="r")
    for rec, ref_rec in zip(manifest, read_manifest(ref), strict=True):
        assert rec["randomized"] == ref_rec["randomized"]
        assert decode(root[rec["name"]].attrs)["randomized"] == rec["randomized"]
        assert root[rec["name"]].attrs["fingerprint"] == ref_root[rec["name"]].attrs["fingerprint"]
    # the draws vary across the dataset (domain randomisation, not one instrument)
    presets = {r["randomized"]["instrument.preset"] for r in manifest}
    counts = {r["randomized"]["counts"] for r in manifest}
    assert presets == {"lab-rh", "lab-mo"} and len(counts) > 10
    assert np.asarray(root["img00"]["counts"][...]).sum() > 0
