#!/usr/bin/env python
"""The only entry point: ``python run_bench.py method=simmim3d suite=smoke``. See README.md."""
import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
