"""What the tls-echo checks say over an established connection, and the common-check protocol.

This module owns the suite's :class:`TcpProtocol` (an echo request inside
TLS, and the first bytes of a ClientHello as the "half request"), the echo
exchanges the checks repeat (one message, a windowed 1 MiB stream), and the
two follow-ups several checks share: "is a correct client still served?"
and "is a client with this certificate served?".

It must not decide which checks exist (``__init__.py`` does) nor build
contexts (``_handshake.py`` does).
"""

from __future__ import annotations

import random

from pytest_netlab.context import CheckContext
from pytest_netlab.errors import ProtocolViolation
from pytest_netlab.rawclient import ScriptedClient
from pytest_netlab.transcript import format_bytes

from ..common_tcp import TcpProtocol, exchange
from ._handshake import TLSLayerError, attempt_handshake, suite_client_context, tls_connect

__all__ = ["PROTOCOL", "expect_echo", "echo_windowed", "still_serves", "served_with_certificate", "partial_client_hello"]


def _example(rng: random.Random) -> tuple[bytes, bytes]:
    message = b"netlab tls echo " + rng.randbytes(16).hex().encode() + b"\n"
    return message, message


def partial_client_hello(rng: random.Random) -> bytes:
    """The first 43 bytes of a 517-byte ClientHello record: a server must wait for the rest."""
    record_header = b"\x16\x03\x01\x02\x00"  # handshake record, record version TLS 1.0, 512 bytes follow
    handshake_header = b"\x01\x00\x01\xfc"  # ClientHello, 508 bytes follow
    return record_header + handshake_header + b"\x03\x03" + rng.randbytes(32)


def _connect(ctx: CheckContext, address: tuple[str, int], label: str) -> ScriptedClient:
    return tls_connect(ctx, address, label)


#: tls-echo as the common checks see it: requests travel inside a verified TLS
#: connection; the stalled and reset clients stop in the middle of a ClientHello.
PROTOCOL = TcpProtocol(example=_example, partial_request=partial_client_hello, connect=_connect)


def expect_echo(ctx: CheckContext, client: ScriptedClient, message: bytes, timeout: float = 3.0) -> None:
    """Send ``message`` and demand exactly it back."""
    client.send(message)
    got = client.recv_exactly(len(message), timeout=ctx.timeout(timeout), what=f"the echo of {format_bytes(message)}")
    ctx.expect(got == message, "the echo differs from what was sent", expected=format_bytes(message), got=format_bytes(got))


def echo_windowed(ctx: CheckContext, client: ScriptedClient, payload: bytes, *, record: int, window: int) -> None:
    """Send ``payload`` in ``record``-sized writes, keeping at most ``window`` bytes unechoed.

    One thread sends and reads in turn (an SSL object must not be used by
    two threads at once); the window keeps both sides' buffers far from
    full, so a correct server never blocks and neither does the check.
    """
    received = bytearray()
    sent = 0

    def read_until(count: int) -> None:
        while len(received) < count:
            try:
                chunk = client.recv_some(timeout=ctx.timeout(3.0))
            except TLSLayerError:
                raise
            except ProtocolViolation as violation:
                ctx.fail(
                    f"the echo stalled: {len(received)} of {len(payload)} bytes came back ({len(payload) - len(received)} missing)",
                    expected=f"all {len(payload)} bytes back while the client sends {record // 1024} KiB records",
                    got=f"{len(received)} bytes back after {sent} sent, then {violation.summary}",
                    hint="a TLS socket can hold decrypted bytes that select()/poll() do not see: read whole records "
                    "(recv(65536)), or go on reading while ssl_socket.pending() > 0",
                )
            if not chunk:
                ctx.fail(
                    f"the server closed the connection after echoing {len(received)} of {len(payload)} bytes",
                    expected="the echo of every byte",
                    got=f"{len(received)} bytes back after {sent} sent, then EOF",
                )
            received.extend(chunk)

    for offset in range(0, len(payload), record):
        client.send(payload[offset : offset + record])
        sent = min(len(payload), offset + record)
        read_until(max(0, sent - window))
    read_until(len(payload))
    if bytes(received[: len(payload)]) != payload:
        first = next(i for i, (a, b) in enumerate(zip(payload, received)) if a != b)
        ctx.fail(
            f"the echo of {len(payload)} bytes differs from what was sent, from offset {first}",
            expected=format_bytes(payload[first : first + 16]),
            got=format_bytes(bytes(received[first : first + 16])),
        )


def still_serves(ctx: CheckContext, after: str) -> None:
    """A refused or odd client must cost the server that connection only (FOPNP ch. 6, B:3817)."""
    try:
        exchange(ctx, tls_connect(ctx, ctx.address, "next-client"), PROTOCOL)
    except ProtocolViolation as violation:
        raise ProtocolViolation(
            f"after {after}, the server no longer serves a correct client",
            expected="a failed handshake ends that one connection; the next client is served",
            got=violation.got or violation.summary,
            hint="catch ssl.SSLError (and OSError) around each handshake, close that connection and keep accepting",
        ) from None


def served_with_certificate(ctx: CheckContext, client_cert: str, label: str) -> tuple[bool, str]:
    """Whether a client presenting ``client_cert`` gets an echo, and what happened, in words."""
    attempt = attempt_handshake(ctx, suite_client_context(client_cert=client_cert), label=label)
    with attempt.client:
        if not attempt.completed:
            return False, attempt.describe()
        # TLS 1.3: the server judges the client's certificate after the client's
        # handshake is done, so its refusal comes as an alert on the first read.
        message = b"may I? " + ctx.random_bytes(6).hex().encode() + b"\n"
        try:
            attempt.client.send(message)
            got = attempt.client.recv_exactly(len(message), timeout=ctx.timeout(3.0), what="the echo")
        except ProtocolViolation as violation:
            return False, f"{attempt.describe()}, then {violation.summary}"
        return got == message, f"{attempt.describe()}, then the echo {format_bytes(got)}"
