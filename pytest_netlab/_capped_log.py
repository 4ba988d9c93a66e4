"""Capped logs: draining a target's stdout or stderr without ever blocking it.

This module owns the reader side of one output pipe: a daemon thread reads
everything the target writes (so a target that floods its output never blocks
on a full pipe), keeps the first ``head`` and the last ``tail`` bytes, counts
the rest, and wakes up anyone waiting for a line to appear. It must not keep
more than ``head + tail`` bytes plus one bounded line, and must not decide what
the output means: the caller passes the pattern.
"""

from __future__ import annotations

import os
import re
import select
import threading
import time
from dataclasses import dataclass
from typing import IO, Callable

__all__ = ["CappedLog"]

# Lines longer than this are matched on their beginning only, so that one
# gigabyte without a newline cannot become one gigabyte of memory.
_LINE_CAP = 4096
_READ_SIZE = 262144  # what a widened pipe holds (process._PIPE_BYTES)
# How long wait_for still waits for the pipe to close after the process died:
# its last lines may still be in the pipe, not yet read by the drain thread.
_DRAIN_AFTER_EXIT = 0.5
# How often wait_for asks still_alive() while nothing arrives: a process that
# died with a grandchild holding the pipe open never closes it.
_ALIVE_CHECK_INTERVAL = 0.05
_SHOWN_LINE_CHARS = 200


@dataclass
class _Waiter:
    pattern: re.Pattern[str]
    match: re.Match[str] | None = None


def _as_text(line: bytes | bytearray) -> str:
    text = line[:_LINE_CAP].decode("utf-8", "replace")
    return text[:-1] if text.endswith("\r") else text


class CappedLog:
    """Drains one pipe in a daemon thread; keeps the first ``head`` and last ``tail`` bytes.

    Args:
        stream: the read end of the pipe; the log owns it and closes it.
        name: what the pipe is (``"stdout"``), used in messages.
        head: bytes kept from the beginning.
        tail: bytes kept from the end.

    Example:
        >>> r, w = os.pipe()
        >>> log = CappedLog(os.fdopen(r, "rb", buffering=0), name="stdout", head=16, tail=16)
        >>> _ = os.write(w, b"listening on 127.0.0.1:4000\\n"); os.close(w)
        >>> log.wait_for(re.compile(r":(\\d+)"), timeout=5, still_alive=lambda: True).group(1)
        '4000'
        >>> log.close(); log.total_bytes, log.truncated
        (28, False)
    """

    def __init__(self, stream: IO[bytes], *, name: str, head: int = 8192, tail: int = 65536) -> None:
        if head < 0 or tail < 0:
            raise ValueError("head and tail must be >= 0")
        self.name = name
        self._stream = stream
        self._head_limit = head
        self._tail_limit = tail
        self._head = bytearray()
        self._tail = bytearray()
        self._total = 0
        self._partial = bytearray()  # the current unfinished line, first _LINE_CAP bytes
        self._waiters: list[_Waiter] = []
        self._eof = False
        # Reentrant: wait_for calls still_alive() with the lock held, and a
        # still_alive that reads this log (text(), truncated) must not deadlock.
        self._cond = threading.Condition(threading.RLock())
        # Closing the write end of this pipe wakes the drain thread when the
        # target's pipe never closes (a surviving grandchild holds it open).
        self._wake_read, self._wake_write = os.pipe()
        self._thread = threading.Thread(target=self._drain, name=f"netlab-{name}-drain", daemon=True)
        self._thread.start()

    # --- what the caller sees --------------------------------------------------

    @property
    def total_bytes(self) -> int:
        """Every byte that came through the pipe, including those dropped."""
        return self._total

    @property
    def truncated(self) -> bool:
        """True when bytes between the head and the tail were dropped."""
        with self._cond:
            return self._total > len(self._head) + len(self._tail)

    def data(self) -> bytes:
        """The kept bytes, head then tail (all of the output when not :attr:`truncated`)."""
        with self._cond:
            return bytes(self._head) + bytes(self._tail)

    def text(self) -> str:
        """The kept output: head, a note of what was dropped, tail."""
        with self._cond:
            head, tail = bytes(self._head), bytes(self._tail)
            dropped = self._total - len(head) - len(tail)
        if not dropped:
            return (head + tail).decode("utf-8", "replace")
        return (
            head.decode("utf-8", "replace")
            + f"\n[... {dropped} bytes dropped ...]\n"
            + tail.decode("utf-8", "replace")
        )

    def tail_lines(self, n: int = 20) -> list[str]:
        """The last ``n`` lines, each cut to about 200 characters."""
        if n <= 0:
            return []
        lines = self.text().splitlines()[-n:]
        return [line if len(line) <= _SHOWN_LINE_CHARS else line[:_SHOWN_LINE_CHARS] + "..." for line in lines]

    def wait_for(
        self, pattern: re.Pattern[str], timeout: float, still_alive: Callable[[], bool]
    ) -> re.Match[str] | None:
        """Wait until a line (or the unfinished last line) matches ``pattern``.

        Lines already kept are searched first, then every line as it arrives.
        Returns the first match, or None at ``timeout``, when the pipe closed
        without a match, or soon after ``still_alive()`` turned False (once the
        pipe had a moment to deliver the process's last words).
        """
        deadline = time.monotonic() + timeout
        waiter = _Waiter(pattern)
        with self._cond:
            waiter.match = self._search_kept(pattern)
            self._waiters.append(waiter)
            try:
                give_up_at = deadline
                while waiter.match is None and not self._eof:
                    now = time.monotonic()
                    if now >= give_up_at:
                        break
                    if give_up_at == deadline and not still_alive():
                        give_up_at = min(deadline, now + _DRAIN_AFTER_EXIT)
                    self._cond.wait(min(give_up_at - now, _ALIVE_CHECK_INTERVAL))
                return waiter.match
            finally:
                self._waiters.remove(waiter)

    def wait_eof(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the pipe's end (every writer gone, all of it read)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._eof:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def close(self, drain_timeout: float = 1.0) -> None:
        """Let the thread read to EOF for up to ``drain_timeout``, then stop it and join it.

        Idempotent. Call it after the writers are gone, so the last output is kept.
        """
        self._thread.join(drain_timeout)
        with self._cond:
            if self._wake_write >= 0:
                os.close(self._wake_write)
                self._wake_write = -1
        self._thread.join(1.0)

    # --- the drain thread ------------------------------------------------------

    def _drain(self) -> None:
        fd = self._stream.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        try:
            while True:
                ready = {ready_fd for ready_fd, _ in poller.poll()}
                if self._wake_read in ready:
                    break
                try:
                    chunk = os.read(fd, _READ_SIZE)
                except OSError:
                    break
                if not chunk:
                    break
                self._take(chunk)
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()
            self._stream.close()
            os.close(self._wake_read)

    def _take(self, chunk: bytes) -> None:
        with self._cond:
            self._total += len(chunk)
            rest = memoryview(chunk)
            room = self._head_limit - len(self._head)
            if room > 0:
                self._head += rest[:room]
                rest = rest[room:]
            if rest:
                self._tail += rest[-self._tail_limit :] if self._tail_limit else b""
                excess = len(self._tail) - self._tail_limit
                if excess > 0:
                    del self._tail[:excess]
            if any(w.match is None for w in self._waiters):
                self._match_lines(chunk)
            else:
                self._track_partial(chunk)
            self._cond.notify_all()

    def _track_partial(self, chunk: bytes) -> None:
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            self._partial = bytearray(chunk[newline + 1 : newline + 1 + _LINE_CAP])
        else:
            self._partial += chunk[: _LINE_CAP - len(self._partial)]

    def _match_lines(self, chunk: bytes) -> None:
        # Only while someone waits. Complete lines are decoded as one block
        # ("\n" never occurs inside a UTF-8 sequence) and searched with
        # map/filter, so a flood costs no Python-level loop per line.
        data = bytes(self._partial) + chunk if self._partial else chunk
        cut = data.rfind(b"\n")
        self._partial = bytearray(data[cut + 1 :][:_LINE_CAP])
        block = data[:cut].decode("utf-8", "replace") if cut >= 0 else ""
        lines = (block.replace("\r\n", "\n") if "\r" in block else block).split("\n") if cut >= 0 else []
        lines.append(_as_text(self._partial))  # the data so far of the unfinished line
        for waiter in self._waiters:
            if waiter.match is None:
                waiter.match = next(filter(None, map(waiter.pattern.search, lines)), None)

    def _search_kept(self, pattern: re.Pattern[str]) -> re.Match[str] | None:
        if self._total > len(self._head) + len(self._tail):
            pieces = [*bytes(self._head).split(b"\n"), *bytes(self._tail).split(b"\n")]
        else:
            pieces = bytes(self._head + self._tail).split(b"\n")
        for piece in pieces:
            match = pattern.search(_as_text(piece))
            if match:
                return match
        return None
