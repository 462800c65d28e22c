"""Packaging metadata: licence file, light test extra, README test command consistent with extras."""

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
META = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_license_file_is_the_full_apache_text():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 10_000
    assert META["license"] == "Apache-2.0" and "LICENSE" in META["license-files"]


def test_test_extra_is_light_and_the_readme_command_installs_existing_extras():
    extras = META["optional-dependencies"]
    heavy = ("dask-jobqueue", "dask-kubernetes", "kubernetes")
    assert not [d for d in extras["test"] if d.startswith(heavy)]
    readme = (ROOT / "README.md").read_text()
    cmd = readme.split("<!-- test-command -->", 1)[1].split("```")[1]
    installed = re.search(r'pip install -e "\.\[([^\]]*)\]"', cmd).group(1).split(",")
    assert "test" in installed and set(installed) <= set(extras)
    assert len(META["classifiers"]) >= 8
    assert all("pypi.org/project/ganx/" not in u or "ganx" in name
               for name, u in META.get("urls", {}).items())
