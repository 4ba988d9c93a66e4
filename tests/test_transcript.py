"""Transcripts: events, merging, excerpts."""

from __future__ import annotations

import time

import pytest

from pytest_netlab.transcript import CLIENT_TO_SERVER, SERVER_TO_CLIENT, Transcript, format_bytes


def test_excerpt_merges_consecutive_data_and_keeps_the_first_time() -> None:
    t = Transcript()
    for byte in b"Beautiful?":
        t.record(CLIENT_TO_SERVER, "data", bytes([byte]), stream="conn1")
    t.record(SERVER_TO_CLIENT, "data", b"Ugly.", stream="conn1")
    t.record(SERVER_TO_CLIENT, "eof", stream="conn1")
    text = t.excerpt()
    assert text.startswith("[conn1] c->s b'Beautiful?' (t=0.0")
    assert "[conn1] s->c b'Ugly.'" in text and "[conn1] s->c <EOF>" in text


def test_excerpt_shows_the_last_events_only() -> None:
    t = Transcript()
    for i in range(20):
        t.record(CLIENT_TO_SERVER if i % 2 else SERVER_TO_CLIENT, "data", str(i).encode())
    assert t.excerpt(last=3).startswith("... ")
    assert t.excerpt(last=3).count("(t=") == 3


def test_received_joins_one_direction() -> None:
    t = Transcript()
    t.record(SERVER_TO_CLIENT, "data", b"ab", stream="a")
    t.record(CLIENT_TO_SERVER, "data", b"xx", stream="a")
    t.record(SERVER_TO_CLIENT, "data", b"cd", stream="b")
    assert t.received() == b"abcd"
    assert t.received(stream="b") == b"cd"


def test_at_stamps_an_earlier_moment() -> None:
    t = Transcript()
    moment = time.monotonic()
    time.sleep(0.01)
    event = t.record(CLIENT_TO_SERVER, "data", b"x", at=moment)
    assert event.t < t.now()


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown event kind"):
        Transcript().record(CLIENT_TO_SERVER, "datagram")


def test_long_payloads_are_cut_in_the_middle() -> None:
    text = format_bytes(b"a" * 10 + b"b" * 100 + b"c" * 10, limit=20)
    assert text == "b'aaaaaaaaaa'...<100 more bytes>...b'cccccccccc'"
