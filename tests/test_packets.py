"""Tests of pytest_netlab.packets on pcap files written here with dpkt's writer."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_netlab.packets import (
    MARKER_PREFIX,
    Packet,
    data_after_fin,
    first_fin,
    ladder,
    packets,
    read_packets,
    datagrams_to,
    decode_frame,
    frame_ports,
    resets,
    tls_records,
)

_LINK_ETHERNET = dpkt.pcap.DLT_EN10MB
SYN, ACK, FIN, RST, PSH = (dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN, dpkt.tcp.TH_RST, dpkt.tcp.TH_PUSH)
CLIENT = ("127.0.0.1", 50000)
SERVER = ("127.0.0.1", 7000)


def tcp(src: tuple[str, int], dst: tuple[str, int], flags: int, seq: int = 0, ack: int = 0, payload: bytes = b"", window: int = 65535) -> bytes:
    """An IP packet (v4 or v6 by address) carrying one TCP segment."""
    segment = dpkt.tcp.TCP(sport=src[1], dport=dst[1], seq=seq, ack=ack, flags=flags, win=window, data=payload)
    return _ip(src[0], dst[0], dpkt.ip.IP_PROTO_TCP, segment)


def udp(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    datagram = dpkt.udp.UDP(sport=src[1], dport=dst[1], ulen=8 + len(payload), data=payload)
    return _ip(src[0], dst[0], dpkt.ip.IP_PROTO_UDP, datagram)


def _ip(src: str, dst: str, proto: int, transport: dpkt.Packet) -> bytes:
    if ":" in src:
        v6 = socket.AF_INET6
        header = dpkt.ip6.IP6(src=socket.inet_pton(v6, src), dst=socket.inet_pton(v6, dst), nxt=proto, hlim=64)
        header.plen = len(bytes(transport))
        header.data = transport
        return bytes(header)
    v4 = socket.AF_INET
    return bytes(dpkt.ip.IP(src=socket.inet_pton(v4, src), dst=socket.inet_pton(v4, dst), p=proto, ttl=64, data=transport))


def ethernet(ip_packet: bytes) -> bytes:
    kind = dpkt.ethernet.ETH_TYPE_IP6 if ip_packet[0] >> 4 == 6 else dpkt.ethernet.ETH_TYPE_IP
    return bytes(dpkt.ethernet.Ethernet(src=b"\0" * 6, dst=b"\0" * 6, type=kind, data=ip_packet))


def write_pcap(path: Path, frames: list[tuple[float, bytes]], *, linktype: int = dpkt.pcap.DLT_EN10MB, nano: bool = False) -> Path:
    with open(path, "wb") as stream:
        writer = dpkt.pcap.Writer(stream, snaplen=65535, linktype=linktype, nano=nano)
        for timestamp, frame in frames:
            writer.writepkt(frame, ts=timestamp)
    return path


def handshake_and_close() -> list[tuple[float, bytes]]:
    """A whole exchange: handshake, request, reply, server closes first."""
    return [
        (100.0, ethernet(tcp(CLIENT, SERVER, SYN, seq=1000))),
        (100.25, ethernet(tcp(SERVER, CLIENT, SYN | ACK, seq=5000, ack=1001))),
        (100.5, ethernet(tcp(CLIENT, SERVER, ACK, seq=1001, ack=5001))),
        (100.75, ethernet(tcp(CLIENT, SERVER, PSH | ACK, seq=1001, ack=5001, payload=b"hello"))),
        (101.0, ethernet(tcp(SERVER, CLIENT, PSH | ACK, seq=5001, ack=1006, payload=b"HELLO"))),
        (101.25, ethernet(tcp(SERVER, CLIENT, FIN | ACK, seq=5006, ack=1006))),
        (101.5, ethernet(tcp(CLIENT, SERVER, FIN | ACK, seq=1006, ack=5007))),
        (101.75, ethernet(tcp(SERVER, CLIENT, ACK, seq=5007, ack=1007))),
    ]


def test_tcp_fields_are_exact(tmp_path: Path) -> None:
    path = write_pcap(tmp_path / "x.pcap", handshake_and_close())
    parsed = packets(path)
    assert len(parsed) == 8
    assert parsed[0] == Packet(
        t=0.0, timestamp=100.0, src="127.0.0.1", sport=50000, dst="127.0.0.1", dport=7000, proto="tcp",
        flags=frozenset({"SYN"}), seq=1000, ack=0, window=65535, length=0, payload=b"",
    )  # fmt: skip
    reply = parsed[4]
    assert (reply.t, reply.sender, reply.receiver) == (1.0, SERVER, CLIENT)
    assert (reply.flags, reply.seq, reply.ack, reply.payload, reply.length) == ({"PSH", "ACK"}, 5001, 1006, b"HELLO", 5)
    assert not reply.truncated
    assert reply.flag_text == "PSH, ACK"
    assert parsed[1].flag_text == "SYN, ACK"
    assert [p.t for p in parsed] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75]


def test_window_is_the_raw_header_field(tmp_path: Path) -> None:
    path = write_pcap(tmp_path / "w.pcap", [(1.0, ethernet(tcp(CLIENT, SERVER, ACK, window=512)))])
    assert packets(path)[0].window == 512


def test_ipv6_udp_datagram(tmp_path: Path) -> None:
    frames = [(5.5, ethernet(udp(("::1", 40000), ("::1", 53), b"query")))]
    [datagram] = packets(write_pcap(tmp_path / "v6.pcap", frames))
    assert datagram == Packet(
        t=0.0, timestamp=5.5, src="::1", sport=40000, dst="::1", dport=53, proto="udp",
        flags=frozenset(), seq=0, ack=0, window=0, length=5, payload=b"query",
    )  # fmt: skip
    assert datagram.flag_text == "UDP"


def test_markers_and_non_transport_frames_are_skipped(tmp_path: Path) -> None:
    marker = ethernet(udp(("127.0.0.1", 41000), ("127.0.0.1", 41000), MARKER_PREFIX + b"start pid=1 capture=1"))
    icmp = ethernet(_ip("127.0.0.1", "127.0.0.1", dpkt.ip.IP_PROTO_ICMP, dpkt.icmp.ICMP(type=8, data=b"ping")))
    arp = bytes(dpkt.ethernet.Ethernet(src=b"\0" * 6, dst=b"\xff" * 6, type=dpkt.ethernet.ETH_TYPE_ARP, data=dpkt.arp.ARP()))
    frames = [(10.0, marker), (10.5, icmp), (11.0, ethernet(tcp(CLIENT, SERVER, SYN))), (11.5, arp), (12.0, marker)]
    parsed = packets(write_pcap(tmp_path / "m.pcap", frames))
    # Only the SYN remains, and time starts at it, not at the marker before it.
    assert [(p.t, p.flags) for p in parsed] == [(0.0, {"SYN"})]


def _sll(ip_packet: bytes) -> bytes:
    ethtype = dpkt.ethernet.ETH_TYPE_IP6 if ip_packet[0] >> 4 == 6 else dpkt.ethernet.ETH_TYPE_IP
    return bytes(dpkt.sll.SLL(type=0, hrd=772, hlen=6, hdr=b"\0" * 8, ethtype=ethtype, data=ip_packet))


def _sll2(ip_packet: bytes) -> bytes:
    ethtype = dpkt.ethernet.ETH_TYPE_IP6 if ip_packet[0] >> 4 == 6 else dpkt.ethernet.ETH_TYPE_IP
    return bytes(dpkt.sll2.SLL2(ethtype=ethtype, intindex=1, hrd=772, type=0, hlen=6, hdr=b"\0" * 8, data=ip_packet))


def _null(ip_packet: bytes) -> bytes:
    family = 24 if ip_packet[0] >> 4 == 6 else 2
    return family.to_bytes(4, "little") + ip_packet


def _loop(ip_packet: bytes) -> bytes:
    family = 24 if ip_packet[0] >> 4 == 6 else 2
    return family.to_bytes(4, "big") + ip_packet


@pytest.mark.parametrize(
    ("linktype", "frame"),
    [
        pytest.param(1, ethernet, id="ethernet"),
        pytest.param(113, _sll, id="linux-cooked-v1"),
        pytest.param(276, _sll2, id="linux-cooked-v2"),
        pytest.param(0, _null, id="bsd-null"),
        pytest.param(108, _loop, id="openbsd-loop"),
        pytest.param(101, lambda ip: ip, id="raw-ip"),
    ],
)
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_every_loopback_link_type(tmp_path: Path, linktype: int, frame: object, host: str) -> None:
    ip_packet = tcp((host, 50000), (host, 7000), PSH | ACK, seq=7, ack=9, payload=b"data")
    [parsed] = packets(write_pcap(tmp_path / "l.pcap", [(1.0, frame(ip_packet))], linktype=linktype))  # type: ignore[operator]
    assert (parsed.src, parsed.sport, parsed.dport, parsed.seq, parsed.ack, parsed.payload) == (host, 50000, 7000, 7, 9, b"data")


def test_nanosecond_pcap_gives_float_times(tmp_path: Path) -> None:
    frames = [(1.0, ethernet(tcp(CLIENT, SERVER, SYN))), (1.000000123, ethernet(tcp(SERVER, CLIENT, SYN | ACK)))]
    parsed = packets(write_pcap(tmp_path / "ns.pcap", frames, nano=True))
    assert all(isinstance(p.t, float) for p in parsed)
    assert parsed[1].t == pytest.approx(123e-9, abs=1e-12)


def test_pcapng_is_read_too() -> None:
    stream = io.BytesIO()
    writer = dpkt.pcapng.Writer(stream, snaplen=65535, linktype=dpkt.pcap.DLT_EN10MB)
    writer.writepkt(ethernet(tcp(CLIENT, SERVER, SYN)), ts=3.0)
    stream.seek(0)
    assert [p.flags for p in read_packets(stream)] == [{"SYN"}]


def test_a_partial_last_record_keeps_the_packets_before_it(tmp_path: Path) -> None:
    path = write_pcap(tmp_path / "cut.pcap", handshake_and_close())
    path.write_bytes(path.read_bytes()[:-10])
    assert len(packets(path)) == 7


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_frame_cut_by_the_snapshot_length_keeps_its_wire_length(tmp_path: Path, host: str) -> None:
    segment = ethernet(tcp((host, 50000), (host, 7000), ACK, payload=b"x" * 3000))
    datagram = ethernet(udp((host, 50000), (host, 53), b"y" * 3000))
    cut = len(segment) - 2990  # 10 payload bytes kept
    parsed = packets(write_pcap(tmp_path / "cut.pcap", [(1.0, segment[:cut]), (2.0, datagram[:cut])]))
    assert [(p.proto, p.length, p.payload, p.truncated) for p in parsed] == [
        ("tcp", 3000, b"x" * 10, True),
        ("udp", 3000, b"y" * (10 + 12), True),  # a UDP header is 12 bytes shorter than this TCP one
    ]


def test_an_empty_capture_has_no_packets(tmp_path: Path) -> None:
    assert packets(write_pcap(tmp_path / "empty.pcap", [])) == []


@settings(max_examples=60, deadline=None)
@given(
    segments=st.lists(
        st.tuples(
            st.integers(1, 65535), st.integers(1, 65535), st.integers(0, 255), st.integers(0, 2**32 - 1),
            st.integers(0, 2**32 - 1), st.integers(0, 65535), st.binary(max_size=64), st.booleans(),
        ),  # fmt: skip
        max_size=8,
    )
)
def test_what_is_written_is_read_back(segments: list[tuple[int, int, int, int, int, int, bytes, bool]]) -> None:
    stream = io.BytesIO()
    writer = dpkt.pcap.Writer(stream, snaplen=65535)
    for index, (sport, dport, flags, seq, ack, window, payload, v6) in enumerate(segments):
        host = "::1" if v6 else "127.0.0.1"
        writer.writepkt(ethernet(tcp((host, sport), (host, dport), flags, seq, ack, payload, window)), ts=50.0 + index)
    stream.seek(0)
    parsed = read_packets(stream)
    assert [(p.sport, p.dport, p.seq, p.ack, p.window, p.payload, p.src) for p in parsed] == [
        (sport, dport, seq, ack, window, payload, "::1" if v6 else "127.0.0.1")
        for sport, dport, _, seq, ack, window, payload, v6 in segments
    ]
    for p, (_, _, flags, *_) in zip(parsed, segments):
        assert {"SYN", "FIN", "RST", "ACK"} & p.flags == {
            name for bit, name in ((SYN, "SYN"), (FIN, "FIN"), (RST, "RST"), (ACK, "ACK")) if flags & bit
        }


# ---- questions about an exchange ---------------------------------------------------------


def parsed_exchange(tmp_path: Path, frames: list[tuple[float, bytes]]) -> list[Packet]:
    return packets(write_pcap(tmp_path / "e.pcap", frames))


def test_first_fin_names_who_closed_first(tmp_path: Path) -> None:
    fin = first_fin(parsed_exchange(tmp_path, handshake_and_close()))
    assert fin is not None and fin.sender == SERVER and fin.t == 1.25


def test_no_fin_and_no_reset(tmp_path: Path) -> None:
    parsed = parsed_exchange(tmp_path, handshake_and_close()[:3])
    assert first_fin(parsed) is None
    assert resets(parsed) == []


def test_resets_are_found_with_their_sender(tmp_path: Path) -> None:
    frames = handshake_and_close()[:4] + [(101.0, ethernet(tcp(SERVER, CLIENT, RST | ACK, seq=5001, ack=1006)))]
    [reset] = resets(parsed_exchange(tmp_path, frames))
    assert reset.sender == SERVER and reset.flags == {"RST", "ACK"}


def test_data_after_fin_shows_a_half_close_honoured(tmp_path: Path) -> None:
    frames = handshake_and_close()[:4] + [
        (101.0, ethernet(tcp(CLIENT, SERVER, FIN | ACK, seq=1006, ack=5001))),  # client: done writing
        (101.25, ethernet(tcp(SERVER, CLIENT, PSH | ACK, seq=5001, ack=1007, payload=b"HELLO"))),
        (101.5, ethernet(tcp(SERVER, CLIENT, FIN | ACK, seq=5006, ack=1007))),
    ]
    parsed = parsed_exchange(tmp_path, frames)
    assert [(p.sender, p.payload) for p in data_after_fin(parsed, side=CLIENT[1])] == [(SERVER, b"HELLO")]
    # The server sent nothing after its own FIN.
    assert data_after_fin(parsed, side=SERVER[1]) == []


def test_data_after_fin_is_per_connection(tmp_path: Path) -> None:
    other = ("127.0.0.1", 50001)
    frames = [
        (1.0, ethernet(tcp(CLIENT, SERVER, FIN | ACK, seq=10))),
        (2.0, ethernet(tcp(other, SERVER, PSH | ACK, seq=20, payload=b"unrelated"))),
    ]
    assert data_after_fin(parsed_exchange(tmp_path, frames), side=CLIENT[1]) == []


def test_ladder_reads_like_the_exchange(tmp_path: Path) -> None:
    text = ladder(parsed_exchange(tmp_path, handshake_and_close()), server_port=SERVER[1])
    assert text.splitlines() == [
        "  0.000  client -> server  [SYN]",
        "  0.250  server -> client  [SYN, ACK]",
        "  0.500  client -> server  [ACK]",
        "  0.750  client -> server  [PSH, ACK] 5 bytes b'hello'",
        "  1.000  server -> client  [PSH, ACK] 5 bytes b'HELLO'",
        "  1.250  server -> client  [FIN, ACK]",
        "  1.500  client -> server  [FIN, ACK]",
        "  1.750  server -> client  [ACK]",
    ]


def test_ladder_elides_the_middle_of_a_long_exchange(tmp_path: Path) -> None:
    frames = [(float(i), ethernet(tcp(CLIENT, SERVER, ACK, seq=i))) for i in range(50)]
    lines = ladder(parsed_exchange(tmp_path, frames), server_port=SERVER[1], limit=10).splitlines()
    assert len(lines) == 11
    assert lines[0].startswith("  0.000") and lines[-1].startswith(" 49.000")
    assert lines[5] == "  ... 40 packets not shown ..."


def test_ladder_names_several_clients_and_unknown_endpoints(tmp_path: Path) -> None:
    second = ("127.0.0.1", 50001)
    frames = [(1.0, ethernet(tcp(CLIENT, SERVER, SYN))), (2.0, ethernet(tcp(second, SERVER, SYN)))]
    parsed = parsed_exchange(tmp_path, frames)
    assert ladder(parsed, server_port=SERVER[1]).splitlines() == [
        "  0.000  client:50000 -> server        [SYN]",
        "  1.000  client:50001 -> server        [SYN]",
    ]
    assert ladder(parsed).splitlines()[0] == "  0.000  127.0.0.1:50000 -> 127.0.0.1:7000   [SYN]"
    v6 = parsed_exchange(tmp_path, [(1.0, ethernet(udp(("::1", 5), ("::1", 6), b"x")))])
    assert ladder(v6, client_port=5) == "  0.000   client -> [::1]:6  [UDP] 1 bytes b'x'"


def test_ladder_of_nothing() -> None:
    assert ladder([]) == "  (no packets captured)"


def test_datagrams_to_a_port_keep_their_kernel_times(tmp_path: Path) -> None:
    frames = [
        (10.0, ethernet(udp(CLIENT, SERVER, b"request"))),
        (10.1, ethernet(udp(SERVER, CLIENT, b"reply"))),
        (10.5, ethernet(tcp(CLIENT, SERVER, SYN))),  # TCP to the same port is not a datagram
        (10.75, ethernet(udp(CLIENT, SERVER, b"request"))),
    ]
    requests = datagrams_to(parsed_exchange(tmp_path, frames), SERVER[1])
    assert [(p.sender, p.payload, p.timestamp) for p in requests] == [(CLIENT, b"request", 10.0), (CLIENT, b"request", 10.75)]
    assert datagrams_to(parsed_exchange(tmp_path, frames), 9) == []


def record(content_type: int, fragment: bytes, version: int = 0x0303) -> bytes:
    return bytes([content_type]) + version.to_bytes(2, "big") + len(fragment).to_bytes(2, "big") + fragment


def test_tls_records_are_read_header_by_header() -> None:
    payload = record(23, b"\xaa" * 30) + record(21, b"\xbb" * 26)
    assert [(r.kind, r.version, r.length) for r in tls_records(payload) or []] == [("application_data", 0x0303, 30), ("alert", 0x0303, 26)]
    assert [r.kind for r in tls_records(record(22, b"hello", version=0x0301)) or []] == ["handshake"]


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"GET / HTTP/1.1\r\n\r\n",  # not TLS
        record(23, b"x" * 30)[:-1],  # ends inside the record (cut by the snapshot length)
        record(23, b"x" * 30)[3:],  # starts inside a record
        record(23, b"x" * 30) + b"\x17\x03",  # a header cut short after a whole record
        record(99, b"x"),  # no such content type
    ],
)
def test_tls_records_are_none_unless_the_payload_is_whole_records(payload: bytes) -> None:
    assert tls_records(payload) is None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_tls_records_never_raise(payload: bytes) -> None:
    records = tls_records(payload)
    assert records is None or sum(5 + r.length for r in records) == len(payload)


@given(
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.sampled_from(["127.0.0.1", "::1"]),
    st.sampled_from(["tcp", "udp"]),
    st.sampled_from([_LINK_ETHERNET, 113, 101]),
)
def test_frame_ports_agree_with_the_decoder(sport: int, dport: int, host: str, protocol: str, linktype: int) -> None:
    ip_packet = tcp((host, sport), (host, dport), dpkt.tcp.TH_ACK) if protocol == "tcp" else udp((host, sport), (host, dport), b"x")
    frame = {_LINK_ETHERNET: ethernet, 113: _sll, 101: lambda p: p}[linktype](ip_packet)
    decoded = decode_frame(0.0, linktype, frame)
    assert decoded is not None
    assert frame_ports(linktype, frame) == (decoded.sport, decoded.dport) == (sport, dport)


def test_frame_ports_of_what_is_not_tcp_or_udp_is_none() -> None:
    arp = bytes(dpkt.ethernet.Ethernet(src=b"\0" * 6, dst=b"\xff" * 6, type=dpkt.ethernet.ETH_TYPE_ARP, data=dpkt.arp.ARP()))
    assert frame_ports(_LINK_ETHERNET, arp) is None
    assert frame_ports(_LINK_ETHERNET, b"\0" * 10) is None
