#!/usr/bin/env python
"""Regenerate ``ganx_dask/pigments/data/default_library.json`` deterministically.

The pigment definitions live in :mod:`ganx_dask.pigments.library` (``PIGMENT_DEFINITIONS``);
this script computes their spectrum components with :mod:`ganx_dask.pigments.physics` (xraylib)
for the reference instrument (the ``"lab-rh"`` preset) and writes the library in the ganx-dask
library format (:func:`ganx_dask.pigments.formats.write_library`).  Running it twice with the same
xraylib version gives byte-identical files (numbers are rounded to 7 significant digits).

Usage::

    python scripts/build_default_library.py            # overwrite the bundled file
    python scripts/build_default_library.py -o OUT.json # write elsewhere (e.g. to compare)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ganx_dask.pigments.formats import write_library
from ganx_dask.pigments.library import build_default_library, default_library_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", type=Path, default=None,
                    help="output JSON (default: the bundled data file)")
    args = ap.parse_args(argv)
    out = args.output or default_library_path()
    lib = build_default_library()
    write_library(lib, out, overwrite=True)
    print(f"wrote {len(lib)} pigments to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
