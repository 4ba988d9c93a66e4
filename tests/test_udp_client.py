"""The scripted UDP client on real loopback sockets: datagrams whole, sources seen, waits bounded, all recorded."""

from __future__ import annotations

import os
import socket
import threading
from typing import Iterator

import pytest

from pytest_netlab.errors import HarnessError
from pytest_netlab.transcript import CLIENT_TO_SERVER, SERVER_TO_CLIENT, Transcript
from pytest_netlab.udp_client import NoDatagram, ScriptedUDPClient, wait_readable

TIMEOUT = 5.0
LARGEST_IPV4_PAYLOAD = 65507


class Peer:
    """A UDP socket that answers each datagram with ``reply(data)``, from itself or from a second socket."""

    def __init__(self, reply_from_other_socket: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.other.bind(("127.0.0.1", 0))
        self.address = self.sock.getsockname()
        self.reply_from_other_socket = reply_from_other_socket
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, address = self.sock.recvfrom(65536)
            except socket.timeout:
                continue
            (self.other if self.reply_from_other_socket else self.sock).sendto(data, address)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        self.sock.close()
        self.other.close()


@pytest.fixture
def peer() -> Iterator[Peer]:
    echo = Peer()
    yield echo
    echo.close()


def test_a_datagram_goes_out_and_its_echo_comes_back_whole_and_recorded(peer: Peer) -> None:
    transcript = Transcript()
    payload = os.urandom(LARGEST_IPV4_PAYLOAD)
    with ScriptedUDPClient(peer.address, transcript=transcript, stream="c1") as client:
        client.send(b"hello")
        first = client.receive(TIMEOUT)
        client.send(payload)
        second = client.receive(TIMEOUT)
    assert (first.data, first.source) == (b"hello", peer.address)
    assert second.data == payload
    notes = [(e.direction, e.note, e.stream) for e in transcript]
    assert notes == [(CLIENT_TO_SERVER, "#1", "c1"), (SERVER_TO_CLIENT, "#1", "c1"), (CLIENT_TO_SERVER, "#2", "c1"), (SERVER_TO_CLIENT, "#2", "c1")]
    # Numbered notes keep datagrams apart in excerpts: two sends are never shown as one.
    assert "b'hello' #1" in transcript.excerpt()
    assert first.t <= second.t


def test_a_reply_from_another_address_is_kept_and_its_source_noted() -> None:
    transcript = Transcript()
    stranger = Peer(reply_from_other_socket=True)
    other = stranger.other.getsockname()
    try:
        with ScriptedUDPClient(stranger.address, transcript=transcript) as client:
            client.send(b"who answers?")
            received = client.receive(TIMEOUT)
    finally:
        stranger.close()
    assert received.source == other
    assert transcript.events[-1].note == f"#1 from 127.0.0.1:{received.source[1]}"


def test_silence_raises_no_datagram_and_is_recorded() -> None:
    transcript = Transcript()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        with ScriptedUDPClient(sink.getsockname(), transcript=transcript, timeout=0.05) as client:
            client.send(b"anyone?")
            assert client.try_receive(0.05) is None
            with pytest.raises(NoDatagram) as caught:
                client.receive(what="the echo of b'anyone?'")
    assert caught.value.expected == "the echo of b'anyone?'"
    assert caught.value.got == "nothing"
    assert transcript.events[-1].kind == "timeout"


def test_drain_returns_what_waits_and_wait_readable_names_who(peer: Peer) -> None:
    transcript = Transcript()
    with ScriptedUDPClient(peer.address, transcript=transcript) as busy, ScriptedUDPClient(peer.address, transcript=transcript) as idle:
        busy.send(b"one")
        busy.send(b"two")
        assert wait_readable([busy, idle], TIMEOUT) == [busy]
        got: list[bytes] = []
        while len(got) < 2:
            assert wait_readable([busy], TIMEOUT)
            got += [r.data for r in busy.drain()]
        assert sorted(got) == [b"one", b"two"]
        assert wait_readable([busy, idle], 0.0) == []


def test_sending_to_another_address_is_noted(peer: Peer) -> None:
    transcript = Transcript()
    with ScriptedUDPClient(("127.0.0.1", 9), transcript=transcript) as client:
        client.send(b"detour", to=peer.address)
        assert client.receive(TIMEOUT).source == peer.address
    assert transcript.events[0].note == f"#1 to 127.0.0.1:{peer.address[1]}"


def test_a_datagram_too_big_for_udp_is_our_error_not_the_targets(peer: Peer) -> None:
    with ScriptedUDPClient(peer.address, transcript=Transcript()) as client:
        with pytest.raises(HarnessError, match="65508-byte datagram"):
            client.send(b"x" * (LARGEST_IPV4_PAYLOAD + 1))


def test_close_is_idempotent_and_leaves_no_descriptor(peer: Peer) -> None:
    before = set(os.listdir("/proc/self/fd"))
    client = ScriptedUDPClient(peer.address, transcript=Transcript())
    client.close()
    client.close()
    assert set(os.listdir("/proc/self/fd")) == before
