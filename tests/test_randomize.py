"""Domain randomisation of a batch: reproducible per-image draws, their distributions, bad entries,
and the draws reaching the stores, the manifest and `batch --dry-run`."""

import json
import math
from pathlib import Path

import dask
import numpy as np
import pytest
import yaml
import zarr
from PIL import Image
from scipy import stats

from ganx_dask.attrs import decode
from ganx_dask.cli import main
from ganx_dask.errors import ConfigError
from ganx_dask.pigments.library import PAPER_PIGMENTS
from ganx_dask.pipelines.batch import image_seed, read_manifest, run_batch
from ganx_dask.pipelines.randomize import draw, draw_rng, parse_randomize

SECTION = {
    "counts": {"log_uniform": [50, 400], "integer": True},
    "count_model": {"choices": ["fixed", "poisson"], "weights": [3, 1]},
    "threshold": {"uniform": [0.3, 0.8]},
    "pigments": {"subset": [3, 6], "from": "paper"},
    "instrument": {"preset": {"choices": ["lab-rh", "lab-mo"]},
                   "kv": {"uniform": [35, 45]},
                   "shelf_fraction": {"log_uniform": [1e-4, 3e-3]}},
    "detector": {"pulse_pair_ns": {"uniform": [100, 600], "integer": True},
                 "input_rate_cps": {"log_uniform": [1e4, 2e5]},
                 "blur_fwhm_px": {"uniform": [0, 1.5]}},
}
GEN = {"energy": "0.5:38.5:64", "counts": 100, "chunks": 32, "tile": 32, "n_start": 3,
       "delta": 0, "fit_samples": 400, "score_batch": 128}
N_DRAWS = 400


@pytest.fixture(scope="module")
def dists():
    return parse_randomize(SECTION)


@pytest.fixture(scope="module")
def many(dists):
    return [draw(dists, 11, f"img{i:04d}") for i in range(N_DRAWS)]


def test_draw_is_reproducible_from_seed_and_name(dists):
    d = draw(dists, 11, "St_Mark")
    assert d == draw(parse_randomize(SECTION), 11, "St_Mark")
    assert d != draw(dists, 11, "St_Mark2") and d != draw(dists, 12, "St_Mark")
    # the documented construction: key K of an image from SeedSequence(image_seed, (6, sha256 K))
    s = image_seed(11, "St_Mark")
    kv = draw_rng(s, "instrument.kv").uniform(35, 45)
    assert d["instrument.kv"] == kv
    # one more randomised key changes no other key's draw
    more = parse_randomize({**SECTION, "similarity": {"choices": ["ciede2000", "cie94"]}})
    d2 = draw(more, 11, "St_Mark")
    assert {k: v for k, v in d2.items() if k != "similarity"} == d


def test_continuous_draws_follow_their_distributions(many):
    """KS tests (fixed seed, deterministic); the bound p > 1e-3 fails a wrong distribution of
    400 draws with near certainty (e.g. uniform on [35, 46] instead of [35, 45]: D = 0.09, p ~ 2e-3)."""
    kv = np.array([d["instrument.kv"] for d in many])
    assert kv.min() >= 35 and kv.max() <= 45
    assert stats.kstest(kv, stats.uniform(35, 10).cdf).pvalue > 1e-3
    thr = np.array([d["threshold"] for d in many])
    assert stats.kstest(thr, stats.uniform(0.3, 0.5).cdf).pvalue > 1e-3
    for key, lo, hi in (("detector.input_rate_cps", 1e4, 2e5),
                        ("instrument.shelf_fraction", 1e-4, 3e-3)):
        x = np.log([d[key] for d in many])
        assert x.min() >= math.log(lo) - 1e-12 and x.max() <= math.log(hi) + 1e-12
        assert stats.kstest(x, stats.uniform(math.log(lo), math.log(hi / lo)).cdf).pvalue > 1e-3
    blur = np.array([d["detector.blur_fwhm_px"] for d in many])
    assert stats.kstest(blur, stats.uniform(0, 1.5).cdf).pvalue > 1e-3
    # integer log-uniform: the rounded values' CDF at the half-integers matches log-uniform's
    counts = np.array([d["counts"] for d in many])
    assert counts.dtype.kind == "i" and counts.min() >= 50 and counts.max() <= 400
    edges = np.array([50, 75, 110, 160, 240, 400.5])
    obs = np.histogram(counts, edges)[0]
    cdf = lambda v: np.clip(np.log(np.clip(v, 50, 400) / 50) / np.log(8), 0, 1)  # noqa: E731
    exp = np.diff(cdf(edges - 0.5)) * N_DRAWS
    exp *= N_DRAWS / exp.sum()
    assert stats.chisquare(obs, exp).pvalue > 1e-3


def test_discrete_draws_follow_their_weights(many):
    """Chi-square tests of choices (weights 3:1), integer uniform and subset sizes/members."""
    models = [d["count_model"] for d in many]
    obs = [models.count("fixed"), models.count("poisson")]
    assert stats.chisquare(obs, [0.75 * N_DRAWS, 0.25 * N_DRAWS]).pvalue > 1e-3
    presets = [d["instrument.preset"] for d in many]
    assert stats.chisquare([presets.count("lab-rh"), presets.count("lab-mo")]).pvalue > 1e-3
    pp = np.array([d["detector.pulse_pair_ns"] for d in many])
    assert pp.dtype.kind == "i" and pp.min() >= 100 and pp.max() <= 600
    obs = np.histogram(pp, [100, 200, 300, 400, 500, 601])[0]  # 100,100,100,100,101 integers
    assert stats.chisquare(obs, np.array([100, 100, 100, 100, 101]) / 501 * N_DRAWS).pvalue > 1e-3
    sizes = [len(d["pigments"]) for d in many]
    assert stats.chisquare([sizes.count(k) for k in (3, 4, 5, 6)]).pvalue > 1e-3
    # each of the 9 pigments is in a subset with probability E[k]/9 = 4.5/9
    members = np.array([[p in d["pigments"] for p in PAPER_PIGMENTS] for d in many])
    z = (members.sum(0) - N_DRAWS * 0.5) / math.sqrt(N_DRAWS * 0.25)
    assert np.all(np.abs(z) < 4.5)
    # palettes keep the library order and never repeat a pigment
    for d in many[:50]:
        idx = [PAPER_PIGMENTS.index(p) for p in d["pigments"]]
        assert idx == sorted(set(idx))


@pytest.mark.parametrize(("entry", "key"), [
    ({"instrument": {"kvv": {"uniform": [30, 40]}}}, "randomize.instrument.kvv"),
    ({"instrument": {"kv": {"uniform": [3, 50]}}}, "randomize.instrument.kv"),
    ({"instrument": {"kv": {"uniform": [50, 40]}}}, "randomize.instrument.kv"),
    ({"instrument": {"preset": {"choices": ["lab-rh", "lab-zz"]}}}, "randomize.instrument.preset"),
    ({"instrument": {"preset": {"uniform": [1, 2]}}}, "randomize.instrument.preset"),
    ({"counts": {"log_uniform": [0, 10]}}, "randomize.counts"),
    ({"counts": [10, 20]}, "randomize.counts"),
    ({"counts": {"uniform": [10, 20], "weights": [1]}}, "randomize.counts"),
    ({"count_model": {"choices": ["fixed", "gaussian"]}}, "randomize.count_model"),
    ({"threshold": {"choices": [0.2, 0.5], "weights": [1]}}, "randomize.threshold"),
    ({"threshold": {"uniform": [0.5, 1.5]}}, "randomize.threshold"),
    ({"pigments": {"subset": [2, 99]}}, "randomize.pigments"),
    ({"pigments": {"choices": [["vermilion", "unobtainium"]]}}, "randomize.pigments"),
    ({"detector": {"blur_fwhm_px": {"uniform": [-1, 2]}}}, "randomize.detector.blur_fwhm_px"),
    ({"detector": {"pulse_pair_ns": {"uniform": [100, 200]}}}, "randomize.detector.pulse_pair_ns"),
    ({"colour": {"uniform": [0, 1]}}, "randomize.colour"),
])
def test_bad_entries_name_the_key(entry, key, tmp_path):
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        parse_randomize(entry, generation=_full_gen())
    # through a batch config file: the file and the key are named, nothing is written
    img = tmp_path / "a.png"
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(img)
    cfg = tmp_path / "batch.yaml"
    cfg.write_text(yaml.safe_dump({"generation": GEN, "randomize": entry}))
    with pytest.raises(ConfigError, match=f"batch.yaml: key '{key}'"):
        run_batch([img], tmp_path / "out.zarr", cfg)
    assert not (tmp_path / "out.zarr").exists()


def _full_gen():
    from ganx_dask.pipelines.batch import generation_schema
    from ganx_dask.pipelines.config import validate

    gen = validate(GEN, generation_schema())
    gen.pop("library"), gen.pop("pigments")
    return gen


def test_combination_refused_for_an_image_names_it(tmp_path):
    """Each bound is valid alone, but a drawn dead-time preset with a drawn fixed count model is
    not: the batch fails before writing, naming the image."""
    img = tmp_path / "a.png"
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(img)
    entry = {"count_model": {"choices": ["poisson", "fixed"], "weights": [0, 1]},
             "detector": {"preset": {"choices": [None, "lab-rh"], "weights": [0, 1]}}}
    with pytest.raises(ConfigError, match="image 'a' draws .* refused: a dead-time model"):
        run_batch([img], tmp_path / "out.zarr", {"generation": GEN, "randomize": entry})
    assert not (tmp_path / "out.zarr").exists()


def _images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(3)
    cols = np.array([[200, 40, 30], [30, 60, 170], [240, 230, 210], [40, 120, 60]])
    out = []
    for i in range(n):
        lab = ((np.arange(64)[:, None] // (16 + 4 * i)) + (np.arange(64)[None, :] // 24)) % 4
        a = np.clip(cols[lab] + rng.normal(0, 6, (64, 64, 3)), 0, 255).astype(np.uint8)
        p = folder / f"img{i:02d}.png"
        Image.fromarray(a).save(p)
        out.append(p)
    return out


def test_randomised_batch_records_each_draw(tmp_path, capsys):
    files = _images(tmp_path / "imgs", 3)
    section = {k: SECTION[k] for k in ("counts", "threshold", "pigments", "detector")}
    section["instrument"] = {"kv": {"uniform": [38, 42]}}
    cfg = tmp_path / "batch.yaml"
    cfg.write_text(yaml.safe_dump({"seed": 5, "generation": GEN, "randomize": section}))
    out = tmp_path / "ds.zarr"
    # dry run: prints every draw, writes nothing
    assert main(["batch", *map(str, files[:2]), "-o", str(out), "--config", str(cfg),
                 "--dry-run", "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)["planned"]
    assert not out.exists()
    dists = parse_randomize(section)
    assert [p["randomized"] for p in planned] == [draw(dists, 5, f.stem) for f in files[:2]]
    with dask.config.set(scheduler="synchronous"):
        run_batch(files[:2], out, cfg)
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
              and p.name != "zarr.json"}
    for rec in read_manifest(out):
        d = draw(dists, 5, rec["name"])
        assert rec["randomized"] == d and rec["status"] == "complete"
        a = decode(zarr.open_group(str(out), mode="r")[rec["name"]].attrs)
        assert a["randomized"] == d
        assert a["parameters"]["counts"] == d["counts"]
        assert a["parameters"]["threshold"] == d["threshold"]
        assert a["instrument"]["kv"] == d["instrument.kv"]
        assert a["detector"]["blur_fwhm_px"] == d["detector.blur_fwhm_px"]
        g = zarr.open_group(str(out), mode="r")[rec["name"]]
        assert list(np.asarray(g["pigment"][...])) == d["pigments"]
    # a third image: the first two are left as they are, byte for byte
    with dask.config.set(scheduler="synchronous"):
        report = run_batch(files, out, cfg)
    assert report.generated == ["img02"] and sorted(report.skipped_complete) == ["img00", "img01"]
    assert all(p.read_bytes() == b for p, b in before.items())
    # a changed randomize section is a changed parameter set
    cfg.write_text(yaml.safe_dump({"seed": 5, "generation": GEN,
                                   "randomize": {"threshold": {"uniform": [0.3, 0.4]}}}))
    with pytest.raises(ConfigError, match="randomize"):
        run_batch(files, out, cfg)


def _doc_block(marker: str | None, lang: str) -> str:
    text = (Path(__file__).resolve().parents[1] / "docs" / "distributed.md").read_text()
    start = text.index(marker) if marker else text.index("## Domain randomisation")
    start = text.index(f"```{lang}\n", start) + len(lang) + 4
    return text[start:text.index("```", start)]


def test_documented_examples_run(tmp_path, capsys):
    cfg = yaml.safe_load(_doc_block("<!-- randomize-example -->", "yaml"))
    files = _images(tmp_path / "images", 2)
    path = tmp_path / "batch.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["batch", "--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: 2 image(s), nothing written" in out and "instrument.kv" in out
    assert not (tmp_path / "dataset.zarr").exists()
    report = run_batch(None, None, path, dry_run=True)
    assert {p["name"] for p in report.planned} == {f.stem for f in files}
    exec(compile(_doc_block("From Python", "python"), "distributed.md", "exec"), {})
    assert "instrument.kv" in capsys.readouterr().out
