"""Transcripts: the timed record of what crossed the wire during a check.

This module owns the event model shared by everything that talks to a target
(scripted clients, the TCP fault proxy, the lossy UDP proxy) and its rendering
into the short excerpts that failure messages quote. It must not do any I/O:
recorders append events, checks read them, renderers format them.

Times are seconds since the transcript started (``time.monotonic`` based), so
excerpts read ``t=0.000``, ``t=0.004`` whatever the wall clock says.

A recorder on a hot path (the lossy UDP proxy) may log lazily: it registers
a flush callback with :meth:`~Transcript.attach`, every read runs it first,
and it brings the events in with :meth:`~Transcript.merge`, each at its
place in time among what the other recorders appended meanwhile.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

__all__ = ["Event", "Transcript", "CLIENT_TO_SERVER", "SERVER_TO_CLIENT", "format_bytes"]

CLIENT_TO_SERVER = "c->s"
SERVER_TO_CLIENT = "s->c"

#: The kinds of event a transcript holds.
#: data: bytes moved; eof: a FIN / orderly shutdown seen or sent; reset: an RST;
#: connect / close: socket lifecycle; fault: a proxy decision; note: free text.
EVENT_KINDS = ("data", "eof", "reset", "connect", "close", "fault", "timeout", "note")
_KINDS = frozenset(EVENT_KINDS)

# Long payloads are cut in excerpts: a 4 MiB echo must not become a 4 MiB message.
_EXCERPT_BYTES = 48


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened on the wire.

    Attributes:
        t: seconds since the transcript began.
        direction: ``"c->s"``, ``"s->c"`` or ``""`` for events without one.
        kind: one of :data:`EVENT_KINDS`.
        data: the bytes moved, for ``data`` events.
        note: free text (a proxy's decision, a connection label, an error).
        stream: which connection or flow this belongs to (``"conn1"``...).
    """

    t: float
    direction: str
    kind: str
    data: bytes = b""
    note: str = ""
    stream: str = ""

    def render(self) -> str:
        """Render the event as one excerpt item: ``c->s b'GET' (t=0.004)``."""
        where = f"[{self.stream}] " if self.stream else ""
        arrow = f"{self.direction} " if self.direction else ""
        if self.kind == "data":
            body = format_bytes(self.data)
        elif self.kind in ("eof", "reset"):
            body = {"eof": "<EOF>", "reset": "<RST>"}[self.kind]
        else:
            body = f"<{self.kind}>"
        if self.note:
            body = f"{body} {self.note}"
        return f"{where}{arrow}{body} (t={self.t:.3f})"


def format_bytes(data: bytes, limit: int = _EXCERPT_BYTES) -> str:
    """Show bytes as a Python literal, cut in the middle when longer than ``limit``.

    >>> format_bytes(b"x" * 100, limit=10)
    "b'xxxxx'...<90 more bytes>...b'xxxxx'"  # doctest: +SKIP
    """
    if len(data) <= limit:
        return repr(data)
    half = limit // 2
    hidden = len(data) - 2 * half
    return f"{data[:half]!r}...<{hidden} more bytes>...{data[-half:]!r}"


class Transcript:
    """An append-only list of :class:`Event`, safe to record into from several threads.

    Example::

        t = Transcript()
        t.record(CLIENT_TO_SERVER, "data", b"hello")
        t.record(SERVER_TO_CLIENT, "eof")
        print(t.excerpt())   # c->s b'hello' (t=0.000) ... s->c <EOF> (t=0.001)
    """

    def __init__(self, clock_start: float | None = None) -> None:
        self._start = time.monotonic() if clock_start is None else clock_start
        self._events: list[Event] = []
        # Lazy recorders' callbacks, run before every read (see attach).
        self._flushes: list[Callable[[], None]] = []
        # Serialises merges (record only appends, which the GIL keeps atomic).
        self._merging = threading.Lock()

    @property
    def start(self) -> float:
        """The monotonic time that ``t=0`` stands for."""
        return self._start

    def now(self) -> float:
        """Seconds since the transcript began."""
        return time.monotonic() - self._start

    def record(
        self,
        direction: str,
        kind: str,
        data: bytes = b"",
        note: str = "",
        stream: str = "",
        at: float | None = None,
    ) -> Event:
        """Append an event and return it.

        Args:
            at: the ``time.monotonic()`` when it happened, for a recorder that
                takes the time on the hot path and logs later (a proxy logs
                after forwarding); None means now.
        """
        if kind not in _KINDS:
            raise ValueError(f"unknown event kind {kind!r}; known: {', '.join(EVENT_KINDS)}")
        t = (time.monotonic() if at is None else at) - self._start
        event = Event(t, direction, kind, data if type(data) is bytes else bytes(data), note, stream)
        # list.append is atomic under the GIL; the lock only guards snapshots
        # against a concurrent append (see events).
        self._events.append(event)
        return event

    def attach(self, flush: Callable[[], None]) -> None:
        """Run ``flush()`` before every read, for a recorder that keeps its events back until then.

        ``flush`` runs in the reader's thread: it must add what it kept with
        :meth:`merge`, must not read the transcript, and must take only locks
        of its own, which no reader holds while it reads.
        """
        self._flushes.append(flush)

    def detach(self, flush: Callable[[], None]) -> None:
        """Stop calling ``flush`` (after its recorder flushed for the last time)."""
        if flush in self._flushes:
            self._flushes.remove(flush)

    def merge(self, events: Sequence[Event]) -> None:
        """Add events that happened earlier, in time order, each after the last event not later than it."""
        with self._merging:
            log = self._events
            for event in events:
                position = len(log)
                # Lazy events are recent: the walk back from the end is short.
                while position and log[position - 1].t > event.t:
                    position -= 1
                log.insert(position, event)

    def _flush(self) -> None:
        for flush in tuple(self._flushes):
            flush()

    @property
    def events(self) -> list[Event]:
        """A snapshot of the events so far (list() of a list is atomic under the GIL)."""
        if self._flushes:
            self._flush()
        return list(self._events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __len__(self) -> int:
        if self._flushes:
            self._flush()
        return len(self._events)

    def received(self, direction: str = SERVER_TO_CLIENT, stream: str | None = None) -> bytes:
        """All data bytes moved in ``direction`` (optionally on one stream), joined."""
        return b"".join(
            e.data
            for e in self.events
            if e.kind == "data" and e.direction == direction and (stream is None or e.stream == stream)
        )

    def excerpt(self, last: int = 8, merge: bool = True) -> str:
        """Render the last ``last`` events as one line separated by two spaces.

        Consecutive data events in the same direction and stream are merged
        first (``merge``), so a 1-byte-at-a-time exchange stays readable.
        """
        events = _merge_data(self.events) if merge else self.events
        shown = events[-last:] if last else events
        prefix = "... " if len(events) > len(shown) else ""
        return prefix + "  ".join(e.render() for e in shown)

    def lines(self, last: int = 40, merge: bool = True) -> list[str]:
        """Render up to ``last`` events, one per line (for ladders and reports)."""
        events = _merge_data(self.events) if merge else self.events
        return [e.render() for e in events[-last:]]


def _merge_data(events: list[Event]) -> list[Event]:
    merged: list[Event] = []
    for event in events:
        previous = merged[-1] if merged else None
        if (
            previous is not None
            and event.kind == "data"
            and previous.kind == "data"
            and previous.direction == event.direction
            and previous.stream == event.stream
            and not previous.note
            and not event.note
        ):
            # Keep the first timestamp: it says when the run of bytes began.
            merged[-1] = Event(previous.t, previous.direction, "data", previous.data + event.data, "", previous.stream)
        else:
            merged.append(event)
    return merged
