"""http-client checks on single exchanges: the request, body framing, codings, status, silence.

Groups ``request`` (request line, Host), ``body`` (Content-Length with the
connection left open, chunked, close-delimited HTTP/1.0, 100 Continue, gzip),
``status`` (errors exit non-zero) and ``timeouts`` (a silent server).
"""

from __future__ import annotations

import gzip
from typing import Callable

from pytest_netlab.context import CheckContext
from pytest_netlab.http_wire import HttpRequest
from pytest_netlab.registry import Severity

from . import _suite as rfc
from ._scripted_server import Reply, ScriptedHttpServer
from ._suite import SUITE, expect_printed, first_request, ok, response, token

__all__: list[str] = []

# Seconds a client may take for one fetch on loopback (before --netlab-timeout-scale).
FETCH = 8.0
SILENCE = 8.0


def _body(ctx: CheckContext, what: str) -> bytes:
    return f"netlab {token(ctx)}: {what}\n".encode()


# -- request --------------------------------------------------------------------------


@SUITE.check("request", "request-line", title="GET with the path and query of the URL (origin form, no fragment), HTTP/1.x", references=("RFC 9112 section 3 and 3.2.1 (request line, origin form)", 'FOPNP ch. 9 "Paths and Hosts"'))
def check_request_line(ctx: CheckContext) -> None:
    """Fetch ``/docs/page-...txt?x=1&token=...#section-2``: the request line is
    ``GET /docs/page-...txt?x=1&token=... HTTP/1.1`` (or 1.0): the origin form,
    without scheme, host or fragment; the body is printed and the exit is 0."""
    word = token(ctx)
    target = f"/docs/page-{word}.txt?x=1&token={word}"
    body = _body(ctx, "request line")
    server = ScriptedHttpServer(ctx, lambda request, count: Reply(ok(body)))
    run = ctx.run_client(timeout=FETCH, url=server.url(target + "#section-2"))
    first = first_request(ctx, server, run)
    ctx.expect(first.method == "GET", f"the client fetched the URL with {first.method}, not GET", expected="GET", got=first.request_line.decode("latin-1"))
    if first.target != target:
        why = "a full URL is the absolute form, for proxies" if "://" in first.target else "the fragment (#...) stays in the client" if "#" in first.target else "the path and query must be sent exactly as in the URL"
        ctx.fail(f"the request target is {first.target!r}: {why}", expected=f"GET {target} HTTP/1.1 ({rfc.ORIGIN_FORM})", got=first.request_line.decode("latin-1"), hint="send urlsplit(url).path plus '?' and the query, nothing else")
    expect_printed(ctx, run, body, "after a plain 200 response")


@SUITE.check("request", "host", title="one Host header equal to the URL's host:port", references=("RFC 9112 section 3.2 (Host)", 'FOPNP ch. 9 "Paths and Hosts"'))
def check_host(ctx: CheckContext) -> None:
    """The request carries exactly one Host header, ``127.0.0.1:PORT`` as in
    the URL (an HTTP/1.0 request may omit it)."""
    body = _body(ctx, "host")
    server = ScriptedHttpServer(ctx, lambda request, count: Reply(ok(body)))
    run = ctx.run_client(timeout=FETCH, url=server.url(f"/host-{token(ctx)}"))
    first = first_request(ctx, server, run)
    hosts = first.header_values("host")
    if not hosts and first.version >= (1, 1):
        ctx.fail("the client's HTTP/1.1 request has no Host header", expected=f"Host: {server.authority} ({rfc.HOST})", got=first.raw.decode("latin-1").strip().replace("\r\n", " | "), hint="add 'Host: host:port' from the URL to every request")
    if len(hosts) > 1:
        ctx.fail(f"the client sent {len(hosts)} Host headers", expected=f"one Host: {server.authority}", got=", ".join(h.decode("latin-1") for h in hosts))
    if hosts and hosts[0].decode("latin-1") != server.authority:
        ctx.fail(f"the Host header is {hosts[0].decode('latin-1')!r}, not the URL's authority", expected=f"Host: {server.authority} ({rfc.HOST})", got=f"Host: {hosts[0].decode('latin-1')}", hint="the port is part of Host when the URL has one")
    expect_printed(ctx, run, body, "after a plain 200 response")


# -- body -------------------------------------------------------------------------------


@SUITE.check("body", "content-length-open", title="the body ends at Content-Length while the server keeps the connection open", references=("RFC 9112 section 6.3 (message body length)", 'FOPNP ch. 9 "Ports, Encryption, and Framing"'))
def check_content_length_open(ctx: CheckContext) -> None:
    """The server sends ``Content-Length: N`` and N bytes, then keeps the
    connection open (whatever the client asked): the client prints the N
    bytes and exits, instead of waiting for an end of file that does not come."""
    body = _body(ctx, "Content-Length, connection held open") * 3
    server = ScriptedHttpServer(ctx, lambda request, count: Reply(ok(body), then="hold"))
    run = ctx.run_client(timeout=FETCH, url=server.url(f"/held-{token(ctx)}"))
    first_request(ctx, server, run)
    expect_printed(ctx, run, body, f"when {len(body)} bytes had arrived as Content-Length said and the connection stayed open", hint=f"read exactly Content-Length bytes, not until EOF: {rfc.CONTENT_LENGTH}")


def _chunked(body: bytes) -> bytes:
    """``body`` in chunks of 0x1A (with an extension), 3 and the rest, then a trailer field."""
    pieces = [body[:26], body[26:29], body[29:]]
    encoded = b"1A;name=value\r\n" + pieces[0] + b"\r\n" + b"3\r\n" + pieces[1] + b"\r\n"
    encoded += f"{len(pieces[2]):X}\r\n".encode() + pieces[2] + b"\r\n0\r\nX-Netlab-Trailer: done\r\n\r\n"
    return response(200, "OK", fields=(("Content-Type", "text/plain"), ("Transfer-Encoding", "chunked")), length=False) + encoded


@SUITE.check("body", "chunked", title="a chunked body is decoded (hex sizes, extensions, trailer)", references=("RFC 9112 section 7.1 (chunked)", 'FOPNP ch. 9 "Ports, Encryption, and Framing"'))
def check_chunked(ctx: CheckContext) -> None:
    """The body comes in chunks of 0x1A bytes (with a chunk extension), 3 bytes
    and the rest (size in upper-case hex), then a trailer field: the client
    prints the data alone, without sizes, extensions or trailer."""
    body = _body(ctx, "chunked transfer coding") * 2
    server = ScriptedHttpServer(ctx, lambda request, count: Reply(_chunked(body)))
    run = ctx.run_client(timeout=FETCH, url=server.url(f"/chunked-{token(ctx)}"))
    first_request(ctx, server, run)
    expect_printed(ctx, run, body, "after a chunked response", hint=f"decode Transfer-Encoding: chunked: hex size line, data, CRLF, until size 0; then skip the trailer ({rfc.CHUNKED})")


@SUITE.check("body", "close-delimited", title="an HTTP/1.0 body without Content-Length ends when the server closes", references=("RFC 9112 section 6.3 (message body length)", 'FOPNP ch. 9 "Ports, Encryption, and Framing"'))
def check_close_delimited(ctx: CheckContext) -> None:
    """``HTTP/1.0 200 OK`` with neither Content-Length nor chunked coding, the
    body, then the server closes: everything up to the close is the body."""
    body = _body(ctx, "delimited by the close of the connection") * 4
    server = ScriptedHttpServer(ctx, lambda request, count: Reply(response(200, "OK", body, (("Content-Type", "text/plain"),), version="HTTP/1.0", length=False), then="close"))
    run = ctx.run_client(timeout=FETCH, url=server.url(f"/legacy-{token(ctx)}"))
    first_request(ctx, server, run)
    expect_printed(ctx, run, body, "after an HTTP/1.0 response whose body ends with the connection", hint=f"without Content-Length or chunked, read until EOF ({rfc.CLOSE_DELIMITED})")


@SUITE.check("body", "continue-ignored", title="an unexpected 100 Continue before the 200 is skipped", severity=Severity.SHOULD, references=("RFC 9110 section 15.2 (1xx)", "RFC 9110 section 15.2.1 (100 Continue)"))
def check_continue_ignored(ctx: CheckContext) -> None:
    """The server sends ``HTTP/1.1 100 Continue`` and then the real 200
    response: the client reads past the interim response and prints the
    200's body."""
    body = _body(ctx, "after 100 Continue")
    server = ScriptedHttpServer(ctx, lambda request, count: Reply(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(body)))
    run = ctx.run_client(timeout=FETCH, url=server.url(f"/interim-{token(ctx)}"))
    first_request(ctx, server, run)
    expect_printed(ctx, run, body, "after a 100 Continue followed by a 200", hint=f"a 1xx status is not the answer: read the next status line ({rfc.INTERIM})")


def accepts_gzip(request: HttpRequest) -> bool:
    """True when Accept-Encoding lists gzip (or *) with a q-value above 0."""
    for value in request.header_values("accept-encoding"):
        for member in value.decode("latin-1").split(","):
            name, _, params = member.strip().partition(";")
            q = 1.0
            if params.strip().lower().startswith("q="):
                try:
                    q = float(params.strip()[2:])
                except ValueError:
                    q = 0.0
            if name.strip().lower() in ("gzip", "x-gzip", "*") and q > 0:
                return True
    return False


@SUITE.check("body", "gzip", title="a gzip Content-Encoding is decoded when the client asked for it", references=("RFC 9110 section 8.4 (Content-Encoding)", "RFC 9110 section 12.5.3 (Accept-Encoding)", 'FOPNP ch. 9 "Content Encoding"'))
def check_gzip(ctx: CheckContext) -> None:
    """If the request's Accept-Encoding lists gzip, the server answers with
    ``Content-Encoding: gzip``: the client prints the decompressed body. Not
    applicable to a client that does not ask for gzip (it gets the plain body)."""
    body = _body(ctx, "compressed with gzip") * 8

    def script(request: HttpRequest, count: int) -> Reply:
        if not accepts_gzip(request):
            return Reply(ok(body))
        packed = gzip.compress(body, mtime=0)
        return Reply(response(200, "OK", packed, (("Content-Type", "text/plain"), ("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding"))))

    server = ScriptedHttpServer(ctx, script)
    run = ctx.run_client(timeout=FETCH, url=server.url(f"/packed-{token(ctx)}"))
    first = first_request(ctx, server, run)
    if not accepts_gzip(first):
        ctx.skip("the client does not send Accept-Encoding with gzip, and servers only compress for clients that ask (RFC 9110 section 12.5.3)")
    expect_printed(ctx, run, body, "after a gzip-encoded response to a request that accepted gzip", hint=f"decompress (gzip.decompress) when Content-Encoding: gzip ({rfc.CONTENT_CODING})")


# -- status -------------------------------------------------------------------------------


def _always(data: bytes) -> Callable[[HttpRequest, int], Reply]:
    """A script that answers every request with ``data``."""
    return lambda request, count: Reply(data)


@SUITE.check("status", "error-exit", title="a final 404 or 500 ends with a non-zero exit status", references=('FOPNP ch. 9 "Status Codes" (urlopen() raises, so an error page is never taken for data)', "RFC 9110 section 15.5.5 and 15.6.1"))
def check_error_exit(ctx: CheckContext) -> None:
    """A 404 and (in a second run) a 500, each with an HTML error page: the
    client exits non-zero, so a script never takes an error page for the
    document (printing the page as well is allowed)."""
    for status, reason in ((404, "Not Found"), (500, "Internal Server Error")):
        page = f"<html><body><h1>{status} {reason}</h1><p>{token(ctx)}</p></body></html>\n".encode()
        server = ScriptedHttpServer(ctx, _always(response(status, reason, page, (("Content-Type", "text/html"),))), label=f"server{status}")
        run = ctx.run_client(timeout=FETCH, url=server.url(f"/status-{status}-{token(ctx)}"))
        first_request(ctx, server, run)
        if run.timed_out:
            ctx.fail(f"the client did not finish after a {status} response", expected="a prompt non-zero exit", got=run.describe())
        ctx.expect(run.status.returncode != 0, f"the client exited 0 after a {status} {reason}", expected="a non-zero exit status for any final status outside 2xx (like curl -f)", got=run.describe(), hint="check the status code of the final response; exit 1 unless it is 2xx")


# -- timeouts --------------------------------------------------------------------------------


@SUITE.check("timeouts", "silent-server", title=f"gives up with a non-zero exit when the server never answers (within {SILENCE:.0f} s)", severity=Severity.SHOULD, references=('FOPNP ch. 2 "Unreliability, Backoff, Blocking, and Timeouts"', "RFC 9112 section 9.5 (timeouts)"), timeout=45.0)
def check_silent_server(ctx: CheckContext) -> None:
    """The server accepts the connection, reads the request, and says nothing:
    the client gives up by itself, with a non-zero exit, within 8 seconds."""
    server = ScriptedHttpServer(ctx, lambda request, count: Reply(then="silence"))
    run = ctx.run_client(timeout=SILENCE, url=server.url(f"/silent-{token(ctx)}"))
    first_request(ctx, server, run)
    if run.timed_out:
        ctx.fail(f"the client was still waiting after {ctx.timeout(SILENCE):.0f} s for a server that never answers", expected=f"a non-zero exit within {ctx.timeout(SILENCE):.0f} s", got=run.describe(), hint="set a timeout on the socket (sock.settimeout / create_connection(timeout=...)) and exit non-zero when it expires")
    ctx.expect(run.status.returncode != 0, "the client exited 0 although the server never answered", expected="a non-zero exit", got=run.describe())
