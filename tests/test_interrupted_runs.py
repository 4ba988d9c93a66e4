"""Nothing outlives a run that is interrupted: Ctrl-C, or pytest-timeout's os._exit.

A target that hangs keeps the check waiting; the run is then interrupted the
two ways a user or CI does it. The ``run_marker`` fixture asserts that no
process carrying the run's marker is left, and the temporary files go too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FIXTURES, leftover_processes

# It keeps running, so no stall is proven and the check waits until the run is interrupted.
HANGS = FIXTURES / "misbehaving" / "hangs_polling.py"
FORKS = FIXTURES / "misbehaving" / "forks_children.py"


def start_pytest(tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """Start a pytest run whose temporary files all go to ``tmp_path / "tmp"``."""
    (tmp_path / "tmp").mkdir()
    (tmp_path / "netlab.toml").write_text(
        f'[targets.hang]\ncommand = "{{python}} {HANGS} {{host}} {{port}}"\nsuites = ["tcp-echo"]\n'
        f'[targets.forks]\ncommand = "{{python}} {FORKS} {{host}} {{port}}"\nsuites = ["tcp-echo"]\n'
    )
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "--netlab-target=forks", "--netlab-target=hang", "-p", "no:cacheprovider", "--netlab-timeout-scale=20", *args],
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(tmp_path / "tmp")},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=_sigint_default,
    )


def _sigint_default() -> None:
    """In the child: take SIGINT by default even when this pytest runs as a background job (SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for_targets(marker: str, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(leftover_processes(marker)) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def wait_until_gone(marker: str, timeout: float = 15) -> list[str]:
    deadline = time.monotonic() + timeout
    while leftover_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    return leftover_processes(marker)


def netlab_tempdirs(tmp_path: Path) -> set[str]:
    """What the run left in its private temporary directory (pytest's own basetemp aside)."""
    return {p.name for p in (tmp_path / "tmp").glob("netlab-*")}


def test_ctrl_c_stops_every_target(tmp_path: Path, run_marker: str) -> None:
    run = start_pytest(tmp_path, "--netlab-check=tcp-echo/echo/byte-exact")
    try:
        wait_for_targets(run_marker, 3)  # the forks target, its daemon, and the hanging target
        run.send_signal(signal.SIGINT)
        output, _ = run.communicate(timeout=60)
    finally:
        run.kill()
    assert b"KeyboardInterrupt" in output
    assert wait_until_gone(run_marker) == []
    assert netlab_tempdirs(tmp_path) == set()


def test_pytest_timeout_thread_kill_is_cleaned_up_by_the_watchdog(tmp_path: Path, run_marker: str) -> None:
    # The thread method ends the process with os._exit: no teardown runs at all.
    run = start_pytest(tmp_path, "--netlab-check=tcp-echo/echo/byte-exact", "--timeout=4", "--timeout-method=thread")
    try:
        output, _ = run.communicate(timeout=120)
    finally:
        run.kill()
    assert b"Timeout" in output
    assert wait_until_gone(run_marker) == []
    deadline = time.monotonic() + 10
    while netlab_tempdirs(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert netlab_tempdirs(tmp_path) == set()
