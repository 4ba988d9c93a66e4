"""Tests of pytest_netlab.capture: real captures of real loopback traffic.

Each test runs once per backend this machine permits (tcpdump, AF_PACKET) and
is skipped with the reason otherwise. Races at start and stop are what capture
gets wrong, so those tests repeat their exchange a few times.
"""

from __future__ import annotations

import gc
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pytest_netlab.capture import (
    HOW_TO_ENABLE,
    CaptureBackend,
    LoopbackCapture,
    capture_support,
)
from pytest_netlab.packets import Packet, data_after_fin, first_fin, ladder, packets, resets

TIMEOUT = 10.0  # every socket operation and join; generous for a loaded 2-core machine
REPEATS = 5  # for the race-prone properties


@pytest.fixture(params=list(CaptureBackend), ids=lambda b: b.value)
def backend(request: pytest.FixtureRequest) -> CaptureBackend:
    backend: CaptureBackend = request.param
    support = capture_support(backend)
    if not support.available:
        pytest.skip(support.reason)
    return backend


@contextmanager
def tcp_server(handle: Callable[[socket.socket], object], host: str = "127.0.0.1") -> Iterator[int]:
    """Serve one connection with ``handle`` in a daemon thread; yields the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.settimeout(TIMEOUT)
    listener.bind((host, 0))
    listener.listen(1)
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                handle(conn)
        except BaseException as exc:  # re-raised in the test thread
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        thread.join(TIMEOUT)
        listener.close()
    assert not thread.is_alive(), "server thread did not finish"
    if errors:
        raise errors[0]


def connect(port: int, host: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection((host, port), timeout=TIMEOUT)


def recv_to_eof(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    for _ in range(1000):
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
    raise AssertionError("peer never closed")


def reply_then_close(request: bytes, reply: bytes) -> Callable[[socket.socket], None]:
    """A server that reads ``request``, replies, half-closes, and waits for the client's FIN."""

    def handle(conn: socket.socket) -> None:
        assert conn.recv(len(request), socket.MSG_WAITALL) == request
        conn.sendall(reply)
        conn.shutdown(socket.SHUT_WR)
        assert conn.recv(1) == b""

    return handle


def tcp_only(captured: list[Packet]) -> list[Packet]:
    return [p for p in captured if p.proto == "tcp"]


def test_orderly_close_shows_fin_first_from_server_and_no_reset(backend: CaptureBackend, tmp_path: Path) -> None:
    with tcp_server(reply_then_close(b"ping", b"pong")) as port:
        with LoopbackCapture([port], tmp_path / "orderly.pcap", protocol="tcp", backend=backend) as capture:
            with connect(port) as client:
                client_port = client.getsockname()[1]
                client.sendall(b"ping")
                assert recv_to_eof(client) == b"pong"
    captured = capture.packets()
    explain = ladder(captured, server_port=port)
    assert captured[0].flags == {"SYN"} and captured[0].sport == client_port, explain
    fin = first_fin(captured)
    assert fin is not None and fin.sport == port, explain
    assert resets(captured) == [], explain
    assert [p.payload for p in captured if p.payload] == [b"ping", b"pong"], explain
    # The very last packet, the server's ACK of the client's FIN, made it into the file.
    client_fin = next(p for p in captured if "FIN" in p.flags and p.sport == client_port)
    last = captured[-1]
    assert (last.sport, last.ack, last.flags) == (port, (client_fin.seq + 1) % 2**32, {"ACK"}), explain
    assert capture.dropped == 0


def test_linger_zero_close_sends_a_reset_from_the_server(backend: CaptureBackend, tmp_path: Path) -> None:
    def abort(conn: socket.socket) -> None:
        assert conn.recv(4, socket.MSG_WAITALL) == b"ping"
        # SO_LINGER on with a zero timeout: close() discards and sends RST instead of FIN.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    with tcp_server(abort) as port:
        with LoopbackCapture([port], tmp_path / "reset.pcap", backend=backend) as capture:
            with connect(port) as client:
                client_port = client.getsockname()[1]
                client.sendall(b"ping")
                with pytest.raises(ConnectionResetError):
                    client.recv(1)
    captured = capture.packets()
    explain = ladder(captured, server_port=port)
    [reset] = resets(captured)
    assert (reset.sport, reset.dport) == (port, client_port), explain
    assert first_fin(captured) is None, explain


def test_the_first_syn_is_never_missed(backend: CaptureBackend, tmp_path: Path) -> None:
    for attempt in range(REPEATS):
        with tcp_server(lambda conn: None) as port:
            capture = LoopbackCapture([port], tmp_path / f"syn{attempt}.pcap", protocol="tcp", backend=backend).start()
            # No pause between start() and the SYN: start() returning is the guarantee.
            with connect(port) as client:
                client_port = client.getsockname()[1]
            capture.stop()
        first = capture.packets()[0]
        assert (first.flags, first.sport, first.dport) == ({"SYN"}, client_port, port), f"attempt {attempt}"


def test_packets_sent_just_before_stop_are_kept(backend: CaptureBackend, tmp_path: Path) -> None:
    release = threading.Event()
    for attempt in range(REPEATS):
        release.clear()
        with tcp_server(lambda conn: release.wait(TIMEOUT)) as port:
            with connect(port) as client:
                capture = LoopbackCapture([port], tmp_path / f"last{attempt}.pcap", backend=backend).start()
                client.sendall(b"last words %d" % attempt)
                capture.stop()  # at once: the segment was sent, so it must be in the file
            release.set()
        captured = capture.packets()
        assert captured, f"attempt {attempt}: nothing captured"
        assert captured[0].payload == b"last words %d" % attempt, f"attempt {attempt}:\n{ladder(captured)}"


def test_udp_capture_keeps_datagrams_in_order_without_markers(backend: CaptureBackend, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        server.bind(("127.0.0.1", 0))
        client.settimeout(TIMEOUT)
        server.settimeout(TIMEOUT)
        port = server.getsockname()[1]
        with LoopbackCapture([port], tmp_path / "udp.pcap", protocol="udp", backend=backend) as capture:
            for n in range(3):
                client.sendto(b"question %d" % n, ("127.0.0.1", port))
                data, address = server.recvfrom(100)
                server.sendto(data.upper(), address)
                assert client.recv(100) == data.upper()
    captured = capture.packets()
    assert [(p.proto, p.dport == port, p.payload) for p in captured] == [
        ("udp", to_server, (b"question %d" if to_server else b"QUESTION %d") % n)
        for n in range(3)
        for to_server in (True, False)
    ]


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="IPv6 loopback (::1) is not available on this machine")
def test_ipv6_exchange(backend: CaptureBackend, tmp_path: Path) -> None:
    with tcp_server(reply_then_close(b"six", b"SIX"), host="::1") as port:
        with LoopbackCapture([port], tmp_path / "v6.pcap", backend=backend) as capture:
            with connect(port, host="::1") as client:
                client.sendall(b"six")
                assert recv_to_eof(client) == b"SIX"
    captured = capture.packets()
    assert {(p.src, p.dst) for p in captured} == {("::1", "::1")}
    assert captured[0].flags == {"SYN"}
    assert [p.payload for p in captured if p.payload] == [b"six", b"SIX"]


def test_only_the_given_ports_are_kept(backend: CaptureBackend, tmp_path: Path) -> None:
    with tcp_server(reply_then_close(b"a", b"A")) as watched, tcp_server(reply_then_close(b"b", b"B")) as ignored:
        with LoopbackCapture([watched], tmp_path / "one.pcap", backend=backend) as capture:
            for port, message in ((watched, b"a"), (ignored, b"b")):
                with connect(port) as client:
                    client.sendall(message)
                    recv_to_eof(client)
    captured = capture.packets()
    assert captured and all(watched in (p.sport, p.dport) for p in captured)
    assert [p.payload for p in captured if p.payload] == [b"a", b"A"]


def test_half_close_shows_data_after_the_clients_fin(backend: CaptureBackend, tmp_path: Path) -> None:
    def answer_after_eof(conn: socket.socket) -> None:
        assert recv_to_eof(conn) == b"question"
        conn.sendall(b"answer")

    with tcp_server(answer_after_eof) as port:
        with LoopbackCapture([port], tmp_path / "half.pcap", protocol="tcp", backend=backend) as capture:
            with connect(port) as client:
                client_port = client.getsockname()[1]
                client.sendall(b"question")
                client.shutdown(socket.SHUT_WR)
                assert recv_to_eof(client) == b"answer"
    late = data_after_fin(capture.packets(), side=client_port)
    assert [(p.sport, p.payload) for p in late] == [(port, b"answer")]


def test_a_large_transfer_keeps_wire_lengths_beyond_the_snapshot(backend: CaptureBackend, tmp_path: Path) -> None:
    data = bytes(range(256)) * 400  # 100 KiB: loopback segments far longer than DEFAULT_SNAPLEN

    def sink(conn: socket.socket) -> None:
        assert recv_to_eof(conn) == data

    with tcp_server(sink) as port:
        with LoopbackCapture([port], tmp_path / "large.pcap", protocol="tcp", backend=backend) as capture:
            with connect(port) as client:
                client.sendall(data)
                client.shutdown(socket.SHUT_WR)
                assert recv_to_eof(client) == b""
    captured = capture.packets()
    syn = captured[0]
    segments = [p for p in captured if p.dport == port and p.length]
    assert sum(p.length for p in segments) == len(data), ladder(captured, server_port=port)
    assert any(p.truncated for p in segments)
    for p in segments:  # what was kept is the start of what was sent at that sequence number
        offset = (p.seq - syn.seq - 1) % 2**32
        assert data[offset : offset + len(p.payload)] == p.payload


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_tshark_reads_the_file(backend: CaptureBackend, tmp_path: Path) -> None:
    request = b"ping" * 1000  # longer than the snapshot length: frames are kept cut short
    with tcp_server(reply_then_close(request, b"pong")) as port:
        with LoopbackCapture([port], tmp_path / "for-tshark.pcap", protocol="tcp", backend=backend) as capture:
            with connect(port) as client:
                client.sendall(request)
                recv_to_eof(client)
    fields = ["tcp.srcport", "tcp.len", "frame.len", "frame.cap_len"]
    result = subprocess.run(
        ["tshark", "-n", "-r", str(capture.path), "-Y", "tcp", "-T", "fields", *(f for name in fields for f in ("-e", name))],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [tuple(map(int, line.split("\t"))) for line in result.stdout.splitlines()]
    assert [(port, length) for port, length, _, _ in rows] == [(p.sport, p.length) for p in tcp_only(capture.packets())]
    # The file records each frame's length on the wire beside the bytes it kept.
    assert any(wire > kept for _, _, wire, kept in rows)
    assert all(wire >= kept for _, _, wire, kept in rows)


def _our_tcpdump_children() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after ")".
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if comm == "tcpdump" and ppid == os.getpid():
            found.append(int(entry.name))
    return found


def _leftovers() -> tuple[list[int], list[str]]:
    threads = [t.name for t in threading.enumerate() if t.name == "netlab-af-packet"]
    return _our_tcpdump_children(), threads


def test_nothing_outlives_stop_an_error_or_an_abandoned_capture(backend: CaptureBackend, tmp_path: Path) -> None:
    capture = LoopbackCapture([9], tmp_path / "a.pcap", backend=backend).start()
    assert capture.running
    capture.stop()
    capture.stop()  # idempotent
    assert not capture.running and _leftovers() == ([], [])

    with pytest.raises(ZeroDivisionError):
        with LoopbackCapture([9], tmp_path / "b.pcap", backend=backend):
            1 / 0  # noqa: B018
    assert _leftovers() == ([], [])

    abandoned = LoopbackCapture([9], tmp_path / "c.pcap", backend=backend).start()
    del abandoned
    gc.collect()
    assert _leftovers() == ([], [])


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="1..65535"):
        LoopbackCapture([0], tmp_path / "x.pcap")
    with pytest.raises(ValueError, match="protocol"):
        LoopbackCapture([80], tmp_path / "x.pcap", protocol="icmp")  # type: ignore[arg-type]


def test_without_privileges_capture_is_unavailable_and_says_how_to_enable_it(tmp_path: Path) -> None:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and util-linux setpriv to drop the capture capabilities")
    # Root without capabilities (an empty bounding set) is refused capture like a normal user.
    script = (
        "from pytest_netlab.capture import LoopbackCapture, CaptureUnavailable, capture_support\n"
        "print(capture_support().reason)\n"
        f"try:\n    LoopbackCapture([80], {str(tmp_path / 'no.pcap')!r}).start()\n"
        "except CaptureUnavailable:\n    print('CaptureUnavailable raised')\n"
    )
    result = subprocess.run(
        [setpriv, "--bounding-set=-all", "--inh-caps=-all", sys.executable, "-c", script],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    reason, verdict = result.stdout.splitlines()
    assert reason.startswith("packet capture is not permitted here: ")
    assert "Operation not permitted" in reason and reason.endswith(HOW_TO_ENABLE)
    assert verdict == "CaptureUnavailable raised"
    assert not (tmp_path / "no.pcap").exists() or packets(tmp_path / "no.pcap") == []


def test_cut_between_resumes_at_the_begin_marker_it_found(tmp_path: Path) -> None:
    import dpkt

    from pytest_netlab.run_capture import cut_between

    source = tmp_path / "run.pcap"
    with open(source, "wb") as out:
        writer = dpkt.pcap.Writer(out, linktype=dpkt.pcap.DLT_EN10MB)
        frames = [b"noise-%d" % i for i in range(50)] + [b"..BEGIN-2..", b"inside-a", b"inside-b", b"..END-2..", b"after"]
        for index, frame in enumerate(frames):
            writer.writepkt(frame, float(index))
    whole, offset = cut_between(source, b"BEGIN-2", b"END-2", tmp_path / "whole.pcap")
    assert whole == 2 and offset is not None and offset > 24 + 50 * 16
    resumed, again = cut_between(source, b"BEGIN-2", b"END-2", tmp_path / "resumed.pcap", start=offset)
    assert (resumed, again) == (2, offset)
    assert (tmp_path / "resumed.pcap").read_bytes() == (tmp_path / "whole.pcap").read_bytes()
    missing, none = cut_between(source, b"BEGIN-1", b"END-1", tmp_path / "missing.pcap", start=offset)
    assert (missing, none) == (0, None)
