"""The server the udp-client checks play: a responder behind the lossy proxy, and what the client did.

Each check starts a :class:`~pytest_netlab.udp_proxy.LossyUDPProxy` with a
responder (the server's answers) and a script (what the network does to
them), runs the target client against the proxy's address, and reads the
result from three places: the packet capture (the kernel's timestamp of every
request that reached the server's port), the proxy's log of every datagram
and decision, and the client's exit status and output. Without capture the
request times come from the proxy's log, stamped in userspace (later, by the
proxy thread's scheduling delay, on a loaded machine), and the messages say
so. The failure messages show the timeline of sends and replies, so a
student sees *when* the client did what.

The proxy listens on a port from the worker's range (``ctx.allocate_port()``):
the run's capture records that range only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from pytest_netlab.client_target import ClientRun
from pytest_netlab.context import CheckContext
from pytest_netlab.errors import ProtocolViolation
from pytest_netlab.packets import Packet, datagrams_to
from pytest_netlab.transcript import CLIENT_TO_SERVER, SERVER_TO_CLIENT, Event, format_bytes
from pytest_netlab.udp_faults import Script
from pytest_netlab.udp_proxy import LossyUDPProxy, ProxyStats, Responder

__all__ = [
    "NO_CAPTURE",
    "Arrivals",
    "Reply",
    "arrivals",
    "expect_printed",
    "run_client",
    "start_proxy",
    "timeline",
    "violation",
]

#: Said wherever request times were judged without the wire.
NO_CAPTURE = "(no packet capture: times from the proxy's log)"

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
    """The check's server: ``responder`` behind a proxy that applies ``script``, logged in ``ctx.transcript``.

    Its port comes from ``ctx.allocate_port()``, so the run's packet capture records its datagrams
    (its spare port, which a stranger's datagrams come from, is an ephemeral one the capture does not see).
    """
    proxy = LossyUDPProxy(responder=responder, script=script, seed=ctx.seed, transcript=ctx.transcript, port=ctx.allocate_port())
    proxy.start()
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


@dataclass(frozen=True)
class Arrivals:
    """When each request reached the server's port, and where that was seen.

    Attributes:
        times: seconds, one per request in order of arrival: the kernel's
            capture timestamps (from the first captured datagram) when
            capture is on, else the proxy's receive times (transcript seconds).
        wire: every captured datagram to or from the proxy's port, or None
            without capture.
        server: the proxy's address (where the client was told to send).

    Example::

        seen = arrivals(ctx, proxy)
        waits = [b - a for a, b in zip(seen.times, seen.times[1:])]
        print(f"waits of {waits} {seen.measured}")
    """

    times: tuple[float, ...]
    wire: tuple[Packet, ...] | None
    server: tuple[str, int]

    @property
    def measured(self) -> str:
        """How the times were taken, for a message: on the wire, or the proxy's log and why."""
        return "between the requests on the wire" if self.wire is not None else NO_CAPTURE


def arrivals(ctx: CheckContext, proxy: LossyUDPProxy) -> Arrivals:
    """The requests that reached ``proxy`` so far: from the capture when on, else from the proxy's log.

    Call it once the client has ended: it reads the capture once.
    """
    captured = ctx.packets()
    host, port = proxy.address
    if captured is None:
        logged = tuple(e.t for e in ctx.transcript if e.kind == "data" and e.direction == CLIENT_TO_SERVER)
        return Arrivals(logged, None, (host, port))
    ours = tuple(p for p in captured if p.proto == "udp" and port in (p.sport, p.dport))
    requests = datagrams_to(ours, port)
    origin = ours[0].timestamp if ours else 0.0
    return Arrivals(tuple(p.timestamp - origin for p in requests), ours, (host, port))


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


def _elide(lines: list[str], last: int, what: str) -> list[str]:
    if len(lines) <= last:
        return lines
    return [f"... {len(lines) - last} earlier {what}", *lines[-last:]]


def _wire_lines(seen: Arrivals) -> list[str]:
    """One line per captured datagram, each request with the wait since the one before."""
    wire = seen.wire or ()
    port = seen.server[1]
    names = {port: "server"}
    origin = wire[0].timestamp if wire else 0.0
    lines: list[str] = []
    previous: float | None = None
    for p in wire:
        sender = names.get(p.sport, f"{p.src}:{p.sport}")
        receiver = names.get(p.dport, f"{p.dst}:{p.dport}")
        line = f"t={p.timestamp - origin:7.3f}  {sender} -> {receiver}  {p.length} bytes {format_bytes(p.payload, 32)}"
        if p.dport == port:
            if previous is not None:
                line += f"  (+{(p.timestamp - previous) * 1000:.0f} ms)"
            previous = p.timestamp
        lines.append(line)
    return lines or ["(no datagram to or from the server's port was captured)"]


def timeline(ctx: CheckContext, seen: Arrivals, last: int = 14) -> str:
    """The check's datagrams and the client's life, one per line, for a failure message.

    With capture, the datagrams as the wire saw them (kernel timestamps, the
    wait before each retransmission) come first, then the proxy's log (its
    decisions, the client's start and end); without, the proxy's log alone.
    """
    events = [e for e in ctx.transcript if e.kind in ("data", "note", "fault")]
    logged = _elide([f"t={event.t:7.3f}  {_describe(event)}" for event in events], last, "events")
    if seen.wire is None:
        lines = [NO_CAPTURE, *("  " + line for line in logged)]
    else:
        host, port = seen.server
        lines = [
            f"on the wire (kernel timestamps; the server is {host}:{port}):",
            *("  " + line for line in _elide(_wire_lines(seen), last, "datagrams")),
            "the proxy's log:",
            *("  " + line for line in logged),
        ]
    return "\n    " + "\n    ".join(lines)


def violation(ctx: CheckContext, seen: Arrivals, summary: str, *, expected: str, got: str, hint: str = "") -> ProtocolViolation:
    """A violation whose excerpt is the timeline of sends and replies."""
    return ProtocolViolation(summary, expected=expected, got=got, hint=hint, excerpt=timeline(ctx, seen))


def expect_printed(ctx: CheckContext, seen: Arrivals, run: ClientRun, reply: Reply, situation: str, hint: str = "") -> None:
    """Fail unless the client exited 0 by itself, having printed ``reply.token``.

    Args:
        seen: the requests as :func:`arrivals` read them, for the timeline.
        situation: what the server did, for the summary ("the server answered its first request").
        hint: the likely cause when the reply was not printed, if the situation suggests one.
    """
    expected = f"the client prints the reply (it holds {reply.token.decode()}) and exits with status 0"
    if reply.token not in run.stdout:
        raise violation(
            ctx,
            seen,
            f"{situation}, but the client did not print the server's reply",
            expected=expected,
            got=run.describe(),
            hint=hint or "print the payload of the datagram that came back from the server",
        )
    if run.timed_out:
        raise violation(
            ctx,
            seen,
            f"{situation}; the client printed the reply but did not exit",
            expected=expected,
            got=run.describe(),
            hint="stop waiting once the reply has come: a client that keeps reading blocks for ever",
        )
    if run.status.returncode != 0:
        raise violation(
            ctx,
            seen,
            f"{situation}; the client printed the reply but {run.status.describe()}",
            expected=expected,
            got=run.describe(),
            hint="exit with status 0 once the reply has come",
        )
