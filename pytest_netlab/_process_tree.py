"""Finding, and killing, every process a target started.

This module owns the Linux view of "everything that belongs to a target": the
``/proc`` scan (process group, session, and the marker variables in each
process's initial environment) and the optional cgroup-v1 ``pids`` group that
caps and lists a target's tasks. It must not start processes, and it must
never signal the calling process or any of its ancestors.

Two environment variables mark the processes the harness started, and every
process they start in turn (the environment is inherited across ``fork`` and
``exec``, including by children that call ``setsid()`` or double-fork):

* ``NETLAB_MARKER=<marker>``: one target instance;
* ``NETLAB_RUN=<run marker>``: every target of one pytest run (or xdist worker).

``/proc/PID/environ`` shows the environment a process was *exec'ed* with, so a
program that execs something with a cleared environment escapes the marker
scan. The process group, the session and the cgroup catch most of those.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

__all__ = [
    "MARKER_VARIABLE",
    "RUN_VARIABLE",
    "PidsCgroup",
    "check_marker",
    "children",
    "find_group_or_session",
    "find_marked",
    "kill_marked",
    "kill_until_gone",
    "process_tree",
    "protected_pids",
    "signal_pids",
]

MARKER_VARIABLE = "NETLAB_MARKER"
RUN_VARIABLE = "NETLAB_RUN"

# Markers end up in environment entries and cgroup directory names, so they
# are kept to characters that are safe in both; "." is reserved as the
# separator in cgroup names (see PidsCgroup).
_MARKER_SYNTAX = re.compile(r"[A-Za-z0-9_@:+-]{1,64}")

_PROC = Path("/proc")


def check_marker(marker: str, what: str = "marker") -> str:
    """Return ``marker`` unchanged, or raise ValueError saying what is allowed."""
    if not _MARKER_SYNTAX.fullmatch(marker):
        raise ValueError(
            f"invalid {what} {marker!r}: use 1 to 64 characters from A-Z a-z 0-9 _ @ : + -"
        )
    return marker


@dataclass(frozen=True)
class _ProcessStat:
    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str


def _read_stat(pid: int) -> _ProcessStat | None:
    try:
        raw = (_PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None  # gone, or not ours to read
    # The command name sits in parentheses and may itself contain ") ", so the
    # fixed fields start after the *last* closing parenthesis.
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return _ProcessStat(pid, int(fields[1]), int(fields[2]), int(fields[3]), fields[0].decode())
    except (IndexError, ValueError):
        return None


def _all_pids() -> Iterator[int]:
    try:
        names = os.listdir(_PROC)
    except OSError:
        return
    for name in names:
        if name.isdigit():
            yield int(name)


def children(pid: int) -> list[int]:
    """The live children of ``pid`` (empty if it is gone).

    From ``/proc/PID/task/TID/children`` where the kernel has it
    (CONFIG_PROC_CHILDREN, :data:`CHILDREN_LISTED`), else from a scan of
    every process's parent. A child that daemonised is its parent's no longer
    and is not listed.
    """
    if not CHILDREN_LISTED:
        return [child for child in _all_pids() if (stat := _read_stat(child)) is not None and stat.ppid == pid]
    found: list[int] = []
    try:
        tasks = os.listdir(_PROC / str(pid) / "task")
    except OSError:
        return found
    for tid in tasks:
        try:
            found.extend(int(child) for child in (_PROC / str(pid) / "task" / tid / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return found


def process_tree(root: int) -> list[int]:
    """``root`` and its live descendants (at most 4096: a fork bomb is the pids limit's business)."""
    found: list[int] = []
    stack = [root]
    while stack and len(found) < 4096:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children(pid))
    return found


#: Whether this kernel lists each task's children in /proc (CONFIG_PROC_CHILDREN).
CHILDREN_LISTED = (_PROC / str(os.getpid()) / "task" / str(os.getpid()) / "children").is_file()


def _environ_entries(pid: int) -> set[bytes]:
    try:
        return set((_PROC / str(pid) / "environ").read_bytes().split(b"\0"))
    except OSError:
        return set()  # gone, a kernel thread, or not readable by us


def protected_pids() -> set[int]:
    """Our own pid and every ancestor's: processes no cleanup may ever signal."""
    protected = {os.getpid()}
    pid = os.getppid()
    for _ in range(4096):  # bounded walk; the chain ends at pid 1 (or 0)
        if pid <= 0 or pid in protected:
            break
        protected.add(pid)
        stat = _read_stat(pid)
        pid = stat.ppid if stat else 0
    return protected


def find_marked(marker: str, variables: Sequence[str] = (MARKER_VARIABLE, RUN_VARIABLE)) -> list[int]:
    """Pids of live processes whose environment has ``VARIABLE=marker`` as an exact entry.

    Zombies are not listed: their environment is gone with their memory.
    """
    wanted = {f"{variable}={marker}".encode() for variable in variables}
    protected = protected_pids()
    return [pid for pid in _all_pids() if pid not in protected and wanted & _environ_entries(pid)]


def find_group_or_session(leader: int) -> list[int]:
    """Pids of live processes in process group ``leader`` or session ``leader``."""
    protected = protected_pids()
    found = []
    for pid in _all_pids():
        stat = _read_stat(pid)
        if stat and stat.state != "Z" and leader in (stat.pgid, stat.sid) and pid not in protected:
            found.append(pid)
    return found


def signal_pids(pids: Iterable[int], sig: int) -> list[int]:
    """Send ``sig`` to each pid that still exists; return the ones signalled."""
    protected = protected_pids()
    signalled = []
    for pid in pids:
        if pid in protected:
            continue
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            continue
        signalled.append(pid)
    return signalled


def kill_marked(
    marker: str,
    sig: int = signal.SIGKILL,
    *,
    variables: Sequence[str] = (MARKER_VARIABLE, RUN_VARIABLE),
) -> list[int]:
    """Signal every process carrying ``marker`` in one of ``variables``; return their pids.

    One pass: processes forked while it runs may be missed (see kill_until_gone).
    Never signals the calling process or its ancestors.

    Example:
        >>> kill_marked("no-such-marker-anywhere")
        []
    """
    check_marker(marker)
    return signal_pids(find_marked(marker, variables), sig)


def kill_until_gone(
    find: Callable[[], Iterable[int]], *, timeout: float, also: Callable[[], None] = lambda: None
) -> tuple[set[int], set[int]]:
    """SIGKILL whatever ``find()`` returns, again and again, until it returns nothing.

    A process may fork between a scan and the kill, so one pass is not enough;
    the loop is bounded by ``timeout``. ``also`` runs before each scan (for
    example ``killpg``, which reaches new group members without a scan).
    Returns (every pid killed, the pids still alive when time ran out).
    """
    deadline = time.monotonic() + timeout
    killed: set[int] = set()
    pause = 0.002
    while True:
        also()
        alive = set(find())
        if not alive or time.monotonic() >= deadline:
            return killed, alive
        killed.update(signal_pids(alive, signal.SIGKILL))
        # SIGKILL is delivered asynchronously; give the kernel a moment before
        # the next scan instead of re-signalling in a tight loop.
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


# --- cgroup v1 "pids" ---------------------------------------------------------

PIDS_CGROUP_MOUNT = Path("/sys/fs/cgroup/pids")


def _pids_cgroup_parent() -> Path | None:
    """Where our own task sits in the pids hierarchy, if that place is writable."""
    mount = PIDS_CGROUP_MOUNT
    if not (mount / "cgroup.procs").is_file():
        return None
    parent = mount
    try:
        for line in (_PROC / "self" / "cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "pids" in controllers.split(","):
                candidate = mount / path.lstrip("/")
                if candidate.is_dir():
                    parent = candidate
    except (OSError, ValueError):
        pass
    return parent if os.access(parent, os.W_OK) else None


class PidsCgroup:
    """A cgroup-v1 ``pids`` group that holds one target and everything it forks.

    It caps the number of tasks (``pids.max``; unlike RLIMIT_NPROC it binds
    root too) and lists every member, whatever session or environment a member
    gave itself. Optional: :meth:`create` returns None where the hierarchy is
    missing or not writable, and callers carry on without it.

    The directory is named ``netlab.<run marker>.<unique>`` (or
    ``netlab.<unique>`` without a run marker) so that the reaper can find the
    groups of its run after pytest died.

    Example:
        >>> group = PidsCgroup.create("", max_pids=64)
        >>> group is None or group.remove()  # None where cgroups are not available
        True
    """

    _counter = 0

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, run_marker: str, max_pids: int | None) -> PidsCgroup | None:
        """Make a fresh group under our own; None when cgroups are not available here."""
        parent = _pids_cgroup_parent()
        if parent is None:
            return None
        cls._counter += 1
        unique = f"{os.getpid()}-{cls._counter}-{secrets.token_hex(3)}"
        name = f"netlab.{run_marker}.{unique}" if run_marker else f"netlab.{unique}"
        group = cls(parent / name)
        try:
            group.path.mkdir()
            if max_pids is not None:
                (group.path / "pids.max").write_text(str(max_pids))
        except OSError:
            group.remove()
            return None
        return group

    @classmethod
    def of_run(cls, run_marker: str) -> list[PidsCgroup]:
        """The groups that targets of ``run_marker`` were put in (for the reaper)."""
        parent = _pids_cgroup_parent()
        if parent is None:
            return []
        return [cls(path) for path in parent.glob(f"netlab.{check_marker(run_marker)}.*") if path.is_dir()]

    def open_for_child(self) -> int:
        """An fd on ``cgroup.procs``: the child writes ``0`` to it to join, before exec."""
        return os.open(self.path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)

    def add(self, pid: int) -> None:
        """Move ``pid`` (all its threads) into the group; its later children are born in it.

        Raises:
            ProcessLookupError: ``pid`` is gone.
            OSError: the group is full (``pids.max``) or not writable.
        """
        with open(self.path / "cgroup.procs", "w") as procs:
            procs.write(str(pid))

    def members(self) -> list[int]:
        """Pids of the live processes in the group (zombies are not listed)."""
        try:
            return [int(pid) for pid in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def remove(self, timeout: float = 1.0) -> bool:
        """Kill what is left in the group and remove it; False if that did not work in time."""
        _, alive = kill_until_gone(self.members, timeout=timeout)
        try:
            self.path.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return not alive
