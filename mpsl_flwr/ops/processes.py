"""Start and stop the Flower processes this project owns, and nothing else.

Every long-lived process (``flower-superlink``, ``flower-supernode``) is started in a
session of its own, so that it and the helpers it spawns (``flower-superexec``,
``flwr-serverapp``, ``flwr-clientapp``) share one process group. Stopping sends SIGTERM
to that group, waits, then SIGKILLs it, and finally signals by PID any descendant that
left the group (Flower starts some helpers detached). Nothing is ever killed by name.
Each one has a :mod:`~mpsl_flwr.ops.watchdog` that does the same if the process that
started it dies without stopping it (SIGKILL), and :func:`owned_temp_dir` makes the
temporary directories they run in, removing those whose owner died.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def executable(name: str) -> str:
    """Path of a CLI of this Python environment (``flwr``, ``flower-superlink``, ...)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"`{name}` is not installed next to {sys.executable} nor on PATH. "
            "Install the project into this environment (pip install -e .), which "
            "brings flwr and its CLIs."
        )
    return found


def children_of(pid: int) -> list[int]:
    """PIDs of all live descendants of ``pid`` (Linux /proc; empty elsewhere)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4 is the parent PID; the command name (field 2) may hold spaces.
        fields = stat[stat.rfind(")") + 2 :].split()
        parent[int(entry.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        found.extend(kids)
        frontier.extend(kids)
    return found


@dataclass
class ManagedProcess:
    """One process we started, its log file, and how to stop it."""

    name: str
    cmd: Sequence[str]
    env: Mapping[str, str]
    log_path: Path
    timestamps: bool = True
    process: subprocess.Popen | None = None
    # Stops the process group if this process dies without calling stop().
    watchdog: subprocess.Popen | None = None
    _known: set[int] = field(default_factory=set)
    _pump: threading.Thread | None = None

    def start(self) -> ManagedProcess:
        """Start it in a new session; its output goes to ``log_path``.

        With ``timestamps``, each line is prefixed with the wall-clock time (Flower's
        SuperNode logs carry none), which is what the latency analysis reads.
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            list(self.cmd),
            env=dict(self.env),
            stdout=subprocess.PIPE if self.timestamps else log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        if self.timestamps:
            self._pump = threading.Thread(
                target=_copy_with_timestamps, args=(self.process.stdout, log), daemon=True
            )
            self._pump.start()
        else:
            log.close()
        self.watchdog = spawn_watchdog(os.getpid(), self.process.pid)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def check_alive(self) -> None:
        """Raise, naming the process and quoting the end of its log, if it has exited."""
        if not self.running():
            raise RuntimeError(
                f"{self.name} exited with code {self.returncode()}; its log "
                f"({self.log_path}) ends with:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def remember_children(self) -> None:
        """Note the current descendants, so that :meth:`stop` reaches detached ones."""
        if self.running():
            self._known.update(children_of(self.pid))

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL it; then any stray descendant by PID."""
        if self.process is None:
            return
        self.remember_children()
        strays = set(self._known)
        if self.process.poll() is None:
            pgid = self.process.pid  # start_new_session: the group id is the PID
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                self.process.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # helpers left in the group
        kill_pids(strays, grace)
        if self._pump is not None:
            self._pump.join(timeout=grace)
        if self.watchdog is not None:  # nothing is left for it to stop
            self.watchdog.kill()
            self.watchdog.wait()


def spawn_watchdog(owner: int, leader: int) -> subprocess.Popen:
    """Start a :mod:`~mpsl_flwr.ops.watchdog` that stops ``leader``'s process group when
    ``owner`` dies; it ends by itself once ``leader`` has ended."""
    return subprocess.Popen(
        [sys.executable, "-m", WATCHDOG, "--owner", str(owner), "--leader", str(leader)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


WATCHDOG = "mpsl_flwr.ops.watchdog"
OWNER_FILE = "owner.pid"
"""In a directory made by :func:`owned_temp_dir`: the PID of the process it belongs to."""


@contextlib.contextmanager
def owned_temp_dir(prefix: str, keep: bool = False) -> Iterator[Path]:
    """A new temporary directory for the ``with`` block, removed on exit (``keep``: left,
    and no longer marked as owned).

    It holds :data:`OWNER_FILE`; directories of the same ``prefix`` whose owner has died
    (a SIGKILLed launcher never ran its cleanup) are removed first. One without the file
    is never touched: it may be another launcher's that has not written it yet.
    """
    remove_orphans(prefix)
    path = Path(tempfile.mkdtemp(prefix=prefix))
    (path / OWNER_FILE).write_text(str(os.getpid()))
    try:
        yield path
    finally:
        if keep:
            (path / OWNER_FILE).unlink(missing_ok=True)
        else:
            shutil.rmtree(path, ignore_errors=True)


def remove_orphans(prefix: str) -> list[Path]:
    """Remove the temporary directories of ``prefix`` whose owner process is dead."""
    removed = []
    for path in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        try:
            owner = int((path / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not pid_alive(owner):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _copy_with_timestamps(source, sink) -> None:
    """Copy lines from ``source`` to ``sink``, each prefixed with ``HH:MM:SS.mmm``."""
    with sink:
        for line in iter(source.readline, b""):
            now = time.time()
            stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d} "
            sink.write(stamp.encode() + line)
            sink.flush()


def kill_pids(pids: set[int], grace: float) -> None:
    """SIGTERM, then SIGKILL, each PID that is still alive (our own descendants only)."""
    alive = {p for p in pids if pid_alive(p)}
    for p in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if pid_alive(p)}
        time.sleep(0.1)
    for p in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process (Linux /proc)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rfind(")") + 2] != "Z"


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    watch: Sequence[ManagedProcess] = (),
    interval: float = 0.2,
) -> None:
    """Wait until ``predicate()``; fail early if a watched process exits."""
    deadline = time.monotonic() + timeout
    while True:
        for proc in watch:
            if not proc.running():
                raise RuntimeError(
                    f"{proc.name} exited with code {proc.returncode()} while waiting for "
                    f"{what}; its log ({proc.log_path}) ends with:\n{proc.log_tail()}"
                )
        if predicate():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"Timed out after {timeout:.0f}s waiting for {what}.")
        time.sleep(interval)


@contextlib.contextmanager
def sigterm_raises_exit() -> Iterator[None]:
    """Within the block, SIGTERM raises SystemExit, so ``finally`` clauses stop what was
    started (the default action would end the interpreter without running them). Only
    in the main thread, where Python can install signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
