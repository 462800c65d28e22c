"""Outputs that appear only when complete: directories (reports, figures, paper tables) and files.

Everything is written under a hidden temporary name beside the target and renamed into place
on success, so a failed or interrupted command never leaves a half-written directory and never
touches an existing one it was not allowed to replace.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import GanxError, StoreExistsError
from .storage import local_path

__all__ = ["staged_output", "atomic_file"]


@contextlib.contextmanager
def staged_output(output: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Write a whole output directory under a temporary name; publish it only on success.

    Parameters
    ----------
    output : path-like
        The directory to produce.
    overwrite : bool
        Replace an existing non-empty ``output`` (only once the new one is complete).

    Yields
    ------
    pathlib.Path
        The staging directory to write into.

    Raises
    ------
    StoreExistsError
        ``output`` exists, is not empty, and ``overwrite`` is false (checked before any work).
    GanxError
        The parent directory does not exist or is not writable.
    """
    output = local_path(output, "this output")  # reports and figures: a local folder only
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
        raise StoreExistsError(f"{output} exists and is not empty; pass --overwrite to replace it")
    parent = output.resolve().parent
    if not parent.is_dir():
        raise GanxError(f"parent directory {parent} of {output} does not exist")
    # os.mkdir applies the umask (mkdtemp would make 0700, and reading the umask with
    # os.umask() briefly changes it for every thread of the process)
    while True:
        tmp = parent / f".{output.name}.{secrets.token_hex(6)}.partial"
        try:
            os.mkdir(tmp)
            break
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
        except OSError as exc:
            raise GanxError(f"cannot write {output}: {parent} is not writable "
                            f"({exc.strerror})") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if output.exists():
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        os.replace(output, old)
        os.replace(tmp, output)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
    else:
        os.replace(tmp, output)


def atomic_file(path: str | os.PathLike, *, overwrite: bool, write) -> None:
    """Create ``path`` by calling ``write(tmp_path)`` and renaming the result into place.

    Readers never see a partial file; on any error the temporary file is removed and an existing
    ``path`` is untouched.  The new file gets the default permissions (umask), or those of the
    file it replaces.
    """
    path = local_path(path, "this file")
    if path.is_dir():
        raise StoreExistsError(f"{path}: is a directory, expected a file path")
    if path.exists() and not overwrite:
        raise StoreExistsError(f"{path}: exists (pass overwrite=True / --overwrite to replace it)")
    if not path.parent.is_dir():
        what = "is not a folder" if path.parent.exists() else "does not exist"
        raise GanxError(f"{path}: folder {path.parent} {what}")
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        try:
            with open(tmp, "x"):  # created with the umask's permissions (not mkstemp's 0600)
                pass
            write(tmp)
            if path.exists():
                shutil.copymode(path, tmp)
            os.replace(tmp, path)
        except OSError as exc:  # read-only folder, disk full...: name the file the user gave
            raise GanxError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
