"""The lossy UDP proxy's machinery: its sockets and threads, from the first datagram of a flow to close.

This module owns what :class:`~pytest_netlab.udp_proxy.LossyUDPProxy` runs:
the main socket's thread, which admits each new client flow (an upstream
socket and a client-facing socket of its own, see
:mod:`pytest_netlab._udp_sockets`) and starts the flow's own threads in an
order that keeps the client's datagrams in order; the per-direction relay
loop with its fast path; the spare port and timer threads; stopping them
all. It must not decide or describe anything: decisions go through
:mod:`pytest_netlab._udp_decisions`, words into the log through
:mod:`pytest_netlab._udp_log`. Why it is built this way is told in
:mod:`pytest_netlab.udp_proxy`.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections import deque
from functools import partial
from typing import Callable

from pytest_netlab._udp_decisions import DecisionRunner, Responder
from pytest_netlab._udp_flows import Address, Flow, address_label
from pytest_netlab._udp_log import ProxyLog
from pytest_netlab._udp_sockets import BUFFER_SIZE, bind, bind_listener, open_client_socket, open_upstream, wake
from pytest_netlab.errors import HarnessError
from pytest_netlab.transcript import CLIENT_TO_SERVER, SERVER_TO_CLIENT
from pytest_netlab.udp_faults import DELIVER, Decision, FaultState

__all__ = ["Relay"]

# The longest the timer thread sleeps before it looks at the stop flag again.
_LONGEST_WAIT = 0.25
_JOIN_TIMEOUT = 5.0
_DONTWAIT = socket.MSG_DONTWAIT
_monotonic = time.monotonic
# New flows' threads wait for the main socket to be empty, but no longer than this many datagrams
# (a flood of new or excess clients would keep it busy).
_MOST_BEFORE_START = 64


class Relay:
    """The sockets and threads of one lossy UDP proxy.

    ``lock`` guards the log's counters and the fault model; ``changed`` is
    notified when the counters may have changed while ``waiters`` (kept by
    whoever waits, under ``lock``) is not zero.

    Example::

        relay = Relay(family=socket.AF_INET, host="127.0.0.1", port=0, upstream=server, responder=None,
                      states=states, rngs=rngs, log=log, max_clients=256)
        relay.start()               # OSError if it cannot bind
        ...                         # clients send to relay.address
        failure = relay.close()     # the first exception a thread raised, or None
    """

    def __init__(
        self,
        *,
        family: socket.AddressFamily,
        host: str,
        port: int,
        upstream: Address | None,
        responder: Responder | None,
        states: dict[str, FaultState],
        rngs: dict[str, random.Random],
        log: ProxyLog,
        max_clients: int,
    ) -> None:
        self._family, self._host, self._port = family, host, port
        self._upstream, self._responder = upstream, responder
        self._states, self._rngs = states, rngs
        # A direction with nothing to do takes the fast path: no model, no copies.
        # Not requests to a responder: its reply must be logged after the request.
        self._forward_at_once = {
            CLIENT_TO_SERVER: states[CLIENT_TO_SERVER].is_clean and responder is None,
            SERVER_TO_CLIENT: states[SERVER_TO_CLIENT].is_clean,
        }
        self._log = log
        self._record = log.record
        self._max_clients = max_clients
        self._flows: dict[Address, Flow] = {}
        # Reentrant: a responder runs under the lock and may read proxy.stats or send_to_client.
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.due = threading.Condition(self.lock)
        self.waiters = 0
        self._sockets: list[socket.socket] = []
        self._main: socket.socket
        self._spare: socket.socket
        self._runner: DecisionRunner  # the slow path, once the sockets are bound
        self.address: tuple[str, int] | None = None
        self.other_address: tuple[str, int] | None = None
        self._threads: list[threading.Thread] = []
        self._stop_requested = False
        self._failure: BaseException | None = None

    def start(self) -> None:
        """Bind the sockets (OSError if that fails, with nothing left open) and start the threads."""
        try:
            self._main = self._keep(bind_listener(self._family, self._host, self._port))
            self._spare = self._keep(bind(self._family, self._host))
        except OSError:
            self._close_sockets()
            raise
        self.address = self._main.getsockname()[:2]
        self.other_address = self._spare.getsockname()[:2]
        self._runner = DecisionRunner(
            self._states, self._rngs, self._log, self._main, self._spare,
            upstream=self._upstream, responder=self._responder, due=self.due, notify_waiters=self._notify_waiters,
            client_refused=self._client_refused, failed=self._fail,
        )  # fmt: skip
        self._spawn("requests", self._serve_requests)
        self._spawn("strays", self._serve_strays)
        if not all(state.is_clean for state in self._states.values()):
            self._spawn("timers", self._serve_timers)

    def send_to_client(self, client: Address, payload: bytes, decision: Decision) -> None:
        """Send ``payload`` to ``client`` now from the main socket (or the spare, as ``decision`` says), logged."""
        sock = self._spare if decision.other_port else self._main
        with self.lock:
            label = address_label(client)
            self._log.datagram(SERVER_TO_CLIENT, bytes(payload), decision, label, _monotonic())
            try:
                sock.sendto(payload, _DONTWAIT, client)
                self._log.stats[SERVER_TO_CLIENT].delivered += 1
            except OSError as exc:
                self._log.failed_send(SERVER_TO_CLIENT, label, exc)
            self._notify_waiters()

    def close(self) -> BaseException | None:
        """Stop the threads, discard what is in flight, close every socket; the first failure of a thread."""
        self._stop_requested = True
        if self.address is not None:
            # Requests first: once that thread is gone, no new flow (and thread) can appear.
            wake(self._main)
            self._join(self._threads[0])
            with self.lock:
                self.due.notify_all()
                threads = self._threads[1:]
                for sock in self._sockets:
                    wake(sock)
            for thread in threads:
                self._join(thread)
        with self.lock:
            self._log.discard_in_flight()
            if self.address is not None:
                self._runner.schedule.clear()
            self._log.close()
            self.changed.notify_all()
        self._close_sockets()
        failure, self._failure = self._failure, None
        return failure

    # -- sockets and threads ------------------------------------------------------------

    def _keep(self, sock: socket.socket) -> socket.socket:
        self._sockets.append(sock)
        return sock

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
                self._fail(exc)
                self._record("", "fault", note=f"the lossy UDP proxy stopped relaying ({role}): {exc!r}")

        thread = threading.Thread(target=run, name=f"LossyUDPProxy {self.address} {role}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _open_flow(self, address: Address) -> tuple[Flow, list[tuple[bytes, Address]]]:
        """A new client's sockets; and the strays its client-facing socket caught (see _udp_sockets)."""
        if self._upstream is None:
            return Flow(address, None), []
        upstream = self._keep(open_upstream(self._family, self._host, self._upstream))
        front: socket.socket | None = None
        strays: list[tuple[bytes, Address]] = []
        try:
            front, strays = open_client_socket(self._family, self._main.getsockname(), address)
            self._keep(front)
        except OSError as exc:  # the main socket serves this client instead, a little slower
            self._record("", "note", note=f"no socket of its own for client {address_label(address)}: {exc}")
        flow = Flow(address, upstream, front)
        send: Callable[[bytes, int], int]
        send = front.send if front is not None else lambda data, flags: self._main.sendto(data, flags, address)
        replies = (upstream.recv, send, partial(self._upstream_refused, flow), partial(self._reply_failed, flow))
        self._spawn(f"replies to {flow.label}", self._relay, SERVER_TO_CLIENT, flow, *replies)
        return flow, strays

    def _fail(self, exc: BaseException) -> None:
        """Keep the first failure for close() to return."""
        self._failure = self._failure or exc

    def _notify_waiters(self) -> None:
        if self.waiters:
            self.changed.notify_all()

    def _notify(self) -> None:
        """From a thread that does not hold the lock: wake whoever waits for the stats to change."""
        if self.waiters:
            with self.lock:
                self.changed.notify_all()

    # -- the threads ----------------------------------------------------------------------

    def _serve_requests(self) -> None:
        """Datagrams from clients on the main socket: the first of each flow, and any that beat its ``connect``.

        A new flow's own thread starts once the main socket is empty: what
        reached the main socket first is handled first.
        """
        receive = self._main.recvfrom
        backlog: deque[tuple[bytes, Address]] = deque()  # strays from new flows' sockets
        unstarted: dict[Flow, list[bytes]] = {}  # new flows, with what their own socket already caught
        handled = 0  # datagrams handled while new flows wait
        while not self._stop_requested:
            if unstarted and handled >= _MOST_BEFORE_START:
                self._start_flows(unstarted)
            if backlog:
                data, address = backlog.popleft()
            else:
                try:
                    data, address = receive(BUFFER_SIZE, _DONTWAIT if unstarted else 0)
                except BlockingIOError:  # empty: whatever beat the new flows' sockets has been handled
                    self._start_flows(unstarted)
                    continue
                except OSError:
                    if self._stop_requested:
                        return
                    raise  # nothing else is expected on an unconnected socket: close() reports it
            if self._stop_requested:
                return
            handled = handled + 1 if unstarted else 0
            self._on_request(data, address, backlog, unstarted)

    def _on_request(self, data: bytes, address: Address, backlog: deque[tuple[bytes, Address]], unstarted: dict[Flow, list[bytes]]) -> None:
        """One datagram from a client on the main socket (or a stray): admit its flow, then relay it."""
        at = _monotonic()
        flow = self._flows.get(address)  # only this thread adds flows, so it reads them without the lock
        if flow is None:
            with self.lock:
                flow, strays = self._admit(address, data, at)
            if flow is None:
                return
            if flow.front is not None:
                # What the flow's socket caught from its client came after the main socket's: kept for later.
                unstarted[flow] = [payload for payload, source in strays if source == address]
                backlog.extend(stray for stray in strays if stray[1] != address)
        self._relay_request(flow, data, at)

    def _relay_request(self, flow: Flow, data: bytes, at: float) -> None:
        """Relay a request that the main thread received."""
        if self._forward_at_once[CLIENT_TO_SERVER]:
            assert flow.upstream is not None  # with an upstream, every flow has one
            try:
                flow.upstream.send(data, _DONTWAIT)
            except OSError as exc:  # an ICMP error left by an earlier datagram, or a full buffer
                self._log_sent(CLIENT_TO_SERVER, flow, data, at, exc)
            else:
                self._log.fast_append((at, CLIENT_TO_SERVER, data, flow.label))
                self._notify()
            return
        with self.lock:
            self._runner.on_datagram(CLIENT_TO_SERVER, flow, data, _monotonic())  # under the lock: logged in time order

    def _start_flows(self, unstarted: dict[Flow, list[bytes]]) -> None:
        """The main socket is empty: relay what each new flow's socket caught, then start its thread."""
        for flow, caught in unstarted.items():
            for data in caught:
                self._relay_request(flow, data, _monotonic())
            assert flow.front is not None and flow.upstream is not None
            requests = (
                flow.front.recv, flow.upstream.send, partial(self._client_refused, flow), partial(self._log_sent, CLIENT_TO_SERVER, flow)
            )  # fmt: skip
            self._spawn(f"requests from {flow.label}", self._relay, CLIENT_TO_SERVER, flow, *requests)
        unstarted.clear()

    def _relay(
        self,
        direction: str,
        flow: Flow,
        receive: Callable[[int], bytes],
        send: Callable[[bytes, int], int],
        refused: Callable[[OSError], None],
        send_failed: Callable[[bytes, float, OSError], None],
    ) -> None:
        """One direction of one flow: from the socket ``receive`` reads to ``send``, or through the model."""
        fast = self._forward_at_once[direction]
        append, label, monotonic = self._log.fast_append, flow.label, _monotonic
        while not self._stop_requested:
            try:
                data = receive(BUFFER_SIZE)
            except ConnectionRefusedError as exc:  # an ICMP error: a datagram sent from this socket found no one
                if not self._stop_requested:
                    refused(exc)
                continue
            at = monotonic()
            if self._stop_requested:
                return
            if not fast:
                with self.lock:
                    self._runner.on_datagram(direction, flow, data, monotonic())
                continue
            try:
                send(data, _DONTWAIT)
            except OSError as exc:
                send_failed(data, at, exc)
            else:
                append((at, direction, data, label))
                if self.waiters:
                    self._notify()

    def _serve_strays(self) -> None:
        """Datagrams sent to the spare port (a client answering the wrong address): noted."""
        while not self._stop_requested:
            try:
                data, address = self._spare.recvfrom(BUFFER_SIZE)
            except OSError:
                if self._stop_requested:
                    return
                raise
            if not self._stop_requested:
                self._record("", "note", data, f"stray datagram to the other port from {address_label(address)}")

    def _serve_timers(self) -> None:
        """Delayed and held copies, when they are due."""
        schedule = self._runner.schedule
        with self.lock:
            while not self._stop_requested:
                if not schedule:
                    self.due.wait(_LONGEST_WAIT)
                    continue
                wait = schedule.next_due - _monotonic()
                if wait > 0:
                    self.due.wait(min(wait, _LONGEST_WAIT))
                    continue
                self._runner.deliver_due(_monotonic())

    # -- what goes wrong -----------------------------------------------------------------

    def _upstream_refused(self, flow: Flow, exc: OSError) -> None:
        """An ICMP "port unreachable" from the server: logged; the flow carries on."""
        self._log.upstream_refused(flow.label, self._upstream, exc)
        self._notify()

    def _client_refused(self, flow: Flow, exc: OSError) -> None:
        """An ICMP "port unreachable" from a client (it closed its socket): noted; its flow carries on."""
        self._log.client_refused(flow.label, exc)
        self._notify()

    def _reply_failed(self, flow: Flow, data: bytes, at: float, exc: OSError) -> None:
        """A fast-path reply the kernel refused. An ICMP error that an earlier reply left on the
        flow's connected socket fails the next send without sending it: noted, and sent again."""
        if isinstance(exc, ConnectionRefusedError) and flow.front is not None:
            self._client_refused(flow, exc)
            try:
                flow.front.send(data, _DONTWAIT)
            except OSError as again:
                exc = again
            else:
                self._log.fast_append((at, SERVER_TO_CLIENT, data, flow.label))
                self._notify()
                return
        self._log_sent(SERVER_TO_CLIENT, flow, data, at, exc)

    # -- one datagram (the lock is held) ------------------------------------------------

    def _admit(self, address: Address, data: bytes, at: float) -> tuple[Flow | None, list[tuple[bytes, Address]]]:
        """A new client: open its flow (and return the strays its socket caught), or drop its datagram when we cannot."""
        why = f"more than {self._max_clients} clients"
        if len(self._flows) < self._max_clients:
            try:
                flow, strays = self._open_flow(address)
                self._flows[address] = flow
                return flow, strays
            except (OSError, RuntimeError) as exc:  # out of descriptors, ports or threads: ours, not the client's
                why = f"no upstream socket: {exc}"
        self._log.datagram(CLIENT_TO_SERVER, data, Decision.drop(why), address_label(address), at)
        self._log.stats[CLIENT_TO_SERVER].dropped += 1
        return None, []

    def _log_sent(self, direction: str, flow: Flow, data: bytes, at: float, failure: OSError) -> None:
        """Log and count a datagram of the fast path (no faults in its direction) that the kernel refused."""
        with self.lock:
            self._log.datagram(direction, data, DELIVER, flow.label, at)
            self._log.failed_send(direction, flow.label, failure)
            self._notify_waiters()
