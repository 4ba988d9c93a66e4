"""The http-client suite object, the helpers every check shares, and the RFC sentences.

A check starts a :class:`~._scripted_server.ScriptedHttpServer`, runs the
client under test against its URL, and then judges two things: what the
client printed and how it exited (the contract of ``curl -sfL {url}``), and
what it sent on the wire (each request read by the strict reader).
"""

from __future__ import annotations

import string
from urllib.parse import urlsplit

from pytest_netlab.client_target import ClientRun
from pytest_netlab.context import CheckContext
from pytest_netlab.http_wire import HttpRequest
from pytest_netlab.registry import Role, Suite, register_suite
from pytest_netlab.transcript import format_bytes

from ._scripted_server import ScriptedHttpServer

__all__ = ["SUITE", "BOOK", "origin_form", "token", "response", "ok", "expect_printed", "expect_well_formed", "first_request", "describe_requests"]

SUITE = register_suite(
    Suite(
        "http-client",
        Role.CLIENT,
        title="HTTP/1.1 client, like curl -sfL (RFC 9110, RFC 9112)",
        placeholders=("url",),
        description=(
            "Fetches {url} with GET, follows redirects, writes the final body to stdout and exits 0 for a "
            "final 2xx response, non-zero otherwise."
        ),
    )
)

BOOK = 'FOPNP ch. 9 "Status Codes" (redirects)'

ORIGIN_FORM = (
    'RFC 9112 section 3.2.1: "When making a request directly to an origin server, other than a CONNECT or '
    "server-wide OPTIONS request, a client MUST send only the absolute path and query components of the target "
    'URI as the request-target."'
)
HOST = (
    'RFC 9112 section 3.2: "A client MUST send a Host header field in all HTTP/1.1 request messages. If the target '
    "URI includes an authority component, then a client MUST send a field value for Host that is identical to that "
    'authority component, excluding any userinfo subcomponent and its "@" delimiter"'
)
CONTENT_LENGTH = (
    'RFC 9112 section 6.3: "If a valid Content-Length header field is present without Transfer-Encoding, its '
    'decimal value defines the expected message body length in octets."'
)
CHUNKED = 'RFC 9112 section 7.1: "A recipient MUST be able to parse and decode the chunked transfer coding."'
CLOSE_DELIMITED = (
    'RFC 9112 section 6.3: "Otherwise, this is a response message without a declared message body length, so the '
    'message body length is determined by the number of octets received prior to the server closing the connection."'
)
INTERIM = (
    'RFC 9110 section 15.2: "A client MUST be able to parse one or more 1xx responses received prior to a final '
    'response, even if the client does not expect one. A user agent MAY ignore unexpected 1xx responses."'
)
CONTENT_CODING = (
    'RFC 9110 section 8.4: "The Content-Encoding header field indicates what content codings have been applied to '
    'the representation [...] and thus what decoding mechanisms have to be applied in order to obtain data in the '
    'media type referenced by the Content-Type header field."'
)
LOCATION = (
    'RFC 9110 section 10.2.2: "The field value consists of a single URI-reference. When it has the form of a relative '
    "reference, the final value is computed by resolving it against the target URI.\" (RFC 3986 section 5.2)"
)
REDIRECT = (
    'RFC 9110 section 15.4: "If a Location header field is provided, the user agent MAY automatically redirect its '
    'request to the URI referenced by the Location field value" (the contract of this suite: like curl -L, it does)'
)
SAME_METHOD = (
    'RFC 9110 section 15.4.8: "The 307 (Temporary Redirect) status code indicates that the target resource resides '
    "temporarily under a different URI and the user agent MUST NOT change the request method if it performs an "
    'automatic redirection to that URI." (section 15.4.9 says the same of 308)'
)
SEE_OTHER = (
    'RFC 9110 section 15.4.4: "A user agent can perform a retrieval request targeting that URI (a GET or HEAD '
    'request if using HTTP), which might also be redirected, and present the eventual result as an answer to the original request."'
)
CYCLES = 'RFC 9110 section 15.4: "A client SHOULD detect and intervene in cyclical redirections (i.e., "infinite" redirection loops)."'


def origin_form(target: str) -> str:
    """The path and query of a request target, as a server reads it.

    RFC 9112 section 3.2.2: "a server MUST accept the absolute-form in
    requests", so the scripted servers route ``http://h:p/x?y`` like ``/x?y``
    (the request-line check judges the form itself).
    """
    if "://" not in target:
        return target
    parts = urlsplit(target)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def token(ctx: CheckContext, n: int = 10) -> str:
    """A seeded random word: bodies and paths a client cannot have canned."""
    return "".join(ctx.rng.choice(string.ascii_lowercase + string.digits) for _ in range(n))


def response(status: int, reason: str, body: bytes = b"", fields: tuple[tuple[str, str], ...] = (), *, version: str = "HTTP/1.1", length: bool = True) -> bytes:
    """The exact bytes of a response (``length``: add Content-Length)."""
    lines = [f"{version} {status} {reason}", "Server: netlab-scripted/1.0", "Date: Sun, 06 Nov 1994 08:49:37 GMT"]
    lines += [f"{name}: {value}" for name, value in fields]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def ok(body: bytes) -> bytes:
    return response(200, "OK", body, (("Content-Type", "text/plain; charset=utf-8"),))


def describe_requests(server: ScriptedHttpServer) -> str:
    seen = [f"{s.request.method} {s.request.target} (port {s.port})" for s in server.seen]
    seen = seen[:12] + ([f"... {len(seen) - 12} more"] if len(seen) > 12 else [])
    return "; ".join(seen) if seen else "no request at all"


def expect_well_formed(ctx: CheckContext, *servers: ScriptedHttpServer) -> None:
    """Fail on any request that broke HTTP/1.1 syntax or framing."""
    for server in servers:
        for number, violation in server.violations:
            ctx.fail(
                f"the client's request breaks HTTP/1.1: {violation.summary}",
                expected=f"a request that follows {violation.rule}",
                got=f"{format_bytes(violation.offending, 120)} at byte {violation.offset} of connection {number}",
                hint="end every line with \\r\\n and the head with an empty line; 'GET /path HTTP/1.1'",
            )


def first_request(ctx: CheckContext, server: ScriptedHttpServer, run: ClientRun) -> HttpRequest:
    expect_well_formed(ctx, server)
    if not server.requests:
        ctx.fail("the client sent no request to the URL it was given", expected=f"GET to {server.url('/')}...", got=run.describe(), hint="connect to the host and port of the URL given on the command line")
    return server.requests[0]


def expect_printed(ctx: CheckContext, run: ClientRun, body: bytes, situation: str, *, hint: str = "") -> None:
    """The client exited 0 by itself and printed exactly ``body``."""
    if run.timed_out:
        ctx.fail(f"the client did not finish {situation}", expected=f"exit 0 with the {len(body)}-byte body on stdout", got=run.describe(), hint=hint)
    if run.status.returncode != 0:
        ctx.fail(f"the client failed {situation}", expected=f"exit 0 with the {len(body)}-byte body on stdout (the final response was 200)", got=run.describe(), hint=hint)
    if run.stdout != body:
        ctx.fail(
            f"the client printed something other than the body {situation}",
            expected=f"exactly the {len(body)} body bytes: {format_bytes(body, 96)}",
            got=f"{len(run.stdout)} bytes: {format_bytes(run.stdout, 96)}",
            hint=hint or "write the body bytes to stdout unchanged (sys.stdout.buffer.write), nothing else",
        )
