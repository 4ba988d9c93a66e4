"""The stall watch (pytest_netlab/stall.py) against real processes: hung, reading, polling, sending."""

from __future__ import annotations

import platform
import signal
import socket
import subprocess
import sys
import textwrap
import time
from typing import Iterator

import pytest

from pytest_netlab import _process_tree
from pytest_netlab.stall import ConnectionQueues, StallWatch, connection_queues, ignores_signal, process_tree, thread_activity

# A server that prints its port, accepts one client, then does what BEHAVIOUR says.
SERVER = """
import socket, sys, time, threading
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
{behaviour}
"""
NEVER_READS = "time.sleep(60)"
ACCEPTS_AGAIN = "listener.accept()"
READS_THEN_SLEEPS = "conn.recv(100); time.sleep(60)"
POLLS = "conn.setblocking(False)\nwhile True:\n    time.sleep(0.02)"
FLOODS_THEN_SLEEPS = "conn.setblocking(False)\ntry:\n    while True: conn.send(b'x' * 65536)\nexcept BlockingIOError:\n    pass\ntime.sleep(60)"
WITH_A_CHILD = "import subprocess; child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); print(child.pid, flush=True); time.sleep(60)"


@pytest.fixture
def serve() -> Iterator:
    started: list[subprocess.Popen[str]] = []

    def start(behaviour: str) -> tuple[subprocess.Popen[str], socket.socket]:
        source = textwrap.dedent(SERVER).format(behaviour=behaviour)
        process = subprocess.Popen([sys.executable, "-c", source], stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout is not None
        port = int(process.stdout.readline())
        client = socket.create_connection(("127.0.0.1", port), timeout=10)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        return process, client

    yield start
    for process in started:
        process.kill()
        process.wait(timeout=10)


def watch_on(process: subprocess.Popen[str], client: socket.socket, quiet: float = 0.2, proven_quiet: float | None = None) -> StallWatch:
    server_port, client_port = client.getpeername()[1], client.getsockname()[1]
    return StallWatch(
        lambda: process_tree(process.pid), server_port=server_port, client_port=client_port, quiet=quiet, proven_quiet=proven_quiet
    )


def first_stall(watch: StallWatch, within: float) -> tuple[str | None, float]:
    """Ask the watch every 20 ms until it reports a stall or ``within`` seconds pass."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        why = watch.check()
        if why:
            return why, time.monotonic() - started
        time.sleep(0.02)
    return None, within


def test_a_server_that_never_reads_is_stalled_with_our_bytes_unread(serve) -> None:
    process, client = serve(NEVER_READS)
    client.sendall(b"x" * 53)
    why, after = first_stall(watch_on(process, client), within=10)
    assert why is not None and "53 bytes of ours unread in its receive queue" in why and "no reply is coming" in why
    assert after >= 0.2


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="no system call table for this machine")
def test_a_server_blocked_in_accept_is_stalled_after_the_short_quiet_period(serve) -> None:
    process, client = serve(ACCEPTS_AGAIN)
    client.sendall(b"x" * 53)
    why, after = first_stall(watch_on(process, client, quiet=5.0, proven_quiet=0.05), within=10)
    assert why is not None and "waiting in calls without a timeout, no timer armed" in why and "53 bytes of ours unread" in why
    assert 0.05 <= after < 4.0


def test_our_bytes_held_back_by_a_full_receive_queue_are_no_excuse(serve) -> None:
    # What a half-close or bulk check does to a server that never reads: our send queue stays full.
    process, client = serve(ACCEPTS_AGAIN)
    client.setblocking(False)
    try:
        while True:
            client.send(b"x" * 65536)
    except BlockingIOError:
        pass
    queues = connection_queues(client.getpeername()[1], client.getsockname()[1])
    assert queues is not None and queues.in_flight > 0 and queues.unread > 0
    why, _ = first_stall(watch_on(process, client, quiet=0.3), within=10)
    assert why is not None and "bytes of ours unread in its receive queue" in why


def test_a_server_in_a_timed_sleep_gets_the_full_quiet_period(serve) -> None:
    process, client = serve(NEVER_READS)  # time.sleep(60): a timer, which could wake it to answer
    client.sendall(b"x" * 53)
    why, after = first_stall(watch_on(process, client, quiet=0.5, proven_quiet=0.05), within=10)
    assert why is not None and "calls without a timeout" not in why
    assert after >= 0.5


def test_a_server_that_read_and_sleeps_is_stalled_with_everything_read(serve) -> None:
    process, client = serve(READS_THEN_SLEEPS)
    client.sendall(b"question?")
    why, _ = first_stall(watch_on(process, client), within=10)
    assert why is not None and "everything we sent read" in why


def test_a_server_polling_on_a_timer_is_never_stalled(serve) -> None:
    process, client = serve(POLLS)
    client.sendall(b"question?")
    why, _ = first_stall(watch_on(process, client), within=1.5)
    assert why is None


def test_bytes_in_the_servers_send_queue_are_not_a_stall(serve) -> None:
    # The client does not read: the server's send queue stays full while it sleeps.
    process, client = serve(FLOODS_THEN_SLEEPS)
    deadline = time.monotonic() + 10
    server_port, client_port = client.getpeername()[1], client.getsockname()[1]
    while (queues := connection_queues(server_port, client_port)) is None or not queues.unsent:
        assert time.monotonic() < deadline, "the server never filled its send queue"
        time.sleep(0.02)
    why, _ = first_stall(watch_on(process, client), within=1.0)
    assert why is None


def test_what_the_client_sends_restarts_the_quiet_period(serve) -> None:
    process, client = serve(NEVER_READS)
    watch = watch_on(process, client, quiet=0.3)
    why, _ = first_stall(watch, within=10)
    assert why is not None
    watch.restart()
    assert watch.check() is None  # a fresh quiet period starts with what we just sent


def test_the_tree_holds_children_and_a_busy_process_is_awake(serve, monkeypatch: pytest.MonkeyPatch) -> None:
    process, _ = serve(WITH_A_CHILD)
    assert process.stdout is not None
    child = int(process.stdout.readline())
    assert set(process_tree(process.pid)) == {process.pid, child}
    # Without /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN), a scan of every parent pid finds the same.
    monkeypatch.setattr(_process_tree, "CHILDREN_LISTED", False)
    assert set(process_tree(process.pid)) == {process.pid, child}
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        assert thread_activity([busy.pid]) is None  # running (or runnable): never a stall
    finally:
        busy.kill()
        busy.wait(timeout=10)


def test_sig_ign_is_read_from_proc() -> None:
    # SIGINT caught explicitly: a pytest started as a background job passes SIGINT on ignored.
    source = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "signal.signal(signal.SIGINT, signal.default_int_handler); print('ready', flush=True); time.sleep(60)"
    )
    process = subprocess.Popen([sys.executable, "-c", source], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        assert ignores_signal(process.pid, signal.SIGTERM)
        assert not ignores_signal(process.pid, signal.SIGINT)  # Python catches SIGINT, it does not ignore it
    finally:
        process.kill()
        process.wait(timeout=10)


def test_unknown_connection_has_no_queues() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        unused = probe.getsockname()[1]
    assert connection_queues(unused, unused) is None


def test_queues_show_both_ends(serve) -> None:
    process, client = serve(NEVER_READS)
    client.sendall(b"x" * 53)
    server_port, client_port = client.getpeername()[1], client.getsockname()[1]
    deadline = time.monotonic() + 10
    while (queues := connection_queues(server_port, client_port)) is None or queues.in_flight:
        assert time.monotonic() < deadline, f"our bytes were never acknowledged: {queues}"
        time.sleep(0.01)
    assert queues == ConnectionQueues(unsent=0, unread=53, in_flight=0)
