"""The scripted raw client against small in-test servers: exact bytes, bounded waits, teaching errors."""

from __future__ import annotations

import socket
import struct
import threading
from typing import Callable, Iterator

import pytest

from pytest_netlab.rawclient import ClosedEarly, ConnectFailed, ReceiveTimeout, ScriptedClient
from pytest_netlab.transcript import Transcript

Behaviour = Callable[[socket.socket], None]


@pytest.fixture
def serve() -> Iterator[Callable[[Behaviour], tuple[str, int]]]:
    """Run one connection's behaviour in a thread; the listener is closed at teardown."""
    listeners: list[socket.socket] = []
    threads: list[threading.Thread] = []

    def start(behaviour: Behaviour) -> tuple[str, int]:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(5)
        listeners.append(listener)

        def run() -> None:
            conn, _ = listener.accept()
            conn.settimeout(5)
            behaviour(conn)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)
        return listener.getsockname()

    yield start
    for listener in listeners:
        listener.close()
    for thread in threads:
        thread.join(5)


def echo_until_eof(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)


def test_exact_reads_and_half_close(serve: Callable[[Behaviour], tuple[str, int]]) -> None:
    transcript = Transcript()
    with ScriptedClient.connect(serve(echo_until_eof), transcript=transcript, stream="c1", timeout=2) as client:
        client.send_chunks(b"Beautiful is better than?", size=1, pause=0.001)
        assert client.recv_until(b"?") == b"Beautiful is better than?"
        client.send(b"0123456789")
        assert client.recv_exactly(4) + client.recv_exactly(6) == b"0123456789"
        client.shutdown_write()
        assert client.read_until_close() == (b"", "eof")
    kinds = [e.kind for e in transcript]
    assert kinds[0] == "connect" and "eof" in kinds and kinds[-1] == "close"


def test_silence_is_a_receive_timeout_saying_what_came(serve: Callable[[Behaviour], tuple[str, int]]) -> None:
    gate = threading.Event()

    def half_answer(conn: socket.socket) -> None:
        conn.recv(100)
        conn.sendall(b"Ug")
        gate.wait(5)
        conn.close()

    with ScriptedClient.connect(serve(half_answer), transcript=Transcript(), timeout=0.3) as client:
        client.send(b"Beautiful?")
        with pytest.raises(ReceiveTimeout) as error:
            client.recv_until(b".", what="the answer 'Ugly.'")
    gate.set()
    assert error.value.summary == "timed out after 0.3 s waiting for the answer 'Ugly.'"
    assert error.value.got == "2 bytes b'Ug', then silence"


def test_reset_is_reported_as_such(serve: Callable[[Behaviour], tuple[str, int]]) -> None:
    def reset(conn: socket.socket) -> None:
        conn.recv(100)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    with ScriptedClient.connect(serve(reset), transcript=Transcript(), timeout=2) as client:
        client.send(b"hello")
        with pytest.raises(ClosedEarly) as error:
            client.recv_exactly(5)
    assert error.value.how == "reset" and "RST" in error.value.got


def test_early_close_is_reported_with_the_bytes_received(serve: Callable[[Behaviour], tuple[str, int]]) -> None:
    def short(conn: socket.socket) -> None:
        conn.recv(100)
        conn.sendall(b"abc")
        conn.shutdown(socket.SHUT_WR)
        conn.recv(100)
        conn.close()

    with ScriptedClient.connect(serve(short), transcript=Transcript(), timeout=2) as client:
        client.send(b"x")
        with pytest.raises(ClosedEarly) as error:
            client.recv_exactly(10)
    assert error.value.how == "eof" and error.value.got == "3 bytes b'abc', then EOF"


def test_client_reset_sends_rst(serve: Callable[[Behaviour], tuple[str, int]]) -> None:
    seen: list[str] = []

    def observe(conn: socket.socket) -> None:
        try:
            seen.append("eof" if conn.recv(100) == b"" else "data")
        except ConnectionResetError:
            seen.append("reset")
        conn.close()

    client = ScriptedClient.connect(serve(observe), transcript=Transcript(), timeout=2)
    client.reset()
    for _ in range(100):
        if seen:
            break
        threading.Event().wait(0.02)
    assert seen == ["reset"]


def test_refused_connection() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectFailed, match=rf"could not connect to 127.0.0.1:{port}: refused"):
        ScriptedClient.connect(("127.0.0.1", port), transcript=Transcript(), timeout=1)
