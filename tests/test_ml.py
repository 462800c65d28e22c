"""Tests of ganx_dask.ml: patch datasets over stores and batch datasets (real zarr stores,
a real multi-process torch DataLoader), transforms, image split, rechunk, the xbatcher recipe."""

import functools
import warnings
import zlib

import numpy as np
import pytest
import xarray as xr

import ganx_dask
from ganx_dask.energy import EnergyAxis
from ganx_dask.errors import GanxError, StoreExistsError

from .markers import requires_torch, requires_xbatcher

pytestmark = requires_torch

E = 1024
N_IMAGES = 20


def _image(name: str, h: int, w: int, n_photons: int = 40) -> xr.Dataset:
    """A cube in the store layout with per-image content: labels in vertical bands, Dirichlet
    abundance rows, counts = photons drawn from each cluster's spectrum (seeded by the name)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    ax = EnergyAxis.parse(f"0.5:38.5:{E}")
    k = 3
    labels = np.repeat((np.arange(w) * k // w)[None, :], h, 0).astype(np.int16)
    labels[: h // 8, : w // 8] = -1
    spectra = rng.dirichlet(np.full(E, 0.05), k)
    counts = np.zeros((h * w, E), np.uint16)
    flat = labels.ravel()
    for c in range(k):
        pix = np.flatnonzero(flat == c)
        ch = rng.choice(E, size=(pix.size, n_photons), p=spectra[c])
        np.add.at(counts, (np.repeat(pix, n_photons), ch.ravel()), 1)
    return xr.Dataset(
        {"counts": (("y", "x", "energy"), counts.reshape(h, w, E)),
         "labels": (("y", "x"), labels),
         "abundance": (("cluster", "pigment"), rng.dirichlet(np.ones(4), k)),
         "rgb": (("y", "x", "channel"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))},
        coords={"y": np.arange(h), "x": np.arange(w), "energy": ax.to_coord(),
                "cluster": np.arange(k), "pigment": ["minium", "vermilion", "azurite", "chalk"],
                "channel": ["R", "G", "B"]},
        attrs={"seed": 1, "energy_axis": str(ax)},
    )


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """A 20-image batch dataset (manifest + one group per image), 64×128 px, 64² chunks."""
    import zarr

    path = tmp_path_factory.mktemp("ml") / "batch.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    manifest = []
    for j in range(N_IMAGES):
        name = f"img{j:02d}"
        ganx_dask.to_zarr(_image(name, 64, 128), path, group=name, region=64)
        manifest.append({"name": name, "group": name, "status": "complete", "shape": [64, 128]})
    manifest.append({"name": "broken", "group": "broken", "status": "failed", "shape": None})
    root.attrs.update({"manifest": manifest})
    return path


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One 192×128-px store with 128² chunks (a default-like layout: 4 grid patches per chunk)."""
    path = tmp_path_factory.mktemp("ml1") / "one.zarr"
    ganx_dask.to_zarr(_image("one", 192, 128), path, region=128)
    return path


@functools.cache
def _stored(path, name):
    """Counts, per-pixel ground-truth abundance and labels of one stored image (read once)."""
    ds = ganx_dask.open_cube(path, name)
    return ds.counts.values, ds.xrf.abundance_map().values, ds.labels.values


def _truth(path, name, y0, x0, p=64):
    return tuple(a[y0:y0 + p, x0:x0 + p] for a in _stored(path, name))


def test_dataloader_two_workers_shuffled_patches_match_ground_truth(batch):
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from ganx_dask.ml import PatchDataset

    ds = PatchDataset(batch, "abundance", patch=64)
    assert len(ds) == N_IMAGES * 2 and ds.pigments == ["minium", "vermilion", "azurite", "chalk"]
    order = list(RandomSampler(ds, generator=torch.Generator().manual_seed(7)))
    assert order != sorted(order)
    loader = DataLoader(ds, batch_size=8, num_workers=2,
                        sampler=RandomSampler(ds, generator=torch.Generator().manual_seed(7)))
    seen = 0
    for counts, ab in loader:
        assert counts.shape == (8, E, 64, 64) and counts.dtype == torch.float32
        assert ab.shape == (8, 4, 64, 64) and ab.dtype == torch.float32
        for b in range(8):
            name, y0, x0 = ds.position(order[seen])
            c_ref, ab_ref, lab = _truth(batch, name, y0, x0)
            np.testing.assert_array_equal(counts[b].numpy().transpose(1, 2, 0), c_ref)
            np.testing.assert_allclose(ab[b].numpy().transpose(1, 2, 0), ab_ref, rtol=1e-6)
            assert (lab == -1).any() == (x0 == 0)  # the empty corner is in the first patch
            seen += 1
    assert seen == len(ds)


def test_stream_reads_each_patch_once_seeded_and_matches_map_style(single, batch):
    import torch
    from torch.utils.data import DataLoader

    from ganx_dask.ml import PatchDataset

    ds = PatchDataset(single, ["abundance", "labels"], patch=64)
    st = ds.stream(buffer=1)
    assert [len(g) for g in st.groups()] == [4, 2]  # 128² chunks: 2×2 patches, then 1×2

    def run(workers, epoch=0):
        ds.set_epoch(epoch)
        out = []
        for x, t in DataLoader(st, batch_size=None, num_workers=workers):
            out.append((x.sum().item(), x.numpy().tobytes(), t["labels"].numpy().tobytes()))
        return out

    a, b, c = run(2), run(0), run(0)
    assert [v[0] for v in b] == [v[0] for v in c]  # same seed: same order
    ref = {(ds[k][0].numpy().tobytes(), ds[k][1]["labels"].numpy().tobytes())
           for k in range(len(ds))}
    for got in (a, c):
        assert len(got) == len(ds) and {(v[1], v[2]) for v in got} == ref
    assert [v[0] for v in run(0, epoch=1)] != [v[0] for v in c]
    assert isinstance(next(iter(st))[0], torch.Tensor)
    # a batch dataset streams too (64² chunks: one patch per chunk)
    assert sum(1 for _ in PatchDataset(batch, "labels").stream()) == N_IMAGES * 2


def test_batched_stream_equals_collated_stream_and_counts_dtypes(single):
    import torch
    from torch.utils.data import DataLoader

    from ganx_dask.ml import Log1p, PatchDataset, Rebin

    ds = PatchDataset(single, ["abundance", "labels"], patch=64, seed=4)
    ref = list(DataLoader(ds.stream(), batch_size=4))  # default collate, one process
    got = list(DataLoader(ds.stream(batch_size=4), batch_size=None))
    assert [len(b[0]) for b in got] == [4, 2]
    for (x, t), (rx, rt) in zip(got, ref, strict=True):
        assert x.dtype == torch.float32 and x.shape == rx.shape
        assert torch.equal(x, rx) and t.keys() == rt.keys()
        assert all(torch.equal(t[k], rt[k]) for k in t)
    with pytest.raises(TypeError, match="no exact length"):
        len(ds.stream(batch_size=4))
    # two workers: each builds its own batches in shared memory; same patches as map-style
    items = {ds[k][0].numpy().tobytes() for k in range(len(ds))}
    seen = []
    for x, t in DataLoader(ds.stream(batch_size=2), batch_size=None, num_workers=2):
        assert x.shape[1:] == (E, 64, 64) and t["labels"].shape[0] == x.shape[0]
        seen += [x[b].numpy().tobytes() for b in range(x.shape[0])]
    assert len(seen) == len(ds) and set(seen) == items
    # stored uint16 counts shipped unconverted, channels last; int32 exact too
    c_ref = _stored(single, None)[0]
    u = PatchDataset(single, "labels", dtype=torch.uint16, layout="hwc")
    i32 = PatchDataset(single, "labels", dtype="int32")
    xs, _ = next(iter(u.stream(batch_size=len(u), shuffle=False)))
    for k in range(len(u)):
        _, y0, x0 = u.position(k)
        xu, xi = u[k][0], i32[k][0]
        assert xu.dtype == xs.dtype == torch.uint16 and xi.dtype == torch.int32
        np.testing.assert_array_equal(xu.numpy(), c_ref[y0:y0 + 64, x0:x0 + 64])
        np.testing.assert_array_equal(xs[k].numpy(), xu.numpy())
        np.testing.assert_array_equal(xi.numpy().transpose(1, 2, 0), xu.numpy())
    with pytest.raises(GanxError, match="cannot hold the float32 counts"):
        PatchDataset(single, "labels", dtype=torch.int32, transforms=[Log1p()])[0]
    # Rebin sums to uint32: kept when the values fit uint16, refused when they do not
    fits = PatchDataset(single, "labels", dtype=torch.uint16, transforms=[Rebin(4)])[0][0]
    assert fits.dtype == torch.uint16 and fits.shape == (E // 4, 64, 64)
    np.testing.assert_array_equal(fits.numpy().transpose(1, 2, 0),
                                  c_ref[:64, :64].reshape(64, 64, E // 4, 4).sum(-1))
    over = PatchDataset(single, "labels", dtype=torch.uint16,
                        transforms=[lambda x, rng: x.astype(np.uint32) + 70000])
    with pytest.raises(GanxError, match="cannot hold the uint32 counts"):
        over[0]
    with pytest.raises(GanxError, match="dtype must be"):
        PatchDataset(single, "labels", dtype="uint8")


def test_targets_random_mode_elements_rgb_layout(single):
    import torch

    from ganx_dask.ml import PatchDataset

    ds = PatchDataset(single, ["labels", "rgb", "elements"], patch=32, mode="random",
                      patches_per_image=10, elements=["Pb:La", "Cu"], layout="hwc", seed=3)
    again = PatchDataset(single, "labels", patch=32, mode="random", patches_per_image=10, seed=3)
    np.testing.assert_array_equal(ds.index, again.index)
    assert ds.index[:, 1].max() <= 192 - 32 and ds.index[:, 2].max() <= 128 - 32
    x, t = ds[5]
    _, y0, x0 = ds.position(5)
    cube = ganx_dask.open_cube(single)
    sl = dict(y=slice(y0, y0 + 32), x=slice(x0, x0 + 32))
    assert x.shape == (32, 32, E)
    assert t["labels"].dtype == torch.int64 and t["rgb"].dtype == torch.uint8
    assert t["rgb"].shape == (3, 32, 32) and t["elements"].shape == (2, 32, 32)
    np.testing.assert_array_equal(t["rgb"].numpy().transpose(1, 2, 0), cube.rgb.isel(sl).values)
    for j, (el, line) in enumerate([("Pb", "La"), ("Cu", None)]):
        ref = cube.xrf.element_map(el, line).isel(sl).values
        np.testing.assert_array_equal(t["elements"][j].numpy(), ref)


def test_transforms_poisson_thinning_rebin_normalise_are_seeded(single):
    from ganx_dask.ml import Log1p, Normalise, PatchDataset, PoissonThin, Rebin

    raw = PatchDataset(single, "labels")
    thin = PatchDataset(single, "labels", transforms=[PoissonThin(fraction=0.25), Rebin(4)],
                        seed=9)
    n = sum(raw[k][0].sum().item() for k in range(2))
    m = sum(thin[k][0].sum().item() for k in range(2))
    # thinning: m ~ Binomial(n, 0.25); z-score bound 5
    assert abs(m - 0.25 * n) < 5 * np.sqrt(n * 0.25 * 0.75)
    x0 = thin[0][0]
    assert x0.shape == (E // 4, 64, 64)
    assert np.array_equal(x0.numpy(), thin[0][0].numpy())  # same item: same noise
    thin.set_epoch(1)
    assert not np.array_equal(x0.numpy(), thin[0][0].numpy())
    lo = PatchDataset(single, "labels", transforms=[PoissonThin(counts=10), Log1p()])
    assert float(lo[1][0].max()) <= np.log1p(np.iinfo(np.uint16).max)
    norm = PatchDataset(single, "labels", transforms=[Normalise()])[1][0].numpy()
    tot = norm.sum(0)
    np.testing.assert_allclose(tot[tot > 0], 1.0, rtol=1e-5)
    with pytest.raises(GanxError, match="fraction= or counts="):
        PoissonThin()


def test_split_by_image_and_errors(batch, tmp_path):
    from ganx_dask.ml import PatchDataset, list_images, split_images

    names = list_images(batch)
    assert len(names) == N_IMAGES and "broken" not in names
    train, val = split_images(names, 0.2, seed=1)
    assert len(val) == 4 and not set(train) & set(val) and set(train) | set(val) == set(names)
    assert split_images(names[::-1], 0.2, seed=1) == (train, val)
    assert split_images(names, 0.2, seed=2) != (train, val)
    ds = PatchDataset(batch, "abundance", images=val)
    assert {ds.position(k)[0] for k in range(len(ds))} == set(val)
    with pytest.raises(GanxError, match="no complete image.*nope"):
        PatchDataset(batch, "abundance", images=["nope"])
    with pytest.raises(GanxError, match="unknown target"):
        PatchDataset(batch, "pigments")
    with pytest.raises(GanxError, match="smaller than the 256-px patch"):
        PatchDataset(batch, "labels", patch=256)
    with pytest.raises(GanxError, match="not a ganx-dask store"):
        PatchDataset(tmp_path, "labels")


def test_rechunk_store_and_batch(single, batch, tmp_path):
    import zarr

    from ganx_dask.ml import rechunk

    out = rechunk(single, tmp_path / "r.zarr", chunk=64)
    a, b = ganx_dask.open_cube(single), ganx_dask.open_cube(out)
    assert zarr.open_array(f"{out}/counts", mode="r").chunks == (64, 64, E)
    np.testing.assert_array_equal(a.counts.values, b.counts.values)
    np.testing.assert_array_equal(a.labels.values, b.labels.values)
    with pytest.raises(StoreExistsError):
        rechunk(single, out)
    from ganx_dask.cli import main
    from ganx_dask.ml import chunk_advice

    assert main(["rechunk", str(single), str(tmp_path / "c.zarr"), "--chunk", "32"]) == 0
    assert zarr.open_array(f"{tmp_path}/c.zarr/counts", mode="r").chunks == (32, 32, E)
    assert main(["rechunk", str(single), str(tmp_path / "c.zarr")]) == 1  # exists
    assert "--chunk 64" in chunk_advice(64, 1024) and "128 MiB" in chunk_advice(64, 1024)
    src = tmp_path / "small.zarr"  # a 2-image batch dataset keeps its manifest
    root = zarr.open_group(str(src), mode="w", zarr_format=3)
    for g in ("img00", "img01"):
        ganx_dask.to_zarr(ganx_dask.open_cube(batch, g), src, group=g, region=64)
    root.attrs.update({"manifest": [{"name": g, "group": g, "status": "complete"}
                                    for g in ("img00", "img01")]})
    rechunk(src, tmp_path / "rb.zarr", chunk=32)
    assert zarr.open_array(f"{tmp_path}/rb.zarr/img01/counts", mode="r").chunks == (32, 32, E)
    from ganx_dask.ml import list_images
    assert list_images(tmp_path / "rb.zarr") == ["img00", "img01"]


@requires_xbatcher
def test_xbatcher_recipe_keeps_energy_and_pigment(single):
    from ganx_dask.ml import xbatcher_dataset

    cube = ganx_dask.open_cube(single)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = xbatcher_dataset(cube, 64)
        x, y = m[1]
    assert x.shape == (E, 64, 64) and y.shape == (4, 64, 64)
    # batch 1 is the second grid patch along x (xbatcher iterates the last input dim first)
    ref = cube.isel(y=slice(0, 64), x=slice(64, 128))
    np.testing.assert_array_equal(x.numpy().transpose(1, 2, 0), ref.counts.values)
    np.testing.assert_allclose(y.numpy().transpose(1, 2, 0),
                               cube.xrf.abundance_map().isel(y=slice(0, 64),
                                                             x=slice(64, 128)).values, rtol=1e-6)


def test_patches_from_an_s3_store_equal_the_local_copy(s3, single):
    """The same store on a real S3-compatible server (moto, own process): same patches and
    targets, map-style and streamed through two DataLoader workers."""
    from torch.utils.data import DataLoader

    from ganx_dask.ml import PatchDataset

    from .s3_server import BUCKET

    url = f"s3://{BUCKET}/ml/one.zarr"
    ganx_dask.to_zarr(ganx_dask.open_cube(single), url, region=128)
    local = PatchDataset(single, ["abundance", "labels"], patch=64)
    remote = PatchDataset(url, ["abundance", "labels"], patch=64)
    assert len(remote) == len(local) == 6 and remote.pigments == local.pigments

    def items(it):
        return sorted((x.numpy().tobytes(), t["abundance"].numpy().tobytes(),
                       t["labels"].numpy().tobytes()) for x, t in it)

    ref = items(local[k] for k in range(len(local)))
    assert items(remote[k] for k in range(len(remote))) == ref
    got = DataLoader(remote.stream(batch_size=2), batch_size=None, num_workers=2)
    assert items((x[b], {k: v[b] for k, v in t.items()}) for x, t in got
                 for b in range(x.shape[0])) == ref


def _loader_threads():
    import threading

    return [t for t in threading.enumerate() if t.name.startswith("ganx-ml-loader")]


def test_threaded_loader_equals_stream_and_ground_truth(single):
    """PatchLoader: the same batches as the one-process batched stream (same seed: same
    patches, order, Poisson noise, targets), in float32 and uint16; unshuffled patches equal
    the stored cube and ground truth."""
    import torch
    from torch.utils.data import DataLoader

    from ganx_dask.ml import PatchDataset, PatchLoader, PoissonThin, Rebin

    ds = PatchDataset(single, ["abundance", "labels"], patch=64, seed=5,
                      transforms=[PoissonThin(fraction=0.5), Rebin(2)])
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        ref = list(DataLoader(ds.stream(batch_size=4), batch_size=None))
        got = [(x.clone(), t) for x, t in ds.loader(4, threads=2)]
        assert [len(b[0]) for b in got] == [4, 2] and len(ds.loader(4)) == 2
        for (x, t), (rx, rt) in zip(got, ref, strict=True):
            assert x.shape == (len(x), E // 2, 64, 64) and torch.equal(x, rx)
            assert all(torch.equal(t[k], rt[k]) for k in ("abundance", "labels"))
    # uint16 channels last, unshuffled: batches in group order, equal to the stored data
    u = PatchDataset(single, "abundance", dtype=torch.uint16, layout="hwc")
    order = np.concatenate(u.stream().groups())
    loader = PatchLoader(u, 3, threads=3, shuffle=False)
    xs, ts = zip(*[(x.clone(), t) for x, t in DataLoader(loader, batch_size=None)], strict=True)
    xs, ts = torch.cat(xs), torch.cat(ts)
    assert xs.dtype == torch.uint16 and len(xs) == len(u)
    for b, k in enumerate(order):
        _, y0, x0 = u.position(k)
        c_ref, ab_ref, _ = _truth(single, None, y0, x0)
        np.testing.assert_array_equal(xs[b].numpy(), c_ref)
        np.testing.assert_allclose(ts[b].numpy().transpose(1, 2, 0), ab_ref, rtol=1e-6)
    assert not _loader_threads()


def test_threaded_loader_buffer_rule_errors_and_cleanup(batch):
    import torch
    from torch.utils.data import DataLoader

    from ganx_dask.ml import PatchDataset

    ds = PatchDataset(batch, "labels", patch=64, seed=2)
    # hold=2: the last two batches stay intact while two more are prefetched into the ring,
    # also across an epoch boundary (the ring is kept between epochs)
    loader, held = ds.loader(1, threads=2, prefetch=2, hold=2), []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        ref = [x for x, _ in DataLoader(ds.stream(batch_size=1), batch_size=None)]
        for j, (x, t) in enumerate(loader):
            held = (held + [(ref[j], x)])[-2:]
            for r, h in held:
                assert torch.equal(h, r), (epoch, j)
            assert t.shape == (1, 64, 64)
        assert j == len(ds) - 1
    # leaving early stops the threads; so does close()
    it = iter(ds.loader(2, threads=2))
    next(it)
    assert _loader_threads()
    del it
    assert not _loader_threads()
    loader = ds.loader(2, threads=2)
    for _ in loader:
        break
    loader.close()
    assert not _loader_threads()

    def boom(x, rng):
        raise ValueError("bad patch")

    bad = PatchDataset(batch, "labels", transforms=[boom])
    with pytest.raises(GanxError, match=r"image img\d\d rows 0:64.*ValueError: bad patch"):
        list(bad.loader(4, threads=2))
    assert not _loader_threads()
    with pytest.raises(GanxError, match="own threads"):
        next(iter(DataLoader(ds.loader(2), batch_size=None, num_workers=1)))
    with pytest.raises(GanxError, match="hold must be a positive"):
        ds.loader(2, hold=0)


def test_region_reader_codecs_and_edge_chunks(single, tmp_path):
    """The direct chunk reader (Blosc, Zstd) and zarr's pipeline (GZip) give the stored counts
    for regions inside, across and at the edge of chunks (192 rows: the last chunk is partial)."""
    import zarr
    from zarr.codecs import GzipCodec, ZstdCodec

    from ganx_dask.ml import _chunk_decoder, _read_into

    cube = ganx_dask.open_cube(single)
    ref = cube.counts.values
    paths = {"blosc": single}
    for name, codec in (("zstd", ZstdCodec(level=1)), ("gzip", GzipCodec(level=1))):
        paths[name] = ganx_dask.to_zarr(cube, tmp_path / f"{name}.zarr", region=(64, 96),
                                        compressor=codec)
    for name, path in paths.items():
        arr = zarr.open_array(f"{path}/counts", mode="r")
        assert (_chunk_decoder(arr) is None) == (name == "gzip")
        scratch = {}
        for ys, xs in ((slice(0, 64), slice(0, 96)), (slice(30, 150), slice(50, 128)),
                       (slice(128, 192), slice(0, 64)), (slice(190, 192), slice(127, 128))):
            np.testing.assert_array_equal(_read_into(arr, (ys, xs), scratch, 0), ref[ys, xs])
    # a chunk never written reads as the fill value (0), its neighbours unchanged
    (tmp_path / "zstd.zarr" / "counts" / "c" / "1" / "0" / "0").unlink()
    got = _read_into(zarr.open_array(f"{paths['zstd']}/counts", mode="r"),
                     (slice(32, 96), slice(64, 128)), {}, 0)
    assert not got[32:, :32].any()
    np.testing.assert_array_equal(got[:32], ref[32:64, 64:128])
    np.testing.assert_array_equal(got[32:, 32:], ref[64:96, 96:128])
