"""Telling a target that cannot wake by itself (pytest_netlab/_blocking_calls.py): tables, then real processes."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap
from typing import Iterator

import pytest

from pytest_netlab._blocking_calls import GENERIC, X86_64, cannot_wake_by_itself, waits_without_timeout
from pytest_netlab.stall import wait_until_asleep


def line(number: int, *arguments: int) -> str:
    """A /proc/PID/syscall line: the call, six arguments, then sp and pc."""
    padded = (list(arguments) + [0] * 6)[:6]
    return " ".join([str(number), *(hex(value) for value in padded), "0x7ffd1000", "0x7f001000"])


@pytest.mark.parametrize(
    "text, forever",
    [
        (line(288, 3, 0, 0, 0x80000), True),  # accept4
        (line(45, 5, 0x7F00, 4096), True),  # recvfrom
        (line(7, 0x7F00, 1, 0xFFFFFFFF), True),  # poll(-1)
        (line(7, 0x7F00, 1, 0xFFFFFFFFFFFFFFFF), True),  # poll(-1), sign-extended
        (line(7, 0x7F00, 1, 500), False),  # poll(500 ms)
        (line(7, 0x7F00, 1, 0), False),  # poll(0) returns at once
        (line(232, 4, 0x7F00, 16, 0xFFFFFFFF), True),  # epoll_wait(-1)
        (line(232, 4, 0x7F00, 16, 20), False),  # epoll_wait(20 ms): asyncio with a timer
        (line(23, 4, 0x7F00, 0, 0, 0), True),  # select with no timeval
        (line(23, 4, 0x7F00, 0, 0, 0x7FFD0), False),  # select with one
        (line(271, 0x7F00, 1, 0), True),  # ppoll(NULL)
        (line(202, 0x7F00, 0x80, 0, 0), True),  # futex FUTEX_WAIT_PRIVATE, no timeout: a lock
        (line(202, 0x7F00, 0x189, 0, 0x7FFD0), False),  # FUTEX_WAIT_BITSET|PRIVATE|CLOCK_REALTIME with a deadline
        (line(202, 0x7F00, 0x81, 1), False),  # FUTEX_WAKE is not a wait
        (line(230, 1, 0, 0x7FFD0), False),  # clock_nanosleep: time.sleep()
        (line(35, 0x7FFD0), False),  # nanosleep
        (line(9999), False),  # a call we do not know
        ("running", False),
        ("-1 0x7ffd1000 0x7f001000", False),  # blocked outside a call (stopped)
        ("", False),
    ],
)
def test_x86_64_calls(text: str, forever: bool) -> None:
    assert waits_without_timeout(text, X86_64) is forever


def test_the_generic_table_has_its_own_numbers() -> None:
    assert waits_without_timeout(line(242, 3), GENERIC)  # accept4 on arm64
    assert not waits_without_timeout(line(7, 0x7F00, 1, 0xFFFFFFFF), GENERIC)  # 7 is not poll there
    assert waits_without_timeout(line(22, 4, 0x7F00, 16, 0xFFFFFFFF), GENERIC)  # epoll_pwait(-1)


# --- real processes -------------------------------------------------------------------

TIMERFD = """
import ctypes, struct
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.timerfd_create(1, 0)  # CLOCK_MONOTONIC
spec = struct.pack("4q", 0, 0, 60, 0)  # fires once, in 60 s
assert libc.timerfd_settime(fd, 0, ctypes.c_char_p(spec), None) == 0
"""
PROGRAMS = {
    "accepts": ("", "listener.accept()", True),
    "a thread waits on a lock, the other accepts": (
        "import threading; threading.Thread(target=threading.Event().wait, daemon=True).start()",
        "listener.accept()",
        True,
    ),
    "sleeps": ("", "time.sleep(60)", False),
    "a thread waits with a timeout": (
        "import threading; threading.Thread(target=threading.Event().wait, args=(60,), daemon=True).start()",
        "listener.accept()",
        False,
    ),
    "polls every 0.5 s": ("import selectors; s = selectors.DefaultSelector(); s.register(listener, selectors.EVENT_READ)", "while True: s.select(0.5)", False),
    "accepts with a timerfd armed": (TIMERFD, "listener.accept()", False),
}


@pytest.fixture
def program() -> Iterator:
    started: list[subprocess.Popen[str]] = []

    def start(setup: str, wait: str) -> subprocess.Popen[str]:
        source = "import socket, time\nlistener = socket.create_server(('127.0.0.1', 0))\n" + textwrap.dedent(setup) + "\nprint('ready', flush=True)\n" + wait
        process = subprocess.Popen([sys.executable, "-c", source], stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        assert wait_until_asleep(lambda: [process.pid], limit=10)
        return process

    yield start
    for process in started:
        process.kill()
        process.wait(timeout=10)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="no system call table for this machine: the answer is always False")
@pytest.mark.parametrize("name", list(PROGRAMS))
def test_real_waits(program, name: str) -> None:
    setup, wait, forever = PROGRAMS[name]
    process = program(setup, wait)
    assert cannot_wake_by_itself([process.pid]) is forever


def test_a_process_that_is_gone_may_wake() -> None:
    process = subprocess.Popen(["true"])
    process.wait(timeout=10)
    assert not cannot_wake_by_itself([process.pid])
    assert not cannot_wake_by_itself([])
