"""Bad input, as a user meets it through the Python API and the ``ganx-dask`` command line.

The product promise: every bad input gets a clear one-line error naming the file/field (exit
code 1 on the command line, 2 for usage errors), and nothing a user owns is created, modified or
left half-written.  Cases already covered next to their module (test_io, test_generator,
test_store, test_cli_generate, test_pigments_*, test_batch, ...) are not repeated here; this file
holds the gaps found by the bad-input audit.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import xarray as xr
from PIL import Image

from ganx_dask import io as gio
from ganx_dask import store as store_mod
from ganx_dask.cli import main
from ganx_dask.energy import EnergyAxis
from ganx_dask.errors import GanxError, ImageError
from ganx_dask.io import read_image
from ganx_dask.pigments import MeasuredSpectrum, Pigment, PigmentLibrary
from ganx_dask.pigments.formats import write_library

AXIS = EnergyAxis(0.5, 38.5, 64)
RED, BLUE = (200, 40, 30), (40, 60, 180)
CONSOLE = Path(sys.executable).with_name("ganx-dask")


def _two_colour(ny=64, nx=128) -> np.ndarray:
    img = np.zeros((ny, nx, 3), np.uint8)
    img[:, : nx // 2] = RED
    img[:, nx // 2:] = BLUE
    return img


def _hashes(root: Path) -> dict:
    """SHA-256 of every file below ``root`` (or of ``root`` itself when it is a file)."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root.parent)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files}


def _unwritable_dir(tmp_path: Path) -> Path:
    """A directory in which nothing can be created: chmod 555, or — as root, who ignores
    permission bits — a kernel file system (/proc, /sys) where file creation always fails."""
    d = tmp_path / "read-only"
    d.mkdir()
    d.chmod(0o555)
    for cand in (d, Path("/proc"), Path("/sys")):
        try:
            fd, name = tempfile.mkstemp(dir=cand, prefix=".ganx-test-probe-")
        except OSError:
            return cand
        os.close(fd)
        os.unlink(name)
    pytest.skip("no unwritable directory available")


def _one_line_error(err: str, command: str = "generate") -> str:
    """The stderr of a failed command: exactly one error line, no traceback; returns it."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip() and ": warning: " not in ln]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"ganx-dask {command}: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("badinput")
    c = np.zeros(AXIS.n)
    c[20], c[40], c[10:] = 1.0, 0.5, c[10:] + 0.01
    lib = PigmentLibrary([
        Pigment("red", RED, measured=MeasuredSpectrum(AXIS.edges, c, "red.csv")),
        Pigment("blue", BLUE, measured=MeasuredSpectrum(AXIS.edges, c[::-1].copy(), "blue.csv")),
    ], name="bad-input-test", version="1")
    write_library(lib, d / "lib.json")
    Image.fromarray(_two_colour()).save(d / "img.png")
    gray = np.zeros((64, 128, 2), np.uint8)
    gray[..., 0] = _two_colour()[..., 0]
    gray[..., 1] = 255
    Image.fromarray(gray, "LA").save(d / "la.png")
    (d / "bad.json").write_text('{"format": "ganx-dask-pigment-library", ')
    (d / "list.json").write_text("[1, 2, 3]\n")
    (d / "libdir").mkdir()
    return d


def _gen(files: Path, out: Path, *extra: str) -> list[str]:
    return ["generate", str(files / "img.png"), "-o", str(out), "--library",
            str(files / "lib.json"), "--energy", "0.5:38.5:64", "--counts", "30", "--chunk", "64",
            "--n-start", "2", "--delta", "0", "--no-progress", *extra]


# =============================================================================================
# images (Python API)
# =============================================================================================
def test_truncated_png_names_the_file(tmp_path):
    p = tmp_path / "img.png"
    Image.fromarray(_two_colour()).save(p)
    raw = p.read_bytes()
    for n, name in ((len(raw) // 2, "half.png"), (40, "header-only.png")):
        (tmp_path / name).write_bytes(raw[:n])
        with pytest.raises(ImageError, match=rf"{name}: (cannot decode|not an image)"):
            read_image(tmp_path / name)


@pytest.mark.parametrize("mode", ["P", "PA", "CMYK", "1", "I;16", "LA"])
def test_pillow_modes_are_converted(tmp_path, mode):
    """Palette, CMYK, bilevel, 16-bit and gray+alpha files all become 8-bit RGB (+ mask)."""
    rgb = _two_colour(16, 32)
    if mode == "I;16":
        im = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
        want = np.repeat(rgb[..., :1], 3, axis=2)
    elif mode == "1":
        im = Image.fromarray(rgb[..., 0] > 100)
        want = np.repeat(np.where(rgb[..., :1] > 100, 255, 0).astype(np.uint8), 3, axis=2)
    elif mode == "LA":
        im = Image.fromarray(rgb[..., 0]).convert("LA")
        want = np.repeat(rgb[..., :1], 3, axis=2)
    elif mode in ("P", "PA"):  # an exact two-entry palette; PA: entry 0 is transparent
        im = Image.fromarray(rgb).quantize(colors=2, dither=Image.Dither.NONE)
        want = rgb
    else:
        im = Image.fromarray(rgb).convert(mode)
        want = rgb
    p = tmp_path / ("img.jpg" if mode == "CMYK" else "img.png")
    im.save(p, **({"transparency": 0} if mode == "PA" else {"quality": 100} if mode == "CMYK"
                  else {}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        img, mask = read_image(p, return_alpha=True)
    assert img.dtype == np.uint8 and img.shape == (16, 32, 3)
    messages = " | ".join(str(w.message) for w in caught)
    if mode in ("I;16", "LA"):  # (bilevel "1" is converted to RGB by Pillow, silently)
        assert "grayscale" in messages
    if mode in ("LA", "PA"):
        assert "alpha" in messages and mask is not None
    if mode == "PA":  # one of the two colours is fully transparent: those pixels get no counts
        assert 0 < mask.values.sum() < mask.size
        np.testing.assert_array_equal(img.values[mask.values], want[mask.values])
    elif mode == "CMYK":  # JPEG: lossy
        assert np.abs(img.values.astype(int) - want).max() <= 8
    else:
        np.testing.assert_array_equal(img.values, want)
        assert mask is None or bool(mask.values.all())


def test_cmyk_tiff_is_converted_not_mistaken_for_rgba(tmp_path):
    """A CMYK TIFF used to be read as RGB + alpha (K as alpha: "fully transparent image")."""
    rgb = _two_colour(16, 32)
    cmyk = np.asarray(Image.fromarray(rgb).convert("CMYK"))
    tifffile.imwrite(tmp_path / "cmyk.tif", cmyk, photometric="separated")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no alpha/grayscale warning
        img = read_image(tmp_path / "cmyk.tif")
    np.testing.assert_array_equal(img.values, rgb)
    assert "CMYK" in img.attrs["source_format"]
    # CMYK + alpha keeps the alpha as the opaque mask
    a = np.full((16, 32, 1), 255, np.uint8)
    a[:4, :4] = 0
    tifffile.imwrite(tmp_path / "cmyka.tif", np.concatenate([cmyk, a], axis=2),
                     photometric="separated", extrasamples=[2])
    with pytest.warns(UserWarning, match="alpha"):
        img, mask = read_image(tmp_path / "cmyka.tif", return_alpha=True)
    np.testing.assert_array_equal(img.values, rgb)
    assert mask.values.sum() == 16 * 32 - 16


def test_tiff_min_is_white_and_unsupported_colour_space(tmp_path):
    g = np.array([[0, 255], [10, 200]], np.uint8)
    tifffile.imwrite(tmp_path / "mw.tif", g, photometric="miniswhite")
    with pytest.warns(UserWarning, match="grayscale"):
        v = read_image(tmp_path / "mw.tif").values
    np.testing.assert_array_equal(v[..., 0], 255 - g)  # 0 means white in min-is-white
    tifffile.imwrite(tmp_path / "lab.tif", np.zeros((4, 4, 3), np.uint8), photometric="cielab")
    with pytest.raises(ImageError, match=r"lab\.tif: TIFF colour space CIELAB is not supported"):
        read_image(tmp_path / "lab.tif")


def test_float_images_from_files(tmp_path):
    rgb = _two_colour(8, 8)
    tifffile.imwrite(tmp_path / "ok.tif", rgb.astype(np.float32) / 255, photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "ok.tif").values, rgb)
    tifffile.imwrite(tmp_path / "raw.tif", rgb.astype(np.float32), photometric="rgb")
    with pytest.raises(ImageError, match=r"raw\.tif: float image values must lie in \[0, 1\]"):
        read_image(tmp_path / "raw.tif")
    Image.fromarray(rgb[..., 0].astype(np.float32)).save(tmp_path / "f.tiff")  # Pillow mode F
    with pytest.warns(UserWarning, match="grayscale"), \
            pytest.raises(ImageError, match=r"f\.tiff: float image values must lie in \[0, 1\]"):
        read_image(tmp_path / "f.tiff")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_image_file(tmp_path):
    p = tmp_path / "secret.png"
    Image.fromarray(_two_colour(4, 4)).save(p)
    p.chmod(0)
    try:
        with pytest.raises(ImageError, match=r"secret\.png: cannot read"):
            read_image(p)
    finally:
        p.chmod(0o644)


def test_decompression_bomb_limit_is_lifted_with_a_warning(tmp_path, monkeypatch):
    """Pillow's decompression-bomb guard would refuse large scans the user asked for: it is
    lifted for the file being read (and restored), with a warning above ``_BIG_PIXELS``."""
    from PIL import Image as PILImage

    p = tmp_path / "huge.png"
    Image.fromarray(_two_colour(40, 50)).save(p)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)  # 2000 px = a "bomb" for Pillow
    with pytest.raises(PILImage.DecompressionBombError), PILImage.open(p) as im:
        im.load()
    monkeypatch.setattr(gio, "_BIG_PIXELS", 1000)
    with pytest.warns(UserWarning, match=r"huge\.png: 50x40 px decoded whole.*tiled TIFF"):
        img = read_image(p)
    np.testing.assert_array_equal(img.values, _two_colour(40, 50))
    assert PILImage.MAX_IMAGE_PIXELS == 100  # the global limit is restored


# =============================================================================================
# command line: one-line errors, exit codes, nothing written or modified
# =============================================================================================
@pytest.mark.parametrize("extra, match", [
    (["--library", "{d}/missing.json"], r"missing\.json: no such file"),
    (["--library", "{d}/bad.json"], r"bad\.json: malformed JSON at line 1"),
    (["--library", "{d}/list.json"], r"list\.json: a ganX database must be"),
    (["--library", "{d}/libdir"], r"libdir: is a directory"),
    (["--library", "{d}/img.png"], r"img\.png: not a UTF-8 text"),
    (["--energy", "50:60:64"], r"pigment 'red' \(red\.csv\).*do not overlap"),
    (["--energy", "38.5:0.5:64"], r"energy axis needs 0 <= start < stop"),
    (["--energy", "0.5:38.5:1"], r"at least 2 channels"),
    (["--threshold", "nan"], r"threshold must be a similarity in \[0, 1\]"),
    (["--counts", "inf"], r"counts .* must be a positive number"),
    (["--instrument", "nonesuch"], r"unknown instrument preset 'nonesuch'"),
    (["--scheduler", "nonesuch"], r"--scheduler 'nonesuch'"),
])
def test_generate_bad_option_one_line_and_no_store(files, tmp_path, capsys, extra, match):
    out = tmp_path / "out.zarr"
    args = _gen(files, out, *[e.format(d=files) for e in extra])
    assert main(args) == 1
    line = _one_line_error(capsys.readouterr().err)
    assert re.search(match, line), line
    assert not out.exists()


@pytest.mark.parametrize("argv", [
    ["generate", "img.png"],  # no -o
    ["generate", "img.png", "-o", "x.zarr", "--counts", "abc"],
    ["generate", "img.png", "-o", "x.zarr", "--overwrite", "--resume"],
    ["generate", "img.png", "-o", "x.zarr", "--count-model", "gauss"],
    ["generate", "img.png", "-o", "x.zarr", "--no-such-option"],
    ["nonesuch"],
])
def test_usage_errors_exit_2(tmp_path, capsys, argv, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "error:" in err and "Traceback" not in err
    assert not (tmp_path / "x.zarr").exists()


@pytest.mark.parametrize("extra", [
    ["--threshold", "1.5"],
    ["--library", "{d}/bad.json"],
    ["--energy", "0.5:38.5:abc"],
    ["--chunk", "100"],
])
def test_overwrite_with_bad_input_keeps_the_existing_store(files, tmp_path, capsys, extra):
    """--overwrite only replaces a store once every input has been checked."""
    out = tmp_path / "keep.zarr"
    assert main(_gen(files, out)) == 0
    before = _hashes(out)
    capsys.readouterr()
    assert main(_gen(files, out, "--overwrite", *[e.format(d=files) for e in extra])) == 1
    _one_line_error(capsys.readouterr().err)
    assert _hashes(out) == before
    missing = _gen(files, out, "--overwrite")
    missing[1] = str(files / "gone.png")
    assert main(missing) == 1
    assert "image file not found" in _one_line_error(capsys.readouterr().err)
    assert _hashes(out) == before


def test_unwritable_output_location(files, tmp_path, capsys):
    ro = _unwritable_dir(tmp_path)
    out = ro / "ganx-bad-input-test.zarr"
    assert main(_gen(files, out)) == 1
    line = _one_line_error(capsys.readouterr().err)
    assert "cannot write store" in line and "not writable" in line and str(ro) in line
    assert not out.exists()
    # the pigment commands: one line naming the file, nothing left behind
    for argv, name in [
        (["pigments", "export", "-o", str(ro / "ganx-lib.json")], "ganx-lib.json"),
        (["pigments", "export", "--format", "ganx", "-o", str(ro / "ganx-db")], "ganx-db"),
        (["pigments", "show", "vermilion", "--plot", str(ro / "ganx-v.png")], "ganx-v.png"),
        (["pigments", "add", "x", "--formula", "PbO", "--rgb", "1,2,3", "--density", "9",
          "--library", str(ro / "ganx-user.json")], "ganx-user.json"),
    ]:
        assert main(argv) == 1, argv
        line = _one_line_error(capsys.readouterr().err, "pigments")
        assert name in line and "cannot write" in line, line
        assert not (ro / name).exists()
    if ro.is_relative_to(tmp_path):
        assert list(ro.iterdir()) == []


def _interrupt(store: Path) -> None:
    """Make a finished store look like a run killed after its first region (as store.py would
    leave it): region (0, 1) not recorded and its chunk gone, ``complete`` unset."""
    import shutil

    import zarr

    g = zarr.open_group(str(store), mode="r+", zarr_format=3)
    g[store_mod.RECORD][0, 1] = False
    g.attrs.update({"complete": False})
    shutil.rmtree(store / "counts" / "c" / "0" / "1")


def test_interrupted_run_refused_or_resumed_only_with_same_parameters(files, tmp_path, capsys):
    ref = tmp_path / "ref.zarr"
    assert main(_gen(files, ref)) == 0
    out = tmp_path / "run.zarr"
    assert main(_gen(files, out)) == 0
    _interrupt(out)
    before = _hashes(out)
    capsys.readouterr()
    # without --resume: refused, untouched
    assert main(_gen(files, out)) == 1
    assert "--resume" in _one_line_error(capsys.readouterr().err)
    # --resume with different parameters: refused, naming what differs; untouched
    for extra, what in ((["--seed", "3"], "seed"), (["--counts", "31"], "parameters"),
                        (["--energy", "0.5:38.5:32"], "energy_axis")):
        assert main(_gen(files, out, "--resume", *extra)) == 1
        line = _one_line_error(capsys.readouterr().err)
        assert "different parameters" in line and what in line, line
    # the image changed since the interrupted run (same path): refused too
    changed = tmp_path / "img.png"
    img = _two_colour()
    img[0, 0] = (0, 0, 0)
    Image.fromarray(img).save(changed)
    args = _gen(files, out, "--resume")
    args[1] = str(changed)
    assert main(args) == 1
    assert "image" in _one_line_error(capsys.readouterr().err)
    assert _hashes(out) == before
    # the same parameters finish it: the counts are byte-identical to an uninterrupted run
    assert main(_gen(files, out, "--resume")) == 0
    a, b = xr.open_zarr(ref, consolidated=False), xr.open_zarr(out, consolidated=False)
    assert b.attrs["complete"] == 1 and b.xrf.meta["resumed"][-1]["regions_computed"] == 1
    assert (out / "counts" / "c" / "0" / "1").is_dir()
    np.testing.assert_array_equal(a["counts"].values, b["counts"].values)
    for chunk in (ref / "counts" / "c").rglob("*"):
        if chunk.is_file():
            twin = out / chunk.relative_to(ref)
            assert twin.read_bytes() == chunk.read_bytes()


def test_malformed_yaml_config_is_one_line(files, tmp_path, capsys):
    cfg = tmp_path / "batch.yaml"
    cfg.write_text("seed: 1\ngeneration: {counts: [1, 2\n")
    out = tmp_path / "b.zarr"
    assert main(["batch", str(files / "img.png"), "-o", str(out), "--config", str(cfg)]) == 1
    line = _one_line_error(capsys.readouterr().err, "batch")
    assert "batch.yaml: not valid YAML at line 3" in line
    assert main(["batch", str(files / "img.png"), "-o", str(out),
                 "--config", str(files / "img.png")]) == 1
    assert "img.png: not a UTF-8 text (YAML) file" in _one_line_error(
        capsys.readouterr().err, "batch")
    assert not out.exists()


@pytest.mark.parametrize("extra, match", [
    (["--library", "{d}/bad.json"], r"bad\.json: malformed JSON"),
    (["--threshold", "1.5"], r"threshold must be a similarity in \[0, 1\]"),
    (["--library", "{d}/lib.json", "--energy", "50:60:64"], r"do not overlap"),
])
def test_batch_checks_shared_inputs_before_creating_the_dataset(files, tmp_path, capsys, extra,
                                                                match):
    """A bad library/parameter used to fail every image and leave a dataset of failures."""
    out = tmp_path / "b.zarr"
    argv = ["batch", str(files / "img.png"), "-o", str(out), *[e.format(d=files) for e in extra]]
    assert main(argv) == 1
    assert re.search(match, _one_line_error(capsys.readouterr().err, "batch"))
    assert not out.exists()


@pytest.mark.parametrize("extra, match", [
    (["--instrument", "nonesuch"], "unknown instrument preset"),
    (["--plot", "{t}/v.xyz"], "unsupported plot format"),
    (["--plot", "{t}/missing/v.png"], "does not exist"),
    (["--energy", "0.5:38.5"], "invalid energy axis"),
])
def test_pigments_show_fails_before_printing(tmp_path, capsys, extra, match):
    assert main(["pigments", "show", "vermilion", *[e.format(t=tmp_path) for e in extra]]) == 1
    cap = capsys.readouterr()
    assert match in _one_line_error(cap.err, "pigments") and cap.out == ""
    assert list(tmp_path.iterdir()) == []


def test_energy_axis_above_the_tube_voltage_is_an_error(tmp_path, capsys):
    """Computed spectra on an axis no photon reaches used to be normalised numerical tails."""
    from ganx_dask.errors import EnergyAxisError
    from ganx_dask.pigments import default_library

    lib = default_library().select(["vermilion", "chalk"])
    with pytest.raises(EnergyAxisError, match=r"50-60 keV starts above.*tube 40 kV"):
        lib.spectra("50:60:16")
    with pytest.raises(EnergyAxisError, match="starts above"):
        lib["vermilion"].spectrum("41:45:16")
    assert np.isclose(lib.spectra("30:45:16").values.sum(axis=1), 1).all()  # overlapping: fine
    out = tmp_path / "db"
    assert main(["pigments", "export", "--format", "ganx", "-o", str(out),
                 "--energy", "50:60:64"]) == 1
    assert "starts above" in _one_line_error(capsys.readouterr().err, "pigments")
    assert not out.exists()


def test_os_errors_from_any_command_are_one_line(tmp_path, capsys, monkeypatch):
    """A safety net: an OSError escaping a command prints one line (the traceback with -v)."""
    import ganx_dask.cli.pigments as cli_pigments

    def boom(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "somewhere"))

    monkeypatch.setattr(cli_pigments, "_cmd_list", boom)
    assert main(["pigments", "list"]) == 1
    line = _one_line_error(capsys.readouterr().err, "pigments")
    assert "Permission denied" in line and "somewhere" in line
    assert main(["-v", "pigments", "list"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_interrupt_says_how_to_finish(files, tmp_path, capsys, monkeypatch):
    """Ctrl-C: exit 130 and one line telling the user the store is kept and how to finish it."""
    import ganx_dask.cli.generate as cli_generate

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_generate, "run", interrupted)
    assert main(_gen(files, tmp_path / "x.zarr")) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err and "--resume" in err


def test_console_script_errors_and_warnings_are_one_line(files, tmp_path):
    """Through the installed console script: exit codes, no traceback, one-line warnings."""
    exe = [str(CONSOLE)] if CONSOLE.exists() else [sys.executable, "-m", "ganx_dask"]
    out = tmp_path / "o.zarr"
    args = _gen(files, out)
    args[1] = str(files / "missing.png")
    r = subprocess.run(exe + args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr == f"ganx-dask generate: error: image file not found: {files}/missing.png\n"
    assert not out.exists()
    args[1] = str(files / "la.png")
    r = subprocess.run(exe + args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    warns = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert any("ganx-dask generate: warning: " in ln and "grayscale" in ln for ln in warns)
    assert any("ganx-dask generate: warning: " in ln and "alpha" in ln for ln in warns)
    assert all(ln.startswith("ganx-dask generate: warning: ") for ln in warns), r.stderr


def test_python_api_errors_are_ganx_errors(files, tmp_path):
    """The same checks from Python: one exception type to catch, nothing written."""
    import ganx_dask as gx

    out = tmp_path / "api.zarr"
    for kw in ({"threshold": 2.0}, {"counts": 0}, {"energy": "1:1:10"}, {"chunks": 100}):
        with pytest.raises(GanxError):
            gx.generate(files / "img.png", files / "lib.json", seed=0,
                        **{"energy": "0.5:38.5:64", **kw})
    with pytest.raises(GanxError, match=r"bad\.json"):
        gx.generate(files / "img.png", files / "bad.json", seed=0)
    ro = _unwritable_dir(tmp_path)
    ds = gx.generate(files / "img.png", files / "lib.json", seed=0, energy="0.5:38.5:64",
                     counts=5, n_start=2, delta=0, chunks=64)
    with pytest.raises(GanxError, match="not writable"):
        gx.to_zarr(ds, ro / "ganx-api-test.zarr")
    assert not (ro / "ganx-api-test.zarr").exists() and not out.exists()
