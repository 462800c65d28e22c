"""A real S3-compatible server for tests: moto's server mode in its own process on 127.0.0.1.

:func:`s3_server` backs the ``s3`` fixture of ``tests/conftest.py`` (one server per test module
that asks for it, stopped at teardown); when the server cannot start (moto's server extra
missing, no free port) the tests that use it skip with the reason.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from ganx_dask.storage import location

BUCKET = "ganx-test"
KEY_ID = "GANXTESTKEYID0001"
SECRET = "ganx-test-secret-Zq8xPq3w"  # must never appear in an error, attr, manifest or log


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def moto_get(url: str, data: bytes | None = None) -> bytes:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.read()


def s3_server(tmp_path_factory):
    """A moto S3 server in its own process on 127.0.0.1; yields its endpoint URL.

    The environment points the product at it through the standard variables only
    (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``).
    """
    pytest.importorskip("s3fs", reason="s3fs (the [s3] extra) is not installed")
    try:
        import moto.server  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"moto's server mode is not installed (moto[server]): {exc}")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                 "-p", str(port)], stdout=fh, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):  # bounded wait for the server to answer (start-up ≈ 1-5 s)
            if proc.poll() is not None:
                pytest.skip(f"moto server exited at start-up: {log.read_text()[-300:]}")
            try:
                moto_get(f"{endpoint}/moto-api/")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                try:
                    proc.wait(timeout=0.05)
                except subprocess.TimeoutExpired:
                    pass
        else:
            pytest.skip("moto server did not answer on 127.0.0.1 within 30 s")
        with pytest.MonkeyPatch.context() as mp:
            for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
                mp.delenv(var, raising=False)
            missing = str(tmp_path_factory.mktemp("aws") / "none")
            mp.setenv("AWS_CONFIG_FILE", missing)
            mp.setenv("AWS_SHARED_CREDENTIALS_FILE", missing)
            mp.setenv("AWS_ENDPOINT_URL", endpoint)
            mp.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
            mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
            mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
            fresh_clients()
            fs = location(f"s3://{BUCKET}").fs()
            fs.mkdir(BUCKET)
            yield endpoint
            fresh_clients()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()


def fresh_clients() -> None:
    """Forget cached s3fs clients (they keep the credentials they were made with)."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
