#!/usr/bin/env python
"""The only entry point: ``python run_bench.py method=simmim3d suite=smoke``. See README.md."""

import sys

# The harness (bench/) knows no dataset and no method: importing these packages registers them, here, before the
# command line looks names up.
import datasets  # noqa: F401
import methods  # noqa: F401
from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
