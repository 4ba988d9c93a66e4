"""Preparing a target's child process, and explaining why it could not start.

This module owns how a child is confined: joining the pids cgroup, resource
limits, signal dispositions reset to their defaults, and PR_SET_PDEATHSIG;
and the message of a launch that failed (not found, not executable, missing
interpreter).

There are two ways to confine a child, and :func:`needs_preexec` chooses:

* :class:`ChildSetup`, a ``preexec_fn`` run between ``fork`` and ``exec``. It
  does everything, but a ``preexec_fn`` makes CPython fork() instead of
  vfork(): 9-16 ms in a pytest-sized parent, against 0.3 ms. It must do
  nothing in the child that could block: no imports, no locks, no I/O beyond
  one write to the cgroup.
* :func:`confine`, run by the parent right after a vfork'ed spawn: cgroup and
  limits applied with ``cgroup.procs`` and ``prlimit`` to the child and to
  anything it forked in the moment before. It cannot reset a signal the
  parent ignores or blocks, nor ask for PDEATHSIG, so it is used only when
  there is nothing to reset and something else (the run's reaper) kills
  targets whose pytest died.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import shlex
import shutil
import signal
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ._process_tree import CHILDREN_LISTED, PidsCgroup, children

__all__ = ["ChildSetup", "ResourceLimits", "confine", "explain_launch_failure", "needs_preexec"]

# Signals whose disposition a child must not inherit: a pytest started as a
# background shell job has SIGINT ignored, and an ignored SIGINT would make an
# "exits on SIGINT" check fail for a reason that is not the target's.
_RESET_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE)
# Of those, the ones a vfork'ed child keeps ignored (Popen's restore_signals resets SIGPIPE).
_KEPT_IF_IGNORED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True)
class ResourceLimits:
    """Resource limits applied to a target before it runs (``None`` leaves one alone).

    Core dumps are always disabled. Root is exempt from RLIMIT_NPROC in the
    kernel; where a pids cgroup is available, ``processes`` is also its
    ``pids.max``, which binds root too. A limit is never raised above the
    hard limit this process already has.

    Example:
        >>> ResourceLimits(cpu_seconds=10, memory_bytes=None).cpu_seconds
        10
    """

    cpu_seconds: int | None = 120
    memory_bytes: int | None = 2 * 2**30
    processes: int | None = 512
    file_size_bytes: int | None = 256 * 2**20
    open_files: int | None = 1024

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"ResourceLimits.{name} must be None or an int >= 0, not {value!r}")

    def rlimits(self) -> tuple[tuple[int, tuple[int, int]], ...]:
        """(resource, (soft, hard)) pairs to set, clamped to our own hard limits."""
        wanted = (
            (resource.RLIMIT_CORE, 0),
            (resource.RLIMIT_CPU, self.cpu_seconds),
            (resource.RLIMIT_AS, self.memory_bytes),
            (resource.RLIMIT_NPROC, self.processes),
            (resource.RLIMIT_FSIZE, self.file_size_bytes),
            (resource.RLIMIT_NOFILE, self.open_files),
        )
        plan = []
        for which, value in wanted:
            if value is None:
                continue
            _, current_hard = resource.getrlimit(which)
            # CPU: SIGXCPU at the soft limit (shown as such), SIGKILL a second later.
            hard = value + 1 if which == resource.RLIMIT_CPU else value
            if current_hard != resource.RLIM_INFINITY:
                hard = min(hard, current_hard)
            plan.append((which, (min(value, hard), hard)))
        return tuple(plan)


def _load_prctl() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
    prctl.restype = ctypes.c_int
    return prctl


# Prepared here, in the parent: the child between fork and exec should only call.
_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


class ChildSetup:
    """What the child does between fork and exec (``preexec_fn``).

    It runs in a forked copy of a threaded process, so it does the minimum and
    imports nothing: join the cgroup, set rlimits, reset signal dispositions
    and the mask, ask for SIGKILL when the parent dies.
    """

    def __init__(self, rlimits: tuple[tuple[int, tuple[int, int]], ...], cgroup_fd: int | None) -> None:
        self._rlimits = rlimits
        self._cgroup_fd = cgroup_fd
        self._parent_pid = os.getpid()

    def __call__(self) -> None:
        if self._cgroup_fd is not None:
            os.write(self._cgroup_fd, b"0")  # "0" means the writing process itself
        for which, limits in self._rlimits:
            resource.setrlimit(which, limits)
        for sig in _RESET_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != self._parent_pid:  # the parent died before prctl took effect
                os.kill(os.getpid(), signal.SIGKILL)


def needs_preexec(*, die_with_parent: bool) -> bool:
    """Whether a child started now from this thread must be confined by :class:`ChildSetup`.

    A vfork'ed child inherits ignored signals and the calling thread's signal
    mask, which only a ``preexec_fn`` can undo; :func:`confine` needs
    ``/proc`` to list children; PDEATHSIG needs a ``preexec_fn`` too.
    """
    if die_with_parent or not CHILDREN_LISTED:
        return True
    # getsignal() is None for a handler installed outside Python: unknown, so reset it.
    if any(signal.getsignal(sig) in (signal.SIG_IGN, None) for sig in _KEPT_IF_IGNORED):
        return True
    return bool(signal.pthread_sigmask(signal.SIG_BLOCK, ()))


def confine(pid: int, rlimits: tuple[tuple[int, tuple[int, int]], ...], cgroup: PidsCgroup | None) -> None:
    """Put a just-started ``pid``, and whatever it forked already, in ``cgroup`` and under ``rlimits``.

    Each process is confined before its children are listed, so a child
    forked before its parent was confined is listed and confined, and one
    forked after is born confined. A process that exits meanwhile is skipped.

    Raises:
        OSError: the cgroup or a limit could not be applied (the caller kills the target).
    """
    pending, seen = [pid], set[int]()
    while pending and len(seen) < 4096:  # a fork bomb that big is already the pids limit's business
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            # Limits first: they take microseconds, joining a cgroup-v1 group about 10 ms.
            for which, limits in rlimits:
                resource.prlimit(current, which, limits)
            if cgroup is not None:
                cgroup.add(current)
        except ProcessLookupError:
            continue
        pending.extend(children(current))


def explain_launch_failure(argv0: str, cwd: Path, env: Mapping[str, str], error: OSError) -> str:
    shown = shlex.quote(argv0)
    search_path = env.get("PATH", os.defpath)
    if "/" in argv0:
        program: str | None = str(cwd / argv0)
    else:
        program = shutil.which(argv0, path=search_path)
        if program is None:
            brief = search_path if len(search_path) <= 160 else search_path[:157] + "..."
            return f"cannot start {shown}: command not found (looked in PATH={brief})"
    assert program is not None
    try:
        mode = os.stat(program).st_mode
    except OSError:
        return f"cannot start {shown}: no such file {program}"
    if stat.S_ISDIR(mode):
        return f"cannot start {shown}: {program} is a directory"
    if isinstance(error, PermissionError):
        return (
            f"cannot start {shown}: {program} is not executable (mode {stat.filemode(mode)}); "
            "chmod +x it, or start it through its interpreter (for example python3 FILE)"
        )
    if isinstance(error, FileNotFoundError):  # the file exists, so its interpreter does not
        try:
            with open(program, "rb") as file:
                first_line = file.readline(256).strip()
        except OSError:
            first_line = b""
        if first_line.startswith(b"#!"):
            interpreter = first_line[2:].decode("utf-8", "replace").strip()
            return f"cannot start {shown}: its interpreter '{interpreter}' (the #! line) was not found"
    if error.errno == errno.ENOEXEC:
        return f"cannot start {shown}: {program} is not a program this system can run (no #! line?)"
    return f"cannot start {shown}: {error.strerror or error}"
