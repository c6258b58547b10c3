"""Whatever a launcher started is stopped even when the launcher gets SIGTERM."""

from __future__ import annotations

import subprocess
import sys
import textwrap


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
