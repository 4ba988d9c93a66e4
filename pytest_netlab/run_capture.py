"""One packet capture per run, cut into one slice per check.

Starting and stopping a capture costs about 50 ms, which a suite of quick
checks would pay dozens of times. So each pytest process (each xdist worker)
runs one tcpdump over its whole slice of the port range (every target of the
worker listens there, see :mod:`pytest_netlab.ports`), and the runner sends a
marker datagram when a check begins and another when it ends. A passing check
costs two datagrams. A check whose capture is kept (it failed, or
``--netlab-capture=always``) has the packets between its two markers copied
into a pcap of its own, once the end marker is provably in the file.

This module must not decide *which* checks keep their capture; the runner does.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Collection
from pathlib import Path

import dpkt

from ._tcpdump import TcpdumpFailed, TcpdumpRecorder, find_tcpdump
from .capture import DEFAULT_SNAPLEN, HOW_TO_ENABLE, CaptureBackend, CaptureError, CaptureUnavailable, _MarkerSocket, capture_support
from .packets import MARKER_PREFIX, frame_ports

__all__ = ["RunCapture", "cut_between"]

_START_TIMEOUT = 10.0
_MARKER_RESEND = 0.2


class RunCapture:
    """A tcpdump recording every packet to or from a range of ports, sliced by markers.

    Example::

        capture = RunCapture((10000, 21000), workdir / "run.pcap", env={"NETLAB_RUN": marker})
        capture.start()
        begin = capture.mark("begin zen/framing/split")
        ...                                      # the check runs
        end = capture.mark("end")
        capture.cut(begin, end, artifacts / "split.pcap")
        capture.stop()

    Args:
        port_range: the inclusive range of server ports to record.
        path: the run's pcap (removed by :meth:`stop` unless ``keep``).
        env: extra environment for tcpdump (the run marker, so that the
            watchdog stops it too if pytest dies).
    """

    def __init__(self, port_range: tuple[int, int], path: Path, *, env: dict[str, str] | None = None, snaplen: int = DEFAULT_SNAPLEN) -> None:
        self.port_range = port_range
        self.path = path
        self.snaplen = snaplen
        self._env = env or {}
        self._marker: _MarkerSocket | None = None
        self._resume = 0  # a frame record at or before the next check's begin marker (see cut_between)
        self._recorder: TcpdumpRecorder | None = None
        self._ids = itertools.count(1)

    @staticmethod
    def unavailable_reason() -> str | None:
        """Why a run capture cannot start here, or None when it can."""
        support = capture_support()
        if support.backend is None:
            return support.reason
        if find_tcpdump() is None or support.backend is not CaptureBackend.TCPDUMP:
            return f"capturing a whole run needs tcpdump, which is not usable here; {HOW_TO_ENABLE}"
        return None

    def start(self) -> None:
        """Start tcpdump; returns once a marker sent now is in the file."""
        reason = self.unavailable_reason()
        if reason is not None:
            raise CaptureUnavailable(reason)
        low, high = self.port_range
        self._marker = marker = _MarkerSocket()
        bpf = f"((tcp or udp) and portrange {low}-{high}) or (udp and port {marker.port})"
        recorder = TcpdumpRecorder(find_tcpdump() or "tcpdump", self.path, bpf, self.snaplen, env=self._env)
        self._recorder = recorder
        try:
            recorder.start(_START_TIMEOUT)
            self._await(self.mark("start"), _START_TIMEOUT)
        except TcpdumpFailed as error:
            self.stop()
            raise CaptureError(str(error)) from error
        except BaseException:
            self.stop()
            raise

    @property
    def running(self) -> bool:
        return self._recorder is not None

    def mark(self, label: str) -> bytes:
        """Send a marker datagram now (not waited for) and return its token."""
        assert self._marker is not None
        token = MARKER_PREFIX + f"{label} #{next(self._ids)} pid={os.getpid()}".encode()
        if self._recorder is not None:
            self._recorder.expect(token)
        self._marker.send(token)
        return token

    def _await(self, token: bytes, timeout: float) -> None:
        assert self._recorder is not None and self._marker is not None
        deadline = time.monotonic() + timeout
        resend_at = time.monotonic() + _MARKER_RESEND
        while not self._recorder.wait_for(token, 0.002):
            problem = self._recorder.failure()
            if problem is not None:
                raise CaptureError(problem)
            now = time.monotonic()
            if now >= deadline:
                raise CaptureError(f"the capture did not record its marker within {timeout:g} s")
            if now >= resend_at:
                self._marker.send(token)
                resend_at = now + _MARKER_RESEND

    def cut(self, begin: bytes, end: bytes, dest: Path, ports: Collection[int] = (), timeout: float = 5.0) -> int:
        """Copy the packets between two markers into ``dest``; returns how many.

        Args:
            ports: keep only packets to or from these ports (other tests of
                other pytest runs may use ports of the same range); empty
                keeps everything.
        """
        self._await(end, timeout)
        copied, begin_offset = cut_between(self.path, begin, end, dest, ports, start=self._resume)
        if begin_offset is not None:
            # Later checks' markers come after this one: their cuts need not read the file's start again.
            self._resume = begin_offset
        return copied

    def stop(self) -> None:
        """Stop tcpdump and remove the run's pcap."""
        recorder, self._recorder = self._recorder, None
        if recorder is not None:
            recorder.stop(_START_TIMEOUT)
        if self._marker is not None:
            self._marker.close()
            self._marker = None
        self.path.unlink(missing_ok=True)


def cut_between(
    source: Path, begin: bytes, end: bytes, dest: Path, ports: Collection[int] = (), start: int = 0
) -> tuple[int, int | None]:
    """Write the frames of ``source`` from the ``begin`` marker to the ``end`` marker into ``dest``.

    The markers themselves are kept: in Wireshark they show where the check
    began and ended. With ``ports``, only frames to or from one of them are
    copied. ``start``: a file offset where a frame record begins, at or
    before the ``begin`` marker (0: the first frame); a run's pcap grows with
    every check, and reading it from its start for every cut would cost the
    whole file each time.

    Returns:
        The number of frames copied between the markers, and the file offset
        of the ``begin`` marker's record (None if it was not found).
    """
    wanted = set(ports)
    dest.parent.mkdir(parents=True, exist_ok=True)
    copied = 0
    begin_offset: int | None = None
    with open(source, "rb") as infile, open(dest, "wb") as outfile:
        reader = dpkt.pcap.Reader(infile)
        linktype = reader.datalink()
        writer = dpkt.pcap.Writer(outfile, snaplen=reader.snaplen, linktype=linktype)
        if start:
            infile.seek(start)
        try:
            record = infile.tell()
            for timestamp, frame in reader:
                if begin_offset is None:
                    if begin in frame:
                        begin_offset = record
                        writer.writepkt(frame, timestamp)
                    record = infile.tell()
                    continue
                if end in frame:
                    writer.writepkt(frame, timestamp)
                    break
                if wanted:
                    pair = frame_ports(linktype, frame)
                    if pair is None or not (set(pair) & wanted):
                        continue
                writer.writepkt(frame, timestamp)
                copied += 1
        except (dpkt.NeedData, ValueError):
            pass  # tcpdump is still writing: a partial last record is past the end marker
    return copied, begin_offset
