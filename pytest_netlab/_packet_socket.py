"""The in-process capture backend: a Linux ``AF_PACKET`` socket bound to ``lo``.

This module owns reading loopback frames from a packet socket in a daemon
thread and writing them to a pcap file (dpkt's header layouts). It is the fallback
for a process that holds CAP_NET_RAW where tcpdump is missing. It must not
decide what a capture is for; :class:`pytest_netlab.capture.LoopbackCapture`
drives it.

The selection of frames (the test's ports) runs in the kernel, as a classic
BPF program attached to the socket, as libpcap does for tcpdump: frames of
other flows (another test's, another xdist worker's) never reach Python, and
the thread only copies wanted frames to the file.

There is no start race: once ``bind()`` returns, the kernel queues every wanted
frame on ``lo`` to the socket, whether or not the thread has read it yet.
"""

from __future__ import annotations

import ctypes
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Collection
from pathlib import Path
from typing import BinaryIO

import dpkt

from pytest_netlab.packets import MARKER_PREFIX

__all__ = ["PacketSocketRecorder", "packet_socket_problem", "compile_port_filter"]

_ETH_P_ALL = 0x0003  # every protocol; bind() converts it to network order
_SOL_PACKET = 263
_PACKET_STATISTICS = 6  # struct tpacket_stats {unsigned tp_packets, tp_drops}
_SO_ATTACH_FILTER = 26
_SO_TIMESTAMPNS = 35  # ancillary struct timespec per frame; absent from the socket module
_SO_RCVBUFFORCE = 33  # exceeds net.core.rmem_max, allowed with CAP_NET_ADMIN
_RECEIVE_BUFFER = 8 * 1024 * 1024  # a burst of 64 KiB loopback frames must not overflow it
_LINKTYPE_ETHERNET = 1  # frames on `lo` carry a zeroed Ethernet header
_TIMESPEC = struct.Struct("@ll")
# A pcap record header (seconds, microseconds, bytes kept, bytes on the wire), in
# dpkt's own layout; packed directly because building a dpkt object per frame
# costs more than the rest of the frame's handling.
_RECORD_HEADER = struct.Struct(dpkt.pcap.PktHdr.__hdr_fmt__)
_WHOLE_FRAME = 0x40000  # the filter keeps whole frames: recvmsg(MSG_TRUNC) then reports their length
_INSTRUCTION = struct.Struct("=HBBI")  # struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}

# Classic BPF opcodes (linux/filter.h) used by compile_port_filter.
_LDH_ABS, _LDB_ABS, _LDH_IND, _LDXB_MSH = 0x28, 0x30, 0x48, 0xB1
_JEQ, _JSET, _RET = 0x15, 0x45, 0x06
_AD_PKTTYPE = 0xFFFFF004  # SKF_AD_OFF + SKF_AD_PKTTYPE: the frame's direction


def packet_socket_problem() -> str | None:
    """Why an ``AF_PACKET`` socket cannot capture on ``lo`` here, or ``None`` if it can."""
    if not hasattr(socket, "AF_PACKET"):
        return "not available on this platform (Linux only)"
    try:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as probe:
            probe.bind(("lo", _ETH_P_ALL))
    except PermissionError as exc:
        return f"{exc.strerror or exc} (needs CAP_NET_RAW)"
    except OSError as exc:
        return str(exc)
    return None


def compile_port_filter(tcp_ports: Collection[int], udp_ports: Collection[int]) -> bytes:
    """A classic BPF program: keep TCP and UDP over IPv4/IPv6 with a listed source or destination port.

    For Ethernet-framed ``lo``. Frames leaving the host are dropped (each
    loopback frame is also seen arriving), and so are IPv4 fragments after the
    first, which carry no ports. IPv6 extension headers are not followed, as in
    tcpdump's ``port`` primitive.
    """
    # (opcode, k, jump-if-true label, jump-if-false label); None means "next instruction".
    program: list[tuple[int, int, str | None, str | None] | str] = [
        (_LDB_ABS, _AD_PKTTYPE, None, None),
        (_JEQ, socket.PACKET_OUTGOING, "reject", None),
        (_LDH_ABS, 12, None, None),  # EtherType
        (_JEQ, 0x0800, "ipv4", None),
        (_JEQ, 0x86DD, "ipv6", "reject"),
        "ipv4",
        (_LDH_ABS, 20, None, None),  # flags and fragment offset
        (_JSET, 0x1FFF, "reject", None),
        (_LDXB_MSH, 14, None, None),  # X = IPv4 header length
        (_LDB_ABS, 23, None, None),  # protocol
        (_JEQ, 6, "tcp4" if tcp_ports else "reject", None),
        (_JEQ, 17, "udp4" if udp_ports else "reject", "reject"),
        "ipv6",
        (_LDB_ABS, 20, None, None),  # next header
        (_JEQ, 6, "tcp6" if tcp_ports else "reject", None),
        (_JEQ, 17, "udp6" if udp_ports else "reject", "reject"),
    ]
    for label, ports, load, source, destination in (
        ("tcp4", tcp_ports, _LDH_IND, 14, 16),  # ports after the IPv4 header: [X + 14]
        ("udp4", udp_ports, _LDH_IND, 14, 16),
        ("tcp6", tcp_ports, _LDH_ABS, 54, 56),  # after the fixed 40-byte IPv6 header
        ("udp6", udp_ports, _LDH_ABS, 54, 56),
    ):
        if not ports:
            continue
        program.append(label)
        for offset in (source, destination):
            program.append((load, offset, None, None))
            program.extend((_JEQ, port, "accept", None) for port in sorted(ports))
        program.append((_RET, 0, None, None))
    program += ["accept", (_RET, _WHOLE_FRAME, None, None), "reject", (_RET, 0, None, None)]
    return _assemble(program)


def _assemble(program: list[tuple[int, int, str | None, str | None] | str]) -> bytes:
    """Resolve labels into relative jumps and encode each ``struct sock_filter``."""
    labels: dict[str, int] = {}
    instructions: list[tuple[int, int, str | None, str | None]] = []
    for item in program:
        if isinstance(item, str):
            labels[item] = len(instructions)
        else:
            instructions.append(item)
    encoded = []
    for index, (code, k, if_true, if_false) in enumerate(instructions):
        # Jumps are relative to the next instruction, forward only, at most 255.
        jumps = [0 if label is None else labels[label] - index - 1 for label in (if_true, if_false)]
        if not all(0 <= jump <= 255 for jump in jumps):
            raise ValueError("too many ports for one BPF filter (about 30 fit)")
        encoded.append(_INSTRUCTION.pack(code, jumps[0], jumps[1], k))
    return b"".join(encoded)


class PacketSocketRecorder:
    """Record the loopback frames a BPF program selects into a pcap file.

    Example (what :class:`~pytest_netlab.capture.LoopbackCapture` does)::

        program = compile_port_filter({8080}, {marker_port})
        recorder = PacketSocketRecorder(path, program, snaplen=1900)
        recorder.start(timeout=5)
        ...                                   # send a marker, traffic, a marker
        recorder.wait_for(marker, timeout=5)
        recorder.stop(timeout=5)
    """

    def __init__(self, path: Path, program: bytes, snaplen: int) -> None:
        self.path = path
        self.program = program
        self.snaplen = snaplen
        self.dropped: int | None = None
        self._sock: socket.socket | None = None
        self._file: BinaryIO | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake_read, self._wake_write = -1, -1
        self._seen_changed = threading.Condition()
        self._seen: set[bytes] = set()
        self._error: str | None = None

    def start(self, timeout: float) -> None:
        """Open the socket with its filter, bind it to ``lo``, open the file, start the thread.

        Raises:
            OSError: the socket or the file could not be opened (stop() cleans up).
        """
        # Protocol 0 at creation receives nothing; the filter is in place before
        # bind() subscribes the socket to `lo`, so no unfiltered frame is queued.
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        program = ctypes.create_string_buffer(self.program, len(self.program))
        # struct sock_fprog {unsigned short len; struct sock_filter *filter;}
        fprog = struct.pack("@HP", len(self.program) // _INSTRUCTION.size, ctypes.addressof(program))
        self._sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
        self._tune_socket(self._sock)
        self._sock.bind(("lo", _ETH_P_ALL))
        self._file = open(self.path, "wb")  # noqa: SIM115 (closed in stop)
        self._file.write(bytes(dpkt.pcap.FileHdr(snaplen=self.snaplen, linktype=_LINKTYPE_ETHERNET)))
        # A pipe wakes the thread at stop(), so stopping never waits for a poll timeout.
        self._wake_read, self._wake_write = os.pipe()
        self._thread = threading.Thread(target=self._run, name="netlab-af-packet", daemon=True)
        self._thread.start()

    @staticmethod
    def _tune_socket(sock: socket.socket) -> None:
        for option in (_SO_RCVBUFFORCE, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, _RECEIVE_BUFFER)
                break
            except OSError:
                continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        except OSError:
            pass  # frames are then stamped when read, a little later than they crossed
        sock.setblocking(False)

    def expect(self, token: bytes) -> None:
        """Nothing to prepare: the thread records every marker it sees."""

    def wait_for(self, token: bytes, timeout: float) -> bool:
        """Wait up to ``timeout`` for the thread to have written ``token``'s datagram."""
        with self._seen_changed:
            self._seen_changed.wait_for(lambda: token in self._seen or self._error is not None, timeout)
            return token in self._seen

    def failure(self) -> str | None:
        """Why the reader thread ended early, or ``None``."""
        return self._error

    def stop(self, timeout: float) -> None:
        """End the thread (bounded), read the drop count, close socket, pipe and file."""
        self._stop.set()
        if self._wake_write >= 0:
            os.write(self._wake_write, b"x")
        if self._thread is not None:
            self._thread.join(timeout)
        if self._sock is not None:
            try:
                raw = self._sock.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, 8)
                self.dropped = struct.unpack("II", raw)[1]
            except OSError:
                self.dropped = None
        self._close_socket()
        for fd in (self._wake_read, self._wake_write):
            if fd >= 0:
                os.close(fd)
        self._wake_read = self._wake_write = -1
        # A thread that did not end in time still owns the file; it closes with the process.
        if self._file is not None and (self._thread is None or not self._thread.is_alive()):
            self._file.close()
            self._file = None

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _run(self) -> None:
        assert self._sock is not None and self._file is not None
        sock, write = self._sock, self._file.write
        buffer = bytearray(self.snaplen)
        ancillary_size = socket.CMSG_SPACE(_TIMESPEC.size)
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select([sock.fileno(), self._wake_read], [], [], 1.0)
                if sock.fileno() not in readable:
                    continue
                markers = []
                while True:  # drain everything queued before sleeping again
                    try:
                        # MSG_TRUNC: the result is the frame's length on the wire, even
                        # when only the first `snaplen` bytes fit in the buffer.
                        length, ancillary, _, address = sock.recvmsg_into([buffer], ancillary_size, socket.MSG_TRUNC)
                    except BlockingIOError:
                        break
                    if address[2] == socket.PACKET_OUTGOING:  # the filter drops these; be sure
                        continue
                    frame = bytes(buffer[: min(length, len(buffer))])
                    seconds, nanoseconds = _timestamp(ancillary)
                    write(_RECORD_HEADER.pack(seconds, nanoseconds // 1000, len(frame), length) + frame)
                    # A marker's payload runs to the end of its frame (no padding on `lo`).
                    start = frame.find(MARKER_PREFIX)
                    if start >= 0:
                        markers.append(frame[start:])
                # No flush per batch: a write per frame would double the cost of
                # capture; the file is complete once stop() has closed it.
                if markers:
                    with self._seen_changed:
                        self._seen.update(markers)
                        self._seen_changed.notify_all()
        except Exception as exc:  # report, don't vanish: the capture's waits check failure()
            with self._seen_changed:
                self._error = f"the AF_PACKET reader thread failed: {type(exc).__name__}: {exc}"
                self._seen_changed.notify_all()


def _timestamp(ancillary: list[tuple[int, int, bytes]]) -> tuple[int, int]:
    """``(seconds, nanoseconds)`` of the frame's arrival, or of now without the kernel's stamp."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            return seconds, nanoseconds
    return divmod(time.time_ns(), 1_000_000_000)
