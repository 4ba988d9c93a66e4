"""tcp-echo: RFC 862 echo over TCP, and the common TCP server checks.

The target listens on ``{host}:{port}`` and sends back every byte it
receives, in order, until the client closes or half-closes; after a
half-close it finishes sending what it owes and closes with a FIN.

RFC 862: "Once a connection is established any data received is sent back.
This continues until the calling user terminates the connection."
"""

from __future__ import annotations

import random
import threading
import time

from pytest_netlab.context import CheckContext
from pytest_netlab.registry import Role, Suite, register_suite
from pytest_netlab.transcript import format_bytes

from ..bulk_transfer import SendProgress, first_difference, read_bulk, stop_sender
from ..common_tcp import TcpProtocol, add_common_checks
from ..wire_close import evidence_note, expect_no_reset_after_fin

SUITE = register_suite(
    Suite(
        "tcp-echo",
        Role.SERVER,
        title="TCP echo server (RFC 862)",
        placeholders=("host", "port"),
        description="Echoes every byte back until the client closes or half-closes; then finishes sending and closes.",
    )
)

RFC = "RFC 862"
BOOK_SENDALL = 'FOPNP ch. 3 "TCP Sockets" (send() may send only part; use sendall())'
BOOK_HALF_CLOSE = 'FOPNP ch. 5 "Framing and Quoting"; ch. 3 "Half-Open Connections" (shutdown)'
# Larger than a target's socket send buffer can grow (4 MiB by default on
# Linux), so that a server which does not wait for buffer space must lose data.
LARGE_ECHO = 16 * 2**20


def _example(rng: random.Random) -> tuple[bytes, bytes]:
    message = b"netlab echo " + rng.randbytes(20).hex().encode() + b"\n"
    return message, message


PROTOCOL = TcpProtocol(example=_example, partial_request=lambda rng: b"half a line, no end yet")
add_common_checks(SUITE, PROTOCOL)


@SUITE.check("echo", "byte-exact", title="echoes every byte unchanged", references=(RFC,))
def check_byte_exact(ctx: CheckContext) -> None:
    """Send two messages on one connection; each must come back exactly."""
    with ctx.connect() as client:
        for message in (b"Hello, netlab!\n", b"second message " + ctx.random_bytes(8).hex().encode()):
            client.send(message)
            got = client.recv_exactly(len(message), timeout=ctx.timeout(3.0), what=f"the echo of {format_bytes(message)}")
            ctx.expect(got == message, "the echo differs from what was sent", expected=format_bytes(message), got=format_bytes(got))


@SUITE.check("echo", "one-byte-segments", title="echoes data that arrives one byte per segment", references=(RFC, 'FOPNP ch. 5 "Framing"'))
def check_one_byte_segments(ctx: CheckContext) -> None:
    """Send 48 bytes one TCP segment at a time; all 48 must come back in order
    (a server that answers only its first recv() fails)."""
    message = b"one byte at a time: " + ctx.random_bytes(14).hex().encode()
    with ctx.connect() as client:
        client.send_chunks(message, size=1, pause=0.002)
        got = client.recv_exactly(len(message), timeout=ctx.timeout(3.0), what=f"the echo of all {len(message)} bytes")
    ctx.expect(got == message, "the echo differs from what was sent", expected=format_bytes(message), got=format_bytes(got))


@SUITE.check(
    "echo",
    "large-concurrent",
    title="echoes 16 MiB while the client sends and reads at once, losing nothing",
    references=(RFC, BOOK_SENDALL),
    timeout=60.0,
)
def check_large_concurrent(ctx: CheckContext) -> None:
    """Send 16 MiB from one thread while reading the echo in another: every byte
    must come back, in order. The reader holds back until the sender is done or
    blocked, and reads through a small window, so the target's socket buffer
    fills up: a server that calls send() and ignores how much it sent loses data
    there, while a server using sendall() just waits."""
    payload = ctx.random_bytes(LARGE_ECHO)
    client = ctx.connect(receive_buffer=32 * 1024, timeout=10.0)
    errors: list[BaseException] = []
    progress = SendProgress()

    def sender() -> None:
        try:
            for offset in range(0, len(payload), 64 * 1024):
                client.send(payload[offset : offset + 64 * 1024])
                progress.advance()
        except BaseException as error:  # reported by the reading side
            errors.append(error)
        finally:
            progress.finish()

    thread = threading.Thread(target=sender, name="netlab-large-sender", daemon=True)
    thread.start()
    progress.wait_until_done_or_stalled(stall=0.2, limit=ctx.timeout(2.0))
    got, violation = read_bulk(client, len(payload), stall_limit=ctx.timeout(3.0))
    if violation is not None:
        errors.append(violation)
    stop_sender(client, thread, ctx.timeout(10.0))
    if got == payload:
        return
    offset = first_difference(payload, got)
    lost = len(payload) - len(got)
    summary = (
        f"the echo of {len(payload)} bytes came back with {len(got)} bytes ({lost} missing)"
        if lost > 0
        else f"the echo of {len(payload)} bytes came back with {len(got)} bytes"
    )
    ctx.fail(
        summary + f"; the first wrong byte is at offset {offset}",
        expected=f"all {len(payload)} bytes back, in order",
        got=f"{len(got)} bytes; bytes from offset {offset} differ from what was sent"
        + (f"; {type(errors[0]).__name__}: {errors[0]}" if errors else ""),
        hint="send() may send only part of the data when the socket buffer is full: use sendall(), or loop on send()'s return value",
    )


@SUITE.check(
    "echo",
    "half-close",
    title="after the client's half-close, echoes everything, then closes with FIN",
    references=(RFC, BOOK_HALF_CLOSE, "RFC 9293 section 3.6 (closing a connection)"),
)
def check_half_close(ctx: CheckContext) -> None:
    """Send 256 KiB, then shutdown(SHUT_WR) at once without reading: the target
    must echo all of it, then close the connection with a FIN (not an RST), and
    not wait for a close the client will never send."""
    payload = ctx.random_bytes(256 * 1024)
    client = ctx.connect()  # left open until the check ends: our close cannot race with a late RST
    local_port = client.sock.getsockname()[1]
    client.send(payload)
    client.shutdown_write()
    data, how = client.read_until_close(timeout=ctx.timeout(5.0))
    evidence = evidence_note(ctx)
    if data != payload:
        offset = first_difference(payload, data)
        ctx.fail(
            f"after the client's half-close the target echoed {len(data)} of {len(payload)} bytes",
            expected=f"all {len(payload)} bytes, then the connection closed",
            got=f"{len(data)} bytes (first difference at offset {offset}), then {'RST' if how == 'reset' else 'FIN'}{evidence}",
            hint="on EOF (recv() returns b''), finish sending what you owe, then close; do not discard buffered data",
        )
    ctx.expect(
        how == "eof",
        "the target ended the connection with a reset (RST), not an orderly close (FIN)",
        expected="FIN after the last echoed byte",
        got="RST" + evidence,
        hint="close() with unread data, or SO_LINGER 0, sends RST; read until EOF, then close",
    )
    expect_no_reset_after_fin(ctx, local_port, after="after the echo")


@SUITE.check("echo", "binary", title="echoes every byte value, NUL and CR/LF included", references=(RFC,))
def check_binary(ctx: CheckContext) -> None:
    """Send all 256 byte values and random binary data; all must come back
    unchanged (a server that decodes text, or strips line endings, fails)."""
    message = bytes(range(256)) + b"\r\n\x00\r" + ctx.random_bytes(1024)
    with ctx.connect() as client:
        client.send(message)
        got = client.recv_exactly(len(message), timeout=ctx.timeout(3.0), what=f"the echo of {len(message)} binary bytes")
    if got != message:
        offset = first_difference(message, got)
        ctx.fail(
            f"binary data came back changed from offset {offset}",
            expected=format_bytes(message[offset : offset + 16]) + f" at offset {offset}",
            got=format_bytes(got[offset : offset + 16]),
            hint="treat the data as bytes: do not decode, strip or re-encode it",
        )

