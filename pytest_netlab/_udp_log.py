"""The lossy UDP proxy's log: every datagram with its decision, in the transcript, and the counters.

This module owns how the proxy logs: datagrams that went through the fault
model are recorded at once (the proxy holds its lock), while those of the
fast path (no faults in their direction, forwarded first) are only appended
as raw tuples, without a lock, and become transcript events, decisions and
counts when someone reads: the transcript (through its flush hook), the
stats, the decisions. It must not touch sockets, read a clock or decide
anything.

Why lazy: logging a datagram at once (a frozen
:class:`~pytest_netlab.transcript.Event` built, the proxy's lock taken)
cost 2.3-3 us, twice per round trip and most of the proxy's own work on it;
appending a tuple costs 0.3 us.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from operator import itemgetter
from typing import Callable

from pytest_netlab._udp_flows import DirectionStats, ProxyStats
from pytest_netlab.transcript import CLIENT_TO_SERVER, SERVER_TO_CLIENT, Event, Transcript
from pytest_netlab.udp_faults import DELIVER, Decision

__all__ = ["FastEntry", "ProxyLog"]

# Fast entries and decisions both start with their time.
_receive_time = itemgetter(0)

#: A datagram the fast path forwarded: ``(receive time, direction, payload, stream)``.
FastEntry = tuple[float, str, bytes, str]


class ProxyLog:
    """Every datagram the proxy saw, with its decision, in the transcript; and the counters.

    :meth:`datagram`, :meth:`failed_send`, :meth:`discard_in_flight` and the
    ``stats`` counters are for the proxy's threads holding the proxy's lock.
    :meth:`client_refused` and :meth:`upstream_refused` only record, from
    any thread. ``fast_append`` takes a :data:`FastEntry` from any thread, with no lock:
    :meth:`absorb` turns those into events later, under a lock of its own
    that guards nothing else (so a transcript read never waits for the
    proxy's lock, whoever holds it).

    Example::

        log = ProxyLog(transcript)
        log.datagram(CLIENT_TO_SERVER, b"ping", DELIVER, "127.0.0.1:40312", at=now)
        log.fast_append((now, SERVER_TO_CLIENT, b"pong", "127.0.0.1:40312"))
        log.snapshot().server_to_client.delivered   # 1
        log.close()
    """

    def __init__(self, transcript: Transcript) -> None:
        self._transcript = transcript
        self.record = transcript.record
        self.stats = {CLIENT_TO_SERVER: DirectionStats(), SERVER_TO_CLIENT: DirectionStats()}
        # (event, decision) pairs: one list, so that one append keeps each pair whole.
        self._decided: list[tuple[Event, Decision]] = []
        self._fast: list[FastEntry] = []
        self.fast_append: Callable[[FastEntry], None] = self._fast.append
        # Datagrams of the fast path absorbed so far, per direction (all seen and delivered).
        self._fast_counts = {CLIENT_TO_SERVER: 0, SERVER_TO_CLIENT: 0}
        self._absorbing = threading.Lock()
        transcript.attach(self.absorb)

    def datagram(self, direction: str, data: bytes, decision: Decision, stream: str, at: float | None) -> None:
        """Record one datagram and its decision (``at``: its receive time), and count it as seen."""
        self._decided.append((self.record(direction, "data", data, decision.describe(), stream, at), decision))
        self.stats[direction].seen += 1

    def failed_send(self, direction: str, stream: str, failure: OSError) -> None:
        """A datagram the model let through but the kernel refused: logged, and counted as dropped."""
        self.stats[direction].dropped += 1
        self.record(direction, "fault", note=f"send failed: {failure}", stream=stream)

    def client_refused(self, stream: str, failure: OSError) -> None:
        """An ICMP "port unreachable" from a client: a reply found its socket closed."""
        note = f"client refused a datagram ({failure.strerror or failure}): nothing listens at its address now"
        self.record(SERVER_TO_CLIENT, "note", note=note, stream=stream)

    def upstream_refused(self, stream: str, upstream: object, failure: OSError) -> None:
        """An ICMP "port unreachable" from the server: nothing listens at its address."""
        self.record(SERVER_TO_CLIENT, "fault", note=f"upstream {upstream}: {failure.strerror or failure}", stream=stream)

    def absorb(self) -> None:
        """Turn the fast path's entries into events (merged into the transcript in time order) and counts."""
        with self._absorbing:
            fast = self._fast
            count = len(fast)
            if not count:
                return
            # Other threads append at the end meanwhile: take the first ``count`` and leave theirs.
            entries = fast[:count]
            del fast[:count]
            entries.sort(key=_receive_time)  # two threads append, each in its own order
            start = self._transcript.start
            events = [Event(at - start, direction, "data", data, "delivered", stream) for at, direction, data, stream in entries]
            self._transcript.merge(events)
            self._decided.extend([(event, DELIVER) for event in events])
            counts = self._fast_counts
            for event in events:
                counts[event.direction] += 1

    def snapshot(self) -> ProxyStats:
        """A copy of the counters of both directions."""
        self.absorb()
        with self._absorbing:
            c2s, s2c = (
                _plus_delivered(self.stats[direction], self._fast_counts[direction])
                for direction in (CLIENT_TO_SERVER, SERVER_TO_CLIENT)
            )
        return ProxyStats(c2s, s2c)

    def decided(self) -> list[tuple[float, str, Decision]]:
        """Every decision as ``(t, direction, decision)``, in time order."""
        self.absorb()
        decided = [(event.t, event.direction, decision) for event, decision in list(self._decided)]
        decided.sort(key=_receive_time)
        return decided

    def discard_in_flight(self) -> None:
        """At close: datagrams still waiting to go out are dropped, and the transcript says so."""
        for direction, stats in self.stats.items():
            if stats.in_flight:
                self.record(direction, "fault", note=f"discarded {stats.in_flight} datagram(s) in flight at close")
                stats.dropped += stats.in_flight

    def close(self) -> None:
        """Absorb what is left and stop hooking the transcript's reads (call once nothing logs any more)."""
        self.absorb()
        self._transcript.detach(self.absorb)


def _plus_delivered(stats: DirectionStats, count: int) -> DirectionStats:
    return replace(stats, seen=stats.seen + count, delivered=stats.delivered + count)
