"""Talking to a length-prefixed echo server over scripted connections, and judging its replies.

:func:`expect_message` reads one reply (its 4-byte length, then exactly that
many bytes) and turns every way it can be wrong into a
:class:`ProtocolViolation` that names the likely mistake: a little-endian
length, a header read with one ``recv()``, ``send()`` instead of
``sendall()``. :func:`expect_close` ends a conversation. :func:`echo_in_bulk`
sends many large messages while holding back the reading, so that the
server's buffers fill up.

This module must not decide what to send; the checks do.
"""

from __future__ import annotations

import threading
from typing import Sequence

from pytest_netlab.context import CheckContext
from pytest_netlab.errors import ProtocolViolation
from pytest_netlab.rawclient import ClosedEarly, ReceiveTimeout, ScriptedClient
from pytest_netlab.transcript import format_bytes

from ..bulk_transfer import SendProgress, first_difference, read_bulk, stop_sender
from ..wire_close import evidence_note
from ._wire import HEADER, explain_wrong_length, frame, little_endian_length, parse_frames

__all__ = ["expect_message", "expect_close", "echo_in_bulk", "silence_hint", "REPLY_TIMEOUT"]

#: Seconds (before --netlab-timeout-scale) a server has to answer a message.
REPLY_TIMEOUT = 3.0


def silence_hint(sent_header: bytes) -> str:
    """Why a server may say nothing after a message: the two classic header mistakes."""
    return (
        f"read the 4-byte length with a loop until you have all 4 bytes, unpack it with struct.unpack('!I', header), "
        f"then read exactly that many bytes; a server reading {sent_header.hex(' ')} as little-endian waits for "
        f"{little_endian_length(sent_header):,} bytes"
    )


def expect_message(
    ctx: CheckContext,
    client: ScriptedClient,
    payload: bytes,
    *,
    what: str = "",
    timeout: float = REPLY_TIMEOUT,
    hint: str = "",
) -> None:
    """Read one reply and demand that it carries exactly ``payload``.

    Args:
        what: names the message in the summaries ("the 1 MiB message").
        hint: replaces the default hint when no reply (or half a reply) comes.
    """
    what = what or f"the message of {len(payload)} bytes"
    sent_header = HEADER.pack(len(payload))
    wait = ctx.timeout(timeout)
    expected = f"{sent_header.hex(' ')} then the {len(payload)} bytes sent"
    try:
        header = client.recv_exactly(HEADER.size, timeout=wait, what=f"the 4-byte length of the echo of {what}")
    except ReceiveTimeout as silence:
        raise ProtocolViolation(
            f"no reply within {wait:.1f} s to {what}",
            expected=expected,
            got=silence.got,
            hint=hint or silence_hint(sent_header),
        ) from None
    except ClosedEarly as closed:
        raise ProtocolViolation(
            f"the target {'reset' if closed.how == 'reset' else 'closed'} the connection instead of echoing {what}",
            expected=expected,
            got=closed.got,
            hint=hint or "echo every message; only a zero-length message (or the client hanging up) ends the conversation",
        ) from None
    (announced,) = HEADER.unpack(header)
    if announced != len(payload):
        raise ProtocolViolation(
            f"the echo of {what} announces {announced:,} bytes",
            expected=expected,
            got=f"{header.hex(' ')} ({announced:,} bytes)",
            hint=explain_wrong_length(header, len(payload)),
        )
    try:
        body = client.recv_exactly(len(payload), timeout=wait, what=f"the {len(payload)} bytes of the echo of {what}")
    except (ReceiveTimeout, ClosedEarly) as short:
        raise ProtocolViolation(
            f"the echo of {what} announced {len(payload):,} bytes but fewer came",
            expected=expected,
            got=f"{header.hex(' ')}, then {short.got}",
            hint=hint or "send the whole message with sendall(): send() may send only part of it",
        ) from None
    if body != payload:
        offset = first_difference(payload, body)
        raise ProtocolViolation(
            f"the echo of {what} differs from what was sent, from offset {offset}",
            expected=format_bytes(payload[offset : offset + 16]) + f" at offset {offset}",
            got=format_bytes(body[offset : offset + 16]),
            hint="treat the payload as bytes: do not decode, strip or re-encode it",
        )


def expect_close(ctx: CheckContext, client: ScriptedClient, *, after: str, allowed: Sequence[bytes] = (b"",), timeout: float = REPLY_TIMEOUT) -> None:
    """Wait for the server to close, having sent one of ``allowed`` first (FIN, not RST)."""
    wait = ctx.timeout(timeout)
    try:
        data, how = client.read_until_close(timeout=wait)
    except ReceiveTimeout as silence:
        raise ProtocolViolation(
            f"the connection stayed open {after}",
            expected=f"the target closes the connection within {wait:.1f} s",
            got=silence.got,
            hint=(
                "a zero-length message ends the conversation: close the socket (book ch. 5); "
                "and recv() returning b'' means the client is gone: close too"
            ),
        ) from None
    if data not in allowed:
        raise ProtocolViolation(
            f"the target sent {format_bytes(data)} {after}",
            expected=" or ".join(format_bytes(a) if a else "nothing" for a in allowed) + ", then the connection closed",
            got=f"{format_bytes(data)}, then {'RST' if how == 'reset' else 'EOF'}",
            hint="answer only complete messages; nothing follows the end of the conversation",
        )
    if how == "reset":
        raise ProtocolViolation(
            f"the target reset the connection (RST) {after}",
            expected="an orderly close (FIN)",
            got="RST" + evidence_note(ctx),
            hint="close() after reading what the client sent; SO_LINGER 0 or unread data turns the close into an RST",
        )


def echo_in_bulk(ctx: CheckContext, payloads: Sequence[bytes], *, stall: float = 3.0) -> None:
    """Send every message back to back from a thread; read the echoes only once the sender is
    done or blocked, through a small receive window; demand every echo, in order.

    Raises:
        ProtocolViolation: bytes were lost or changed.
    """
    stream = b"".join(frame(p) for p in payloads)
    client = ctx.connect(receive_buffer=32 * 1024, timeout=10.0, label="slow-reader")
    progress = SendProgress()
    errors: list[BaseException] = []

    def sender() -> None:
        try:
            for offset in range(0, len(stream), 256 * 1024):
                client.send(stream[offset : offset + 256 * 1024])
                progress.advance()
        except BaseException as error:  # reported below, by the reading side
            errors.append(error)
        finally:
            progress.finish()

    thread = threading.Thread(target=sender, name="netlab-framed-sender", daemon=True)
    thread.start()
    progress.wait_until_done_or_stalled(stall=0.3, limit=ctx.timeout(3.0))
    got, _ = read_bulk(client, len(stream), stall_limit=ctx.timeout(stall))  # what is missing says enough
    stop_sender(client, thread, ctx.timeout(10.0))
    if got == stream:
        return
    echoes, _ = parse_frames(got)
    intact = 0
    while intact < min(len(echoes), len(payloads)) and echoes[intact] == payloads[intact]:
        intact += 1
    offset = first_difference(stream, got)
    lost = len(stream) - len(got)
    what = f"{len(payloads)} messages of {len(payloads[0]):,} bytes sent back to back"
    intact_note = f"the first {intact} echo{'es are' if intact != 1 else ' is'} intact, and the stream differs from offset {offset:,}"
    ctx.fail(
        (f"{what} came back as {len(got):,} of {len(stream):,} bytes ({lost:,} missing); " if lost > 0 else f"{what} came back changed; ")
        + intact_note,
        expected=f"all {len(payloads)} echoes, {len(stream):,} bytes, in order, however slowly the client reads",
        got=f"{len(got):,} bytes" + (", then silence" if lost > 0 else "") + (f"; the sender failed: {errors[0]}" if errors else ""),
        hint=(
            "send each echo with sendall(): when the client reads slowly, send() writes only part of the message and the rest is lost"
            if lost > 0
            else "read each message whole: loop on recv() until you have the n bytes the length announced"
        ),
    )
