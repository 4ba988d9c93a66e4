"""The watchdog that cleans up when pytest dies without cleaning up.

This module owns both ends of that watchdog. :class:`Reaper` (used by the
plugin) starts ``python -m pytest_netlab._reaper RUN_MARKER DIR...`` with a
pipe on its stdin; :func:`main` is that child. However pytest ends (its own
exit, pytest-timeout's ``os._exit``, SIGKILL, a CI cancel) the kernel closes
the pipe. If no ``exit`` line came first, the child kills every process whose
environment has ``NETLAB_RUN=<run marker>``, empties the run's pids cgroups,
removes the directories it was given, and exits.

It must never remove anything but those directories, must not carry the run
marker itself, and must survive the Ctrl-C that killed pytest: it runs in a
session of its own and ignores SIGINT and SIGHUP.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from ._process_tree import (
    MARKER_VARIABLE,
    RUN_VARIABLE,
    PidsCgroup,
    check_marker,
    find_marked,
    kill_until_gone,
)

__all__ = ["Reaper", "main"]

_READY_LINE = b"ready\n"
_EXIT_LINE = b"exit\n"
# Starting a Python interpreter on a loaded CI machine can take seconds.
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 5.0
_KILL_TIMEOUT = 5.0


def _checked_dir(path: Path) -> Path:
    """The absolute form of ``path``, refused if removing it could hurt (``/``, HOME, cwd, ...)."""
    path = Path(os.path.abspath(path))
    precious = {Path("/")}
    for keep in (Path(os.path.expanduser("~")), Path.cwd()):
        precious.add(keep)
        precious.update(keep.parents)
    if len(path.parts) < 3 or path in precious:
        raise ValueError(f"refusing to let the reaper remove {path}: too close to / or HOME or the working directory")
    return path


def _read_line(stream_fd: int, timeout: float) -> bytes:
    """Read up to one line from ``stream_fd`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(stream_fd, select.POLLIN)
    data = b""
    while not data.endswith(b"\n") and len(data) < 1024:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(max(1, int(remaining * 1000))):
            break
        chunk = os.read(stream_fd, 1024)
        if not chunk:
            break
        data += chunk
    return data


class Reaper:
    """Watchdog subprocess that kills a run's leftovers if pytest dies without cleaning up.

    Args of :meth:`start`:
        run_marker: the ``NETLAB_RUN`` value the run's targets carry.
        cleanup_dirs: directories to remove too (absolute; ``/``, HOME, the
            working directory and their parents are refused).

    Keep the object until :meth:`close`: if it is garbage-collected first, its
    pipe closes and the watchdog cleans up a run that is still going.

    Example:
        >>> reaper = Reaper.start("run-1234", [Path("/tmp/netlab-run-1234")])
        >>> # ... ManagedProcess.start(..., run_marker="run-1234") ...
        >>> reaper.close()  # normal end: the watchdog exits and kills nothing
    """

    def __init__(self, popen: subprocess.Popen[bytes], run_marker: str, cleanup_dirs: tuple[Path, ...]) -> None:
        """Use :meth:`start`."""
        self._popen = popen
        self.pid = popen.pid
        self.run_marker = run_marker
        self.cleanup_dirs = cleanup_dirs

    @classmethod
    def start(cls, run_marker: str, cleanup_dirs: Sequence[Path]) -> Reaper:
        """Start the watchdog and wait until it is listening.

        Raises:
            ValueError: a bad marker or a directory it must not remove.
            RuntimeError: the watchdog did not come up.
        """
        check_marker(run_marker, "run marker")
        dirs = tuple(_checked_dir(Path(d)) for d in cleanup_dirs)
        env = {name: value for name, value in os.environ.items() if name not in (MARKER_VARIABLE, RUN_VARIABLE)}
        package_parent = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (package_parent, env.get("PYTHONPATH"))))
        popen = subprocess.Popen(
            [sys.executable, "-m", "pytest_netlab._reaper", run_marker, *map(str, dirs)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            cwd="/",
            env=env,
            close_fds=True,
            start_new_session=True,  # out of reach of the Ctrl-C sent to pytest's group
        )
        assert popen.stdout is not None
        with popen.stdout:
            greeting = _read_line(popen.stdout.fileno(), _START_TIMEOUT)
        if greeting != _READY_LINE:
            popen.kill()
            popen.wait(_STOP_TIMEOUT)
            if popen.stdin:
                popen.stdin.close()
            raise RuntimeError(
                f"the pytest-netlab reaper did not start: it said {greeting!r} and {popen.returncode=}"
            )
        return cls(popen, run_marker, dirs)

    @property
    def returncode(self) -> int | None:
        """The watchdog's exit status once it ended (0: a clean exit), else None."""
        return self._popen.poll()

    def close(self) -> None:
        """Normal shutdown: tell the watchdog to exit without killing anything. Idempotent."""
        stdin = self._popen.stdin
        if stdin is not None and not stdin.closed:
            try:
                stdin.write(_EXIT_LINE)
            except BrokenPipeError:
                pass  # it already died; there is nothing left to tell it
            finally:
                stdin.close()
        try:
            self._popen.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait(_STOP_TIMEOUT)

    def __enter__(self) -> Reaper:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _remove_dir(path: Path) -> bool:
    # A symlink is not followed: only the directory we were given is removed,
    # and rmtree itself never follows links inside it.
    if path.is_symlink() or not path.is_dir():
        return False
    shutil.rmtree(path, ignore_errors=True)
    return not path.exists()


def clean_up(run_marker: str, dirs: Sequence[Path]) -> str:
    """Kill the run's processes and cgroups, remove ``dirs``; return what was done."""
    killed, survivors = kill_until_gone(lambda: find_marked(run_marker, (RUN_VARIABLE,)), timeout=_KILL_TIMEOUT)
    groups = PidsCgroup.of_run(run_marker)
    stuck_groups = [group.path for group in groups if not group.remove(timeout=_KILL_TIMEOUT)]
    removed = [path for path in dirs if _remove_dir(path)]
    report = f"killed {len(killed)} process(es), removed {len(removed)} directory(ies)"
    if survivors or stuck_groups:
        report += f"; could not kill {sorted(survivors)} or remove {[str(p) for p in stuck_groups]}"
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """The watchdog: wait for EOF on stdin, then clean up unless told ``exit`` first."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m pytest_netlab._reaper RUN_MARKER [DIR ...]", file=sys.stderr)
        return 2
    run_marker = check_marker(args[0], "run marker")
    dirs = [Path(arg) for arg in args[1:]]
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    os.chdir("/")  # never hold a directory we may have to remove
    os.write(sys.stdout.fileno(), _READY_LINE)
    for line in sys.stdin.buffer:
        if line == _EXIT_LINE:
            return 0
    report = clean_up(run_marker, dirs)
    try:
        print(f"pytest-netlab reaper: pytest ended without cleaning up run {run_marker}; {report}", file=sys.stderr)
    except OSError:
        pass  # whoever read our stderr is gone with pytest
    return 0


if __name__ == "__main__":
    sys.exit(main())
