"""One writer per run directory: an exclusive OS file lock on ``RUN/.lock``.

``study run``, ``study report`` and ``study run --post-verify-only`` hold it for as long as they
write; ``study verify`` reads without it. The lock is ``fcntl.flock`` on an open descriptor, so
the kernel drops it when the holding process ends however it ends (``kill -9`` included): a lock
file left behind by a dead process is just a file, and the next writer takes it. Who holds it
(pid, host, start time, command) is written into the file so a refused writer can say so.

The file is never deleted: unlinking a lock file while another process waits on its inode would
let two writers hold two different inodes of "the" lock.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LOCK", "RunLocked", "holder", "run_lock"]

LOCK = ".lock"


class RunLocked(ValueError):
    """Another live process holds the run directory's lock."""


def holder(run_dir: Path) -> dict:
    """What the lock file says about its (last) holder; ``{}`` when unreadable or absent."""
    try:
        doc = json.loads((Path(run_dir) / LOCK).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _describe(doc: dict) -> str:
    if not doc:
        return "another process (its lock record is not readable yet)"
    return (
        f"pid {doc.get('pid', '?')} on {doc.get('host', '?')} since {doc.get('started_at', '?')} "
        f"({doc.get('command', '?')})"
    )


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike[str], command: str) -> Iterator[Path]:
    """Hold ``RUN/.lock`` exclusively for the block; raise :class:`RunLocked` at once if taken.

    Parameters
    ----------
    run_dir : the run directory (created if missing)
    command : what this writer is, for the refusal message (``"study run"``, ...)
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    path = run / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunLocked(
                f"{run}: in use by {_describe(holder(run))}; wait for it to finish, or use "
                "another --out"
            ) from None
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "command": command,
            "argv": sys.argv[1:],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record, sort_keys=True) + "\n").encode(), 0)
        try:
            yield path
        finally:
            # the record would otherwise name a finished process as the holder
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
