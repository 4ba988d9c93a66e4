"""Asking the zen server questions over a scripted connection, and judging what comes back.

:func:`ask` sends one question (whole or in pieces, with pauses between them
so that each piece is its own TCP segment) and reads the answer up to its
``.``; anything but the exact answer of the table becomes a
:class:`ProtocolViolation` that says what was sent, how it was split, what
came back and the likely mistake. :func:`finish` ends a conversation with the
client's EOF and checks that the server closes without another byte.

This module must not decide which questions to ask; the checks do.
"""

from __future__ import annotations

import time
from typing import Sequence

from pytest_netlab.context import CheckContext
from pytest_netlab.errors import ProtocolViolation
from pytest_netlab.rawclient import ClosedEarly, ReceiveTimeout, ScriptedClient
from pytest_netlab.transcript import format_bytes

from ._protocol import answer_to, describe_pieces, explain_wrong_answer

__all__ = ["ask", "finish", "sent_after_answer", "ANSWER_TIMEOUT", "SEGMENT_PAUSE"]

#: Seconds (before --netlab-timeout-scale) a server has to answer a question.
ANSWER_TIMEOUT = 3.0
#: Seconds between the pieces of a split question: long enough for the server
#: to read each piece on its own, so a server that answers every recv() shows it.
SEGMENT_PAUSE = 0.01
# Longer than any answer of the table, short enough to stop a server that never sends '.'.
_MAX_ANSWER = 4096


def ask(
    ctx: CheckContext,
    client: ScriptedClient,
    question: bytes,
    *,
    pieces: Sequence[bytes] | None = None,
    pause: float = SEGMENT_PAUSE,
    timeout: float = ANSWER_TIMEOUT,
    about: str = "",
    closed_hint: str = "",
    digest: bool = False,
) -> None:
    """Ask ``question`` (sent as ``pieces`` if given) and demand the exact answer.

    Args:
        about: why this question, appended to the summary ("an empty question").
        digest: wait until the target has read each piece (see ScriptedClient.send_chunks).
        closed_hint: the hint when the server closes instead of answering
            (the caller knows best why that is wrong here).

    Raises:
        ProtocolViolation: a wrong answer, no answer, or a closed connection.
    """
    pieces = list(pieces) if pieces else [question]
    expected = answer_to(question)
    how_sent = describe_pieces(pieces) + (f" ({about})" if about else "")
    try:
        client.send_chunks(b"".join(pieces), sizes=[len(p) for p in pieces], pause=pause, digest=digest)
    except ProtocolViolation as failure:
        raise ProtocolViolation(
            f"the target ended the connection while the client was sending {how_sent}",
            expected=f"the target reads the whole question and answers {format_bytes(expected)}",
            got=failure.got,
            hint=(
                "a question is complete only when the data you collected ends with b'?': keep reading "
                "(one recv() is not one message), and let nothing a client sends end the conversation or the server"
                if len(pieces) > 1
                else closed_hint or "keep the connection open and answer each question"
            ),
        ) from None
    wait = ctx.timeout(timeout)
    try:
        got = client.recv_until(b".", timeout=wait, what=f"the answer {format_bytes(expected)}", max_bytes=_MAX_ANSWER)
    except ClosedEarly as closed:
        raise ProtocolViolation(
            f"the target {'reset' if closed.how == 'reset' else 'closed'} the connection instead of answering {how_sent}",
            expected=format_bytes(expected),
            got=closed.got,
            hint=closed_hint
            or "keep the connection open and answer each question; close only when recv() returns b'' (the client is done)",
        ) from None
    except ReceiveTimeout as silence:
        raise ProtocolViolation(
            f"no complete answer within {wait:.1f} s to {how_sent}",
            expected=format_bytes(expected),
            got=silence.got,
            hint=(
                "answer as soon as the data you collected ends with b'?', and end the answer with '.'; "
                "a server that waits for a newline, or for the client to close, never answers"
            ),
        ) from None
    except ProtocolViolation as endless:
        raise ProtocolViolation(
            f"the answer to {how_sent} never ended with '.'",
            expected=format_bytes(expected),
            got=endless.got,
            hint="every answer, the error message too, ends with '.'",
        ) from None
    if got != expected:
        raise ProtocolViolation(
            f"wrong answer to {how_sent}",
            expected=format_bytes(expected),
            got=format_bytes(got),
            hint=explain_wrong_answer(pieces, expected, got),
        )


def finish(ctx: CheckContext, client: ScriptedClient, *, after: str, timeout: float = ANSWER_TIMEOUT) -> str:
    """Half-close (the client has no more questions) and wait for the server to close, silently.

    Args:
        after: what the client did before, for the messages ("after its answer").

    Returns:
        How the server closed: ``"eof"`` or ``"reset"``.
    """
    client.shutdown_write()
    wait = ctx.timeout(timeout)
    try:
        data, how = client.read_until_close(timeout=wait)
    except ReceiveTimeout as silence:
        raise ProtocolViolation(
            f"the client sent EOF {after}, and the target did not close the connection within {wait:.1f} s",
            expected="the target closes its side once recv() returns b''",
            got=silence.got,
            hint="recv() returning b'' means the client is done: close the socket; do not loop on empty reads",
        ) from None
    if data:
        raise ProtocolViolation(
            f"the target sent more bytes after the client's EOF {after}",
            expected="nothing more, then the connection closed",
            got=f"{format_bytes(data)}, then {'RST' if how == 'reset' else 'EOF'}",
            hint=(
                "an answer ends with '.' and nothing follows it (no newline)"
                if data.strip(b"\r\n") == b""
                else "a question is only complete when it ends with '?': do not answer what is left when the client hangs up"
            ),
        )
    return how


def sent_after_answer(ctx: CheckContext, client: ScriptedClient, wait: float = 1.0) -> bytes:
    """The bytes a server sends after its answer: half-close, then collect until it closes or ``wait`` passes.

    A conforming server sends nothing more and closes at once; one that does
    not close is not this function's business, so it only costs the wait.
    """
    client.shutdown_write()
    collected = b""
    deadline = time.monotonic() + ctx.timeout(wait)
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            chunk = client.recv_some(timeout=remaining)
        except (ReceiveTimeout, ClosedEarly):
            break
        if not chunk:
            break
        collected += chunk
    return collected
