"""http-server checks on what is served: files, status codes, methods, validators, the docroot boundary.

Groups ``get``, ``methods``, ``conditional`` and ``security``. Each check asks
for the suite's own files (see :mod:`._docroot`) with exact bytes and judges
the answer by the RFC 9110 sentence it cites; where the RFC allows several
answers, every one of them passes.
"""

from __future__ import annotations

import string
import time
from datetime import datetime, timezone
from urllib.parse import urljoin, urlsplit

from pytest_netlab.context import CheckContext
from pytest_netlab.errors import ProtocolViolation
from pytest_netlab.http_wire import HttpResponse, is_imf_fixdate, list_tokens, parse_http_date
from pytest_netlab.registry import Severity
from pytest_netlab.transcript import SERVER_TO_CLIENT, format_bytes

from . import _suite as rfc
from ._docroot import SECRET_MARKER, SECRET_NAME, served_file
from ..bulk_transfer import first_difference
from ._exchange import HttpExchange, fetch, host_header, need_docroot, show_head
from ._suite import SUITE

__all__ = ["expect_file", "expect_status"]

# How far a Date may be from our clock: the server runs on this machine.
_CLOCK_SLACK = 15 * 60


def expect_status(ctx: CheckContext, response: HttpResponse, allowed: set[int], request: str, *, rule: str, hint: str = "") -> None:
    """Fail unless the status is one of ``allowed``."""
    if response.status not in allowed:
        codes = " or ".join(str(c) for c in sorted(allowed))
        ctx.fail(
            f"{request} was answered {response.status} {response.reason.decode('latin-1')}, not {codes}",
            expected=f"{codes}: {rule}",
            got=response.describe(),
            hint=hint,
        )


def expect_file(ctx: CheckContext, response: HttpResponse, path: str, request: str) -> None:
    """Fail unless ``response`` is 200 with exactly the bytes of docroot file ``path``."""
    expected = served_file(path)
    expect_status(ctx, response, {200}, request, rule=f"the file /{path} exists in the docroot", hint="map the request target to a file under the docroot")
    if response.body != expected:
        offset = first_difference(expected, response.body)
        declared = response.header("content-length")
        if response.framing == "content-length" and expected.startswith(response.body) and declared is not None:
            ctx.fail(
                f"the answer to {request} declares Content-Length: {declared.decode('latin-1')}, but the file /{path} has {len(expected)} bytes",
                expected=f"Content-Length: {len(expected)}, then the {len(expected)} bytes of the file ({rfc.CONTENT_LENGTH})",
                got=f"Content-Length: {declared.decode('latin-1')}; the body stops {len(expected) - len(response.body)} bytes short, at {format_bytes(expected[offset : offset + 16])}",
                hint="Content-Length counts the bytes of the body as sent: len(body_bytes), not len(text)",
            )
        ctx.fail(
            f"the body of the answer to {request} differs from the file /{path} from byte {offset}",
            expected=f"{len(expected)} bytes; at offset {offset}: {format_bytes(expected[offset : offset + 24])}",
            got=f"{len(response.body)} bytes; at offset {offset}: {format_bytes(response.body[offset : offset + 24])}",
            hint="send the file's bytes unchanged: open it in binary mode, never decode or re-encode it",
        )


def _token(ctx: CheckContext, n: int = 8) -> str:
    return "".join(ctx.rng.choice(string.ascii_lowercase + string.digits) for _ in range(n))


# -- get --------------------------------------------------------------------------


@SUITE.check("get", "exact-body", title="GET answers 200 with each file's exact bytes (text, HTML, binary)", references=("RFC 9110 section 9.3.1 (GET)", "RFC 9112 section 6.3 (message body length)", 'FOPNP ch. 9 "Ports, Encryption, and Framing"'))
def check_exact_body(ctx: CheckContext) -> None:
    """GET a UTF-8 text file, an HTML page and a 99 KiB binary file holding every
    byte value: each answer is 200 with exactly the file's bytes, framed by a
    correct Content-Length (or chunked coding), with nothing after it."""
    need_docroot(ctx)
    for path in ("hello.txt", "index.html", "data.bin"):
        expect_file(ctx, fetch(ctx, f"/{path}", label=path), path, f"GET /{path}")


@SUITE.check("get", "content-type", title="labels files with a Content-Type (text/plain, text/html)", severity=Severity.SHOULD, references=("RFC 9110 section 8.3 (Content-Type)", 'FOPNP ch. 9 "Content Type"'))
def check_content_type(ctx: CheckContext) -> None:
    """A .txt file comes with ``Content-Type: text/plain`` and an .html file
    with ``text/html`` (parameters such as charset are fine). The binary file
    is not asked about: a server may not know its type, which the RFC allows."""
    need_docroot(ctx)
    for path, media in (("hello.txt", "text/plain"), ("index.html", "text/html")):
        response = fetch(ctx, f"/{path}", label=path)
        expect_file(ctx, response, path, f"GET /{path}")
        value = response.header("content-type")
        if value is None:
            ctx.fail(f"GET /{path} was answered without a Content-Type", expected=rfc.CONTENT_TYPE, got=show_head(response), hint="guess it from the file name: mimetypes.guess_type(path)")
        found = value.split(b";")[0].strip().lower().decode("latin-1")
        if found != media:
            ctx.fail(f"GET /{path} is labelled {found}, not {media}", expected=f"Content-Type: {media}", got=f"Content-Type: {value.decode('latin-1')}", hint="mimetypes.guess_type() maps .txt to text/plain and .html to text/html")


@SUITE.check("get", "not-found", title="404 (or 410) for a file that does not exist", references=("RFC 9110 section 15.5.5 (404 Not Found)", 'FOPNP ch. 9 "Status Codes"'))
def check_not_found(ctx: CheckContext) -> None:
    """GET two paths that name no file (one in a directory that does not
    exist): the answer is 404 Not Found or 410 Gone, never 200 with an error page."""
    token = _token(ctx)
    for target in (f"/missing-{token}.txt", f"/sub/nothing-{token}/page.txt"):
        expect_status(ctx, fetch(ctx, target), {404, 410}, f"GET {target}", rule=rfc.NOT_FOUND, hint="answer 404 when the file does not exist; a 200 'not found' page tells clients and caches the page exists")


@SUITE.check("get", "date", title="a Date header in IMF-fixdate form on 2xx and 4xx responses", references=("RFC 9110 section 6.6.1 (Date)", "RFC 9110 section 5.6.7 (HTTP-date)"))
def check_date(ctx: CheckContext) -> None:
    """A 200 and a 404 response each carry Date, in the form
    ``Sun, 06 Nov 1994 08:49:37 GMT``, within a quarter of an hour of this
    machine's clock (the server runs on it)."""
    need_docroot(ctx)
    for target in ("/hello.txt", f"/missing-{_token(ctx)}.txt"):
        response = fetch(ctx, target)
        value = response.header("date")
        if value is None:
            ctx.fail(f"the {response.status} response to GET {target} has no Date header", expected=rfc.DATE, got=show_head(response), hint="email.utils.formatdate(usegmt=True) gives the right form")
        if not is_imf_fixdate(value):
            ctx.fail(f"the Date header {value.decode('latin-1')!r} is not in IMF-fixdate form", expected=f"Date: Sun, 06 Nov 1994 08:49:37 GMT ({rfc.IMF_FIXDATE})", got=f"Date: {value.decode('latin-1')}", hint="email.utils.formatdate(usegmt=True); never local time, never ISO 8601")
        when = parse_http_date(value)
        assert when is not None
        drift = abs((when - datetime.now(timezone.utc)).total_seconds())
        ctx.expect(drift <= _CLOCK_SLACK, f"the Date header is {drift:.0f} s away from the current time", expected="the time the response was generated, in GMT", got=f"Date: {value.decode('latin-1')}", hint="use the current UTC time, not local time labelled GMT")


@SUITE.check("get", "one-byte-at-a-time", title="answers a request that arrives one byte per segment", references=("RFC 9112 section 2.1 (message format)", 'FOPNP ch. 5 "Framing and Quoting"'))
def check_one_byte_at_a_time(ctx: CheckContext) -> None:
    """Send ``GET /hello.txt`` one byte per TCP segment: the server must read
    until the empty line ending the head, however the bytes are split, and
    answer 200 with the file (a server taking one recv() as the request fails)."""
    need_docroot(ctx)
    exchange = HttpExchange(ctx, label="bytewise")
    request = b"GET /hello.txt HTTP/1.1\r\nHost: " + host_header(ctx.address).encode() + b"\r\nConnection: close\r\n\r\n"
    exchange.reader.expect("GET")
    sent = 0
    try:
        for sent in range(1, len(request) + 1):
            exchange.client.send(request[sent - 1 : sent])
            if sent < len(request):
                time.sleep(0.002)
    except ProtocolViolation:
        response = exchange.response(f"the response to the first {sent - 1} bytes", refusal_ok=True)
        ctx.fail(
            f"the server {'answered ' + str(response.status) if response else 'closed the connection'} while the request was still arriving one byte per segment ({sent - 1} of {len(request)} bytes sent)",
            expected="the server reads until the empty line (\\r\\n\\r\\n) and answers 200 with /hello.txt",
            got=(response.describe() if response else "no answer") + ", then the connection closed while the rest was being sent",
            hint="one recv() is not one request: keep reading until the head ends with \\r\\n\\r\\n",
        )
    expect_file(ctx, exchange.response("the response to GET /hello.txt sent one byte at a time"), "hello.txt", "GET /hello.txt (sent one byte at a time)")


@SUITE.check("get", "percent-decoding", title="decodes percent-encoded paths (a name with a space, %68ello.txt)", severity=Severity.SHOULD, references=("RFC 3986 section 2.1 and 6.2.2 (percent-encoding)", "RFC 9110 section 4.2.3 (URI normalization)", 'FOPNP ch. 11 "Parsing and Building URLs"'))
def check_percent_decoding(ctx: CheckContext) -> None:
    """``/name%20with%20space.txt`` is the file "name with space.txt";
    ``/%68ello.txt`` and ``/sub/deeper/page%2Etxt`` encode unreserved
    characters, which RFC 3986 makes equivalent to the plain ones."""
    need_docroot(ctx)
    for target, path in (("/name%20with%20space.txt", "name with space.txt"), ("/%68ello.txt", "hello.txt"), ("/sub/deeper/page%2Etxt", "sub/deeper/page.txt")):
        expect_file(ctx, fetch(ctx, target), path, f"GET {target}")


@SUITE.check("get", "query-ignored", title="a query string does not change which file is served", severity=Severity.SHOULD, references=('FOPNP ch. 10 "WSGI Without a Framework" (ignore extraneous query strings)', "RFC 3986 section 3.4 (query)"))
def check_query_ignored(ctx: CheckContext) -> None:
    """``/hello.txt?download=1&token=...`` and ``/sub/deeper/page.txt?`` serve
    the files themselves: a static server looks the file up by the path only."""
    need_docroot(ctx)
    for target, path in ((f"/hello.txt?download=1&token={_token(ctx)}", "hello.txt"), ("/sub/deeper/page.txt?", "sub/deeper/page.txt")):
        expect_file(ctx, fetch(ctx, target), path, f"GET {target}")


@SUITE.check("get", "directory", title="a directory is served by its index.html; without the slash, redirected (301/302/303/307/308) or served", severity=Severity.SHOULD, references=("RFC 9110 section 15.4 (redirection)", 'FOPNP ch. 11 "Relative URLs" (redirect a URL written the wrong way)'))
def check_directory(ctx: CheckContext) -> None:
    """``/`` and ``/sub/`` are answered with their index.html. ``/sub`` is
    either redirected to ``/sub/`` (any redirect status; a relative or absolute
    Location) or answered with the same index page."""
    need_docroot(ctx)
    expect_file(ctx, fetch(ctx, "/"), "index.html", "GET /")
    expect_file(ctx, fetch(ctx, "/sub/"), "sub/index.html", "GET /sub/")
    response = fetch(ctx, "/sub")
    if response.status == 200:
        expect_file(ctx, response, "sub/index.html", "GET /sub")
        return
    expect_status(ctx, response, {200, 301, 302, 303, 307, 308}, "GET /sub (a directory, without the slash)", rule="a redirect to /sub/, or its index page", hint="redirect /sub to /sub/ so that relative links in the index page resolve")
    location = response.header("location")
    if location is None:
        ctx.fail(f"GET /sub was answered {response.status} without a Location", expected="Location: /sub/", got=show_head(response), hint="a redirect needs a Location header naming the new URL")
    base = f"http://{host_header(ctx.address)}/sub"
    resolved = urlsplit(urljoin(base, location.decode("latin-1")))
    ctx.expect(resolved.path == "/sub/", f"GET /sub is redirected to {resolved.path!r}, not /sub/", expected="Location: /sub/ (or an absolute URL ending in /sub/)", got=f"Location: {location.decode('latin-1')}")


# -- methods ----------------------------------------------------------------------


@SUITE.check("methods", "head", title="HEAD answers like GET, with no body and a true Content-Length", references=("RFC 9110 section 9.3.2 (HEAD)", "RFC 9110 section 8.6 (Content-Length)", 'FOPNP ch. 9 "Methods"'))
def check_head(ctx: CheckContext) -> None:
    """HEAD a text file and the binary file: the status is GET's (200), no
    byte of body follows the header section, and a Content-Length, if sent,
    is the length GET would send."""
    need_docroot(ctx)
    for path in ("hello.txt", "data.bin"):
        head = fetch(ctx, f"/{path}", method="HEAD", label=f"HEAD {path}")
        expect_status(ctx, head, {200}, f"HEAD /{path}", rule=rfc.GET_AND_HEAD, hint="HEAD is GET without the body: same status and headers")
        length = head.header("content-length")
        size = len(served_file(path))
        if length is not None and length != str(size).encode():
            ctx.fail(f"HEAD /{path} declares Content-Length {length.decode('latin-1')}, but the file has {size} bytes", expected=rfc.HEAD_LENGTH, got=f"Content-Length: {length.decode('latin-1')}", hint="compute the headers as for GET, then skip only the body")


@SUITE.check("methods", "unsupported", title="DELETE and an unknown method are refused (405 with Allow, or 501) and change nothing", references=("RFC 9110 section 9.1 (methods)", "RFC 9110 section 15.5.6 (405)", "RFC 9110 section 15.6.2 (501)", 'FOPNP ch. 9 "Methods"'))
def check_unsupported(ctx: CheckContext) -> None:
    """``DELETE /hello.txt`` is answered 405 (with an Allow header listing
    GET), 501, or 403; an unknown method (``NETLABXYZ``) 405 with Allow,
    501, or 400. Afterwards the file is still served unchanged."""
    need_docroot(ctx)
    unknown = "NETLAB" + "".join(ctx.rng.choice(string.ascii_uppercase) for _ in range(5))
    for method, allowed in (("DELETE", {403, 405, 501}), (unknown, {400, 405, 501})):
        response = fetch(ctx, "/hello.txt", method=method, label=method)
        expect_status(ctx, response, allowed, f"{method} /hello.txt", rule=rfc.METHOD_CODES, hint="a static server answers only GET and HEAD; others get 405 with Allow, or 501")
        if response.status == 405:
            allow = response.header("allow")
            if allow is None:
                ctx.fail(f"{method} /hello.txt was answered 405 without an Allow header", expected=rfc.ALLOW, got=show_head(response), hint="add 'Allow: GET, HEAD' to every 405 response")
            if "get" not in list_tokens([allow]):
                ctx.fail(f"the 405 answer to {method} says Allow: {allow.decode('latin-1')}, without GET", expected="an Allow list naming the methods the file supports (GET, HEAD)", got=f"Allow: {allow.decode('latin-1')}")
    expect_file(ctx, fetch(ctx, "/hello.txt", label="after"), "hello.txt", "GET /hello.txt after DELETE")


# -- conditional --------------------------------------------------------------------


def _validators(ctx: CheckContext) -> tuple[bytes | None, bytes | None]:
    first = fetch(ctx, "/hello.txt", label="validators")
    expect_file(ctx, first, "hello.txt", "GET /hello.txt")
    return first.header("last-modified"), first.header("etag")


@SUITE.check("conditional", "not-modified", title="304 for If-Modified-Since / If-None-Match with the validators it sent", severity=Severity.SHOULD, references=("RFC 9110 section 13.1.2 and 13.1.3", "RFC 9110 section 15.4.5 (304)", 'FOPNP ch. 9 "Caching and Validation"'))
def check_not_modified(ctx: CheckContext) -> None:
    """GET /hello.txt, then GET it again with ``If-Modified-Since:`` its
    Last-Modified and with ``If-None-Match:`` its ETag: each gets 304 Not
    Modified. Not applicable to a server that sends neither validator."""
    need_docroot(ctx)
    modified, etag = _validators(ctx)
    if modified is None and etag is None:
        ctx.skip("the server sends neither Last-Modified nor ETag, so a client has no validator to send back")
    for name, value, rule in (("If-Modified-Since", modified, rfc.IF_MODIFIED_SINCE), ("If-None-Match", etag, rfc.IF_NONE_MATCH)):
        if value is not None:
            response = fetch(ctx, "/hello.txt", fields=[(name, value.decode("latin-1"))], label=name)
            expect_status(ctx, response, {304}, f"GET /hello.txt with {name}: {value.decode('latin-1')}", rule=rule, hint="compare the validator the client sends back with the file's current one; if unchanged, answer 304 with no body")


@SUITE.check("conditional", "304-semantics", title="a 304 has no body and comes only when the validator matches", references=("RFC 9110 section 15.4.5 (304)", "RFC 9112 section 6.3 (message body length)", "RFC 9110 section 13.2.2 (evaluation)"))
def check_304_semantics(ctx: CheckContext) -> None:
    """Matching validators: a 304, if the server answers one, ends at its
    header section (no body, and a Content-Length only if it is GET's).
    Validators that do not match (another ETag, a date before the file's):
    200 with the file."""
    need_docroot(ctx)
    modified, etag = _validators(ctx)
    matching = [(n, v.decode("latin-1")) for n, v in (("If-Modified-Since", modified), ("If-None-Match", etag)) if v is not None]
    size = str(len(served_file("hello.txt"))).encode()
    for name, value in matching:
        response = fetch(ctx, "/hello.txt", fields=[(name, value)], label=f"matching {name}")
        length = response.header("content-length")
        if response.status == 304 and length is not None and length != size:
            ctx.fail(f"a 304 declares Content-Length {length.decode('latin-1')}, not the file's {size.decode()}", expected=rfc.HEAD_LENGTH.replace("HEAD request", "conditional GET (304)"), got=f"Content-Length: {length.decode('latin-1')}")
    stale = [("If-None-Match", f'"netlab-{_token(ctx)}"'), ("If-Modified-Since", "Sat, 01 Jan 2000 00:00:00 GMT")]
    for name, value in stale:
        response = fetch(ctx, "/hello.txt", fields=[(name, value)], label=f"stale {name}")
        if response.status == 304:
            ctx.fail(f"GET /hello.txt with {name}: {value} (which does not match) was answered 304", expected=rfc.CONDITION_TRUE, got=response.describe(), hint="answer 304 only when the client's validator matches the file's current one")
        expect_file(ctx, response, "hello.txt", f"GET /hello.txt with {name}: {value}")


# -- security -----------------------------------------------------------------------


@SUITE.check("security", "path-traversal", title="/../, %2e%2e and absolute paths never reach a file outside the docroot", references=("RFC 9110 section 17.3 (file and path names)", "RFC 3986 section 5.2.4 (dot segments)"), timeout=60.0)
def check_path_traversal(ctx: CheckContext) -> None:
    """A secret file lies next to the docroot. Ask for it with ``..`` in
    every spelling (plain, percent-encoded, encoded slash, after a real
    directory, without the leading slash) and through its absolute path:
    any answer is fine (400, 403, 404, a redirect, a close) except its content."""
    need_docroot(ctx)
    targets = [
        f"/../{SECRET_NAME}",
        f"/%2e%2e/{SECRET_NAME}",
        f"/%2E%2E/{SECRET_NAME}",
        f"/..%2f{SECRET_NAME}",
        f"/%2e%2e%2f{SECRET_NAME}",
        f"/.%2e/{SECRET_NAME}",
        f"/sub/../../{SECRET_NAME}",
        f"/sub/%2e%2e/%2e%2e/{SECRET_NAME}",
        f"/sub/deeper/../../../{SECRET_NAME}",
        f"../{SECRET_NAME}",
    ]
    if ctx.spec.launched:
        absolute = str(ctx.target.workdir / SECRET_NAME)
        targets += [f"/{absolute}", f"/%2F{absolute.lstrip('/')}"]
    for index, target in enumerate(targets, start=1):
        label = f"traversal{index}"
        exchange = HttpExchange(ctx, label=label)
        exchange.request("GET", target, close=True)
        try:
            response = exchange.response(f"the response to GET {target}", timeout=2.0, refusal_ok=True)
            shown = response.describe() if response is not None else "the connection closed"
        except ProtocolViolation as violation:
            # A malformed answer is for the framing checks to judge; here only the secret matters.
            shown = f"a malformed answer ({violation.summary})"
        received = ctx.transcript.received(SERVER_TO_CLIENT, stream=label)
        if SECRET_MARKER in received:
            ctx.fail(
                f"GET {target} served the secret file that lies outside the docroot",
                expected=f"any answer but the file ({rfc.TRAVERSAL})",
                got=f"{shown}: {format_bytes(received[received.find(SECRET_MARKER) :], 80)}",
                hint="decode the path, then resolve it (os.path.realpath) and refuse it unless it is inside the docroot",
            )
        exchange.close()
    # The server survived all of that.
    expect_file(ctx, fetch(ctx, "/hello.txt", label="after"), "hello.txt", "GET /hello.txt after the traversal attempts")
