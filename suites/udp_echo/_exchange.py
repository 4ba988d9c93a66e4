"""How the udp-echo checks talk to the server: datagrams, their echoes, and what to say when one is wrong.

A UDP echo server owes each datagram one answering datagram, with the same
bytes, sent to the datagram's source from the address the client sent to.
These helpers send, wait (resending where a loss on the way is legitimate),
and turn what came back into a verdict. They judge the source address only
when asked: a reply from the wrong socket is the concern of the addressing
checks, not of the payload checks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pytest_netlab.context import CheckContext
from pytest_netlab.errors import ProtocolViolation
from pytest_netlab.transcript import format_bytes
from pytest_netlab.udp_client import Received, ScriptedUDPClient, format_address, wait_readable

__all__ = ["ATTEMPTS", "ECHO_WAIT", "EchoClient", "collect_echoes", "echo_once", "expect_echo_from_server", "judge_echo", "open_client", "token"]

# On loopback a datagram is lost only when a socket buffer overflows, which a
# loaded machine can still cause: a probe is resent this many times in all.
ATTEMPTS = 3
# Seconds (before --netlab-timeout-scale) to wait for the first echo; each resend waits longer.
ECHO_WAIT = 0.5

def token(ctx: CheckContext, label: str) -> bytes:
    """A short ASCII payload no other datagram of the check shares."""
    return f"netlab {label} {ctx.rng.randbytes(6).hex()}".encode()


@dataclass
class EchoClient:
    """A scripted client and the payloads it sent, so a late echo of an old one is recognised."""

    client: ScriptedUDPClient
    sent: list[bytes] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.client.stream

    def send(self, payload: bytes) -> None:
        self.sent.append(payload)
        self.client.send(payload)


def open_client(ctx: CheckContext, label: str, address: tuple[str, int] | None = None) -> EchoClient:
    """A scripted UDP client to the target, recorded in the check's transcript, closed at the end."""
    client = ScriptedUDPClient(address or ctx.address, transcript=ctx.transcript, stream=label, timeout=ctx.timeout(ECHO_WAIT))
    ctx.add_cleanup(client.close)
    return EchoClient(client)


def echo_once(ctx: CheckContext, echo: EchoClient, payload: bytes, *, judge_source: bool, what: str | None = None) -> Received:
    """Send ``payload`` and return its echo, resending up to ``ATTEMPTS`` times on silence.

    A late echo of a payload this client sent earlier is skipped; any other
    datagram is judged: it must be ``payload`` (and come from the server when
    ``judge_source``), or the check fails saying what differs.
    """
    what = what or f"the echo of {format_bytes(payload)}"
    for attempt in range(ATTEMPTS):
        echo.send(payload)
        deadline = time.monotonic() + ctx.timeout(ECHO_WAIT) * (attempt + 1)
        while True:
            received = echo.client.try_receive(max(0.0, deadline - time.monotonic()))
            if received is None:
                break
            if received.data != payload and received.data in echo.sent:
                continue  # the late echo of an earlier datagram: UDP allows it
            judge_echo(ctx, echo, payload, received, judge_source=judge_source)
            return received
    raise ProtocolViolation(
        f"no echo came back for a {len(payload)}-byte datagram, sent {ATTEMPTS} times",
        expected=what + f", sent to {format_address(echo.client.address)}",
        got=f"nothing within {ctx.timeout(ECHO_WAIT) * (ATTEMPTS + 1) * ATTEMPTS / 2:.1f} s",
        hint="answer every datagram with sendto(data, address), address being what recvfrom() returned",
    )


def judge_echo(ctx: CheckContext, echo: EchoClient, payload: bytes, received: Received, *, judge_source: bool) -> None:
    """Fail unless ``received`` is the echo of ``payload`` (from the server, when ``judge_source``)."""
    if received.data != payload:
        describe_wrong_payload(echo, payload, received)
    if judge_source:
        expect_echo_from_server(ctx, echo, received)


def describe_wrong_payload(echo: EchoClient, payload: bytes, received: Received) -> None:
    got = received.data
    if len(got) < len(payload) and payload.startswith(got):
        raise ProtocolViolation(
            f"the echo of a {len(payload)}-byte datagram came back with only its first {len(got)} bytes",
            expected=f"one datagram of {len(payload)} bytes, the whole datagram",
            got=f"{len(got)} bytes: the datagram was cut",
            hint=(
                "recvfrom(n) returns at most n bytes of a datagram and discards the rest: "
                "receive with a buffer of 65535 bytes, the largest UDP datagram"
            ),
        )
    if len(got) > len(payload) and got.startswith(payload):
        raise ProtocolViolation(
            f"{echo.label} got {len(got)} bytes back for a {len(payload)}-byte datagram: more than it sent",
            expected=format_bytes(payload),
            got=format_bytes(got),
            hint="answer each datagram with exactly one datagram of its bytes; never join datagrams",
        )
    raise ProtocolViolation(
        f"{echo.label} got a datagram that is not the echo of what it sent",
        expected=format_bytes(payload),
        got=format_bytes(got),
        hint="send back the bytes you received, unchanged: do not decode, strip or re-encode them",
    )


def expect_echo_from_server(ctx: CheckContext, echo: EchoClient, received: Received) -> None:
    """Fail unless the echo came from the address the client sent to."""
    server = echo.client.server
    if received.source != server:
        raise ProtocolViolation(
            f"the echo came from {format_address(received.source)}, not from {format_address(server)}, "
            "where the client sent its datagram",
            expected=f"the echo sent from {format_address(server)}",
            got=f"the echo sent from {format_address(received.source)}",
            hint=(
                "reply with the socket that received the datagram; a client that connect()s its "
                "socket (FOPNP ch. 2) never sees a reply from another port"
            ),
        )


def collect_echoes(ctx: CheckContext, clients: list[EchoClient], payloads: list[bytes], wait: float) -> dict[int, Received]:
    """Wait up to ``wait`` seconds for one echo per client; judge each one as it comes."""
    got: dict[int, Received] = {}
    by_client = {id(echo.client): index for index, echo in enumerate(clients)}
    deadline = time.monotonic() + wait
    while len(got) < len(clients):
        waiting = [echo.client for index, echo in enumerate(clients) if index not in got]
        ready = wait_readable(waiting, deadline - time.monotonic())
        if not ready:
            return got
        for client in ready:
            index = by_client[id(client)]
            received = client.try_receive(0.0)
            if received is None:
                continue
            expected = payloads[index]
            if received.data != expected:
                owner = next((i for i, p in enumerate(payloads) if p == received.data), None)
                if owner is not None and owner != index:
                    raise ProtocolViolation(
                        f"{clients[index].label} got the echo of {clients[owner].label}'s datagram",
                        expected=f"{clients[index].label} gets {format_bytes(expected)}, its own datagram",
                        got=f"{format_bytes(received.data)}, sent by {clients[owner].label} "
                        f"from {format_address(clients[owner].client.address)}",
                        hint=(
                            "reply to the address that came with this datagram; a variable shared "
                            "between threads (the last client seen) sends replies to the wrong client"
                        ),
                    )
                if received.data in clients[index].sent:
                    continue
                describe_wrong_payload(clients[index], expected, received)
            expect_echo_from_server(ctx, clients[index], received)
            got[index] = received
    return got
