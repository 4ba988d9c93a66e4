"""The Zen-of-Python protocol of FOPNP ch. 7 as pure functions: the answer table, splits, diagnoses.

A question is ASCII text ending with ``?``; the answer ends with ``.`` and
nothing follows it (no newline). Three questions have an aphorism for an
answer; every other question gets ``Error: unknown aphorism.``. The book:
"the client requests always end with a question mark and ... answers—even
the fallback error message—always end with a period. These two pieces of
punctuation provide the tiny protocol with its framing." (B:4303)

This module owns what the protocol says and how to explain a wrong answer
in a student's words. It must not touch sockets or clocks: the checks do the
talking and call these functions to decide and to explain.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from pytest_netlab.transcript import format_bytes

__all__ = [
    "APHORISMS",
    "UNKNOWN_ANSWER",
    "UNKNOWN_QUESTIONS",
    "answer_to",
    "split_at",
    "describe_pieces",
    "explain_wrong_answer",
    "describe_pipelined_reply",
]

#: The three questions and their answers, byte for byte (B:4233-4235).
APHORISMS: dict[bytes, bytes] = {
    b"Beautiful is better than?": b"Ugly.",
    b"Explicit is better than?": b"Implicit.",
    b"Simple is better than?": b"Complex.",
}
#: The answer to every other question (B:4240).
UNKNOWN_ANSWER = b"Error: unknown aphorism."

#: Questions a sloppy matcher may mistake for an aphorism, each with why it is unknown.
UNKNOWN_QUESTIONS: tuple[tuple[bytes, str], ...] = (
    (b"Is this the right room for an argument?", "an ordinary unknown question"),
    (b"beautiful is better than?", "the first aphorism in lower case: matching is case-sensitive"),
    (b"Simple is better than complex?", "an aphorism's words followed by more words"),
    (b"?", "an empty question"),
    ("Schön ist besser als hässlich?".encode(), "a question in UTF-8, not ASCII"),
)


def answer_to(question: bytes) -> bytes:
    """The exact answer to one complete question (ending with ``?``)."""
    return APHORISMS.get(question, UNKNOWN_ANSWER)


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` cut at the given offsets; offsets outside ``1..len-1`` and repeats are ignored.

    >>> split_at(b"abcd", [3, 1, 1, 9])
    [b'a', b'bc', b'd']
    """
    inner = sorted({c for c in cuts if 0 < c < len(data)})
    bounds = [0, *inner, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def describe_pieces(pieces: Sequence[bytes]) -> str:
    """How a question went on the wire: ``b'Beau' | b'tiful is better than?' (2 segments)``."""
    if len(pieces) == 1:
        return f"{format_bytes(pieces[0])} (one segment)"
    return " | ".join(format_bytes(p, limit=40) for p in pieces) + f" ({len(pieces)} segments)"


def explain_wrong_answer(pieces: Sequence[bytes], expected: bytes, got: bytes) -> str:
    """The likely cause of a wrong answer, in the words a student would search for.

    Args:
        pieces: the question as it was sent, segment by segment.
        expected: the answer the table gives.
        got: what the target answered, up to and including its first ``.``.
    """
    if got.startswith((b"\n", b"\r")):
        return "the answer before this one was followed by a newline: an answer ends with '.' and nothing comes after it"
    if got == UNKNOWN_ANSWER and expected != UNKNOWN_ANSWER:
        if len(pieces) > 1:
            return (
                "the target answered a piece of the question, not the whole question: one recv() is not one message; "
                "keep calling recv() until the data you collected ends with b'?'"
            )
        return "the question was not recognised: compare the exact bytes (case-sensitive, no newline), as bytes"
    if expected == UNKNOWN_ANSWER and got in APHORISMS.values():
        return (
            "only the three exact questions have an aphorism for answer; any other bytes (other case, more words, "
            "another language) get b'Error: unknown aphorism.'"
        )
    if got.lower() == expected.lower():
        return "answers are byte-exact: mind the upper and lower case"
    if got.strip() == expected.strip():
        return "answers are byte-exact: no spaces or newlines around them"
    return "answer with exactly the bytes of the table, ending in '.', and nothing else"


def describe_pipelined_reply(questions: Sequence[bytes], reply: bytes) -> str:
    """An observation on how a target answered several questions sent in one segment."""
    one_by_one = b"".join(answer_to(q) for q in questions)
    if reply == one_by_one:
        return f"answered the {len(questions)} questions sent in one segment one by one, in order ({format_bytes(reply)}), like the book's asynchat server"
    if reply == UNKNOWN_ANSWER:
        return (
            f"answered {len(questions)} questions sent in one segment with one {format_bytes(UNKNOWN_ANSWER)}, "
            "like the book's zen_utils servers (recv_until() looks at the end of the whole buffer)"
        )
    if not reply:
        return f"sent nothing back for {len(questions)} questions in one segment"
    return f"answered {len(questions)} questions sent in one segment with {format_bytes(reply)}"
