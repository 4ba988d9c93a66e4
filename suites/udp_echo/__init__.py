"""udp-echo: RFC 862 echo over UDP, the server side.

The target binds UDP ``{host}:{port}`` and answers every datagram with one
datagram of the same bytes, sent to the datagram's source address from the
address it was sent to.

RFC 862: "A server listens for UDP datagrams on UDP port 7. When a datagram
is received, the data from it is sent back in an answering datagram."
"""

from __future__ import annotations

import signal
import time

from pytest_netlab.context import CheckContext
from pytest_netlab.listeners import listeners_of, listeners_on_port
from pytest_netlab.registry import Role, Severity, Suite, register_suite
from pytest_netlab.transcript import format_bytes

from ._exchange import ATTEMPTS, ECHO_WAIT, collect_echoes, echo_once, judge_echo, open_client, token

SUITE = register_suite(
    Suite(
        "udp-echo",
        Role.SERVER,
        title="UDP echo server (RFC 862)",
        placeholders=("host", "port"),
        ready="udp",
        description=(
            "Answers every datagram with one datagram of the same bytes, sent to the datagram's source "
            "from the address it was sent to."
        ),
    )
)

RFC = "RFC 862"
BOOK_UDP = 'FOPNP ch. 2 "UDP" (sendto(data, address) answers the sender)'
BOOK_MAX = 'FOPNP ch. 2 (MAX_BYTES = 65535; the largest IPv4 UDP payload is 65,507 bytes)'
BOOK_BIND = 'FOPNP ch. 2 "Binding to Interfaces"'
BOOK_MANY = 'FOPNP ch. 2 (one UDP socket serves "thousands of different clients")'
BOOK_ERRORS = 'FOPNP ch. 5 "Network Exceptions"'

# The largest UDP payload over IPv4: 65,535 - 8 (UDP header) - 20 (IP header).
LARGEST_DATAGRAM = 65507
# Clients in the burst: more than a handful, few enough that their datagrams
# (about 1 KB of kernel memory each) fit a server's default receive buffer
# (about 200 KB) many times over, so a correct server loses none on a loaded machine.
BURST_CLIENTS = 24


@SUITE.check(
    "echo",
    "datagram",
    title="answers each datagram with its bytes, to the sender, from the address it was sent to",
    references=(RFC, BOOK_UDP),
)
def check_datagram(ctx: CheckContext) -> None:
    """Send two datagrams one after the other, then two back to back: each must
    come back whole, as its own datagram, from the server's address and port
    (a client that connect()s its socket discards anything else)."""
    echo = open_client(ctx, "client")
    for label in ("first", "second"):
        echo_once(ctx, echo, token(ctx, label), judge_source=True)
    pair = [token(ctx, "back-to-back A"), token(ctx, "back-to-back B")]
    for payload in pair:
        echo.send(payload)
    seen: list[bytes] = []
    deadline = time.monotonic() + ctx.timeout(ECHO_WAIT * ATTEMPTS)
    while len(seen) < len(pair):
        received = echo.client.try_receive(max(0.0, deadline - time.monotonic()))
        if received is None:
            # The first exchanges worked, so silence now means datagrams sent together were lost.
            ctx.fail(
                f"of two datagrams sent back to back, {len(seen)} came back",
                expected=f"two echoes: {format_bytes(pair[0])} and {format_bytes(pair[1])} (in either order)",
                got=", ".join(format_bytes(data) for data in seen) or "nothing",
                hint="answer each datagram as soon as it is read: one recvfrom() is one datagram",
            )
        if received.data in pair and received.data not in seen:
            judge_echo(ctx, echo, received.data, received, judge_source=True)
            seen.append(received.data)
        elif received.data not in echo.sent:
            judge_echo(ctx, echo, next(p for p in pair if p not in seen), received, judge_source=True)


@SUITE.check(
    "echo",
    "two-clients",
    title="two clients sending at once each get their own echo",
    references=(RFC, BOOK_UDP, "FOPNP ch. 2 (reply to the address recvfrom() returned)"),
)
def check_two_clients(ctx: CheckContext) -> None:
    """Two clients on different ports send at the same moment, twice, in both
    orders; each must get back exactly its own datagrams, from the server's port."""
    clients = [open_client(ctx, "client A"), open_client(ctx, "client B")]
    for round_number, order in enumerate(((0, 1), (1, 0))):
        payloads = [token(ctx, f"A{round_number + 1}"), token(ctx, f"B{round_number + 1}")]
        for index in order:
            clients[index].send(payloads[index])
        got = collect_echoes(ctx, clients, payloads, ctx.timeout(ECHO_WAIT * ATTEMPTS))
        missing = [clients[i].label for i in range(2) if i not in got]
        if missing:
            ctx.fail(
                f"{' and '.join(missing)} got no echo when two clients sent at the same moment",
                expected="each client gets its own datagram back",
                got=f"no echo for {', '.join(missing)} within {ctx.timeout(ECHO_WAIT * ATTEMPTS):.1f} s",
                hint="reply to the address recvfrom() returned with this datagram, not to a client remembered earlier",
            )


@SUITE.check(
    "echo",
    "largest-datagram",
    title=f"echoes a {LARGEST_DATAGRAM:,}-byte datagram whole",
    references=(RFC, BOOK_MAX),
)
def check_largest_datagram(ctx: CheckContext) -> None:
    """Send the largest datagram IPv4 can carry (65,507 bytes of random text);
    it must come back whole. A server that reads with recvfrom(1024) (or
    socat's default 8192-byte buffer) cuts it."""
    echo = open_client(ctx, "client")
    # Random text, not random bytes: this check is about size; echo/binary is about byte values.
    payload = ctx.random_bytes(LARGEST_DATAGRAM // 2 + 1).hex().encode()[:LARGEST_DATAGRAM]
    echo_once(ctx, echo, payload, judge_source=False, what=f"the echo of all {LARGEST_DATAGRAM:,} bytes")


@SUITE.check(
    "echo",
    "binary",
    title="echoes every byte value, invalid UTF-8 included, and keeps serving",
    references=(RFC, BOOK_ERRORS),
)
def check_binary(ctx: CheckContext) -> None:
    """Send b'\\xff\\xfe' (which kills the book's udp_local server, that decodes
    ASCII), then all 256 byte values with invalid UTF-8 sequences; each must
    come back unchanged, and the server must then still echo text."""
    echo = open_client(ctx, "client")
    echo_once(ctx, echo, b"\xff\xfe", judge_source=False)
    echo_once(ctx, echo, bytes(range(256)) + b"\xc3\x28\xa0\xa1\xe2\x82\r\n\x00", judge_source=False)
    echo_once(ctx, echo, token(ctx, "still there?"), judge_source=False)


@SUITE.check(
    "echo",
    "empty-datagram",
    title="answers an empty datagram with an empty datagram",
    severity=Severity.SHOULD,
    references=(RFC,),
    fresh_target=True,
    needs=("lifecycle",),
)
def check_empty_datagram(ctx: CheckContext) -> None:
    """Send a datagram with no payload: RFC 862 sends back the data of every
    datagram, so the answer is a datagram with no payload. (On an instance of
    its own: an empty datagram can wedge a server, see robust/empty-is-not-eof.)"""
    instance = ctx.fresh_target()
    echo = open_client(ctx, "client", instance.address)
    echo_once(ctx, echo, b"", judge_source=False, what="an empty datagram back")


@SUITE.check(
    "robust",
    "empty-is-not-eof",
    title="keeps serving after an empty datagram (it is not end-of-file)",
    references=(RFC, "FOPNP ch. 2 (UDP has no connection, so no end-of-file)"),
    fresh_target=True,
    needs=("lifecycle",),
)
def check_empty_is_not_eof(ctx: CheckContext) -> None:
    """One client sends an empty datagram, then another client a normal one,
    which must be echoed. recvfrom() returning b'' means an empty datagram
    arrived, not that a peer closed: a server that stops there, as a TCP
    server does on EOF, fails, and so does one that stays stuck on it (socat's
    child for the empty datagram keeps the socket and drops everyone else's).
    On an instance of its own, so a wedged server cannot spoil other checks."""
    instance = ctx.fresh_target()
    empty = open_client(ctx, "empty sender", instance.address)
    empty.send(b"")
    empty.client.try_receive(ctx.timeout(0.2))  # its answer, if any, is judged by echo/empty-datagram
    echo_once(ctx, open_client(ctx, "next client", instance.address), token(ctx, "after the empty one"), judge_source=False)


@SUITE.check(
    "echo",
    "many-clients",
    title=f"a burst from {BURST_CLIENTS} clients: each gets its own echo",
    references=(RFC, BOOK_MANY),
)
def check_many_clients(ctx: CheckContext) -> None:
    """Each of 24 clients sends one datagram, all at once; each must get back its
    own datagram from the server's port within a few seconds (one resend is
    allowed for a client that got nothing: the burst may overflow a buffer)."""
    clients = [open_client(ctx, f"client{i + 1}") for i in range(BURST_CLIENTS)]
    payloads = [token(ctx, f"from client{i + 1}") for i in range(BURST_CLIENTS)]
    for echo, payload in zip(clients, payloads):
        echo.send(payload)
    got = collect_echoes(ctx, clients, payloads, ctx.timeout(2.0))
    again = [index for index in range(BURST_CLIENTS) if index not in got]
    for index in again:
        clients[index].send(payloads[index])
    late = collect_echoes(ctx, [clients[i] for i in again], [payloads[i] for i in again], ctx.timeout(2.0))
    got.update((again[position], received) for position, received in late.items())
    missing = [echo.label for index, echo in enumerate(clients) if index not in got]
    if missing:
        ctx.fail(
            f"{len(missing)} of {BURST_CLIENTS} clients got no echo of a burst, even after sending again",
            expected=f"all {BURST_CLIENTS} clients get their own datagram back",
            got=f"no echo for {', '.join(missing)}",
            hint="answer each datagram at once; do not block on one client, and reply to the address that came with it",
        )


@SUITE.check("common", "bind-host", title="binds only the address it was given, not every interface", references=(BOOK_BIND,))
def check_bind_host(ctx: CheckContext) -> None:
    """Told to bind 127.0.0.1, the target must not bind 0.0.0.0 (or ::), which
    takes datagrams from every network: /proc/net/udp shows the bound address,
    and a datagram sent to 127.0.0.2 must get no answer."""
    host, port = ctx.address
    if host in ("0.0.0.0", "::", ""):
        ctx.skip(f"the target is told to bind {host!r}, every interface")
    process = ctx.target.process if ctx.spec.launched and ctx.target.process else None
    sockets = listeners_of(process.pid, "udp") if process else listeners_on_port(port, "udp")
    wildcard = [str(s) for s in sockets if s.port == port and s.wildcard]
    if wildcard:
        ctx.fail(
            f"told to bind {host}, the target is bound to {', '.join(wildcard)}: every interface",
            expected=f"a UDP socket bound to {host} only",
            got=", ".join(str(s) for s in sockets) or "(unknown)",
            hint="bind((host, port)) with the host you were given, not '' or '0.0.0.0'",
        )
    if host == "127.0.0.1":
        # The behaviour behind the table: a datagram to another loopback address finds no server.
        probe = open_client(ctx, "to 127.0.0.2")
        probe.client.send(token(ctx, "other address"), to=("127.0.0.2", port))
        answer = probe.client.try_receive(ctx.timeout(0.5))
        if answer is not None:
            ctx.fail(
                f"told to bind {host}, the target answered a datagram sent to 127.0.0.2:{port}",
                expected=f"datagrams to any address but {host} go unanswered",
                got=f"an answer {format_bytes(answer.data)}",
                hint="bind((host, port)) with the host you were given, not '' or '0.0.0.0'",
            )


def _signal_exit(ctx: CheckContext, sig: signal.Signals) -> None:
    instance = ctx.fresh_target()
    echo = open_client(ctx, f"before {sig.name}", instance.address)
    echo_once(ctx, echo, token(ctx, "alive?"), judge_source=False)
    ctx.expect_exit_after_signal(instance, sig)


@SUITE.check(
    "common",
    "sigterm",
    title="exits promptly on SIGTERM and on SIGINT",
    severity=Severity.SHOULD,
    references=("FOPNP ch. 7 (deployment, daemons)",),
    fresh_target=True,
    needs=("lifecycle",),
)
def check_sigterm(ctx: CheckContext) -> None:
    """Send SIGTERM, then (to a new instance) SIGINT, while it waits in
    recvfrom(); the target must exit within 5 seconds each time."""
    _signal_exit(ctx, signal.SIGTERM)
    _signal_exit(ctx, signal.SIGINT)
