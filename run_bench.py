#!/usr/bin/env python
"""The only entry point: ``python run_bench.py method=simmim3d suite=smoke``. See README.md."""

import sys

from bench.cli import main


def register() -> None:
    """The harness (bench/) knows no dataset and no method: importing these packages registers them. Run here, before
    the command line looks names up, and again in each job a Hydra launcher (joblib, SLURM) starts, which unpickles
    this function, not this file."""
    import datasets  # noqa: F401
    import methods  # noqa: F401


if __name__ == "__main__":
    register()
    sys.exit(main(register))
