"""The paper reproduction pipeline at CI size, through the CLI (``ganx-dask paper --small``)."""

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from ganx_dask.cli import main
from ganx_dask.errors import ConfigError
from ganx_dask.pipelines.config import defaults
from ganx_dask.pipelines.paper import PAPER_SCHEMA, load_paper_config

REPO = Path(__file__).resolve().parent.parent


def test_shipped_config_is_the_paper_setup():
    cfg = load_paper_config(REPO / "pipelines" / "paper" / "config.yaml")
    # relative paths in a config file are taken relative to the file's folder
    assert cfg["output"] == str(REPO / "pipelines" / "paper" / "paper-output")
    assert {**cfg, "output": "paper-output"} == defaults(PAPER_SCHEMA)
    gen = cfg["generation"]
    assert (gen["counts"], gen["n_start"], gen["delta"], gen["patience"], gen["score_batch"]) \
        == (400, 10, 2, -1, 1024)
    assert gen["thresholds"] == [0.2, 0.6]
    assert cfg["pigments"] == ["minium", "vermilion", "red lake", "lead-tin yellow I",
                               "natural ultramarine", "azurite", "indigo", "malachite", "chalk"]


def test_bad_config_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("generation: {treshold: 0.3}\n")
    with pytest.raises(ConfigError, match="bad.yaml: unknown key 'generation.treshold'"):
        load_paper_config(bad)
    bad.write_text("elements: ['Xx:Ka']\n")
    with pytest.raises(ConfigError, match="'elements': unknown element 'Xx'"):
        load_paper_config(bad)


def test_paper_pipeline_small(tmp_path, capsys):
    cfg = tmp_path / "paper.yaml"
    cfg.write_text(yaml.safe_dump({"small": {"size": 48}, "generation": {"delta": 1}}))
    out = tmp_path / "out"
    assert main(["paper", str(cfg), "-o", str(out), "--small"]) == 0
    assert "tables.md" in capsys.readouterr().out
    res = json.loads((out / "tables.json").read_text())
    t1, t2 = res["table1"], res["table2"]
    ff, f2p, f6p = "fake 0.2 vs fake 0.6", "fake 0.2 vs Poisson noise", "fake 0.6 vs Poisson noise"
    assert set(t1) == {ff, f2p, f6p}
    # the two fakes share pigments and clustering: much closer to each other than to noise
    for p in (f2p, f6p):
        assert t1[ff]["cosine"] < t1[p]["cosine"]
        assert t1[ff]["bhattacharyya"] > t1[p]["bhattacharyya"]
        assert t2[ff]["ssim"] > t2[p]["ssim"]
        assert t2[ff]["ms_ssim"] > t2[p]["ms_ssim"]
    assert res["meta"]["shape"] == [48, 36] and res["meta"]["counts"] == 400
    md = (out / "tables.md").read_text()
    assert "Table 1" in md and "Table 2" in md and "| MS-SSIM |" in md
    figs = sorted(p.name for p in out.glob("*.png"))
    assert figs == ["figure1_rgb.png", "figure2_element_maps_t0.2.png",
                    "figure3_element_maps_t0.6.png", "figure4_ground_truth_t0.2.png",
                    "figure4_ground_truth_t0.6.png", "figure5_sum_spectra.png",
                    "figure6_flattened.png"]
    for f in figs:
        with Image.open(out / f) as im:
            assert im.format == "PNG" and im.size[0] >= 400 and im.size[1] >= 250, f
    assert all((out / s).is_dir() for s in ("fake_t0.2.zarr", "fake_t0.6.zarr", "poisson.zarr"))
    # an existing output is never touched without --overwrite
    before = sorted(p.name for p in out.iterdir())
    assert main(["paper", str(cfg), "-o", str(out), "--small"]) == 1
    assert "exists" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
