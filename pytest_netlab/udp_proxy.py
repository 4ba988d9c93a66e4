"""The lossy UDP proxy: a userspace relay that applies the seeded fault model on loopback.

This module owns the sockets and threads that move datagrams between clients
and a UDP server (or an in-process responder playing the server), and the
transcript of every datagram with its decision. It must not decide anything
itself: every fault comes from :func:`pytest_netlab.udp_faults.route`; what
waits to go out and the counters live in :mod:`pytest_netlab._udp_flows`.
It needs no root: it is an ordinary pair of UDP endpoints, unlike ``tc netem``.

Why a thread per socket, each blocked in ``recv``: relaying one datagram in
flight is bound by wake-ups and per-datagram work, not by bandwidth. A thread
blocked in ``recv`` wakes straight into its datagram, where a single ``poll``
loop pays a ``poll`` call and a dispatch on every hop. With logging after
forwarding, that took the proxy from 0.58-0.67x socat's round trips (the
poll loop) to 0.8-1.0x, side by side on two shared, loaded cores
(``bench/bench_udp_proxy.py``); what remains is Python's own cost per
datagram, which counts when the CPUs are busy. The threads share one lock
for the counters and the log. Their ``recv`` has no timeout because
``close()`` ends it at once with ``shutdown(SHUT_RD)``, which Linux honours
even on an unconnected UDP socket, and joins each thread within a bound; a
``SO_RCVTIMEO`` bound cost 5-10 % of the throughput (a timer armed on every
wait). Sends never block (``MSG_DONTWAIT``): a full buffer is a logged loss,
as on a real network.

Logging: with no faults in a direction, a datagram is forwarded first and
logged just afterwards with its receive time (``Transcript.record(at=)``),
so the logging overlaps the other side's work. A test that has just received
a datagram waits for it to be counted with :meth:`LossyUDPProxy.wait_for`
(or reads the transcript after ``close()``). Datagrams that go through the
fault model are logged before anything is sent.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from dataclasses import replace
from typing import Callable, Union

from pytest_netlab._udp_flows import (
    Address,
    Copy,
    DeliverySchedule,
    DirectionStats,
    Flow,
    Pending,
    ProxyLog,
    ProxyStats,
    address_label,
)
from pytest_netlab.errors import HarnessError
from pytest_netlab.transcript import CLIENT_TO_SERVER, SERVER_TO_CLIENT, Transcript
from pytest_netlab.udp_faults import DELIVER, Datagram, Decision, Faults, FaultState, Script, route

__all__ = ["Address", "DirectionStats", "LossyUDPProxy", "ProxyStats", "Responder"]

#: Plays the server in-process: gets a request and the client's address, returns the reply or None.
Responder = Callable[[bytes, Address], Union[bytes, None]]

# The largest UDP payload is 65,507 bytes over IPv4 and 65,527 over IPv6; a bigger
# buffer would show truncation rather than hide it.
_BUFFER_SIZE = 65536
# The longest the timer thread sleeps before it looks at the stop flag again.
_LONGEST_WAIT = 0.25
_JOIN_TIMEOUT = 5.0
_DONTWAIT = socket.MSG_DONTWAIT
_monotonic = time.monotonic
#: What :meth:`LossyUDPProxy.send_to_client` logs as its decision.
_SENT_BY_TEST = Decision(reason="sent by the test")


class LossyUDPProxy:
    """A UDP relay between clients and a server that loses, duplicates, delays and corrupts.

    Clients send to :attr:`address`. Each client address gets its own
    upstream socket, so the server sees distinct clients and replies map
    back; replies reach the client from :attr:`address`, except when a
    scripted decision sends them from :attr:`other_address`. Instead of an
    ``upstream`` server, a ``responder`` callable can play the server in the
    proxy's thread (it must return quickly). Every datagram is recorded in
    :attr:`transcript` with its receive time, its decision as the note and
    the client (``"127.0.0.1:40312"``) as the stream; :attr:`decisions` and
    :attr:`stats` summarise (use :meth:`wait_for` to wait until they show
    what a client sent). A scripted rule sees both directions: test
    ``datagram.direction``.

    Args:
        upstream: the server's ``(host, port)``; or None with ``responder``.
        responder: ``(request, client_address) -> reply | None``.
        seed: seeds one ``random.Random`` per direction.
        client_to_server: faults for requests.
        server_to_client: faults for replies.
        script: scripted decisions, overriding the random ones.
        host: the loopback address to listen on; default: the upstream's host, or 127.0.0.1.
        transcript: record into this transcript instead of a new one.
        max_clients: distinct client addresses served (one thread each with
            an upstream); datagrams from more are dropped.

    Example::

        proxy = LossyUDPProxy(upstream=("127.0.0.1", server_port), seed=1234,
                              client_to_server=Faults(loss=0.3), script=Script.drop_first(3))
        with proxy:
            run_client(*proxy.address)
            assert proxy.wait_for(lambda stats: stats.server_to_client.delivered >= 1)
        print(proxy.transcript.excerpt(), proxy.stats.client_to_server.dropped)

        # No server at all: the test plays it, through the same fault model.
        def length_server(request: bytes, client: tuple[str, int]) -> bytes:
            return b"Your data was %d bytes long" % len(request)

        with LossyUDPProxy(responder=length_server, script=Script.spoof_reply(0)) as proxy:
            ...
    """

    def __init__(
        self,
        upstream: Address | None = None,
        *,
        responder: Responder | None = None,
        seed: int = 0,
        client_to_server: Faults = Faults(),
        server_to_client: Faults = Faults(),
        script: Script | None = None,
        host: str | None = None,
        transcript: Transcript | None = None,
        max_clients: int = 256,
    ) -> None:
        if (upstream is None) == (responder is None):
            raise ValueError("LossyUDPProxy needs exactly one of upstream=(host, port) or responder=callable")
        if max_clients < 1:
            raise ValueError(f"need max_clients >= 1, got {max_clients!r}")
        self._upstream = upstream
        self._responder = responder
        self._host = host or (upstream[0] if upstream else "127.0.0.1")
        self._family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        self._states = {
            CLIENT_TO_SERVER: FaultState(client_to_server, script),
            SERVER_TO_CLIENT: FaultState(server_to_client, script),
        }
        # A direction with nothing to do takes the fast path: no model, no copies.
        # Not requests to a responder: its reply must be logged after the request.
        self._forward_at_once = {
            CLIENT_TO_SERVER: self._states[CLIENT_TO_SERVER].is_clean and responder is None,
            SERVER_TO_CLIENT: self._states[SERVER_TO_CLIENT].is_clean,
        }
        # One generator per direction: the fate of requests does not depend on how replies interleave.
        self._rngs = {direction: random.Random(f"{seed}/{direction}") for direction in self._states}
        self.transcript = transcript if transcript is not None else Transcript()
        self._record = self.transcript.record
        self._log = ProxyLog(self.transcript)
        self._max_clients = max_clients
        self._flows: dict[Address, Flow] = {}
        self._schedule = DeliverySchedule()
        # Reentrant: a responder runs under the lock and may read proxy.stats or send_to_client.
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._due = threading.Condition(self._lock)
        self._waiters = 0
        self._sockets: list[socket.socket] = []
        self._main: socket.socket
        self._spare: socket.socket
        self._address: tuple[str, int] | None = None
        self._other_address: tuple[str, int] | None = None
        self._threads: list[threading.Thread] = []
        self._started = False
        self._stop_requested = False
        self._failure: BaseException | None = None
        self._closed = False

    # -- public surface -----------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """Where clients must send: ``(host, port)``."""
        return self._known(self._address)

    @property
    def other_address(self) -> tuple[str, int]:
        """The spare port that "from the other port" decisions send from."""
        return self._known(self._other_address)

    @property
    def stats(self) -> ProxyStats:
        """A consistent snapshot of the counters of both directions."""
        with self._lock:
            return self._log.snapshot()

    @property
    def decisions(self) -> list[tuple[float, str, Decision]]:
        """Every decision so far as ``(t, direction, decision)`` in time order, ``t`` as in the transcript."""
        with self._lock:
            return self._log.decided()

    def wait_for(self, predicate: Callable[[ProxyStats], bool], timeout: float = 5.0) -> bool:
        """Block until ``predicate(stats)`` holds (True) or ``timeout`` seconds pass (False)."""
        with self._changed:
            self._waiters += 1
            try:
                return self._changed.wait_for(lambda: predicate(self.stats), timeout)
            finally:
                self._waiters -= 1

    def send_to_client(self, client: Address, payload: bytes, *, other_port: bool = False) -> None:
        """Send ``payload`` to ``client`` now, past the fault model, logged as a reply.

        For a test that plays the server and answers on its own schedule: a
        late reply to an earlier request, a reply to a client address that
        is no longer the one asking. It goes from :attr:`address` (or
        :attr:`other_address`), like a reply; a failed send is logged.

        Example::

            first_client = []
            def late(request, client):
                first_client.append(client)
                if len(first_client) == 2:   # the client retransmitted: answer the first copy
                    proxy.send_to_client(first_client[0], b"reply")
                return None
        """
        self._known(self._address)
        sock = self._spare if other_port else self._main
        decision = replace(_SENT_BY_TEST, other_port=other_port)
        with self._lock:
            label = address_label(client)
            self._log.datagram(SERVER_TO_CLIENT, bytes(payload), decision, label, _monotonic())
            try:
                sock.sendto(payload, _DONTWAIT, client)
                self._log.stats[SERVER_TO_CLIENT].delivered += 1
            except OSError as exc:
                self._log.failed_send(SERVER_TO_CLIENT, label, exc)
            self._notify_waiters()

    def start(self) -> LossyUDPProxy:
        """Bind the sockets on loopback and start relaying."""
        if self._started or self._closed:
            raise RuntimeError("a LossyUDPProxy can be started once")
        self._started = True
        try:
            self._main = self._bind()
            self._spare = self._bind()
            self._address = self._main.getsockname()[:2]
            self._other_address = self._spare.getsockname()[:2]
        except OSError as exc:
            self._close_sockets()
            raise HarnessError(f"the lossy UDP proxy could not bind on {self._host}: {exc}") from exc
        self._spawn("requests", self._serve_requests)
        self._spawn("strays", self._serve_strays)
        if not all(state.is_clean for state in self._states.values()):
            self._spawn("timers", self._serve_timers)
        return self

    def close(self) -> None:
        """Stop the threads, discard datagrams still in flight, close every socket.

        Re-raises the first exception the responder (or the relay itself) raised.
        """
        if self._closed:
            return
        self._closed = True
        self._stop_requested = True
        if self._started and self._address is not None:
            # Requests first: once that thread is gone, no new flow (and thread) can appear.
            self._wake(self._main)
            self._join(self._threads[0])
            with self._lock:
                self._due.notify_all()
                threads = self._threads[1:]
                for sock in [self._spare] + [flow.upstream for flow in self._flows.values() if flow.upstream]:
                    self._wake(sock)
            for thread in threads:
                self._join(thread)
        with self._lock:
            self._log.discard_in_flight()
            self._schedule.clear()
            self._changed.notify_all()
        self._close_sockets()
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def __enter__(self) -> LossyUDPProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- sockets and threads ------------------------------------------------------------

    def _bind(self) -> socket.socket:
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        self._sockets.append(sock)
        sock.bind((self._host, 0))
        return sock

    @staticmethod
    def _known(address: tuple[str, int] | None) -> tuple[str, int]:
        if address is None:
            raise RuntimeError("the proxy has no address until start() (or `with proxy:`)")
        return address

    @staticmethod
    def _wake(sock: socket.socket) -> None:
        """Make a thread blocked in ``recv`` on ``sock`` return now (an unconnected socket says ENOTCONN, and wakes anyway)."""
        try:
            sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    def _join(self, thread: threading.Thread) -> None:
        thread.join(_JOIN_TIMEOUT)
        if thread.is_alive():
            self._failure = self._failure or HarnessError(f"the lossy UDP proxy thread {thread.name!r} did not stop within 5 s")

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()

    def _spawn(self, role: str, body: Callable[..., None], *args: object) -> None:
        def run() -> None:
            try:
                body(*args)
            except BaseException as exc:  # re-raised by close() in the test's thread
                self._failure = self._failure or exc
                self._record("", "fault", note=f"the lossy UDP proxy stopped relaying ({role}): {exc!r}")

        thread = threading.Thread(target=run, name=f"LossyUDPProxy {self._address} {role}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _open_flow(self, address: Address) -> Flow:
        upstream = None
        if self._upstream is not None:
            upstream = self._bind()
            upstream.connect(self._upstream)
        flow = self._flows[address] = Flow(address, upstream)
        if upstream is not None:
            self._spawn(f"replies to {flow.label}", self._serve_replies, flow)
        return flow

    def _notify_waiters(self) -> None:
        if self._waiters:
            self._changed.notify_all()

    # -- the threads ----------------------------------------------------------------------

    def _serve_requests(self) -> None:
        """Datagrams from clients, on the main socket."""
        view = memoryview(bytearray(_BUFFER_SIZE))
        receive = self._main.recvfrom_into
        flows = self._flows  # only this thread adds flows, so it reads them without the lock
        fast = self._forward_at_once[CLIENT_TO_SERVER]
        log_sent = self._fast_logger(CLIENT_TO_SERVER)
        while not self._stop_requested:
            try:
                size, address = receive(view)
            except OSError:
                if self._stop_requested:
                    return
                raise  # nothing else is expected on an unconnected socket: close() reports it
            at = _monotonic()
            if self._stop_requested:
                return
            flow = flows.get(address)
            if fast and flow is not None:
                # Forward first, log afterwards (``at`` keeps the receive time): the logging
                # then overlaps the server's work instead of delaying the datagram.
                data = view[:size]
                try:
                    flow.upstream.send(data, _DONTWAIT)  # type: ignore[union-attr]  # with an upstream, every flow has one
                except OSError as exc:  # an ICMP error left by an earlier datagram, or a full buffer
                    self._log_sent(CLIENT_TO_SERVER, flow, data, at, exc)
                else:
                    log_sent(data, flow.label, at)
                continue
            with self._lock:
                at = _monotonic()  # under the lock: datagrams of the model are logged in time order
                flow = flow or self._admit(address, view[:size], at)
                if flow is not None:
                    self._on_datagram(CLIENT_TO_SERVER, flow, view[:size].tobytes(), at)

    def _serve_replies(self, flow: Flow) -> None:
        """Datagrams from the server to one client, on that client's upstream socket."""
        assert flow.upstream is not None
        view = memoryview(bytearray(_BUFFER_SIZE))
        receive = flow.upstream.recv_into
        send = self._main.sendto
        fast = self._forward_at_once[SERVER_TO_CLIENT]
        log_sent = self._fast_logger(SERVER_TO_CLIENT)
        client, label = flow.address, flow.label
        while not self._stop_requested:
            try:
                size = receive(view)
            except ConnectionRefusedError as exc:  # an ICMP error: nothing listens at the upstream address
                if not self._stop_requested:
                    with self._lock:
                        self._record(SERVER_TO_CLIENT, "fault", note=f"upstream {self._upstream}: {exc.strerror or exc}", stream=flow.label)
                        self._notify_waiters()
                continue
            at = _monotonic()
            if self._stop_requested:
                return
            if fast:
                data = view[:size]
                try:
                    send(data, _DONTWAIT, client)
                except OSError as exc:
                    self._log_sent(SERVER_TO_CLIENT, flow, data, at, exc)
                else:
                    log_sent(data, label, at)
                continue
            with self._lock:
                self._on_datagram(SERVER_TO_CLIENT, flow, view[:size].tobytes(), _monotonic())

    def _serve_strays(self) -> None:
        """Datagrams sent to the spare port (a client answering the wrong address): noted."""
        view = memoryview(bytearray(_BUFFER_SIZE))
        while not self._stop_requested:
            try:
                size, address = self._spare.recvfrom_into(view)
            except OSError:
                if self._stop_requested:
                    return
                raise
            if not self._stop_requested:
                note = f"stray datagram to the other port from {address_label(address)}"
                self._record("", "note", view[:size].tobytes(), note)

    def _serve_timers(self) -> None:
        """Delayed and held copies, when they are due."""
        schedule = self._schedule
        with self._lock:
            while not self._stop_requested:
                if not schedule:
                    self._due.wait(_LONGEST_WAIT)
                    continue
                wait = schedule.next_due - _monotonic()
                if wait > 0:
                    self._due.wait(min(wait, _LONGEST_WAIT))
                    continue
                for copy in schedule.pop_due(_monotonic()):
                    self._deliver(copy.pending, releases_held=not copy.held)
                self._notify_waiters()

    # -- one datagram (the lock is held) ------------------------------------------------

    def _admit(self, address: Address, data: memoryview, at: float) -> Flow | None:
        """A new client: open its flow, or drop its datagram when we cannot."""
        why = f"more than {self._max_clients} clients"
        if len(self._flows) < self._max_clients:
            try:
                return self._open_flow(address)
            except (OSError, RuntimeError) as exc:  # out of descriptors, ports or threads: ours, not the client's
                why = f"no upstream socket: {exc}"
        self._log.datagram(CLIENT_TO_SERVER, data.tobytes(), Decision.drop(why), address_label(address), at)
        self._log.stats[CLIENT_TO_SERVER].dropped += 1
        return None

    def _fast_logger(self, direction: str) -> Callable[[memoryview, str, float], None]:
        """Log and count a datagram of the fast path once it was sent.

        The same as :meth:`_log_sent` without a failure, with everything it
        touches bound once: it runs for every datagram, and its cost is most
        of the proxy's own cost per datagram.
        """
        lock, changed, record, log = self._lock, self._changed, self._record, self._log
        events, decisions, stats = log.events, log.decisions, log.stats[direction]

        def log_sent(data: memoryview, stream: str, at: float) -> None:
            with lock:
                events.append(record(direction, "data", data.tobytes(), "delivered", stream, at))
                decisions.append(DELIVER)
                stats.seen += 1
                stats.delivered += 1
                if self._waiters:
                    changed.notify_all()

        return log_sent

    def _log_sent(self, direction: str, flow: Flow, data: memoryview, at: float, failure: OSError | None = None) -> None:
        """Log and count a datagram of the fast path (no faults in its direction) once it was sent."""
        with self._lock:
            self._log.datagram(direction, data.tobytes(), DELIVER, flow.label, at)
            if failure is None:
                self._log.stats[direction].delivered += 1
            else:
                self._log.failed_send(direction, flow.label, failure)
            if self._waiters:
                self._changed.notify_all()

    def _on_datagram(self, direction: str, flow: Flow, data: bytes, at: float | None = None) -> None:
        """Decide, record (``t`` is the receive time ``at``), then carry the decision out."""
        stats = self._log.stats[direction]
        flow_index = flow.counts[direction]
        flow.counts[direction] = flow_index + 1
        datagram = Datagram(direction, data, flow.label, stats.seen, flow_index)
        decision = route(datagram, self._states[direction], self._rngs[direction])
        now = _monotonic() if at is None else at
        if decision.spoof is not None:
            # Its own event (it goes first), so that a timeline shows the stranger's datagram;
            # a note, not data: no one on either side sent it.
            self._record(direction, "note", decision.spoof, "spoofed, sent from the other port", flow.label, now)
        self._log.datagram(direction, data, decision, flow.label, now)
        if decision.dropped:
            stats.dropped += 1
            self._notify_waiters()
            return
        stats.duplicated += len(decision.delays) - 1
        stats.reordered += decision.hold
        stats.corrupted += decision.corrupted
        stats.delayed += decision.delayed
        if decision.spoof is not None:
            self._send(direction, flow, decision.spoof, other_port=True)
        pending = Pending(direction, flow, decision.apply(data), decision.other_port)
        for delay in decision.delays:
            if delay > 0.0 or decision.hold:
                self._schedule.add(Copy(pending, decision.hold), now + delay)
                self._due.notify_all()
            else:
                self._deliver(pending, releases_held=True)
        self._notify_waiters()

    def _deliver(self, pending: Pending, releases_held: bool) -> None:
        sent = self._send(pending.direction, pending.flow, pending.payload, pending.other_port)
        if not pending.delivered:
            pending.delivered = True
            stats = self._log.stats[pending.direction]
            if sent:
                stats.delivered += 1
            else:
                stats.dropped += 1
        if releases_held:
            # Datagrams held back for reordering go out right after the one that overtook them.
            for copy in self._schedule.take_held(pending.flow, pending.direction):
                self._deliver(copy.pending, releases_held=False)

    def _send(self, direction: str, flow: Flow, payload: bytes, other_port: bool) -> bool:
        try:
            if direction == SERVER_TO_CLIENT:
                (self._spare if other_port else self._main).sendto(payload, _DONTWAIT, flow.address)
            elif self._responder is not None:
                self._respond(flow, payload)
            elif other_port:
                assert self._upstream is not None
                self._spare.sendto(payload, _DONTWAIT, self._upstream)
            else:
                assert flow.upstream is not None
                flow.upstream.send(payload, _DONTWAIT)
            return True
        except OSError as exc:  # a full socket buffer, or an ICMP error left by an earlier datagram
            self._record(direction, "fault", note=f"send failed: {exc}", stream=flow.label)
            return False

    def _respond(self, flow: Flow, request: bytes) -> None:
        assert self._responder is not None
        try:
            reply = self._responder(request, flow.address)
        except Exception as exc:
            self._record(SERVER_TO_CLIENT, "fault", note=f"responder raised {exc!r}", stream=flow.label)
            self._failure = self._failure or exc
            return
        if reply is not None:
            self._on_datagram(SERVER_TO_CLIENT, flow, bytes(reply))
