"""Stores on object storage: a real S3-compatible server (moto's server mode, its own process on
127.0.0.1) written to through ``s3://`` URLs — byte-identical to local runs, lazily readable,
resumable; wrong credentials, missing buckets and unsupported schemes are one-line errors.

The server (the ``s3`` fixture, :mod:`tests.s3_server`) runs for this module only and is stopped
at teardown; when it cannot start (moto's server extra missing, no free port) the S3 tests skip
with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import dask
import dask.array as da
import dask.callbacks
import numpy as np
import pytest
from PIL import Image

from ganx_dask.cli import main
from ganx_dask.errors import GanxError, IncompleteStoreWarning
from ganx_dask.storage import is_url, location
from ganx_dask.store import open_cube, to_zarr

from .s3_server import BUCKET, KEY_ID, SECRET, fresh_clients, moto_get

GEN_ARGS = ["--energy", "0.5:38.5:64", "--counts", "30", "--chunk", "64", "--n-start", "2",
            "--delta", "0", "--fit-samples", "2000", "--no-progress", "--seed", "5"]


def _objects(url: str) -> dict[str, bytes]:
    """Every object below ``url`` (or every file below a local folder), keyed by relative path."""
    loc = location(url)
    if loc.is_remote:
        fs = loc.fs()
        return {k[len(loc.key) + 1:]: fs.cat_file(k) for k in sorted(fs.find(loc.key))}
    return {str(p.relative_to(loc.path)): p.read_bytes() for p in sorted(loc.path.rglob("*"))
            if p.is_file()}


def _strip_volatile(obj):
    """JSON metadata without the attributes that hold run times or where the run wrote."""
    if isinstance(obj, dict):
        return {k: _strip_volatile(v) for k, v in obj.items()
                if k not in ("created", "history", "resumed")}
    if isinstance(obj, list):
        return [_strip_volatile(v) for v in obj]
    return obj


def assert_same_store(remote: str, local: Path) -> None:
    """Data objects byte-identical, metadata identical but for the run time."""
    a, b = _objects(remote), _objects(str(local))
    assert sorted(a) == sorted(b)
    for name in a:
        if name.endswith("zarr.json"):
            assert _strip_volatile(json.loads(a[name])) == _strip_volatile(json.loads(b[name])), name
        else:
            assert a[name] == b[name], name


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    rng = np.random.default_rng(3)
    h, w = 128, 192
    cols = np.array([[190, 40, 35], [30, 60, 160], [230, 220, 190]])
    lab = (np.arange(h)[:, None] // 40 + np.arange(w)[None, :] // 64) % 3
    img = np.clip(cols[lab] + rng.normal(0, 5, (h, w, 3)), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("img") / "panel.png"
    Image.fromarray(img).save(path)
    return path


@pytest.fixture(scope="module")
def local_generate(image, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "gen.zarr"
    assert main(["generate", str(image), "-o", str(out), *GEN_ARGS,
                 "--scheduler", "synchronous"]) == 0
    return out


# ------------------------------------------------------------------ no server needed
@pytest.mark.parametrize("url", ["ftp://host/demo.zarr", "memory://demo.zarr",
                                 "http://127.0.0.1:9/demo.zarr"])
def test_unsupported_scheme_is_an_error_never_a_local_folder(url, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = main(["generate", "--demo", "-o", url, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "unsupported URL scheme" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no ./ftp:/host/demo.zarr
    with pytest.raises(GanxError, match="unsupported URL scheme"):
        open_cube(url)


def test_credentials_in_a_url_are_refused_without_echo():
    with pytest.raises(GanxError) as exc:
        location("s3://AKIAXX:topsecretvalue@bucket/ds.zarr")
    assert "topsecretvalue" not in str(exc.value) and "AKIAXX" not in str(exc.value)
    assert "AWS_ACCESS_KEY_ID" in str(exc.value)


def test_location_parsing():
    assert is_url("s3://b/x") and not is_url("/data/x.zarr") and not is_url("C:\\x")
    loc = location("s3://bucket//prefix/ds.zarr/")
    assert str(loc) == "s3://bucket/prefix/ds.zarr" and loc.bucket == "bucket"
    assert str(loc.child("img_1")) == "s3://bucket/prefix/ds.zarr/img_1"
    assert not location("file:///tmp/x.zarr").is_remote
    assert location("file:///tmp/x.zarr").path == Path("/tmp/x.zarr")


# ------------------------------------------------------------------------------ on S3
def test_generate_on_s3_is_byte_identical_and_reads_lazily(s3, image, local_generate, capsys):
    url = f"s3://{BUCKET}/runs/gen.zarr"
    assert main(["generate", str(image), "-o", url, *GEN_ARGS,
                 "--scheduler", "synchronous"]) == 0
    assert url in capsys.readouterr().out
    assert_same_store(url, local_generate)
    ds = open_cube(url, decode_attrs=True)
    assert ds.attrs["complete"]
    assert isinstance(ds["counts"].data, da.Array)  # lazy: nothing read yet
    assert ds["counts"].data.chunks[0][0] == 64
    ref = open_cube(local_generate)
    np.testing.assert_array_equal(ds["counts"][:64, 64:128].values, ref["counts"][:64, 64:128].values)
    # an existing store is not replaced without --overwrite
    with pytest.raises(GanxError, match="already exists"):
        to_zarr(ref, url)


def test_wrong_credentials_give_one_line_error_without_secret(s3, image, monkeypatch, capsys):
    url = f"s3://{BUCKET}/runs/denied.zarr"
    wrong = "wrong-secret-Vb7Lq2Zp"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "GANXWRONGKEY00001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    fresh_clients()
    moto_get(f"{s3}/moto-api/reset-auth", b"0")  # the server checks credentials from now on
    try:
        rc = main(["generate", str(image), "-o", url, *GEN_ARGS, "--scheduler", "synchronous"])
        err = capsys.readouterr().err
        with pytest.raises(GanxError) as read_exc:
            open_cube(f"s3://{BUCKET}/runs/gen.zarr")
    finally:
        moto_get(f"{s3}/moto-api/reset-auth", b"inf")
        monkeypatch.undo()
        fresh_clients()
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and url in lines[0] and "access denied" in lines[0]
    for text in (err, str(read_exc.value)):
        assert wrong not in text and SECRET not in text and "GANXWRONGKEY00001" not in text
    assert "access denied" in str(read_exc.value)
    assert not location(url).exists()  # nothing written


def test_missing_bucket_is_a_clear_error(s3, image, capsys):
    url = "s3://no-such-bucket-ganx/ds.zarr"
    rc = main(["generate", str(image), "-o", url, *GEN_ARGS, "--scheduler", "synchronous"])
    err = capsys.readouterr().err
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert "bucket 'no-such-bucket-ganx' does not exist" in err and url in err
    with pytest.raises(GanxError, match="bucket 'no-such-bucket-ganx' does not exist"):
        open_cube(url)


# ---------------------------------------------------------------- batch, mosaic, readers
BATCH_GEN = {"energy": "0.5:38.5:64", "counts": 30, "chunks": 64, "n_start": 2, "delta": 0,
             "fit_samples": 2000, "score_batch": 256}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("images")
    for i, (h, w) in enumerate([(64, 64), (64, 128)]):
        rng = np.random.default_rng(10 + i)
        cols = rng.integers(0, 256, (3, 3))
        lab = (np.arange(h)[:, None] // 32 + np.arange(w)[None, :] // 48) % 3
        img = np.clip(cols[lab] + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(d / f"page_{i}.png")
    return d


def test_batch_on_s3_is_byte_identical_with_its_manifest(s3, folder, tmp_path):
    from ganx_dask.pipelines.batch import read_manifest, run_batch
    from ganx_dask.store import is_complete

    url = f"s3://{BUCKET}/datasets/pages.zarr"
    local = tmp_path / "pages.zarr"
    with dask.config.set(scheduler="synchronous"):
        ref = run_batch([folder], local, {"seed": 7, "generation": BATCH_GEN})
        # killed after 2 region writes: page_0 (1 region) done, page_1 (2 regions) half-written
        with _Kill(2), pytest.raises(KeyboardInterrupt):
            run_batch([folder], url, {"seed": 7, "generation": BATCH_GEN})
    status = {r["name"]: r["status"] for r in read_manifest(url)}
    assert status == {"page_0": "complete", "page_1": "pending"}  # nothing half-written is complete
    assert is_complete(url, group="page_0") and not is_complete(url, group="page_1")
    # a YAML config with an s3:// output: not taken relative to the config's folder
    cfg = tmp_path / "batch.yaml"
    cfg.write_text(json.dumps({"seed": 7, "output": url, "generation": BATCH_GEN}))
    with dask.config.set(scheduler="threads"):
        rep = run_batch([folder], None, cfg)
    assert rep.output == url and rep.resumed == ["page_1"] and rep.skipped_complete == ["page_0"]
    assert read_manifest(url) == read_manifest(local) == ref.manifest
    assert_same_store(url, local)
    ds = open_cube(url, group="page_1")
    assert isinstance(ds["counts"].data, da.Array) and ds.sizes["x"] == 128
    # a re-run skips complete images and writes nothing
    before = _objects(url)
    with dask.config.set(scheduler="synchronous"):
        again = run_batch([folder], url, {"seed": 7, "generation": BATCH_GEN})
    assert sorted(again.skipped_complete) == ["page_0", "page_1"]
    assert _objects(url) == before


class _Kill(dask.callbacks.Callback):
    """Interrupts a synchronous run after ``n`` region writes (a killed job)."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def _posttask(self, key, result, dsk, state, worker_id):
        name = key[0] if isinstance(key, tuple) else key
        if str(name).startswith("ganx-write-region"):
            self.n -= 1
            if self.n == 0:
                raise KeyboardInterrupt


def test_interrupted_mosaic_resumes_on_s3_to_the_same_bytes(s3, image, tmp_path, capsys):
    from ganx_dask.pipelines.mosaic import run_mosaic
    from ganx_dask.store import is_complete, missing_regions

    url = f"s3://{BUCKET}/mosaics/panel.zarr"
    local = tmp_path / "panel.zarr"
    cfg = {"seed": 11, "generation": BATCH_GEN}
    with dask.config.set(scheduler="synchronous"):
        run_mosaic(image, local, cfg)
        with _Kill(4), pytest.raises(KeyboardInterrupt):
            run_mosaic(image, url, cfg)
    # half-written: nothing claims to be complete
    assert not is_complete(url)
    assert len(missing_regions(url)) == 6 - 4
    with pytest.warns(IncompleteStoreWarning):
        open_cube(url)
    # re-running the same command resumes: only the missing regions are computed
    rc = main(["mosaic", str(image), "-o", url, "--seed", "11", "--energy", "0.5:38.5:64",
               "--counts", "30", "--chunks", "64", "--n-start", "2", "--delta", "0",
               "--fit-samples", "2000", "--score-batch", "256", "--scheduler", "synchronous"])
    assert rc == 0
    assert "resumed" in capsys.readouterr().out
    assert is_complete(url)
    ds = open_cube(url, decode_attrs=True)
    assert ds.attrs["resumed"][-1]["regions_computed"] == 2
    assert_same_store(url, local)


def test_inspect_and_compare_read_s3_stores(s3, local_generate, tmp_path, capsys):
    url = f"s3://{BUCKET}/runs/gen.zarr"
    if not location(url).exists():  # written by the generate test; this test may run alone
        to_zarr(open_cube(local_generate), url)
    assert main(["compare", url, str(local_generate), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["a"] == url
    from ganx_dask.metrics import DISTANCES

    assert all(res["spectral"][k] == pytest.approx(0.0, abs=1e-9) for k in DISTANCES)
    assert res["ssim"] == pytest.approx(1.0)
    assert main(["inspect", url, "-o", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert url in report
    # reports go to local folders only: a URL output is an error, not a folder "s3:"
    assert main(["inspect", url, "-o", f"s3://{BUCKET}/reports/r"]) == 1
    assert "local folder" in capsys.readouterr().err
    assert not Path("s3:").exists()


def test_no_secret_in_any_stored_object(s3):
    """Runs last in this module: nothing written to the bucket carries a credential."""
    fs = location(f"s3://{BUCKET}").fs()
    for key in fs.find(BUCKET):
        blob = fs.cat_file(key)
        assert SECRET.encode() not in blob and KEY_ID.encode() not in blob, key
