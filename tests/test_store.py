"""Tests of ganx_dask.store: overwrite policy, template-then-regions, resume, readers, schedulers."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

from ganx_dask import sampling, store
from ganx_dask.errors import GanxError, IncompleteStoreWarning, StoreExistsError

K, E, H, W = 3, 32, 192, 256
SPECTRA = np.random.default_rng(0).random((K, E)) + 0.01
SPECTRA /= SPECTRA.sum(axis=1, keepdims=True)
LABELS = np.random.default_rng(1).integers(-1, K, size=(H, W)).astype(np.int16)

COMPUTED_BLOCKS: list = []


def _track(block, fail_at=None, block_info=None):
    """Identity on label blocks; records each computed block and can fail one (an interruption)."""
    loc = tuple(r[0] for r in block_info[0]["array-location"])
    if fail_at is not None and loc == fail_at:
        raise RuntimeError(f"simulated worker death at {loc}")
    COMPUTED_BLOCKS.append(loc)
    return block


def _dataset(seed: int = 5, chunk: int = 64, fail_at=None) -> xr.Dataset:
    labels = da.from_array(LABELS, chunks=chunk).map_blocks(_track, fail_at=fail_at,
                                                            dtype=np.int16)
    cube = sampling.sample_cube(labels, SPECTRA, seed=seed, counts=40, engine="numpy")
    return xr.Dataset(
        {
            "counts": (("y", "x", "energy"), cube),
            "labels": (("y", "x"), da.from_array(LABELS, chunks=chunk)),
            "spectrum": (("cluster", "energy"), SPECTRA),
        },
        coords={"y": np.arange(H), "x": np.arange(W),
                "energy": ("energy", np.linspace(0.5, 38.5, E), {"units": "keV"})},
        attrs={"seed": seed, "parameters": {"counts": 40, "count_model": "fixed"},
               "created": "2026-11-26T12:00:00+00:00"},
    )


def _tree_hashes(root: Path, skip_group_meta: bool = False) -> dict:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = str(p.relative_to(root))
            if skip_group_meta and rel == "zarr.json":
                continue
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ref") / "ref.zarr"
    with dask.config.set(scheduler="synchronous"):
        store.to_zarr(_dataset(), path)
    return path


def test_roundtrip_layout_and_flags(reference):
    ds = store.open_cube(reference)
    expected = _dataset().counts.compute(scheduler="synchronous")
    np.testing.assert_array_equal(ds.counts.values, expected.values)
    np.testing.assert_array_equal(ds.labels.values, LABELS)
    assert ds.attrs["complete"] == 1 and ds.attrs["regions_total"] == 12
    assert ds.attrs["region_size"] == [64, 64] and ds.attrs["seed"] == 5
    assert ds.counts.encoding["chunks"] == (64, 64, E)
    codec = ds.counts.encoding["compressors"][0]
    assert (codec.cname.value, codec.clevel, codec.shuffle.value) == ("zstd", 1, "bitshuffle")
    assert store.RECORD not in ds.variables and ds.energy.attrs["units"] == "keV"
    assert store.is_complete(reference) and store.missing_regions(reference) == []
    assert not store.is_complete(reference.parent / "nothing.zarr")
    with warnings.catch_warnings():  # consolidated metadata: a plain open_zarr is quiet
        warnings.simplefilter("error")
        plain = xr.open_zarr(reference)
    assert plain.attrs["complete"] == 1 and plain.counts.shape == (H, W, E)


def test_existing_store_untouched_without_overwrite(reference, tmp_path):
    before = _tree_hashes(reference)
    with pytest.raises(StoreExistsError, match="overwrite"):
        store.to_zarr(_dataset(seed=6), reference)
    assert _tree_hashes(reference) == before
    # overwrite replaces it (different seed -> different counts)
    path = tmp_path / "copy.zarr"
    store.to_zarr(_dataset(), path)
    store.to_zarr(_dataset(seed=6), path, overwrite=True)
    new = store.open_cube(path)
    assert new.attrs["seed"] == 6
    assert not np.array_equal(new.counts.values, store.open_cube(reference).counts.values)


def test_refuses_to_overwrite_non_store_and_unwritable(tmp_path):
    user_dir = tmp_path / "photos"
    user_dir.mkdir()
    (user_dir / "holiday.jpg").write_bytes(b"not yours")
    with pytest.raises(GanxError, match="not a Zarr store"):
        store.to_zarr(_dataset(), user_dir, overwrite=True)
    assert [p.name for p in user_dir.iterdir()] == ["holiday.jpg"]
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(GanxError, match="not a directory"):
        store.to_zarr(_dataset(), blocker / "out.zarr")
    assert blocker.read_text() == "x"
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            with pytest.raises(GanxError, match="not writable"):
                store.to_zarr(_dataset(), ro / "out.zarr")
            assert list(ro.iterdir()) == []
        finally:
            ro.chmod(0o755)


def test_groups(tmp_path):
    path = tmp_path / "batch.zarr"
    store.to_zarr(_dataset(seed=5), path, group="img_a")
    store.to_zarr(_dataset(seed=6), path, group="img_b")
    before = _tree_hashes(path)
    with pytest.raises(StoreExistsError):
        store.to_zarr(_dataset(seed=7), path, group="img_a")
    assert _tree_hashes(path) == before
    a, b = store.open_cube(path, "img_a"), store.open_cube(path, "img_b")
    assert (a.attrs["seed"], b.attrs["seed"]) == (5, 6)
    assert store.is_complete(path, "img_b")


def test_interrupt_then_resume_is_byte_identical(reference, tmp_path):
    path = tmp_path / "resumed.zarr"
    with dask.config.set(scheduler="synchronous"), pytest.raises(RuntimeError, match="death"):
        store.to_zarr(_dataset(fail_at=(64, 128)), path)
    # template first, then regions: template complete, some regions done, cube not complete
    g = store._open_group(path, None)
    assert g.attrs["template_complete"] == 1 and g.attrs["complete"] == 0
    missing = store.missing_regions(path)
    assert 0 < len(missing) < 12 and (1, 2) in missing
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store.open_cube(path)
    assert [w.category for w in caught] == [IncompleteStoreWarning]
    assert not store.is_complete(path)
    with pytest.raises(StoreExistsError):
        store.to_zarr(_dataset(), path)
    COMPUTED_BLOCKS.clear()
    with dask.config.set(scheduler="synchronous"):
        store.to_zarr(_dataset(), path, resume=True)
    assert sorted(COMPUTED_BLOCKS) == sorted((ry * 64, rx * 64) for ry, rx in missing)
    assert store.is_complete(path)
    attrs = store.open_cube(path, decode_attrs=True).attrs
    assert attrs["resumed"][-1]["regions_computed"] == len(missing)
    assert _tree_hashes(path, True) == _tree_hashes(reference, True)
    # resuming a complete store computes nothing
    COMPUTED_BLOCKS.clear()
    store.to_zarr(_dataset(), path, resume=True)
    assert COMPUTED_BLOCKS == []


_KILLED_IN_A_CHUNK_WRITE = """
import os, pathlib, signal, sys
import numpy as np, zarr
# die between zarr's temporary file and its rename, as a worker killed mid-write does
pathlib.Path.replace = lambda self, target: os.kill(os.getpid(), signal.SIGKILL)
counts = zarr.open_array(sys.argv[1] + "/counts", mode="r+")
counts[64:128, 128:192] = np.ones((64, 64, counts.shape[2]), dtype=counts.dtype)
"""


def test_resume_removes_the_temporaries_of_a_writer_killed_mid_write(reference, tmp_path):
    """zarr's local store writes ``KEY.<hex>.partial`` then renames it: a worker killed between
    the two leaves the temporary file.  The finished store must not keep it (CI caught one after
    a real worker kill), and the cube stays byte-identical; other files are never touched."""
    import signal
    import subprocess
    import sys

    path = tmp_path / "killed.zarr"
    with dask.config.set(scheduler="synchronous"), pytest.raises(RuntimeError, match="death"):
        store.to_zarr(_dataset(fail_at=(64, 128)), path)
    assert (1, 2) in store.missing_regions(path)
    proc = subprocess.run([sys.executable, "-c", _KILLED_IN_A_CHUNK_WRITE, str(path)])
    assert proc.returncode == -signal.SIGKILL
    leftovers = [p for p in path.rglob("*.partial")]
    assert [p.relative_to(path).parts[:2] for p in leftovers] == [("counts", "c")]
    assert not (path / "counts" / "c" / "1" / "2" / "0").exists()
    keep = path / "counts" / "notes.partial"  # not zarr's pattern: not ours to delete
    keep.write_text("a user's file")
    with dask.config.set(scheduler="synchronous"):
        store.to_zarr(_dataset(), path, resume=True)
    assert list(path.rglob("*.partial")) == [keep]
    keep.unlink()
    assert _tree_hashes(path, True) == _tree_hashes(reference, True)


@pytest.mark.parametrize("killed_at", [0, 1])
def test_killed_while_writing_the_template_resumes(reference, tmp_path, monkeypatch, killed_at):
    """A process killed inside the template (the xarray write of the small variables, then the
    ``counts`` metadata) leaves a group that resume recognises and rewrites; a batch task
    retried after a worker died depends on this."""
    import zarr

    path = tmp_path / "template.zarr"
    calls = []

    def dying(real):
        def write(*args, **kwargs):
            calls.append(1)
            if len(calls) > killed_at:
                raise KeyboardInterrupt("simulated kill inside the template")
            return real(*args, **kwargs)
        return write

    with monkeypatch.context() as m:
        m.setattr(xr.Dataset, "to_zarr", dying(xr.Dataset.to_zarr))
        m.setattr(zarr, "create_array", dying(zarr.create_array))
        with pytest.raises(KeyboardInterrupt):
            store.to_zarr(_dataset(), path, group="img")
    assert len(calls) == killed_at + 1
    attrs = store._open_group(path, "img").attrs
    assert "fingerprint" in attrs and attrs["template_complete"] == 0
    with dask.config.set(scheduler="synchronous"):
        store.to_zarr(_dataset(), path, group="img", resume=True)
    ref = tmp_path / "ref.zarr"
    store.to_zarr(_dataset(), ref, group="img")
    assert (_tree_hashes(path / "img", True) == _tree_hashes(ref / "img", True))


@pytest.mark.parametrize("group", [None, "set/img"])
def test_template_built_in_memory_writes_the_same_bytes(tmp_path, monkeypatch, group):
    """Small templates are written into memory and copied in one batch: the bytes (and the
    keys) of a direct write, at the root and in a nested group."""
    with dask.config.set(scheduler="synchronous"):
        store.to_zarr(_dataset(), tmp_path / "mem.zarr", group=group)
        monkeypatch.setattr(store, "_MEM_TEMPLATE_BYTES", 0)  # every template written directly
        store.to_zarr(_dataset(), tmp_path / "direct.zarr", group=group)
    sub = group or "."
    mem, direct = _tree_hashes(tmp_path / "mem.zarr" / sub), _tree_hashes(
        tmp_path / "direct.zarr" / sub)
    assert len(mem) > 20 and mem == direct


def test_lost_records_are_recomputed_identically(reference, tmp_path):
    import shutil

    path = tmp_path / "lost.zarr"
    shutil.copytree(reference, path)
    g = store._open_group(path, None, "r+")
    g[store.RECORD][0, 1] = False
    g[store.RECORD][2, 3] = False
    shutil.rmtree(path / "counts" / "c" / "2" / "3")  # its chunk is gone too
    g.attrs.update({"complete": False})
    assert store.missing_regions(path) == [(0, 1), (2, 3)]
    COMPUTED_BLOCKS.clear()
    with dask.config.set(scheduler="threads"):
        store.to_zarr(_dataset(), path, resume=True)
    assert sorted(COMPUTED_BLOCKS) == [(0, 64), (128, 192)]
    assert _tree_hashes(path, True) == _tree_hashes(reference, True)


def test_resume_checks_parameters(reference, tmp_path):
    import shutil

    path = tmp_path / "other.zarr"
    shutil.copytree(reference, path)
    before = _tree_hashes(path)
    with pytest.raises(GanxError, match="seed"):
        store.to_zarr(_dataset(seed=99), path, resume=True)
    with pytest.raises(GanxError, match="different parameters"):
        store.to_zarr(_dataset(), path, resume=True, region=128)
    assert _tree_hashes(path) == before
    fresh = tmp_path / "fresh.zarr"  # resume of a missing store writes it from scratch
    store.to_zarr(_dataset(), fresh, resume=True)
    assert _tree_hashes(fresh, True) == _tree_hashes(reference, True)


def test_schedulers_and_region_override_same_values(reference, tmp_path, capsys):
    ref = store.open_cube(reference).counts.values
    p1 = tmp_path / "proc.zarr"
    with dask.config.set(scheduler="processes", num_workers=2):
        store.to_zarr(_dataset(chunk=128), p1, region=64, progress=True)
    assert "100% Completed" in capsys.readouterr().out
    # labels follow the dataset's chunks (128 here); the cube and its record are identical
    for sub in ("counts", store.RECORD):
        assert _tree_hashes(p1 / sub) == _tree_hashes(reference / sub)
    p2 = tmp_path / "big.zarr"
    store.to_zarr(_dataset(chunk=64), p2, region=128)
    big = store.open_cube(p2)
    assert big.counts.encoding["chunks"] == (128, 128, E) and big.attrs["regions_total"] == 4
    np.testing.assert_array_equal(big.counts.values, ref)


def test_distributed_client(reference, tmp_path):
    distributed = pytest.importorskip("distributed")
    path = tmp_path / "dist.zarr"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster):
        store.to_zarr(_dataset(), path, progress=True)
    assert _tree_hashes(path, True) == _tree_hashes(reference, True)


def test_rewrite_an_opened_store(reference, tmp_path):
    """A dataset read back (with the old store's encodings and flags) can be written again."""
    src = store.open_cube(reference)
    out = tmp_path / "copy.zarr"
    store.to_zarr(src, out, region=128)
    back = store.open_cube(out)
    assert back.counts.encoding["chunks"] == (128, 128, E) and back.attrs["complete"] == 1
    np.testing.assert_array_equal(back.counts.values, src.counts.values)
    assert back.attrs["fingerprint"] != src.attrs["fingerprint"]  # region size differs


def test_open_cube_errors(tmp_path):
    with pytest.raises(GanxError, match="does not exist"):
        store.open_cube(tmp_path / "none.zarr")
    with pytest.raises(GanxError, match="counts"):
        store.to_zarr(_dataset().drop_vars("counts"), tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists()


def test_resume_mismatch_names_sub_keys(reference, tmp_path):
    import shutil

    path = tmp_path / "sub.zarr"
    shutil.copytree(reference, path)
    ds = _dataset()
    ds.attrs["parameters"] = {**ds.xrf.meta["parameters"], "counts": 41}
    with pytest.raises(GanxError, match=r"parameters\.counts \(40 -> 41\)"):
        store.to_zarr(ds, path, resume=True)


def test_rewrite_starts_a_fresh_resume_history(tmp_path):
    src_path = tmp_path / "src.zarr"
    with dask.config.set(scheduler="synchronous"), pytest.raises(RuntimeError, match="death"):
        store.to_zarr(_dataset(fail_at=(0, 0)), src_path)
    store.to_zarr(_dataset(), src_path, resume=True)
    src = store.open_cube(src_path)
    assert len(src.xrf.meta["resumed"]) == 1
    out = tmp_path / "copy.zarr"
    store.to_zarr(src, out)
    assert store.open_cube(out).xrf.meta["resumed"] == []


def test_overwrite_interrupted_while_clearing_stays_a_store(reference, tmp_path, monkeypatch):
    import shutil

    path = tmp_path / "cleared.zarr"
    shutil.copytree(reference, path)

    def dying_rmtree(p, *args, **kwargs):
        raise OSError(f"simulated crash while deleting {p}")

    from ganx_dask import storage

    monkeypatch.setattr(storage.shutil, "rmtree", dying_rmtree)
    with pytest.raises(OSError, match="simulated crash"):
        store.to_zarr(_dataset(seed=6), path, overwrite=True)
    monkeypatch.undo()
    assert (path / "zarr.json").is_file()  # still recognised: a second overwrite may proceed
    store.to_zarr(_dataset(seed=6), path, overwrite=True)
    assert store.open_cube(path).attrs["seed"] == 6


def test_resume_finishes_a_store_killed_before_consolidation(reference, tmp_path):
    import json
    import shutil

    path = tmp_path / "unconsolidated.zarr"
    shutil.copytree(reference, path)
    meta = json.loads((path / "zarr.json").read_text())
    meta.pop("consolidated_metadata")
    (path / "zarr.json").write_text(json.dumps(meta))
    assert not store._is_consolidated(path, None)
    COMPUTED_BLOCKS.clear()
    store.to_zarr(_dataset(), path, resume=True)
    assert COMPUTED_BLOCKS == [] and store._is_consolidated(path, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert xr.open_zarr(path).attrs["complete"] == 1


def test_resume_refuses_changed_small_variables(reference, tmp_path):
    """Review finding: a library with the same name and version but other spectra/colours was
    accepted by resume (the fingerprint held attrs only) and finished a mixed store."""
    import shutil

    path = tmp_path / "mixed.zarr"
    shutil.copytree(reference, path)
    before = _tree_hashes(path)
    ds = _dataset()
    spectra = ds["spectrum"].values.copy()
    spectra[0, [3, 4]] = spectra[0, [4, 3]]  # same shape, attrs and sums: other contents
    ds["spectrum"] = (("cluster", "energy"), spectra)
    with pytest.raises(GanxError, match="contents of spectrum"):
        store.to_zarr(ds, path, resume=True)
    assert _tree_hashes(path) == before
    store.to_zarr(_dataset(), path, resume=True)  # the same contents still resume


def test_resume_refuses_a_changed_library_of_the_same_name(tmp_path):
    from ganx_dask import generate
    from ganx_dask.pigments import PigmentLibrary, default_library

    img = np.zeros((16, 16, 3), np.uint8)
    img[:, 8:] = (200, 40, 30)
    opts = dict(seed=1, energy="0.5:38.5:64", counts=20, n_start=2, delta=0, fit_samples=200,
                chunks=16, tile=16)
    lib = default_library()
    path = tmp_path / "lib.zarr"
    with dask.config.set(scheduler="synchronous"):
        store.to_zarr(generate(img, lib, **opts), path)
    from dataclasses import replace

    pigments = [lib[i] for i in range(len(lib))]
    pigments[0] = replace(pigments[0], rgb=tuple((c + 40) % 256 for c in pigments[0].rgb))
    recoloured = PigmentLibrary(pigments, name=lib.name, version=lib.version,
                                instrument=lib.instrument, description=lib.description)
    assert (recoloured.name, recoloured.version) == (lib.name, lib.version)
    with pytest.raises(GanxError, match="contents of pigment_rgb"):
        store.to_zarr(generate(img, recoloured, **opts), path, resume=True)
