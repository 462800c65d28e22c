"""Tests for ganx_dask.io.read_image: formats, normalisation, laziness of tiled TIFF, errors."""

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import tifffile
import xarray as xr
from PIL import Image

from ganx_dask.errors import ImageError
from ganx_dask.io import read_image


def _rgb(ny=70, nx=90, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (ny, nx, 3), dtype=np.uint8)


def test_png_rgb_roundtrip_and_chunks(tmp_path):
    a = _rgb()
    p = tmp_path / "a.png"
    Image.fromarray(a).save(p)
    img = read_image(p, chunks=32)
    assert img.dims == ("y", "x", "channel")
    assert img.dtype == np.uint8
    assert isinstance(img.data, da.Array)
    assert img.data.chunks[0] == (32, 32, 6) and img.data.chunks[2] == (3,)
    assert list(img.channel.values) == ["R", "G", "B"]
    assert img.attrs["source"] == str(p)
    np.testing.assert_array_equal(img.values, a)


def test_jpeg_is_read_approximately(tmp_path):
    a = np.full((40, 50, 3), (180, 60, 30), np.uint8)
    p = tmp_path / "a.jpg"
    Image.fromarray(a).save(p, quality=95)
    img = read_image(p, chunks=16)
    assert img.shape == (40, 50, 3)
    assert np.abs(img.values.astype(int) - a).max() <= 4


def test_grayscale_png_expanded_with_warning(tmp_path):
    g = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    p = tmp_path / "g.png"
    Image.fromarray(g).save(p)
    with pytest.warns(UserWarning, match="grayscale"):
        img = read_image(p)
    v = img.values
    for c in range(3):
        np.testing.assert_array_equal(v[:, :, c], g)


def test_rgba_alpha_dropped_with_mask(tmp_path):
    a = np.zeros((10, 12, 4), np.uint8)
    a[..., :3] = 200
    a[..., 3] = 255
    a[:3, :4, 3] = 0  # fully transparent corner
    a[5, 5, 3] = 1  # almost transparent is still opaque
    p = tmp_path / "a.png"
    Image.fromarray(a, "RGBA").save(p)
    with pytest.warns(UserWarning, match="alpha"):
        img, mask = read_image(p, chunks=8, return_alpha=True)
    assert img.shape == (10, 12, 3)
    assert mask.dims == ("y", "x") and mask.dtype == bool
    m = mask.values
    assert not m[:3, :4].any() and m.sum() == 120 - 12
    # without alpha there is no mask
    _, none = read_image(a[..., :3], return_alpha=True)
    assert none is None


def test_16bit_tiff_scaled_to_8bit(tmp_path):
    a16 = np.array([[[0, 257, 65535], [32768, 128, 65407]]], np.uint16)
    p = tmp_path / "a.tif"
    tifffile.imwrite(p, a16, photometric="rgb")
    v = read_image(p).values
    np.testing.assert_array_equal(v, np.rint(a16.astype(float) * 255 / 65535).astype(np.uint8))
    # 16-bit grayscale PNG via Pillow
    g = np.array([[0, 65535], [257, 1000]], np.uint16)
    pg = tmp_path / "g16.png"
    Image.fromarray(g).save(pg)
    with pytest.warns(UserWarning, match="grayscale"):
        vg = read_image(pg).values
    np.testing.assert_array_equal(vg[..., 0], np.rint(g.astype(float) * 255 / 65535).astype(np.uint8))


def test_planar_tiff(tmp_path):
    a = _rgb(40, 50)
    p = tmp_path / "planar.tif"
    tifffile.imwrite(p, np.moveaxis(a, 2, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(p, chunks=16).values, a)


def test_tiled_bigtiff_is_read_lazily_chunk_by_chunk(tmp_path):
    """Reading one chunk decodes only its tiles: a corrupted far-away tile does not matter."""
    a = _rgb(256, 256, seed=3)
    p = tmp_path / "big.tif"
    tifffile.imwrite(p, a, tile=(64, 64), bigtiff=True, compression="zlib", photometric="rgb")
    with tifffile.TiffFile(p) as tf:
        assert tf.is_bigtiff
        off, n = tf.pages[0].dataoffsets[-1], tf.pages[0].databytecounts[-1]
    raw = bytearray(p.read_bytes())
    raw[off:off + n] = b"\xff" * n  # last tile (bottom-right) is now garbage
    p.write_bytes(bytes(raw))
    img = read_image(p, chunks=64)  # opening reads only the header
    assert img.data.numblocks == (4, 4, 1)
    np.testing.assert_array_equal(img[:64, :64].values, a[:64, :64])
    np.testing.assert_array_equal(img[64:192, :128].values, a[64:192, :128])
    with pytest.raises(Exception):  # noqa: B017 - the corrupt tile is only decoded on demand
        img[192:, 192:].compute()
    # the graph pickles by path (no open file handles): works with the processes scheduler
    with dask.config.set(scheduler="processes", num_workers=1):
        np.testing.assert_array_equal(img[:64, 64:128].values, a[:64, 64:128])


def test_numpy_float_and_int_inputs():
    f = np.array([[[0.0, 0.5, 1.0]]])
    np.testing.assert_array_equal(read_image(f).values, [[[0, 128, 255]]])
    i = np.array([[[1, 2, 3], [250, 251, 255]]], dtype=np.int64)
    np.testing.assert_array_equal(read_image(i).values, i.astype(np.uint8))
    b = np.array([[True, False]])
    with pytest.warns(UserWarning, match="grayscale"):
        np.testing.assert_array_equal(read_image(b).values[..., 0], [[255, 0]])


def test_dataarray_input_any_dim_order():
    a = _rgb(8, 9)
    xa = xr.DataArray(np.moveaxis(a, 2, 0), dims=("channel", "y", "x"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img = read_image(xa, chunks=4)
    np.testing.assert_array_equal(img.values, a)
    dxa = xr.DataArray(da.from_array(a, chunks=(4, 4, 3)), dims=("y", "x", "channel"))
    np.testing.assert_array_equal(read_image(dxa).values, a)


@pytest.mark.parametrize(
    "arr, match",
    [
        (np.zeros((0, 5, 3), np.uint8), "no pixels"),
        (np.zeros((4, 5, 5), np.uint8), "shape"),
        (np.zeros((2, 4, 5, 3), np.uint8), "shape"),
        (np.full((2, 2, 3), 1.5), r"\[0, 1\]"),
        (np.full((2, 2, 3), -0.1), r"\[0, 1\]"),
        (np.full((2, 2, 3), np.nan), "NaN"),
        (np.full((2, 2, 3), 300, np.int32), "0-255"),
        (np.zeros((2, 2, 3), complex), "dtype"),
    ],
)
def test_bad_arrays(arr, match):
    with pytest.raises(ImageError, match=match):
        read_image(arr)


def test_bad_files(tmp_path):
    with pytest.raises(ImageError, match="not found.*nope.png"):
        read_image(tmp_path / "nope.png")
    txt = tmp_path / "notes.png"
    txt.write_text("this is not an image\n")
    with pytest.raises(ImageError, match="notes.png: not an image"):
        read_image(txt)
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.tif"):
        read_image(empty)
    badtif = tmp_path / "bad.tif"
    badtif.write_bytes(b"II*\x00garbage")
    with pytest.raises(ImageError, match="bad.tif"):
        read_image(badtif)
    z = tmp_path / "zero.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tifffile.imwrite(z, np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ImageError, match="zero.tif.*no pixels"):
        read_image(z)
    with pytest.raises(ImageError, match="not a file"):
        read_image(tmp_path)
    with pytest.raises(ImageError, match="chunks"):
        read_image(np.zeros((2, 2, 3), np.uint8), chunks=0)
    with pytest.raises(ImageError, match="cannot read"):
        read_image([[1, 2, 3]])


def test_jpeg_exif_orientation_is_applied(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = 250  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    p = tmp_path / "photo.jpg"
    Image.fromarray(a).save(p, exif=exif, quality=95)
    v = read_image(p).values
    assert v.shape == (40, 20, 3)  # displayed orientation
    assert v[:15].mean() > 200 and v[25:].mean() < 50  # white half now on top


def test_palette_tiff_colours_are_looked_up(tmp_path):
    idx = np.array([[0, 1], [2, 1]], np.uint8)
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, 0] = (65535, 0, 0)
    cmap[:, 1] = (0, 65535, 0)
    cmap[:, 2] = (0, 0, 65535)
    p = tmp_path / "pal.tif"
    tifffile.imwrite(p, idx, photometric="palette", colormap=cmap)
    v = read_image(p).values
    np.testing.assert_array_equal(v[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(v[0, 1], [0, 255, 0])
    np.testing.assert_array_equal(v[1, 0], [0, 0, 255])


def test_big_endian_arrays_are_read_like_native_ones():
    a = (np.arange(20 * 30 * 3).reshape(20, 30, 3) * 37).astype(np.uint16)
    np.testing.assert_array_equal(read_image(a.astype(">u2")).values, read_image(a).values)
    f = np.linspace(0, 1, 20 * 30 * 3).reshape(20, 30, 3)
    np.testing.assert_array_equal(read_image(f.astype(">f8")).values, read_image(f).values)


def test_stripped_tiff_strips_are_decoded_once(tmp_path, monkeypatch):
    """A stripped (untiled) TIFF is read in full-width bands: each strip is decoded once, not
    once per column of chunks."""
    from ganx_dask import io as gio

    a = _rgb(128, 256, seed=4)
    p = tmp_path / "strips.tif"
    tifffile.imwrite(p, a, rowsperstrip=16, compression="zlib", photometric="rgb")
    reads = []
    orig = gio._TiffArray.__getitem__

    def counting(self, key):
        reads.append(key)
        return orig(self, key)

    monkeypatch.setattr(gio._TiffArray, "__getitem__", counting)
    img = read_image(p, chunks=32)
    assert img.data.chunks[:2] == ((32,) * 4, (32,) * 8)
    with dask.config.set(scheduler="synchronous"):
        np.testing.assert_array_equal(img.values, a)
    assert len(reads) == 4  # one full-width band per row of chunks (not 4 x 8)


def test_file_sha256_matches_hashlib_and_sees_rewrites(tmp_path):
    import hashlib
    import os

    from ganx_dask.io import file_sha256

    p = tmp_path / "f.bin"
    p.write_bytes(b"a" * 3_000_000)
    assert file_sha256(p) == hashlib.sha256(p.read_bytes()).hexdigest()
    assert file_sha256(str(p)) == file_sha256(p)  # cached, same answer
    p.write_bytes(b"b" * 3_000_000)  # same size: the new mtime invalidates the cache
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert file_sha256(p) == hashlib.sha256(p.read_bytes()).hexdigest()
