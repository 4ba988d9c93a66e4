"""Pure helpers of the zen and framed suites: the answer table, splits, framing, diagnoses, the bounded search."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis.configuration import set_hypothesis_home_dir, storage_directory
from hypothesis import strategies as st

from pytest_netlab.context import CheckContext
from pytest_netlab.declarations import TargetSpec
from pytest_netlab.errors import ProtocolViolation
from pytest_netlab.registry import Check, Role, Severity, Suite
from pytest_netlab.suites.bulk_transfer import first_difference
from pytest_netlab.suites.framed._wire import (
    END,
    explain_split,
    explain_wrong_length,
    frame,
    little_endian_length,
    parse_frames,
)
from pytest_netlab.suites.framed._wire import describe_pieces as describe_stream_pieces
from pytest_netlab.suites.zen._bounded_search import search_for_failure
from pytest_netlab.suites.zen._protocol import (
    UNKNOWN_ANSWER,
    UNKNOWN_QUESTIONS,
    answer_to,
    describe_pieces,
    describe_pipelined_reply,
    explain_wrong_answer,
    split_at,
)

# -- zen: the protocol -------------------------------------------------------------


def test_the_table_is_byte_exact_and_everything_else_is_unknown() -> None:
    assert answer_to(b"Beautiful is better than?") == b"Ugly."
    assert answer_to(b"Explicit is better than?") == b"Implicit."
    assert answer_to(b"Simple is better than?") == b"Complex."
    assert answer_to(b"Simple is better than?\n") == UNKNOWN_ANSWER
    assert UNKNOWN_ANSWER == b"Error: unknown aphorism."
    assert all(answer_to(question) == UNKNOWN_ANSWER for question, _ in UNKNOWN_QUESTIONS)


def test_split_at_ignores_cuts_outside_and_repeated() -> None:
    assert split_at(b"abcd", [3, 1, 1, 9, 0, -2]) == [b"a", b"bc", b"d"]
    assert split_at(b"abcd", []) == [b"abcd"]


@given(st.binary(max_size=64), st.lists(st.integers(-5, 70)))
def test_split_at_keeps_every_byte_in_order(data: bytes, cuts: list[int]) -> None:
    pieces = split_at(data, cuts)
    assert b"".join(pieces) == data
    assert all(pieces) or data == b""


def test_pieces_are_described_segment_by_segment() -> None:
    assert describe_pieces([b"Beau", b"tiful?"]) == "b'Beau' | b'tiful?' (2 segments)"
    assert describe_pieces([b"?"]) == "b'?' (one segment)"


@pytest.mark.parametrize(
    ("pieces", "expected", "got", "words"),
    [
        ([b"Beau", b"tiful is better than?"], b"Ugly.", UNKNOWN_ANSWER, "one recv() is not one message"),
        ([b"Beautiful is better than?"], b"Ugly.", UNKNOWN_ANSWER, "exact bytes"),
        ([b"Simple is better than?"], b"Complex.", b"\nComplex.", "newline"),
        ([b"beautiful is better than?"], UNKNOWN_ANSWER, b"Ugly.", "only the three exact questions"),
        ([b"Beautiful is better than?"], b"Ugly.", b"ugly.", "upper and lower case"),
        ([b"Beautiful is better than?"], b"Ugly.", b" Ugly.", "no spaces"),
        ([b"Beautiful is better than?"], b"Ugly.", b"Beautiful.", "exactly the bytes of the table"),
    ],
)
def test_a_wrong_answer_is_explained(pieces: list[bytes], expected: bytes, got: bytes, words: str) -> None:
    assert words in explain_wrong_answer(pieces, expected, got)


def test_pipelined_replies_are_described_by_the_book_server_they_resemble() -> None:
    questions = [b"Beautiful is better than?", b"Simple is better than?"]
    assert "one by one" in describe_pipelined_reply(questions, b"Ugly.Complex.")
    assert "zen_utils" in describe_pipelined_reply(questions, UNKNOWN_ANSWER)
    assert "nothing" in describe_pipelined_reply(questions, b"")
    assert "b'Ugly.'" in describe_pipelined_reply(questions, b"Ugly.")


# -- framed: the wire --------------------------------------------------------------


def test_a_message_is_a_big_endian_length_and_the_payload() -> None:
    assert frame(b"hi") == b"\x00\x00\x00\x02hi"
    assert END == b"\x00\x00\x00\x00"
    assert parse_frames(b"\x00\x00\x00\x02hi\x00\x00\x00\x00\x00\x00") == ([b"hi", b""], b"\x00\x00")


@given(st.lists(st.binary(max_size=40), max_size=5), st.binary(max_size=3))
def test_parse_frames_undoes_frame_and_keeps_the_rest(payloads: list[bytes], partial: bytes) -> None:
    messages, rest = parse_frames(b"".join(frame(p) for p in payloads) + partial)
    assert messages == payloads
    assert rest == partial


def test_a_little_endian_length_is_recognised() -> None:
    assert little_endian_length(b"\x00\x00\x01\x05") == 83_951_616
    assert "little-endian" in explain_wrong_length(struct.pack("<I", 261), 261)
    assert "not the 4 bytes" in explain_wrong_length(struct.pack("!I", 265), 261)
    assert "struct.pack('!I', len(payload))" in explain_wrong_length(struct.pack("!I", 7), 261)


@pytest.mark.parametrize(
    ("payloads", "cuts", "words"),
    [
        ([b"ab", b"c"], [7], "here 1 byte of the next length"),
        ([b"ab", b"c"], [4, 9], "here 3 bytes of the next length"),
        ([b"ab", b"c"], [2], "a 4-byte length arrived in pieces"),
        ([b"ab", b"c"], [6, 8], "a 4-byte length arrived in pieces"),
        ([b"abcdef"], [6], "a payload arrived in pieces"),
        ([b"ab", b"c"], [], "several messages arrived in one recv()"),
        ([b"ab"], [], "read the 4-byte length"),
    ],
)
def test_a_split_is_explained_by_the_mistake_it_exposes(payloads: list[bytes], cuts: list[int], words: str) -> None:
    assert words in explain_split(payloads, cuts)


def test_stream_pieces_are_described_and_long_lists_cut() -> None:
    assert describe_stream_pieces([b"\x00", b"\x00\x00\x01x"]) == "b'\\x00' | b'\\x00\\x00\\x01x' (2 segments)"
    assert describe_stream_pieces([b"a"] * 9).endswith("... 3 more (9 segments)")
    assert first_difference(b"abcd", b"abXd") == 2
    assert first_difference(b"abcd", b"ab") == 2


# -- the bounded Hypothesis search -------------------------------------------------


@pytest.fixture
def contexts() -> Iterator[Callable[[int], CheckContext]]:
    """Real check contexts with no target (the search needs only their rng, transcript and workdir)."""
    made: list[CheckContext] = []

    def make(seed: int = 1234) -> CheckContext:
        suite = Suite("demo", Role.SERVER, title="demo", placeholders=("host", "port"))
        check = Check("demo/a/b", "b", Severity.MUST, (), Role.SERVER, 2.0, func=lambda ctx: None)
        spec = TargetSpec(name="demo", origin="demo", source="test", command=None, address=None, suites=("demo",))
        made.append(CheckContext(check, spec, suite, pool=None, seed=seed))
        return made[-1]

    yield make
    for ctx in made:
        ctx.close()


def _fails_from_100(number: int) -> None:
    if number >= 100:
        raise ProtocolViolation(f"{number} is too big", expected="below 100", got=str(number), hint="count lower")


def test_the_search_reports_the_smallest_failing_example(contexts: Callable[[int], CheckContext]) -> None:
    with pytest.raises(ProtocolViolation) as raised:
        search_for_failure(contexts(1234), st.integers(0, 10_000), _fails_from_100, describe=repr, max_examples=200, budget=30.0)
    violation = raised.value
    assert violation.summary == "100 is too big; Hypothesis's smallest failing example: 100"
    assert violation.expected == "below 100" and violation.hint == "count lower"
    assert "search seed" in violation.got


def test_a_property_that_holds_passes_and_the_search_is_bounded(contexts: Callable[[int], CheckContext]) -> None:
    tried: list[int] = []
    search_for_failure(contexts(1234), st.integers(0, 99), tried.append, describe=repr, max_examples=25, budget=30.0)
    assert 0 < len(tried) <= 25


def test_a_spent_budget_stops_the_search(contexts: Callable[[int], CheckContext]) -> None:
    tried: list[int] = []
    search_for_failure(contexts(1234), st.integers(), tried.append, describe=repr, max_examples=50, budget=0.0)
    assert tried == []


def test_the_same_seed_tries_the_same_examples(contexts: Callable[[int], CheckContext]) -> None:
    runs = []
    for _ in range(2):
        tried: list[bytes] = []
        search_for_failure(contexts(7), st.binary(max_size=8), tried.append, describe=repr, max_examples=20, budget=30.0)
        runs.append(tried)
    assert runs[0] == runs[1]


def test_the_search_keeps_hypothesis_caches_out_of_the_users_directory(contexts: Callable[[int], CheckContext], tmp_path: Path) -> None:
    users_home = tmp_path / "users-home"
    set_hypothesis_home_dir(users_home)
    try:
        ctx = contexts(3)
        search_for_failure(ctx, st.integers(), lambda number: None, describe=repr, max_examples=10, budget=30.0)
        assert storage_directory(intent_to_write=False).home_directory == users_home
        assert not users_home.exists()
    finally:
        set_hypothesis_home_dir(None)


@given(st.binary(max_size=9000), st.binary(max_size=9000))
def test_first_difference_is_the_first_unequal_offset(expected: bytes, got: bytes) -> None:
    # Blocks of 4 KiB are compared first: the answer must match the byte-by-byte definition.
    naive = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
    assert first_difference(expected, got) == naive
    same = expected + b"\x00" + expected
    assert first_difference(same, expected + b"\x01" + expected) == len(expected)
