"""Tests of the strict HTTP/1.x wire reader: byte literals fed whole, one byte at a
time and with trailing bytes; every violation with its rule and offending bytes;
and h11 as an oracle on generated well-formed responses."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterator

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_netlab.http_wire import (
    HttpRequest,
    HttpResponse,
    RequestReader,
    ResponseReader,
    WireViolation,
    is_imf_fixdate,
    list_tokens,
    parse_http_date,
)

Reader = ResponseReader | RequestReader
MODES = ["whole", "bytewise", "trailing"]
TRAILER = b"HTTP/1.1 204 No Content\r\n\r\n"


def chunks(data: bytes, mode: str) -> Iterator[bytes]:
    if mode == "bytewise":
        yield from (data[i : i + 1] for i in range(len(data)))
    else:
        yield data


def read_all(reader: Reader, data: bytes, mode: str, eof: bool = True) -> list[HttpResponse | HttpRequest]:
    """Feed ``data`` as ``mode`` says, collecting every message; EOF at the end."""
    messages = []
    for piece in chunks(data, mode):
        reader.feed(piece)
        while (message := reader.next_message()) is not None:
            messages.append(message)
    if eof:
        reader.feed_eof()
        while (message := reader.next_message()) is not None:
            messages.append(message)
    return messages


def one_response(data: bytes, mode: str, method: str = "GET", version: tuple[int, int] = (1, 1)) -> HttpResponse:
    """Read one response; in "trailing" mode another response follows it and must stay intact."""
    reader = ResponseReader()
    reader.expect(method, version)
    if mode == "trailing":
        reader.expect("GET")
        messages = read_all(reader, data + TRAILER, "whole")
        assert [m.status for m in messages][1:] == [204]  # type: ignore[union-attr]
    else:
        messages = read_all(reader, data, mode)
        assert len(messages) == 1
    response = messages[0]
    assert isinstance(response, HttpResponse)
    return response


def violation(data: bytes, mode: str, method: str = "GET", version: tuple[int, int] = (1, 1), expects: int = 1) -> WireViolation:
    reader = ResponseReader()
    for _ in range(expects):
        reader.expect(method, version)
    with pytest.raises(WireViolation) as caught:
        read_all(reader, data, mode)
    return caught.value


# -- well-formed responses -------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_content_length_body(mode: str) -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ncontent-LENGTH: 5\r\n\r\nhello"
    response = one_response(data, mode)
    assert (response.version, response.status, response.reason, response.body) == ((1, 1), 200, b"OK", b"hello")
    assert response.framing == "content-length"
    assert response.header("Content-Type") == b"text/plain"
    assert response.raw == data and response.offset == 0 and response.persistent


@pytest.mark.parametrize("mode", MODES)
def test_chunked_body_with_extensions_uppercase_hex_and_trailers(mode: str) -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1A;name=value\r\n" + b"a" * 26 + b"\r\n"
        b"3 ; q=\"x y\"\r\nxyz\r\n"
        b"0\r\nX-Checksum: 42\r\n\r\n"
    )
    response = one_response(data, mode)
    assert response.body == b"a" * 26 + b"xyz"
    assert response.framing == "chunked"
    assert response.trailers == ((b"X-Checksum", b"42"),)


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_close_delimited_body_ends_at_eof(mode: str) -> None:
    response = one_response(b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nall of it", mode)
    assert (response.body, response.framing, response.persistent) == (b"all of it", "close", False)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("status", [204, 304])
def test_responses_without_body(mode: str, status: int) -> None:
    data = f"HTTP/1.1 {status} X\r\nETag: \"a\"\r\n\r\n".encode()
    response = one_response(data, mode)
    assert (response.status, response.body, response.framing) == (status, b"", "none")


@pytest.mark.parametrize("mode", MODES)
def test_head_response_has_no_body_whatever_its_content_length(mode: str) -> None:
    response = one_response(b"HTTP/1.1 200 OK\r\nContent-Length: 104\r\n\r\n", mode, method="HEAD")
    assert (response.body, response.framing, response.request_method) == (b"", "none", "HEAD")


@pytest.mark.parametrize("mode", MODES)
def test_interim_responses_come_with_the_final_one(mode: str) -> None:
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    response = one_response(data, mode)
    assert [i.status for i in response.interim] == [100, 103]
    assert (response.status, response.body, response.raw) == (200, b"ok", data)


def test_pipelined_responses_follow_their_requests() -> None:
    reader = ResponseReader()
    for method in ("GET", "HEAD", "GET"):
        reader.expect(method)
    data = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    )
    messages = read_all(reader, data, "bytewise")
    assert [(m.status, m.body) for m in messages] == [(200, b"abc"), (200, b""), (404, b"")]  # type: ignore[union-attr]
    assert [m.offset for m in messages] == [0, 41, 79]
    assert reader.outstanding == 0 and reader.idle


def test_empty_reason_phrase_and_persistence_rules() -> None:
    assert one_response(b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", "whole").reason == b""
    assert not one_response(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", "whole").persistent
    assert not one_response(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", "whole").persistent
    assert one_response(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n", "whole").persistent


def test_progress_says_what_is_missing() -> None:
    reader = ResponseReader()
    assert reader.progress() == "a response"
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    assert reader.next_message() is None
    assert reader.progress() == "the rest of the body: 3 of the 10 bytes that Content-Length declared"


# -- violations in responses -----------------------------------------------------

BAD_RESPONSES: list[tuple[str, bytes, str, bytes, str]] = [
    # (id, bytes, summary fragment, offending bytes start, rule fragment)
    ("bare-lf", b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", "bare LF", b"HTTP/1.1 200 OK\n", "RFC 9112 section 2.1"),
    ("no-space-after-code", b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", "status line", b"HTTP/1.1 200", "SP [ reason-phrase ]"),
    ("two-digit-code", b"HTTP/1.1 20 OK\r\n\r\n", "status line", b"HTTP/1.1 20 OK", "section 4"),
    ("code-out-of-range", b"HTTP/1.1 600 Odd\r\n\r\n", "outside 100-599", b"HTTP/1.1 600 Odd", "section 15"),
    ("lowercase-version", b"http/1.1 200 OK\r\n\r\n", "does not begin with a status line", b"http/1.1", "section 4"),
    ("version-2", b"HTTP/2.0 200 OK\r\n\r\n", "HTTP/2.0 status line", b"HTTP/2.0 200 OK", "section 6.2"),
    ("space-before-colon", b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n", "whitespace between a field name", b"Content-Length : 0", "section 5.1"),
    ("obs-fold", b"HTTP/1.1 200 OK\r\nX-A: 1\r\n  folded\r\nContent-Length: 0\r\n\r\n", "obs-fold", b"  folded", "section 5.2"),
    ("space-after-start-line", b"HTTP/1.1 200 OK\r\n X-A: 1\r\n\r\n", "between the start line and the first field", b" X-A: 1", "section 2.2"),
    ("no-colon", b"HTTP/1.1 200 OK\r\nJustText\r\n\r\n", "no colon", b"JustText", "section 5"),
    ("nul-in-value", b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n\r\n", "control character", b"X-A: a\x00b", "section 5.5"),
    ("length-not-decimal", b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n", "not a decimal number", b"Content-Length: 0x10", "section 8.6"),
    ("length-negative", b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "not a decimal number", b"Content-Length: -1", "section 8.6"),
    ("two-lengths", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc", "2 Content-Length fields", b"Content-Length: 2\r\nContent-Length: 3", "section 8.6"),
    ("length-list", b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc", "not a decimal number", b"Content-Length: 3, 3", "section 8.6"),
    ("te-and-length", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", "both Transfer-Encoding and Content-Length", b"HTTP/1.1 200 OK", "section 6.2"),
    ("chunked-twice", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", "more than once", b"Transfer-Encoding: chunked, chunked", "section 7"),
    ("chunk-size-not-hex", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n", "hexadecimal size", b"zz", "section 7.1"),
    ("chunk-size-junk", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2 junk\r\nab\r\n0\r\n\r\n", "not a chunk extension", b"2 junk", "section 7.1"),
    ("chunk-longer", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n", "not followed by CRLF", b"c\r\n0", "section 7.1"),
    ("chunk-no-crlf", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab0\r\n\r\n", "not followed by CRLF", b"0\r\n", "section 7.1"),
    ("chunk-bare-lf", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nab\r\n0\r\n\r\n", "bare LF", b"2\n", "section 7.1"),
    ("length-on-204", b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", "204 response carries Content-Length", b"HTTP/1.1 204", "section 8.6"),
    ("te-on-204", b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n", "204 response carries Transfer-Encoding", b"HTTP/1.1 204", "section 6.1"),
    ("length-on-100", b"HTTP/1.1 100 Continue\r\nContent-Length: 0\r\n\r\n", "100 response carries Content-Length", b"HTTP/1.1 100", "section 8.6"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", BAD_RESPONSES, ids=[c[0] for c in BAD_RESPONSES])
def test_response_violations_name_the_rule_and_the_bytes(case: tuple[str, bytes, str, bytes, str], mode: str) -> None:
    _, data, summary, offending, rule = case
    error = violation(data + (TRAILER if mode == "trailing" else b""), "whole" if mode == "trailing" else mode, expects=2)
    assert summary in error.summary
    # Fed one byte at a time, a violation is reported as soon as its first bytes arrive.
    shown = error.offending
    assert shown.startswith(offending) or offending.startswith(shown), shown
    assert rule in error.rule
    assert error.offset == data.find(offending[:1] if offending.startswith(b"HTTP/") else offending)


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_body_on_a_head_response_is_reported_with_its_bytes(mode: str) -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    reader = ResponseReader()
    reader.expect("HEAD")
    reader.expect("GET")
    with pytest.raises(WireViolation) as caught:
        read_all(reader, data, mode)
    error = caught.value
    count = "5 bytes" if mode == "whole" else "at least 1 byte"  # bytewise: reported at the first wrong byte
    assert error.summary == f"{count} followed the response to a HEAD request, which cannot have a body (it declared Content-Length: 5)"
    assert b"hello".startswith(error.offending) and error.offset == 38
    assert "cannot contain a message body" in error.rule


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_body_on_304_is_caught_as_soon_as_it_arrives(mode: str) -> None:
    reader = ResponseReader()
    reader.expect("GET")
    first = read_all(reader, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 4\r\n\r\n", mode, eof=False)
    assert first[0].status == 304  # type: ignore[union-attr]
    reader.feed(b"body")
    error = reader.unexpected_bytes()
    assert error is not None and error.summary.startswith("at least 4 bytes followed a 304 response, which cannot have a body")


def test_body_longer_than_its_content_length() -> None:
    reader = ResponseReader()
    reader.expect("GET")
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef")
    assert reader.next_message().body == b"abc"  # type: ignore[union-attr]
    reader.feed_eof()
    error = reader.unexpected_bytes()
    assert error is not None and error.summary.startswith("3 bytes followed the 3 body bytes that Content-Length declared")
    assert error.offending == b"def" and error.offset == 41


def test_a_response_no_request_asked_for() -> None:
    reader = ResponseReader()
    reader.expect("GET")
    read_all(reader, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n", "whole", eof=False)
    error = reader.unexpected_bytes()
    assert error is not None and error.summary == "the server sent a response that no request asked for"
    assert ResponseReader().unexpected_bytes() is None


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_body_shorter_than_declared_at_eof(mode: str) -> None:
    error = violation(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", mode)
    assert error.summary == "the connection closed after 3 of the 10 body bytes that Content-Length declared"
    assert error.offending == b"abc" and "incomplete" in error.rule


def test_truncated_head_and_chunked_body_at_eof() -> None:
    assert "middle of a response head" in violation(b"HTTP/1.1 200 OK\r\nContent-Le", "whole").summary
    assert "before the last chunk" in violation(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", "whole").summary
    assert "inside a chunk: 2 of its 5 bytes" in violation(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhe", "whole").summary


def test_chunked_response_to_an_http10_request() -> None:
    error = violation(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "whole", version=(1, 0))
    assert "HTTP/1.0 request uses Transfer-Encoding" in error.summary and "section 6.1" in error.rule


def test_head_larger_than_the_limit() -> None:
    reader = ResponseReader(max_head=100)
    reader.feed(b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 20)
    with pytest.raises(WireViolation, match="longer than 100 bytes"):
        reader.next_message()


def test_garbage_instead_of_a_status_line_is_reported_before_any_newline() -> None:
    reader = ResponseReader()
    reader.feed(b"<html>")
    with pytest.raises(WireViolation, match="does not begin with a status line"):
        reader.next_message()


# -- requests ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_requests_with_and_without_bodies(mode: str) -> None:
    data = (
        b"GET /a/b?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAccept: */*\r\n\r\n"
        b"POST /form HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\na=1"
        b"PUT /up HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    )
    if mode == "trailing":
        data += b"GET /next HTTP/1.1\r\n"
    messages = read_all(RequestReader(), data, "whole" if mode == "trailing" else mode, eof=mode != "trailing")
    got = [(m.method, m.target, m.version, m.body, m.framing) for m in messages]  # type: ignore[union-attr]
    assert got == [
        ("GET", "/a/b?x=1", (1, 1), b"", "none"),
        ("POST", "/form", (1, 1), b"a=1", "content-length"),
        ("PUT", "/up", (1, 0), b"hi", "chunked"),
    ]
    assert messages[0].header("host") == b"127.0.0.1:8080"
    assert messages[0].request_line == b"GET /a/b?x=1 HTTP/1.1"  # type: ignore[union-attr]


BAD_REQUESTS: list[tuple[str, bytes, str, str]] = [
    ("double-space", b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", "single spaces", "section 3"),
    ("absolute-garbage", b"\x16\x03\x01\x02\x00", "does not begin with a method", "section 3"),
    ("leading-crlf", b"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", "extra CRLF", "section 2.2"),
    ("bare-lf", b"GET / HTTP/1.1\nHost: h\n\n", "bare LF", "section 2.1"),
    ("lowercase-http", b"GET / http/1.1\r\n\r\n", "single spaces", "section 3"),
    ("te-not-chunked", b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "does not end with chunked", "section 6.3"),
    ("space-in-target", b"GET /a b HTTP/1.1\r\n\r\n", "single spaces", "section 3"),
]


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_request_violations(case: tuple[str, bytes, str, str], mode: str) -> None:
    _, data, summary, rule = case
    with pytest.raises(WireViolation) as caught:
        read_all(RequestReader(), data, mode)
    assert summary in caught.value.summary and rule in caught.value.rule


# -- grammar helpers ------------------------------------------------------------------


def test_http_dates_in_all_three_forms() -> None:
    expected = datetime(1994, 11, 6, 8, 49, 37, tzinfo=timezone.utc)
    assert parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT") == expected
    assert parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT") == expected
    assert parse_http_date(b"Sun Nov  6 08:49:37 1994") == expected
    assert parse_http_date(b"2024-01-01T00:00:00Z") is None
    assert parse_http_date(b"Sun, 31 Feb 1994 08:49:37 GMT") is None
    assert is_imf_fixdate(b"Sun, 06 Nov 1994 08:49:37 GMT")
    assert not is_imf_fixdate(b"Sun, 06 Nov 1994 08:49:37 +0000")
    assert not is_imf_fixdate(b"Sunday, 06-Nov-94 08:49:37 GMT")


def test_list_tokens() -> None:
    assert list_tokens([b"Keep-Alive ,close", b"", b"gzip;q=1"]) == ["keep-alive", "close", "gzip"]


# -- h11 as an oracle -------------------------------------------------------------------

_names = st.sampled_from(["Server", "X-Token", "content-type", "Cache-Control", "ETag", "Vary"])
_values = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=0, max_size=20)


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, int, list[tuple[str, str]], bytes]:
    status = draw(st.sampled_from([200, 201, 206, 301, 404, 500, 599]))
    fields = draw(st.lists(st.tuples(_names, _values), max_size=5))
    body = draw(st.binary(max_size=300))
    chunked = draw(st.booleans())
    head = [f"HTTP/1.1 {status} Reason Phrase".encode()] + [f"{n}: {v}".encode() for n, v in fields]
    if chunked:
        sizes = draw(st.lists(st.integers(min_value=1, max_value=64), max_size=10))
        pieces, rest = [], body
        for size in sizes:
            if rest:
                pieces.append(rest[:size])
                rest = rest[size:]
        if rest:
            pieces.append(rest)
        encoded = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"
        head.append(b"Transfer-Encoding: chunked")
    else:
        encoded = body
        head.append(f"Content-Length: {len(body)}".encode())
    return b"\r\n".join(head) + b"\r\n\r\n" + encoded, status, fields, body


def h11_read(data: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    connection = h11.Connection(h11.CLIENT)
    connection.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    connection.send(h11.EndOfMessage())
    connection.receive_data(data)
    status, fields, body = 0, [], b""
    while True:
        event = connection.next_event()
        if isinstance(event, h11.Response):
            status, fields = event.status_code, [(n, v) for n, v in event.headers]
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage) or event is h11.NEED_DATA:
            return status, fields, body


@settings(max_examples=150, deadline=None)
@given(responses(), st.integers(min_value=1, max_value=50))
def test_agrees_with_h11_on_well_formed_responses(case: tuple[bytes, int, list[tuple[str, str]], bytes], step: int) -> None:
    data, status, fields, body = case
    reader = ResponseReader()
    reader.expect("GET")
    got = None
    for offset in range(0, len(data), step):
        reader.feed(data[offset : offset + step])
        got = got or reader.next_message()
    assert got is not None and reader.pending == b""
    h11_status, h11_fields, h11_body = h11_read(data)
    assert (got.status, got.body) == (h11_status, h11_body) == (status, body)
    assert [(n.lower(), v) for n, v in got.fields] == [(n.lower(), v) for n, v in h11_fields]
