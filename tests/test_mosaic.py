"""The mosaic pipeline: tiled TIFF → one store, region by region, resumed by re-running."""

import shutil
from pathlib import Path

import dask
import numpy as np
import pytest
import tifffile
import yaml
import zarr

from ganx_dask.attrs import decode
from ganx_dask.cli import main
from ganx_dask.errors import ConfigError, GanxError, StoreExistsError
from ganx_dask.pipelines.mosaic import load_mosaic_config, run_mosaic
from ganx_dask.store import RECORD

GEN = {"energy": "0.5:38.5:128", "counts": 50, "chunks": 64, "n_start": 3, "delta": 1,
       "fit_samples": 2000, "score_batch": 256}


@pytest.fixture(scope="module")
def tiled_tiff(tmp_path_factory):
    rng = np.random.default_rng(5)
    h, w = 192, 256
    cols = np.array([[180, 30, 40], [20, 50, 150], [235, 225, 200]])
    lab = (np.arange(h)[:, None] // 48 + np.arange(w)[None, :] // 80) % 3
    img = np.clip(cols[lab] + rng.normal(0, 5, (h, w, 3)), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("mosaic") / "panel.tif"
    tifffile.imwrite(path, img, tile=(64, 64), photometric="rgb")
    assert tifffile.TiffFile(path).pages[0].is_tiled
    return path


@pytest.fixture(scope="module")
def mosaic_store(tiled_tiff, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "panel.zarr"
    with dask.config.set(scheduler="synchronous"):
        report = run_mosaic(tiled_tiff, out, {"seed": 11, "generation": GEN})
    return out, report


def _data(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and p.name != "zarr.json"}


def test_mosaic_writes_every_region(mosaic_store):
    out, report = mosaic_store
    assert report.shape == (192, 256, 128)
    assert report.regions_total == 3 * 4 and report.regions_computed == 12
    assert not report.resumed
    g = zarr.open_group(str(out), mode="r")
    assert g.attrs["complete"] == 1 and g.attrs["seed"] == 11
    assert np.asarray(g[RECORD][...]).all()
    assert g["counts"].chunks == (64, 64, 128)
    assert int(np.asarray(g["counts"][...]).sum(axis=-1).min()) == 50
    assert "computed 12 of 12 regions" in report.summary()


def test_rerun_resumes_only_the_missing_regions_byte_identical(mosaic_store, tmp_path, capsys):
    out, _ = mosaic_store
    ref = _data(out)
    part = tmp_path / "interrupted.zarr"
    shutil.copytree(out, part)
    # make it look like a run killed after 9 of 12 regions: 3 chunks and records missing
    g = zarr.open_group(str(part), mode="r+")
    for ry, rx in [(0, 3), (1, 1), (2, 0)]:
        (part / "counts" / "c" / str(ry) / str(rx) / "0").unlink()
        g[RECORD][ry, rx] = False
    g.attrs["complete"] = False
    cfg = tmp_path / "mosaic.yaml"
    cfg.write_text(yaml.safe_dump({"seed": 11, "output": "interrupted.zarr",
                                   "scheduler": "synchronous", "generation": GEN}))
    rc = main(["mosaic", _tiff_of(out), "--config", str(cfg)])
    assert rc == 0
    assert "resumed" in capsys.readouterr().out
    attrs = decode(zarr.open_group(str(part), mode="r").attrs)
    assert attrs["complete"] == 1
    assert attrs["resumed"][-1]["regions_computed"] == 3
    assert _data(part) == ref

    # a complete store: nothing to compute
    with dask.config.set(scheduler="synchronous"):
        again = run_mosaic(_tiff_of(out), part, {"seed": 11, "generation": GEN})
    assert again.resumed and again.regions_computed == 0
    assert _data(part) == ref


def _tiff_of(store: Path) -> str:
    return decode(zarr.open_group(str(store), mode="r").attrs)["image"]["source"]


def test_existing_store_without_resume_is_left_alone(mosaic_store, tmp_path):
    out, _ = mosaic_store
    copy = tmp_path / "copy.zarr"
    shutil.copytree(out, copy)
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    with pytest.raises(StoreExistsError, match="already exists"):
        run_mosaic(_tiff_of(out), copy, {"seed": 11, "resume": False, "generation": GEN})
    # a resume with different parameters is refused too (fingerprint), store untouched
    with dask.config.set(scheduler="synchronous"), pytest.raises(GanxError, match="different"):
        run_mosaic(_tiff_of(out), copy, {"seed": 12, "generation": GEN})
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before


def test_mosaic_config_errors(tmp_path):
    cfg = tmp_path / "m.yaml"
    cfg.write_text("seed: 1\nregoin: 64\n")
    with pytest.raises(ConfigError, match="unknown key 'regoin'"):
        load_mosaic_config(cfg)
    cfg.write_text("resume: maybe\n")
    with pytest.raises(ConfigError, match="'resume' must be bool"):
        load_mosaic_config(cfg)
    with pytest.raises(ConfigError, match="no image given"):
        run_mosaic(None, tmp_path / "o.zarr")
    assert main(["mosaic", "x.tif", "-o", str(tmp_path / "o.zarr"), "--config", str(cfg)]) == 1
    assert not (tmp_path / "o.zarr").exists()


def test_shipped_example_config_is_valid():
    cfg = load_mosaic_config(Path(__file__).resolve().parents[1] / "pipelines/mosaic/config.yaml")
    assert cfg["resume"] is True and cfg["generation"]["chunks"] % cfg["generation"]["tile"] == 0
    assert cfg["image"].endswith("pipelines/mosaic/panel.tif")


def test_pigments_option_selects_a_palette_like_generate(tiled_tiff, tmp_path, capsys):
    """Review finding: `mosaic` lacked the `--pigments` option of `generate`."""
    from ganx_dask.pigments.library import PAPER_PIGMENTS

    opts = ["--seed", "2", "--energy", "0.5:38.5:64", "--counts", "10", "--chunk", "64",
            "--n-start", "3", "--delta", "0", "--fit-samples", "500", "--score-batch", "128"]
    out = tmp_path / "paper.zarr"
    assert main(["mosaic", str(tiled_tiff), "-o", str(out), "--pigments", "paper", *opts]) == 0
    g = zarr.open_group(str(out), mode="r")
    assert list(np.asarray(g["pigment"][...])) == list(PAPER_PIGMENTS)
    assert g["abundance"].shape[1] == 9
    bad = tmp_path / "bad.zarr"
    assert main(["mosaic", str(tiled_tiff), "-o", str(bad), "--pigments", "vermilion,unobtainium",
                 *opts]) == 1
    assert "unobtainium" in capsys.readouterr().err
    assert not bad.exists()
