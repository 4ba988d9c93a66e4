"""Whether a sleeping process can wake up by itself: the system call each thread waits in.

This module owns one question: is every thread of a process blocked in a call
that has no timeout (``accept()``, ``recv()``, ``poll(-1)``, a lock without a
deadline), with no timer armed that could wake it? Then only input from
outside can wake it, and a hung-target verdict needs no long quiet period
(see :class:`pytest_netlab.stall.StallWatch`).

It reads ``/proc/PID/task/TID/syscall`` (the call a blocked thread is in, and
its arguments), ``/proc/PID/timers`` (POSIX timers) and the ``fdinfo`` of
timerfds. Anything it does not know (another architecture, another call, a
file it cannot read) answers "may wake by itself": this module may only make
a verdict faster, never wrong. What it cannot see: a pending ``alarm()`` or
``setitimer()`` (Linux no longer reports those); README says so.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Iterable

__all__ = ["GENERIC", "X86_64", "cannot_wake_by_itself", "waits_without_timeout"]

_PROC = Path("/proc")

# How to tell whether a call blocks forever, from its arguments: the index of
# the argument that holds the timeout (None: the call has none), and its kind.
_MILLISECONDS_INT = "ms"  # an int: -1 (any negative) waits forever
_POINTER = "ptr"  # a pointer to a timespec/timeval: NULL waits forever
_FUTEX = "futex"  # FUTEX_WAIT / FUTEX_WAIT_BITSET with a NULL timeout

_Rule = tuple[int | None, str | None]

# Calls that wait for an event, and where their timeout is. Calls not listed
# (nanosleep, clock_nanosleep, an unknown one) count as "may wake by itself".
X86_64: dict[int, _Rule] = {
    0: (None, None),  # read
    7: (2, _MILLISECONDS_INT),  # poll
    17: (None, None),  # pread64
    19: (None, None),  # readv
    23: (4, _POINTER),  # select
    34: (None, None),  # pause
    43: (None, None),  # accept
    45: (None, None),  # recvfrom
    47: (None, None),  # recvmsg
    61: (None, None),  # wait4
    130: (None, None),  # rt_sigsuspend
    202: (3, _FUTEX),  # futex
    232: (3, _MILLISECONDS_INT),  # epoll_wait
    247: (None, None),  # waitid
    270: (4, _POINTER),  # pselect6
    271: (2, _POINTER),  # ppoll
    281: (3, _MILLISECONDS_INT),  # epoll_pwait
    288: (None, None),  # accept4
    441: (3, _POINTER),  # epoll_pwait2
}
# The generic table (arm64, riscv64): no poll, select or epoll_wait.
GENERIC: dict[int, _Rule] = {
    22: (3, _MILLISECONDS_INT),  # epoll_pwait
    63: (None, None),  # read
    65: (None, None),  # readv
    67: (None, None),  # pread64
    72: (4, _POINTER),  # pselect6
    73: (2, _POINTER),  # ppoll
    95: (None, None),  # waitid
    98: (3, _FUTEX),  # futex
    133: (None, None),  # rt_sigsuspend
    202: (None, None),  # accept
    207: (None, None),  # recvfrom
    212: (None, None),  # recvmsg
    242: (None, None),  # accept4
    260: (None, None),  # wait4
    441: (3, _POINTER),  # epoll_pwait2
}
_TABLES = {"x86_64": X86_64, "aarch64": GENERIC, "arm64": GENERIC, "riscv64": GENERIC}
_CALLS: dict[int, _Rule] = _TABLES.get(platform.machine(), {})

_FUTEX_CMD_MASK = 0x7F  # without FUTEX_PRIVATE_FLAG and FUTEX_CLOCK_REALTIME
_FUTEX_WAITS = (0, 9)  # FUTEX_WAIT, FUTEX_WAIT_BITSET


def _blocks_forever(number: int, arguments: list[int], calls: dict[int, _Rule]) -> bool:
    rule = calls.get(number)
    if rule is None:
        return False
    index, kind = rule
    if index is None:
        return True
    if index >= len(arguments):
        return False
    value = arguments[index]
    if kind == _MILLISECONDS_INT:
        return bool(value & 0x80000000)  # a negative int; the register's upper half is undefined
    if kind == _POINTER:
        return value == 0
    if kind == _FUTEX:
        return len(arguments) > 1 and arguments[1] & _FUTEX_CMD_MASK in _FUTEX_WAITS and value == 0
    return False


def waits_without_timeout(line: str, calls: dict[int, _Rule] | None = None) -> bool:
    """Whether a ``/proc/PID/task/TID/syscall`` line shows a call that can only end on an event.

    Args:
        calls: the table of calls; None means this machine's.

    Example (accept4 on fd 3, then poll() with a 500 ms timeout):
        >>> waits_without_timeout("288 0x3 0x7ffd 0x7ffc 0x80000 0x0 0x0 0x7ffd 0x7f12", X86_64)
        True
        >>> waits_without_timeout("7 0x7f00 0x1 0x1f4 0x0 0x0 0x0 0x7ffd 0x7f12", X86_64)
        False
        >>> waits_without_timeout("running")
        False
    """
    fields = line.split()
    if len(fields) < 3 or not fields[0].isdigit():
        return False  # "running", or "-1 sp pc" (blocked, not in a call)
    try:
        arguments = [int(field, 16) for field in fields[1:-2]]
    except ValueError:
        return False
    return _blocks_forever(int(fields[0]), arguments, _CALLS if calls is None else calls)


def _threads_wait_without_timeout(pid: int) -> bool:
    task_dir = _PROC / str(pid) / "task"
    try:
        tids = os.listdir(task_dir)
    except OSError:
        return False
    for tid in tids:
        try:
            line = (task_dir / tid / "syscall").read_text()
        except OSError:
            return False
        if not waits_without_timeout(line):
            return False
    return bool(tids)


def _has_armed_timer(pid: int) -> bool:
    """POSIX timers, or a timerfd that is armed (it would wake an epoll or read on it)."""
    try:
        if (_PROC / str(pid) / "timers").read_text().strip():
            return True
    except FileNotFoundError:
        pass  # a kernel without CONFIG_CHECKPOINT_RESTORE: timer_create() is rare enough
    except OSError:
        return True
    fd_dir = _PROC / str(pid) / "fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return True
    for fd in fds:
        try:
            if os.readlink(fd_dir / fd) != "anon_inode:[timerfd]":
                continue
            info = (_PROC / str(pid) / "fdinfo" / fd).read_text()
        except OSError:
            continue  # closed meanwhile
        if "it_value: (0, 0)" not in info:
            return True
    return False


def cannot_wake_by_itself(pids: Iterable[int]) -> bool:
    """True when every thread of ``pids`` waits in a call without timeout and no timer is armed.

    Call it only after seeing the threads asleep: a thread that runs between
    two readings shows up in its run count, not here.
    """
    pids = list(pids)
    if not pids or not _CALLS:
        return False
    return all(_threads_wait_without_timeout(pid) for pid in pids) and not any(_has_armed_timer(pid) for pid in pids)
