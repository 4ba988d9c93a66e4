"""Scripted UDP clients: one socket, exact datagrams, bounded waits, a transcript.

A UDP conformance check must see what a datagram socket sees: each datagram
whole, and the address it came from (a server that answers from another
socket, or to another client, is wrong in a way only the source address
shows). :class:`ScriptedUDPClient` sends from its own ephemeral port with an
*unconnected* socket, so that the kernel hides nothing, records every
datagram into a :class:`~pytest_netlab.transcript.Transcript` with its
source when that is not the server, and bounds every wait. A read that gets
nothing raises :class:`NoDatagram`, a
:class:`~pytest_netlab.errors.ProtocolViolation` that already says what was
awaited, so a check can let it propagate.

This module must not know any protocol; checks say what to send and expect.
"""

from __future__ import annotations

import select
import socket
import time
from typing import NamedTuple, Sequence

from .errors import HarnessError, ProtocolViolation
from .transcript import CLIENT_TO_SERVER, SERVER_TO_CLIENT, Transcript

__all__ = ["NoDatagram", "Received", "ScriptedUDPClient", "wait_readable"]

# Larger than any UDP payload (65,507 bytes over IPv4, 65,527 over IPv6): a
# datagram is never cut on our side, so a short one is the target's doing.
_RECEIVE_SIZE = 65536


class NoDatagram(ProtocolViolation):
    """Nothing arrived within the time a read allowed."""


class Received(NamedTuple):
    """One datagram as the client received it.

    Attributes:
        data: the payload, whole.
        source: ``(host, port)`` it came from.
        t: when it arrived, in the transcript's seconds.
    """

    data: bytes
    source: tuple[str, int]
    t: float


def format_address(address: tuple[str, int]) -> str:
    """``127.0.0.1:5000`` or ``[::1]:5000``."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ScriptedUDPClient:
    """A UDP client on its own port that does exactly what a check scripts, and records it.

    Example::

        with ScriptedUDPClient(("127.0.0.1", port), transcript=t, stream="client1") as client:
            client.send(b"ping")
            reply = client.receive(timeout=2.0, what="the echo of b'ping'")
            assert reply.data == b"ping" and reply.source == client.server

    Args:
        server: where :meth:`send` sends: ``(host, port)``.
        transcript: where every datagram is recorded.
        stream: this client's label in the transcript.
        timeout: the default bound of every read, in seconds.
        local_host: the address to bind; by default the loopback address of
            the server's family (127.0.0.1 or ::1), port chosen by the OS.

    Raises:
        HarnessError: the socket could not be created or bound.
    """

    def __init__(
        self,
        server: tuple[str, int],
        *,
        transcript: Transcript,
        stream: str = "",
        timeout: float = 2.0,
        local_host: str | None = None,
    ) -> None:
        self.server = (server[0], server[1])
        self.transcript = transcript
        self.stream = stream
        self.timeout = timeout
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sock.bind((local_host or ("::1" if family == socket.AF_INET6 else "127.0.0.1"), 0))
        except OSError as error:
            self.sock.close()
            raise HarnessError(f"could not bind a UDP client socket: {error}") from error
        self.sock.setblocking(False)
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self.sent_count = 0
        self.received_count = 0
        self.closed = False

    def fileno(self) -> int:
        """The socket's descriptor, so clients can be waited on together (:func:`wait_readable`)."""
        return self.sock.fileno()

    def send(self, data: bytes, to: tuple[str, int] | None = None) -> None:
        """Send one datagram to the server (or ``to``); it never blocks.

        Raises:
            HarnessError: the kernel refused it (too big, or no buffer space).
        """
        target = to or self.server
        try:
            self.sock.sendto(data, target)
        except OSError as error:
            raise HarnessError(f"could not send a {len(data)}-byte datagram to {format_address(target)}: {error}") from error
        self.sent_count += 1
        # Numbered, so that the transcript shows datagrams one by one (it merges unlabelled data).
        note = f"#{self.sent_count}" + ("" if target == self.server else f" to {format_address(target)}")
        self.transcript.record(CLIENT_TO_SERVER, "data", data, note, self.stream)

    def try_receive(self, timeout: float) -> Received | None:
        """The next datagram, or None when nothing arrives within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                data, source = self.sock.recvfrom(_RECEIVE_SIZE)
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not wait_readable([self], remaining):
                    return None
                continue
            except ConnectionRefusedError:
                continue  # an ICMP error left by an earlier datagram to a closed port: not a datagram
            source = (source[0], source[1])
            self.received_count += 1
            note = f"#{self.received_count}" + ("" if source == self.server else f" from {format_address(source)}")
            event = self.transcript.record(SERVER_TO_CLIENT, "data", data, note, self.stream)
            return Received(data, source, event.t)

    def receive(self, timeout: float | None = None, what: str = "a reply") -> Received:
        """The next datagram; :class:`NoDatagram` when nothing arrives in time.

        Args:
            timeout: seconds to wait; the client's default when None.
            what: what was awaited, in words, for the failure message.
        """
        wait = self.timeout if timeout is None else timeout
        received = self.try_receive(wait)
        if received is None:
            self.transcript.record(SERVER_TO_CLIENT, "timeout", note=f"nothing within {wait:.1f} s", stream=self.stream)
            raise NoDatagram(
                f"no datagram came back within {wait:.1f} s",
                expected=what,
                got="nothing",
            )
        return received

    def drain(self) -> list[Received]:
        """Every datagram already waiting, without waiting for more."""
        got: list[Received] = []
        while True:
            received = self.try_receive(0.0)
            if received is None:
                return got
            got.append(received)

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if not self.closed:
            self.closed = True
            self.sock.close()

    def __enter__(self) -> ScriptedUDPClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_readable(clients: Sequence[ScriptedUDPClient], timeout: float) -> list[ScriptedUDPClient]:
    """The clients with a datagram waiting, after at most ``timeout`` seconds (poll: no descriptor limit)."""
    poller = select.poll()
    by_fd = {client.fileno(): client for client in clients}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    events = poller.poll(max(0.0, timeout) * 1000.0)
    return [by_fd[fd] for fd, _ in events if fd in by_fd]
