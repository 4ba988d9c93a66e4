"""The lossy UDP proxy: a userspace relay that applies the seeded fault model on loopback.

This module owns the sockets and the single thread that move datagrams
between clients and a UDP server (or an in-process responder playing the
server), and the transcript of every datagram with its decision. It must not
decide anything itself: every fault comes from
:func:`pytest_netlab.udp_faults.route`; what waits to go out and the counters
live in :mod:`pytest_netlab._udp_flows`. It needs no root: it is an ordinary
pair of UDP endpoints, unlike ``tc netem``.

Why one thread with ``poll`` and a fast path: relaying one datagram in
flight is bound by wake-ups and per-datagram work, not by bandwidth, and an
asyncio relay is markedly slower (the bench shows it). The thread sleeps in
``poll`` until a datagram arrives or the next delayed one is due. In a
direction with no faults the model is skipped: a request is sent first and
logged afterwards, so the logging overlaps the server's work; a reply is
logged first, so that a client in the test's own thread does not wait for
the GIL while we log. ``busy_poll`` makes the thread poll without sleeping
for a while after each datagram: faster on an idle machine, slower on a
loaded one or when the test's thread needs the GIL, so it is off by
default (``bench/bench_udp_proxy.py`` measures both against socat).
"""

from __future__ import annotations

import functools
import random
import select
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
    ProxyStats,
    address_label,
)
from pytest_netlab.errors import HarnessError
from pytest_netlab.transcript import CLIENT_TO_SERVER, SERVER_TO_CLIENT, Event, Transcript
from pytest_netlab.udp_faults import DELIVER, Datagram, Decision, Faults, FaultState, Script, route

__all__ = ["DirectionStats", "LossyUDPProxy", "ProxyStats", "Responder"]

#: Plays the server in-process: gets a request and the client's address, returns the reply or None.
Responder = Callable[[bytes, Address], Union[bytes, None]]

# The largest UDP payload is 65,507 bytes over IPv4 and 65,527 over IPv6; a bigger
# buffer would show truncation rather than hide it.
_BUFFER_SIZE = 65536
# Every blocking poll is bounded, so the thread notices a stop request even if the wake-up byte is lost.
_LONGEST_POLL_MS = 250.0
_JOIN_TIMEOUT = 5.0


class LossyUDPProxy:
    """A UDP relay between clients and a server that loses, duplicates, delays and corrupts.

    Clients send to :attr:`address`. Each client address gets its own
    upstream socket, so the server sees distinct clients and replies map
    back; replies reach the client from :attr:`address`, except when a
    scripted decision sends them from :attr:`other_address`. Instead of an
    ``upstream`` server, a ``responder`` callable can play the server in the
    proxy's thread (it must return quickly). Every datagram is recorded in
    :attr:`transcript` as it is received, with its decision as the note and
    the client (``"127.0.0.1:40312"``) as the stream; :attr:`decisions` and
    :attr:`stats` summarise. A scripted rule sees both directions: test
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
        busy_poll: seconds to keep polling without sleeping after each datagram (0: never).
        max_clients: distinct client addresses served; datagrams from more are dropped.

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
        busy_poll: float = 0.0,
        max_clients: int = 256,
    ) -> None:
        if (upstream is None) == (responder is None):
            raise ValueError("LossyUDPProxy needs exactly one of upstream=(host, port) or responder=callable")
        if busy_poll < 0 or max_clients < 1:
            raise ValueError(f"need busy_poll >= 0 and max_clients >= 1, got {busy_poll!r} and {max_clients!r}")
        self._upstream = upstream
        self._responder = responder
        self._host = host or (upstream[0] if upstream else "127.0.0.1")
        self._family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        self._states = {
            CLIENT_TO_SERVER: FaultState(client_to_server, script),
            SERVER_TO_CLIENT: FaultState(server_to_client, script),
        }
        # A direction with nothing to do takes the fast path: forward at once, log afterwards.
        # Not requests to a responder: its reply must be logged after the request.
        self._forward_at_once = {
            CLIENT_TO_SERVER: self._states[CLIENT_TO_SERVER].is_clean and responder is None,
            SERVER_TO_CLIENT: self._states[SERVER_TO_CLIENT].is_clean,
        }
        # One generator per direction: the fate of requests does not depend on how replies interleave.
        self._rngs = {direction: random.Random(f"{seed}/{direction}") for direction in self._states}
        self.transcript = transcript if transcript is not None else Transcript()
        self._busy_poll = busy_poll
        self._max_clients = max_clients
        self._stats = {CLIENT_TO_SERVER: DirectionStats(), SERVER_TO_CLIENT: DirectionStats()}
        # Two parallel lists rather than a list of tuples: no new object to track per datagram.
        self._logged_events: list[Event] = []
        self._logged_decisions: list[Decision] = []
        self._flows: dict[Address, Flow] = {}
        self._schedule = DeliverySchedule()
        self._handlers: dict[int, Callable[[], None]] = {}
        self._view = memoryview(bytearray(_BUFFER_SIZE))
        # Reentrant: a responder runs under the lock and may read proxy.stats.
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._waiters = 0
        self._sockets: list[socket.socket] = []
        self._main: socket.socket
        self._spare: socket.socket
        self._address: tuple[str, int] | None = None
        self._other_address: tuple[str, int] | None = None
        self._thread: threading.Thread | None = None
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
            return ProxyStats(replace(self._stats[CLIENT_TO_SERVER]), replace(self._stats[SERVER_TO_CLIENT]))

    @property
    def decisions(self) -> list[tuple[float, str, Decision]]:
        """Every decision so far as ``(t, direction, decision)``, ``t`` as in the transcript."""
        with self._lock:
            logged = zip(self._logged_events, self._logged_decisions)
            return [(event.t, event.direction, decision) for event, decision in logged]

    def wait_for(self, predicate: Callable[[ProxyStats], bool], timeout: float = 5.0) -> bool:
        """Block until ``predicate(stats)`` holds (True) or ``timeout`` seconds pass (False)."""
        with self._changed:
            self._waiters += 1
            try:
                return self._changed.wait_for(lambda: predicate(self.stats), timeout)
            finally:
                self._waiters -= 1

    def start(self) -> LossyUDPProxy:
        """Bind the sockets on loopback and start relaying."""
        if self._thread is not None or self._closed:
            raise RuntimeError("a LossyUDPProxy can be started once")
        try:
            self._main = self._bind()
            self._spare = self._bind()
            self._wake_reader, self._wake_writer = socket.socketpair()
            self._sockets += [self._wake_reader, self._wake_writer]
            self._wake_reader.setblocking(False)
            self._address = self._main.getsockname()[:2]
            self._other_address = self._spare.getsockname()[:2]
        except OSError as exc:
            self._close_sockets()
            raise HarnessError(f"the lossy UDP proxy could not bind on {self._host}: {exc}") from exc
        self._poller = select.poll()
        self._watch(self._main, self._on_request_ready)
        self._watch(self._spare, self._on_stray_ready)
        self._watch(self._wake_reader, self._on_wake)
        self._thread = threading.Thread(target=self._run, name=f"LossyUDPProxy {self.address}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread, discard datagrams still in flight, close every socket.

        Re-raises the first exception the responder (or the relay itself) raised.
        """
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._stop_requested = True
            try:
                self._wake_writer.send(b"\0")
            except OSError:
                pass  # the bounded poll notices the stop request anyway
            self._thread.join(_JOIN_TIMEOUT)
            if self._thread.is_alive():
                self._failure = self._failure or HarnessError("the lossy UDP proxy thread did not stop within 5 s")
        with self._lock:
            for direction, stats in self._stats.items():
                if stats.in_flight:
                    note = f"discarded {stats.in_flight} datagram(s) in flight at close"
                    self.transcript.record(direction, "fault", note=note)
                    stats.dropped += stats.in_flight
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

    # -- sockets --------------------------------------------------------------------------

    def _bind(self) -> socket.socket:
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        self._sockets.append(sock)
        sock.bind((self._host, 0))
        sock.setblocking(False)
        return sock

    @staticmethod
    def _known(address: tuple[str, int] | None) -> tuple[str, int]:
        if address is None:
            raise RuntimeError("the proxy has no address until start() (or `with proxy:`)")
        return address

    def _watch(self, sock: socket.socket, handler: Callable[[], None]) -> None:
        self._handlers[sock.fileno()] = handler
        self._poller.register(sock, select.POLLIN)

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()

    def _open_flow(self, address: Address) -> Flow:
        upstream = None
        if self._upstream is not None:
            upstream = self._bind()
            upstream.connect(self._upstream)
        flow = self._flows[address] = Flow(address, upstream)
        if upstream is not None:
            self._watch(upstream, functools.partial(self._on_reply_ready, flow))
        return flow

    # -- the relay thread ---------------------------------------------------------------

    def _run(self) -> None:
        poll = self._poller.poll
        monotonic = time.monotonic
        schedule = self._schedule
        spin_until = 0.0
        try:
            while not self._stop_requested:
                now = monotonic()
                if schedule and schedule.next_due <= now:
                    events = poll(0)
                elif now < spin_until:
                    events = poll(0)
                    if not events:
                        continue
                else:
                    wait_ms = (schedule.next_due - now) * 1000.0 if schedule else _LONGEST_POLL_MS
                    events = poll(min(wait_ms, _LONGEST_POLL_MS))
                with self._lock:
                    for fd, _mask in events:
                        self._handlers[fd]()
                    if schedule:
                        for copy in schedule.pop_due(monotonic()):
                            self._deliver(copy.pending, releases_held=not copy.held)
                    if self._waiters:
                        self._changed.notify_all()
                if events:
                    spin_until = monotonic() + self._busy_poll
        except BaseException as exc:  # re-raised by close() in the test's thread
            self._failure = exc
            self.transcript.record("", "fault", note=f"the lossy UDP proxy stopped relaying: {exc!r}")

    def _on_wake(self) -> None:
        try:
            self._wake_reader.recv(64)
        except OSError:
            pass

    def _on_request_ready(self) -> None:
        try:
            size, address = self._main.recvfrom_into(self._view)
        except BlockingIOError:
            return
        flow = self._flows.get(address) or self._admit(address, size)
        if flow is None:
            return
        if self._forward_at_once[CLIENT_TO_SERVER]:
            # Send first, log afterwards: the logging overlaps the server's work (usually a
            # target process), and t is stamped a send call (microseconds) after the receive.
            assert flow.upstream is not None
            view = self._view[:size]
            failure: OSError | None = None
            try:
                flow.upstream.send(view)
            except OSError as exc:  # an ICMP error left by an earlier datagram, or a full buffer
                failure = exc
            self._log_passed(CLIENT_TO_SERVER, flow, view)
            self._count_sent(CLIENT_TO_SERVER, flow, failure)
        else:
            self._on_datagram(CLIENT_TO_SERVER, flow, self._view[:size].tobytes())

    def _admit(self, address: Address, size: int) -> Flow | None:
        """A new client: open its flow, or drop its datagram when we cannot."""
        why = f"more than {self._max_clients} clients"
        if len(self._flows) < self._max_clients:
            try:
                return self._open_flow(address)
            except OSError as exc:  # out of file descriptors or ports: our failure, not the client's
                why = f"no upstream socket: {exc}"
        stats = self._stats[CLIENT_TO_SERVER]
        stats.seen += 1
        stats.dropped += 1
        decision = Decision.drop(why)
        data = self._view[:size].tobytes()
        event = self.transcript.record(CLIENT_TO_SERVER, "data", data, decision.describe(), address_label(address))
        self._logged_events.append(event)
        self._logged_decisions.append(decision)
        return None

    def _on_reply_ready(self, flow: Flow) -> None:
        assert flow.upstream is not None
        try:
            size = flow.upstream.recv_into(self._view)
        except BlockingIOError:
            return
        except OSError as exc:  # ECONNREFUSED: nothing listens at the upstream address
            note = f"upstream {self._upstream}: {exc.strerror or exc}"
            self.transcript.record(SERVER_TO_CLIENT, "fault", note=note, stream=flow.label)
            return
        if self._forward_at_once[SERVER_TO_CLIENT]:
            # Log first, then send: the client is usually a thread of this process (the test),
            # which can then take the GIL as soon as the reply lands instead of after our logging.
            view = self._view[:size]
            self._log_passed(SERVER_TO_CLIENT, flow, view)
            failure: OSError | None = None
            try:
                self._main.sendto(view, flow.address)
            except OSError as exc:
                failure = exc
            self._count_sent(SERVER_TO_CLIENT, flow, failure)
        else:
            self._on_datagram(SERVER_TO_CLIENT, flow, self._view[:size].tobytes())

    def _log_passed(self, direction: str, flow: Flow, view: memoryview) -> None:
        """Log a datagram of the fast path (no faults in its direction); a failed send is logged apart."""
        self._logged_events.append(self.transcript.record(direction, "data", view.tobytes(), "delivered", flow.label))
        self._logged_decisions.append(DELIVER)

    def _count_sent(self, direction: str, flow: Flow, failure: OSError | None) -> None:
        """Count a datagram of the fast path once its send is known to have worked or failed."""
        stats = self._stats[direction]
        stats.seen += 1
        if failure is None:
            stats.delivered += 1
        else:
            stats.dropped += 1
            self.transcript.record(direction, "fault", note=f"send failed: {failure}", stream=flow.label)

    def _on_stray_ready(self) -> None:
        try:
            size, address = self._spare.recvfrom_into(self._view)
        except BlockingIOError:
            return
        note = f"stray datagram to the other port from {address_label(address)}"
        self.transcript.record("", "note", self._view[:size].tobytes(), note)

    def _on_datagram(self, direction: str, flow: Flow, data: bytes) -> None:
        """Decide, record (``t`` is the receive time), then carry the decision out."""
        stats = self._stats[direction]
        flow_index = flow.counts[direction]
        flow.counts[direction] = flow_index + 1
        datagram = Datagram(direction, data, flow.label, stats.seen, flow_index)
        decision = route(datagram, self._states[direction], self._rngs[direction])
        self._logged_events.append(self.transcript.record(direction, "data", data, decision.describe(), flow.label))
        self._logged_decisions.append(decision)
        stats.seen += 1
        if decision.dropped:
            stats.dropped += 1
            return
        stats.duplicated += len(decision.delays) - 1
        stats.reordered += decision.hold
        stats.corrupted += decision.corrupted
        stats.delayed += decision.delayed
        if decision.spoof is not None:
            self._send(direction, flow, decision.spoof, other_port=True)
        pending = Pending(direction, flow, decision.apply(data), decision.other_port)
        now = time.monotonic()
        for delay in decision.delays:
            if delay > 0.0 or decision.hold:
                self._schedule.add(Copy(pending, decision.hold), now + delay)
            else:
                self._deliver(pending, releases_held=True)

    def _deliver(self, pending: Pending, releases_held: bool) -> None:
        sent = self._send(pending.direction, pending.flow, pending.payload, pending.other_port)
        if not pending.delivered:
            pending.delivered = True
            stats = self._stats[pending.direction]
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
                (self._spare if other_port else self._main).sendto(payload, flow.address)
            elif self._responder is not None:
                self._respond(flow, payload)
            elif other_port:
                assert self._upstream is not None
                self._spare.sendto(payload, self._upstream)
            else:
                assert flow.upstream is not None
                flow.upstream.send(payload)
            return True
        except OSError as exc:  # a full socket buffer, or an ICMP error left by an earlier datagram
            self.transcript.record(direction, "fault", note=f"send failed: {exc}", stream=flow.label)
            return False

    def _respond(self, flow: Flow, request: bytes) -> None:
        assert self._responder is not None
        try:
            reply = self._responder(request, flow.address)
        except Exception as exc:
            self.transcript.record(SERVER_TO_CLIENT, "fault", note=f"responder raised {exc!r}", stream=flow.label)
            self._failure = self._failure or exc
            return
        if reply is not None:
            self._on_datagram(SERVER_TO_CLIENT, flow, bytes(reply))
