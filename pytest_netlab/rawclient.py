"""Scripted raw TCP clients: exact bytes, exact splits, bounded waits, a transcript.

A conformance check must send the bytes a buggy peer would send (half a
question, one byte at a time, then a reset), which high-level clients hide.
:class:`ScriptedClient` does exactly what it is told, records every event
into a :class:`~pytest_netlab.transcript.Transcript`, and bounds every wait.
When the target does not do what a read waits for, the read raises a
:class:`~pytest_netlab.errors.ProtocolViolation` that already says what was
expected and what came instead, so a check can simply let it propagate.

This module must not know any protocol; checks say what to send and expect.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Callable, Iterable

from .errors import ProtocolViolation
from .stall import StallWatch
from .transcript import CLIENT_TO_SERVER, SERVER_TO_CLIENT, Transcript, format_bytes

__all__ = ["ScriptedClient", "ReceiveTimeout", "ClosedEarly", "ConnectFailed"]

_RECV_SIZE = 65536
# At most this many reads (4 MiB) of leftovers before an orderly close.
_DRAIN_READS = 64
# With a stall watch, a read wakes this often (seconds) to ask it whether the target has stalled.
_STALL_POLL = 0.01
# The longest send_chunks waits for the target to digest a piece (it may never sleep: a poller).
_DIGEST_LIMIT = 0.1


class ReceiveTimeout(ProtocolViolation):
    """The target sent nothing (more) within the time a read allowed."""


class ClosedEarly(ProtocolViolation):
    """The target closed (FIN) or reset (RST) the connection before sending what was expected."""

    def __init__(self, summary: str, *, how: str, **fields: str) -> None:
        super().__init__(summary, **fields)
        self.how = how


class ConnectFailed(ProtocolViolation):
    """The target refused or did not accept a connection."""


def _describe_got(data: bytes) -> str:
    return f"{len(data)} bytes {format_bytes(data)}" if data else "nothing"


class ScriptedClient:
    """A TCP client that does exactly what a check scripts, and records it.

    Example::

        with ScriptedClient.connect(("127.0.0.1", port), transcript=t) as c:
            c.send_chunks(b"Beautiful is better than?", size=1, pause=0.001)
            answer = c.recv_until(b".", timeout=2.0)
            c.shutdown_write()
            how = c.expect_eof(timeout=2.0)    # "eof" or "reset"

    Args:
        sock: a connected socket (it becomes ours).
        transcript: where every event is recorded.
        stream: the label of this connection in the transcript.
        timeout: the default bound of every read, in seconds.
    """

    def __init__(self, sock: socket.socket, *, transcript: Transcript, stream: str = "", timeout: float = 5.0) -> None:
        self.sock = sock
        self.transcript = transcript
        self.stream = stream
        self.timeout = timeout
        self.closed = False
        self.peer_closed: str | None = None  # "eof" or "reset" once seen
        # Set by whoever knows the target's processes (CheckContext.connect): a
        # read then ends as soon as the target provably will not send anything.
        self.stall_watch: StallWatch | None = None
        self.stalled: str | None = None  # why the last read gave up early
        # Bytes received but not yet returned: a read that needed 4 bytes of a
        # 10-byte segment leaves 6 here for the next read.
        self._pending = bytearray()

    @classmethod
    def connect(
        cls,
        address: tuple[str, int],
        *,
        transcript: Transcript,
        stream: str = "",
        timeout: float = 5.0,
        receive_buffer: int | None = None,
        source_host: str | None = None,
    ) -> "ScriptedClient":
        """Connect to ``address`` within ``timeout``.

        Args:
            receive_buffer: set SO_RCVBUF before connecting (a small window
                makes the target's sends block or come back partial).
            source_host: bind to this local address first.

        Raises:
            ConnectFailed: refused, unreachable, or not accepted in time.
        """
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if receive_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        if source_host:
            sock.bind((source_host, 0))
        sock.settimeout(timeout)
        where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        try:
            sock.connect((host, port))
        except OSError as error:
            sock.close()
            transcript.record(CLIENT_TO_SERVER, "connect", note=f"to {where} failed: {error.strerror or error}", stream=stream)
            reason = "refused" if isinstance(error, ConnectionRefusedError) else (error.strerror or str(error))
            raise ConnectFailed(
                f"could not connect to {where}: {reason}",
                expected=f"the target accepts TCP connections on {where}",
                got=f"connect() failed: {reason}",
            ) from None
        transcript.record(CLIENT_TO_SERVER, "connect", note=f"to {where}", stream=stream)
        return cls(sock, transcript=transcript, stream=stream, timeout=timeout)

    # -- sending -------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Send all of ``data`` (bounded by the client's timeout)."""
        self.sock.settimeout(self.timeout)
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise ReceiveTimeout(
                f"could not send {len(data)} bytes within {self.timeout:.1f} s: the target stopped reading",
                expected="the target keeps reading what the client sends",
                got="its receive window stayed full",
            ) from None
        except (BrokenPipeError, ConnectionResetError) as error:
            self._note_reset()
            raise ClosedEarly(
                f"the target reset the connection while the client was sending ({error.strerror})",
                how="reset",
                expected=f"the target reads the {len(data)} bytes sent",
                got="RST",
            ) from None
        self.transcript.record(CLIENT_TO_SERVER, "data", data, stream=self.stream)
        self._woke_target()

    def send_chunks(
        self, data: bytes, *, size: int | None = None, sizes: Iterable[int] | None = None, pause: float = 0.0, digest: bool = False
    ) -> None:
        """Send ``data`` in pieces: every ``size`` bytes, or at the given ``sizes``, pausing between.

        Args:
            digest: with a stall watch (a target we launched), each pause also
                lasts until the target has digested the piece (its threads ran
                and sleep again, at most :data:`_DIGEST_LIMIT` s). On a loaded
                machine a fixed pause lets pieces pile up into one read() on
                the target's side, and a split searched for to catch a framing
                bug never reaches it. It costs time on every piece, so only
                searches that depend on exact read boundaries ask for it.
        """
        if sizes is None:
            step = size or len(data) or 1
            sizes = [step] * ((len(data) + step - 1) // step)
        offset = 0
        for n in sizes:
            if offset >= len(data):
                break
            watch = self.stall_watch if digest else None
            before = watch.activity() if watch is not None else None
            self.send(data[offset : offset + n])
            offset += n
            if pause and offset < len(data):
                time.sleep(pause)
                if watch is not None:
                    watch.wait_until_digested(before, _DIGEST_LIMIT)
        if offset < len(data):
            self.send(data[offset:])

    def shutdown_write(self) -> None:
        """Half-close: send FIN, keep reading (``shutdown(SHUT_WR)``)."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # already reset by the peer; the next read says so
        self.transcript.record(CLIENT_TO_SERVER, "eof", note="shutdown(SHUT_WR)", stream=self.stream)
        self._woke_target()

    def _woke_target(self) -> None:
        # What we just sent may wake the target: its quiet period starts now.
        if self.stall_watch is not None:
            self.stall_watch.restart()

    def reset(self) -> None:
        """Abortive close: SO_LINGER 0 makes close() send RST instead of FIN."""
        if self.closed:
            return
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()
        self.closed = True
        self.transcript.record(CLIENT_TO_SERVER, "reset", note="close() with SO_LINGER 0", stream=self.stream)

    def close(self) -> None:
        """Orderly close (FIN).

        Closing a socket with unread bytes in its receive buffer makes the
        kernel send RST instead of FIN, so what has arrived is read first:
        only :meth:`reset` may reset a connection.
        """
        if not self.closed:
            self._drain()
            self.sock.close()
            self.closed = True
            self.transcript.record(CLIENT_TO_SERVER, "close", stream=self.stream)

    def _drain(self) -> None:
        if self.peer_closed is not None:
            return
        # On a TLS socket, read the raw socket: an SSL read at EOF would make
        # OpenSSL send a fatal alert, and the peer's kernel an RST.
        raw_recv = socket.socket.recv
        try:
            self.sock.setblocking(False)
            for _ in range(_DRAIN_READS):
                if not raw_recv(self.sock, _RECV_SIZE):
                    break
        except OSError:
            pass  # nothing more to read (EAGAIN), or the connection is already gone

    def __enter__(self) -> "ScriptedClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- receiving -----------------------------------------------------------

    def _note_reset(self) -> None:
        if self.peer_closed != "reset":
            self.peer_closed = "reset"
            self.transcript.record(SERVER_TO_CLIENT, "reset", stream=self.stream)

    def _recv_once(self, deadline: float, limit: int = _RECV_SIZE) -> bytes | None:
        """One recv: bytes, b"" at EOF, None at the deadline or a stall (``self.stalled`` says why).

        RST raises ConnectionResetError.
        """
        self.stalled = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            watch = self.stall_watch
            self.sock.settimeout(remaining if watch is None else min(remaining, _STALL_POLL))
            try:
                data = self.sock.recv(limit)
                break
            except TimeoutError:
                if watch is not None:
                    self.stalled = watch.check()
                    if self.stalled is None:
                        continue
                    self.transcript.record(SERVER_TO_CLIENT, "timeout", note=f"gave up early: {self.stalled}", stream=self.stream)
                return None
            except ConnectionResetError:
                self._note_reset()
                raise
        if data:
            self.transcript.record(SERVER_TO_CLIENT, "data", data, stream=self.stream)
        elif self.peer_closed is None:
            self.peer_closed = "eof"
            self.transcript.record(SERVER_TO_CLIENT, "eof", stream=self.stream)
        return data

    def recv_some(self, timeout: float | None = None, limit: int = _RECV_SIZE) -> bytes:
        """Whatever arrives first (b"" at EOF); ReceiveTimeout when nothing does."""
        if self._pending:
            pending = bytes(self._pending[:limit])
            del self._pending[:limit]
            return pending
        wait = self.timeout if timeout is None else timeout
        try:
            data = self._recv_once(time.monotonic() + wait, limit)
        except ConnectionResetError:
            raise ClosedEarly("the target reset the connection", how="reset", expected="data or an orderly close", got="RST") from None
        if data is None:
            if self.stalled:
                raise ReceiveTimeout("the target went idle and sent nothing", expected="a reply", got=f"nothing: {self.stalled}")
            raise ReceiveTimeout(f"the target sent nothing within {wait:.1f} s", expected="a reply", got="nothing")
        return data

    def _collect(self, done: Callable[[bytearray], int | None], what: str, timeout: float | None, max_bytes: int) -> bytes:
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        buffer, self._pending = self._pending, bytearray()
        while True:
            end = done(buffer)
            if end is not None:
                self._pending = buffer[end:]
                return bytes(buffer[:end])
            if len(buffer) > max_bytes:
                raise ProtocolViolation(
                    f"the target sent more than {max_bytes} bytes without {what}",
                    expected=what,
                    got=_describe_got(bytes(buffer)),
                )
            try:
                data = self._recv_once(deadline)
            except ConnectionResetError:
                raise ClosedEarly(
                    f"the target reset the connection before sending {what}",
                    how="reset",
                    expected=what,
                    got=f"{_describe_got(bytes(buffer))}, then RST",
                ) from None
            if data is None:
                if self.stalled:
                    raise ReceiveTimeout(
                        f"the target went idle without sending {what}",
                        expected=f"{what} within {wait:.1f} s",
                        got=f"{_describe_got(bytes(buffer))}, then silence: {self.stalled}",
                    )
                raise ReceiveTimeout(
                    f"timed out after {wait:.1f} s waiting for {what}",
                    expected=f"{what} within {wait:.1f} s",
                    got=f"{_describe_got(bytes(buffer))}, then silence",
                )
            if not data:
                raise ClosedEarly(
                    f"the target closed the connection before sending {what}",
                    how="eof",
                    expected=what,
                    got=f"{_describe_got(bytes(buffer))}, then EOF",
                )
            buffer += data

    def recv_exactly(self, n: int, timeout: float | None = None, what: str | None = None) -> bytes:
        """Exactly ``n`` bytes; bytes beyond them are kept for the next read."""
        label = what or f"{n} bytes"
        return self._collect(lambda b: n if len(b) >= n else None, label, timeout, max(n, _RECV_SIZE) * 2)

    def recv_until(self, terminator: bytes, timeout: float | None = None, what: str | None = None, max_bytes: int = 1 << 20) -> bytes:
        """Bytes up to and including the first ``terminator``."""
        label = what or f"data ending in {terminator!r}"

        def done(buffer: bytearray) -> int | None:
            index = buffer.find(terminator)
            return index + len(terminator) if index >= 0 else None

        return self._collect(done, label, timeout, max_bytes)

    def read_until_close(self, timeout: float | None = None, max_bytes: int = 64 << 20) -> tuple[bytes, str]:
        """Everything until the target closes: ``(data, "eof" | "reset")``.

        Raises:
            ReceiveTimeout: the target neither finished nor closed in time.
        """
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        buffer, self._pending = self._pending, bytearray()
        while len(buffer) <= max_bytes:
            try:
                data = self._recv_once(deadline)
            except ConnectionResetError:
                return bytes(buffer), "reset"
            if data is None:
                raise ReceiveTimeout(
                    "the target went idle without closing the connection"
                    if self.stalled
                    else f"the target did not close the connection within {wait:.1f} s",
                    expected=f"the target closes the connection within {wait:.1f} s",
                    got=f"{_describe_got(bytes(buffer))}, and the connection still open" + (f": {self.stalled}" if self.stalled else ""),
                )
            if not data:
                return bytes(buffer), "eof"
            buffer += data
        raise ProtocolViolation(f"the target sent more than {max_bytes} bytes and did not close", expected="a close", got="an endless stream")

    def expect_eof(self, timeout: float | None = None) -> str:
        """Wait for the close and return how it came ("eof" or "reset"); data first is a violation."""
        data, how = self.read_until_close(timeout)
        if data:
            raise ProtocolViolation(
                "the target sent data where the client expected the connection to end",
                expected="end of the connection",
                got=f"{_describe_got(data)}, then {how.upper()}",
            )
        return how
