"""Concurrent batches (issue 12): same bytes as one-image-at-a-time, resume/skip, ds.to_zarr."""

import shutil
import threading

import dask
import numpy as np
import pytest
import yaml
import zarr
from PIL import Image

from ganx_dask import generate, to_zarr
from ganx_dask.attrs import decode
from ganx_dask.pipelines.batch import read_manifest, run_batch
from ganx_dask.pipelines.image_pool import WHOLE_IMAGE_REGIONS, image_pixels, synchronous_dask
from ganx_dask.store import RECORD, is_complete

from .test_batch import _files  # every file of a group but the metadata (creation times)

GEN = {"energy": "0.5:38.5:128", "counts": 50, "chunks": 64, "n_start": 3, "delta": 1,
       "fit_samples": 2000, "score_batch": 256}
# 64² px regions: the 192×192 image (9 regions) runs region by region, the others whole
SIZES = {"a": (64, 64), "b": (64, 128), "c": (128, 128), "big": (192, 192), "d": (96, 64)}


def _painting(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cols = rng.integers(0, 256, (4, 3))
    lab = (np.arange(h)[:, None] // 24 + np.arange(w)[None, :] // 40) % 4
    return np.clip(cols[lab] + rng.normal(0, 5, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("cimages")
    for i, (name, (h, w)) in enumerate(SIZES.items()):
        Image.fromarray(_painting(h, w, i)).save(d / f"{name}.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return d


@pytest.fixture(scope="module")
def sequential(folder, tmp_path_factory):
    """The reference: dask's synchronous scheduler runs the images one after another."""
    out = tmp_path_factory.mktemp("seq") / "ds.zarr"
    with dask.config.set(scheduler="synchronous"):
        report = run_batch([folder], out, {"seed": 3, "generation": GEN})
    return out, report


def test_image_sizes_exercise_both_paths(folder):
    whole = WHOLE_IMAGE_REGIONS * GEN["chunks"] ** 2
    px = {n: image_pixels(folder / f"{n}.png") for n in SIZES}
    assert px == {n: h * w for n, (h, w) in SIZES.items()}
    assert px["big"] > whole and all(v <= whole for n, v in px.items() if n != "big")
    assert image_pixels(folder / "broken.png") is None


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_concurrent_pools_give_the_sequential_bytes_and_manifest(folder, sequential, tmp_path,
                                                                 scheduler):
    seq, seq_report = sequential
    out = tmp_path / "ds.zarr"
    with dask.config.set(scheduler=scheduler, num_workers=3):
        report = run_batch([folder], out, {"seed": 3, "generation": GEN})
    names = sorted(SIZES)
    assert report.generated == seq_report.generated == names  # input (file name) order
    assert report.failed == seq_report.failed == ["broken"]
    for name in names:
        assert is_complete(out, group=name)
        assert _files(out, name) == _files(seq, name), name
    # same records, same order (input order), whatever the completion order
    assert read_manifest(out) == read_manifest(seq)
    assert dask.config.get("scheduler", None) is None  # the batch restored the setting


def test_rerun_skips_and_resume_finishes_an_interrupted_group(folder, sequential, tmp_path):
    seq, _ = sequential
    out = tmp_path / "ds.zarr"
    shutil.copytree(seq, out)
    # interrupt "big" (region path) and "c" (whole path): regions unrecorded, flags reset
    for name in ("big", "c"):
        g = zarr.open_group(str(out / name), mode="r+")
        rec = g[RECORD]
        rec[0, 0] = False
        rec[-1, -1] = False
        g.attrs["complete"] = False
    with dask.config.set(scheduler="threads"):
        report = run_batch([folder], out, {"seed": 3, "generation": GEN})
    assert report.resumed == ["big", "c"]
    assert report.skipped_complete == ["a", "b", "d"]
    assert report.generated == [] and report.failed == ["broken"]
    for name in SIZES:
        assert _files(out, name) == _files(seq, name), name
    big = decode(zarr.open_group(str(out / "big"), mode="r").attrs)["resumed"]
    assert [r["regions_computed"] for r in big] == [2]
    assert {r["name"]: r["status"] for r in read_manifest(out)} == {
        **{n: "complete" for n in SIZES}, "broken": "failed"}


@pytest.mark.cluster
def test_batch_on_a_two_worker_local_cluster_gives_the_sequential_bytes(folder, sequential,
                                                                       tmp_path):
    from ganx_dask.scheduling import scheduler_context

    seq, seq_report = sequential
    cfg = tmp_path / "local.yaml"
    cfg.write_text(yaml.safe_dump({"kind": "local", "workers": 2, "threads_per_worker": 1,
                                   "memory_limit": "1GiB", "timeout": 60}))
    out = tmp_path / "dist.zarr"
    with scheduler_context(None, str(cfg)) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        report = run_batch([folder], out, {"seed": 3, "generation": GEN})
    assert report.generated == seq_report.generated and report.failed == ["broken"]
    for name in SIZES:
        assert _files(out, name) == _files(seq, name), name
    assert read_manifest(out) == read_manifest(seq)


def test_synchronous_dask_is_reference_counted_across_threads():
    before = dask.config.get("scheduler", None)
    inside, release = threading.Event(), threading.Event()
    seen = []

    def worker():
        with synchronous_dask():
            inside.set()
            release.wait(10)
            seen.append(dask.config.get("scheduler"))

    t = threading.Thread(target=worker)
    t.start()
    inside.wait(10)
    with synchronous_dask():
        assert dask.config.get("scheduler") == "synchronous"
    # the first thread is still inside: leaving here must not undo the setting under it
    assert dask.config.get("scheduler") == "synchronous"
    release.set()
    t.join(10)
    assert seen == ["synchronous"]
    assert dask.config.get("scheduler", None) == before


def test_xarray_to_zarr_writes_the_same_counts_bytes(folder, tmp_path):
    ds = generate(str(folder / "big.png"), seed=5, **GEN)
    assert ds["counts"].encoding["write_empty_chunks"] is True
    with dask.config.set(scheduler="threads"):
        to_zarr(ds, tmp_path / "gx.zarr")
        ds.to_zarr(tmp_path / "xr.zarr", zarr_format=3)
    gx, xr_ = tmp_path / "gx.zarr" / "counts", tmp_path / "xr.zarr" / "counts"
    files = sorted(p.relative_to(gx) for p in gx.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(xr_) for p in xr_.rglob("*") if p.is_file())
    assert len(files) == 9 + 1  # 3 × 3 region chunks + metadata
    for f in files:
        assert (gx / f).read_bytes() == (xr_ / f).read_bytes(), f
    a = zarr.open_array(str(xr_), mode="r")
    assert a.chunks == (64, 64, 128) and a.compressors == zarr.open_array(str(gx)).compressors
