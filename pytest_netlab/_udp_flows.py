"""Bookkeeping of the lossy UDP proxy: flows, datagrams on their way out, their schedule, the counters.

This module owns what the proxy remembers between datagrams: one
:class:`Flow` per client address with its sockets, the copies of a datagram
that wait to go out (delayed ones by due time, reordered ones until a later
datagram of the same flow overtakes them), and the shape of the
per-direction :class:`DirectionStats` (the log that keeps them is
:mod:`pytest_netlab._udp_log`). It must not use sockets, read a clock or take
locks: the proxy's threads pass the time in, hold the proxy's lock, and do
the sending.
"""

from __future__ import annotations

import heapq
import itertools
import socket
from dataclasses import dataclass
from typing import Union

from pytest_netlab.transcript import CLIENT_TO_SERVER, SERVER_TO_CLIENT

__all__ = ["Address", "Copy", "DeliverySchedule", "DirectionStats", "Flow", "Pending", "ProxyStats", "address_label"]

Address = Union[tuple[str, int], tuple[str, int, int, int]]


@dataclass
class DirectionStats:
    """Counters for one direction.

    ``seen == delivered + dropped + in_flight``; after ``close()`` nothing is
    in flight (datagrams still waiting then are counted as dropped).
    ``duplicated`` counts extra copies, ``reordered`` datagrams held back for
    a later one, ``delayed`` datagrams sent late, ``corrupted`` datagrams
    with a flipped bit.

    Example::

        stats = proxy.stats.client_to_server
        assert stats.seen == stats.delivered + stats.dropped + stats.in_flight
    """

    seen: int = 0
    delivered: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    corrupted: int = 0
    delayed: int = 0

    @property
    def in_flight(self) -> int:
        """Datagrams decided on but not yet sent (delayed or held back)."""
        return self.seen - self.delivered - self.dropped


@dataclass(frozen=True)
class ProxyStats:
    """A snapshot of both directions' counters.

    Example::

        proxy.stats.client_to_server.dropped, proxy.stats["s->c"].delivered
    """

    client_to_server: DirectionStats
    server_to_client: DirectionStats

    def __getitem__(self, direction: str) -> DirectionStats:
        return {CLIENT_TO_SERVER: self.client_to_server, SERVER_TO_CLIENT: self.server_to_client}[direction]


def address_label(address: Address) -> str:
    """``127.0.0.1:40312`` or ``[::1]:40312``: the transcript's stream name for a client."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Flow:
    """One client: its address, its own upstream socket (the server sees one client per flow),
    and its own client-facing socket, connected to it (None in responder mode, or if it could
    not be had: the main socket serves the client then).

    ``counts`` numbers the datagrams that went through the fault model, per direction.
    """

    __slots__ = ("address", "label", "upstream", "front", "counts")

    def __init__(self, address: Address, upstream: socket.socket | None, front: socket.socket | None = None) -> None:
        self.address = address
        self.label = address_label(address)
        self.upstream = upstream
        self.front = front
        self.counts = {CLIENT_TO_SERVER: 0, SERVER_TO_CLIENT: 0}


class Pending:
    """A datagram on its way out, as one or more copies; counted delivered when the first goes."""

    __slots__ = ("direction", "flow", "payload", "other_port", "delivered")

    def __init__(self, direction: str, flow: Flow, payload: bytes, other_port: bool) -> None:
        self.direction = direction
        self.flow = flow
        self.payload = payload
        self.other_port = other_port
        self.delivered = False


class Copy:
    """One copy of a pending datagram; ``sent`` cancels its timer when a hold ends early."""

    __slots__ = ("pending", "held", "sent")

    def __init__(self, pending: Pending, held: bool) -> None:
        self.pending = pending
        self.held = held
        self.sent = False


class DeliverySchedule:
    """Copies waiting to go out: by due time, and (held ones) until a later datagram overtakes them.

    Example::

        schedule.add(Copy(pending, held=False), due=now + 0.05)
        for copy in schedule.pop_due(later):
            send(copy)
    """

    def __init__(self) -> None:
        self._timers: list[tuple[float, int, Copy]] = []
        self._sequence = itertools.count()  # ties keep arrival order
        self._held: dict[tuple[Flow, str], list[Copy]] = {}

    def __bool__(self) -> bool:
        return bool(self._timers)

    @property
    def next_due(self) -> float:
        """When the earliest copy is due; only meaningful when the schedule is not empty."""
        return self._timers[0][0]

    def add(self, copy: Copy, due: float) -> None:
        """Send ``copy`` at ``due`` at the latest; a held copy may go earlier, see :meth:`take_held`."""
        heapq.heappush(self._timers, (due, next(self._sequence), copy))
        if copy.held:
            self._held.setdefault((copy.pending.flow, copy.pending.direction), []).append(copy)

    def pop_due(self, now: float) -> list[Copy]:
        """The copies due by ``now``, in due order, marked sent."""
        due: list[Copy] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            copy = heapq.heappop(timers)[2]
            if not copy.sent:
                self.mark_sent(copy)
                due.append(copy)
        return due

    def take_held(self, flow: Flow, direction: str) -> list[Copy]:
        """The copies held back on this flow and direction (a datagram just overtook them), marked sent."""
        held = self._held.pop((flow, direction), [])
        for copy in held:
            copy.sent = True  # their timers become no-ops
        return held

    def mark_sent(self, copy: Copy) -> None:
        copy.sent = True
        if copy.held:
            key = (copy.pending.flow, copy.pending.direction)
            held = self._held.get(key, [])
            if copy in held:
                held.remove(copy)
            if not held:
                self._held.pop(key, None)

    def clear(self) -> None:
        self._timers.clear()
        self._held.clear()
