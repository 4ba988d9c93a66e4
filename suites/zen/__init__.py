"""zen: the Zen-of-Python aphorism server of FOPNP ch. 7, and the common TCP server checks.

The target listens on ``{host}:{port}``. A client asks questions that end
with ``?``; the server answers each with an answer that ends with ``.``:

    b'Beautiful is better than?'  ->  b'Ugly.'
    b'Explicit is better than?'   ->  b'Implicit.'
    b'Simple is better than?'     ->  b'Complex.'
    anything else ending in '?'   ->  b'Error: unknown aphorism.'

No newline anywhere. "the client may ask as many questions as it wants while
the socket remains open and then close the connection without any warning
when it has no more questions" (B:4203). Questions sent back to back, before
the previous answer, are not part of the contract: the book's own servers
disagree (one answers each, the others answer the lot with one error), so
that is observed (INFO), never judged.
"""

from __future__ import annotations

import random
import socket

from hypothesis import strategies as st

from pytest_netlab.context import CheckContext
from pytest_netlab.errors import ProtocolViolation
from pytest_netlab.registry import Role, Severity, Suite, register_suite
from pytest_netlab.tcp_proxy import TCPFaultProxy, TCPFaults
from pytest_netlab.transcript import format_bytes

from ..common_tcp import TcpProtocol, add_common_checks
from ..wire_close import evidence_note, expect_no_reset_after_fin
from ._bounded_search import search_for_failure
from ._conversation import ANSWER_TIMEOUT, ask, finish, sent_after_answer
from ._protocol import APHORISMS, UNKNOWN_QUESTIONS, answer_to, describe_pieces, describe_pipelined_reply, split_at

SUITE = register_suite(
    Suite(
        "zen",
        Role.SERVER,
        title="Zen-of-Python aphorism server (FOPNP ch. 7)",
        placeholders=("host", "port"),
        description=(
            "Questions end with '?', answers with '.', no newline; the three aphorisms, and "
            "'Error: unknown aphorism.' for anything else; many questions per connection; the client may close at any time."
        ),
    )
)

BOOK_PROTOCOL = 'FOPNP ch. 7 "A Simple Protocol" (B:4201-4312)'
BOOK_FRAMING = 'FOPNP ch. 5 "Framing and Quoting" (delimiters; B:3004)'
BOOK_CLIENT = "FOPNP ch. 7 client.py (B:4318-4371)"
BOOK_CLIENT_E = "FOPNP ch. 7 client.py -e: half a question, then hang up (B:4332-4356)"
BOOK_HALF_CLOSE = 'FOPNP ch. 3 "Half-Open Connections" (shutdown; B:2012-2016)'

# The Hypothesis search: enough examples to meet a question cut inside a UTF-8
# character or an odd byte, few enough for a loaded 2-core machine.
SEARCH_EXAMPLES = 30
SEARCH_BUDGET = 12.0
SEARCH_PAUSE = 0.004


def _example(rng: random.Random) -> tuple[bytes, bytes]:
    question = rng.choice(sorted(APHORISMS))
    return question, APHORISMS[question]


PROTOCOL = TcpProtocol(example=_example, partial_request=lambda rng: b"Beautiful is better than")
add_common_checks(SUITE, PROTOCOL)


def _closed_after(answered: int) -> str:
    return (
        f"the target closed the connection after {answered} answer{'s' if answered != 1 else ''}: "
        "keep reading questions in a loop until recv() returns b'' (the client decides when the conversation ends)"
    )


# -- answers -----------------------------------------------------------------------


def _ask_alone(ctx: CheckContext, question: bytes, *, label: str, about: str = "", closed_hint: str = "") -> None:
    """Ask one question on a connection of its own; demand its answer, and nothing after it."""
    client = ctx.connect(label=label)
    ask(ctx, client, question, about=about, closed_hint=closed_hint)
    extra = sent_after_answer(ctx, client)
    answer = answer_to(question)
    ctx.expect(
        not extra,
        f"the answer to {format_bytes(question)} was followed by {format_bytes(extra)}",
        expected=f"{format_bytes(answer)} and nothing more",
        got=format_bytes(answer + extra),
        hint="an answer ends with '.' and nothing follows it: do not add '\\n' (sendall(answer), not print-style lines)",
    )


@SUITE.check("answers", "aphorisms", title="answers each of the three aphorisms byte-exact, with nothing after the '.'", references=(BOOK_PROTOCOL,))
def check_aphorisms(ctx: CheckContext) -> None:
    """Ask each of the three questions on a connection of its own; the answer must
    be exactly the table's (b'Ugly.', b'Implicit.', b'Complex.') and nothing may
    follow it: no newline (the book's client waits for data that ends in '.')."""
    for question in ctx.rng.sample(sorted(APHORISMS), len(APHORISMS)):
        _ask_alone(ctx, question, label=question.split()[0].decode().lower())


@SUITE.check("answers", "unknown-question", title="answers any other question with b'Error: unknown aphorism.'", references=(BOOK_PROTOCOL,))
def check_unknown_question(ctx: CheckContext) -> None:
    """Ask questions that are not in the table, each on its own connection: an
    ordinary one, an aphorism in lower case, an aphorism's words with more words
    after them, a bare '?', and a question in UTF-8. Each must get exactly
    b'Error: unknown aphorism.', and the server must not die or hang up first."""
    for question, about in UNKNOWN_QUESTIONS:
        _ask_alone(
            ctx,
            question,
            label="unknown",
            about=about,
            closed_hint=(
                "every question that ends with '?' gets an answer: look it up with a default "
                "(answers.get(question, b'Error: unknown aphorism.')), and compare bytes without decoding them"
            ),
        )


# -- the conversation ------------------------------------------------------------


@SUITE.check("conversation", "several-questions", title="answers several questions, one after another, on one connection", references=(BOOK_PROTOCOL, BOOK_CLIENT))
def check_several_questions(ctx: CheckContext) -> None:
    """On one connection, ask the three aphorisms in a random order, an unknown
    question, and two of them again, each after the previous answer arrived
    (lock-step, as the book's client.py does). Every answer must be right, and
    the server must keep the connection open between questions."""
    questions = ctx.rng.sample(sorted(APHORISMS), len(APHORISMS))
    questions += [b"Is this the right room for an argument?", *ctx.rng.sample(sorted(APHORISMS), 2)]
    with ctx.connect(label="conversation") as client:
        for answered, question in enumerate(questions):
            ask(ctx, client, question, closed_hint=_closed_after(answered) if answered else "")


@SUITE.check(
    "conversation",
    "eof-between-questions",
    title="closes quietly when the client hangs up between questions",
    references=(BOOK_PROTOCOL, BOOK_HALF_CLOSE),
)
def check_eof_between_questions(ctx: CheckContext) -> None:
    """A client connects and closes without a word; another asks one question,
    reads the answer and sends EOF (shutdown(SHUT_WR)): the server must close its
    side at once, sending nothing more, and then serve the next client. The book's
    recv_until() takes b'' before a question as the normal end of a conversation."""
    ctx.connect(label="silent").close()
    client = ctx.connect(label="one-question")
    ask(ctx, client, b"Simple is better than?")
    finish(ctx, client, after="after its answer")
    with ctx.connect(label="next-client") as next_client:
        ask(ctx, next_client, b"Explicit is better than?", closed_hint="the target stopped serving after a client hung up")


@SUITE.check(
    "conversation",
    "eof-mid-question",
    title="does not answer half a question when the client hangs up (client.py -e), and keeps serving",
    references=(BOOK_CLIENT_E, BOOK_PROTOCOL, 'FOPNP ch. 5 "Framing" (b\'\' is end of file)'),
)
def check_eof_mid_question(ctx: CheckContext) -> None:
    """Like client.py -e, send b'Beautiful is better than' (no '?') and close.
    Then send b'Explicit is better' and half-close: the question never ends, so
    the server must not answer it, and must close the connection. A third client
    must still be served: a hang-up mid-question is a normal event, not a crash."""
    with ctx.connect(label="client.py -e") as quitter:
        quitter.send(b"Beautiful is better than")
    half = ctx.connect(label="half-question-then-eof")
    half.send(b"Explicit is better")
    finish(ctx, half, after="in the middle of a question (b'Explicit is better', no '?')")
    with ctx.connect(label="next-client") as next_client:
        ask(
            ctx,
            next_client,
            b"Simple is better than?",
            closed_hint="the target stopped serving after clients hung up mid-question: catch EOF in the conversation, not around the server",
        )


@SUITE.check(
    "conversation",
    "half-close-after-question",
    title="answers a question that arrives together with the client's EOF, then closes",
    references=(BOOK_HALF_CLOSE, BOOK_PROTOCOL),
)
def check_half_close_after_question(ctx: CheckContext) -> None:
    """Send a question and shutdown(SHUT_WR) so that the question and the FIN
    travel in one TCP segment (TCP_CORK). The client can still read: the server
    must answer, then close with a FIN. A server that treats "the peer hung up"
    as "drop the connection" before reading what came with it loses the question."""
    question = ctx.rng.choice(sorted(APHORISMS))
    client = ctx.connect(label="question-with-fin")
    client_port = client.sock.getsockname()[1]
    # Corked, the question waits in the kernel until shutdown() sends it with the
    # FIN (Linux); without TCP_CORK the FIN follows the question a moment later.
    cork = getattr(socket, "TCP_CORK", None)
    if cork is not None:
        client.sock.setsockopt(socket.IPPROTO_TCP, cork, 1)
    client.send(question)
    client.shutdown_write()
    wait = ctx.timeout(ANSWER_TIMEOUT)
    try:
        data, how = client.read_until_close(timeout=wait)
    except ProtocolViolation as silence:
        ctx.fail(
            f"after {format_bytes(question)} and the client's EOF in one segment, the target did not answer and close within {wait:.1f} s",
            expected=f"{format_bytes(APHORISMS[question])}, then EOF",
            got=silence.got,
            hint="answer the question, then close when recv() returns b''",
        )
    ctx.expect(
        data == APHORISMS[question],
        f"the target answered {format_bytes(question)} sent with the client's EOF with {format_bytes(data) if data else 'nothing'}",
        expected=f"{format_bytes(APHORISMS[question])}, then EOF",
        got=f"{format_bytes(data)}, then {'RST' if how == 'reset' else 'EOF'}",
        hint=(
            "read the data before acting on the hang-up: a half-closed client still reads the answer "
            "(with poll(), handle POLLIN before POLLHUP/POLLRDHUP; recv() returns the question first, then b'')"
            if not data
            else "an answer ends with '.' and nothing follows it"
        ),
    )
    ctx.expect(
        how == "eof",
        "the target answered, then reset the connection (RST) instead of closing it",
        expected="EOF (FIN) after the answer",
        got="RST" + evidence_note(ctx),
        hint="close() after reading until b''; SO_LINGER 0 or unread data turns the close into an RST",
    )
    expect_no_reset_after_fin(ctx, client_port, after="after the answer")


# -- framing -----------------------------------------------------------------------


@SUITE.check(
    "framing",
    "split-question",
    title="answers a question split at every position, and one sent a byte per segment",
    references=(BOOK_FRAMING, BOOK_PROTOCOL, 'FOPNP ch. 3 "TCP Sockets" (B:1667)'),
)
def check_split_question(ctx: CheckContext) -> None:
    """For each aphorism and each position in it, send the question in two TCP
    segments 10 ms apart, on a connection of its own: the answer must be right
    every time (one recv() is not one question). Then send each question through
    the TCP fault proxy, which delivers one byte per segment."""
    for question in sorted(APHORISMS):
        for cut in range(1, len(question)):
            with ctx.connect(label=f"split-at-{cut}") as client:
                ask(ctx, client, question, pieces=split_at(question, [cut]))
    one_byte = TCPFaults(slice_size=1, slice_pause=0.002)
    with TCPFaultProxy(ctx.address, client_to_server=one_byte, seed=ctx.rng.getrandbits(32), transcript=ctx.transcript) as proxy:
        for question in [*sorted(APHORISMS), b"Is this the right room for an argument?"]:
            with ctx.connect(proxy.address, label="byte-per-segment") as client:
                try:
                    ask(ctx, client, question)
                except ProtocolViolation as violation:
                    raise ProtocolViolation(
                        f"{violation.summary}, delivered one byte per segment by the TCP fault proxy",
                        expected=violation.expected,
                        got=violation.got,
                        hint=violation.hint,
                    ) from None


# Printable ASCII and characters of 2, 3 and 4 bytes in UTF-8: enough to cut a
# character in two, without Hypothesis building its Unicode tables each run.
_TEXT_ALPHABET = sorted(set(map(chr, range(32, 127))) - {"?"}) + list("éßøñ€→日本語🐍😀")


@st.composite
def _conversations(draw: st.DrawFn) -> list[tuple[bytes, list[int]]]:
    """1-3 questions, each cut at up to 4 positions: aphorisms, unicode text, or any bytes."""
    question = st.one_of(
        st.sampled_from(sorted(APHORISMS)),
        st.text(st.sampled_from(_TEXT_ALPHABET), max_size=24).map(lambda t: t.encode() + b"?"),
        st.binary(max_size=24).map(lambda b: b.replace(b"?", b"") + b"?"),
    )
    conversation = []
    for asked in draw(st.lists(question, min_size=1, max_size=3)):
        cuts = draw(st.lists(st.integers(1, len(asked) - 1), max_size=4, unique=True)) if len(asked) > 1 else []
        conversation.append((asked, sorted(cuts)))
    return conversation


def _describe_conversation(conversation: list[tuple[bytes, list[int]]]) -> str:
    return ", then ".join(describe_pieces(split_at(q, cuts)) for q, cuts in conversation) + " on one connection"


@SUITE.check(
    "framing",
    "split-anywhere",
    title="answers any questions, of any bytes, split anywhere (Hypothesis)",
    references=(BOOK_FRAMING, BOOK_PROTOCOL, 'FOPNP ch. 4 "Encoding and Decoding" (B:2818)'),
    timeout=45.0,
)
def check_split_anywhere(ctx: CheckContext) -> None:
    """Hypothesis draws conversations of 1-3 questions (aphorisms, unicode text,
    arbitrary bytes; each ending in '?') and cuts each question at arbitrary
    positions, sent as separate segments. Every answer must be the table's. This
    finds what hand-picked cases miss: a question cut inside a UTF-8 character,
    a byte a decoder rejects. Seeded from --netlab-seed, bounded in examples and
    time; the failure shows the smallest failing conversation found."""

    def attempt(conversation: list[tuple[bytes, list[int]]]) -> None:
        with ctx.connect(label="hypothesis") as client:
            for answered, (question, cuts) in enumerate(conversation):
                ask(
                    ctx,
                    client,
                    question,
                    pieces=split_at(question, cuts),
                    pause=SEARCH_PAUSE,
                    digest=True,  # each piece its own read() on the target's side, as the search meant
                    closed_hint=(
                        _closed_after(answered)
                        if answered
                        else "every question that ends with '?' gets an answer: compare bytes, do not decode them "
                        "(a UTF-8 decoder fails on a character cut in two, or on bytes that are not UTF-8)"
                    ),
                )

    search_for_failure(
        ctx,
        _conversations(),
        attempt,
        describe=_describe_conversation,
        max_examples=SEARCH_EXAMPLES,
        budget=ctx.timeout(SEARCH_BUDGET),
    )


@SUITE.check(
    "framing",
    "pipelined",
    title="how it answers two questions sent in one segment (observed only: the book's servers disagree)",
    severity=Severity.INFO,
    references=(BOOK_PROTOCOL, "FOPNP ch. 7 srv_legacy2.py (asynchat) vs zen_utils.recv_until()"),
)
def check_pipelined(ctx: CheckContext) -> None:
    """Send b'Beautiful is better than?Simple is better than?' in one segment and
    record what comes back within a second: one answer per question
    (b'Ugly.Complex.', as asynchat splits on '?') or one error for the lot (as
    zen_utils.recv_until() looks only at the end of the buffer). Never fails."""
    questions = [b"Beautiful is better than?", b"Simple is better than?"]
    reply = b""
    with ctx.connect(label="pipelined") as client:
        client.send(b"".join(questions))
        for _ in questions:
            try:
                reply += client.recv_until(b".", timeout=ctx.timeout(1.0), max_bytes=4096)
            except ProtocolViolation:
                break
    ctx.observe(describe_pipelined_reply(questions, reply))
