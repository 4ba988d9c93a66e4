"""A strict HTTP/1.x message reader that explains every violation (sans-IO).

Bytes in, messages out. :class:`ResponseReader` reads what a server sent,
:class:`RequestReader` what a client sent; both are fed bytes as they arrive
(whole, one byte at a time, or with the next message already behind), and
``next_message()`` returns a complete :class:`HttpResponse` /
:class:`HttpRequest`, or None until more bytes come. Whatever breaks the
grammar or the framing rules of RFC 9112 raises a :class:`WireViolation`
naming the rule, quoting its sentence, and carrying the offending bytes and
their offset in the stream.

A parser in a client library is lenient on purpose (it wants the page); a
conformance tool must say exactly what is wrong. So this reader refuses bare
LF line ends, whitespace before a colon, folded lines, a Content-Length that
is not one decimal number, Content-Length beside Transfer-Encoding, bad
chunk sizes and missing chunk CRLFs, a body on a HEAD, 204 or 304 response
(seen as bytes where the next status line should start), a body longer or
shorter than declared, and chunked responses to HTTP/1.0 requests.

Example::

    reader = ResponseReader()
    reader.expect("HEAD")             # what the next response answers
    reader.feed(b"HTTP/1.1 200 OK\\r\\nContent-Length: 5\\r\\n\\r\\n")
    response = reader.next_message()  # HttpResponse(status=200, body=b"")
    reader.feed(b"hello")
    reader.unexpected_bytes()         # WireViolation: a body on a HEAD response

The message types and the grammar of their parts live in
:mod:`pytest_netlab._http_syntax`; this module owns buffering and framing.
It must not touch sockets, clocks or pytest.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Union

from ._http_syntax import (
    GrammarError,
    HttpRequest,
    HttpResponse,
    WireViolation,
    is_imf_fixdate,
    list_tokens,
    parse_chunk_size,
    parse_content_length,
    parse_field_line,
    parse_http_date,
    parse_request_line,
    parse_status_line,
    parse_transfer_coding,
)

__all__ = [
    "WireViolation",
    "HttpResponse",
    "HttpRequest",
    "ResponseReader",
    "RequestReader",
    "parse_http_date",
    "is_imf_fixdate",
    "list_tokens",
]

MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 2**20
_MAX_CHUNK_LINE = 4096
_SHOWN = 200

NO_BODY_RULE = (
    'RFC 9112 section 6.3: "Any response to a HEAD request and any response with a 1xx (Informational), '
    "204 (No Content), or 304 (Not Modified) status code is always terminated by the first empty line after "
    'the header fields, regardless of the header fields present in the message, and thus cannot contain a message body"'
)
LENGTH_RULE = (
    'RFC 9112 section 6.3: "If a valid Content-Length header field is present without Transfer-Encoding, '
    'its decimal value defines the expected message body length in octets."'
)
INCOMPLETE_RULE = (
    'RFC 9112 section 6.3: "If the sender closes the connection or the recipient times out before the indicated '
    'number of octets are received, the recipient MUST consider the message to be incomplete"'
)
CRLF_RULE = "RFC 9112 section 2.1: every line of the start line and the header section ends with CRLF"


HttpMessage = Union[HttpResponse, HttpRequest]


@dataclass
class _Body:
    """Where a message's body stands while it arrives."""

    kind: str  # content-length | chunked | close | none
    start: int  # buffer index of the first body byte
    length: int = 0  # content-length: the declared size
    pos: int = 0  # chunked: buffer index of the next unread byte
    phase: str = "size"  # chunked: size | data | trailer
    need: int = 0  # chunked: bytes of the current chunk
    chunks: list[bytes] = field(default_factory=list)
    decoded: int = 0  # chunked: data bytes so far
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)


class _Reader:
    """Buffering, line scanning, head splitting and body framing shared by both readers."""

    _what = "message"

    def __init__(self, *, max_head: int = MAX_HEAD, max_body: int = MAX_BODY) -> None:
        self._buffer = bytearray()
        self._base = 0  # stream offset of _buffer[0]
        self._scan = 0  # lines of the head before this index are checked
        self._eof = False
        self._head: tuple[bytes, list[tuple[bytes, bytes]], int] | None = None
        self._field_lines: list[tuple[int, bytes]] = []
        self._body: _Body | None = None
        self._max_head = max_head
        self._max_body = max_body
        self.last: HttpMessage | None = None

    # -- input -----------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Add bytes that arrived."""
        if self._eof:
            raise ValueError("feed() after feed_eof()")
        self._buffer += data

    def feed_eof(self) -> None:
        """The peer closed the connection: no more bytes will come."""
        self._eof = True

    @property
    def pending(self) -> bytes:
        """Bytes fed that are not part of a message returned yet."""
        return bytes(self._buffer)

    @property
    def offset(self) -> int:
        """Stream offset of the first pending byte."""
        return self._base

    @property
    def idle(self) -> bool:
        """True between messages with nothing pending."""
        return not self._buffer and self._head is None

    # -- the head --------------------------------------------------------------

    def _violation(self, summary: str, rule: str, start: int, end: int | None = None) -> WireViolation:
        return WireViolation(summary, rule=rule, offending=bytes(self._buffer[start : start + _SHOWN if end is None else end]), offset=self._base + start)

    def _find_head_end(self) -> int | None:
        """Index just past the empty line ending the head, checking each line's CRLF on the way."""
        buffer = self._buffer
        while True:
            newline = buffer.find(b"\n", self._scan)
            if newline < 0:
                if len(buffer) > self._max_head:
                    raise self._violation(f"the {self._what} head is longer than {self._max_head} bytes and still not finished", "limit of this reader", 0)
                return None
            line_start = self._scan
            if newline == line_start or buffer[newline - 1] != 0x0D:
                raise self._violation("a line ends with a bare LF instead of CRLF", CRLF_RULE, line_start, newline + 1)
            self._scan = newline + 1
            if self._scan > self._max_head:
                raise self._violation(f"the {self._what} head is longer than {self._max_head} bytes", "limit of this reader", 0)
            if newline - 1 == line_start:
                if line_start == 0:
                    raise self._leading_junk()
                return newline + 1

    def _split_head(self, end: int) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        head = bytes(self._buffer[: end - 4])
        lines = head.split(b"\r\n")
        fields = []
        self._field_lines = []
        offset = len(lines[0]) + 2
        for index, line in enumerate(lines[1:]):
            if index == 0 and line[:1] in (b" ", b"\t"):
                raise WireViolation(
                    "whitespace between the start line and the first field line",
                    rule='RFC 9112 section 2.2: "A sender MUST NOT send whitespace between the start-line and the first header field."',
                    offending=line,
                    offset=self._base + offset,
                )
            try:
                fields.append(parse_field_line(line))
            except GrammarError as error:
                raise WireViolation(error.summary, rule=error.rule, offending=line, offset=self._base + offset) from None
            self._field_lines.append((self._base + offset, line))
            offset += len(line) + 2
        return lines[0], fields

    def _field_violation(self, name: bytes, summary: str, rule: str) -> WireViolation:
        """A violation about field ``name``: its lines are the offending bytes."""
        lines = [(offset, line) for offset, line in self._field_lines if line.split(b":", 1)[0].lower() == name]
        offset = lines[0][0] if lines else self._base
        return WireViolation(summary, rule=rule, offending=b"\r\n".join(line for _, line in lines), offset=offset)

    # -- hooks -----------------------------------------------------------------

    def _leading_junk(self) -> WireViolation:
        raise NotImplementedError

    def _check_prefix(self) -> None:
        """Fail early on bytes that cannot start a message (so we do not wait for a newline)."""

    def _start(self, start_line: bytes, fields: list[tuple[bytes, bytes]], end: int) -> str | None:
        """Parse the start line; return the body kind, or None to drop this head (a 1xx) and read on."""
        raise NotImplementedError

    def _finish(self, start_line: bytes, fields: list[tuple[bytes, bytes]], head_end: int, body: _Body, end: int, content: bytes) -> HttpMessage:
        raise NotImplementedError

    # -- the body --------------------------------------------------------------

    def _content_length(self, fields: list[tuple[bytes, bytes]], head_end: int) -> int:
        values = [v for k, v in fields if k.lower() == b"content-length"]
        try:
            length = parse_content_length(values)
        except GrammarError as error:
            raise self._field_violation(b"content-length", error.summary, error.rule) from None
        if length > self._max_body:
            raise self._field_violation(b"content-length", f"Content-Length {length} is larger than this reader accepts ({self._max_body})", "limit of this reader")
        return length

    def _advance(self, body: _Body) -> tuple[int, bytes] | None:
        """(end index, content) once the body is complete; None while it is not."""
        buffer = self._buffer
        if body.kind == "none":
            return body.start, b""
        if body.kind == "content-length":
            have = len(buffer) - body.start
            if have >= body.length:
                end = body.start + body.length
                return end, bytes(buffer[body.start : end])
            if self._eof:
                raise WireViolation(
                    f"the connection closed after {have} of the {body.length} body bytes that Content-Length declared",
                    rule=INCOMPLETE_RULE,
                    offending=bytes(buffer[body.start :][-_SHOWN:]),
                    offset=self._base + body.start,
                )
            return None
        if body.kind == "close":
            if len(buffer) - body.start > self._max_body:
                raise self._violation("the body is larger than this reader accepts", "limit of this reader", body.start)
            return (len(buffer), bytes(buffer[body.start :])) if self._eof else None
        return self._advance_chunked(body)

    def _chunk_line(self, body: _Body) -> bytes | None:
        buffer = self._buffer
        newline = buffer.find(b"\n", body.pos)
        if newline < 0:
            if len(buffer) - body.pos > _MAX_CHUNK_LINE:
                raise self._violation(f"a chunk size or trailer line is longer than {_MAX_CHUNK_LINE} bytes", "limit of this reader", body.pos)
            if self._eof:
                raise self._violation("the connection closed in the middle of a chunked body (before the last chunk)", INCOMPLETE_RULE, body.pos)
            return None
        if newline == body.pos or buffer[newline - 1] != 0x0D:
            raise self._violation("a chunk size or trailer line ends with a bare LF instead of CRLF", "RFC 9112 section 7.1: chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF", body.pos, newline + 1)
        line = bytes(buffer[body.pos : newline - 1])
        body.pos = newline + 1
        return line

    def _advance_chunked(self, body: _Body) -> tuple[int, bytes] | None:
        buffer = self._buffer
        while True:
            if body.phase == "data":
                # The chunk's data, then exactly CRLF: a wrong byte where the CRLF belongs
                # is reported as soon as it arrives, without waiting for the rest.
                after = bytes(buffer[body.pos + body.need : body.pos + body.need + 2])
                if after != b"\r\n"[: len(after)]:
                    raise WireViolation(
                        f"a chunk declared {body.need} bytes (0x{body.need:x}) but is not followed by CRLF after them: "
                        "the chunk is longer than its size line says, or its CRLF is missing",
                        rule="RFC 9112 section 7.1: chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF",
                        offending=bytes(buffer[body.pos + body.need : body.pos + body.need + 40]),
                        offset=self._base + body.pos + body.need,
                    )
                if len(after) < 2:
                    if self._eof:
                        raise self._violation(
                            f"the connection closed inside a chunk: {len(buffer) - body.pos} of its {body.need} bytes (and CRLF) arrived",
                            INCOMPLETE_RULE,
                            body.pos,
                        )
                    return None
                body.chunks.append(bytes(buffer[body.pos : body.pos + body.need]))
                body.decoded += body.need
                body.pos += body.need + 2
                body.phase = "size"
                continue
            line_start = body.pos
            line = self._chunk_line(body)
            if line is None:
                return None
            if body.phase == "trailer":
                if not line:
                    return body.pos, b"".join(body.chunks)
                try:
                    body.trailers.append(parse_field_line(line))
                except GrammarError as error:
                    raise WireViolation(error.summary, rule=error.rule, offending=line, offset=self._base + line_start) from None
                continue
            try:
                size = parse_chunk_size(line)
            except GrammarError as error:
                raise WireViolation(error.summary, rule=error.rule, offending=line, offset=self._base + line_start) from None
            if size == 0:
                body.phase = "trailer"
                continue
            if body.decoded + size > self._max_body:
                raise WireViolation("the chunked body is larger than this reader accepts", rule="limit of this reader", offending=line, offset=self._base + line_start)
            body.phase, body.need = "data", size

    # -- output ----------------------------------------------------------------

    def next_message(self) -> HttpMessage | None:
        """The next complete message, or None until more bytes (or the EOF) arrive.

        Raises:
            WireViolation: the bytes break HTTP/1.x syntax or framing.
        """
        while True:
            if self._head is None:
                if not self._buffer:
                    return None
                self._check_prefix()
                end = self._find_head_end()
                if end is None:
                    if self._eof:
                        raise self._violation(f"the connection closed in the middle of a {self._what} head", INCOMPLETE_RULE, 0)
                    return None
                start_line, fields = self._split_head(end)
                kind = self._start(start_line, fields, end)
                if kind is None:  # an interim response, kept by the subclass: read on
                    self._consume(end)
                    continue
                self._head = (start_line, fields, end)
                length = self._content_length(fields, end) if kind == "content-length" else 0
                self._body = _Body(kind, end, length=length, pos=end)
            assert self._body is not None
            done = self._advance(self._body)
            if done is None:
                return None
            end, content = done
            start_line, fields, head_end = self._head
            message = self._finish(start_line, fields, head_end, self._body, end, content)
            self._consume(end)
            self._head = self._body = None
            self.last = message
            return message

    def _consume(self, end: int) -> None:
        del self._buffer[:end]
        self._base += end
        self._scan = 0

    def progress(self) -> str:
        """What the reader is waiting for, for timeout messages."""
        if self._head is None:
            return f"the {self._what} head ({len(self._buffer)} bytes of it so far)" if self._buffer else f"a {self._what}"
        body = self._body
        assert body is not None
        have = len(self._buffer) - body.start
        if body.kind == "content-length":
            return f"the rest of the body: {have} of the {body.length} bytes that Content-Length declared"
        if body.kind == "chunked":
            return f"the rest of a chunked body ({body.decoded} data bytes decoded; waiting for {'the trailer section' if body.phase == 'trailer' else 'a chunk'})"
        return f"the end of a body delimited by closing the connection ({have} bytes so far)"


class ResponseReader(_Reader):
    """Reads the responses a server sends, one per request it was asked.

    Example::

        reader = ResponseReader()
        reader.expect("GET", version=(1, 0))
        reader.feed(data)
        reader.feed_eof()
        response = reader.next_message()
    """

    _what = "response"

    def __init__(self, *, max_head: int = MAX_HEAD, max_body: int = MAX_BODY) -> None:
        super().__init__(max_head=max_head, max_body=max_body)
        self._expected: deque[tuple[str, tuple[int, int]]] = deque()
        self._request: tuple[str, tuple[int, int]] = ("GET", (1, 1))
        self._interim: list[HttpResponse] = []
        self._status: tuple[tuple[int, int], int, bytes] = ((1, 1), 0, b"")

    def expect(self, method: str = "GET", version: tuple[int, int] = (1, 1)) -> None:
        """Say which request the next response answers (its method and HTTP version)."""
        self._expected.append((method, version))

    @property
    def outstanding(self) -> int:
        """Requests announced with :meth:`expect` that have no response yet."""
        return len(self._expected)

    def next_message(self) -> HttpResponse | None:
        message = super().next_message()
        assert message is None or isinstance(message, HttpResponse)
        return message

    def _after_last(self) -> str:
        last = self.last
        if not isinstance(last, HttpResponse):
            return ""
        if last.framing == "none":
            why = "the response to a HEAD request" if last.request_method == "HEAD" else f"a {last.status} response"
            length = last.header("content-length")
            declared = f" (it declared Content-Length: {length.decode('latin-1')})" if length else ""
            return f"{why}, which cannot have a body{declared}"
        if last.framing == "content-length":
            return f"the {len(last.body)} body bytes that Content-Length declared: the body is longer than declared, or the length is wrong"
        if last.framing == "chunked":
            return "the end of the chunked body (the last chunk and its trailer section)"
        return "the previous response"

    def _not_a_status_line(self) -> WireViolation:
        after = self._after_last()
        if after:
            rule = NO_BODY_RULE if isinstance(self.last, HttpResponse) and self.last.framing == "none" else LENGTH_RULE
            # The extra bytes end where the next status line starts, if it has arrived.
            next_status = self._buffer.find(b"HTTP/1.", 1)
            extra = next_status if next_status > 0 else len(self._buffer)
            count = f"{extra} byte{'s' if extra != 1 else ''}" if next_status > 0 or self._eof else f"at least {extra} byte{'s' if extra != 1 else ''}"
            return self._violation(f"{count} followed {after}", rule, 0, extra)
        return self._violation("the response does not begin with a status line ('HTTP/1.1 200 OK')", "RFC 9112 section 4: status-line = HTTP-version SP status-code SP [ reason-phrase ]", 0)

    def _leading_junk(self) -> WireViolation:
        return self._not_a_status_line()

    def _check_prefix(self) -> None:
        start = bytes(self._buffer[:5])
        if not b"HTTP/".startswith(start):
            raise self._not_a_status_line()

    def unexpected_bytes(self) -> WireViolation | None:
        """A violation for bytes that arrived when no response was due, or None if there are none."""
        if not self._buffer or self._expected or self._head is not None:
            return None
        if bytes(self._buffer[:5]) == b"HTTP/"[: len(self._buffer[:5])] and self.last is not None and self.last.framing != "none":
            return self._violation("the server sent a response that no request asked for", "RFC 9112 section 9.3: a server sends one final response per request", 0)
        return self._not_a_status_line()

    def _start(self, start_line: bytes, fields: list[tuple[bytes, bytes]], end: int) -> str | None:
        try:
            version, status, reason = parse_status_line(start_line)
        except GrammarError as error:
            raise WireViolation(error.summary, rule=error.rule, offending=start_line, offset=self._base) from None
        if version[0] != 1:
            raise WireViolation(f"an HTTP/{version[0]}.{version[1]} status line on an HTTP/1.1 connection", rule="RFC 9110 section 6.2: a server answers with the major version of the request (1)", offending=start_line, offset=self._base)
        if not self._interim:
            self._request = self._expected.popleft() if self._expected else ("GET", (1, 1))
        method, request_version = self._request
        self._status = (version, status, reason)
        names = {name.lower() for name, _ in fields}
        if (100 <= status < 200 or status == 204) and b"content-length" in names:
            raise WireViolation(f"a {status} response carries Content-Length", rule='RFC 9110 section 8.6: "A server MUST NOT send a Content-Length header field in any response with a status code of 1xx (Informational) or 204 (No Content)."', offending=start_line, offset=self._base)
        if (100 <= status < 200 or status == 204) and b"transfer-encoding" in names:
            raise WireViolation(f"a {status} response carries Transfer-Encoding", rule='RFC 9112 section 6.1: "A server MUST NOT send a Transfer-Encoding header field in any response with a status code of 1xx (Informational) or 204 (No Content)."', offending=start_line, offset=self._base)
        if 100 <= status < 200 and status != 101:
            self._interim.append(HttpResponse(version, status, reason, tuple(fields), b"", "none", bytes(self._buffer[:end]), self._base, method))
            return None
        if method == "HEAD" or status in (204, 304) or status == 101:
            return "none"
        if b"transfer-encoding" in names:
            if b"content-length" in names:
                raise WireViolation("the response has both Transfer-Encoding and Content-Length", rule='RFC 9112 section 6.2: "A sender MUST NOT send a Content-Length header field in any message that contains a Transfer-Encoding header field."', offending=start_line, offset=self._base)
            if request_version < (1, 1):
                raise WireViolation("a response to an HTTP/1.0 request uses Transfer-Encoding, which an HTTP/1.0 client cannot decode", rule='RFC 9112 section 6.1: "A server MUST NOT send a response containing Transfer-Encoding unless the corresponding request indicates HTTP/1.1 (or later minor revisions)."', offending=start_line, offset=self._base)
            codings = self._codings(fields, start_line)
            return "chunked" if codings[-1] == "chunked" else "close"
        return "content-length" if b"content-length" in names else "close"

    def _codings(self, fields: list[tuple[bytes, bytes]], start_line: bytes) -> list[str]:
        values = [v for k, v in fields if k.lower() == b"transfer-encoding"]
        try:
            return parse_transfer_coding(values)
        except GrammarError as error:
            raise self._field_violation(b"transfer-encoding", error.summary, error.rule) from None

    def _finish(self, start_line: bytes, fields: list[tuple[bytes, bytes]], head_end: int, body: _Body, end: int, content: bytes) -> HttpResponse:
        version, status, reason = self._status
        interim, self._interim = tuple(self._interim), []
        start = interim[0].offset if interim else self._base
        raw = b"".join(i.raw for i in interim) + bytes(self._buffer[:end])
        return HttpResponse(version, status, reason, tuple(fields), content, body.kind, raw, start, self._request[0], interim, tuple(body.trailers))


class RequestReader(_Reader):
    """Reads the requests a client sends.

    Example::

        reader = RequestReader()
        reader.feed(b"GET / HTTP/1.1\\r\\nHost: example.com\\r\\n\\r\\n")
        request = reader.next_message()     # HttpRequest(method="GET", target="/")
    """

    _what = "request"
    _line: tuple[str, str, tuple[int, int]] = ("GET", "/", (1, 1))  # the request line being read

    def next_message(self) -> HttpRequest | None:
        message = super().next_message()
        assert message is None or isinstance(message, HttpRequest)
        return message

    def _leading_junk(self) -> WireViolation:
        return self._violation(
            "an empty line (extra CRLF) before the request line",
            'RFC 9112 section 2.2: "a user agent MUST NOT preface or follow a request with an extra CRLF"',
            0,
        )

    def _check_prefix(self) -> None:
        first = bytes(self._buffer[:1])
        if first in (b"\r", b"\n"):
            raise self._leading_junk()
        if not (first.isalnum() or first in b"!#$%&'*+-.^_`|~"):
            raise self._violation("the request does not begin with a method name", "RFC 9112 section 3: request-line = method SP request-target SP HTTP-version", 0)

    def _start(self, start_line: bytes, fields: list[tuple[bytes, bytes]], end: int) -> str:
        try:
            self._line = parse_request_line(start_line)
        except GrammarError as error:
            raise WireViolation(error.summary, rule=error.rule, offending=start_line, offset=self._base) from None
        if self._line[2][0] != 1:
            raise WireViolation(f"an HTTP/{self._line[2][0]}.{self._line[2][1]} request line on an HTTP/1.x connection", rule="RFC 9112 section 2.3", offending=start_line, offset=self._base)
        names = {name.lower() for name, _ in fields}
        if b"transfer-encoding" in names:
            if b"content-length" in names:
                raise WireViolation("the request has both Transfer-Encoding and Content-Length", rule='RFC 9112 section 6.2: "A sender MUST NOT send a Content-Length header field in any message that contains a Transfer-Encoding header field."', offending=start_line, offset=self._base)
            values = [v for k, v in fields if k.lower() == b"transfer-encoding"]
            try:
                codings = parse_transfer_coding(values)
            except GrammarError as error:
                raise self._field_violation(b"transfer-encoding", error.summary, error.rule) from None
            if codings[-1] != "chunked":
                raise self._field_violation(
                    b"transfer-encoding",
                    "the request's Transfer-Encoding does not end with chunked, so its length cannot be known",
                    'RFC 9112 section 6.3: "If a Transfer-Encoding header field is present in a request and the chunked transfer coding is not the final encoding, the message body length cannot be determined reliably"',
                )
            return "chunked"
        return "content-length" if b"content-length" in names else "none"

    def _finish(self, start_line: bytes, fields: list[tuple[bytes, bytes]], head_end: int, body: _Body, end: int, content: bytes) -> HttpRequest:
        method, target, version = self._line
        return HttpRequest(method, target, version, tuple(fields), content, body.kind, bytes(self._buffer[:end]), self._base, tuple(body.trailers))
