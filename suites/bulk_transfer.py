"""Moving bulk data through a target: when the sender is done or blocked, and where the echo went wrong.

Checks that push megabytes through a server (tcp-echo's large echo,
framed's slow reader) send from one thread and read in another, and must
not start reading before the target's buffers are full, or a server that
ignores send()'s return value is never caught. This module owns that
hand-off and the comparison of what came back; it must not open sockets.
"""

from __future__ import annotations

import socket
import threading
import time

from pytest_netlab.errors import ProtocolViolation
from pytest_netlab.rawclient import ClosedEarly, ReceiveTimeout, ScriptedClient

__all__ = ["SendProgress", "first_difference", "read_bulk", "stop_sender"]

# Bytes compared at a time before looking at single bytes: 16 MiB compare in milliseconds.
_BLOCK = 4096


class SendProgress:
    """The sender's chunks, counted, so that the reader can wait until the sender is done or blocked.

    Example::

        progress = SendProgress()
        # sender thread: progress.advance() after each send(), progress.finish() at the end
        progress.wait_until_done_or_stalled(stall=0.2, limit=2.0)   # reader thread
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._count = 0
        self._done = False

    def advance(self) -> None:
        """One more chunk went out."""
        with self._changed:
            self._count += 1
            self._changed.notify_all()

    def finish(self) -> None:
        """The sender has stopped (done, or failed)."""
        with self._changed:
            self._done = True
            self._changed.notify_all()

    def wait_until_done_or_stalled(self, stall: float, limit: float) -> None:
        """Return once the sender finished, made no progress for ``stall`` s (buffers full), or ``limit`` s passed."""
        deadline = time.monotonic() + limit
        with self._changed:
            while not self._done and time.monotonic() < deadline:
                seen = self._count
                self._changed.wait(min(stall, max(0.0, deadline - time.monotonic())))
                if self._count == seen and not self._done:
                    return  # no progress for `stall` seconds: the buffers are full


def read_bulk(client: ScriptedClient, size: int, stall_limit: float) -> tuple[bytes, ProtocolViolation | None]:
    """Read until ``size`` bytes are in, the target closes or goes idle, or nothing comes for ``stall_limit`` s.

    Returns what came, and the violation that ended the reading early (a
    close, a reset, or the target gone idle: ``client.stalled``); None when
    all came or the reading ended on silence alone.
    """
    received = bytearray()
    last_progress = time.monotonic()
    while len(received) < size:
        try:
            chunk = client.recv_some(timeout=0.25)
        except ReceiveTimeout as silence:
            if client.stalled:
                return bytes(received), silence
            if time.monotonic() - last_progress > stall_limit:
                break
            continue
        except ClosedEarly as closed:
            return bytes(received), closed
        if not chunk:
            break
        received += chunk
        last_progress = time.monotonic()
    return bytes(received), None


def stop_sender(client: ScriptedClient, sender: threading.Thread, timeout: float) -> None:
    """End the reading side's wait for a sender thread: wake it if it is still blocked in send(), then join it.

    The verdict is known once the reading is over; shutting the socket down
    makes a blocked send() fail at once (EPIPE) instead of at its timeout.
    """
    if sender.is_alive():
        try:
            client.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    sender.join(timeout)


def first_difference(expected: bytes, got: bytes) -> int:
    """The offset of the first byte that differs, or the shorter length when one is a prefix of the other.

    >>> first_difference(b"abcdef", b"abXdef"), first_difference(b"abc", b"ab")
    (2, 2)
    """
    shorter = min(len(expected), len(got))
    for start in range(0, shorter, _BLOCK):
        end = min(start + _BLOCK, shorter)
        if expected[start:end] != got[start:end]:
            return next(index for index in range(start, end) if expected[index] != got[index])
    return shorter
