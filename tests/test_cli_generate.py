"""Tests for ``ganx-dask generate``: the demo run in a subprocess, options, bad input leaves no
store, an existing store is left byte-identical without --overwrite."""

import contextlib
import hashlib
import subprocess
import sys
import warnings

import numpy as np
import pytest
import tifffile
import xarray as xr
from PIL import Image

from ganx_dask.cli import main
from ganx_dask.cli.generate import demo_image_path
from ganx_dask.energy import EnergyAxis
from ganx_dask.pigments import MeasuredSpectrum, Pigment, PigmentLibrary
from ganx_dask.pigments.formats import write_library

AXIS = EnergyAxis(0.5, 38.5, 64)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    c = np.zeros(AXIS.n)
    c[20], c[40], c[10:] = 1.0, 0.5, c[10:] + 0.01
    lib = PigmentLibrary([
        Pigment("red", (200, 40, 30), measured=MeasuredSpectrum(AXIS.edges, c)),
        Pigment("blue", (40, 60, 180), measured=MeasuredSpectrum(AXIS.edges, c[::-1].copy())),
    ], name="cli-test", version="3")
    write_library(lib, d / "lib.json")
    img = np.zeros((64, 128, 3), np.uint8)
    img[:, :64] = (200, 40, 30)
    img[:, 64:] = (40, 60, 180)
    Image.fromarray(img).save(d / "img.png")
    Image.fromarray(img[:1, :1]).save(d / "one.png")
    (d / "text.png").write_text("not an image")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tifffile.imwrite(d / "zero.tif", np.zeros((0, 4, 3), np.uint8))
    return d


def _base(files, out, *extra):
    return [
        "generate", str(files / "img.png"), "-o", str(out), "--library", str(files / "lib.json"),
        "--energy", "0.5:38.5:64", "--counts", "30", "--chunk", "64", "--n-start", "2",
        "--delta", "0", "--no-progress", *extra,
    ]


def _hashes(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_help_mentions_units_and_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in ("keV", "pixels", "counts", "default: 0.5:38.5:1024", "default: 400",
                 "--overwrite", "--scheduler", "--demo", "dimensionless"):
        assert word in out, word


def test_demo_subprocess_store_opens_with_xarray(tmp_path):
    out = tmp_path / "demo.zarr"
    r = subprocess.run(
        [sys.executable, "-m", "ganx_dask", "generate", "--demo", "-o", str(out),
         "--energy", "0.5:38.5:256", "--counts", "50", "--fit-samples", "20000", "--no-progress",
         "--scheduler", "threads"],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout
    ds = xr.open_zarr(out, consolidated=False)
    assert ds["counts"].dims == ("y", "x", "energy")
    assert ds.sizes["energy"] == 256 and (ds.sizes["y"], ds.sizes["x"]) == (512, 384)
    assert ds.attrs["energy_axis"] == "0.5:38.5:256" and ds.attrs["seed"] == 0
    assert ds.xrf.meta["parameters"]["counts"] == 50 and ds.attrs["complete"] == 1
    assert ds.xrf.meta["image"]["source"].endswith("demo.png")
    assert ds.sizes["pigment"] >= 9
    corner = ds["counts"][:64, :64].values
    assert np.all(corner.sum(-1) == 50)


def test_demo_image_is_bundled():
    p = demo_image_path()
    assert p.is_file() and p.stat().st_size < 400_000
    with Image.open(p) as im:
        assert im.size == (384, 512) and im.mode == "RGB"
        assert len(np.unique(np.asarray(im).reshape(-1, 3), axis=0)) > 1000  # textured


def test_generate_store_options_and_luminosity_map(files, tmp_path, capsys):
    out = tmp_path / "a.zarr"
    assert main(_base(files, out, "--seed", "5", "--no-rgb")) == 0
    ds = xr.open_zarr(out, consolidated=False)
    assert "rgb" not in ds and ds.attrs["seed"] == 5 and ds.attrs["library_name"] == "cli-test"
    assert np.all(ds["counts"].values.sum(-1) == 30)
    fac = np.zeros((64, 128))
    fac[:, 64:] = 1.0
    np.save(tmp_path / "fac.npy", fac)
    out2 = tmp_path / "lum.zarr"
    assert main(_base(files, out2, "--count-model", "luminosity",
                      "--luminosity-map", str(tmp_path / "fac.npy"))) == 0
    c = xr.open_zarr(out2, consolidated=False)["counts"].values.sum(-1)
    assert np.all(c[:, :64] == 0) and c[:, 64:].mean() > 25


@pytest.mark.parametrize("change, match", [
    ({"image": "missing.png"}, "not found"),
    ({"image": "text.png"}, "not an image"),
    ({"image": "zero.tif"}, "no pixels"),
    ({"image": "one.png"}, "1x1"),
    ({"extra": ["--energy", "0.5:38.5:abc"]}, "energy"),
    ({"extra": ["--threshold", "1.5"]}, "threshold"),
    ({"extra": ["--counts", "0"]}, "counts"),
    ({"extra": ["--counts", "-3"]}, "counts"),
    ({"extra": ["--chunk", "100"]}, "multiple"),
    ({"extra": ["--seed", "-1"]}, "seed"),
])
def test_bad_input_clear_error_and_no_store(files, tmp_path, capsys, change, match):
    out = tmp_path / "bad.zarr"
    args = _base(files, out, *change.get("extra", []))
    if "image" in change:
        args[1] = str(files / change["image"])
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "ganx-dask generate: error:" in err and match in err
    assert not out.exists()


def test_existing_store_untouched_without_overwrite(files, tmp_path, capsys):
    out = tmp_path / "keep.zarr"
    assert main(_base(files, out, "--seed", "1")) == 0
    before = _hashes(out)
    assert len(before) > 5
    assert main(_base(files, out, "--seed", "2")) == 1
    assert "exists" in capsys.readouterr().err
    assert _hashes(out) == before
    # a user file at the output path is never replaced either
    f = tmp_path / "notes.txt"
    f.write_text("precious")
    assert main(_base(files, f)) == 1
    assert f.read_text() == "precious"
    # --overwrite replaces it; same seed gives the same counts bytes
    assert main(_base(files, out, "--seed", "1", "--overwrite")) == 0
    after = _hashes(out)
    counts_files = [k for k in before if k.startswith("counts/c")]
    assert counts_files and all(after[k] == before[k] for k in counts_files)
    assert main(_base(files, out, "--seed", "2", "--overwrite")) == 0
    assert any(_hashes(out)[k] != before[k] for k in counts_files)


def test_demo_and_image_are_exclusive(files, tmp_path, capsys):
    assert main(["generate", "-o", str(tmp_path / "x.zarr")]) == 1
    assert "IMAGE or --demo" in capsys.readouterr().err


def test_bad_luminosity_map_errors_name_the_file(files, tmp_path, capsys):
    bad = tmp_path / "garbage.npy"
    bad.write_bytes(b"this is not a numpy file")
    out = tmp_path / "lum.zarr"
    assert main(_base(files, out, "--count-model", "luminosity",
                      "--luminosity-map", str(bad))) == 1
    err = capsys.readouterr().err
    assert "garbage.npy" in err and "not a numpy .npy array" in err
    assert not out.exists()
    wrong = tmp_path / "wrong_shape.npy"
    np.save(wrong, np.ones((3, 3)))
    assert main(_base(files, out, "--count-model", "luminosity",
                      "--luminosity-map", str(wrong))) == 1
    err = capsys.readouterr().err
    assert "wrong_shape.npy" in err and "(3, 3)" in err
    assert not out.exists()


def test_pigments_subset_option(tmp_path, capsys):
    import xarray as xr

    out = tmp_path / "paper.zarr"
    args = ["generate", "--demo", "-o", str(out), "--energy", "0.5:38.5:64", "--counts", "5",
            "--n-start", "3", "--delta", "1", "--fit-samples", "2000", "--no-progress"]
    assert main(args + ["--pigments", "paper"]) == 0
    ds = xr.open_zarr(out)
    assert list(ds.pigment.values) == ["minium", "vermilion", "red lake", "lead-tin yellow I",
                                       "natural ultramarine", "azurite", "indigo", "malachite",
                                       "chalk"]
    out2 = tmp_path / "bad.zarr"
    assert main(args[:3] + [str(out2)] + args[4:] + ["--pigments", "vermilion,unobtainium"]) == 1
    assert "'unobtainium' not in library" in capsys.readouterr().err
    assert not out2.exists()


def test_rgba_luminosity_map_warns_that_its_alpha_is_ignored(files, tmp_path):
    rgba = np.zeros((64, 128, 4), np.uint8)
    rgba[:, 64:] = 255
    Image.fromarray(rgba).save(tmp_path / "map.png")
    out = tmp_path / "m.zarr"
    with pytest.warns(UserWarning) as rec:
        assert main(_base(files, out, "--count-model", "luminosity",
                          "--luminosity-map", str(tmp_path / "map.png"))) == 0
    texts = [str(w.message) for w in rec]
    assert any("alpha channel of the luminosity map ignored" in t for t in texts), texts
    assert not any("label -1" in t for t in texts), texts
    c = xr.open_zarr(out, consolidated=False)["counts"].values.sum(-1)
    assert np.all(c[:, :64] == 0) and c[:, 64:].mean() > 25


def test_matching_default_is_closest_and_paper_is_one_flag_away(tmp_path):
    """The demo page with the full library: the default gives few pigments per cluster; the
    paper's method (--matching paper) mixes nearly all 47 in every cluster."""
    args = ["generate", "--demo", "--energy", "0.5:38.5:64", "--counts", "5", "--n-start", "7",
            "--delta", "0", "--fit-samples", "5000", "--no-progress"]
    stores = {}
    for flag in ([], ["--matching", "paper"], ["--mode", "nearest"]):
        out = tmp_path / f"m{len(stores)}.zarr"
        assert main(args + ["-o", str(out)] + flag) == 0
        stores[tuple(flag)] = xr.open_zarr(out)
    default, paper, nearest = stores.values()
    n_default = (default.abundance.values > 0).sum(axis=1)
    assert n_default.min() >= 1 and n_default.max() <= 3
    assert (paper.abundance.values > 0).sum(axis=1).min() >= 40
    assert ((nearest.abundance.values > 0).sum(axis=1) == 1).all()
    assert default.xrf.meta["parameters"]["mode"] == "closest"
    assert paper.xrf.meta["parameters"]["mode"] == "threshold"  # "paper" is recorded canonically
    # the same clusters (clustering does not depend on matching), different abundances
    np.testing.assert_array_equal(default.cluster_rgb.values, paper.cluster_rgb.values)
    assert default.abundance.attrs["lightness_factor"] == 2.0
    assert paper.abundance.attrs["lightness_factor"] == 1.0


@pytest.mark.parametrize("extra, match", [
    (["--matching", "best"], "invalid choice"), (["--margin", "0"], "margin"),
    (["--max-pigments", "0"], "max_pigments"), (["--lightness-factor", "-1"], "lightness_factor"),
])
def test_bad_matching_options_write_nothing(files, tmp_path, capsys, extra, match):
    out = tmp_path / "bad.zarr"
    with pytest.raises(SystemExit) if extra[0] == "--matching" else contextlib.nullcontext():
        assert main(_base(files, out, *extra)) != 0
    assert match in capsys.readouterr().err
    assert not out.exists()
