"""Cluster configurations: validation, job scripts / specs built without submitting, LocalCluster."""

from pathlib import Path

import pytest
import yaml

from ganx_dask.errors import ConfigError
from ganx_dask.pipelines.config import Option, describe, load_config, validate
from ganx_dask.scheduling import (
    KINDS,
    SCHEMAS,
    cluster_from_config,
    kubernetes_spec,
    load_cluster_config,
    make_cluster,
    worker_malloc_trim,
)

from .markers import requires_jobqueue, requires_kubernetes

CONFIGS = Path(__file__).resolve().parents[1] / "cluster_configs"


def _write(tmp_path, data, name="c.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


@pytest.mark.parametrize("kind", KINDS)
def test_shipped_configs_validate_and_are_documented(kind):
    cfg = load_cluster_config(CONFIGS / f"{kind}.yaml")
    assert cfg["kind"] == kind
    assert set(cfg) - {"_path"} == set(SCHEMAS[kind])
    readme = (CONFIGS / "README.md").read_text()
    assert f"{kind}.yaml" in readme
    # every key of the kind is explained in the README
    for key in SCHEMAS[kind]:
        assert f"`{key}`" in readme, key
    if "malloc_trim_threshold" in SCHEMAS[kind]:
        assert cfg["malloc_trim_threshold"] is None


def test_dask_config_snippet_unsets_malloc_trim():
    snippet = yaml.safe_load((CONFIGS / "dask" / "ganx-dask.yaml").read_text())
    environ = snippet["distributed"]["nanny"]["pre-spawn-environ"]
    assert "MALLOC_TRIM_THRESHOLD_" in environ and environ["MALLOC_TRIM_THRESHOLD_"] is None


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"kind": "local", "wrokers": 2}, "'wrokers'"),
        ({"kind": "local", "workers": "two"}, "'workers' must be int"),
        ({"kind": "local", "workers": True}, "'workers' must be int"),
        ({"kind": "local", "workers": 0}, "'workers' must be >= 1"),
        ({"kind": "local", "malloc_trim_threshold": "big"}, "'malloc_trim_threshold'"),
        ({"kind": "local", "worker_env": {"A": [1]}}, "'worker_env'"),
        ({"kind": "slurm", "walltime": 4}, "'walltime' must be str"),
        ({"kind": "slurm", "job_extra_directives": "--exclusive"}, "'job_extra_directives'"),
        ({"kind": "pbs", "resource_spec": ["a"]}, "'resource_spec'"),
        ({"kind": "kubernetes", "scheduler_service_type": "Magic"}, "'scheduler_service_type'"),
        ({"kind": "processes", "address": "tcp://h:1", "scheduler_file": "s.json"}, "exactly one"),
        ({"kind": "processes"}, "exactly one"),
        ({"kind": "yarn"}, "'kind' must be one of"),
        ({"workers": 2}, "missing key 'kind'"),
    ],
)
def test_bad_cluster_config_names_the_key(tmp_path, data, needle):
    p = _write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_cluster_config(p)
    assert needle in str(err.value)
    assert str(p) in str(err.value)


def test_malformed_and_missing_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_cluster_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_cluster_config(_write(tmp_path, "kind: [local\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_cluster_config(_write(tmp_path, "- kind\n- local\n"))


def test_validator_nested_sections_defaults_and_describe(tmp_path):
    schema = {
        "a": Option(int, 3, "an int"),
        "sec": {"x": Option(float, 1.5, "keV", minimum=0), "y": Option(str, None, "s", nullable=True)},
    }
    assert validate({}, schema) == {"a": 3, "sec": {"x": 1.5, "y": None}}
    assert validate({"sec": {"x": 2}}, schema)["sec"]["x"] == 2.0  # int accepted as float
    with pytest.raises(ConfigError, match=r"unknown key 'sec\.z'"):
        validate({"sec": {"z": 1}}, schema, source="f.yaml")
    with pytest.raises(ConfigError, match=r"'sec\.x' must be >= 0"):
        validate({"sec": {"x": -1}}, schema)
    with pytest.raises(ConfigError, match="section 'sec' must be a mapping"):
        validate({"sec": 5}, schema)
    with pytest.raises(ConfigError, match="'a' must not be null"):
        validate({"a": None}, schema)
    table = describe(schema)
    assert "| `sec.x` | float | `1.5` | keV |" in table
    assert load_config(None, schema)["a"] == 3


def test_validated_defaults_are_copies():
    schema = {"env": Option(dict, {}, "env"), "sec": {"l": Option(list, [], "list")}}
    first = validate({}, schema)
    first["env"]["A"] = "1"
    first["sec"]["l"].append("x")
    assert validate({}, schema) == {"env": {}, "sec": {"l": []}}
    assert schema["env"].default == {} and schema["sec"]["l"].default == []


@requires_jobqueue
def test_slurm_job_script_without_submitting(tmp_path):
    data = yaml.safe_load((CONFIGS / "slurm.yaml").read_text())
    data.update(queue="cpu", account="heritage", malloc_trim_threshold=262144,
                worker_env={"OMP_NUM_THREADS": 1}, job_script_prologue=["module load python"])
    cfg = load_cluster_config(_write(tmp_path, data))
    with make_cluster(cfg) as cluster:
        script = cluster.job_script()
        assert cluster.workers == {}  # nothing submitted
    assert "#SBATCH -p cpu" in script and "#SBATCH -A heritage" in script
    assert "#SBATCH --cpus-per-task=8" in script and "#SBATCH -t 04:00:00" in script
    assert "-m ganx_dask.scheduling" in script
    assert "--nworkers 8" in script and "--nthreads 1" in script and "--nanny" in script
    assert "--memory-limit 4.00GiB" in script
    assert "export MALLOC_TRIM_THRESHOLD_=262144" in script
    assert "export OMP_NUM_THREADS=1" in script
    assert script.index("module load python") < script.index("-m ganx_dask.scheduling")


@requires_jobqueue
def test_pbs_job_script_without_submitting():
    cfg = load_cluster_config(CONFIGS / "pbs.yaml")
    with make_cluster(cfg) as cluster:
        script = cluster.job_script()
    assert "#PBS -l select=1:ncpus=8:mem=32GB" in script
    assert "#PBS -l walltime=04:00:00" in script
    assert "-m ganx_dask.scheduling" in script and "--nworkers 8" in script
    assert "MALLOC_TRIM_THRESHOLD_" not in script  # null: the launcher leaves it unset


@requires_kubernetes
def test_kubernetes_spec_without_a_cluster():
    cfg = load_cluster_config(CONFIGS / "kubernetes.yaml")
    spec = kubernetes_spec(cfg)
    assert spec["kind"] == "DaskCluster" and spec["metadata"]["name"] == "ganx-dask"
    worker = spec["spec"]["worker"]
    assert worker["replicas"] == 4
    (container,) = worker["spec"]["containers"]
    assert container["args"][:3] == ["python", "-m", "ganx_dask.scheduling"]
    assert container["args"][3:7] == ["--nthreads", "1", "--memory-limit", "4GiB"]
    assert container["resources"]["limits"]["memory"] == "5Gi"
    assert container["env"] is None  # no MALLOC_TRIM_THRESHOLD_ exported


def test_local_cluster_unsets_malloc_trim(tmp_path, monkeypatch):
    # hermetic: an in-process LocalCluster of another test (distributed's nanny) may have written
    # distributed's 65536 into this process's environment, which workers would inherit
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    p = _write(tmp_path, {"kind": "local", "workers": 1, "memory_limit": "1GiB", "timeout": 30})
    with cluster_from_config(p) as client:
        info = client.scheduler_info()
        assert len(info["workers"]) == 1
        (w,) = info["workers"].values()
        assert w["nthreads"] == 1 and w["memory_limit"] == 2**30
        assert set(client.run(worker_malloc_trim).values()) == {None}
        assert client.submit(sum, [1, 2, 3]).result(timeout=30) == 6
    p = _write(tmp_path, {"kind": "local", "workers": 1, "malloc_trim_threshold": 1048576},
               "c2.yaml")
    with cluster_from_config(p) as client:
        assert set(client.run(worker_malloc_trim).values()) == {"1048576"}


def test_local_cluster_leaves_the_client_environment_alone(tmp_path, monkeypatch):
    """distributed's nanny writes its pre-spawn variables into the spawning process's os.environ;
    building a local cluster must not leave them behind (later subprocesses would inherit them)."""
    import os

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.setenv("PYTHONHASHSEED", "123")
    p = _write(tmp_path, {"kind": "local", "workers": 1, "malloc_trim_threshold": 1048576})
    with cluster_from_config(p) as client:
        assert set(client.run(worker_malloc_trim).values()) == {"1048576"}
        assert "MALLOC_TRIM_THRESHOLD_" not in os.environ
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ
    assert os.environ["PYTHONHASHSEED"] == "123"
    cfg = load_cluster_config(p)
    with make_cluster(cfg) as cluster:  # the public builder alone restores it too
        assert len(cluster.workers) == 1
        assert "MALLOC_TRIM_THRESHOLD_" not in os.environ
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ


def test_missing_optional_backend_is_a_config_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # simulate "not installed"
    cfg = load_cluster_config(CONFIGS / "slurm.yaml")
    with pytest.raises(ConfigError, match=r"needs dask-jobqueue.*\[jobqueue\]"):
        make_cluster(cfg)
    monkeypatch.setitem(sys.modules, "dask_kubernetes.operator", None)
    with pytest.raises(ConfigError, match=r"\[kubernetes\]"):
        kubernetes_spec(load_cluster_config(CONFIGS / "kubernetes.yaml"))
