"""Put published leaderboard rows back into a results store.

    python -m bench.tools.results import leaderboards/<suite>.csv [...] [--store runs/results.sqlite] [--replace]
    python -m bench.tools.results import        # every board published in the checkout's leaderboards/

So that your own runs join published ones on one leaderboard, or a lost store is rebuilt from what was published.
Every file is checked before anything is written (``bench.results.import_published``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import sqlalchemy as sa

from bench.leaderboard.analysis import COMPARISONS_SUFFIX
from bench.provenance import LEADERBOARDS
from bench.results import ResultsStore, import_published


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.tools.results import leaderboards/<suite>.csv [...] [--store runs/results.sqlite]``."""

    parser = argparse.ArgumentParser(
        prog="python -m bench.tools.results",
        description="Put published leaderboard rows (leaderboards/<suite>.csv, with its _predictions.csv.gz) into a "
        "results store, so that your own runs join them on one leaderboard or a lost store is rebuilt.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="import published CSVs into a results store")
    imp.add_argument(
        "csv",
        nargs="*",
        type=Path,
        help="published CSV(s) of result rows (default: every one in the checkout's leaderboards/)",
    )
    imp.add_argument(
        "--store",
        default="runs/results.sqlite",
        help="results store to import into: a path, sqlite:///PATH or postgresql://user@host:port/db "
        "(default: runs/results.sqlite, run_bench.py's default)",
    )
    imp.add_argument(
        "--replace",
        action="store_true",
        help="replace cells the store already holds (default: keep them and skip the imported copy)",
    )
    args = parser.parse_args(argv)
    if not args.csv:  # rebuilding a lost store is the common case: everything the checkout publishes
        args.csv = sorted(LEADERBOARDS.glob("*.csv"))
    # `leaderboards/*.csv` also matches each board's comparisons: tests derived from the rows, recomputed whenever a
    # board is rendered, so they are no results to import
    derived = [p for p in args.csv if p.name.endswith(COMPARISONS_SUFFIX)]
    for p in derived:
        print(f"{p}: skipped (the board's comparisons, recomputed from the result rows when it is rendered)")
    files = [p for p in args.csv if p not in derived]
    if not files:
        print("error: no published CSV of result rows given (leaderboards/<suite>.csv)", file=sys.stderr)
        return 2
    import datasets  # noqa: F401  (registers the suites, as run_bench.py does: rows of an unknown one are refused)
    from bench.registry import SUITES

    try:
        store = ResultsStore(args.store)
        store.check()  # a bad URL or an unreachable server: one line, before any file is read
        reports = import_published(files, store, replace=args.replace, suites=SUITES.names())
    except ValueError as e:  # a file that is no published CSV (PublishedCSVError), or a bad store URL
        print(f"error: {e}", file=sys.stderr)
        return 2
    except sa.exc.SQLAlchemyError as e:  # not an SQLite file, or a database that refused the write
        why = ((str(e.orig).strip().splitlines() or [""])[0] if isinstance(e, sa.exc.DBAPIError) else "") or str(e)
        print(f"error: {store.where}: not a usable results store ({why}); nothing was imported", file=sys.stderr)
        return 2
    for r in reports:
        n = len(r.added) + len(r.replaced) + len(r.kept)
        kept = f", {len(r.kept)} kept (already in the store; --replace overwrites them)" if r.kept else ""
        replaced = f", {len(r.replaced)} replaced" if r.replaced else ""
        print(f"{r.path}: {n} cells ({r.rows} rows): {len(r.added)} added{replaced}{kept}")
    print(
        f"into {store.where}; render with: python run_bench.py stage=leaderboard suite=SUITE results.url={store.where}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
