"""Parsed packets: a pcap file turned into values that tests assert on.

This module owns the reading of capture files (pcap, and pcapng for files a
user brings) into frozen :class:`Packet` values, the questions tests ask about
a TCP exchange (who sent the first FIN, was there a RST, did data flow after a
FIN) and the text ladder of the exchange that failure messages print. Header
decoding is dpkt's; nothing here is parsed by hand.

It must stay pure: no sockets, no processes, no clocks. It reads a file and
returns values; starting and stopping a capture is :mod:`pytest_netlab.capture`.

Only TCP and UDP over IPv4 and IPv6 are kept; other frames (ARP, ICMP, ...)
are skipped. The capture's own marker datagrams (see :data:`MARKER_PREFIX`) are
skipped too, so a parsed capture holds exactly the test's traffic.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import BinaryIO

import dpkt

from pytest_netlab.transcript import format_bytes

__all__ = [
    "Packet",
    "MARKER_PREFIX",
    "decode_frame",
    "frame_ports",
    "packets",
    "read_packets",
    "first_fin",
    "resets",
    "data_after_fin",
    "ladder",
    "datagrams_to",
    "TLSRecord",
    "tls_records",
]

#: Payload prefix of the UDP marker datagrams a capture sends to itself to
#: prove it is running (start) and has seen everything (stop). They stay in the
#: pcap file, where they mark the capture window for a Wireshark reader, and
#: are dropped from the parsed result.
MARKER_PREFIX = b"pytest-netlab capture marker "

# Flag bits in the TCP header (RFC 9293, section 3.1), in the order a ladder
# prints them: the ones that change connection state first.
_TCP_FLAG_NAMES: tuple[tuple[int, str], ...] = (
    (dpkt.tcp.TH_SYN, "SYN"),
    (dpkt.tcp.TH_FIN, "FIN"),
    (dpkt.tcp.TH_RST, "RST"),
    (dpkt.tcp.TH_PUSH, "PSH"),
    (dpkt.tcp.TH_ACK, "ACK"),
    (dpkt.tcp.TH_URG, "URG"),
    (dpkt.tcp.TH_ECE, "ECE"),
    (dpkt.tcp.TH_CWR, "CWR"),
)
_FLAG_ORDER = {name: index for index, (_, name) in enumerate(_TCP_FLAG_NAMES)}

# Link-layer types (pcap LINKTYPE_* values) a loopback capture can carry.
_LINKTYPE_NULL = 0  # BSD loopback, host byte order family
_LINKTYPE_ETHERNET = 1  # Linux `lo` as tcpdump and AF_PACKET see it
_PORTS = struct.Struct("!HH")
_LINKTYPE_RAW_ALIASES = (12, 14, 101)  # raw IP; 12 and 14 are historical values
_LINKTYPE_LOOP = 108  # OpenBSD loopback, network byte order family
_LINKTYPE_LINUX_SLL = 113  # "any" device, cooked header v1
_LINKTYPE_LINUX_SLL2 = 276  # "any" device, cooked header v2


@dataclass(frozen=True)
class Packet:
    """One TCP segment or UDP datagram seen on the wire.

    Attributes:
        t: seconds since the first packet of the capture (markers excluded).
        timestamp: capture time, seconds since the epoch.
        src, sport: sender address (``"127.0.0.1"``, ``"::1"``) and port.
        dst, dport: receiver address and port.
        proto: ``"tcp"`` or ``"udp"``.
        flags: TCP flag names (``"SYN"``, ``"ACK"``, ``"FIN"``, ``"RST"``,
            ``"PSH"``, ...); empty for UDP.
        seq, ack: raw TCP sequence and acknowledgement numbers; 0 for UDP.
        window: the raw TCP window field (not multiplied by the window
            scale); 0 for UDP.
        length: payload bytes on the wire (from the IP header), even when the
            capture kept fewer of them.
        payload: the payload bytes the capture kept: all of them, or the first
            ones when the frame was longer than the capture's snapshot length.

    Example::

        syn = next(p for p in packets(path) if p.flags == {"SYN"})
        assert syn.dport == server_port and syn.length == 0
    """

    t: float
    timestamp: float
    src: str
    sport: int
    dst: str
    dport: int
    proto: str
    flags: frozenset[str]
    seq: int
    ack: int
    window: int
    length: int
    payload: bytes

    @property
    def truncated(self) -> bool:
        """True when the capture kept only the first bytes of the payload."""
        return len(self.payload) < self.length

    @property
    def sender(self) -> tuple[str, int]:
        """``(src, sport)``."""
        return (self.src, self.sport)

    @property
    def receiver(self) -> tuple[str, int]:
        """``(dst, dport)``."""
        return (self.dst, self.dport)

    @property
    def flag_text(self) -> str:
        """Flags in ladder order, ``"SYN, ACK"``; ``"UDP"`` for a datagram."""
        if self.proto == "udp":
            return "UDP"
        return ", ".join(sorted(self.flags, key=_FLAG_ORDER.__getitem__))


def packets(path: str | os.PathLike[str]) -> list[Packet]:
    """Parse a capture file into packets, markers removed, ``t`` from the first.

    Example::

        for p in packets(tmp_path / "exchange.pcap"):
            print(p.t, p.sport, "->", p.dport, sorted(p.flags), p.length)
    """
    with open(path, "rb") as stream:
        return read_packets(stream)


def read_packets(stream: BinaryIO) -> list[Packet]:
    """Like :func:`packets`, from an open binary stream (pcap or pcapng)."""
    decoded = [packet for timestamp, linktype, frame in _frames(stream) if (packet := _decode(timestamp, linktype, frame))]
    if not decoded:
        return []
    origin = decoded[0].timestamp
    return [replace(packet, t=packet.timestamp - origin) for packet in decoded]


def first_fin(captured: Iterable[Packet]) -> Packet | None:
    """The first TCP segment carrying FIN, or ``None``; its ``sender`` closed first.

    Example::

        fin = first_fin(captured)
        assert fin is not None and fin.sport == server_port, "the server should close first"
    """
    return next((p for p in captured if p.proto == "tcp" and "FIN" in p.flags), None)


def resets(captured: Iterable[Packet]) -> list[Packet]:
    """Every TCP segment carrying RST, in capture order.

    Example::

        assert not resets(captured), "an orderly close sends FIN, not RST"
    """
    return [p for p in captured if p.proto == "tcp" and "RST" in p.flags]


def data_after_fin(captured: Iterable[Packet], side: int) -> list[Packet]:
    """Segments carrying data on a connection after ``side`` sent its first FIN.

    ``side`` is the port of the endpoint whose FIN starts the clock. The result
    holds data-carrying segments of that connection, from either endpoint,
    captured after that FIN: from the peer, they show a half-close honoured
    (it kept sending after ``side`` said it was done writing); from ``side``
    itself, new data after its own FIN breaks RFC 9293 (retransmissions aside).
    Every connection involving ``side`` is examined.

    Example::

        late = data_after_fin(captured, side=client_port)
        assert any(p.sport == server_port for p in late), "the reply must follow the client's half-close"
    """
    fin_seen: set[frozenset[tuple[str, int]]] = set()
    late: list[Packet] = []
    for p in captured:
        if p.proto != "tcp":
            continue
        connection = frozenset((p.sender, p.receiver))
        if connection in fin_seen and p.payload:
            late.append(p)
        if p.sport == side and "FIN" in p.flags:
            fin_seen.add(connection)
    return late


def ladder(
    captured: Sequence[Packet],
    *,
    client_port: int | None = None,
    server_port: int | None = None,
    limit: int = 40,
) -> str:
    """The exchange as text, one line per packet: when, who to whom, what.

    Endpoints are named ``server`` and ``client`` when their ports are given
    (``client:51234`` when several clients talk to one server), otherwise
    ``address:port``. Beyond ``limit`` packets the middle is elided: the
    opening and the closing of a connection are what failures are about.

    Example::

        print(ladder(captured, server_port=7000))
        #   0.000  client -> server  [SYN]
        #   0.000  server -> client  [SYN, ACK]
        #   0.002  client -> server  [PSH, ACK] 5 bytes b'hello'
    """
    if not captured:
        return "  (no packets captured)"
    names = _endpoint_names(captured, client_port, server_port)
    width = max(len(name) for name in names.values())
    lines = [_ladder_line(p, names, width) for p in captured]
    if len(lines) > limit > 1:
        head = limit // 2
        tail = limit - head
        lines = [*lines[:head], f"  ... {len(lines) - limit} packets not shown ...", *lines[-tail:]]
    return "\n".join(lines)


def _ladder_line(p: Packet, names: dict[tuple[str, int], str], width: int) -> str:
    line = f"{p.t:7.3f}  {names[p.sender]:>{width}} -> {names[p.receiver]:<{width}}  [{p.flag_text}]"
    if p.payload:
        line += f" {p.length} bytes {format_bytes(p.payload, limit=32)}"
    return line


def _endpoint_names(
    captured: Sequence[Packet], client_port: int | None, server_port: int | None
) -> dict[tuple[str, int], str]:
    endpoints = {endpoint for p in captured for endpoint in (p.sender, p.receiver)}
    # Several clients of one server need telling apart; a single one does not.
    clients = {e for e in endpoints if e[1] != server_port} if server_port is not None else set()
    names: dict[tuple[str, int], str] = {}
    for host, port in endpoints:
        if port == server_port:
            names[(host, port)] = "server"
        elif port == client_port or (host, port) in clients:
            names[(host, port)] = "client" if len(clients) <= 1 or port == client_port else f"client:{port}"
        else:
            names[(host, port)] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return names


def decode_frame(timestamp: float, linktype: int, frame: bytes) -> Packet | None:
    """One captured frame as a :class:`Packet` (None for markers and what is not TCP or UDP over IP)."""
    return _decode(timestamp, linktype, frame)


def frame_ports(linktype: int, frame: bytes) -> tuple[int, int] | None:
    """``(source port, destination port)`` of a TCP or UDP frame, or None (not TCP/UDP over IP).

    The run capture's cutter asks this of every frame of a run, and a full
    dpkt decode costs about 40 us a frame (most of a per-check cut). The
    frames tcpdump writes on Linux ``lo`` (Ethernet, then IPv4 without
    fragments or IPv6 without extension headers) keep the ports at fixed
    offsets, read here directly; every other shape goes through dpkt, so the
    answer is always the decoder's.
    """
    if linktype == _LINKTYPE_ETHERNET and len(frame) >= 14:
        kind, ip = frame[12:14], 14
        if kind == b"\x08\x00" and len(frame) >= ip + 20 and frame[ip] >> 4 == 4:
            header = (frame[ip] & 0x0F) * 4
            fragment = int.from_bytes(frame[ip + 6 : ip + 8], "big") & 0x1FFF
            if frame[ip + 9] in (6, 17) and header >= 20 and not fragment and len(frame) >= ip + header + 4:
                sport, dport = _PORTS.unpack_from(frame, ip + header)
                return sport, dport
        elif kind == b"\x86\xdd" and len(frame) >= ip + 44 and frame[ip + 6] in (6, 17):
            sport, dport = _PORTS.unpack_from(frame, ip + 40)
            return sport, dport
    packet = _decode(0.0, linktype, frame)
    return (packet.sport, packet.dport) if packet is not None else None


def _frames(stream: BinaryIO) -> Iterator[tuple[float, int, bytes]]:
    """Yield ``(timestamp, linktype, frame)`` from a pcap or pcapng stream."""
    reader = dpkt.pcap.UniversalReader(stream)
    linktype = reader.datalink()
    try:
        for timestamp, frame in reader:
            # Nanosecond pcap files give Decimal timestamps; tests want floats.
            yield float(timestamp), linktype, frame
    except (dpkt.NeedData, dpkt.UnpackError, ValueError):
        # A capture killed mid-write ends with a partial record: keep what came before.
        return


def _decode(timestamp: float, linktype: int, frame: bytes) -> Packet | None:
    """The TCP or UDP packet in ``frame`` (``t`` still 0), or ``None`` to skip it."""
    try:
        network = _network_layer(linktype, frame)
    except (dpkt.UnpackError, dpkt.NeedData, ValueError, KeyError):
        return None
    if isinstance(network, dpkt.ip.IP):
        family = socket.AF_INET
    elif isinstance(network, dpkt.ip6.IP6):
        family = socket.AF_INET6
    else:
        return None
    src = socket.inet_ntop(family, network.src)
    dst = socket.inet_ntop(family, network.dst)
    transport = network.data
    if isinstance(transport, dpkt.tcp.TCP):
        payload = bytes(transport.data)
        length = _transport_length(network) - transport.off * 4
        flags = frozenset(name for bit, name in _TCP_FLAG_NAMES if transport.flags & bit)
        return Packet(
            0.0, timestamp, src, transport.sport, dst, transport.dport, "tcp", flags,
            transport.seq, transport.ack, transport.win, max(length, len(payload)), payload,
        )  # fmt: skip
    if isinstance(transport, dpkt.udp.UDP):
        payload = bytes(transport.data)
        if payload.startswith(MARKER_PREFIX):
            return None
        length = max(transport.ulen - 8, len(payload))
        return Packet(0.0, timestamp, src, transport.sport, dst, transport.dport, "udp", frozenset(), 0, 0, 0, length, payload)
    return None


def _transport_length(network: dpkt.ip.IP | dpkt.ip6.IP6) -> int:
    """Bytes after the IP header(s) on the wire, from the IP header: frames may be cut short."""
    if isinstance(network, dpkt.ip.IP):
        # A zero total length comes from segmentation offload: the frame is all there is.
        return network.len - network.hl * 4 if network.len else len(network.data)
    extensions = sum(header.length for header in network.all_extension_headers)
    return network.plen - extensions if network.plen else len(network.data)


def _network_layer(linktype: int, frame: bytes) -> object:
    """The IP or IPv6 object inside ``frame`` (anything else is skipped by the caller)."""
    if linktype == _LINKTYPE_ETHERNET:
        return dpkt.ethernet.Ethernet(frame).data
    if linktype == _LINKTYPE_LINUX_SLL:
        return dpkt.sll.SLL(frame).data
    if linktype == _LINKTYPE_LINUX_SLL2:
        return dpkt.sll2.SLL2(frame).data
    if linktype in (_LINKTYPE_NULL, _LINKTYPE_LOOP):
        return dpkt.loopback.Loopback(frame).data
    if linktype in _LINKTYPE_RAW_ALIASES and frame:
        version = frame[0] >> 4
        if version == 4:
            return dpkt.ip.IP(frame)
        if version == 6:
            return dpkt.ip6.IP6(frame)
    return None


def datagrams_to(captured: Iterable[Packet], port: int) -> list[Packet]:
    """Every UDP datagram sent to ``port``, in capture order; their ``timestamp`` is the kernel's.

    Example::

        requests = datagrams_to(captured, server_port)
        waits = [b.timestamp - a.timestamp for a, b in zip(requests, requests[1:])]
    """
    return [p for p in captured if p.proto == "udp" and p.dport == port]


# TLS record content types (RFC 8446 section 5.1, RFC 5246 section 6.2.1, RFC 6520).
_TLS_CONTENT_TYPES = {20: "change_cipher_spec", 21: "alert", 22: "handshake", 23: "application_data", 24: "heartbeat"}
# The longest fragment a record may carry: 2^14 + 2048 (TLS 1.2 ciphertext; TLS 1.3 allows less).
_TLS_MAX_FRAGMENT = 2**14 + 2048


@dataclass(frozen=True)
class TLSRecord:
    """The header of one TLS record seen in a TCP payload (the fragment stays encrypted).

    Attributes:
        content_type: 20 change_cipher_spec, 21 alert, 22 handshake,
            23 application_data (TLS 1.3 sends every encrypted record,
            alerts included, as 23), 24 heartbeat.
        version: the record-layer version field (0x0303 for TLS 1.2 and 1.3).
        length: bytes of the fragment that follows the 5-byte header.
    """

    content_type: int
    version: int
    length: int

    @property
    def kind(self) -> str:
        """The content type's name, ``"alert"``, ``"application_data"``..."""
        return _TLS_CONTENT_TYPES.get(self.content_type, f"type {self.content_type}")


def tls_records(payload: bytes) -> list[TLSRecord] | None:
    """The TLS records ``payload`` holds, or None unless it is whole records from its first byte.

    None also when the payload is not TLS, starts in the middle of a record,
    ends in the middle of one, or was cut by the capture's snapshot length:
    a caller that gets None knows nothing about the records, and says so.
    Header decoding is dpkt's (``dpkt.ssl``).

    Example::

        records = tls_records(segment.payload)
        if records and records[-1].kind == "alert":
            print("a TLS 1.2 alert (close_notify or an error) ends this segment")
    """
    if not payload:
        return None
    try:
        parsed, used = dpkt.ssl.tls_multi_factory(payload)
    except (dpkt.ssl.SSL3Exception, dpkt.UnpackError):
        return None
    records = [TLSRecord(record.type, record.version, record.length) for record in parsed]
    if used != len(payload) or any(r.content_type not in _TLS_CONTENT_TYPES or r.length > _TLS_MAX_FRAGMENT for r in records):
        return None
    return records
