"""The ``ganx-dask`` command line.

Each sub-command lives in its own module with a ``register(subparsers)`` function that adds its
parser and sets ``func`` (called with the parsed namespace, returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

from .._version import __version__
from ..errors import GanxError

__all__ = ["main", "build_parser"]

#: Modules (in ``ganx_dask.cli``) that contribute sub-commands, in help order.
COMMAND_MODULES = ("generate", "pigments", "analysis", "pipelines")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="ganx-dask",
        description=(
            "Turn RGB images of paintings and manuscripts into synthetic MA-XRF data cubes "
            "(photon counts per pixel and energy channel), streamed to Zarr on Dask."
        ),
    )
    parser.add_argument("--version", action="version", version=f"ganx-dask {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:  # pragma: no cover - a sub-command not built yet
            if exc.name == f"{__name__}.{name}":
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 1 error, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    warnings.simplefilter("default")
    try:
        return int(args.func(args) or 0)
    except GanxError as exc:
        print(f"ganx-dask {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ganx-dask {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `ganx-dask pigments list | head`
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
