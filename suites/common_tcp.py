"""The ``common`` group: checks every TCP server suite shares (SPEC 6, "common").

A suite describes its protocol with a :class:`TcpProtocol` (one request and
the reply it must get, and the first half of a request), and
:func:`add_common_checks` registers ``<suite>/common/*`` for it: restart on
the same port (SO_REUSEADDR), binding only the interface it was told,
surviving resets and garbage, serving many and stalled clients, exiting on
SIGTERM/SIGINT, and IPv6.

The checks speak only through the protocol description, so they judge any
server of any suite the same way.
"""

from __future__ import annotations

import random
import signal
import time
from dataclasses import dataclass
from typing import Callable

from pytest_netlab.context import CheckContext
from pytest_netlab.errors import ProtocolViolation, TargetStartError
from pytest_netlab.listeners import listeners_of, listeners_on_port
from pytest_netlab.rawclient import ScriptedClient
from pytest_netlab.registry import Check, Severity, Suite
from pytest_netlab.transcript import format_bytes

__all__ = ["TcpProtocol", "add_common_checks", "exchange", "read_one_reply"]

BOOK_REUSE = 'FOPNP ch. 3 "Address Already in Use"'
BOOK_BIND = 'FOPNP ch. 3 "Binding to Interfaces"'
BOOK_SERVERS = "FOPNP ch. 7 (single-threaded server; threaded and async servers)"

# How many clients the concurrency check opens at once: more than a small
# thread pool (the book's srv_threaded has 4 workers), few enough for a
# loaded 2-core machine.
CONCURRENT_CLIENTS = 12


@dataclass(frozen=True)
class TcpProtocol:
    """What the common checks need to know of a suite's protocol.

    Attributes:
        example: ``rng -> (request, reply)``: one complete request and the
            exact reply a conforming server sends.
        partial_request: ``rng -> bytes``: the start of a request that is
            not complete yet (the server must wait for the rest), sent on a
            plain TCP connection.
        connect: ``(ctx, address, label) -> ScriptedClient`` for a protocol
            that needs more than a TCP connection before requests (a TLS
            handshake); None means ``ctx.connect``.
        read_reply: ``(ctx, client, expected, timeout) -> None`` for a
            protocol whose replies cannot be compared byte for byte (HTTP has
            a ``Date``): it reads one reply from ``client`` within ``timeout``
            seconds (a protocol timeout: scale it with ``ctx.timeout``) and
            raises ProtocolViolation if it is not the right answer;
            ``expected`` is the second item of ``example``.
            None means: read exactly ``expected``.
    """

    example: Callable[[random.Random], tuple[bytes, bytes]]
    partial_request: Callable[[random.Random], bytes]
    connect: Callable[[CheckContext, tuple[str, int], str], ScriptedClient] | None = None
    read_reply: Callable[[CheckContext, ScriptedClient, bytes, float], None] | None = None

    def open(self, ctx: CheckContext, label: str, address: tuple[str, int] | None = None) -> ScriptedClient:
        """A client ready for requests (connected, and handshaken if the protocol needs it)."""
        if self.connect is None:
            return ctx.connect(address, label=label)
        return self.connect(ctx, address or ctx.address, label)


def exchange(ctx: CheckContext, client: ScriptedClient, protocol: TcpProtocol, timeout: float = 5.0) -> None:
    """Send one example request and demand its reply."""
    request, reply = protocol.example(ctx.rng)
    client.send(request)
    read_one_reply(ctx, client, protocol, reply, timeout)


def read_one_reply(ctx: CheckContext, client: ScriptedClient, protocol: TcpProtocol, reply: bytes, timeout: float = 5.0) -> None:
    """Read and judge one reply: the protocol's own reader, or exactly ``reply``."""
    if protocol.read_reply is not None:
        protocol.read_reply(ctx, client, reply, timeout)
        return
    got = client.recv_exactly(len(reply), timeout=ctx.timeout(timeout), what=f"the reply {format_bytes(reply)}")
    if got != reply:
        raise ProtocolViolation(
            "the reply to a well-formed request is wrong",
            expected=format_bytes(reply),
            got=format_bytes(got),
        )


def add_common_checks(suite: Suite, protocol: TcpProtocol) -> None:
    """Register ``<suite>/common/*`` for a TCP server suite."""
    for spec in _COMMON:
        name, title, severity, references, fresh, needs, body = spec

        def run(ctx: CheckContext, body: Callable[[CheckContext, TcpProtocol], None] = body) -> None:
            body(ctx, protocol)

        run.__doc__ = body.__doc__
        suite.add(
            Check(
                id=f"{suite.name}/common/{name}",
                title=title,
                severity=severity,
                references=references,
                role=suite.role,
                points={Severity.MUST: 2.0, Severity.SHOULD: 1.0, Severity.INFO: 0.0}[severity],
                func=run,
                fresh_target=fresh,
                needs=frozenset(needs),
                doc=(body.__doc__ or "").strip(),
            )
        )


# -- the checks -----------------------------------------------------------------


def check_reuseaddr(ctx: CheckContext, protocol: TcpProtocol) -> None:
    """Kill the target while a client is connected, close the client, restart the
    target on the same port at once. Without SO_REUSEADDR the old connection,
    now in TIME_WAIT on the server's side, keeps the port and bind() fails."""
    instance = ctx.fresh_target()
    client = protocol.open(ctx, "before-kill", instance.address)
    exchange(ctx, client, protocol)
    instance.kill()
    client.close()
    try:
        instance.start(port=instance.port)
    except TargetStartError as error:
        raise ProtocolViolation(
            f"the target could not restart on port {instance.port} right after being killed with a client connected",
            expected="the restarted target listens on the same port at once",
            got=error.summary + ("\n    " + "\n    ".join(error.details.splitlines()) if error.details else ""),
            hint="set SO_REUSEADDR on the listening socket before bind()",
        ) from None
    exchange(ctx, protocol.open(ctx, "after-restart", instance.address), protocol)


def check_bind_host(ctx: CheckContext, protocol: TcpProtocol) -> None:
    """Told to listen on 127.0.0.1, the target must not listen on every interface
    (0.0.0.0 or ::): that would expose it to the whole network."""
    host, port = ctx.address
    if host in ("0.0.0.0", "::", ""):
        ctx.skip(f"the target is told to listen on {host!r}, every interface")
    process = ctx.target.process if ctx.spec.launched and ctx.target.process else None
    sockets = listeners_of(process.pid) if process else listeners_on_port(port)
    wildcard = [str(s) for s in sockets if s.port == port and s.wildcard]
    if wildcard:
        ctx.fail(
            f"told to listen on {host}, the target listens on {', '.join(wildcard)}: every interface",
            expected=f"a listening socket bound to {host} only",
            got=", ".join(str(s) for s in sockets) or "(unknown)",
            hint="bind((host, port)) with the host you were given, not '' or '0.0.0.0'",
        )
    if host == "127.0.0.1":
        # The behaviour behind the table: another loopback address must be refused.
        try:
            probe = ctx.connect(("127.0.0.2", port), timeout=1.0, label="other-address")
        except ProtocolViolation:
            return
        probe.close()
        ctx.fail(
            f"told to listen on {host}, the target accepted a connection on 127.0.0.2:{port}",
            expected=f"connections to any address but {host} refused",
            got="the connection to 127.0.0.2 was accepted",
            hint="bind((host, port)) with the host you were given, not '' or '0.0.0.0'",
        )


def check_abrupt_reset(ctx: CheckContext, protocol: TcpProtocol) -> None:
    """Reset (RST) one connection in the middle of a request and another right
    after a request; the target must go on serving the next client."""
    waiting = ctx.connect(label="reset-mid-request")
    waiting.send(protocol.partial_request(ctx.rng))
    # Let the target read the partial request first, so the RST hits a pending recv().
    time.sleep(ctx.timeout(0.05))
    waiting.reset()
    replying = protocol.open(ctx, "reset-before-reply")
    request, _ = protocol.example(ctx.rng)
    replying.send(request)
    replying.reset()
    time.sleep(ctx.timeout(0.05))
    exchange(ctx, protocol.open(ctx, "next-client"), protocol)


def check_garbage(ctx: CheckContext, protocol: TcpProtocol) -> None:
    """Send random bytes (every byte value, NULs, CR/LF, invalid UTF-8); the
    target may answer or close, but must keep serving other clients."""
    junk = bytes(range(256)) + b"\x00\xff\xfe\r\n\r\n" + ctx.random_bytes(2048) + b"\xc3\x28\xa0\xa1" * 8
    garbage = ctx.connect(label="garbage")
    try:
        garbage.send(junk)
        garbage.shutdown_write()
        garbage.read_until_close(timeout=ctx.timeout(0.5))
    except ProtocolViolation:
        pass  # silence, a reset or an error reply are all allowed answers to garbage
    garbage.close()
    exchange(ctx, protocol.open(ctx, "next-client"), protocol)


def check_concurrent_clients(ctx: CheckContext, protocol: TcpProtocol) -> None:
    """Open several connections at once, send a request on each, then read the
    replies: every client must be served while the others stay connected."""
    clients = [protocol.open(ctx, f"client{i + 1}") for i in range(CONCURRENT_CLIENTS)]
    replies = []
    for client in clients:
        request, reply = protocol.example(ctx.rng)
        client.send(request)
        replies.append(reply)
    for index, (client, reply) in enumerate(zip(clients, replies)):
        try:
            read_one_reply(ctx, client, protocol, reply, timeout=3.0)
        except ProtocolViolation as violation:
            raise ProtocolViolation(
                f"client {index + 1} of {CONCURRENT_CLIENTS} got no reply while the others stayed connected",
                expected=f"all {CONCURRENT_CLIENTS} clients served at once",
                got=f"{violation.got or violation.summary}",
                hint="serve each connection in its own thread, or with an event loop (select/poll/asyncio)",
            ) from None


def check_stalled_client(ctx: CheckContext, protocol: TcpProtocol) -> None:
    """One client sends half a request and stops; another client must still be
    served (the single-threaded server of ch. 7 blocks here)."""
    stalled = ctx.connect(label="stalled")
    stalled.send(protocol.partial_request(ctx.rng))
    try:
        exchange(ctx, protocol.open(ctx, "other"), protocol, timeout=3.0)
    except ProtocolViolation as violation:
        raise ProtocolViolation(
            "a client that sent half a request and stalled kept another client from being served",
            expected="the second client is served while the first one stalls",
            got=violation.got or violation.summary,
            hint="do not block on one client: use threads or an event loop",
        ) from None


def _signal_exit(ctx: CheckContext, protocol: TcpProtocol, sig: signal.Signals) -> None:
    instance = ctx.fresh_target()
    client = protocol.open(ctx, f"idle-during-{sig.name}", instance.address)
    exchange(ctx, client, protocol)
    ctx.expect_exit_after_signal(instance, sig, situation="a client was connected")


def check_sigterm(ctx: CheckContext, protocol: TcpProtocol) -> None:
    """Send SIGTERM, then (to a new instance) SIGINT, with a client connected;
    the target must exit within 5 seconds each time."""
    _signal_exit(ctx, protocol, signal.SIGTERM)
    _signal_exit(ctx, protocol, signal.SIGINT)


def check_ipv6(ctx: CheckContext, protocol: TcpProtocol) -> None:
    """Start the target with {host} = ::1; it must listen there and serve."""
    try:
        instance = ctx.fresh_target(host="::1")
    except TargetStartError as error:
        raise ProtocolViolation(
            "started with {host} = ::1, the target did not come up",
            expected="a server listening on [::1]",
            got=error.summary,
            hint="create the socket with the family getaddrinfo() returns for the host (AF_INET6 for ::1)",
        ) from None
    exchange(ctx, protocol.open(ctx, "ipv6", instance.address), protocol)


_COMMON: list[tuple[str, str, Severity, tuple[str, ...], bool, tuple[str, ...], Callable[[CheckContext, TcpProtocol], None]]] = [
    ("reuseaddr", "restarts on the same port at once after being killed with a client connected", Severity.MUST, (BOOK_REUSE,), True, ("lifecycle",), check_reuseaddr),
    ("bind-host", "listens only on the address it was given, not on every interface", Severity.MUST, (BOOK_BIND,), False, (), check_bind_host),
    ("abrupt-reset", "keeps serving after a client resets its connection mid-request", Severity.MUST, ('FOPNP ch. 3 "Network Exceptions"',), False, (), check_abrupt_reset),
    ("garbage", "survives arbitrary bytes and keeps serving", Severity.MUST, ('FOPNP ch. 5 "Network Exceptions"',), False, (), check_garbage),
    ("concurrent-clients", f"serves {CONCURRENT_CLIENTS} connected clients at once", Severity.SHOULD, (BOOK_SERVERS,), False, (), check_concurrent_clients),
    ("stalled-client", "a client that stalls mid-request does not block other clients", Severity.SHOULD, (BOOK_SERVERS,), False, (), check_stalled_client),
    ("sigterm", "exits promptly on SIGTERM and on SIGINT", Severity.SHOULD, ("FOPNP ch. 7 (deployment, daemons)",), True, ("lifecycle",), check_sigterm),
    ("ipv6", "works when {host} is ::1", Severity.SHOULD, ('FOPNP ch. 4 "Binding" and getaddrinfo()', "RFC 4291"), True, ("lifecycle", "ipv6"), check_ipv6),
]
