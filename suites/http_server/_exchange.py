"""Talking HTTP/1.1 to the server under test with exact bytes, read strictly.

:class:`HttpExchange` is one scripted connection: it sends requests as the
check writes them (whole, one byte at a time, or several at once) and reads
responses through :class:`~pytest_netlab.http_wire.ResponseReader`, so every
framing or syntax error becomes a :class:`ProtocolViolation` that quotes the
RFC rule and shows the offending bytes. :func:`fetch` is the common case:
one request with ``Connection: close`` and its one response, checking that
nothing follows it.

This module must not judge status codes; the checks do.
"""

from __future__ import annotations

import time
from typing import Iterable, Literal, overload

from pytest_netlab.context import CheckContext
from pytest_netlab.errors import ProtocolViolation
from pytest_netlab.http_wire import HttpResponse, ResponseReader, WireViolation
from pytest_netlab.rawclient import ClosedEarly, ReceiveTimeout, ScriptedClient
from pytest_netlab.transcript import format_bytes

__all__ = ["HttpExchange", "fetch", "build_request", "host_header", "need_docroot", "show_head"]

Fields = Iterable[tuple[str, str]]

_HINTS = (
    ("bare LF", "end every line of the status line and headers with \\r\\n, not \\n"),
    ("cannot have a body", "send no body for HEAD requests and for 204 and 304 responses: the response ends at the empty line"),
    ("Content-Length declared", "Content-Length counts the bytes of the body as sent: len(body_bytes), not len(text)"),
    ("closed after", "send the whole body: use sendall(), and compute Content-Length from the bytes you send"),
    ("Transfer-Encoding", "an HTTP/1.0 client cannot decode chunked: use Content-Length (or close the connection) for it"),
    ("status line", "start every response with 'HTTP/1.1 200 OK\\r\\n' (version, code, reason)"),
    ("chunk", "each chunk is its size in hex, CRLF, the data, CRLF; the last chunk is 0 CRLF CRLF"),
)


def host_header(address: tuple[str, int]) -> str:
    """The Host value for an address: ``127.0.0.1:8080`` or ``[::1]:8080``."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def build_request(
    method: str,
    target: str,
    *,
    host: str | None,
    version: str = "HTTP/1.1",
    fields: Fields = (),
    close: bool = False,
    body: bytes = b"",
) -> bytes:
    """The exact bytes of a request (``host=None`` leaves Host out)."""
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines.extend(f"{name}: {value}" for name, value in fields)
    if close:
        lines.append("Connection: close")
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def need_docroot(ctx: CheckContext) -> None:
    """Skip a check that needs the suite's files when the target is a server we did not start."""
    if not ctx.spec.launched:
        ctx.skip(f"{ctx.spec.name} is a running server: it does not serve the files this check asks for")


def show_head(response: HttpResponse) -> str:
    """A response's status line and headers on one line: ``HTTP/1.1 405 Not Allowed | Server: nginx``."""
    return response.head.decode("latin-1").strip().replace("\r\n", " | ")


def _hint(summary: str) -> str:
    return next((hint for key, hint in _HINTS if key in summary), "")


def wire_violation(error: WireViolation, what: str) -> ProtocolViolation:
    """A reader's WireViolation as a failure that teaches."""
    return ProtocolViolation(
        f"{what} breaks HTTP/1.1: {error.summary}",
        expected=f"bytes that follow {error.rule}",
        got=f"{format_bytes(error.offending, 120)} at byte {error.offset} of what the server sent",
        hint=_hint(error.summary),
    )


class HttpExchange:
    """One connection to the server under test, requests written by the check.

    Example::

        exchange = HttpExchange(ctx, label="keep-alive")
        exchange.request("GET", "/hello.txt")
        first = exchange.response("the response to GET /hello.txt")
        exchange.request("GET", "/index.html", close=True)
        second = exchange.response("the second response")
    """

    def __init__(self, ctx: CheckContext, *, label: str | None = None, client: ScriptedClient | None = None) -> None:
        self.ctx = ctx
        self.client = client or ctx.connect(label=label)
        self.reader = ResponseReader()
        self.closed_by_server: str | None = None  # "eof" or "reset"
        self.sent: list[str] = []

    @property
    def host(self) -> str:
        return host_header(self.ctx.address)

    def request(
        self,
        method: str,
        target: str,
        *,
        version: tuple[int, int] = (1, 1),
        fields: Fields = (),
        close: bool = False,
        host: bool = True,
        size: int | None = None,
        pause: float = 0.0,
    ) -> None:
        """Send one request (``size``: in pieces of that many bytes, ``pause`` apart)."""
        data = build_request(method, target, host=self.host if host else None, version=f"HTTP/{version[0]}.{version[1]}", fields=fields, close=close)
        self.send_raw(data, [(method, version)], size=size, pause=pause)

    def send_raw(self, data: bytes, answers: list[tuple[str, tuple[int, int]]], *, size: int | None = None, pause: float = 0.0) -> None:
        """Send exact bytes holding requests; ``answers`` says what each response answers (method, version)."""
        for method, version in answers:
            self.reader.expect(method, version)
        self.sent.append(data.split(b"\r\n", 1)[0].decode("latin-1")[:120])
        if size:
            self.client.send_chunks(data, size=size, pause=pause)
        else:
            self.client.send(data)

    def _receive(self, deadline: float) -> bool:
        """Feed what arrives before ``deadline`` to the reader; False if nothing came."""
        remaining = deadline - time.monotonic()
        if remaining <= 0 or self.closed_by_server:
            return False
        try:
            data = self.client.recv_some(timeout=remaining)
        except ReceiveTimeout:
            return False
        except ClosedEarly:
            self.closed_by_server = "reset"
            self.reader.feed_eof()
            return True
        if data:
            self.reader.feed(data)
        else:
            self.closed_by_server = "eof"
            self.reader.feed_eof()
        return True

    @overload
    def response(self, what: str, timeout: float = ..., refusal_ok: Literal[False] = ...) -> HttpResponse: ...

    @overload
    def response(self, what: str, timeout: float = ..., *, refusal_ok: bool) -> HttpResponse | None: ...

    def response(self, what: str, timeout: float = 5.0, refusal_ok: bool = False) -> HttpResponse | None:
        """The next complete response; any framing error, silence or early close fails the check.

        With ``refusal_ok``, a server that closes the connection without
        sending a byte gives None (a refusal some checks accept).
        """
        wait = self.ctx.timeout(timeout)
        deadline = time.monotonic() + wait
        while True:
            try:
                message = self.reader.next_message()
            except WireViolation as error:
                raise wire_violation(error, what) from None
            if message is not None:
                return message
            if self.closed_by_server:
                if refusal_ok and self.reader.idle:
                    return None
                how = "reset (RST)" if self.closed_by_server == "reset" else "closed"
                raise ProtocolViolation(
                    f"the server {how} the connection without sending {what}",
                    expected=f"{what} (after: {self.sent[-1] if self.sent else 'the request'})",
                    got=f"{'nothing' if self.reader.idle else format_bytes(self.reader.pending)}, then the connection {how}",
                    hint="read the whole request (up to the empty line) before answering, and answer every request",
                )
            if not self._receive(deadline):
                stalled = self.client.stalled
                raise ProtocolViolation(
                    f"the server went idle without sending {what}" if stalled else f"timed out after {wait:.1f} s waiting for {what}",
                    expected=f"{what} within {wait:.1f} s (after: {self.sent[-1] if self.sent else 'the request'})",
                    got=f"still waiting for {self.reader.progress()}" + (f": {stalled}" if stalled else ""),
                    hint="a request ends at the empty line (\\r\\n\\r\\n); answer then, even if more bytes may follow",
                )

    def wait_close(self, grace: float) -> str:
        """After the last response: wait up to ``grace`` s for the server to close.

        Returns ``"eof"``, ``"reset"`` or ``"open"``. Bytes arriving meanwhile
        (a body after a bodiless response, more than Content-Length said) fail.
        """
        deadline = time.monotonic() + self.ctx.timeout(grace)
        while not self.closed_by_server and self._receive(deadline):
            if (error := self.reader.unexpected_bytes()) is not None:
                raise wire_violation(error, "what the server sent after its response")
        if (error := self.reader.unexpected_bytes()) is not None:
            raise wire_violation(error, "what the server sent after its response")
        return self.closed_by_server or "open"

    def close(self) -> None:
        self.client.close()


def fetch(
    ctx: CheckContext,
    target: str,
    *,
    method: str = "GET",
    fields: Fields = (),
    version: tuple[int, int] = (1, 1),
    host: bool = True,
    label: str | None = None,
    timeout: float = 5.0,
) -> HttpResponse:
    """One request with ``Connection: close`` on a new connection, and its response.

    Whatever the server sends after the response fails the check (a body on
    HEAD or 304, a body longer than Content-Length).
    """
    exchange = HttpExchange(ctx, label=label)
    exchange.request(method, target, fields=fields, version=version, host=host, close=True)
    response = exchange.response(f"the response to {method} {target}", timeout)
    exchange.wait_close(0.3)
    exchange.close()
    return response
