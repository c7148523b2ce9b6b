"""Provenance shared by the result rows and the leaderboards (kept free of heavy imports)."""

from __future__ import annotations

import subprocess
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LEADERBOARDS = PROJECT_ROOT / "leaderboards"  # where publish=true writes; the tools read published boards here


def git_sha() -> str:
    """The checkout's commit (short SHA, ``+dirty`` with uncommitted changes to tracked files). Published
    leaderboards are outputs, not code: republishing one suite must not mark the next one ``+dirty``."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)leaderboards"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("+dirty" if dirty else "")) if sha else "unknown"
