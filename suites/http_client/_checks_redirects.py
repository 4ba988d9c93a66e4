"""http-client checks on redirects: every 3xx status, relative and absolute Location, chains, loops.

Each redirect carries a small HTML body with Content-Length on a kept-open
connection, so a client that reuses the connection must drain it first.
The method after the redirect is checked: GET stays GET (307 and 308 must
keep it; 303 asks for GET).
"""

from __future__ import annotations

from typing import Callable

from pytest_netlab.context import CheckContext
from pytest_netlab.http_wire import HttpRequest
from pytest_netlab.registry import Severity

from . import _suite as rfc
from ._scripted_server import Reply, ScriptedHttpServer
from ._suite import BOOK, SUITE, describe_requests, expect_printed, expect_well_formed, ok, origin_form, response, token

__all__: list[str] = []

FETCH = 8.0
LOOP_BUDGET = 20.0
MAX_FOLLOWED = 200
REASONS = {301: "Moved Permanently", 302: "Found", 303: "See Other", 307: "Temporary Redirect", 308: "Permanent Redirect"}
SECTIONS = {301: "15.4.2", 302: "15.4.3", 303: "15.4.4", 307: "15.4.8", 308: "15.4.9"}


def redirect(status: int, location: str) -> bytes:
    page = f'<html><body><a href="{location}">moved</a></body></html>\n'.encode()
    return response(status, REASONS[status], page, (("Location", location), ("Content-Type", "text/html")))


def not_found() -> bytes:
    return response(404, "Not Found", b"<html><body>not here</body></html>\n", (("Content-Type", "text/html"),))


def routes(table: dict[str, bytes]) -> Callable[[HttpRequest, int], Reply]:
    """A script answering each target from ``table`` (404 for anything else)."""
    return lambda request, count: Reply(table.get(origin_form(request.target), not_found()))


def _followed(ctx: CheckContext, server: ScriptedHttpServer, target: str, after: str, status: int, location: str, run_text: str) -> HttpRequest:
    """The request the client made for ``target``, or a failure explaining where it went instead."""
    expect_well_formed(ctx, server)
    targets = [origin_form(r.target) for r in server.requests]
    if target in targets:
        return server.requests[targets.index(target)]
    answered = after.split(" ", 1)[1]
    later = targets[targets.index(answered) + 1 :] if answered in targets else []
    if not later:
        ctx.fail(
            f"the client stopped at the {status} {REASONS[status]} answering {after}: it did not follow Location: {location}",
            expected=f"GET {target} ({rfc.REDIRECT})",
            got=f"requests: {describe_requests(server)}; {run_text}",
            hint="on 301, 302, 303, 307 and 308, fetch the URL in the Location header (up to a limit)",
        )
    ctx.fail(
        f"the client resolved Location: {location} (answering {after}) to {later[0]}, not {target}",
        expected=f"GET {target} ({rfc.LOCATION})",
        got=f"requests: {describe_requests(server)}; {run_text}",
        hint="resolve Location against the URL of the request it answers (urllib.parse.urljoin), then fetch that",
    )


def _expect_method(ctx: CheckContext, request: HttpRequest, status: int) -> None:
    rule = rfc.SAME_METHOD if status in (307, 308) else rfc.SEE_OTHER if status == 303 else rfc.REDIRECT
    ctx.expect(request.method == "GET", f"after a {status} the client sent {request.method}, not GET", expected=f"GET, the method of the original request ({rule})", got=request.request_line.decode("latin-1"))


def _status_check(status: int) -> Callable[[CheckContext], None]:
    def check(ctx: CheckContext) -> None:
        word = token(ctx)
        start, final = f"/old/{word}", f"/new/{word}"
        body = f"netlab {word}: reached after a {status}\n".encode()
        server = ScriptedHttpServer(ctx, routes({start: redirect(status, final), final: ok(body)}))
        run = ctx.run_client(timeout=FETCH, url=server.url(start))
        followed = _followed(ctx, server, final, f"GET {start}", status, final, run.describe())
        _expect_method(ctx, followed, status)
        host = followed.header("host")
        ctx.expect(host is None or host.decode("latin-1") == server.authority, f"the request after the {status} carries Host: {host!r}", expected=f"Host: {server.authority}", got=followed.raw.decode("latin-1").strip().replace("\r\n", " | "))
        expect_printed(ctx, run, body, f"after following a {status} redirect")

    check.__doc__ = (
        f"GET /old/... is answered {status} {REASONS[status]} with ``Location: /new/...`` and an HTML body; the "
        f"client requests /new/... with GET and prints its 200 body."
    )
    return check


for _status in (301, 302, 303, 307, 308):
    SUITE.check(
        "redirects",
        f"status-{_status}",
        title=f"follows a {_status} {REASONS[_status]} to its Location with GET",
        references=(f"RFC 9110 section {SECTIONS[_status]} ({_status})", "RFC 9110 section 10.2.2 (Location)", BOOK),
    )(_status_check(_status))


@SUITE.check("redirects", "relative-reference", title="resolves relative Location references (../x?q, y) against the request URL", references=("RFC 9110 section 10.2.2 (Location)", "RFC 3986 section 5.2 (resolution)", 'FOPNP ch. 11 "Relative URLs"'))
def check_relative_reference(ctx: CheckContext) -> None:
    """/a/b/start is redirected to ``../c/next?x=1`` (so /a/c/next?x=1), which
    is redirected to ``final`` (so /a/c/final): each Location is resolved
    against the URL of the request it answers, by RFC 3986."""
    word = token(ctx)
    start, middle, final = f"/a/b/start-{word}", f"/a/c/next-{word}?x=1", f"/a/c/final-{word}"
    body = f"netlab {word}: two relative redirects\n".encode()
    server = ScriptedHttpServer(ctx, routes({start: redirect(302, f"../c/next-{word}?x=1"), middle: redirect(302, f"final-{word}"), final: ok(body)}))
    run = ctx.run_client(timeout=FETCH, url=server.url(start))
    _followed(ctx, server, middle, f"GET {start}", 302, f"../c/next-{word}?x=1", run.describe())
    _followed(ctx, server, final, f"GET {middle}", 302, f"final-{word}", run.describe())
    expect_printed(ctx, run, body, "after two redirects with relative references")


@SUITE.check("redirects", "other-origin", title="follows an absolute Location to another port, with that Host", references=("RFC 9110 section 10.2.2 (Location)", "RFC 9112 section 3.2 (Host)"))
def check_other_origin(ctx: CheckContext) -> None:
    """A 301 to ``http://127.0.0.1:OTHER/elsewhere/...`` (a second server): the
    client connects there and sends ``Host: 127.0.0.1:OTHER``."""
    word = token(ctx)
    body = f"netlab {word}: the other origin\n".encode()
    other = ScriptedHttpServer(ctx, routes({f"/elsewhere/{word}": ok(body)}), label="other-origin")
    location = other.url(f"/elsewhere/{word}")
    first = ScriptedHttpServer(ctx, routes({f"/here/{word}": redirect(301, location)}), label="first-origin", shared_log=other.seen)
    run = ctx.run_client(timeout=FETCH, url=first.url(f"/here/{word}"))
    followed = _followed(ctx, other, f"/elsewhere/{word}", f"GET /here/{word}", 301, location, run.describe())
    expect_well_formed(ctx, first)
    host = followed.header("host")
    ctx.expect(host is None or host.decode("latin-1") == other.authority, f"the request to the new origin carries Host: {host.decode('latin-1') if host else ''}, the old one", expected=f"Host: {other.authority} ({rfc.HOST})", got=followed.raw.decode("latin-1").strip().replace("\r\n", " | "), hint="build Host from the URL you are fetching now, not from the first one")
    expect_printed(ctx, run, body, "after a redirect to another port")


@SUITE.check("redirects", "chain", title="follows a chain 301, 302, 303, 307, 308 with mixed Location forms", references=("RFC 9110 section 15.4 (redirection)", "RFC 9110 section 10.2.2 (Location)", BOOK))
def check_chain(ctx: CheckContext) -> None:
    """Five redirects in a row, one of each status, with path-absolute,
    relative, absolute and dot-segment Locations; every step is fetched with
    GET, and the final 200 body is printed."""
    word = token(ctx)
    body = f"netlab {word}: the end of the chain\n".encode()
    holder: dict[str, ScriptedHttpServer] = {}
    steps = [  # (target, status, Location, resolved target)
        (f"/chain-{word}/0", 301, f"/chain-{word}/1", f"/chain-{word}/1"),
        (f"/chain-{word}/1", 302, "2", f"/chain-{word}/2"),
        (f"/chain-{word}/2", 303, "absolute", f"/chain-{word}/3"),
        (f"/chain-{word}/3", 307, f"/chain-{word}/4?step=4", f"/chain-{word}/4?step=4"),
        (f"/chain-{word}/4?step=4", 308, "./5", f"/chain-{word}/5"),
    ]

    def script(request: HttpRequest, count: int) -> Reply:
        for target, status, location, _ in steps:
            if origin_form(request.target) == target:
                if location == "absolute":
                    location = holder["server"].url(f"/chain-{word}/3")
                return Reply(redirect(status, location))
        return Reply(ok(body) if origin_form(request.target) == f"/chain-{word}/5" else not_found())

    server = holder["server"] = ScriptedHttpServer(ctx, script)
    run = ctx.run_client(timeout=FETCH, url=server.url(steps[0][0]))
    for target, status, location, resolved in steps:
        shown = server.url(f"/chain-{word}/3") if location == "absolute" else location
        _expect_method(ctx, _followed(ctx, server, resolved, f"GET {target}", status, shown, run.describe()), status)
    expect_printed(ctx, run, body, "after a chain of five redirects")


@SUITE.check("redirects", "loop", title="a redirect loop ends with a non-zero exit after a bounded number of requests", severity=Severity.SHOULD, references=("RFC 9110 section 15.4 (redirection: cycles)",), timeout=60.0)
def check_loop(ctx: CheckContext) -> None:
    """/loop/a redirects to /loop/b and back, forever: the client stops by
    itself (within 20 s and 200 requests) and exits non-zero."""
    word = token(ctx)
    a, b = f"/loop-{word}/a", f"/loop-{word}/b"
    server = ScriptedHttpServer(ctx, routes({a: redirect(302, b), b: redirect(302, a)}), max_requests=MAX_FOLLOWED)
    run = ctx.run_client(timeout=LOOP_BUDGET, url=server.url(a))
    expect_well_formed(ctx, server)
    followed = len(server.requests)
    if server.cut_off or run.timed_out:
        ctx.fail(
            f"the client was still following the redirect loop after {followed} requests",
            expected=f"the client gives up after a bounded number of redirects ({rfc.CYCLES})",
            got=run.describe() if run.timed_out else f"more than {MAX_FOLLOWED} requests; then the server hung up",
            hint="count the redirects you follow and stop with an error after 20 or so (curl: 50, wget: 20)",
        )
    ctx.expect(run.status.returncode != 0, f"the client exited 0 after giving up on a redirect loop ({followed} requests)", expected="a non-zero exit: no 2xx response was reached", got=run.describe())
