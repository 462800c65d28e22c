"""Where stores live: local paths and object-storage URLs (``s3://bucket/prefix/ds.zarr``).

Every module that writes or reads a store or dataset goes through :class:`Location`, so the rules
are in one place:

* a plain path (or ``file://``) is a local/shared file system path, handled as before;
* ``s3://`` (S3 and S3-compatible servers), ``gs://``/``gcs://`` (Google Cloud Storage) and
  ``az://``/``abfs://`` (Azure Blob) are object-store URLs, opened with **fsspec** (``s3fs``,
  ``gcsfs``, ``adlfs``) through zarr's ``FsspecStore``;
* any other ``SCHEME://`` is a :class:`~ganx_dask.errors.GanxError`, never a local folder named
  ``s3:`` or ``ftp:``.

Why fsspec and not zarr's ``ObjectStore`` (obstore): xarray and zarr accept fsspec stores as
first-class citizens (``FsspecStore`` is zarr's stable remote store; ``ObjectStore`` is marked
experimental), one code path serves S3, GCS and Azure, and ``s3fs`` uses botocore's standard
credential chain — ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``,
``~/.aws/credentials`` and ``~/.aws/config`` profiles (``AWS_PROFILE``), instance roles — and the
standard ``AWS_ENDPOINT_URL`` (``AWS_ENDPOINT_URL_S3``) for S3-compatible servers.  obstore reads
neither the AWS config files nor profiles.

Credentials are never read, stored or printed by ganx-dask: they stay in the environment/config
files, and the errors of the object store are reported as one line naming the URL and the
store's error code only (:func:`storage_errors`).  URLs with embedded credentials
(``s3://KEY:SECRET@bucket``) are refused without echoing them.

Object stores have no rename: every object ``PUT`` is atomic (a reader sees the old or the new
object, never a part), and ganx-dask's completion protocol relies on that only — each region's
chunk and record entry are separate objects written in order, and the ``complete`` flag (one
``zarr.json`` object) is written last (see :mod:`ganx_dask.store`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import GanxError

__all__ = ["REMOTE_SCHEMES", "Location", "is_url", "location", "local_path", "storage_errors",
           "with_storage_errors", "remote_error"]

#: Supported object-store URL schemes → (fsspec implementation package, ganx-dask extra).
REMOTE_SCHEMES: dict[str, tuple[str, str]] = {
    "s3": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"),
    "gcs": ("gcsfs", "gcs"),
    "az": ("adlfs", "azure"),
    "abfs": ("adlfs", "azure"),
}

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$", re.S)

#: Name of a temporary file of zarr's ``LocalStore`` (``KEY.<uuid4 hex>.partial``, renamed onto
#: ``KEY`` once written): a writer killed between the two (a dead worker, a ``kill -9``) leaves it.
_ZARR_TEMPORARY = re.compile(r"\.[0-9a-f]{32}\.partial$")


def is_url(path: Any) -> bool:
    """True when ``path`` is a string of the form ``SCHEME://...`` (any scheme, even ``file``)."""
    return isinstance(path, str) and _URL.match(path) is not None


def _storage_options(scheme: str) -> dict[str, Any]:
    """fsspec options: no credentials here (they come from the environment/config files)."""
    if scheme == "s3":
        # listings are re-read every time: several writers (dask workers) share a store
        return {"use_listings_cache": False}
    return {}


class Location:
    """A store, group or file location: a local path or an object-store URL.

    Build one with :func:`location`.  ``str(loc)`` is the path/URL as shown to users (never holds
    credentials).

    Attributes
    ----------
    scheme : str or None
        ``"s3"``, ``"gs"``... ; ``None`` for a local path.
    url : str
        ``SCHEME://bucket/key`` (no trailing ``/``) or the local path.
    """

    __slots__ = ("scheme", "url", "_local")

    def __init__(self, scheme: str | None, url: str, local: Path | None = None):
        self.scheme = scheme
        self.url = url
        self._local = local

    # ------------------------------------------------------------------ identity
    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Location) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    @property
    def is_remote(self) -> bool:
        """True for an object-store URL."""
        return self.scheme is not None

    @property
    def path(self) -> Path:
        """The local :class:`~pathlib.Path` (only for local locations)."""
        if self._local is None:
            raise GanxError(f"{self.url}: a local path is needed here, not an object-store URL")
        return self._local

    @property
    def key(self) -> str:
        """``bucket/key`` (what fsspec calls a path) of a remote location."""
        return self.url.split("://", 1)[1]

    @property
    def bucket(self) -> str:
        """Bucket (container) of a remote location."""
        return self.key.split("/", 1)[0]

    @property
    def name(self) -> str:
        """Last path component."""
        return self._local.name if self._local is not None else self.key.rsplit("/", 1)[-1]

    def child(self, *parts: str | None) -> Location:
        """The location ``self/part/...`` (``None``/empty parts are skipped)."""
        parts = tuple(p.strip("/") for p in parts if p)
        if not parts:
            return self
        if self._local is not None:
            p = self._local.joinpath(*parts)
            return Location(None, str(p), p)
        return Location(self.scheme, "/".join((self.url, *parts)))

    def token(self) -> str:
        """A stable identity of the location (absolute local path or the URL)."""
        return str(self._local.resolve()) if self._local is not None else self.url

    # ------------------------------------------------------------------ access
    def fs(self):
        """The (synchronous) fsspec file system of a remote location."""
        import fsspec

        module, extra = REMOTE_SCHEMES[self.scheme]
        try:
            return fsspec.filesystem(self.scheme, **_storage_options(self.scheme))
        except ImportError:
            raise GanxError(
                f"{self.url}: {self.scheme}:// needs the {module} package "
                f"(pip install 'ganx-dask[{extra}]')"
            ) from None

    def zarr_store(self, read_only: bool = False):
        """What zarr/xarray open: the local path (str) or a zarr ``FsspecStore``."""
        if self._local is not None:
            return str(self._local)
        from zarr.storage import FsspecStore

        self.fs()  # a clear error when the implementation package is missing
        return FsspecStore.from_url(self.url, storage_options=_storage_options(self.scheme),
                                    read_only=read_only)

    def exists(self) -> bool:
        """A file, a non-empty directory, or (remote) any object at or below this key."""
        if self._local is not None:
            p = self._local
            return p.is_file() or (p.is_dir() and any(p.iterdir())) or (
                p.exists() and not p.is_dir())
        with storage_errors(self, "cannot read"):
            fs = self.fs()
            return bool(fs.exists(self.key)) or bool(fs.find(self.key, maxdepth=1))

    def is_file(self) -> bool:
        """A local file or a remote object (not a prefix)."""
        if self._local is not None:
            return self._local.is_file()
        with storage_errors(self, "cannot read"):
            return bool(self.fs().isfile(self.key))

    def is_zarr_node(self) -> bool:
        """Holds ``zarr.json`` (v3) or ``.zgroup``/``.zarray`` (v2)."""
        return any(self.child(m).is_file() for m in ("zarr.json", ".zgroup", ".zarray"))

    def read_bytes(self) -> bytes:
        """The content of the file/object (``FileNotFoundError`` when missing)."""
        if self._local is not None:
            return self._local.read_bytes()
        with storage_errors(self, "cannot read"):
            return self.fs().cat_file(self.key)

    def read_json(self) -> Any:
        """Parsed JSON content, or ``None`` when missing or not JSON."""
        try:
            return json.loads(self.read_bytes())
        except (OSError, ValueError):
            return None

    def bucket_exists(self) -> bool:
        """Remote: whether the bucket exists (local: whether the parent folder exists)."""
        if self._local is not None:
            return self._local.parent.is_dir()
        with storage_errors(self, "cannot read"):
            return bool(self.fs().exists(self.bucket))

    def check_writable(self) -> None:
        """Raise :class:`GanxError` unless an object/file can be created at or below here.

        A real probe (root-safe locally; a ``PUT`` then ``DELETE`` of a hidden object remotely),
        so wrong credentials or a missing bucket fail before any work.
        """
        if self._local is None:
            self._check_writable_remote()
            return
        path = self._local
        probe_dir = path
        while not probe_dir.exists():
            if probe_dir.parent == probe_dir:
                break
            probe_dir = probe_dir.parent
        if not probe_dir.is_dir():
            raise GanxError(f"cannot write store {str(path)!r}: {str(probe_dir)!r} is not a directory")
        try:
            fd, name = tempfile.mkstemp(prefix=".ganx-write-probe-", dir=probe_dir)
        except OSError as exc:
            raise GanxError(
                f"cannot write store {str(path)!r}: {str(probe_dir)!r} is not writable "
                f"({exc.strerror})"
            ) from exc
        os.close(fd)
        os.unlink(name)

    def _check_writable_remote(self) -> None:
        probe = self.child(f".ganx-write-probe-{secrets.token_hex(6)}")
        with storage_errors(self, "cannot write"):
            fs = self.fs()
            fs.pipe_file(probe.key, b"")
            fs.rm_file(probe.key)

    def remove_write_leftovers(self) -> list[str]:
        """Delete the temporary files that writers killed mid-write left below this location.

        zarr's ``LocalStore`` writes every chunk and ``zarr.json`` to ``KEY.<uuid4 hex>.partial``
        and renames it onto ``KEY``; a process killed in between leaves the temporary file (the
        object itself is intact: the old one or none, which resume rewrites).  Only names of that
        exact form are removed.  Object stores have no temporaries (``PUT`` is atomic): nothing
        to do there.  Call only when no other writer is active below this location.

        Returns
        -------
        list of str
            The removed files, relative to this location (sorted).
        """
        if self._local is None or not self._local.is_dir():
            return []
        removed = []
        for folder, _, files in os.walk(self._local):
            for name in files:
                if _ZARR_TEMPORARY.search(name):
                    p = Path(folder, name)
                    p.unlink(missing_ok=True)
                    removed.append(str(p.relative_to(self._local)))
        return sorted(removed)

    def clear_zarr_node(self) -> None:
        """Delete a Zarr node's contents, its own ``zarr.json`` last, then the node itself.

        Until that last delete the location is still recognised as a Zarr store, so a run killed
        while clearing can still be overwritten (an unrecognised location is never deleted).
        """
        if self._local is not None:
            target = self._local
            meta = None
            for child in list(target.iterdir()):
                if child.name == "zarr.json":
                    meta = child
                elif child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
            if meta is not None:
                meta.unlink()
            return
        with storage_errors(self, "cannot delete"):
            fs = self.fs()
            meta = f"{self.key}/zarr.json"
            others = [k for k in fs.find(self.key) if k != meta]
            if others:
                fs.rm(others)
            if fs.exists(meta):
                fs.rm_file(meta)


def location(path: str | os.PathLike | Location) -> Location:
    """Parse and validate a store/dataset location.

    Parameters
    ----------
    path : str, path-like or Location
        A local path (``~`` expanded), ``file://PATH``, or a supported object-store URL
        (:data:`REMOTE_SCHEMES`).

    Raises
    ------
    GanxError
        An unsupported scheme, a URL without bucket, or a URL carrying credentials.
    """
    if isinstance(path, Location):
        return path
    text = os.fspath(path)
    m = _URL.match(text) if isinstance(text, str) else None
    if m is None:
        p = Path(text).expanduser()
        return Location(None, str(p), p)
    scheme, rest = m.group(1).lower(), m.group(2)
    if scheme == "file":
        p = Path(rest).expanduser()
        return Location(None, str(p), p)
    if scheme not in REMOTE_SCHEMES:
        supported = ", ".join(f"{s}://" for s in REMOTE_SCHEMES)
        raise GanxError(f"{scheme}://...: unsupported URL scheme {scheme!r} (supported: a local "
                        f"path, file://, {supported})")
    bucket = rest.split("/", 1)[0]
    if "@" in bucket or ":" in bucket:
        raise GanxError(f"{scheme}:// URL with credentials or a port in its bucket part: give "
                        "credentials in the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) "
                        "or config files and the endpoint in AWS_ENDPOINT_URL, never in the URL")
    if "?" in rest or "#" in rest:
        raise GanxError(f"{scheme}://{bucket}/...: query strings and fragments are not supported "
                        "in store URLs")
    key = "/".join(s for s in rest.split("/") if s)
    if not bucket:
        raise GanxError(f"{text}: a URL needs a bucket ({scheme}://BUCKET/PATH)")
    return Location(scheme, f"{scheme}://{key}")


def local_path(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a local :class:`~pathlib.Path`; a URL is a :class:`GanxError` naming ``what``
    (for outputs that are written to a local folder only: reports, figures, plots)."""
    if is_url(os.fspath(path)) and not os.fspath(path).lower().startswith("file://"):
        raise GanxError(f"{os.fspath(path).split('://', 1)[0]}://...: {what} is written to a local "
                        "folder; object-store URLs are supported for stores only")
    return location(path).path


# ------------------------------------------------------------------------------ errors
def _error_code(exc: BaseException) -> str | None:
    """The object store's error code (``InvalidAccessKeyId``, ``NoSuchBucket``...), if any."""
    for e in (exc, exc.__cause__, exc.__context__):
        resp = getattr(e, "response", None)
        if isinstance(resp, dict):
            code = resp.get("Error", {}).get("Code")
            if code:
                return str(code)
    return None


def _scrub(text: str) -> str:
    """Remove any credential value of the environment from ``text`` (belt and braces)."""
    for var in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN",
                "AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN"):
        val = os.environ.get(var)
        if val and len(val) >= 4:
            text = text.replace(val, "***")
    return text


def _is_missing_bucket(exc: BaseException, code: str | None) -> bool:
    if code in ("NoSuchBucket", "ContainerNotFound"):
        return True
    return "bucket does not exist" in str(exc).lower()


def remote_error(loc: Location, action: str, exc: BaseException) -> GanxError:
    """The one-line :class:`GanxError` for an object-store failure at ``loc``."""
    code = _error_code(exc)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    where = f" at {endpoint}" if loc.scheme == "s3" and endpoint else ""
    if _is_missing_bucket(exc, code):
        msg = f"{action} {loc.url}: bucket {loc.bucket!r} does not exist{where}"
    elif isinstance(exc, PermissionError) or code in (
            "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403",
            "ExpiredToken", "InvalidToken"):
        msg = (f"{action} {loc.url}: access denied{where} ({code or 'forbidden'}); check the "
               "credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or "
               "~/.aws/credentials) and the bucket's permissions")
    elif type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
        msg = (f"{action} {loc.url}: no credentials found (set AWS_ACCESS_KEY_ID/"
               "AWS_SECRET_ACCESS_KEY or configure ~/.aws/credentials)")
    elif type(exc).__name__ in ("EndpointConnectionError", "ConnectTimeoutError",
                                "ClientConnectorError", "ConnectionError"):
        msg = f"{action} {loc.url}: cannot reach the object store{where}"
    else:
        msg = f"{action} {loc.url}: {type(exc).__name__}" + (f" ({code})" if code else "")
    return GanxError(_scrub(msg))


_PASS = (GanxError, KeyboardInterrupt, SystemExit, MemoryError)


@contextlib.contextmanager
def storage_errors(loc: Location | str, action: str = "cannot access") -> Iterator[None]:
    """Turn object-store failures inside the block into one-line :class:`GanxError`.

    Only for remote locations (a local ``OSError`` passes unchanged); the message names the URL,
    the bucket when it is missing, and the store's error code — never the store's raw message
    (which can quote request details) nor any credential.
    """
    loc = location(loc) if not isinstance(loc, Location) else loc
    if not loc.is_remote:
        yield
        return
    try:
        yield
    except _PASS:
        raise
    except Exception as exc:  # noqa: BLE001 - s3fs/botocore/aiohttp raise many types
        if isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in (
                "botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "adlfs", "azure",
                "google"):
            raise remote_error(loc, action, exc) from None
        raise


def with_storage_errors(action: str, arg: str = "path"):
    """Decorator: run the function inside :func:`storage_errors` for its ``arg`` location."""

    def deco(func):
        sig = inspect.signature(func)

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            where = sig.bind_partial(*args, **kwargs).arguments.get(arg)
            if where is None or not (isinstance(where, Location) or is_url(where)):
                return func(*args, **kwargs)  # local: OSErrors pass unchanged
            with storage_errors(location(where), action):
                return func(*args, **kwargs)

        return wrapper

    return deco
