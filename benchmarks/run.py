"""ganx-dask benchmarks, one command: ``python benchmarks/run.py [--quick]``.

In one run it

1. installs ganx 0.0.2 from PyPI into ``benchmarks/.venv-ganx`` if absent (skipped, with a
   message, when the install fails or ``--skip-ganx`` is given);
2. exports the default library's nine paper pigments in ganX format (2048 channels, which ganx
   rebins losslessly to 1024);
3. times ganx and ganx-dask end to end on the same images (the bundled demo image resized) and
   parameters (N=400, 1024 channels over 0.5–38.5 keV, N_start=10, δ=2, patience −1, score batch
   1024) at 128², 256², 512²: wall, CPU (process tree), peak RSS (process tree), ratios —
   ganx-dask once through ``ganx_dask.to_zarr`` and once through xarray's plain
   ``ds.to_zarr(path)``;
4. times ganx-dask alone at 2048² and 8192² (``--quick``: 2048² only) streaming to Zarr: wall,
   CPU-s per raw GB, voxels/s, peak RSS, stored bytes, compression ratio;
5. runs the sampler alone against the memory-bandwidth and RNG ceilings it measures
   (``bench_sampler.py``);
6. compares a LocalCluster of 1 and 2 single-threaded worker processes (2048²; quick: 1024²);
7. writes ``benchmarks/results/bench-<UTC time>.json`` and ``.md`` plus ``latest.json``/``latest.md``
   and prints the Markdown tables.

Every case runs in its own subprocess (``case_ganx_dask.py``, ``case_ganx.py``), measured from
outside by ``_measure.py``.  The ganx-dask cases run in ``benchmarks/.venv-ganx-dask``, an
editable install of this checkout with its ``[fast]`` extra only — what a user installs —, so that
the development and test extras (pint, cffi, …: libraries that xarray and numba probe and import
on first use when present) do not weigh on them; ``--dev-env`` runs them in the current
interpreter instead.  Images ≥ 2048² are written as tiled TIFF so that ganx-dask reads them
chunk-wise; smaller ones as PNG (ganx reads them with Pillow).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _measure import run_measured  # noqa: E402

GANX_VENV = HERE / ".venv-ganx"
GANX_SPEC = "ganx==0.0.2"
#: ganx-dask as a user installs it (editable, so it is this checkout): see the module docstring.
USER_VENV = HERE / ".venv-ganx-dask"
USER_SPEC = f"{ROOT}[fast]"
PARAMS = {"counts": 400, "energy": "0.5:38.5:1024", "n_start": 10, "delta": 2, "patience": -1,
          "score_batch": 1024}
GB = 1e9
#: Side of the crop each tool runs first in the "warm" in-process cases (imports, JIT, caches).
WARMUP = 32
#: Modules ganx 0.0.2 imports when it is imported (outside its timed stage) that ganx-dask also
#: uses but imports on first use: the "shared stack" in-process cases load them first.
SHARED_STACK = ("sklearn.cluster", "skimage.color")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_venv(venv: Path, install: list[str], check: str, what: str,
                refresh: bool = False) -> tuple[Path | None, str]:
    """Python of ``venv`` with ``pip install <install>`` done (created if absent), or (None,
    reason).  ``check``: Python code that must run in it; when it does, the install is skipped
    unless ``refresh`` (pip then only brings the requirements up to the project's)."""
    py = _venv_python(venv)
    probe = [str(py), "-c", check]
    fresh = not py.exists()
    if not fresh and not refresh and subprocess.run(probe, capture_output=True).returncode == 0:
        return py, "present"
    log(f"installing {what} into {venv} ...")
    try:
        if fresh:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                           capture_output=True, timeout=300)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *install], check=True,
                       capture_output=True, timeout=1200)
        subprocess.run(probe, check=True, capture_output=True, timeout=120)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        err = getattr(exc, "stderr", b"") or b""
        reason = f"install of {what} failed: {exc}; {err.decode(errors='replace')[-500:]}"
        log(reason)
        return None, reason
    return py, "installed" if fresh else "updated"


def ensure_ganx(skip: bool) -> tuple[Path | None, str]:
    """Python of a venv with ganx 0.0.2 (created if absent), or (None, reason)."""
    if skip:
        return None, "skipped (--skip-ganx)"
    py, status = ensure_venv(GANX_VENV, [GANX_SPEC], "import ganx.XRF_generator_classes",
                             GANX_SPEC)
    if py is None:
        log("SKIPPING the ganx comparison")
    return py, status


def ensure_user_env(dev: bool) -> tuple[Path, str]:
    """Python that runs the ganx-dask cases: the user-install venv (``pip install -e
    .[fast]``, refreshed every run), else — ``--dev-env`` or a failed install — this one."""
    if dev:
        return Path(sys.executable), "development environment (--dev-env)"
    py, status = ensure_venv(USER_VENV, ["-e", USER_SPEC], "import ganx_dask, numba",
                             "ganx-dask[fast]", refresh=True)
    if py is None:
        log("running ganx-dask in the development environment instead")
        return Path(sys.executable), "development environment (the user-install venv failed: " \
            "see the log)"
    return py, f"user install, {USER_VENV.name} ({status})"


def make_images(work: Path, sizes: list[int]) -> dict[int, Path]:
    """The bundled demo image resized to n×n (PNG below 2048², tiled TIFF from 2048²)."""
    import numpy as np
    import tifffile
    from PIL import Image

    demo = Image.open(ROOT / "ganx_dask" / "data" / "demo.png").convert("RGB")
    out = {}
    for n in sizes:
        im = demo.resize((n, n), Image.BILINEAR)
        if n < 2048:
            p = work / f"demo{n}.png"
            im.save(p)
        else:
            p = work / f"demo{n}.tif"
            tifffile.imwrite(p, np.asarray(im), tile=(256, 256), photometric="rgb",
                             bigtiff=n >= 8192)
        del im
        out[n] = p
    return out


def export_ganx_db(work: Path) -> Path:
    from ganx_dask.pigments.formats import write_ganx_database
    from ganx_dask.pigments.library import PAPER_PIGMENTS, default_library

    lib = default_library().select(PAPER_PIGMENTS)
    return write_ganx_database(lib, work / "ganxdb", energy="0.5:38.5:2048", overwrite=True)


#: Python of the ganx-dask cases (set by ``main`` from :func:`ensure_user_env`).
PYTHON = Path(sys.executable)


def _case_cmd(image: Path, store: Path, scheduler: str = "threads",
              writer: str = "store", warmup: int = 0, preload: tuple = ()) -> list[str]:
    cmd = [str(PYTHON), str(HERE / "case_ganx_dask.py"), "--image", str(image), "--out",
           str(store), "--scheduler", scheduler, "--writer", writer, "--warmup", str(warmup),
           "--preload", ",".join(preload)]
    for k, v in PARAMS.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    return cmd


def _summ(r: dict) -> dict:
    out = {k: r[k] for k in ("wall_s", "cpu_s", "peak_rss_bytes", "returncode")}
    out["result"] = r["result"]
    if r["returncode"] != 0:
        out["stderr"] = r["stderr"][-2000:]
    return out


def run_ganx_dask(image: Path, store: Path, scheduler: str = "threads",
                  writer: str = "store", warmup: int = 0, preload: tuple = ()) -> dict:
    r = _summ(run_measured(_case_cmd(image, store, scheduler, writer, warmup, preload),
                           env=dict(os.environ)))
    res = r.get("result") or {}
    if res:
        raw = res["raw_bytes"]
        r["cpu_s_per_raw_GB"] = r["cpu_s"] / (raw / GB)
        r["voxels_per_s"] = raw / 2 / r["wall_s"] if res["dtype"] == "uint16" else \
            raw / 4 / r["wall_s"]
        r["write_voxels_per_s"] = (raw / (2 if res["dtype"] == "uint16" else 4)
                                   / res["t_write_s"])
    shutil.rmtree(store, ignore_errors=True)
    return r


def run_ganx(py: Path, db: Path, image: Path, warmup: int = 0) -> dict:
    cmd = [str(py), str(HERE / "case_ganx.py"), "--db", str(db), "--image", str(image),
           "--warmup", str(warmup),
           "--counts", str(PARAMS["counts"]), "--channels", "1024",
           "--n-start", str(PARAMS["n_start"]), "--delta", str(PARAMS["delta"]),
           "--patience", str(PARAMS["patience"]), "--score-batch", str(PARAMS["score_batch"])]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return _summ(run_measured(cmd, env=env, cwd=str(db.parent)))


#: Versions that matter, printed as JSON by the Python that runs the ganx-dask cases.
_VERSIONS = """
import importlib.metadata as m, json, platform
v = {}
for d in ("numpy", "dask", "xarray", "zarr", "scikit-learn", "numba"):
    try:
        v[d] = m.version(d)
    except m.PackageNotFoundError:
        v[d] = None
print(json.dumps({"python": platform.python_version(), **v}))
"""


def machine_info(python: Path | None = None) -> dict:
    """Machine, and the versions of the Python that runs the ganx-dask cases."""
    py = str(python or sys.executable)
    info = {"platform": platform.platform(), "cpus": os.cpu_count()}
    info.update(json.loads(subprocess.run([py, "-c", _VERSIONS], capture_output=True,
                                          text=True, check=True).stdout))
    try:
        info["git"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                     capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    return info


def _mb(b) -> str:
    return f"{b / 1e6:,.0f} MB"


def markdown(res: dict) -> str:
    lines = [f"# ganx-dask benchmark ({res['started']} UTC)", ""]
    m = res["machine"]
    lines.append(f"{m['cpus']} CPUs; ganx-dask in the {res.get('ganx_dask_env', '?')}: Python "
                 f"{m['python']}, numpy {m['numpy']}, dask {m['dask']}, xarray {m['xarray']}, "
                 f"zarr {m['zarr']}, scikit-learn {m['scikit-learn']}, numba {m['numba']}; "
                 "load average at start/end "
                 f"{res['load_start']} / {res['load_end']} (machine shared: noisy). "
                 f"Parameters: N=400, 1024 channels, N_start=10, δ=2, patience −1, score "
                 f"batch 1024, chunks 256², default scheduler (threads) unless stated.")
    lines += ["", "## ganx 0.0.2 vs ganx-dask, end to end (process tree)", ""]
    if res.get("ganx_status") not in ("present", "installed"):
        lines.append(f"ganx comparison skipped: {res.get('ganx_status')}")
    lines += ["| size | ganx wall s | ganx CPU s | ganx peak RSS | ganx-dask wall s | "
              "ganx-dask CPU s | ganx-dask peak RSS | wall ratio | CPU ratio | RSS ratio |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for row in res["compare"]:
        g, d = row.get("ganx") or {}, row["ganx_dask"]
        ok = g.get("returncode") == 0
        gw = f"{g['wall_s']:.1f}" if ok else ("failed" if g else "–")
        gc = f"{g['cpu_s']:.1f}" if ok else "–"
        gr = _mb(g["peak_rss_bytes"]) if ok else "–"
        ratio = (f"{g['wall_s'] / d['wall_s']:.1f}×", f"{g['cpu_s'] / d['cpu_s']:.1f}×",
                 f"{d['peak_rss_bytes'] / g['peak_rss_bytes']:.2f}") if ok else ("–",) * 3
        lines.append(f"| {row['size']}² | {gw} | {gc} | {gr} | {d['wall_s']:.1f} | "
                     f"{d['cpu_s']:.1f} | {_mb(d['peak_rss_bytes'])} | " + " | ".join(ratio)
                     + " |")
    lines += ["", "RSS ratio = ganx-dask / ganx.  ganx keeps its float64 cube in memory (no "
              "writer); ganx-dask writes a compressed Zarr store.", ""]
    if any(row.get("ganx_dask_xarray") for row in res["compare"]):
        lines += ["### The same through xarray's `ds.to_zarr(path)` (encoding set by `generate`)",
                  "", "| size | wall s | CPU s | peak RSS | wall ratio vs ganx | CPU ratio vs ganx "
                  "| wall / `ganx_dask.to_zarr` |", "|---|---|---|---|---|---|---|"]
        for row in res["compare"]:
            x, d, g = row.get("ganx_dask_xarray"), row["ganx_dask"], row.get("ganx") or {}
            if not x:
                continue
            if x["returncode"] != 0:
                lines.append(f"| {row['size']}² | failed (rc {x['returncode']}) ||||||")
                continue
            ok = g.get("returncode") == 0
            lines.append(
                f"| {row['size']}² | {x['wall_s']:.1f} | {x['cpu_s']:.1f} | "
                f"{_mb(x['peak_rss_bytes'])} | "
                + (f"{g['wall_s'] / x['wall_s']:.1f}× | {g['cpu_s'] / x['cpu_s']:.1f}× | "
                   if ok else "– | – | ") + f"{x['wall_s'] / d['wall_s']:.2f} |")
        lines.append("")
    lines += ["### In-process: the work after the imports (stage times reported by each process)",
              "", "ganx: `generate_xrf()` (its cube stays in memory; ganx imports scikit-learn "
              "and scipy.stats when it is imported); ganx-dask: `generate()` + the write "
              "(Monte Carlo, encode, store). Interpreter start and imports excluded on both "
              "sides. *Cold*: the process's first image, so ganx-dask's stages still include "
              "everything it loads on first use (scikit-learn, numba and its JIT cache, "
              "`distributed` for `ds.to_zarr`, the rendered library spectra). *Shared stack*: "
              "the first image too, with the libraries ganx loads at its import and ganx-dask "
              f"on first use ({', '.join(f'`{m}`' for m in SHARED_STACK)}) imported with "
              "ganx-dask, so that both clocks start from the same loaded stack; numba, "
              "`distributed` and the spectra stay inside. *Warm*: the same image after a "
              f"{WARMUP}² crop ran in the same process (a notebook, a batch worker).", "",
              "| size | ganx s | ganx-dask `to_zarr` cold s | ratio | `ds.to_zarr` cold s | ratio "
              "| `to_zarr` shared stack s | ratio | `ds.to_zarr` shared stack s | ratio "
              "| `to_zarr` warm s | ratio | `ds.to_zarr` warm s | ratio |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in res["compare"]:
        g = (row.get("ganx") or {}).get("result") or {}
        cells = []
        for key in ("ganx_dask", "ganx_dask_xarray", "ganx_dask_shared",
                    "ganx_dask_xarray_shared", "ganx_dask_warm", "ganx_dask_xarray_warm"):
            r = (row.get(key) or {}).get("result") or {}
            t = r["t_generate_s"] + r["t_write_s"] if r else None
            cells += [f"{t:.2f}" if t else "–",
                      f"{g['t_generate_s'] / t:.1f}×" if t and g else "–"]
        lines.append(f"| {row['size']}² | " + (f"{g['t_generate_s']:.1f}" if g else "–")
                     + " | " + " | ".join(cells) + " |")
    for row in res["compare"]:
        g = (row.get("ganx") or {}).get("result") or {}
        gw = (row.get("ganx_warm") or {}).get("result") or {}
        if g and gw:
            lines += ["", f"ganx 0.0.2 warm vs cold at {row['size']}²: "
                      f"{gw['t_generate_s']:.2f} s vs {g['t_generate_s']:.2f} s "
                      f"({gw['t_generate_s'] / g['t_generate_s'] - 1:+.0%})."]
    lines.append("")
    lines += ["## ganx-dask streaming to Zarr", "",
              "| size | wall s | CPU s | CPU-s per raw GB | Gvox/s (end to end) | "
              "Gvox/s (write phase) | peak RSS | raw | stored | ratio |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for row in res["large"]:
        d = row["ganx_dask"]
        r = d.get("result") or {}
        if d["returncode"] != 0 or not r:
            lines.append(f"| {row['size']}² | failed (rc {d['returncode']}) |||||||||")
            continue
        lines.append(
            f"| {row['size']}² | {d['wall_s']:.1f} | {d['cpu_s']:.1f} | "
            f"{d['cpu_s_per_raw_GB']:.2f} | {d['voxels_per_s'] / 1e9:.3f} | "
            f"{d['write_voxels_per_s'] / 1e9:.3f} | {_mb(d['peak_rss_bytes'])} | "
            f"{r['raw_bytes'] / GB:.1f} GB | {_mb(r['stored_bytes'])} | {r['ratio']:.2f}× |")
    if len(res["large"]) >= 2 and all(x["ganx_dask"]["returncode"] == 0 for x in res["large"]):
        a, b = res["large"][0]["ganx_dask"], res["large"][-1]["ganx_dask"]
        lines.append(f"\nPeak RSS {res['large'][-1]['size']}² / {res['large'][0]['size']}²: "
                     f"{b['peak_rss_bytes'] / a['peak_rss_bytes']:.2f}.")
    s = res.get("sampler") or {}
    if s:
        lines += ["", "## Sampler alone (one core) vs measured ceilings", "",
                  f"Memory: copy {s['copy_GBps']:.1f} GB/s, fill {s['fill_GBps']:.1f} GB/s "
                  f"(output-write ceiling {s['write_ceiling_Mpix_s']:.1f} Mpix/s at E=1024, "
                  f"uint16). RNG: {s['rng_ns_per_uniform']:.2f} ns per uniform → ceiling "
                  f"{s['rng_ceiling_Mpix_s']:.3f} Mpix/s at N=400.", "",
                  "| engine/model | Mpix/s | Gvox/s | ns/photon | of RNG ceiling |",
                  "|---|---|---|---|---|"]
        for k, v in s["sampler"].items():
            lines.append(f"| {k} | {v['Mpix_s']:.3f} | {v['Gvox_s']:.3f} | "
                         f"{v['ns_per_photon']:.2f} | {v['of_rng_ceiling']:.0%} |")
    sc = res.get("scaling")
    if sc:
        lines += ["", f"## LocalCluster scaling ({sc['size']}², single-threaded worker "
                  "processes, MALLOC_TRIM_THRESHOLD_ unset)", "",
                  "| workers | wall s | write phase s | CPU s | peak RSS |", "|---|---|---|---|---|"]
        for n in ("1", "2"):
            d = sc[n]
            r = d.get("result") or {}
            if d["returncode"] != 0 or not r:
                lines.append(f"| {n} | failed ||||")
                continue
            lines.append(f"| {n} | {d['wall_s']:.1f} | {r['t_write_s']:.1f} | {d['cpu_s']:.1f} | "
                         f"{_mb(d['peak_rss_bytes'])} |")
        if sc.get("speedup_write"):
            lines.append(f"\n2 workers / 1 worker: {sc['speedup_write']:.2f}× (write phase), "
                         f"{sc['speedup_wall']:.2f}× (whole process).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="skip 8192² (and scale test at 1024²)")
    ap.add_argument("--skip-ganx", action="store_true", help="do not install/run ganx 0.0.2")
    ap.add_argument("--dev-env", action="store_true",
                    help="run ganx-dask in this interpreter, not in the user-install venv")
    ap.add_argument("--compare-sizes", type=int, nargs="*", default=[128, 256, 512])
    ap.add_argument("--large-sizes", type=int, nargs="*", default=None)
    ap.add_argument("--scale-size", type=int, default=None,
                    help="image side of the 1-vs-2-worker test (default 2048; quick 1024)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="scratch directory for images and stores (default: a temp dir)")
    a = ap.parse_args(argv)
    large = a.large_sizes if a.large_sizes is not None else ([2048] if a.quick else [2048, 8192])
    scale_size = a.scale_size or (1024 if a.quick else 2048)
    started = _dt.datetime.now(_dt.timezone.utc)
    res: dict = {"started": started.strftime("%Y-%m-%d %H:%M"), "quick": a.quick,
                 "load_start": [round(x, 2) for x in os.getloadavg()], "params": PARAMS,
                 "compare": [], "large": []}
    work = Path(tempfile.mkdtemp(prefix="ganx-bench-", dir=a.workdir))
    try:
        global PYTHON
        PYTHON, res["ganx_dask_env"] = ensure_user_env(a.dev_env)
        res["machine"] = machine_info(PYTHON)
        py, status = ensure_ganx(a.skip_ganx)
        res["ganx_status"] = status
        images = make_images(work, sorted(set(a.compare_sizes + large + [scale_size])))
        db = export_ganx_db(work) if py else None
        for n in a.compare_sizes:
            log(f"{n}²: ganx-dask ...")
            row = {"size": n, "ganx_dask": run_ganx_dask(images[n], work / f"c{n}.zarr")}
            log(f"{n}²: ganx-dask, plain ds.to_zarr ...")
            row["ganx_dask_xarray"] = run_ganx_dask(images[n], work / f"x{n}.zarr",
                                                    writer="xarray")
            for key, writer in (("ganx_dask_shared", "store"), ("ganx_dask_xarray_shared", "xarray")):
                log(f"{n}²: ganx-dask ({writer}), first image, {', '.join(SHARED_STACK)} "
                    "loaded with it ...")
                row[key] = run_ganx_dask(images[n], work / f"p{n}.zarr", writer=writer,
                                         preload=SHARED_STACK)
            for key, writer in (("ganx_dask_warm", "store"), ("ganx_dask_xarray_warm", "xarray")):
                log(f"{n}²: ganx-dask ({writer}) after a {WARMUP}² warm-up in the process ...")
                row[key] = run_ganx_dask(images[n], work / f"w{n}.zarr", writer=writer,
                                         warmup=WARMUP)
            if py:
                log(f"{n}²: ganx 0.0.2 ...")
                row["ganx"] = run_ganx(py, db, images[n])
                if n == min(a.compare_sizes):  # ganx imports everything up front: check it
                    log(f"{n}²: ganx 0.0.2 after a {WARMUP}² warm-up in the process ...")
                    row["ganx_warm"] = run_ganx(py, db, images[n], warmup=WARMUP)
            res["compare"].append(row)
        for n in large:
            log(f"{n}²: ganx-dask to Zarr ...")
            res["large"].append({"size": n,
                                 "ganx_dask": run_ganx_dask(images[n], work / f"l{n}.zarr")})
        log("sampler vs ceilings ...")
        r = run_measured([str(PYTHON), str(HERE / "bench_sampler.py")]
                         + (["--quick"] if a.quick else []), env=dict(os.environ))
        res["sampler"] = r["result"]
        log(f"LocalCluster 1 vs 2 workers at {scale_size}² ...")
        sc = {"size": scale_size}
        for nw in (1, 2):
            sc[str(nw)] = run_ganx_dask(images[scale_size], work / f"s{nw}.zarr",
                                        scheduler=f"local:{nw}")
        r1, r2 = sc["1"].get("result"), sc["2"].get("result")
        if r1 and r2:
            sc["speedup_write"] = r1["t_write_s"] / r2["t_write_s"]
            sc["speedup_wall"] = sc["1"]["wall_s"] / sc["2"]["wall_s"]
        res["scaling"] = sc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["load_end"] = [round(x, 2) for x in os.getloadavg()]
    a.out.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(res, indent=1)
    md = markdown(res)
    for name in (f"bench-{stamp}", "latest"):
        (a.out / f"{name}.json").write_text(text)
        (a.out / f"{name}.md").write_text(md)
    print(md)
    log(f"results in {a.out}/bench-{stamp}.json and .md")
    return res


if __name__ == "__main__":
    main()
