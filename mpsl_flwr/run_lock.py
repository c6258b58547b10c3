"""One writer per run directory: an exclusive advisory lock held for the run's lifetime.

Resuming a run whose first process still lives would give the directory two writers
(``history.jsonl`` with epochs 8, 8, 9, 9). Each writer therefore holds ``fcntl.flock``
on ``<run-dir>/run.lock``, which holds its PID; a second writer fails at once, naming
that PID. The kernel drops the lock when its process dies, even by ``kill -9``, so a
crashed run never blocks its own resumption. The file is removed on release, so a
finished run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

LOCK = "run.lock"


class RunLockedError(RuntimeError):
    """Another live process writes the run directory."""


class RunLock:
    """The lock of one run directory; take it with :meth:`acquire`."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        """Lock ``run_dir`` for this process, or raise :class:`RunLockedError` at once."""
        path = Path(run_dir) / LOCK
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                raise RunLockedError(
                    f"{run_dir} is in use by another run (PID {holder}, written in {path}): "
                    "wait for that run to end, or stop it, before resuming it."
                ) from None
            # The holder removes the file on release: a lock taken on the removed file
            # between our open and flock guards nothing, so take it again.
            if _same_file(path, fd):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        return cls(path, fd)

    def release(self) -> None:
        """Remove the lock file and unlock (idempotent)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)  # closing the last descriptor drops the flock
        self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return text or "unknown"


def _same_file(path: Path, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False
