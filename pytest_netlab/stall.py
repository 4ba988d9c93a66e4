"""Whether a launched target can still answer: its threads' scheduling and its connection's queues.

A check waiting for a reply should end on an event: the bytes, a close, or
proof that no reply will come. That proof is a *stall*: every thread of
the target's processes has slept, without being scheduled once, for a quiet
period, and nothing the target sent is still on its way (its send queue for
the check's connection is empty). Only new input or a timer can wake such a
process; a check that waits sends no new input, and a server owes its
answer to a complete request without waiting for a timer. So a hung server
fails in a fraction of a second instead of a full protocol timeout, and the
message says why (``hung`` targets cost about as much as passing ones).

What counts as activity: a change in any thread's count of times it ran
(``/proc/PID/task/TID/schedstat``, exact, unlike the CPU tick counters), a
thread that is runnable or in uninterruptible sleep, a new or vanished
thread. A server that polls on a short timer keeps running and is never
called stalled: waits fall back to their timeouts.

The same reading tells when the target has *digested* what a check sent:
its threads ran and are all asleep again (:func:`wait_until_asleep`). A
check that sends a message in pieces waits for that between pieces, so each
piece is its own read() on the target's side even on a loaded machine,
where a fixed pause lets the pieces pile up into one read.

Linux only (``/proc``); elsewhere :meth:`StallWatch.check` never reports a
stall. This module only reads ``/proc``: it must not signal, and its only
waits are bounded polls.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ._blocking_calls import cannot_wake_by_itself
from ._process_tree import process_tree as descendants_and_root

__all__ = [
    "ConnectionQueues",
    "StallWatch",
    "connection_queues",
    "ignores_signal",
    "process_tree",
    "thread_activity",
    "wait_until_asleep",
]

_PROC = Path("/proc")

# A thread's scheduling fingerprint: (pid, tid) -> times it ran; None while any thread is awake.
Activity = dict[tuple[int, int], int]


def process_tree(root: int, cgroup: Path | None = None) -> list[int]:
    """The live processes of a target: its pids cgroup's members, else ``root`` and its descendants.

    A process that daemonised away from ``root`` is not followed, and not
    needed: it is no longer the target's.
    """
    if cgroup is not None:
        try:
            return [int(line) for line in (cgroup / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            pass
    return descendants_and_root(root)


def thread_activity(pids: Iterable[int]) -> Activity | None:
    """How many times each thread of ``pids`` has run, or None if one of them is awake (running or in I/O).

    Threads that vanish while being read are left out: the next reading
    differs from this one, which is what matters.
    """
    activity: Activity = {}
    for pid in pids:
        task_dir = _PROC / str(pid) / "task"
        try:
            tids = os.listdir(task_dir)
        except OSError:
            continue
        for tid in tids:
            try:
                stat = (task_dir / tid / "stat").read_bytes()
                schedstat = (task_dir / tid / "schedstat").read_bytes()
            except OSError:
                continue
            state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
            if state in (b"R", b"D"):
                return None
            try:
                activity[(pid, int(tid))] = int(schedstat.split()[2])
            except (IndexError, ValueError):
                return None  # an unexpected format: never claim a stall from it
    return activity


def wait_until_asleep(pids: Callable[[], list[int]], limit: float, interval: float = 0.002) -> bool:
    """Poll until every thread of ``pids()`` sleeps, unscheduled, across two looks ``interval`` apart.

    Returns False when ``limit`` seconds pass first (a target that keeps
    running, or one whose threads cannot be read).
    """
    deadline = time.monotonic() + limit
    last: Activity | None = None
    while time.monotonic() < deadline:
        activity = thread_activity(pids())
        if activity is not None and activity == last:
            return True
        last = activity
        time.sleep(interval)
    return False


@dataclass(frozen=True)
class ConnectionQueues:
    """One TCP connection's queues: the target's unsent and unread bytes, and ours not yet acknowledged."""

    unsent: int
    unread: int
    #: Bytes our (the client's) socket sent that the target's kernel has not
    #: acknowledged yet: on their way, not yet in its receive queue. -1 when our
    #: socket is not in the table.
    in_flight: int = -1


def connection_queues(server_port: int, client_port: int) -> ConnectionQueues | None:
    """The queues of both ends of the connection between the two ports, from ``/proc/net/tcp{,6}``.

    None when the target's socket is not found (closed, or another network namespace).
    """
    server_end, client_end = (f":{server_port:04X} ", f":{client_port:04X} "), (f":{client_port:04X} ", f":{server_port:04X} ")
    for table in ("tcp", "tcp6"):
        try:
            lines = (_PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        found: dict[tuple[str, str], tuple[int, int]] = {}
        for line in lines:
            fields = line.split()
            # sl local_address rem_address st tx_queue:rx_queue ...
            if len(fields) <= 4:
                continue
            for end in (server_end, client_end):
                if (fields[1] + " ").endswith(end[0]) and (fields[2] + " ").endswith(end[1]):
                    tx_queue, rx_queue = (int(value, 16) for value in fields[4].split(":"))
                    found[end] = (tx_queue, rx_queue)
        if server_end in found:
            unsent, unread = found[server_end]
            in_flight = found[client_end][0] if client_end in found else -1
            return ConnectionQueues(unsent, unread, in_flight)
    return None


def ignores_signal(pid: int, signum: int) -> bool:
    """True when process ``pid`` has set ``signum`` to SIG_IGN (its ``SigIgn`` mask in ``/proc/PID/status``)."""
    try:
        for line in (_PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("SigIgn:"):
                return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


class StallWatch:
    """Tells, each time it is asked, whether the target has stalled on one connection.

    Example::

        watch = StallWatch(lambda: process_tree(pid), server_port=8000, client_port=51234, quiet=0.3)
        while waiting:
            why = watch.check()   # None, or why no reply will come
            if why: give up, and say why

    Args:
        pids: the target's processes, asked on every check (a server may fork).
        server_port, client_port: the connection the check waits on.
        quiet: seconds every thread must sleep, unscheduled, before a stall is called.
        proven_quiet: the same, shorter, for a target whose every thread waits in
            a call without a timeout, with no timer armed: only our input could
            wake it (see :mod:`pytest_netlab._blocking_calls`). None: always ``quiet``.
        clock: for tests.
    """

    def __init__(
        self,
        pids: Callable[[], list[int]],
        *,
        server_port: int,
        client_port: int,
        quiet: float,
        proven_quiet: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pids = pids
        self._server_port = server_port
        self._client_port = client_port
        self._quiet = quiet
        self._proven_quiet = quiet if proven_quiet is None else min(proven_quiet, quiet)
        self._clock = clock
        self._last: Activity | None = None
        self._since = clock()

    def activity(self) -> Activity | None:
        """The target's threads' run counts now (None while one is awake): the baseline for :meth:`wait_until_digested`."""
        return thread_activity(self._pids())

    def wait_until_digested(self, before: Activity | None, limit: float) -> bool:
        """Wait (at most ``limit`` s) until the target has run since ``before`` and sleeps again.

        One look suffices in the common case (it already ran and sleeps);
        otherwise see :func:`wait_until_asleep`.
        """
        now = self.activity()
        if now is not None and before is not None and now != before:
            return True
        return wait_until_asleep(self._pids, limit)

    def restart(self) -> None:
        """Forget what was seen: the check has just sent something, which may wake the target."""
        self._last = None
        self._since = self._clock()

    def check(self) -> str | None:
        """None while the target may still answer; else a sentence saying why it will not."""
        now = self._clock()
        pids = self._pids()
        activity = thread_activity(pids) if pids else None
        if activity is None or activity != self._last:
            self._last, self._since = activity, now
            return None
        asleep = now - self._since
        if asleep < self._proven_quiet:
            return None
        proven = asleep < self._quiet and cannot_wake_by_itself(pids)
        if asleep < self._quiet and not proven:
            return None
        queues = connection_queues(self._server_port, self._client_port)
        # Bytes on their way to us, or ours on their way with none arrived yet, or
        # no socket to judge by: not a stall. (Ours held back by a full receive
        # queue the target does not read are no excuse.)
        if queues is None or queues.unsent or (queues.in_flight > 0 and not queues.unread):
            self._since = now
            return None
        threads = len(activity)
        unread = f"{queues.unread} bytes of ours unread in its receive queue" if queues.unread else "everything we sent read"
        why = " waiting in calls without a timeout, no timer armed," if proven else ""
        return (
            f"the target's {threads} thread{'s' if threads != 1 else ''} slept {asleep:.2f} s without running once,{why} "
            f"with {unread} and nothing in its send queue: no reply is coming"
        )
