"""Tests of the TCP fault proxy: the pure fault model, then the proxy between real loopback sockets."""

from __future__ import annotations

import queue
import random
import socket
import struct
import threading
import time
from typing import Any, Callable, Iterator

import pytest

from pytest_netlab._tcp_faults import CLOSE, RESET, STALL, FaultSchedule
from pytest_netlab.tcp_proxy import TCPFaultProxy, TCPFaults
from pytest_netlab.transcript import CLIENT_TO_SERVER, SERVER_TO_CLIENT

C2S, S2C = CLIENT_TO_SERVER, SERVER_TO_CLIENT
TIMEOUT = 5.0
# A fault that changes nothing but sends connections through the careful pump.
CAREFUL = TCPFaults(slice_size=1 << 20)
PUMPS = pytest.mark.parametrize("faults", [TCPFaults(), CAREFUL], ids=["fast", "careful"])


# -- the fault model ---------------------------------------------------------------


def schedule(seed: int = 0, direction: str = C2S, **faults: Any) -> FaultSchedule:
    return FaultSchedule(TCPFaults(**faults), random.Random(seed), direction)


def test_no_faults_delivers_each_chunk_whole_on_arrival() -> None:
    plan = schedule().plan(size=1000, arrival=3.0)
    assert [(d.at, d.size) for d in plan.deliveries] == [(3.0, 1000)]
    assert (plan.action, plan.dropped, plan.notes) == (None, 0, ())
    assert not TCPFaults().active and CAREFUL.active


def test_slices_are_paused_apart_even_across_chunks() -> None:
    s = schedule(slice_size=4, slice_pause=0.5)
    first, second = s.plan(size=10, arrival=0.0), s.plan(size=2, arrival=0.1)
    assert [(d.at, d.size) for d in first.deliveries] == [(0.0, 4), (0.5, 4), (1.0, 2)]
    assert [(d.at, d.size) for d in second.deliveries] == [(1.5, 2)]
    assert first.notes == ("10 bytes in 3 writes: slice 4 bytes, pause 0.5 s",)


def test_bandwidth_paces_pieces_of_a_hundredth_of_a_second() -> None:
    plan = schedule(bandwidth=1000).plan(size=25, arrival=0.0)
    assert [d.size for d in plan.deliveries] == [10, 10, 5]
    assert [d.at for d in plan.deliveries] == pytest.approx([0.0, 0.01, 0.02])


def test_latency_delays_every_chunk_without_accumulating() -> None:
    s = schedule(latency=0.25)
    assert [d.at for d in s.plan(5, arrival=1.0).deliveries] == [1.25]
    assert [d.at for d in s.plan(5, arrival=1.1).deliveries] == [1.35]
    assert s.eof_at(arrival=1.2) == 1.45


def test_jitter_is_seeded_and_never_reorders() -> None:
    def times(seed: int) -> list[float]:
        s = schedule(seed, latency=0.01, jitter=0.01)
        return [s.plan(10, arrival=i * 0.001).deliveries[0].at for i in range(50)]

    assert times(7) == times(7)
    assert times(7) != times(8)
    assert times(7) == sorted(times(7))
    assert all(i * 0.001 <= t <= i * 0.001 + 0.02 for i, t in enumerate(times(7)))


@pytest.mark.parametrize(("field", "action"), [("reset_after", RESET), ("close_after", CLOSE), ("stall_after", STALL)])
def test_a_limit_cuts_the_chunk_that_reaches_it(field: str, action: str) -> None:
    s = schedule(direction=S2C, **{field: 1000})
    assert s.plan(size=600, arrival=0.0).action is None
    plan = s.plan(size=600, arrival=1.0)
    assert sum(d.size for d in plan.deliveries) == 400
    assert (plan.action, plan.action_at, plan.dropped) == (action, 1.0, 200)
    assert plan.action_note == f"{action} after 1000 bytes s->c"
    assert "dropped 200 bytes past the" in plan.notes[-1]
    later = s.plan(size=50, arrival=2.0)
    assert (later.deliveries, later.dropped, later.action) == ((), 50, None)
    assert s.eof_at(arrival=2.0) is None


def test_a_limit_of_zero_acts_on_connect_and_the_nearest_limit_wins() -> None:
    assert schedule(reset_after=0).start(now=5.0).action == RESET
    assert schedule(close_after=10).start(now=5.0).action is None
    assert schedule(close_after=10, reset_after=10, stall_after=3).plan(20, arrival=0.0).action == STALL
    assert schedule(close_after=10, reset_after=10).plan(20, arrival=0.0).action == RESET


@pytest.mark.parametrize("bad", [{"latency": -1}, {"slice_size": 0}, {"bandwidth": 0}, {"reset_after": -1}])
def test_invalid_faults_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        TCPFaults(**bad)


# -- a loopback server for the proxy to relay to ------------------------------------


Handler = Callable[[socket.socket], Any]


class Upstream:
    """A loopback server that runs ``handler(conn)`` for each connection; results go to ``results``."""

    def __init__(self, handler: Handler, host: str) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.create_server((host, 0), family=family)
        self.listener.settimeout(0.05)
        self.address = self.listener.getsockname()[:2]
        self.results: queue.Queue[Any] = queue.Queue()
        self._handler = handler
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._serve, daemon=True)]
        self._threads[0].start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            conn.settimeout(TIMEOUT)
            thread = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                self.results.put(self._handler(conn))
            except OSError as exc:
                self.results.put(exc)

    def result(self) -> Any:
        return self.results.get(timeout=TIMEOUT)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(TIMEOUT)
        self.listener.close()


@pytest.fixture
def make_upstream() -> Iterator[Callable[..., Upstream]]:
    servers: list[Upstream] = []

    def make(handler: Handler, host: str = "127.0.0.1") -> Upstream:
        servers.append(Upstream(handler, host))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def read_to_end(sock: socket.socket) -> tuple[bytes, str]:
    """Read until EOF or reset: ``(data, "eof" | "reset")``."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        return b"".join(chunks), "reset"
    return b"".join(chunks), "eof"


def echo(conn: socket.socket) -> int:
    total = 0
    while data := conn.recv(65536):
        conn.sendall(data)
        total += len(data)
    return total


def collect_then_reply(conn: socket.socket) -> tuple[bytes, int]:
    """Read the whole request (to EOF), then answer with its length: the half-close pattern."""
    chunks = []
    while data := conn.recv(65536):
        chunks.append(data)
    conn.sendall(b"got %d bytes" % sum(map(len, chunks)))
    return b"".join(chunks), len(chunks)


def send_then_read(payload: bytes) -> Handler:
    def handler(conn: socket.socket) -> tuple[bytes, str]:
        try:
            conn.sendall(payload)
        except OSError:
            pass  # reset while sending: the read below reports it
        return read_to_end(conn)

    return handler


def connect(proxy: TCPFaultProxy) -> socket.socket:
    # A blocking connect: on loopback it completes inside the call. With a timeout, Python's
    # connect polls and then reads SO_ERROR, which is ECONNRESET if the proxy already passed
    # on a reset from a server that dies at once.
    family = socket.AF_INET6 if ":" in proxy.address[0] else socket.AF_INET
    sock = socket.socket(family)
    sock.connect(proxy.address)
    sock.settimeout(TIMEOUT)
    return sock


def fault_notes(proxy: TCPFaultProxy, direction: str | None = None) -> list[str]:
    return [e.note for e in proxy.transcript if e.kind == "fault" and direction in (None, e.direction)]


def proxy_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("netlab-tcp-proxy")]


# -- passthrough, half-close, RST ---------------------------------------------------


@PUMPS
def test_random_binary_data_passes_both_ways_intact(make_upstream: Callable[..., Upstream], faults: TCPFaults) -> None:
    upstream = make_upstream(echo)
    payload = random.Random(1234).randbytes(3 << 20)
    with TCPFaultProxy(upstream.address, client_to_server=faults, server_to_client=faults, record_data=False) as proxy:
        with connect(proxy) as client:

            def send_all_then_half_close() -> None:
                client.sendall(payload)
                client.shutdown(socket.SHUT_WR)

            sender = threading.Thread(target=send_all_then_half_close)
            sender.start()
            echoed, end = read_to_end(client)
            sender.join(TIMEOUT)
        assert (len(echoed), end) == (len(payload), "eof")
        assert echoed == payload
        assert upstream.result() == len(payload)
        assert proxy.wait_for(lambda stats: stats.active == 0)
        stats = proxy.stats
        assert (stats.connections, stats[C2S], stats[S2C]) == (1, len(payload), len(payload))
        assert not [e for e in proxy.transcript if e.kind == "data"]


@PUMPS
def test_half_close_reaches_the_server_and_the_reply_still_flows(make_upstream: Callable[..., Upstream], faults: TCPFaults) -> None:
    upstream = make_upstream(collect_then_reply)
    with TCPFaultProxy(upstream.address, client_to_server=faults, server_to_client=faults) as proxy:
        with connect(proxy) as client:
            client.sendall(b"x" * 5000)
            client.shutdown(socket.SHUT_WR)
            assert read_to_end(client) == (b"got 5000 bytes", "eof")
        assert upstream.result()[0] == b"x" * 5000
        assert proxy.wait_for(lambda stats: stats.active == 0)
    events = [(e.direction, e.kind) for e in proxy.transcript if e.kind in ("eof", "data")]
    assert events.index((C2S, "eof")) < events.index((S2C, "data")) < events.index((S2C, "eof"))


@PUMPS
def test_a_client_rst_becomes_an_rst_to_the_server(make_upstream: Callable[..., Upstream], faults: TCPFaults) -> None:
    upstream = make_upstream(read_to_end)
    with TCPFaultProxy(upstream.address, client_to_server=faults) as proxy:
        client = connect(proxy)
        client.sendall(b"hello")
        assert proxy.wait_for(lambda stats: stats[C2S] == 5)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        assert upstream.result() == (b"hello", "reset")
    resets = [e for e in proxy.transcript if e.kind == "reset"]
    assert [(e.direction, e.note.split(" (")[0]) for e in resets] == [(C2S, "client reset")]


@PUMPS
def test_a_server_rst_becomes_an_rst_to_the_client(make_upstream: Callable[..., Upstream], faults: TCPFaults) -> None:
    def reset_after_hello(conn: socket.socket) -> None:
        conn.sendall(b"hello")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    upstream = make_upstream(reset_after_hello)
    with TCPFaultProxy(upstream.address, server_to_client=faults) as proxy:
        with connect(proxy) as client:
            assert read_to_end(client) == (b"hello", "reset")
        upstream.result()


# -- faults, end to end ---------------------------------------------------------------


def test_slicing_splits_writes_into_separate_segments(make_upstream: Callable[..., Upstream]) -> None:
    upstream = make_upstream(collect_then_reply)
    sliced = TCPFaults(slice_size=2, slice_pause=0.02)
    with TCPFaultProxy(upstream.address, client_to_server=sliced) as proxy:
        with connect(proxy) as client:
            client.sendall(b"hello world")
            client.shutdown(socket.SHUT_WR)
            assert read_to_end(client) == (b"got 11 bytes", "eof")
        request, reads = upstream.result()
    assert request == b"hello world"
    assert reads > 1  # the server's recv() really saw the pieces apart
    writes = [e.data for e in proxy.transcript if e.kind == "data" and e.direction == C2S]
    assert writes == [b"he", b"ll", b"o ", b"wo", b"rl", b"d"]
    assert fault_notes(proxy, C2S) == ["11 bytes in 6 writes: slice 2 bytes, pause 0.02 s"]


def test_latency_delays_at_least_the_configured_time(make_upstream: Callable[..., Upstream]) -> None:
    upstream = make_upstream(echo)
    with TCPFaultProxy(upstream.address, client_to_server=TCPFaults(latency=0.03), server_to_client=TCPFaults(latency=0.02)) as proxy:
        with connect(proxy) as client:
            for _ in range(3):
                started = time.monotonic()
                client.sendall(b"ping")
                assert client.recv(100) == b"ping"
                assert time.monotonic() - started >= 0.05
    sent, echoed = [[e.t for e in proxy.transcript if e.kind == "data" and e.direction == d] for d in (C2S, S2C)]
    assert all(back - out >= 0.02 for out, back in zip(sent, echoed))


def test_bandwidth_limit_paces_delivery(make_upstream: Callable[..., Upstream]) -> None:
    upstream = make_upstream(send_then_read(b"z" * 3000))
    with TCPFaultProxy(upstream.address, server_to_client=TCPFaults(bandwidth=20000)) as proxy:
        with connect(proxy) as client:
            started = time.monotonic()
            received = b""
            while len(received) < 3000:
                received += client.recv(65536)
            # 15 pieces of 200 bytes, 10 ms apart: the last leaves 140 ms after the first.
            assert time.monotonic() - started >= 0.13
    assert max(len(e.data) for e in proxy.transcript if e.kind == "data") == 200


@pytest.mark.parametrize("direction", [C2S, S2C])
def test_reset_after_delivers_exactly_n_bytes_then_rst(make_upstream: Callable[..., Upstream], direction: str) -> None:
    payload = bytes(range(256)) * 20
    if direction == C2S:
        upstream = make_upstream(read_to_end)
        with TCPFaultProxy(upstream.address, client_to_server=TCPFaults(reset_after=1000)) as proxy:
            with connect(proxy) as client:
                client.sendall(payload)
                assert read_to_end(client) == (b"", "reset")
            assert upstream.result() == (payload[:1000], "reset")
    else:
        upstream = make_upstream(send_then_read(payload))
        with TCPFaultProxy(upstream.address, server_to_client=TCPFaults(reset_after=1000)) as proxy:
            with connect(proxy) as client:
                assert read_to_end(client) == (payload[:1000], "reset")
            assert upstream.result() == (b"", "reset")
    assert f"reset after 1000 bytes {direction}" in fault_notes(proxy, direction)
    assert sorted(e.direction for e in proxy.transcript if e.kind == "reset") == [C2S, S2C]


def test_close_after_delivers_exactly_n_bytes_then_fin(make_upstream: Callable[..., Upstream]) -> None:
    payload = b"y" * 5000
    upstream = make_upstream(send_then_read(payload))
    with TCPFaultProxy(upstream.address, server_to_client=TCPFaults(close_after=1000)) as proxy:
        with connect(proxy) as client:
            assert read_to_end(client) == (payload[:1000], "eof")
        assert upstream.result() == (b"", "eof")
        assert "close after 1000 bytes s->c" in fault_notes(proxy, S2C)


def test_stall_after_forwards_n_bytes_and_keeps_the_connection_open(make_upstream: Callable[..., Upstream]) -> None:
    upstream = make_upstream(send_then_read(b"s" * 5000))
    with TCPFaultProxy(upstream.address, server_to_client=TCPFaults(stall_after=1000)) as proxy:
        with connect(proxy) as client:
            received = b""
            while len(received) < 1000:
                received += client.recv(65536)
            assert received == b"s" * 1000

            def dropped() -> int:
                return sum(int(n.split()[1]) for n in fault_notes(proxy, S2C) if n.startswith(("dropped", "stalled: dropped")))

            deadline = time.monotonic() + TIMEOUT
            while dropped() < 4000 and time.monotonic() < deadline:
                time.sleep(0.005)
            assert dropped() == 4000
            client.settimeout(0.1)
            with pytest.raises(socket.timeout):  # neither data nor EOF: the connection just hangs
                client.recv(100)
            assert proxy.stats.active == 1
    assert proxy.stats.active == 0


def test_same_seed_gives_the_same_jitter_decisions(make_upstream: Callable[..., Upstream]) -> None:
    upstream = make_upstream(echo)

    def delays(seed: int) -> list[str]:
        jittery = TCPFaults(latency=0.002, jitter=0.002)
        with TCPFaultProxy(upstream.address, client_to_server=jittery, server_to_client=jittery, seed=seed) as proxy:
            for _ in range(2):
                with connect(proxy) as client:
                    for message in (b"one", b"two", b"three"):  # lock-step: each message is one chunk
                        client.sendall(message)
                        assert client.recv(100) == message
        return [f"{e.stream} {e.direction} {e.note}" for e in proxy.transcript if e.kind == "fault"]

    first = delays(seed=42)
    assert len(first) == 12
    assert delays(seed=42) == first
    assert delays(seed=43) != first


# -- transcript, configuration, addresses, lifecycle -------------------------------------


def test_transcript_labels_each_connection_and_records_both_directions(make_upstream: Callable[..., Upstream]) -> None:
    upstream = make_upstream(collect_then_reply)
    with TCPFaultProxy(upstream.address) as proxy:
        for request in (b"first", b"second"):
            with connect(proxy) as client:
                client.sendall(request)
                client.shutdown(socket.SHUT_WR)
                read_to_end(client)
        assert proxy.wait_for(lambda stats: stats.active == 0 and stats.connections == 2)
    transcript = proxy.transcript
    assert transcript.received(C2S, stream="conn1") == b"first"
    assert transcript.received(C2S, stream="conn2") == b"second"
    assert transcript.received(S2C, stream="conn2") == b"got 6 bytes"
    kinds = [e.kind for e in transcript if e.stream == "conn2"]
    assert kinds[0] == "connect" and kinds[-1] == "close"
    assert kinds.count("eof") == 2
    assert "[conn2] c->s b'second'" in transcript.excerpt(last=20)


@PUMPS
def test_the_transcript_records_each_request_before_its_reply(make_upstream: Callable[..., Upstream], faults: TCPFaults) -> None:
    upstream = make_upstream(echo)
    with TCPFaultProxy(upstream.address, client_to_server=faults, server_to_client=faults) as proxy:
        with connect(proxy) as client:
            for number in range(50):
                client.sendall(b"%d" % number)
                assert client.recv(100) == b"%d" % number
    assert [e.direction for e in proxy.transcript if e.kind == "data"] == [C2S, S2C] * 50


def test_set_faults_applies_to_later_connections(make_upstream: Callable[..., Upstream]) -> None:
    upstream = make_upstream(echo)
    with TCPFaultProxy(upstream.address) as proxy:
        with connect(proxy) as first:
            # connect() returns once the kernel has queued the connection; the proxy accepts it a little later.
            assert proxy.wait_for(lambda stats: stats.connections == 1)
            proxy.set_faults(server_to_client=TCPFaults(slice_size=1))
            with connect(proxy) as second:
                for client in (first, second):
                    client.sendall(b"abc")
                    received = b""
                    while len(received) < 3:
                        received += client.recv(100)
    sliced = [e.data for e in proxy.transcript if e.kind == "data" and e.direction == S2C]
    assert sliced.count(b"abc") == 1 and sliced.count(b"a") == 1
    assert {e.stream for e in proxy.transcript if e.kind == "fault"} == {"conn2"}


def test_ipv6_upstream(make_upstream: Callable[..., Upstream]) -> None:
    try:
        upstream = make_upstream(echo, host="::1")
    except OSError as exc:
        pytest.skip(f"IPv6 loopback unavailable: {exc}")
    with TCPFaultProxy(upstream.address) as proxy:
        assert proxy.address[0] == "::1"
        with connect(proxy) as client:
            client.sendall(b"over six")
            assert client.recv(100) == b"over six"


def test_unreachable_upstream_resets_the_client() -> None:
    with socket.socket() as placeholder:  # a port nobody listens on
        placeholder.bind(("127.0.0.1", 0))
        address = placeholder.getsockname()
        with TCPFaultProxy(address) as proxy:
            with connect(proxy) as client:
                assert read_to_end(client) == (b"", "reset")
    assert any("unreachable" in note for note in fault_notes(proxy))


@PUMPS
def test_close_ends_open_connections_and_leaves_no_threads(make_upstream: Callable[..., Upstream], faults: TCPFaults) -> None:
    upstream = make_upstream(read_to_end)
    proxy = TCPFaultProxy(upstream.address, client_to_server=faults).start()
    clients = [connect(proxy) for _ in range(3)]
    for client in clients:
        client.sendall(b"hi")
    assert proxy.wait_for(lambda stats: stats.active == 3 and stats[C2S] == 6)
    assert proxy_threads()
    proxy.close()
    assert proxy_threads() == []
    for client in clients:
        with client:
            assert read_to_end(client) == (b"", "eof")
    assert sorted(upstream.result() for _ in clients) == [(b"hi", "eof")] * 3
    assert proxy.stats.active == 0
    with pytest.raises(RuntimeError, match="once"):
        proxy.start()
