"""framed: an echo server for length-prefixed messages (FOPNP ch. 5, blocks.py), and the common TCP checks.

The target listens on ``{host}:{port}``. A message is a 4-byte unsigned
big-endian length, ``struct.pack('!I', n)``, and that many bytes of payload.
The server answers each message with a message of the same payload, in
order; the client may send the next message before the previous echo came.
A zero-length message ends the conversation: the server closes the
connection (it may echo the empty message first, it need not). "a
zero-length message, which is just a length field with zeros inside and then
no message data after it, to signal that the series of blocks is over"
(B:3018).
"""

from __future__ import annotations

import random
from pathlib import Path

from hypothesis import strategies as st

from pytest_netlab.context import CheckContext
from pytest_netlab.errors import ProtocolViolation
from pytest_netlab.rawclient import ScriptedClient
from pytest_netlab.registry import Role, Suite, register_suite
from pytest_netlab.tcp_proxy import TCPFaultProxy, TCPFaults
from pytest_netlab.transcript import format_bytes

from ..common_tcp import TcpProtocol, add_common_checks
from ..wire_close import expect_no_reset_after_fin
from ..zen._bounded_search import search_for_failure
from ._exchange import REPLY_TIMEOUT, echo_in_bulk, expect_close, expect_message
from ._wire import END, HEADER, describe_pieces, explain_split, frame, little_endian_length, split_at

SUITE = register_suite(
    Suite(
        "framed",
        Role.SERVER,
        title="Length-prefixed message echo server (FOPNP ch. 5)",
        placeholders=("host", "port"),
        description=(
            "A message is struct.pack('!I', n) and n bytes; each message is echoed as a message with the same payload; "
            "a zero-length message ends the conversation and the server closes."
        ),
    )
)

BOOK_BLOCKS = 'FOPNP ch. 5 "Framing and Quoting", blocks.py (B:3012-3099)'
BOOK_LOOP = 'FOPNP ch. 5: "the code is correct only if you carefully wrap recv() in a loop" (B:3099)'
BOOK_ORDER = 'FOPNP ch. 5 "Binary Numbers and Network Byte Order" (B:2883-2886)'
BOOK_SENDALL = 'FOPNP ch. 3 "TCP Sockets" (send() may send only part; sendall(); B:1650)'

SEGMENT_PAUSE = 0.01
SEARCH_EXAMPLES = 40
SEARCH_BUDGET = 8.0
SEARCH_PAUSE = 0.004
SEARCH_REPLY_TIMEOUT = 1.5
SHRINK_REPLY_TIMEOUT = 0.75
MIB = 2**20
BULK_COUNT = 3


def _bulk_message_size() -> int:
    """Larger than a TCP send buffer can grow here (tcp_wmem max: 4 MiB by default on
    Linux), so that no single send() can take a whole echo; 5 MiB at least, 64 MiB at most."""
    try:
        largest = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        largest = 4 * MIB
    return min(max(5 * MIB, largest + MIB), 64 * MIB)


def _example(rng: random.Random) -> tuple[bytes, bytes]:
    message = frame(b"netlab framed " + rng.randbytes(12).hex().encode())
    return message, message


PROTOCOL = TcpProtocol(example=_example, partial_request=lambda rng: HEADER.pack(64) + b"twenty bytes of 64..")
add_common_checks(SUITE, PROTOCOL)


def _send_in_pieces(client: ScriptedClient, pieces: list[bytes], pause: float, *, hint: str, digest: bool = False) -> None:
    """Send each piece as its own segment, ``pause`` seconds apart (the client sets TCP_NODELAY).

    ``digest``: also wait until the target has read each piece (see ScriptedClient.send_chunks).
    """
    try:
        client.send_chunks(b"".join(pieces), sizes=[len(p) for p in pieces], pause=pause, digest=digest)
    except ProtocolViolation as failure:
        raise ProtocolViolation(
            f"the target ended the connection while messages arrived as {describe_pieces(pieces)}",
            expected="the target reads every piece and echoes each whole message",
            got=failure.got,
            hint=hint,
        ) from None


def _send_split(ctx: CheckContext, client: ScriptedClient, payload: bytes, cuts: list[int]) -> None:
    """Send one message cut at ``cuts`` and demand its echo; every message names how it was cut."""
    pieces = split_at(frame(payload), cuts)
    hint = explain_split([payload], cuts)
    _send_in_pieces(client, pieces, SEGMENT_PAUSE, hint=hint)
    expect_message(ctx, client, payload, what=f"a message sent as {describe_pieces(pieces)}", hint=hint)


# -- echo ---------------------------------------------------------------------------


@SUITE.check("echo", "messages", title="echoes each message, in order, on one connection", references=(BOOK_BLOCKS,))
def check_messages(ctx: CheckContext) -> None:
    """On one connection, send four messages one after another (text, one byte,
    1000 random bytes, text), each after the previous echo came: each echo must
    be a 4-byte big-endian length and exactly the payload sent."""
    payloads = [b"Beautiful is better than ugly.", b"x", ctx.random_bytes(1000), b"Simple is better than complex."]
    with ctx.connect(label="messages") as client:
        for payload in payloads:
            client.send(frame(payload))
            expect_message(ctx, client, payload)


@SUITE.check(
    "echo",
    "large-message",
    title="echoes a 1 MiB message",
    references=(BOOK_BLOCKS, BOOK_LOOP),
    timeout=45.0,
)
def check_large_message(ctx: CheckContext) -> None:
    """Send one message of 1 MiB of random bytes: it arrives in many recv()s,
    so the server must loop until it has all of it, and the echo must be whole."""
    payload = ctx.random_bytes(MIB)
    with ctx.connect(label="1-mib", timeout=10.0) as client:
        client.send(frame(payload))
        expect_message(
            ctx,
            client,
            payload,
            what="the 1 MiB message",
            timeout=10.0,
            hint="one recv() returns at most what has arrived: loop until you have all n bytes (recvall), then sendall() the echo",
        )


@SUITE.check(
    "echo",
    "slow-reader",
    title=f"loses nothing when {BULK_COUNT} messages larger than a socket send buffer are sent back to back and read slowly",
    references=(BOOK_SENDALL, BOOK_BLOCKS),
    timeout=60.0,
)
def check_slow_reader(ctx: CheckContext) -> None:
    """Send 3 messages of 5 MiB (more if the TCP send buffer may grow past 4 MiB
    here) from one thread without waiting for echoes; read only once the sender
    is done or blocked, through a 32 KiB receive window. Each echo is larger
    than the server's send buffer can grow, so a server that calls send() and
    ignores how much it sent loses the rest of the message, even if it waits for
    the socket to be writable first (as Python's send() does on a socket with a
    timeout); sendall() just waits."""
    size = _bulk_message_size()
    echo_in_bulk(ctx, [ctx.random_bytes(size) for _ in range(BULK_COUNT)])


@SUITE.check("echo", "all-byte-values", title="echoes payloads of every byte value, NUL, CR/LF and header-like bytes included", references=(BOOK_BLOCKS,))
def check_all_byte_values(ctx: CheckContext) -> None:
    """Send a message holding all 256 byte values, then in reverse, with CR/LF,
    NUL and bytes that look like a length prefix inside; then one-byte messages
    b'\\x00', b'\\n' and b'\\xff'. Every echo must be byte-exact (a server that
    decodes text, strips lines or scans for delimiters fails)."""
    payloads = [bytes(range(256)) + bytes(reversed(range(256))) + b"\r\n" + END + HEADER.pack(7) + b"\xc3\x28", b"\x00", b"\n", b"\xff"]
    with ctx.connect(label="binary") as client:
        for payload in payloads:
            client.send(frame(payload))
            expect_message(ctx, client, payload)


# -- framing -----------------------------------------------------------------------


@SUITE.check(
    "framing",
    "split-header",
    title="reads messages whose length and payload arrive in pieces",
    references=(BOOK_LOOP, BOOK_BLOCKS),
)
def check_split_header(ctx: CheckContext) -> None:
    """Send a message with its 4-byte length in four segments, then its
    payload in two; another split inside the length and the payload at once;
    then messages through the TCP fault proxy, which delivers them 1 and 3
    bytes per segment. Every echo must be right: the length too must be read
    with a loop, as the book insists."""
    with ctx.connect(label="header-byte-by-byte") as client:
        _send_split(ctx, client, b"Explicit is better than implicit.", [1, 2, 3, 4, 20])
        _send_split(ctx, client, ctx.random_bytes(40), [2, 7])
    for slice_size, payload in ((1, b"Flat is better than nested."), (3, ctx.random_bytes(300))):
        sliced = TCPFaults(slice_size=slice_size, slice_pause=0.002)
        with TCPFaultProxy(ctx.address, client_to_server=sliced, seed=ctx.rng.getrandbits(32), transcript=ctx.transcript) as proxy:
            with ctx.connect(proxy.address, label=f"sliced-{slice_size}") as client:
                client.send(frame(payload))
                expect_message(
                    ctx,
                    client,
                    payload,
                    what=f"a {len(payload)}-byte message delivered {slice_size} byte(s) per segment by the TCP fault proxy",
                    hint=explain_split([payload], list(range(slice_size, HEADER.size + len(payload), slice_size))),
                )


@SUITE.check(
    "framing",
    "many-in-one-segment",
    title="answers every message of a burst that arrives in one segment",
    references=(BOOK_BLOCKS, 'FOPNP ch. 3 "TCP Sockets" (B:1667)'),
)
def check_many_in_one_segment(ctx: CheckContext) -> None:
    """Send 20 messages of 1-200 bytes in one send() (one TCP segment on
    loopback) and then read: 20 echoes must come, in order. A server that
    handles one message per recv() answers the first and loses the rest."""
    payloads = [ctx.random_bytes(ctx.rng.randint(1, 200)) for _ in range(20)]
    with ctx.connect(label="burst") as client:
        client.send(b"".join(frame(p) for p in payloads))
        for index, payload in enumerate(payloads):
            try:
                expect_message(ctx, client, payload, what=f"message {index + 1} of the 20 sent in one segment")
            except ProtocolViolation as violation:
                raise ProtocolViolation(
                    f"{index} of 20 messages sent in one segment were echoed; {violation.summary}",
                    expected=violation.expected,
                    got=violation.got,
                    hint=(
                        "one recv() is not one message: a recv() may hold several messages; keep the bytes after a "
                        "message in a buffer and parse them as the next one"
                        if index
                        else violation.hint
                    ),
                ) from None


@SUITE.check(
    "framing",
    "byte-order",
    title="reads and writes the length in network byte order (big-endian)",
    references=(BOOK_ORDER, BOOK_BLOCKS),
)
def check_byte_order(ctx: CheckContext) -> None:
    """Send a 261-byte message: its length is 00 00 01 05, which a little-endian
    reader takes for 83,951,616 bytes and waits for. The echo must come, with
    the length 00 00 01 05 (not 05 01 00 00)."""
    payload = ctx.random_bytes(261)
    header = HEADER.pack(len(payload))
    with ctx.connect(label="byte-order") as client:
        client.send(frame(payload))
        wait = ctx.timeout(2.0)
        try:
            reply_header = client.recv_exactly(HEADER.size, timeout=wait, what="the length of the echo")
        except ProtocolViolation as silence:
            ctx.fail(
                f"no reply within {wait:.1f} s to a 261-byte message: looks like a little-endian length",
                expected=f"{header.hex(' ')} and the 261 bytes back",
                got=silence.got,
                hint=(
                    f"read as little-endian, {header.hex(' ')} announces {little_endian_length(header):,} bytes, so the "
                    "server waits for them: unpack with struct.unpack('!I', header) ('!' is network order; 'I' alone is native, little-endian on x86)"
                ),
            )
        ctx.expect(
            reply_header == header,
            f"the echo's length is {reply_header.hex(' ')}"
            + (": looks like a little-endian length" if little_endian_length(reply_header) == len(payload) else ""),
            expected=header.hex(" "),
            got=reply_header.hex(" "),
            hint="write the length with struct.pack('!I', n): network (big-endian) order",
        )
        body = client.recv_exactly(len(payload), timeout=ctx.timeout(REPLY_TIMEOUT), what="the 261 bytes of the echo")
        ctx.expect(body == payload, "the echo of the 261-byte message differs from what was sent", expected=format_bytes(payload), got=format_bytes(body))


@st.composite
def _split_streams(draw: st.DrawFn) -> tuple[list[bytes], list[int]]:
    """1-4 messages of arbitrary bytes, and cuts in their stream, favouring the bytes around each length."""
    payloads = draw(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=4))
    stream_length = sum(HEADER.size + len(p) for p in payloads)
    starts, offset = [], 0
    for payload in payloads:
        starts.append(offset)
        offset += HEADER.size + len(payload)
    near_a_header = st.sampled_from(starts).flatmap(lambda start: st.integers(start - 3, start + 5))
    anywhere = st.integers(1, stream_length - 1)
    cuts = draw(st.lists(st.one_of(near_a_header, anywhere), max_size=6))
    return payloads, sorted({c for c in cuts if 0 < c < stream_length})


def _describe_stream(example: tuple[list[bytes], list[int]]) -> str:
    payloads, cuts = example
    stream = b"".join(frame(p) for p in payloads)
    sizes = ", ".join(str(len(p)) for p in payloads)
    return f"messages of {sizes} bytes sent as {describe_pieces(split_at(stream, cuts))}"


@SUITE.check(
    "framing",
    "split-anywhere",
    title="echoes any messages, of any bytes, however the stream is split (Hypothesis)",
    references=(BOOK_LOOP, BOOK_BLOCKS),
    timeout=45.0,
)
def check_split_anywhere(ctx: CheckContext) -> None:
    """Hypothesis draws 1-4 messages of arbitrary bytes and cuts their stream at
    arbitrary positions (often within a few bytes of a length prefix), sent as
    separate segments without waiting for echoes. Every echo must come, in
    order. This finds what hand-picked cases miss, such as a server that drops
    the first bytes of the next length when they arrive with the end of a
    message. Seeded from --netlab-seed, bounded in examples and time; the
    failure shows the smallest failing split found."""

    reply_timeout = [SEARCH_REPLY_TIMEOUT]

    def attempt(example: tuple[list[bytes], list[int]]) -> None:
        payloads, cuts = example
        hint = explain_split(payloads, cuts)
        with ctx.connect(label="hypothesis") as client:
            try:
                # Each piece must be its own read() on the target's side, or the split tried is not the split seen.
                _send_in_pieces(client, split_at(b"".join(frame(p) for p in payloads), cuts), SEARCH_PAUSE, hint=hint, digest=True)
                for index, payload in enumerate(payloads):
                    expect_message(ctx, client, payload, what=f"message {index + 1} of {len(payloads)}", timeout=reply_timeout[0], hint=hint)
            except ProtocolViolation:
                # Shrinking replays failing examples, most of them by waiting out a silence: wait less.
                reply_timeout[0] = SHRINK_REPLY_TIMEOUT
                raise

    search_for_failure(
        ctx,
        _split_streams(),
        attempt,
        describe=_describe_stream,
        max_examples=SEARCH_EXAMPLES,
        budget=ctx.timeout(SEARCH_BUDGET),
    )


# -- the end of the conversation ----------------------------------------------------


@SUITE.check(
    "conversation",
    "zero-length-end",
    title="closes the connection after a zero-length message",
    references=(BOOK_BLOCKS, 'FOPNP ch. 5, blocks.py: put_block(sock, b"") (B:3083)'),
)
def check_zero_length_end(ctx: CheckContext) -> None:
    """Send two messages, read their echoes, then the zero-length message
    00 00 00 00: the server must close the connection (FIN), after echoing the
    empty message or not, and send nothing else. Then a connection whose first
    message is the zero-length one must be closed the same way."""
    with ctx.connect(label="two-then-end") as first, ctx.connect(label="end-at-once") as second:
        for payload in (b"Readability counts.", ctx.random_bytes(64)):
            first.send(frame(payload))
            expect_message(ctx, first, payload)
        first.send(END)
        expect_close(ctx, first, after="after the zero-length message", allowed=(b"", END))
        second.send(END)
        expect_close(ctx, second, after="after a zero-length first message", allowed=(b"", END))
        # Read the wire while both clients are still open: a server that resets after
        # its FIN has done so by now, and a close of ours cannot race with its RST.
        ports = (first.sock.getsockname()[1], second.sock.getsockname()[1])
        expect_no_reset_after_fin(ctx, *ports, after="after the zero-length message")


@SUITE.check(
    "conversation",
    "eof-mid-message",
    title="closes quietly when the client hangs up mid-message or between messages, and keeps serving",
    references=(BOOK_BLOCKS, 'FOPNP ch. 5 "Framing" (recvall raises EOFError; B:3036-3040)'),
)
def check_eof_mid_message(ctx: CheckContext) -> None:
    """Hang up after half a length (2 bytes); send a length of 100 and 40 bytes,
    then EOF: the message never completes, so no echo may come, and the server
    must close; send a message, read its echo, then EOF without the zero-length
    message: the server must close. A new client must then be served: a
    hang-up is a normal event, not a crash."""
    with ctx.connect(label="half-a-length") as client:
        client.send(b"\x00\x00")
    with ctx.connect(label="half-a-message") as client:
        client.send(HEADER.pack(100) + ctx.random_bytes(40))
        client.shutdown_write()
        expect_close(ctx, client, after="after the client's EOF in the middle of a 100-byte message (40 bytes sent)")
    with ctx.connect(label="eof-between-messages") as client:
        payload = b"Errors should never pass silently."
        client.send(frame(payload))
        expect_message(ctx, client, payload)
        client.shutdown_write()
        expect_close(ctx, client, after="after the client's EOF between messages")
    with ctx.connect(label="next-client") as client:
        payload = b"Unless explicitly silenced."
        client.send(frame(payload))
        expect_message(
            ctx,
            client,
            payload,
            hint="the server stopped serving after clients hung up mid-message: handle EOF (EOFError) per connection, not around the server",
        )
