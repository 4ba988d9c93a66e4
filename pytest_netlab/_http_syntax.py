"""HTTP/1.x messages and the grammar of their parts (RFC 9110, RFC 9112).

What a request or a response *is* once read (:class:`HttpRequest`,
:class:`HttpResponse`), the error that says the peer's bytes are not HTTP
(:class:`WireViolation`), and the pure functions that check one piece of
grammar each (start lines, field lines, tokens, Content-Length,
Transfer-Encoding, chunk-size lines, HTTP-dates), beside the RFC sentence
they implement. :mod:`pytest_netlab.http_wire` uses them to read messages
off the wire and re-exports the public names.

This module must not buffer, read sockets or know which side is speaking.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

__all__ = [
    "WireViolation",
    "HttpResponse",
    "HttpRequest",
    "GrammarError",
    "parse_status_line",
    "parse_request_line",
    "parse_field_line",
    "parse_content_length",
    "parse_transfer_coding",
    "parse_chunk_size",
    "list_tokens",
    "parse_http_date",
    "is_imf_fixdate",
]

RFC9110 = "RFC 9110"
RFC9112 = "RFC 9112"

# Offending bytes shown in a violation: enough to recognise, never a whole body.
_SHOWN = 200


class WireViolation(Exception):
    """The peer's bytes break HTTP/1.x syntax or framing.

    Attributes:
        summary: what is wrong, in the peer's terms.
        rule: the RFC section, with its sentence where one applies.
        offending: the bytes at fault (cut to a few hundred).
        offset: where they start, counted from the first byte fed.
    """

    def __init__(self, summary: str, *, rule: str, offending: bytes = b"", offset: int = 0) -> None:
        super().__init__(summary)
        self.summary = summary
        self.rule = rule
        self.offending = bytes(offending[:_SHOWN])
        self.offset = offset

    def __str__(self) -> str:
        return f"{self.summary} (at byte {self.offset}: {self.offending!r}; {self.rule})"


class _Fields:
    """Field lookups shared by requests and responses (names compare case-insensitively)."""

    fields: tuple[tuple[bytes, bytes], ...]
    version: tuple[int, int]

    def header_values(self, name: str) -> list[bytes]:
        """Every value of field ``name``, in order."""
        wanted = name.lower().encode("latin-1")
        return [value for key, value in self.fields if key.lower() == wanted]

    def header(self, name: str) -> bytes | None:
        """The value of field ``name`` (several lines joined with ``", "``), or None."""
        values = self.header_values(name)
        return b", ".join(values) if values else None

    def connection_tokens(self) -> list[str]:
        """The lowercase options of the Connection field."""
        return list_tokens(self.header_values("connection"))

    @property
    def http_version(self) -> str:
        return f"HTTP/{self.version[0]}.{self.version[1]}"


@dataclass(frozen=True)
class HttpResponse(_Fields):
    """One response as it came over the wire.

    Attributes:
        version: ``(1, 1)``.
        status: the status code.
        reason: the reason phrase, as sent.
        fields: ``(name, value)`` pairs in order, names as sent.
        body: the content (chunked coding removed).
        framing: ``"content-length"``, ``"chunked"``, ``"close"`` or ``"none"``.
        raw: every byte of the response (head and encoded body).
        offset: where it started in the stream.
        request_method: the method of the request it answers.
        interim: the 1xx responses that came before it.
        trailers: trailer fields of a chunked body.
    """

    version: tuple[int, int]
    status: int
    reason: bytes
    fields: tuple[tuple[bytes, bytes], ...]
    body: bytes
    framing: str
    raw: bytes
    offset: int
    request_method: str = "GET"
    interim: tuple["HttpResponse", ...] = ()
    trailers: tuple[tuple[bytes, bytes], ...] = ()

    @property
    def head(self) -> bytes:
        """The status line and header section, up to and including the empty line."""
        return self.raw[: self.raw.find(b"\r\n\r\n") + 4]

    @property
    def persistent(self) -> bool:
        """Whether the connection stays open after this response (RFC 9112 section 9.3)."""
        tokens = self.connection_tokens()
        if "close" in tokens or self.framing == "close":
            return False
        return self.version >= (1, 1) or "keep-alive" in tokens

    def describe(self) -> str:
        """``HTTP/1.1 200 OK, Content-Length: 104, 104-byte body``."""
        length = self.header("content-length")
        framing = {"content-length": f"Content-Length: {length.decode('latin-1') if length else '?'}", "chunked": "chunked", "close": "body until close", "none": "no body"}
        shown = f"{self.http_version} {self.status} {self.reason.decode('latin-1')}, {framing[self.framing]}"
        return shown if self.framing == "none" else f"{shown}, {len(self.body)}-byte body"


@dataclass(frozen=True)
class HttpRequest(_Fields):
    """One request as it came over the wire (fields as in :class:`HttpResponse`)."""

    method: str
    target: str
    version: tuple[int, int]
    fields: tuple[tuple[bytes, bytes], ...]
    body: bytes
    framing: str
    raw: bytes
    offset: int
    trailers: tuple[tuple[bytes, bytes], ...] = ()

    @property
    def request_line(self) -> bytes:
        return self.raw[: self.raw.find(b"\r\n")]


# tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN_RE = re.compile(_TOKEN)
# status-line = HTTP-version SP status-code SP [ reason-phrase ]
# reason-phrase = 1*( HTAB / SP / VCHAR / obs-text )
_STATUS_LINE = re.compile(rb"HTTP/([0-9])\.([0-9]) ([0-9]{3}) ([\t \x21-\x7e\x80-\xff]*)")
# request-line = method SP request-target SP HTTP-version
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
# field-value = *field-content: VCHAR, obs-text, SP and HTAB inside; never CR, LF or NUL.
_FIELD_VALUE = re.compile(rb"[\t \x21-\x7e\x80-\xff]*")
_CHUNK_EXT = re.compile(rb"(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb'|"(?:[^"\\\r\n]|\\.)*"))?)*[ \t]*')
_IMF_FIXDATE = re.compile(
    rb"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), ([0-9]{2}) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) ([0-9]{4}) "
    rb"([0-9]{2}):([0-9]{2}):([0-9]{2}) GMT"
)
_RFC850 = re.compile(
    rb"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), ([0-9]{2})-(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)-([0-9]{2}) "
    rb"([0-9]{2}):([0-9]{2}):([0-9]{2}) GMT"
)
_ASCTIME = re.compile(
    rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) ([0-9 ][0-9]) "
    rb"([0-9]{2}):([0-9]{2}):([0-9]{2}) ([0-9]{4})"
)
_MONTHS = {m: i + 1 for i, m in enumerate(b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split())}
# More hex digits than this cannot be a chunk this reader would ever hold.
_MAX_CHUNK_SIZE_DIGITS = 15


class GrammarError(ValueError):
    """Bytes that do not match an HTTP rule.

    Attributes:
        summary: what is wrong, in one sentence.
        rule: the RFC section (and its sentence) that the bytes break.
    """

    def __init__(self, summary: str, rule: str) -> None:
        super().__init__(summary)
        self.summary = summary
        self.rule = rule


def parse_status_line(line: bytes) -> tuple[tuple[int, int], int, bytes]:
    """``b"HTTP/1.1 200 OK"`` -> ``((1, 1), 200, b"OK")``.

    >>> parse_status_line(b"HTTP/1.1 404 Not Found")
    ((1, 1), 404, b'Not Found')
    """
    match = _STATUS_LINE.fullmatch(line)
    if match is None:
        raise GrammarError(
            "the status line does not match 'HTTP/x.y NNN reason' (one space after the version, a three-digit code, one space, an optional reason)",
            f"{RFC9112} section 4: status-line = HTTP-version SP status-code SP [ reason-phrase ]",
        )
    major, minor, code, reason = match.groups()
    status = int(code)
    if not 100 <= status <= 599:
        raise GrammarError(
            f"the status code {status} is outside 100-599",
            f"{RFC9110} section 15: \"All valid status codes are within the range of 100 to 599, inclusive.\"",
        )
    return (int(major), int(minor)), status, reason


def parse_request_line(line: bytes) -> tuple[str, str, tuple[int, int]]:
    """``b"GET /a?b HTTP/1.1"`` -> ``("GET", "/a?b", (1, 1))``.

    >>> parse_request_line(b"GET /index.html HTTP/1.1")
    ('GET', '/index.html', (1, 1))
    """
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        raise GrammarError(
            "the request line does not match 'METHOD target HTTP/x.y' separated by single spaces",
            f"{RFC9112} section 3: request-line = method SP request-target SP HTTP-version",
        )
    method, target, major, minor = match.groups()
    return method.decode("ascii"), target.decode("ascii"), (int(major), int(minor))


def parse_field_line(line: bytes) -> tuple[bytes, bytes]:
    """``b"Content-Type: text/plain "`` -> ``(b"Content-Type", b"text/plain")`` (OWS stripped).

    >>> parse_field_line(b"Host: example.com")
    (b'Host', b'example.com')
    """
    if line[:1] in (b" ", b"\t"):
        raise GrammarError(
            "a field line starts with whitespace: obsolete line folding (obs-fold)",
            f"{RFC9112} section 5.2: \"A sender MUST NOT generate a message that includes line folding\"",
        )
    name, colon, value = line.partition(b":")
    if not colon:
        raise GrammarError("a field line has no colon", f"{RFC9112} section 5: field-line = field-name \":\" OWS field-value OWS")
    if name[-1:] in (b" ", b"\t"):
        raise GrammarError(
            "whitespace between a field name and its colon",
            f"{RFC9112} section 5.1: \"No whitespace is allowed between the field name and colon.\"",
        )
    if not _TOKEN_RE.fullmatch(name):
        raise GrammarError(f"the field name {name!r} is not a token", f"{RFC9110} section 5.1: field-name = token")
    value = value.strip(b" \t")
    if not _FIELD_VALUE.fullmatch(value):
        raise GrammarError(
            f"the value of field {name.decode('latin-1')} holds a control character (CR, LF, NUL or another CTL)",
            f"{RFC9110} section 5.5: \"Field values containing CR, LF, or NUL characters are invalid and dangerous\"",
        )
    return name, value


def parse_content_length(values: list[bytes]) -> int:
    """The one Content-Length of a message, from all its field values.

    >>> parse_content_length([b"42"])
    42
    """
    rule = f"{RFC9110} section 8.6: Content-Length = 1*DIGIT"
    if len(values) > 1:
        raise GrammarError(f"{len(values)} Content-Length fields ({', '.join(v.decode('latin-1') for v in values)}); a message has one", rule)
    value = values[0]
    if not value.isdigit() or not value.isascii():
        raise GrammarError(f"Content-Length {value.decode('latin-1')!r} is not a decimal number of bytes", rule)
    return int(value)


def list_tokens(values: list[bytes]) -> list[str]:
    """The lowercase members of comma-separated list fields (``Connection``, ``Transfer-Encoding``).

    >>> list_tokens([b"keep-alive, Upgrade", b"close"])
    ['keep-alive', 'upgrade', 'close']
    """
    members = []
    for value in values:
        for member in value.split(b","):
            member = member.strip(b" \t")
            if member:
                members.append(member.split(b";")[0].strip(b" \t").decode("latin-1").lower())
    return members


def parse_transfer_coding(values: list[bytes]) -> list[str]:
    """The transfer codings in order, checking that chunked is applied at most once and last if at all."""
    codings = list_tokens(values)
    if not codings:
        raise GrammarError("Transfer-Encoding is empty", f"{RFC9112} section 6.1: Transfer-Encoding = #transfer-coding")
    if codings.count("chunked") > 1:
        raise GrammarError(
            "chunked is applied more than once",
            f"{RFC9112} section 7: \"A sender MUST NOT apply the chunked transfer coding more than once to a message body\"",
        )
    return codings


def parse_chunk_size(line: bytes) -> int:
    """The size of a chunk from its size line (extensions allowed and ignored).

    >>> parse_chunk_size(b"1A;name=value")
    26
    """
    rule = f"{RFC9112} section 7.1: chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF; chunk-size = 1*HEXDIG"
    digits = len(line) - len(line.lstrip(b"0123456789abcdefABCDEF"))
    if digits == 0:
        raise GrammarError(f"the chunk size line {line!r} does not start with a hexadecimal size", rule)
    if digits > _MAX_CHUNK_SIZE_DIGITS:
        raise GrammarError(f"the chunk size {line[:digits]!r} has {digits} hex digits: far larger than any body", rule)
    if not _CHUNK_EXT.fullmatch(line[digits:]):
        raise GrammarError(f"after the chunk size {line[:digits]!r} comes {line[digits:]!r}, which is not a chunk extension (';name=value')", rule)
    return int(line[:digits], 16)


def parse_http_date(value: bytes) -> datetime | None:
    """An HTTP-date in any of its three forms, as an aware UTC datetime; None if invalid.

    RFC 9110 section 5.6.7: "Recipients of a timestamp value in rfc850-date
    format ... MUST interpret a timestamp that appears to be more than 50
    years in the future as representing the most recent year in the past
    that had the same last two digits."
    """
    value = value.strip(b" \t")
    try:
        if match := _IMF_FIXDATE.fullmatch(value):
            _, day, month, year, hour, minute, second = match.groups()
            return datetime(int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second), tzinfo=timezone.utc)
        if match := _RFC850.fullmatch(value):
            day, month, year2, hour, minute, second = match.groups()
            now = datetime.now(timezone.utc).year
            year = now - now % 100 + int(year2)
            if year > now + 50:
                year -= 100
            return datetime(year, _MONTHS[month], int(day), int(hour), int(minute), int(second), tzinfo=timezone.utc)
        if match := _ASCTIME.fullmatch(value):
            month, day, hour, minute, second, year = match.groups()
            return datetime(int(year), _MONTHS[month], int(day.strip()), int(hour), int(minute), int(second), tzinfo=timezone.utc)
    except ValueError:  # 31 Feb, 25:00...
        return None
    return None


def is_imf_fixdate(value: bytes) -> bool:
    """True for the preferred form a sender must generate: ``Sun, 06 Nov 1994 08:49:37 GMT``.

    RFC 9110 section 5.6.7: "When a sender generates a field that contains one
    or more timestamps defined as HTTP-date, the sender MUST generate those
    timestamps in the IMF-fixdate format."
    """
    value = value.strip(b" \t")
    return _IMF_FIXDATE.fullmatch(value) is not None and parse_http_date(value) is not None
