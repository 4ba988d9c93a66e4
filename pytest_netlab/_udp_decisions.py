"""The lossy UDP proxy's slow path: decide each datagram, log it, and carry the decision out.

This module owns what happens to a datagram in a direction that has faults
(or whose server is an in-process responder): the decision from
:func:`pytest_netlab.udp_faults.route`, its record in the log, and its copies
sent now, later (by the proxy's timer thread, through :meth:`DecisionRunner.deliver_due`),
from the other port, or handed to the responder. It must not start threads,
wait, or take locks: the proxy's threads call it holding the proxy's lock.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from typing import Callable, Union

from pytest_netlab._udp_flows import Address, Copy, DeliverySchedule, Flow, Pending
from pytest_netlab._udp_log import ProxyLog
from pytest_netlab.transcript import SERVER_TO_CLIENT
from pytest_netlab.udp_faults import Datagram, FaultState, route

__all__ = ["DecisionRunner", "Responder"]

#: Plays the server in-process: gets a request and the client's address, returns the reply or None.
Responder = Callable[[bytes, Address], Union[bytes, None]]

_DONTWAIT = socket.MSG_DONTWAIT


class DecisionRunner:
    """Decides, logs and delivers the datagrams of the fault model, on the proxy's sockets.

    Args:
        states: the fault state per direction.
        rngs: one seeded generator per direction.
        log: where datagrams and counters go.
        main: the proxy's main socket (replies of flows without a socket of their own).
        spare: the socket "from the other port" decisions send from.
        upstream: the server's address, or None with ``responder``.
        responder: plays the server, or None.
        due: notified when a copy is scheduled (the timer thread waits on it).
        notify_waiters: wakes whoever waits for the stats to change.
        client_refused: called when a client's ICMP error fails a send (then sent again).
        failed: called with the responder's exception.

    Example::

        runner = DecisionRunner(states, rngs, log, main, spare, upstream=None, responder=echo, ...)
        with lock:
            runner.on_datagram(CLIENT_TO_SERVER, flow, b"ping", at=time.monotonic())
    """

    def __init__(
        self,
        states: dict[str, FaultState],
        rngs: dict[str, random.Random],
        log: ProxyLog,
        main: socket.socket,
        spare: socket.socket,
        *,
        upstream: Address | None,
        responder: Responder | None,
        due: threading.Condition,
        notify_waiters: Callable[[], None],
        client_refused: Callable[[Flow, OSError], None],
        failed: Callable[[BaseException], None],
    ) -> None:
        self._states, self._rngs, self._log = states, rngs, log
        self._record = log.record
        self._main, self._spare = main, spare
        self._upstream, self._responder = upstream, responder
        self._due, self._notify_waiters = due, notify_waiters
        self._client_refused, self._failed = client_refused, failed
        self.schedule = DeliverySchedule()

    def on_datagram(self, direction: str, flow: Flow, data: bytes, at: float) -> None:
        """Decide, record (``t`` is the receive time ``at``), then carry the decision out."""
        stats = self._log.stats[direction]
        flow_index = flow.counts[direction]
        flow.counts[direction] = flow_index + 1
        datagram = Datagram(direction, data, flow.label, stats.seen, flow_index)
        decision = route(datagram, self._states[direction], self._rngs[direction])
        if decision.spoof is not None:
            # Its own event (it goes first), so that a timeline shows the stranger's datagram;
            # a note, not data: no one on either side sent it.
            self._record(direction, "note", decision.spoof, "spoofed, sent from the other port", flow.label, at)
        self._log.datagram(direction, data, decision, flow.label, at)
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
                self.schedule.add(Copy(pending, decision.hold), at + delay)
                self._due.notify_all()
            else:
                self._deliver(pending, releases_held=True)
        self._notify_waiters()

    def deliver_due(self, now: float) -> None:
        """Send the copies due by ``now`` (the timer thread)."""
        for copy in self.schedule.pop_due(now):
            self._deliver(copy.pending, releases_held=not copy.held)
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
            for copy in self.schedule.take_held(pending.flow, pending.direction):
                self._deliver(copy.pending, releases_held=False)

    def _send(self, direction: str, flow: Flow, payload: bytes, other_port: bool) -> bool:
        try:
            if direction == SERVER_TO_CLIENT:
                if other_port:
                    self._spare.sendto(payload, _DONTWAIT, flow.address)
                elif flow.front is None:
                    self._main.sendto(payload, _DONTWAIT, flow.address)
                else:
                    try:
                        flow.front.send(payload, _DONTWAIT)
                    except ConnectionRefusedError as exc:  # an earlier reply's ICMP error, not this one's
                        self._client_refused(flow, exc)
                        flow.front.send(payload, _DONTWAIT)
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
            self._failed(exc)
            return
        if reply is not None:
            self.on_datagram(SERVER_TO_CLIENT, flow, bytes(reply), time.monotonic())

