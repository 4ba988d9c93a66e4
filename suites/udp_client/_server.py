"""The server the udp-client checks play: a responder behind the lossy proxy, and what the client did.

Each check starts a :class:`~pytest_netlab.udp_proxy.LossyUDPProxy` with a
responder (the server's answers) and a script (what the network does to
them), runs the target client against the proxy's address, and reads the
result from two places: the proxy's log of every datagram, and the client's
exit status and output. The failure messages show the timeline of sends and
replies, so a student sees *when* the client did what.
"""

from __future__ import annotations

import time
from typing import Callable

from pytest_netlab.client_target import ClientRun
from pytest_netlab.context import CheckContext
from pytest_netlab.errors import ProtocolViolation
from pytest_netlab.transcript import CLIENT_TO_SERVER, SERVER_TO_CLIENT, Event, format_bytes
from pytest_netlab.udp_faults import Script
from pytest_netlab.udp_proxy import LossyUDPProxy, ProxyStats, Responder

__all__ = [
    "Reply",
    "expect_printed",
    "request_times",
    "run_client",
    "start_proxy",
    "timeline",
    "violation",
]

# Seconds (before --netlab-timeout-scale) a client may take to get an answer it
# is owed: enough for a first wait of up to about 3 s, doubling.
ANSWER_BUDGET = 15.0
# How often the check looks at a running client between datagrams.
_POLL = 0.05


class Reply:
    """The server's answer for one check: the book's reply text with a random token.

    The token is what the client must print; a client that prints a canned
    text, or the wrong datagram, does not print it.
    """

    def __init__(self, ctx: CheckContext, label: str = "reply") -> None:
        self.token = f"netlab-{label}-{ctx.rng.randbytes(6).hex()}".encode()

    def to(self, request: bytes) -> bytes:
        return b"Your data was %d bytes long; %s" % (len(request), self.token)

    def answer_every(self) -> Responder:
        """A responder that answers every request."""
        return lambda request, client: self.to(request)


def start_proxy(ctx: CheckContext, responder: Responder, script: Script | None = None) -> LossyUDPProxy:
    """The check's server: ``responder`` behind a proxy that applies ``script``, logged in ``ctx.transcript``."""
    proxy = LossyUDPProxy(responder=responder, script=script, seed=ctx.seed, transcript=ctx.transcript).start()
    ctx.add_cleanup(proxy.close)
    return proxy


def run_client(
    ctx: CheckContext,
    proxy: LossyUDPProxy,
    budget: float = ANSWER_BUDGET,
    until: Callable[[ProxyStats], bool] | None = None,
) -> ClientRun:
    """Run the target client against ``proxy`` until it exits, ``budget`` seconds pass, or ``until(stats)``.

    A client still running then is stopped (``run.timed_out``).
    """
    host, port = proxy.address
    ctx.transcript.record("", "note", note=f"client started, told to ask {host}:{port}")
    running = ctx.start_client(host=host, port=str(port))
    deadline = time.monotonic() + ctx.timeout(budget)
    stop_when = until or (lambda stats: False)
    while running.process.poll() is None and time.monotonic() < deadline:
        if proxy.wait_for(stop_when, timeout=min(_POLL, max(0.0, deadline - time.monotonic()))):
            break
    run = running.wait(0.0)
    ended = f"client stopped after {run.duration:.1f} s" if run.timed_out else f"client {run.status.describe()}"
    ctx.transcript.record("", "note", note=ended)
    return run


def request_times(ctx: CheckContext) -> list[float]:
    """When each request reached the server (the proxy), in transcript seconds."""
    return [e.t for e in ctx.transcript if e.kind == "data" and e.direction == CLIENT_TO_SERVER]


def _describe(event: Event) -> str:
    note = event.note if len(event.note) <= 100 else event.note[:97] + "..."
    if event.kind == "data" and event.direction == CLIENT_TO_SERVER:
        return f"{event.stream} -> server  {format_bytes(event.data, 32)}  {note}"
    if event.kind == "data":
        sender = "other port" if "from the other port" in note and "spoofed" not in note else "server"
        return f"{sender} -> {event.stream}  {format_bytes(event.data, 32)}  {note}"
    if event.data:  # the proxy notes a spoofed datagram this way
        return f"other port -> {event.stream}  {format_bytes(event.data, 32)}  {note}"
    return note or f"<{event.kind}>"


def timeline(ctx: CheckContext, last: int = 14) -> str:
    """The check's datagrams and the client's life, one per line, for a failure message."""
    events = [e for e in ctx.transcript if e.kind in ("data", "note", "fault")]
    shown = events[-last:]
    lines = [f"t={event.t:7.3f}  {_describe(event)}" for event in shown]
    if len(events) > len(shown):
        lines.insert(0, f"... {len(events) - len(shown)} earlier events")
    return "\n    " + "\n    ".join(lines)


def violation(ctx: CheckContext, summary: str, *, expected: str, got: str, hint: str = "") -> ProtocolViolation:
    """A violation whose excerpt is the timeline of sends and replies."""
    return ProtocolViolation(summary, expected=expected, got=got, hint=hint, excerpt=timeline(ctx))


def expect_printed(ctx: CheckContext, run: ClientRun, reply: Reply, situation: str, hint: str = "") -> None:
    """Fail unless the client exited 0 by itself, having printed ``reply.token``.

    Args:
        situation: what the server did, for the summary ("the server answered its first request").
        hint: the likely cause when the reply was not printed, if the situation suggests one.
    """
    expected = f"the client prints the reply (it holds {reply.token.decode()}) and exits with status 0"
    if reply.token not in run.stdout:
        raise violation(
            ctx,
            f"{situation}, but the client did not print the server's reply",
            expected=expected,
            got=run.describe(),
            hint=hint or "print the payload of the datagram that came back from the server",
        )
    if run.timed_out:
        raise violation(
            ctx,
            f"{situation}; the client printed the reply but did not exit",
            expected=expected,
            got=run.describe(),
            hint="stop waiting once the reply has come: a client that keeps reading blocks for ever",
        )
    if run.status.returncode != 0:
        raise violation(
            ctx,
            f"{situation}; the client printed the reply but {run.status.describe()}",
            expected=expected,
            got=run.describe(),
            hint="exit with status 0 once the reply has come",
        )
