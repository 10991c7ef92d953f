"""Which code made a run: recorded in every run folder's ``run.json`` and every checkpoint.

Inside a git checkout: the commit and whether tracked files differ from it (``dirty``); outside
one (an exported copy): the project's version number alone.
"""
from __future__ import annotations

import functools
import subprocess
from pathlib import Path

VERSION = "0.5.0"
ROOT = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """``{"version", "commit", "dirty"}``; commit and dirty are None outside git."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True,
                                 text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None  # no git on this machine
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = None
    if commit is not None:
        status = git("status", "--porcelain", "--untracked-files=no")
        dirty = None if status is None else bool(status)
    return {"version": VERSION, "commit": commit, "dirty": dirty}
