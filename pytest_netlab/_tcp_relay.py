"""One connection through the TCP fault proxy: its two sockets and the threads that pump bytes.

This module owns moving bytes between one client and the upstream server:
passing EOFs (half-close) and RSTs through faithfully, carrying out the plans
of the fault model, recording everything in the transcript, and tearing the
connection down so that no thread or socket outlives it. It must not decide
faults (:mod:`pytest_netlab._tcp_faults` does) nor accept connections
(:mod:`pytest_netlab.tcp_proxy` does).

A connection runs one of two pumps, chosen when it is accepted:

- the fast pump, when neither direction has a fault: one thread per direction
  blocking in ``recv_into`` on a preallocated buffer, then ``sendall``. This
  is as fast as a relay gets in Python (``bench/bench_tcp_proxy.py`` compares it
  with socat). A thread blocked in ``recv`` is woken for teardown with
  ``shutdown(SHUT_RD)``, which puts nothing on the wire.
- the careful pump, when any fault is set: one thread per direction polling
  its source, its destination (only while a send would block) and a wake-up
  pipe, with a timeout to the next due delivery. It reads eagerly and
  timestamps each chunk so latency is a delay line, not a per-read sleep;
  sends never block, so a reset or ``close()`` is never stuck behind a peer
  that stopped reading.

Teardown is shared: whoever ends the connection sets ``_ending`` once and
wakes the other thread; the last thread out closes both sockets, with
``SO_LINGER`` 0 when ending in a reset so that the close sends an RST.
"""

from __future__ import annotations

import math
import os
import random
import select
import socket
import struct
import threading
import time
from collections import deque
from typing import Callable, Union

from pytest_netlab._tcp_faults import CLOSE, RESET, STALL, ChunkPlan, FaultSchedule, TCPFaults
from pytest_netlab.transcript import CLIENT_TO_SERVER, SERVER_TO_CLIENT, Transcript

try:  # SIOCOUTQ: bytes sent but not yet acknowledged; Linux names it TIOCOUTQ.
    import fcntl
    import termios

    _SIOCOUTQ: int | None = termios.TIOCOUTQ
except (ImportError, AttributeError):  # pragma: no cover - elsewhere resets do not wait for the data to leave
    _SIOCOUTQ = None

__all__ = ["RelayedConnection", "ABORT"]

Address = Union[tuple[str, int], tuple[str, int, int, int]]

#: The proxy is closing: end the connection with an ordinary close.
ABORT = "abort"

# 256 KiB, like socat -b 262144: larger reads cost the same per call and
# halve the calls at bulk rates; smaller ones lose throughput (measured).
_FAST_BUFFER = 256 * 1024
# The careful pump reads chunks this large; their bytes stay alive until delivered.
_CAREFUL_READ = 64 * 1024
# Stop reading a source while this much is waiting to be delivered, so a slow
# (bandwidth-limited) direction pushes back on the sender instead of buffering it all.
_MAX_QUEUED = 4 * 1024 * 1024
# Every poll is bounded, so a thread notices the end of its connection even without a wake-up.
_LONGEST_POLL = 0.25
# Before a fault resets the connection, wait this long for the bytes it let
# through to be acknowledged: an RST discards whatever is still queued.
_FLUSH_TIMEOUT = 1.0
# At most this many reads of bytes already queued, taken without waiting: before an
# orderly close (unread bytes would turn the close into an RST), and from an upstream
# that reset before connect() returned.
_DRAIN_READS = 64

_LINGER_ZERO = struct.pack("ii", 1, 0)
_PEER = {CLIENT_TO_SERVER: "client", SERVER_TO_CLIENT: "upstream"}  # who sends in a direction
_OPPOSITE = {CLIENT_TO_SERVER: SERVER_TO_CLIENT, SERVER_TO_CLIENT: CLIENT_TO_SERVER}
_END_NOTES = {None: "both sides closed", RESET: "reset", CLOSE: "closed by fault", ABORT: "closed by the proxy"}


class _Due:
    """An item in the careful pump's delay line: data, an EOF or a fault action, due at ``at``."""

    __slots__ = ("at", "kind", "payload", "note")

    def __init__(self, at: float, kind: str, payload: memoryview | None = None, note: str = "") -> None:
        self.at = at
        self.kind = kind
        self.payload = payload
        self.note = note


class RelayedConnection:
    """Relay one accepted client to the upstream server until either side or the proxy ends it.

    Private to the proxy. ``moved`` counts bytes delivered per direction;
    ``on_finished`` is called once, from the last thread, after both sockets
    are closed.
    """

    def __init__(
        self,
        label: str,
        client: socket.socket,
        client_address: Address,
        upstream_address: Address,
        faults: dict[str, TCPFaults],
        seed: int,
        transcript: Transcript,
        record_data: bool,
        connect_timeout: float,
        on_finished: Callable[[RelayedConnection], None],
    ) -> None:
        self.label = label
        self.client = client
        self._client_address = client_address
        self.upstream: socket.socket | None = None
        self.moved = {CLIENT_TO_SERVER: 0, SERVER_TO_CLIENT: 0}
        self.failure: BaseException | None = None
        self._upstream_address = upstream_address
        self._faults = faults
        self._seed = seed
        self._transcript = transcript
        self._record_data = record_data
        self._connect_timeout = connect_timeout
        self._on_finished = on_finished
        self._careful = any(f.active for f in faults.values())
        self._wake_reader, self._wake_writer = os.pipe() if self._careful else (-1, -1)
        self._lock = threading.Lock()
        self._in_order = threading.Lock()  # a send and its record, as one step (see _send_and_record)
        self._ending: str | None = None
        self._running = 0
        self._finished = False  # both sockets closed (or about to be): nothing left to wake
        self._threads: list[threading.Thread] = []

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Connect upstream and start relaying, in the connection's own threads."""
        self._spawn(self._connect_then_pump, CLIENT_TO_SERVER)

    def abort(self) -> None:
        """End the connection because the proxy is closing; returns without waiting."""
        self._end(ABORT)

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the threads; True if all of them ended."""
        deadline = time.monotonic() + timeout
        joined = 0
        while True:  # again if the first thread started the second meanwhile
            with self._lock:
                threads = list(self._threads)
            if len(threads) == joined:
                return not any(thread.is_alive() for thread in threads)
            for thread in threads[joined:]:
                thread.join(max(0.0, deadline - time.monotonic()))
            joined = len(threads)

    def _spawn(self, target: Callable[..., None], direction: str, *args: object) -> None:
        thread = threading.Thread(
            target=self._run, args=(target, direction, *args), name=f"netlab-tcp-proxy {self.label} {direction}", daemon=True
        )
        with self._lock:
            self._threads.append(thread)
            self._running += 1
        thread.start()

    def _run(self, target: Callable[..., None], *args: object) -> None:
        try:
            target(*args)
        except BaseException as exc:  # our bug, not the peers': keep it for close() to raise
            self.failure = exc
            self._record("", "note", note=f"relay failed: {exc!r}")
            self._end(RESET)
        finally:
            self._leave()

    def _leave(self) -> None:
        with self._lock:
            self._running -= 1
            if self._running:
                return
            self._finished = True
        self._close_sockets()
        self._on_finished(self)

    def _close_sockets(self) -> None:
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            if self._ending == CLOSE:
                _read_queued(sock)  # and throw it away: closing with unread bytes would send an RST
            sock.close()
        if self._careful:
            os.close(self._wake_reader)
            os.close(self._wake_writer)
        self._record("", "close", note=_END_NOTES[self._ending])

    def _end(self, mode: str, *records: tuple[str, str, str]) -> bool:
        """End the connection once (reset, close or abort); False if it was already ending.

        ``records`` are ``(direction, kind, note)`` events saying why; they are
        recorded before any peer can see the end, so a test that saw it finds
        them in the transcript. Runs under the lock, which the last thread takes
        before closing the sockets and the wake-up pipe: nothing here touches a
        closed descriptor.
        """
        with self._lock:
            if self._ending is not None or self._finished:
                return False
            self._ending = mode
            for direction, kind, note in records:
                self._record(direction, kind, note=note)
            sockets = [sock for sock in (self.client, self.upstream) if sock is not None]
            for sock in sockets:
                try:
                    if mode == RESET:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
                    elif mode == CLOSE:
                        sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass  # already reset by its peer: nothing more to send it
            if self._careful:
                os.write(self._wake_writer, b"!")
            else:
                for sock in sockets:
                    _wake_fast_pump(sock, mode)
            return True

    # -- connecting and passing on EOF and RST ---------------------------------------------

    def _connect_then_pump(self, direction: str) -> None:
        host, port = self._upstream_address[:2]
        try:
            upstream, early_reply = _connect(self._upstream_address, self._connect_timeout)
        except OSError as exc:
            self._end(
                RESET,
                (SERVER_TO_CLIENT, "fault", f"upstream {host}:{port} unreachable ({exc})"),
                (SERVER_TO_CLIENT, "reset", "RST sent to the client"),
            )
            return
        with self._lock:
            if self._ending is not None:
                upstream.close()
                return
            self.upstream = upstream
        client_host, client_port = self._client_address[:2]
        self._record("", "connect", note=f"client {client_host}:{client_port} -> upstream {host}:{port}")
        if early_reply is not None:
            self._pass_early_reset(early_reply)
            return
        pump = self._pump_careful if self._careful else self._pump_fast
        self._spawn(pump, SERVER_TO_CLIENT, upstream, self.client)
        pump(direction, self.client, upstream)

    def _pass_eof(self, direction: str, dst: socket.socket) -> None:
        if self._ending is not None:
            return  # woken for teardown, not a real EOF
        # Recorded first: the reply this EOF lets the server send must not appear before it.
        self._record(direction, "eof")
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._pass_reset(_OPPOSITE[direction], exc)

    def _pass_reset(self, direction: str, exc: OSError) -> None:
        """The sender in ``direction`` reset (or vanished): reset the other side too."""
        sender, receiver = _PEER[direction], _PEER[_OPPOSITE[direction]]
        reason = exc.strerror or type(exc).__name__
        self._end(RESET, (direction, "reset", f"{sender} reset ({reason}); RST passed to the {receiver}"))

    def _pass_early_reset(self, reply: bytes) -> None:
        """The upstream wrote ``reply`` and reset before connect() returned: pass both on."""
        if reply:
            self.moved[SERVER_TO_CLIENT] += len(reply)
            if self._record_data:
                self._record(SERVER_TO_CLIENT, "data", reply)
            try:
                self.client.settimeout(self._connect_timeout)  # the only use of the client socket yet
                self.client.sendall(reply)
            except OSError:
                pass  # the client is gone too: the RST below still ends it
        self._end(RESET, (SERVER_TO_CLIENT, "reset", "upstream reset right after accepting; RST passed to the client"))

    # -- the fast pump -------------------------------------------------------------------

    def _pump_fast(self, direction: str, src: socket.socket, dst: socket.socket) -> None:
        buffer = bytearray(_FAST_BUFFER)
        view = memoryview(buffer)
        recv_into, send, sendall = src.recv_into, dst.send, dst.sendall
        record = self._transcript.record if self._record_data else None
        in_order, moved, label = self._in_order, self.moved, self.label
        while True:
            try:
                size = recv_into(buffer)
            except OSError as exc:
                self._pass_reset(direction, exc)
                return
            if not size:
                break
            try:
                if record is None:
                    sendall(view[:size])
                else:
                    # Send first and record after, off the round trip's critical path; the lock
                    # keeps the other thread from recording the reply before this is recorded.
                    # Only the part the kernel takes at once is sent under it, so it never blocks.
                    with in_order:
                        try:
                            sent = send(view[:size], socket.MSG_DONTWAIT)
                        except BlockingIOError:
                            sent = 0
                        record(direction, "data", bytes(view[:size]), stream=label)
                    if sent < size:
                        sendall(view[sent:size])
            except OSError as exc:
                self._pass_reset(_OPPOSITE[direction], exc)
                return
            moved[direction] += size
        self._pass_eof(direction, dst)

    # -- the careful pump -----------------------------------------------------------------

    def _pump_careful(self, direction: str, src: socket.socket, dst: socket.socket) -> None:
        rng = random.Random(f"{self._seed}/{self.label}/{direction}")
        schedule = FaultSchedule(self._faults[direction], rng, direction)
        line: deque[_Due] = deque()
        queued = self._enqueue(direction, line, schedule.start(time.monotonic()), memoryview(b""))
        poller = select.poll()
        poller.register(self._wake_reader, select.POLLIN)
        reading, watching_src, watching_dst = True, False, False
        while self._ending is None:
            now = time.monotonic()
            blocked = False
            while line and line[0].at <= now and self._ending is None:
                due = line[0]
                if due.kind == "data":
                    assert due.payload is not None
                    try:
                        sent = self._send_and_record(direction, dst, due.payload)
                    except BlockingIOError:
                        blocked = True
                        break
                    except OSError as exc:
                        self._pass_reset(_OPPOSITE[direction], exc)
                        return
                    queued -= sent
                    if sent < len(due.payload):
                        due.payload = due.payload[sent:]
                        blocked = True
                        break
                    line.popleft()
                elif due.kind == "eof":
                    self._pass_eof(direction, dst)
                    return  # this direction is finished; the other one may go on
                else:
                    line.popleft()
                    self._act(direction, dst, due)
            if self._ending is not None:
                return
            want_src = reading and queued < _MAX_QUEUED
            if want_src != watching_src:
                if want_src:
                    poller.register(src, select.POLLIN)
                else:
                    poller.unregister(src)
                watching_src = want_src
            if blocked != watching_dst:
                if blocked:
                    poller.register(dst, select.POLLOUT)
                else:
                    poller.unregister(dst)
                watching_dst = blocked
            wait = _LONGEST_POLL if blocked or not line else min(_LONGEST_POLL, line[0].at - now)
            # Round up: a delivery must never come early, or "latency" would be less than asked.
            for fd, _ in poller.poll(max(0, math.ceil(wait * 1000))):
                if fd != src.fileno():
                    continue
                try:
                    data = src.recv(_CAREFUL_READ, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    self._pass_reset(direction, exc)
                    return
                arrival = time.monotonic()
                if data:
                    queued += self._enqueue(direction, line, schedule.plan(len(data), arrival), memoryview(data))
                    continue
                reading = False
                eof_at = schedule.eof_at(arrival)
                if eof_at is None:
                    self._record(direction, "fault", note="stalled: EOF not passed on")
                else:
                    line.append(_Due(eof_at, "eof"))

    def _enqueue(self, direction: str, line: deque[_Due], plan: ChunkPlan, payload: memoryview) -> int:
        """Put a plan's deliveries and action on the delay line; return the bytes queued."""
        for note in plan.notes:
            self._record(direction, "fault", note=note)
        offset = 0
        for delivery in plan.deliveries:
            line.append(_Due(delivery.at, "data", payload[offset : offset + delivery.size]))
            offset += delivery.size
        if plan.action is not None:
            line.append(_Due(plan.action_at, plan.action, note=plan.action_note))
        return offset

    def _act(self, direction: str, dst: socket.socket, due: _Due) -> None:
        """Carry out a byte limit's action: stall this direction, or reset or close both sides."""
        if due.kind == STALL:
            self._record(direction, "fault", note=f"{due.note}: forwarding nothing more {direction}")
            return
        if due.kind == RESET:
            self._wait_flushed(dst)
        kind, sent = ("reset", "RST") if due.kind == RESET else ("eof", "FIN")
        self._end(
            due.kind,
            (direction, "fault", due.note),
            (CLIENT_TO_SERVER, kind, f"{sent} sent to the upstream"),
            (SERVER_TO_CLIENT, kind, f"{sent} sent to the client"),
        )

    def _wait_flushed(self, sock: socket.socket) -> None:
        """Wait (bounded) until the peer has acknowledged every byte sent on ``sock``."""
        deadline = time.monotonic() + _FLUSH_TIMEOUT
        while self._ending is None and _unacknowledged(sock) and time.monotonic() < deadline:
            select.select([self._wake_reader], [], [], 0.001)

    def _send_and_record(self, direction: str, dst: socket.socket, payload: memoryview) -> int:
        """Send what ``dst`` takes now and record it; return the bytes sent.

        The send never blocks, so holding ``_in_order`` across it is safe; it
        keeps the transcript causal: the other direction cannot record a reply
        to these bytes before they are recorded.
        """
        with self._in_order:
            sent = dst.send(payload, socket.MSG_DONTWAIT)
            self.moved[direction] += sent
            if self._record_data:
                self._record(direction, "data", bytes(payload[:sent]))
        return sent

    def _record(self, direction: str, kind: str, data: bytes = b"", note: str = "") -> None:
        self._transcript.record(direction, kind, data, note=note, stream=self.label)


def _connect(address: Address, timeout: float) -> tuple[socket.socket, bytes | None]:
    """Connect to the upstream; return the socket and, if it already reset, what it sent first.

    The connect blocks, bounded by ``SO_SNDTIMEO``: on loopback it then
    completes inside the call. A timeout socket would poll and read
    ``SO_ERROR`` afterwards, and a server that writes and dies at once would
    make that ECONNRESET although the connection was made. Should that still
    happen, the bytes the server sent are queued on the socket: read them, so
    the client gets them and then the RST.
    """
    host, port = address[:2]
    family, kind, proto, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(timeout))
        try:
            sock.connect(sockaddr)
        except BlockingIOError as exc:  # EINPROGRESS: SO_SNDTIMEO expired
            raise TimeoutError(f"no answer within {timeout} s") from exc
        except ConnectionResetError:
            return sock, _read_queued(sock)
        # Back to no send timeout: the fast pump's sendall must block until sent or woken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(0))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock, None


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1_000_000))


def _read_queued(sock: socket.socket) -> bytes:
    """Read what is queued on ``sock`` without waiting (at most _DRAIN_READS reads)."""
    chunks = []
    for _ in range(_DRAIN_READS):
        try:
            chunk = sock.recv(_CAREFUL_READ, socket.MSG_DONTWAIT)
        except OSError:  # nothing more queued (BlockingIOError), or the reset itself
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _wake_fast_pump(sock: socket.socket, mode: str) -> None:
    """Get a fast-pump thread off ``sock`` without sending a FIN where the end is a reset.

    ``SHUT_RD`` wakes a blocked ``recv`` and sends nothing. A blocked
    ``sendall`` only wakes on ``SHUT_WR``; for a reset that is done only when
    bytes are queued, where the FIN waits behind them and the RST that
    follows discards both.
    """
    try:
        if mode == ABORT:
            sock.shutdown(socket.SHUT_RDWR)
            return
        sock.shutdown(socket.SHUT_RD)
        if _unacknowledged(sock):
            sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # not connected any more: no thread can be blocked on it


def _unacknowledged(sock: socket.socket) -> int:
    if _SIOCOUTQ is None:
        return 0
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0"))[0])
    except OSError:
        return 0


