"""udp-client: a request/reply UDP client with retransmission, the client of FOPNP ch. 2.

The target is run with ``{host}`` and ``{port}``: it sends a request
datagram there, retransmits with exponential backoff until a reply comes
*from that address*, prints the reply's payload to stdout and exits 0; when
no reply ever comes it gives up, in bounded time, with a non-zero exit.

Each check plays the server through the lossy UDP proxy (drops, spoofs,
duplicates and delays), reads when every request arrived (on the wire, from
the packet capture's kernel timestamps; without capture, from the proxy's
log, and the message says so), and shows that timeline when the client gets
something wrong.
"""

from __future__ import annotations

import statistics

from pytest_netlab.context import CheckContext
from pytest_netlab.registry import Role, Suite, register_suite
from pytest_netlab.transcript import SERVER_TO_CLIENT
from pytest_netlab.udp_faults import Decision, Script
from pytest_netlab.udp_proxy import Address, LossyUDPProxy

from ._server import ANSWER_BUDGET, Reply, arrivals, expect_printed, run_client, start_proxy, violation

SUITE = register_suite(
    Suite(
        "udp-client",
        Role.CLIENT,
        title="UDP request/reply client with backoff (FOPNP ch. 2)",
        placeholders=("host", "port"),
        description=(
            "Sends a request to {host}:{port}, retransmits with exponential backoff until a reply comes from "
            "that address, prints the reply payload and exits 0; gives up with a non-zero exit when nothing answers."
        ),
    )
)

BOOK_LOOP = 'FOPNP ch. 2 "Promiscuous Clients and Unwelcome Replies", "Unreliability, Backoff, Blocking, and Timeouts"'
BOOK_BACKOFF = 'FOPNP ch. 2 "Unreliability, Backoff, Blocking, and Timeouts" (exponential backoff, B:1000-1002)'
BOOK_GIVE_UP = 'FOPNP ch. 2 ("give up once it has made enough attempts", B:1046)'
BOOK_CONNECT = 'FOPNP ch. 2 "Connecting UDP Sockets" (connect() or check the reply\'s address, B:895, B:1086)'
BOOK_IDS = 'FOPNP ch. 2 "Request IDs: A Good Idea" (duplicate and late replies, B:1105-1113)'
RFC_8085 = "RFC 8085 section 3.1.3 (retransmission with exponential backoff)"

# The backoff check watches this many requests: four waits, three ratios.
BACKOFF_REQUESTS = 5
# Waits must grow by this factor per retransmission: the median of the ratios
# of successive waits, or (for a randomised backoff, whose single ratios are
# noisy) the last two waits against the first two, by its square. The book's
# client starts at 0.1 s and doubles (2, and 4); a fixed interval gives about
# 1 on both, whatever the load.
BACKOFF_RATIO = 1.5
# A client whose typical (median) wait is shorter than this floods.
FLOOD_FLOOR = 0.02
# How long a client may try before it must have given up (before scaling).
GIVE_UP_BUDGET = 15.0


@SUITE.check("exchange", "basic", title="sends a request, prints the reply and exits 0", references=(BOOK_LOOP,), timeout=40)
def check_basic(ctx: CheckContext) -> None:
    """The server answers every request at once; the client must print the
    reply's payload (a random token the client cannot guess) and exit 0."""
    reply = Reply(ctx)
    proxy = start_proxy(ctx, reply.answer_every())
    run = run_client(ctx, proxy)
    seen = arrivals(ctx, proxy)
    if not seen.times:
        raise violation(
            ctx,
            seen,
            "no request reached the server",
            expected=f"a request datagram to {proxy.address[0]}:{proxy.address[1]}",
            got=run.describe(),
            hint="send the request with sendto((host, port)) or connect() then send(), to the host and port given",
        )
    expect_printed(ctx, seen, run, reply, "the server answered the first request at once")


@SUITE.check(
    "retransmit",
    "after-loss",
    title="retransmits when the first three requests are lost, then prints the reply",
    references=(BOOK_LOOP, "FOPNP ch. 2 (the client must perform its request inside a loop, B:986-992)"),
    timeout=40,
)
def check_after_loss(ctx: CheckContext) -> None:
    """The network drops the first three requests; the server answers the
    fourth. The client must keep trying, print the reply and exit 0."""
    reply = Reply(ctx)
    proxy = start_proxy(ctx, reply.answer_every(), Script.drop_first(3))
    run = run_client(ctx, proxy)
    seen = arrivals(ctx, proxy)
    sent = len(seen.times)
    if sent <= 3:
        raise violation(
            ctx,
            seen,
            f"the client sent {sent} request(s), all lost, and {'gave up' if not run.timed_out else 'waited'} without sending again",
            expected="the client resends the request when no reply comes, until one does (here, the 4th)",
            got=run.describe(),
            hint="UDP loses datagrams: loop { send; wait with a timeout; on timeout resend with a longer wait }",
        )
    expect_printed(ctx, seen, run, reply, "the first 3 requests were lost and request 4 was answered")


def _intervals(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in zip(times, times[1:])]


@SUITE.check(
    "retransmit",
    "backoff",
    title="waits longer before each retransmission (exponential backoff, no flood)",
    references=(BOOK_BACKOFF, RFC_8085),
    timeout=40,
)
def check_backoff(ctx: CheckContext) -> None:
    """The server never answers. Over the first five requests the waits must
    grow: the median ratio of successive waits at least 1.5 (or, for a
    randomised backoff, the last two waits at least 2.25 times the first two),
    and the typical wait at least 20 ms. A fixed interval, or a flood, fails."""
    proxy = start_proxy(ctx, lambda request, client: None)
    run = run_client(ctx, proxy, budget=GIVE_UP_BUDGET, until=lambda stats: stats.client_to_server.seen >= BACKOFF_REQUESTS)
    seen = arrivals(ctx, proxy)
    times = list(seen.times[:BACKOFF_REQUESTS])
    waits = _intervals(times)
    shown = ", ".join(f"{wait * 1000:.0f} ms" for wait in waits) + f" {seen.measured}"
    if len(times) < 3:
        raise violation(
            ctx,
            seen,
            f"the client sent {len(times)} request(s) to a silent server, too few to back off",
            expected="retransmissions with growing waits, e.g. after 0.1, 0.2, 0.4, 0.8 s (the book's client)",
            got=run.describe(),
            hint="on each timeout resend the request and double the wait; give up only after several tries",
        )
    if statistics.median(waits) < FLOOD_FLOOR:
        raise violation(
            ctx,
            seen,
            f"the client flooded a silent server: {len(times)} requests within {(times[-1] - times[0]) * 1000:.0f} ms",
            expected=f"waits of at least {FLOOD_FLOOR * 1000:.0f} ms before retransmitting, growing each time",
            got=f"waits of {shown}",
            hint="wait for the reply with a timeout (settimeout) before sending again; do not resend in a tight loop",
        )
    ratios = [later / earlier if earlier > 0 else float("inf") for earlier, later in zip(waits, waits[1:])]
    step_growth = statistics.median(ratios) >= BACKOFF_RATIO
    overall_growth = len(waits) >= 4 and sum(waits[-2:]) >= BACKOFF_RATIO**2 * sum(waits[:2])
    if not (step_growth or overall_growth):
        raise violation(
            ctx,
            seen,
            "the client retransmits at a fixed interval instead of backing off",
            expected=f"each wait about twice the last (median ratio at least {BACKOFF_RATIO})",
            got=f"waits of {shown}; ratios {', '.join(f'{r:.2f}' for r in ratios)}",
            hint="multiply the timeout by 2 after each retransmission: delay *= 2",
        )


@SUITE.check(
    "retransmit",
    "gives-up",
    title="gives up with a non-zero exit status when the server never answers",
    references=(BOOK_GIVE_UP, "FOPNP ch. 2 (RuntimeError('I think the server is down'))"),
    timeout=60,
)
def check_gives_up(ctx: CheckContext) -> None:
    """The server's socket is bound but never answers (so no ICMP error tells the
    client): the client must stop trying and exit with a non-zero status
    within 15 seconds (the book's client gives up after about 3 s)."""
    proxy = start_proxy(ctx, lambda request, client: None)
    run = run_client(ctx, proxy, budget=GIVE_UP_BUDGET)
    seen = arrivals(ctx, proxy)
    sent = len(seen.times)
    if run.timed_out:
        raise violation(
            ctx,
            seen,
            f"the server never answered, and the client was still trying after {run.duration:.0f} s ({sent} requests)",
            expected=f"the client gives up within {ctx.timeout(GIVE_UP_BUDGET):.0f} s and exits with a non-zero status",
            got=run.describe(),
            hint="count attempts (or cap the total wait) and exit with an error once it is reached",
        )
    if run.status.returncode == 0:
        raise violation(
            ctx,
            seen,
            "the server never answered, yet the client exited with status 0",
            expected="a non-zero exit status: nothing was answered",
            got=run.describe(),
            hint="sys.exit('no reply from the server') (status 1) when giving up, so scripts can tell",
        )
    if sent == 0:
        raise violation(
            ctx,
            seen,
            "the client exited without sending any request",
            expected=f"requests to {proxy.address[0]}:{proxy.address[1]}, then giving up",
            got=run.describe(),
        )


@SUITE.check(
    "reply",
    "spoofed-source",
    title="ignores a datagram from another port and prints the server's reply",
    references=(BOOK_CONNECT, 'FOPNP ch. 2 ("the client is vulnerable to anyone who can address a UDP packet to it", B:891)'),
    timeout=40,
)
def check_spoofed_source(ctx: CheckContext) -> None:
    """Before the real reply, a datagram with a different token arrives from
    another port of the server's host; the real reply follows 50 ms later
    from the server's address. The client must print the real one only
    (connect() makes the kernel drop the other; or compare recvfrom's address)."""
    reply = Reply(ctx)
    fake = b"FAKE reply from another port; " + Reply(ctx, "spoof").token
    proxy = start_proxy(ctx, reply.answer_every(), Script.spoof_reply(0, fake, delay=0.05))
    run = run_client(ctx, proxy)
    seen = arrivals(ctx, proxy)
    if fake in run.stdout or fake.split(b"; ")[1] in run.stdout:
        raise violation(
            ctx,
            seen,
            "the client printed a datagram that came from another port, not from the server",
            expected=f"only the reply from {proxy.address[0]}:{proxy.address[1]}",
            got=run.describe(),
            hint="connect() the UDP socket to the server, or compare the address recvfrom() returns with the server's",
        )
    expect_printed(ctx, seen, run, reply, "a stranger's datagram came first and the server's reply 50 ms later")


@SUITE.check(
    "reply",
    "duplicate",
    title="prints the reply once when it arrives twice",
    references=(BOOK_IDS, "RFC 8085 section 3.3 (datagrams may be duplicated)"),
    timeout=40,
)
def check_duplicate(ctx: CheckContext) -> None:
    """The network delivers the reply twice, 50 ms apart; the client must print
    it once and exit 0."""
    reply = Reply(ctx)
    twice = Script(lambda d: Decision(delays=(0.0, 0.05), reason="duplicated by the network") if (d.direction, d.index) == (SERVER_TO_CLIENT, 0) else None)
    proxy = start_proxy(ctx, reply.answer_every(), twice)
    run = run_client(ctx, proxy)
    seen = arrivals(ctx, proxy)
    expect_printed(ctx, seen, run, reply, "the reply arrived twice")
    count = run.stdout.count(reply.token)
    if count > 1:
        raise violation(
            ctx,
            seen,
            f"the reply arrived twice and the client printed it {count} times",
            expected="the reply printed once: a duplicate is the network's doing, not a second answer",
            got=run.describe(),
            hint="stop reading once the reply has come; one request, one answer",
        )


@SUITE.check(
    "reply",
    "late",
    title="accepts a late reply to its first request after it has retransmitted",
    references=(BOOK_IDS, BOOK_LOOP),
    timeout=40,
)
def check_late(ctx: CheckContext) -> None:
    """The server answers the first request only once the client has
    retransmitted, and ignores every retransmission: the late reply goes to
    the address the first request came from. A client that keeps one socket
    gets it; one that opens a new socket per attempt has closed the port it
    was sent to."""
    reply = Reply(ctx)
    first: list[Address] = []
    proxy_box: list[LossyUDPProxy] = []

    def late_server(request: bytes, client: Address) -> bytes | None:
        first.append(client)
        if len(first) == 2:
            proxy_box[0].send_to_client(first[0], reply.to(request))
        return None

    proxy = start_proxy(ctx, late_server)
    proxy_box.append(proxy)
    run = run_client(ctx, proxy, budget=ANSWER_BUDGET)
    seen = arrivals(ctx, proxy)
    if len(seen.times) < 2:
        raise violation(
            ctx,
            seen,
            "the server held its reply until a retransmission, and the client never retransmitted",
            expected="a retransmission, then the late reply to the first request printed",
            got=run.describe(),
            hint="resend the request when no reply comes within the timeout",
        )
    expect_printed(
        ctx,
        seen,
        run,
        reply,
        "the reply to the first request came late, after the client's retransmission",
        hint="keep one socket for every attempt: a reply to an earlier copy of the request is still the answer",
    )
