"""http-server checks on the protocol itself: request syntax, HTTP/1.0, limits, connections.

Groups ``requests`` (what a server must refuse with 400, HTTP/1.0 clients,
oversized heads) and ``connections`` (persistent connections, pipelining,
``Connection: close``, clients that stall). The connection checks depend on
what the server claims: keep-alive and pipelining apply only to a server that
answers HTTP/1.1 without ``Connection: close``; an HTTP/1.0 server is not
failed for being one.
"""

from __future__ import annotations

from pytest_netlab.context import CheckContext
from pytest_netlab.errors import ProtocolViolation
from pytest_netlab.http_wire import HttpResponse
from pytest_netlab.rawclient import ClosedEarly, ReceiveTimeout
from pytest_netlab.registry import Severity

from . import _suite as rfc
from ._checks_resources import expect_file, expect_status
from ._docroot import FILES
from ._exchange import HttpExchange, build_request, fetch, need_docroot
from ._suite import SUITE

__all__: list[str] = []

HUGE = 64 * 1024
STALLED_CLIENTS = 6


def _bad_request(ctx: CheckContext, raw: bytes, what: str, *, label: str, rule: str, allowed: frozenset[int] = frozenset({400}), hint: str) -> HttpResponse:
    """Send ``raw`` (one request) on a new connection; its answer must be one of ``allowed``."""
    exchange = HttpExchange(ctx, label=label)
    exchange.send_raw(raw, [("GET", (1, 1))])
    response = exchange.response(f"the response to {what}")
    expect_status(ctx, response, set(allowed), what, rule=rule, hint=hint)
    return response


# -- requests -------------------------------------------------------------------


@SUITE.check("requests", "malformed-line", title="400 (or a 301 to the encoded target) for an invalid request line", severity=Severity.SHOULD, references=("RFC 9112 section 3 (request line)", 'FOPNP ch. 10 "WSGI Without a Framework" (400 Bad Request)'))
def check_malformed_line(ctx: CheckContext) -> None:
    """Request lines whose target holds a space or a control character are
    invalid: the answer is 400, or a 301 redirect to the properly encoded
    target; a server that "autocorrects" and serves (or 404s) the guess does
    not conform."""
    for label, line in (("space-in-target", b"GET /hel lo.txt HTTP/1.1"), ("control-in-target", b"GET /hel\x01lo.txt HTTP/1.1")):
        raw = line + f"\r\nHost: {_host(ctx)}\r\nConnection: close\r\n\r\n".encode()
        _bad_request(ctx, raw, f"the request line {line!r}", label=label, rule=rfc.INVALID_REQUEST_LINE, allowed=frozenset({400, 301}), hint="split the request line on single spaces into exactly three parts and check each; refuse what does not fit")


def _host(ctx: CheckContext) -> str:
    host, port = ctx.address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@SUITE.check("requests", "missing-host", title="400 for an HTTP/1.1 request without Host", references=("RFC 9112 section 3.2 (Host)", 'FOPNP ch. 9 "Paths and Hosts"'))
def check_missing_host(ctx: CheckContext) -> None:
    """``GET /hello.txt HTTP/1.1`` with no Host header is answered 400 Bad Request."""
    raw = build_request("GET", "/hello.txt", host=None, close=True)
    _bad_request(ctx, raw, "GET /hello.txt HTTP/1.1 without a Host header", label="no-host", rule=rfc.HOST, hint="HTTP/1.1 requires exactly one Host header: count them, answer 400 unless there is one")


@SUITE.check("requests", "duplicate-host", title="400 for a request with two Host lines", references=("RFC 9112 section 3.2 (Host)",))
def check_duplicate_host(ctx: CheckContext) -> None:
    """A request carrying two Host header lines (even with the same value) is
    answered 400 Bad Request."""
    host = _host(ctx)
    raw = build_request("GET", "/hello.txt", host=host, fields=[("Host", host)], close=True)
    _bad_request(ctx, raw, "GET /hello.txt with two Host lines", label="two-hosts", rule=rfc.HOST, hint="a dict of headers hides duplicates: count the Host lines as they arrive")


@SUITE.check("requests", "whitespace-before-colon", title="400 for whitespace between a field name and its colon", references=("RFC 9112 section 5.1 (field line parsing)",))
def check_whitespace_before_colon(ctx: CheckContext) -> None:
    """``X-Netlab-...␠: 1`` is refused with 400: whitespace before the colon
    is how requests are smuggled past proxies that read the name differently."""
    name = "X-Netlab-" + "".join(ctx.rng.choice("abcdefgh") for _ in range(6))
    raw = f"GET /hello.txt HTTP/1.1\r\nHost: {_host(ctx)}\r\n{name} : 1\r\nConnection: close\r\n\r\n".encode()
    _bad_request(ctx, raw, f"a request with the header line '{name} : 1'", label="space-before-colon", rule=rfc.SPACE_BEFORE_COLON, hint="split each header line at the first colon and refuse a name that ends in whitespace")


@SUITE.check("requests", "invalid-content-length", title="400, then close, for a Content-Length that is not one number", references=("RFC 9112 section 6.3 (message body length)", "RFC 9110 section 8.6 (Content-Length)"))
def check_invalid_content_length(ctx: CheckContext) -> None:
    """``Content-Length: abc`` and ``Content-Length: 5, 6`` make the request's
    framing unknowable: the server answers 400 and closes the connection
    (the request does not say ``Connection: close``)."""
    for value in ("abc", "5, 6"):
        exchange = HttpExchange(ctx, label=f"content-length {value}")
        exchange.send_raw(build_request("GET", "/hello.txt", host=_host(ctx), fields=[("Content-Length", value)]), [("GET", (1, 1))])
        what = f"GET /hello.txt with Content-Length: {value}"
        response = exchange.response(f"the response to {what}")
        expect_status(ctx, response, {400}, what, rule=rfc.BAD_CONTENT_LENGTH, hint="parse Content-Length as one decimal number; anything else is a 400 and the end of the connection")
        how = exchange.wait_close(1.0)
        ctx.expect(how != "open", f"after answering 400 to {what}, the server kept the connection open", expected=rfc.BAD_CONTENT_LENGTH, got=f"the connection still open {ctx.timeout(1.0):.1f} s after the response", hint="once the framing is lost, the next bytes cannot be trusted as a request: close")


@SUITE.check("requests", "http10", title="an HTTP/1.0 request gets the file without chunked coding, then the connection closes", references=("RFC 9112 section 6.1 (Transfer-Encoding)", "RFC 9112 section 9.3 (persistence)", 'FOPNP ch. 9 "Connections, Keep-Alive, and httplib"'))
def check_http10(ctx: CheckContext) -> None:
    """``GET /hello.txt HTTP/1.0`` (with Host, without keep-alive): 200 with the
    file, framed by Content-Length or by the close (never chunked, which an
    HTTP/1.0 client cannot decode), and the server closes the connection
    after the response unless it answered ``Connection: keep-alive``."""
    need_docroot(ctx)
    exchange = HttpExchange(ctx, label="http/1.0")
    exchange.request("GET", "/hello.txt", version=(1, 0))
    response = exchange.response("the response to GET /hello.txt HTTP/1.0")
    expect_file(ctx, response, "hello.txt", "GET /hello.txt HTTP/1.0")
    if "keep-alive" in response.connection_tokens():
        return
    how = exchange.wait_close(2.0)
    ctx.expect(how != "open", "the server kept the connection of an HTTP/1.0 request open after the response", expected=rfc.HTTP10_CLOSE, got=f"the connection still open {ctx.timeout(2.0):.1f} s after the response, with no Connection: keep-alive", hint="HTTP/1.0 connections close after each response unless both sides say keep-alive")


def _refused_or_answered(ctx: CheckContext, raw: bytes, what: str, allowed: set[int], rule: str) -> None:
    """Send an oversized request: a 4xx from ``allowed`` or a close/reset is fine; then the server must still serve."""
    exchange = HttpExchange(ctx, label="oversized")
    try:
        exchange.send_raw(raw, [("GET", (1, 1))])
    except (ClosedEarly, ReceiveTimeout):
        pass  # it stopped reading or hung up mid-request: a limit at work; what it sent (if anything) follows
    try:
        response = exchange.response(f"the response to {what}", refusal_ok=True)
    except ProtocolViolation:
        if exchange.closed_by_server != "reset":
            raise
        # A server that closes with our request still arriving makes its kernel send RST,
        # which can destroy its answer in our receive queue (RFC 9112 section 9.6): a refusal.
        response = None
    if response is not None:
        if response.status >= 500:
            ctx.fail(f"{what} was answered {response.status}: a server failure, not a limit", expected=f"400, 414 or 431, or the connection closed ({rule})", got=response.describe(), hint="a request over your limit is the client's error: answer 414 (URI) or 431 (headers), then close")
        expect_status(ctx, response, allowed, what, rule=rule, hint="bound how much of a request head you read; answer 414 or 431 past the limit")
    exchange.close()
    try:
        after = fetch(ctx, "/hello.txt", label="after")
    except ProtocolViolation as violation:
        raise ProtocolViolation(f"after {what}, the server no longer answers: {violation.summary}", expected="the server keeps serving other clients", got=violation.got, hint="a request over the limit must end that request, not the server") from None
    if ctx.spec.launched:
        expect_file(ctx, after, "hello.txt", f"GET /hello.txt after {what}")


@SUITE.check("requests", "huge-uri", title="a 64 KiB request target gets 414, 431, 400 or 404 (or a close), never a crash or a hang", severity=Severity.SHOULD, references=("RFC 9112 section 3 (request line)", 'FOPNP ch. 9 "Ports, Encryption, and Framing" (commonsense maximums)'))
def check_huge_uri(ctx: CheckContext) -> None:
    """A request whose target is 64 KiB long: the server answers 414 URI Too
    Long (or 431, 400, or 404 if it did read it), or closes; it does not
    crash, hang or answer 5xx, and it serves the next client."""
    raw = build_request("GET", "/" + "a" * HUGE, host=_host(ctx), close=True)
    _refused_or_answered(ctx, raw, f"a GET with a {HUGE}-byte target", {400, 404, 414, 431}, rfc.LINE_LENGTH)


@SUITE.check("requests", "huge-headers", title="a 64 KiB header, or 1,000 headers, get 431, 400 or the file (or a close), never a crash", severity=Severity.SHOULD, references=("RFC 6585 section 5 (431)", "RFC 9112 section 5 (field lines)", 'FOPNP ch. 9 "Ports, Encryption, and Framing" (commonsense maximums)'))
def check_huge_headers(ctx: CheckContext) -> None:
    """GET /hello.txt with one 64 KiB header field, then with 1,000 header
    fields: the server answers 431 Request Header Fields Too Large or 400, or
    serves the file, or closes; it does not crash, hang or answer 5xx."""
    host = _host(ctx)
    one = build_request("GET", "/hello.txt", host=host, fields=[("X-Big", "b" * HUGE)], close=True)
    many = build_request("GET", "/hello.txt", host=host, fields=[(f"X-Field-{i}", "v" * 24) for i in range(1000)], close=True)
    _refused_or_answered(ctx, one, f"a GET with a {HUGE}-byte header", {200, 400, 431}, "RFC 6585 section 5: 431 Request Header Fields Too Large")
    _refused_or_answered(ctx, many, "a GET with 1,000 header fields", {200, 400, 431}, "RFC 6585 section 5: 431 Request Header Fields Too Large")


# -- connections ----------------------------------------------------------------------


def _persistent_probe(ctx: CheckContext, exchange: HttpExchange) -> HttpResponse:
    """The first request on a connection; skip the check if the server does not offer persistence."""
    exchange.request("GET", "/hello.txt")
    first = exchange.response("the response to GET /hello.txt")
    expect_file(ctx, first, "hello.txt", "GET /hello.txt")
    if not first.persistent:
        said = "Connection: close" if "close" in first.connection_tokens() else f"{first.http_version} without keep-alive"
        ctx.skip(f"the server answers {said}: it does not offer persistent connections (RFC 9112 section 9.3), which is allowed")
    return first


def _closed_without_saying(ctx: CheckContext, exchange: HttpExchange, violation: ProtocolViolation, what: str) -> ProtocolViolation:
    if exchange.closed_by_server and exchange.reader.idle:
        return ProtocolViolation(
            f"the server answered HTTP/1.1 without Connection: close, then closed the connection before {what}",
            expected=f"{rfc.PERSISTENT}; {rfc.MUST_SAY_CLOSE}",
            got=violation.got,
            hint="keep reading requests on the connection until the client closes it; or send 'Connection: close' and then close",
        )
    return violation


@SUITE.check("connections", "keep-alive", title="several requests answered on one persistent connection", references=("RFC 9112 section 9.3 (persistence)", "RFC 9112 section 9.6 (close)", 'FOPNP ch. 9 "Connections, Keep-Alive, and httplib"'))
def check_keep_alive(ctx: CheckContext) -> None:
    """Three GETs, one after the other, on one connection: each is answered
    with its file. Not applicable to a server that answers HTTP/1.0 or says
    ``Connection: close`` (it may close; it must say so)."""
    need_docroot(ctx)
    exchange = HttpExchange(ctx, label="keep-alive")
    _persistent_probe(ctx, exchange)
    for index, path in enumerate(("index.html", "data.bin"), start=2):
        exchange.request("GET", f"/{path}")
        try:
            response = exchange.response(f"the response to request {index} on the connection (GET /{path})")
        except ProtocolViolation as violation:
            raise _closed_without_saying(ctx, exchange, violation, f"answering request {index}") from None
        expect_file(ctx, response, path, f"GET /{path} (request {index} on the connection)")
        if not response.persistent:
            return


@SUITE.check("connections", "pipelining", title="three requests sent at once are all answered, in order", references=("RFC 9112 section 9.3.2 (pipelining)", "RFC 9112 section 9.6 (close)"))
def check_pipelining(ctx: CheckContext) -> None:
    """On a persistent connection, three GETs in one segment: three responses
    come back, in the order of the requests, each with its file (a server
    that takes one recv() per request drops the second and third). Not
    applicable to a server that does not offer persistent connections."""
    need_docroot(ctx)
    exchange = HttpExchange(ctx, label="pipelining")
    _persistent_probe(ctx, exchange)
    paths = ["sub/deeper/page.txt", "hello.txt", "plain/note.txt"]
    exchange.send_raw(b"".join(build_request("GET", f"/{p}", host=_host(ctx)) for p in paths), [("GET", (1, 1))] * len(paths))
    for index, path in enumerate(paths, start=1):
        try:
            response = exchange.response(f"response {index} of {len(paths)} to pipelined requests (GET /{path})", timeout=3.0)
        except ProtocolViolation as violation:
            raise _closed_without_saying(ctx, exchange, violation, f"answering pipelined request {index}") from None
        others = [p for p in paths if p != path and FILES[p] == response.body]
        if response.status == 200 and others:
            ctx.fail(f"response {index} of the pipelined requests carries /{others[0]}, not /{path}: the answers are out of order", expected=rfc.PIPELINING, got=f"/{others[0]} where /{path} belongs", hint="answer requests one after another in the order they arrived")
        expect_file(ctx, response, path, f"pipelined request {index}, GET /{path}")
        if not response.persistent:
            return  # it announced the close: the requests after this one are not owed


@SUITE.check("connections", "close-honoured", title="Connection: close is honoured: the server closes after its response", references=("RFC 9112 section 9.6 (close)", 'FOPNP ch. 9 "Connections, Keep-Alive, and httplib"'))
def check_close_honoured(ctx: CheckContext) -> None:
    """A GET saying ``Connection: close``: after the response, the server
    closes the connection (within 2 seconds), rather than waiting for the
    client."""
    need_docroot(ctx)
    exchange = HttpExchange(ctx, label="close")
    exchange.request("GET", "/hello.txt", close=True)
    expect_file(ctx, exchange.response("the response to GET /hello.txt with Connection: close"), "hello.txt", "GET /hello.txt")
    how = exchange.wait_close(2.0)
    ctx.expect(how != "open", "the server did not close the connection after answering a request with Connection: close", expected=rfc.CLOSE_OPTION, got=f"the connection still open {ctx.timeout(2.0):.1f} s after the response", hint="check the Connection header of each request for the close token, and close after answering it")


@SUITE.check("connections", "slow-client", title=f"{STALLED_CLIENTS} clients stalled mid-request do not keep another from being served", severity=Severity.SHOULD, references=('FOPNP ch. 10 "The Benefits of Reverse Proxies" ("offer a few initial desultory bytes of request data, and then freeze")', 'FOPNP ch. 7 (threaded and asynchronous servers)'))
def check_slow_client(ctx: CheckContext) -> None:
    """Six connections each send half a request head and stop; a new
    client's GET is answered within 3 seconds meanwhile."""
    need_docroot(ctx)
    for index in range(STALLED_CLIENTS):
        stalled = ctx.connect(label=f"stalled{index + 1}")
        stalled.send(f"GET /hello.txt HTTP/1.1\r\nHost: {_host(ctx)}\r\nX-Slow: ".encode())
    try:
        response = fetch(ctx, "/hello.txt", label="other", timeout=3.0)
    except ProtocolViolation as violation:
        raise ProtocolViolation(
            f"while {STALLED_CLIENTS} clients had each sent half a request and stalled, another client was not served",
            expected="the other client is answered while the stalled ones wait",
            got=violation.summary,
            hint="serve each connection in its own thread (or an event loop); never block the accept loop on one client's recv()",
        ) from None
    expect_file(ctx, response, "hello.txt", "GET /hello.txt while other clients stall")

