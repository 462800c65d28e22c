"""Run the paper reproduction: ``python pipelines/paper/run.py [--small] [-o DIR]``.

Equivalent to ``ganx-dask paper pipelines/paper/config.yaml ...``; see README.md.
"""

import sys
from pathlib import Path

from ganx_dask.cli import main

if __name__ == "__main__":
    sys.exit(main(["paper", str(Path(__file__).with_name("config.yaml")), *sys.argv[1:]]))
