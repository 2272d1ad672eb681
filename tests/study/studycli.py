"""The study tests' way of running the CLI as a user does: a child process, pipes, no TTY."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def cli(*args, cwd=None, **kw) -> subprocess.Popen:
    """``python -m ptychobench.cli ARGS`` as a child process (text stdout/stderr pipes)."""
    return subprocess.Popen(
        [sys.executable, "-m", "ptychobench.cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def run_to_end(toml: Path, out: Path) -> Path:
    """One uninterrupted ``study run`` through the CLI (asserts exit 0); returns ``out``."""
    p = cli("study", "run", str(toml), "--out", str(out), "--no-progress")
    _, err = p.communicate(timeout=900)
    assert p.returncode == 0, err[-3000:]
    return out
