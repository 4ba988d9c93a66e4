"""The common TCP checks for http-server: one GET as the example exchange.

:func:`suites.common_tcp.add_common_checks` needs one request and a way to
judge its reply; an HTTP response carries a Date, so the reply is read with
the strict response reader and judged by status and body instead of bytes.
The example asks for an ASCII file, so that these lifecycle checks (restart,
signals, IPv6, stalled clients) judge the server's lifecycle and not its
Content-Length arithmetic, which the ``get`` group already does.
"""

from __future__ import annotations

import random

from pytest_netlab.context import CheckContext
from pytest_netlab.rawclient import ScriptedClient

from ..common_tcp import TcpProtocol, add_common_checks
from ._checks_resources import expect_file
from ._docroot import served_file
from ._exchange import HttpExchange
from ._suite import SUITE

__all__ = ["PROTOCOL"]

EXAMPLE_PATH = "sub/deeper/page.txt"


def _example(rng: random.Random) -> tuple[bytes, bytes]:
    # No "Connection: close": the signal checks want an idle keep-alive connection open.
    return f"GET /{EXAMPLE_PATH} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode(), served_file(EXAMPLE_PATH)


def _read_reply(ctx: CheckContext, client: ScriptedClient, body: bytes, timeout: float) -> None:
    """One well-formed response: the file for a server we started; any answer from a running one."""
    exchange = HttpExchange(ctx, client=client)
    exchange.reader.expect("GET")
    response = exchange.response(f"the response to GET /{EXAMPLE_PATH}", timeout)
    if ctx.spec.launched:
        expect_file(ctx, response, EXAMPLE_PATH, f"GET /{EXAMPLE_PATH}")


PROTOCOL = TcpProtocol(
    example=_example,
    partial_request=lambda rng: f"GET /{EXAMPLE_PATH} HTTP/1.1\r\nHost: localhost\r\n".encode(),
    read_reply=_read_reply,
)
add_common_checks(SUITE, PROTOCOL)
