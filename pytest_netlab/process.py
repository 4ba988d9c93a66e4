"""Running untrusted target programs: started isolated, watched, and leaving nothing behind.

This module owns the life of one target process: starting an argv (never a
shell) in its own session, with its own working directory, a scrubbed
environment and resource limits; draining its output into capped logs; telling
how it ended; and killing it together with everything it spawned. It must not
choose ports, probe readiness or expand placeholders: the plugin does that and
calls this module.

Everything a target starts is found again through its session and process
group, the ``NETLAB_MARKER`` / ``NETLAB_RUN`` variables in its environment
(see :mod:`pytest_netlab._process_tree`), and, where a writable cgroup-v1
``pids`` hierarchy exists (typically when running as root), a pids cgroup of
its own. If pytest dies without cleaning up, :class:`Reaper` does it.

Markers:
    ``start(marker=...)`` names one target instance (``NETLAB_MARKER``; empty
    means a fresh unique one). The run marker (``NETLAB_RUN``) names the whole
    run; the first of these wins: ``start(run_marker=...)``, ``NETLAB_RUN`` in
    the ``env`` given to start(), ``NETLAB_RUN`` in this process's
    ``os.environ``; none means no run marker. Give every pytest process (each
    xdist worker) its own run marker, and never put it in the environment of a
    process that must survive the reaper: the reaper kills every process that
    carries it.
"""

from __future__ import annotations

import atexit
import fcntl
import itertools
import logging
import os
import secrets
import select
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Mapping, Sequence

from ._capped_log import CappedLog
from ._child_setup import ChildSetup, ResourceLimits, confine, explain_launch_failure, needs_preexec
from ._process_tree import (
    MARKER_VARIABLE,
    RUN_VARIABLE,
    PidsCgroup,
    check_marker,
    find_group_or_session,
    find_marked,
    kill_marked,
    kill_until_gone,
    signal_pids,
)
from ._reaper import Reaper
from .stall import ignores_signal

__all__ = [
    "MARKER_VARIABLE",
    "RUN_VARIABLE",
    "CappedLog",
    "ExitStatus",
    "LaunchError",
    "ManagedProcess",
    "Reaper",
    "ResourceLimits",
    "kill_marked",
    "scrubbed_environment",
]

_log = logging.getLogger(__name__)

# After SIGKILL, processes die within milliseconds unless stuck in the kernel;
# these bounds only keep terminate() from hanging on such a one.
_KILL_TIMEOUT = 2.0
_REAP_TIMEOUT = 2.0
# How long wait() gives the output readers to reach the end of the pipes once the process exited.
_LAST_WORDS = 0.25
# The capacity asked for each output pipe (see _widen).
_PIPE_BYTES = 256 * 1024
_INHERITED_VARIABLES = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM")
_SIGNAL_HINTS: dict[int, str] = {
    signal.SIGXCPU: "CPU time limit exceeded",
    signal.SIGXFSZ: "file size limit exceeded",
}


@dataclass(frozen=True)
class ExitStatus:
    """How a target ended, in the ``Popen.returncode`` convention.

    Attributes:
        returncode: the exit status, or minus the signal that killed it.
        escalated: True when SIGKILL was needed after SIGTERM's grace period.
        grace: that grace period in seconds, when escalated.

    Example:
        >>> ExitStatus(-11).describe()
        'killed by signal 11 (SIGSEGV)'
    """

    returncode: int
    escalated: bool = False
    grace: float | None = None

    def describe(self) -> str:
        """``"exited with status 1"``, ``"killed by signal 11 (SIGSEGV)"``, ``"... after ignoring SIGTERM for 2.0 s"``."""
        if self.returncode >= 0:
            text = f"exited with status {self.returncode}"
        else:
            number = -self.returncode
            try:
                name = signal.Signals(number).name
            except ValueError:
                realtime = signal.SIGRTMIN <= number <= signal.SIGRTMAX
                name = f"SIGRTMIN+{number - signal.SIGRTMIN}" if realtime else "unknown signal"
            hint = _SIGNAL_HINTS.get(number)
            text = f"killed by signal {number} ({name}{': ' + hint if hint else ''})"
        if self.escalated:
            text += " after ignoring SIGTERM" + (f" for {self.grace:.1f} s" if self.grace is not None else "")
        return text


class LaunchError(Exception):
    """The command could not be executed at all; the message says which and why."""


def scrubbed_environment(extra: Mapping[str, str], *, home: Path, tmpdir: Path) -> dict[str, str]:
    """The environment a target gets: almost nothing of ours, plus what it declared.

    Keeps only PATH, LANG, LC_ALL, LC_CTYPE, TZ and TERM from ``os.environ``
    (PATH defaults to ``os.defpath`` when we have none), sets HOME, TMPDIR, PYTHONUNBUFFERED=1 and PYTHONDONTWRITEBYTECODE=1, then
    applies ``extra`` (the declared environment wins).

    Example:
        >>> env = scrubbed_environment({"MODE": "fast"}, home=Path("/tmp/h"), tmpdir=Path("/tmp/t"))
        >>> env["HOME"], env["MODE"]
        ('/tmp/h', 'fast')
    """
    env = {name: os.environ[name] for name in _INHERITED_VARIABLES if name in os.environ}
    env.setdefault("PATH", os.defpath)
    env.update(HOME=str(home), TMPDIR=str(tmpdir), PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    env.update(extra)
    return env


_marker_counter = itertools.count(1)


def _new_marker() -> str:
    return f"t{os.getpid()}-{next(_marker_counter)}-{secrets.token_hex(4)}"


class ManagedProcess:
    """One target program, started isolated and killed with everything it spawned.

    The process gets its own session (and process group), stdin from
    /dev/null, a capped log of stdout and stderr, the given resource limits,
    and (with ``die_with_parent``) PR_SET_PDEATHSIG=SIGKILL. The main process
    is not reaped until :meth:`terminate`, so its pid (and process group id)
    cannot be reused while we may still signal it.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not
    the process: call :meth:`start` from a long-lived thread, normally the
    main thread, never from a short-lived worker thread.

    Example:
        >>> import re, sys, tempfile
        >>> program = [sys.executable, "-c", "print('ready', flush=True); import time; time.sleep(60)"]
        >>> with ManagedProcess.start(program, cwd=Path(tempfile.gettempdir()), env={}) as proc:
        ...     proc.stdout.wait_for(re.compile("ready"), 10, lambda: proc.running) is not None
        True
        >>> proc.terminate().describe()  # the same status the with block's exit got
        'killed by signal 15 (SIGTERM)'
    """

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        argv: tuple[str, ...],
        *,
        marker: str,
        run_marker: str,
        cgroup: PidsCgroup | None,
        log_head: int,
        log_tail: int,
    ) -> None:
        """Use :meth:`start`."""
        assert popen.stdout is not None and popen.stderr is not None
        self.argv = argv
        self.pid = popen.pid
        self.marker = marker
        self.run_marker = run_marker
        self._popen = popen
        self._cgroup = cgroup
        self._owner_pid = os.getpid()
        self._final: ExitStatus | None = None
        self._last_words_waited = False
        self._terminate_lock = threading.Lock()
        try:
            self._pidfd: int | None = os.pidfd_open(popen.pid)
        except (AttributeError, OSError):
            self._pidfd = None  # before Linux 5.3: wait() falls back to polling
        self.stdout = CappedLog(popen.stdout, name="stdout", head=log_head, tail=log_tail)
        self.stderr = CappedLog(popen.stderr, name="stderr", head=log_head, tail=log_tail)

    @classmethod
    def start(
        cls,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        limits: ResourceLimits = ResourceLimits(),
        log_head: int = 8192,
        log_tail: int = 65536,
        marker: str = "",
        run_marker: str | None = None,
        use_cgroup: bool = True,
        die_with_parent: bool = True,
    ) -> ManagedProcess:
        """Start ``argv`` in ``cwd`` with exactly ``env`` (plus the marker variables).

        Args:
            marker: this instance's ``NETLAB_MARKER``; empty means a fresh unique one.
            run_marker: the run's ``NETLAB_RUN``; None means ``env["NETLAB_RUN"]``,
                else ``os.environ["NETLAB_RUN"]``, else none.
            use_cgroup: put the target in a pids cgroup of its own where possible.
            die_with_parent: have the kernel kill the target when this thread
                dies (PDEATHSIG). That needs a ``preexec_fn``, which makes every
                start 9-16 ms slower; pass False where a :class:`Reaper` for the
                run marker covers an abnormal end.

        Raises:
            LaunchError: the program could not be executed (not found, not
                executable, missing interpreter, missing cwd). A program that
                starts and exits at once is not an error here: see :meth:`poll`.
        """
        argv = tuple(os.fspath(arg) for arg in argv)
        if not argv:
            raise LaunchError("cannot start an empty command")
        cwd = Path(cwd)
        if not cwd.is_dir():
            raise LaunchError(f"cannot start {shlex.quote(argv[0])}: working directory {cwd} does not exist")
        marker = check_marker(marker) if marker else _new_marker()
        if run_marker is None:
            run_marker = env.get(RUN_VARIABLE) or os.environ.get(RUN_VARIABLE, "")
        if run_marker:
            check_marker(run_marker, "run marker")
        child_env = {name: value for name, value in env.items() if name not in (MARKER_VARIABLE, RUN_VARIABLE)}
        child_env[MARKER_VARIABLE] = marker
        if run_marker:
            child_env[RUN_VARIABLE] = run_marker

        cgroup = PidsCgroup.create(run_marker, limits.processes) if use_cgroup else None
        rlimits = limits.rlimits()
        in_child = needs_preexec(die_with_parent=die_with_parent)
        cgroup_fd = cgroup.open_for_child() if cgroup and in_child else None
        try:
            popen = subprocess.Popen(
                argv,
                cwd=cwd,
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                close_fds=True,
                start_new_session=True,
                preexec_fn=ChildSetup(rlimits, cgroup_fd) if in_child else None,
            )
        except OSError as error:
            if cgroup:
                cgroup.remove()
            raise LaunchError(explain_launch_failure(argv[0], cwd, child_env, error)) from error
        except subprocess.SubprocessError as error:  # preexec_fn raised in the child
            if cgroup:
                cgroup.remove()
            raise LaunchError(f"cannot start {shlex.quote(argv[0])}: preparing the child failed ({error})") from error
        finally:
            if cgroup_fd is not None:
                os.close(cgroup_fd)
        if not in_child:
            try:
                confine(popen.pid, rlimits, cgroup)
            except OSError as error:
                _abandon(popen, cgroup)
                raise LaunchError(f"cannot start {shlex.quote(argv[0])}: confining the child failed ({error})") from error
        for pipe in (popen.stdout, popen.stderr):
            _widen(pipe)
        process = cls(
            popen, argv, marker=marker, run_marker=run_marker, cgroup=cgroup, log_head=log_head, log_tail=log_tail
        )
        with _live_lock:
            _live.add(process)
        return process

    # --- observing ---------------------------------------------------------------

    @property
    def cgroup(self) -> Path | None:
        """The pids cgroup directory holding the target, if one is used."""
        return self._cgroup.path if self._cgroup else None

    def poll(self) -> ExitStatus | None:
        """How the main process ended, or None while it runs. Does not reap it."""
        if self._final is not None:
            return self._final
        code = self._peek_returncode()
        return None if code is None else ExitStatus(code)

    @property
    def running(self) -> bool:
        """True while the main process has not exited."""
        return self.poll() is None

    def wait(self, timeout: float) -> ExitStatus | None:
        """Wait up to ``timeout`` seconds for the main process to exit."""
        deadline = time.monotonic() + timeout
        pause = 0.001
        while True:
            status = self.poll()
            remaining = deadline - time.monotonic()
            if status is not None:
                # Its last words may still be in the pipes: let the readers catch up
                # (briefly, and once: a child it left behind may hold the pipes open).
                if not self._last_words_waited:
                    self._last_words_waited = True
                    self.stdout.wait_eof(_LAST_WORDS)
                    self.stderr.wait_eof(_LAST_WORDS)
                return status
            if remaining <= 0:
                return None
            if self._pidfd is not None:
                poller = select.poll()  # not select(): the fd may be above FD_SETSIZE
                poller.register(self._pidfd, select.POLLIN)  # readable once it exited
                poller.poll(max(1, int(remaining * 1000)))
            else:
                time.sleep(min(pause, remaining))
                pause = min(pause * 2, 0.05)

    def describe(self, lines: int = 15) -> str:
        """The exit status (or "still running") and the tails of stderr and stdout."""
        status = self.poll()
        parts = [f"{shlex.join(self.argv)} (pid {self.pid}) {status.describe() if status else 'is still running'}"]
        for log in (self.stderr, self.stdout):
            shown = log.tail_lines(lines)
            if not shown:
                parts.append(f"{log.name}: (empty)")
                continue
            parts.append(f"{log.name} (last {len(shown)} lines, {log.total_bytes} bytes in all):")
            parts.extend("    " + line for line in shown)
        return "\n".join(parts)

    # --- stopping ----------------------------------------------------------------

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the main process only (for "exits on SIGTERM" checks)."""
        if self.poll() is None:  # unreaped until terminate(), so the pid is still ours
            os.kill(self.pid, sig)

    def terminate(self, grace: float = 2.0) -> ExitStatus:
        """Stop the target and everything it spawned; never hangs.

        SIGTERM goes to the process group and the session; after ``grace``
        seconds without the main process exiting, SIGKILL (``grace <= 0``
        skips SIGTERM: killed at once, as ``kill -9`` would; a main process
        that set SIGTERM to SIG_IGN is killed without waiting). Then SIGKILL for
        everything left: the group, the session, every process carrying this
        marker (children that called setsid() or double-forked) and the
        cgroup's members. Reaps, closes the pipes, joins the reader threads,
        removes the cgroup. A second call returns the same status.
        """
        with self._terminate_lock:
            if self._final is not None:
                return self._final
            try:
                escalated = False
                waited: float | None = grace
                if self._peek_returncode() is None and grace > 0:
                    # A main process that set SIGTERM to SIG_IGN will not exit on it: no point waiting.
                    ignored = ignores_signal(self.pid, signal.SIGTERM)
                    self._signal_group_and_session(signal.SIGTERM)
                    escalated = ignored or self.wait(grace) is None
                    waited = None if ignored else grace
                _, survivors = kill_until_gone(self._members, timeout=_KILL_TIMEOUT, also=self._kill_group)
                if survivors:
                    _log.warning("pids %s of %s would not die after SIGKILL", sorted(survivors), self.argv[0])
                self._final = ExitStatus(self._reap(), escalated, waited if escalated else None)
            finally:
                self._release()
            return self._final

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()

    def __repr__(self) -> str:
        return f"<ManagedProcess pid={self.pid} {shlex.join(self.argv)!r} marker={self.marker}>"

    # --- internals ---------------------------------------------------------------

    def _peek_returncode(self) -> int | None:
        if self._popen.returncode is not None:
            return self._popen.returncode
        try:
            # WNOWAIT: look without reaping, so the pid stays ours until terminate().
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            # Someone else reaped it (a SIGCHLD handler calling waitpid(-1)); Popen
            # then reports 0, and so do we.
            return self._popen.poll()
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def _signal_group_and_session(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        signal_pids(find_group_or_session(self.pid), sig)

    def _kill_group(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _members(self) -> set[int]:
        members = set(find_group_or_session(self.pid))
        members.update(find_marked(self.marker, (MARKER_VARIABLE,)))
        if self._cgroup:
            members.update(self._cgroup.members())
        return members

    def _reap(self) -> int:
        try:
            return self._popen.wait(timeout=_REAP_TIMEOUT)
        except subprocess.TimeoutExpired:
            _log.warning("pid %d (%s) did not die after SIGKILL; not reaped", self.pid, self.argv[0])
            return -signal.SIGKILL

    def _release(self) -> None:
        self.stdout.close()
        self.stderr.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self._cgroup is not None:
            if not self._cgroup.remove():
                _log.warning("could not remove cgroup %s", self._cgroup.path)
            self._cgroup = None
        with _live_lock:
            _live.discard(self)


def _widen(pipe: IO[bytes] | None) -> None:
    """Give a target's output pipe room for 256 KiB (64 KiB by default).

    A flooding target then wakes its drain thread a quarter as often: 1 GiB
    of output drains in 0.6-0.7 s instead of 1.1-1.8 s. Best effort: an
    unprivileged user past ``/proc/sys/fs/pipe-user-pages-soft`` keeps 64 KiB.
    """
    if pipe is None:
        return
    try:
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
    except (OSError, AttributeError):
        pass


def _abandon(popen: subprocess.Popen[bytes], cgroup: PidsCgroup | None) -> None:
    """Kill a child that was started but could not be confined, with whatever it forked."""
    kill_until_gone(lambda: find_group_or_session(popen.pid), timeout=_KILL_TIMEOUT)
    if cgroup:
        cgroup.remove()
    popen.wait(_REAP_TIMEOUT)
    for pipe in (popen.stdout, popen.stderr):
        if pipe is not None:
            pipe.close()


# Processes started and not yet terminated. At a normal interpreter exit they
# are terminated here; after an abnormal one the Reaper (and PDEATHSIG, for
# those started with die_with_parent) do it.
_live: set[ManagedProcess] = set()
_live_lock = threading.Lock()


@atexit.register
def _terminate_leftovers() -> None:
    with _live_lock:
        leftovers = [process for process in _live if process._owner_pid == os.getpid()]
    for process in leftovers:  # not in a forked child: those are the parent's
        process.terminate(grace=0.5)
