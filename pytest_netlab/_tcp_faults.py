"""The TCP fault model: when each byte of one direction of a relayed stream is delivered.

This module owns the decisions of the TCP fault proxy and nothing else: given
the faults configured for one direction, a seeded ``random.Random`` and a chunk
of N bytes that arrived at time T, it answers "deliver these slices at these
times, then reset / close / stall". It must not do any I/O, read a clock or
sleep: the caller passes the arrival time in and carries the plan out, so the
model is deterministic and can be tested with plain numbers.

Byte order is always preserved: a later chunk is never scheduled before an
earlier one, whatever the jitter drew.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["TCPFaults", "Delivery", "ChunkPlan", "FaultSchedule", "RESET", "CLOSE", "STALL"]

#: What a byte limit does once it is reached.
RESET = "reset"  # RST to both sides
CLOSE = "close"  # orderly FIN to both sides
STALL = "stall"  # forward nothing more in this direction; the connection stays open

# A bandwidth limit is applied in pieces worth this many seconds of transfer, so
# a 64 KiB chunk at 1 KiB/s trickles out instead of arriving in one burst after 64 s.
_BANDWIDTH_TICK = 0.01


@dataclass(frozen=True)
class TCPFaults:
    """The faults the TCP proxy applies to one direction of every relayed connection.

    All fields default to "no fault"; a ``TCPFaults()`` relays bytes untouched.

    Attributes:
        latency: seconds added to every chunk before it is delivered.
        jitter: each chunk's delay varies by up to +- this many seconds, drawn
            from the proxy's seeded rng; byte order is always preserved.
        slice_size: deliver data in writes of at most this many bytes.
        slice_pause: seconds to wait between two consecutive writes.
        bandwidth: deliver at most this many bytes per second.
        reset_after: after this many bytes in this direction, send an RST to
            both sides (0: reset as soon as the client connects).
        close_after: after this many bytes, close both sides in order (FIN).
        stall_after: after this many bytes, forward nothing more in this
            direction (not even its EOF) while keeping the connection open.

    Example::

        TCPFaults(slice_size=1, slice_pause=0.01)   # one byte every 10 ms
        TCPFaults(latency=0.05, jitter=0.01)        # 40..60 ms per chunk
        TCPFaults(reset_after=1000)                 # exactly 1000 bytes, then RST
    """

    latency: float = 0.0
    jitter: float = 0.0
    slice_size: int | None = None
    slice_pause: float = 0.0
    bandwidth: int | None = None
    reset_after: int | None = None
    close_after: int | None = None
    stall_after: int | None = None

    def __post_init__(self) -> None:
        for name in ("latency", "jitter", "slice_pause"):
            if getattr(self, name) < 0:
                raise ValueError(f"TCPFaults.{name} must be >= 0 seconds, got {getattr(self, name)!r}")
        for name in ("slice_size", "bandwidth"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"TCPFaults.{name} must be >= 1 or None, got {value!r}")
        for name in ("reset_after", "close_after", "stall_after"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"TCPFaults.{name} must be >= 0 bytes or None, got {value!r}")

    @property
    def active(self) -> bool:
        """Whether any fault is configured (``False`` lets the proxy take its fast path)."""
        return self != _NO_FAULTS


_NO_FAULTS = TCPFaults()


@dataclass(frozen=True)
class Delivery:
    """Send the next ``size`` bytes of the chunk at monotonic time ``at``."""

    at: float
    size: int


@dataclass(frozen=True)
class ChunkPlan:
    """What to do with one chunk: deliveries in order, then maybe an action.

    Attributes:
        deliveries: the slices to send, in byte order, with their times.
        dropped: bytes of the chunk that are never forwarded (past a limit).
        action: :data:`RESET`, :data:`CLOSE` or :data:`STALL` to carry out at
            ``action_at``, after the deliveries; ``None`` for none.
        action_at: when to carry out ``action``.
        action_note: the transcript note for the action ("reset after 1000 bytes c->s").
        notes: the decisions taken for the chunk, for the transcript.
    """

    deliveries: tuple[Delivery, ...] = ()
    dropped: int = 0
    action: str | None = None
    action_at: float = 0.0
    action_note: str = ""
    notes: tuple[str, ...] = ()


class FaultSchedule:
    """Plan the deliveries of one direction of one connection, chunk by chunk.

    The schedule remembers what it planned before (bytes counted against the
    limits, when the link is next free), so it must see every chunk of the
    direction in order. It draws from ``rng`` only for jitter, once per chunk,
    so the same seed and the same chunks give the same plans.

    Example::

        schedule = FaultSchedule(TCPFaults(slice_size=2, reset_after=3), random.Random(1), "c->s")
        plan = schedule.plan(size=5, arrival=0.0)
        [d.size for d in plan.deliveries], plan.action, plan.dropped   # ([2, 1], 'reset', 2)
    """

    def __init__(self, faults: TCPFaults, rng: random.Random, direction: str) -> None:
        self.faults = faults
        self.direction = direction
        self._rng = rng
        self.planned = 0  # bytes given a delivery so far
        self.stalled = False
        self.ended = False  # a reset or close was planned; nothing more is delivered
        self._last_at: float | None = None  # time of the latest delivery planned
        self._next_free = 0.0  # earliest time the next delivery may start

    def start(self, now: float) -> ChunkPlan:
        """Plan what happens before any byte: a limit of 0 acts on connect."""
        action, remaining = self._nearest_limit()
        if action is None or remaining > 0:
            return ChunkPlan()
        return self._reach_limit(action, now, ChunkPlan())

    def plan(self, size: int, arrival: float) -> ChunkPlan:
        """Plan the delivery of a chunk of ``size`` bytes read at ``arrival``."""
        if self.ended:
            return ChunkPlan(dropped=size)
        if self.stalled:
            return ChunkPlan(dropped=size, notes=(f"stalled: dropped {size} bytes",))
        faults = self.faults
        action, remaining = self._nearest_limit()
        take = size if action is None else min(size, remaining)
        delay = faults.latency
        if faults.jitter:
            delay += self._rng.uniform(-faults.jitter, faults.jitter)
        delay = max(0.0, delay)
        deliveries = []
        for piece in self._pieces(take):
            at = max(arrival + delay, self._next_free)
            deliveries.append(Delivery(at, piece))
            self._last_at = at
            transfer = piece / faults.bandwidth if faults.bandwidth else 0.0
            self._next_free = at + transfer + faults.slice_pause
        self.planned += take
        notes = self._describe(size, delay, deliveries)
        if take < size:
            notes += (f"dropped {size - take} bytes past the {action} limit",)
        plan = ChunkPlan(deliveries=tuple(deliveries), dropped=size - take, notes=notes)
        if action is not None and take == remaining:
            return self._reach_limit(action, self._last_at if self._last_at is not None else arrival, plan)
        return plan

    def eof_at(self, arrival: float) -> float | None:
        """When to pass on an EOF read at ``arrival``: after the data, or ``None`` if swallowed."""
        if self.stalled or self.ended:
            return None
        after_data = self._last_at if self._last_at is not None else arrival
        return max(arrival + self.faults.latency, after_data)

    def _nearest_limit(self) -> tuple[str | None, int]:
        """The first limit still ahead and the bytes left before it (reset wins ties)."""
        nearest: tuple[str | None, int] = (None, 0)
        for action, limit in ((RESET, self.faults.reset_after), (CLOSE, self.faults.close_after), (STALL, self.faults.stall_after)):
            if limit is None or limit < self.planned:
                continue
            if nearest[0] is None or limit - self.planned < nearest[1]:
                nearest = (action, limit - self.planned)
        return nearest

    def _reach_limit(self, action: str, at: float, plan: ChunkPlan) -> ChunkPlan:
        if action == STALL:
            self.stalled = True
        else:
            self.ended = True
        note = f"{action} after {self.planned} bytes {self.direction}"
        return ChunkPlan(plan.deliveries, plan.dropped, action, at, note, plan.notes)

    def _pieces(self, size: int) -> list[int]:
        """Split ``size`` bytes into the writes the slicing and bandwidth faults allow."""
        largest = size
        if self.faults.slice_size is not None:
            largest = min(largest, self.faults.slice_size)
        if self.faults.bandwidth is not None:
            largest = min(largest, max(1, int(self.faults.bandwidth * _BANDWIDTH_TICK)))
        if largest <= 0:
            return []
        full, rest = divmod(size, largest)
        return [largest] * full + ([rest] if rest else [])

    def _describe(self, size: int, delay: float, deliveries: list[Delivery]) -> tuple[str, ...]:
        faults = self.faults
        parts = []
        if faults.latency or faults.jitter:
            parts.append(f"delay {delay:.4f} s")
        if faults.slice_size is not None:
            parts.append(f"slice {faults.slice_size} byte{'s' if faults.slice_size != 1 else ''}, pause {faults.slice_pause:g} s")
        elif faults.slice_pause:
            parts.append(f"pause {faults.slice_pause:g} s")
        if faults.bandwidth is not None:
            parts.append(f"bandwidth {faults.bandwidth} B/s")
        if not parts:
            return ()
        return (f"{size} bytes in {len(deliveries)} write{'s' if len(deliveries) != 1 else ''}: " + ", ".join(parts),)
