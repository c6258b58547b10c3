"""Whatever a launcher started is stopped even when the launcher gets SIGTERM or SIGKILL,
and the temporary directories of a killed launcher go at the next start."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from mpsl_flwr.ops.launch import HOME_PREFIX
from mpsl_flwr.ops.processes import ManagedProcess, owned_temp_dir, pid_alive, remove_orphans


def test_sigterm_runs_finally_blocks():
    code = textwrap.dedent(
        """
        import os, signal, time
        from mpsl_flwr.ops.processes import sigterm_raises_exit
        with sigterm_raises_exit():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(10)
            finally:
                print("stopped what it started", flush=True)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "stopped what it started" in done.stdout
    assert done.returncode == 128 + 15


def _started_then_killed(code: str, timeout: float = 60) -> list[str]:
    """Run ``code`` in a child Python, read the lines it prints up to ``READY``, SIGKILL
    it (no ``finally``, no signal handler runs) and return those lines."""
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = child.stdout.readline().strip()
        if line == "READY":
            break
        lines.append(line)
    else:  # pragma: no cover - the child failed to start
        child.kill()
        raise AssertionError(f"child never got ready: {lines}")
    child.kill()
    child.wait(timeout=10)
    return lines


def _gone(pids: list[int], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(pid_alive(p) for p in pids):
            return True
        time.sleep(0.2)
    return False


def test_a_managed_process_dies_with_a_sigkilled_owner(tmp_path: Path) -> None:
    """The group (a shell and its sleep) and a descendant that left it (setsid) end."""
    lines = _started_then_killed(
        f"""
        import os, sys, time
        from pathlib import Path
        from mpsl_flwr.ops.processes import ManagedProcess, children_of
        cmd = ["sh", "-c", "setsid sleep 300 & sleep 300"]
        p = ManagedProcess("sleeper", cmd, dict(os.environ), Path({str(tmp_path)!r}) / "log")
        p.start()
        while len(children_of(p.pid)) < 2:
            time.sleep(0.1)
        time.sleep(2.5)  # one scan of the watchdog for the detached one
        print(p.pid, *children_of(p.pid), flush=True)
        print("READY", flush=True)
        time.sleep(300)
        """
    )
    pids = [int(x) for x in lines[-1].split()]
    assert len(pids) == 3
    assert _gone(pids), f"still alive: {[p for p in pids if pid_alive(p)]}"


def test_a_stopped_managed_process_takes_its_watchdog_along(tmp_path: Path) -> None:
    p = ManagedProcess("sleeper", ["sleep", "300"], dict(os.environ), tmp_path / "log").start()
    assert p.watchdog is not None and p.watchdog.poll() is None
    p.stop(grace=2)
    assert p.watchdog.poll() is not None
    assert not pid_alive(p.pid)


def test_a_sigkilled_launchers_superlink_stops_and_its_home_goes_at_the_next_start() -> None:
    lines = _started_then_killed(
        """
        from mpsl_flwr.ops.launch import local_superlink
        import time
        with local_superlink(replace_dead_actors=False) as link:
            print(link.process.pid, link.flwr_home, flush=True)
            print("READY", flush=True)
            time.sleep(300)
        """
    )
    pid, home = lines[-1].split()
    assert _gone([int(pid)]), "the SuperLink outlived its launcher"
    assert Path(home).is_dir()  # nothing ran the launcher's cleanup ...
    assert Path(home) in remove_orphans(HOME_PREFIX)  # ... the next start does
    assert not Path(home).exists()


def test_a_temp_dir_whose_owner_lives_or_that_has_no_owner_is_kept(tmp_path: Path) -> None:
    with owned_temp_dir("mpsl-test-owned-") as mine:
        unowned = Path(tempfile.mkdtemp(prefix="mpsl-test-owned-"))
        try:
            assert remove_orphans("mpsl-test-owned-") == []
            assert mine.is_dir() and unowned.is_dir()
        finally:
            shutil.rmtree(unowned)
    assert not mine.exists()
    with owned_temp_dir("mpsl-test-owned-", keep=True) as kept:
        pass
    try:
        assert remove_orphans("mpsl-test-owned-") == [] and kept.is_dir()
    finally:
        shutil.rmtree(kept)
