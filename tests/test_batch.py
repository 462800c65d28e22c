"""The batch pipeline: folder of images → dataset store with manifest, seeds, skip/resume, errors."""

import hashlib
import shutil
import tempfile
from pathlib import Path

import dask
import numpy as np
import pytest
import yaml
import zarr
from PIL import Image

from ganx_dask.attrs import decode
from ganx_dask.cli import main
from ganx_dask.errors import ConfigError, GanxError, ImageError
from ganx_dask.pipelines.batch import (
    collect_images,
    group_name,
    image_seed,
    load_batch_config,
    read_manifest,
    run_batch,
)
from ganx_dask.store import is_complete

GEN = {"energy": "0.5:38.5:128", "counts": 50, "chunks": 64, "n_start": 3, "delta": 1,
       "fit_samples": 2000, "score_batch": 256}
SIZES = [(64, 64), (64, 128), (128, 64), (96, 160), (128, 128)]


def _painting(h: int, w: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cols = rng.integers(0, 256, (k, 3))
    lab = (np.arange(h)[:, None] // 32 + np.arange(w)[None, :] // 48) % k
    return np.clip(cols[lab] + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    for i, (h, w) in enumerate(SIZES):
        Image.fromarray(_painting(h, w, 3 + i % 2, i)).save(d / f"page_{i}.png")
    (d / "notes.txt").write_text("not an image")
    (d / ".DS_Store").write_bytes(b"\0\1")
    return d


@pytest.fixture(autouse=True)
def _synchronous():
    with dask.config.set(scheduler="synchronous"):
        yield


def _files(store: Path, group: str) -> dict[str, bytes]:
    g = store / group
    return {str(p.relative_to(g)): p.read_bytes() for p in sorted(g.rglob("*"))
            if p.is_file() and p.name != "zarr.json"}


@pytest.fixture(scope="module")
def dataset(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "dataset.zarr"
    with dask.config.set(scheduler="synchronous"), pytest.warns(UserWarning, match="notes.txt"):
        report = run_batch([folder], out, {"seed": 7, "generation": GEN})
    return out, report


def test_batch_writes_groups_and_manifest(folder, dataset):
    out, report = dataset
    assert sorted(report.generated) == [f"page_{i}" for i in range(5)]
    assert report.failed == [] and report.skipped_complete == []
    skipped = {Path(s["path"]).name: s["reason"] for s in report.skipped}
    assert set(skipped) == {"notes.txt", ".DS_Store"}
    assert "not an image" in skipped["notes.txt"]
    manifest = read_manifest(out)
    assert len(manifest) == 5
    root = zarr.open_group(str(out), mode="r")
    assert {Path(s["path"]).name for s in root.attrs["skipped"]} == {"notes.txt", ".DS_Store"}
    for rec, (h, w) in zip(sorted(manifest, key=lambda r: r["name"]), SIZES, strict=True):
        img = folder / f"{rec['name']}.png"
        assert rec["image"] == str(img.resolve())
        assert rec["sha256"] == hashlib.sha256(img.read_bytes()).hexdigest()
        assert rec["seed"] == image_seed(7, rec["name"])
        assert rec["shape"] == [h, w]
        assert rec["status"] == "complete" and rec["group"] == rec["name"]
        assert is_complete(out, group=rec["group"])
        grp = root[rec["group"]]
        assert grp["counts"].shape == (h, w, 128)
        assert grp.attrs["seed"] == rec["seed"]
        assert int(np.asarray(grp["counts"][...]).sum(axis=-1).min()) == 50  # fixed model
    seeds = [r["seed"] for r in manifest]
    assert len(set(seeds)) == 5


def test_rerun_skips_complete_images_and_changes_nothing(folder, dataset):
    out, _ = dataset
    before = {n: _files(out, n) for n in (f"page_{i}" for i in range(5))}
    with pytest.warns(UserWarning, match="notes.txt"):
        report = run_batch([folder], out, {"seed": 7, "generation": GEN})
    assert sorted(report.skipped_complete) == sorted(before)
    assert report.generated == [] and report.resumed == []
    assert {n: _files(out, n) for n in before} == before


def test_adding_and_reordering_images_changes_no_seed_or_bytes(folder, dataset, tmp_path):
    out, _ = dataset
    # a copy of the dataset extended by a new image, images listed explicitly in reverse order
    ext = tmp_path / "extended.zarr"
    shutil.copytree(out, ext)
    new = tmp_path / "new_page.png"
    Image.fromarray(_painting(64, 96, 3, 99)).save(new)
    files = [new] + sorted(folder.glob("page_*.png"), reverse=True)
    report = run_batch(files, ext, {"seed": 7, "generation": GEN})
    assert report.generated == ["new_page"]
    assert sorted(report.skipped_complete) == [f"page_{i}" for i in range(5)]
    old = {r["name"]: r for r in read_manifest(out)}
    new_manifest = {r["name"]: r for r in read_manifest(ext)}
    for name, rec in old.items():
        assert new_manifest[name]["seed"] == rec["seed"]
        assert _files(ext, name) == _files(out, name)
    assert new_manifest["new_page"]["seed"] == image_seed(7, "new_page")

    # a fresh dataset from scratch with a different order: the same bytes per image
    fresh = tmp_path / "fresh.zarr"
    run_batch(files[1:3], fresh, {"seed": 7, "generation": GEN})
    for name in ("page_4", "page_3"):
        assert _files(fresh, name) == _files(out, name)


def test_image_seed_depends_on_name_and_master_only():
    assert image_seed(7, "page_0") == image_seed(7, "page_0")
    assert image_seed(0, "page_001") == 3679747175005432423  # pinned: datasets stay reproducible
    assert image_seed(7, "page_0") != image_seed(7, "page_1")
    assert image_seed(7, "page_0") != image_seed(8, "page_0")
    assert 0 <= image_seed(2**40, "x") < 2**63


def test_group_names_and_collisions(tmp_path):
    assert group_name("/a/St Mark (detail).tif") == "St_Mark_detail_"
    assert group_name("scan.ome.tiff") == "scan.ome"
    assert group_name("PAGE.JPEG") == "PAGE"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        Image.fromarray(_painting(8, 8, 2, 0)).save(tmp_path / d / "same.png")
    with pytest.raises(ConfigError, match="same"):
        collect_images([tmp_path / "a", tmp_path / "b"])


def test_no_images_and_missing_sources(tmp_path):
    (tmp_path / "readme.md").write_text("x")
    with pytest.raises(ImageError, match="no images found.*readme.md: not an image"):
        collect_images([tmp_path])
    with pytest.raises(ImageError, match="not found"):
        collect_images([tmp_path / "missing"])
    with pytest.raises(ImageError, match="no file matches"):
        collect_images([str(tmp_path / "*.png")])
    assert not any(p.suffix == ".zarr" for p in tmp_path.iterdir())


def test_bad_config_names_the_key(tmp_path, folder):
    cfg = tmp_path / "batch.yaml"
    cfg.write_text(yaml.safe_dump({"seed": 1, "generation": {"cuonts": 5}}))
    with pytest.raises(ConfigError, match=r"unknown key 'generation\.cuonts'"):
        load_batch_config(cfg)
    cfg.write_text(yaml.safe_dump({"seed": "one"}))
    with pytest.raises(ConfigError, match=r"'seed' must be int"):
        load_batch_config(cfg)
    cfg.write_text(yaml.safe_dump({"generation": {"counts": "many"}}))
    with pytest.raises(ConfigError, match=r"'generation\.counts' must be float"):
        load_batch_config(cfg)
    with pytest.raises(ConfigError, match=r"'generation\.chunks' must be int"):
        run_batch([folder], tmp_path / "x.zarr", generation={"chunks": 6.5})
    assert not (tmp_path / "x.zarr").exists()


def test_changed_parameters_on_an_existing_dataset_are_refused(folder, dataset):
    out, _ = dataset
    before = (out / "zarr.json").read_bytes()
    with pytest.raises(ConfigError, match="different batch parameters.*seed"), \
            pytest.warns(UserWarning):
        run_batch([folder], out, {"seed": 8, "generation": GEN})
    assert (out / "zarr.json").read_bytes() == before


def _unwritable_dir() -> Path:
    """A directory where nothing can be created (chmod 555, or /sys when running as root)."""
    d = Path(tempfile.mkdtemp())
    d.chmod(0o555)
    for cand in (d, Path("/sys")):
        try:
            fd, name = tempfile.mkstemp(dir=cand)
        except OSError:
            return cand
        Path(name).unlink()
    pytest.skip("no unwritable directory available")


def test_read_only_output_is_refused_before_any_work(folder):
    ro = _unwritable_dir()
    out = ro / "dataset.zarr"
    with pytest.raises(GanxError, match="not writable|cannot write"), pytest.warns(UserWarning):
        run_batch([folder], out, {"generation": GEN})
    assert not out.exists()


def test_cli_batch_with_config_and_a_broken_image(folder, tmp_path, capsys):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    shutil.copy(folder / "page_0.png", imgs / "page_0.png")
    (imgs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (imgs / "data.csv").write_text("1,2\n")
    cfg = tmp_path / "batch.yaml"
    cfg.write_text(yaml.safe_dump({"seed": 7, "images": ["imgs"], "output": "out.zarr",
                                   "scheduler": "synchronous", "generation": GEN}))
    with pytest.warns(UserWarning, match="data.csv"):
        rc = main(["batch", "--config", str(cfg), "--counts", "60"])
    text = capsys.readouterr().out
    assert rc == 1  # one image failed
    assert "failed broken" in text and "data.csv" in text
    manifest = {r["name"]: r for r in read_manifest(tmp_path / "out.zarr")}
    assert manifest["broken"]["status"] == "failed" and manifest["broken"]["error"]
    assert manifest["page_0"]["status"] == "complete"
    # the command-line --counts overrides the config
    counts = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["page_0"]["counts"][...]
    assert int(np.asarray(counts).sum(axis=-1).max()) == 60
    assert manifest["page_0"]["seed"] == image_seed(7, "page_0")


def test_cli_batch_runs_on_worker_processes_unless_told_otherwise(folder, tmp_path, monkeypatch):
    """``ganx-dask batch`` without --scheduler/--cluster-config (nor a config's) uses the local
    ``processes`` pool; an explicit --scheduler or the config's ``scheduler`` wins."""
    import contextlib

    import ganx_dask.scheduling as scheduling

    seen = []

    @contextlib.contextmanager
    def spy(scheduler=None, cluster_config=None, **kwargs):
        seen.append((scheduler, cluster_config))
        with dask.config.set(scheduler="synchronous"):  # the images themselves: quickly
            yield None

    monkeypatch.setattr(scheduling, "scheduler_context", spy)
    img = str(folder / "page_0.png")
    plain, threads = tmp_path / "plain.yaml", tmp_path / "threads.yaml"
    plain.write_text(yaml.safe_dump({"generation": GEN}))
    threads.write_text(yaml.safe_dump({"scheduler": "threads", "generation": GEN}))
    assert main(["batch", img, "-o", str(tmp_path / "a.zarr"), "--config", str(plain)]) == 0
    assert main(["batch", img, "-o", str(tmp_path / "b.zarr"), "--config", str(plain),
                 "--scheduler", "synchronous"]) == 0
    assert main(["batch", img, "-o", str(tmp_path / "c.zarr"), "--config", str(threads)]) == 0
    assert seen == [("processes", None), ("synchronous", None), ("threads", None)]


def test_shipped_example_config_is_valid():
    cfg = load_batch_config(Path(__file__).resolve().parents[1] / "pipelines/batch/config.yaml")
    assert cfg["output"].endswith("pipelines/batch/dataset.zarr")
    assert cfg["generation"]["counts"] == 400 and cfg["generation"]["energy"] == "0.5:38.5:1024"


def test_changed_image_is_stale_until_overwrite(tmp_path):
    img = tmp_path / "leaf.png"
    Image.fromarray(_painting(64, 64, 3, 1)).save(img)
    out = tmp_path / "ds.zarr"
    run_batch([img], out, {"seed": 2, "generation": GEN})
    before = _files(out, "leaf")
    Image.fromarray(_painting(64, 64, 3, 2)).save(img)  # same name, new content
    with pytest.warns(UserWarning, match="content changed"):
        report = run_batch([img], out, {"seed": 2, "generation": GEN})
    assert report.stale == ["leaf"] and _files(out, "leaf") == before
    (rec,) = read_manifest(out)
    assert rec["status"] == "stale" and "--overwrite" in rec["error"]
    report = run_batch([img], out, {"seed": 2, "generation": GEN}, overwrite=True)
    assert report.generated == ["leaf"] and _files(out, "leaf") != before
    (rec,) = read_manifest(out)
    assert rec["status"] == "complete"
    assert rec["sha256"] == hashlib.sha256(img.read_bytes()).hexdigest()


@pytest.mark.cluster
def test_batch_on_a_local_cluster_config_gives_the_same_bytes(folder, dataset, tmp_path, capsys):
    out, _ = dataset
    cfg = tmp_path / "local.yaml"
    cfg.write_text(yaml.safe_dump({"kind": "local", "workers": 2, "memory_limit": "1GiB",
                                   "timeout": 60}))
    gen_args = [f"--{k.replace('_', '-')}={v}" for k, v in GEN.items()]
    dist = tmp_path / "dist.zarr"
    rc = main(["batch", str(folder / "page_1.png"), str(folder / "page_3.png"), "-o", str(dist),
               "--seed", "7", *gen_args, "--cluster-config", str(cfg)])
    assert rc == 0, capsys.readouterr()
    for name in ("page_1", "page_3"):
        assert _files(dist, name) == _files(out, name)


def test_config_detector_effects_reach_the_stores(folder, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    shutil.copy(folder / "page_0.png", imgs / "page_0.png")
    det = {"pulse_pair_ns": 500.0, "dead_time_model": "nonparalyzable", "dead_time_us": 1.0,
           "dwell_ms": 1.0, "blur_fwhm_px": 2.0}
    cfg = tmp_path / "batch.yaml"
    cfg.write_text(yaml.safe_dump({"seed": 7, "images": ["imgs"], "output": "out.zarr",
                                   "generation": {**GEN, "count_model": "poisson",
                                                  "detector": det}}))
    report = run_batch(None, None, cfg)
    assert report.generated == ["page_0"] and not report.failed
    g = zarr.open_group(str(tmp_path / "out.zarr" / "page_0"), mode="r")
    stored = decode(g.attrs)["detector"]
    assert {k: stored[k] for k in det} == det
    live = np.asarray(g["live_time"][...])  # dead time on: live time per pixel, s
    assert live.shape == tuple(report.manifest[0]["shape"])
    assert np.all((live > 0) & (live < det["dwell_ms"] * 1e-3))
