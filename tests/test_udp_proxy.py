"""The lossy UDP proxy on real loopback sockets: passthrough, faults, scripts, stats, cleanup."""

from __future__ import annotations

import os
import socket
import threading
from typing import Callable, Iterator

import pytest

from pytest_netlab.errors import HarnessError
from pytest_netlab.transcript import CLIENT_TO_SERVER, SERVER_TO_CLIENT, Transcript
from pytest_netlab.udp_faults import Datagram, Decision, Faults, GilbertElliott, Script
from pytest_netlab.udp_proxy import Address, LossyUDPProxy, ProxyStats

# Generous: the machine is shared, and nothing here measures speed.
TIMEOUT = 5.0
LARGEST_IPV4_PAYLOAD = 65507


class EchoServer:
    """A UDP echo server on a thread that remembers who sent what."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.05)
        self.address = self.sock.getsockname()[:2]
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self._arrived = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, address = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            with self._arrived:
                self.received.append((data, address[:2]))
                self._arrived.notify_all()
            self.sock.sendto(data, address)

    def wait_received(self, count: int) -> None:
        with self._arrived:
            assert self._arrived.wait_for(lambda: len(self.received) >= count, TIMEOUT), self.received

    def close(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        self.sock.close()


@pytest.fixture
def echo_server() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def make_client() -> Iterator[Callable[..., socket.socket]]:
    """Client sockets, connected to ``address`` unless told otherwise, closed after the test."""
    sockets: list[socket.socket] = []

    def make(address: tuple[str, int], connect: bool = True, timeout: float = TIMEOUT) -> socket.socket:
        sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, socket.SOCK_DGRAM)
        sockets.append(sock)
        sock.settimeout(timeout)
        if connect:
            sock.connect(address)
        else:
            sock.bind((address[0], 0))
        return sock

    yield make
    for sock in sockets:
        sock.close()


def settled(proxy: LossyUDPProxy, predicate: Callable[[ProxyStats], bool]) -> ProxyStats:
    assert proxy.wait_for(predicate, TIMEOUT), f"the proxy did not get there; stats: {proxy.stats}"
    return proxy.stats


def test_passthrough_of_the_largest_datagram(echo_server: EchoServer, make_client: Callable[..., socket.socket]) -> None:
    payload = os.urandom(LARGEST_IPV4_PAYLOAD)
    with LossyUDPProxy(upstream=echo_server.address) as proxy:
        client = make_client(proxy.address)
        client.send(payload)
        assert client.recv(65536) == payload
        client.send(b"")
        assert client.recv(65536) == b""
    assert echo_server.received[0][0] == payload
    assert proxy.transcript.received(CLIENT_TO_SERVER) == payload


def test_two_clients_get_their_own_replies_and_the_server_sees_two_clients(
    echo_server: EchoServer, make_client: Callable[..., socket.socket]
) -> None:
    with LossyUDPProxy(upstream=echo_server.address) as proxy:
        first, second = make_client(proxy.address), make_client(proxy.address)
        for round_number in range(3):
            first.send(b"first %d" % round_number)
            second.send(b"second %d" % round_number)
            assert first.recv(100) == b"first %d" % round_number
            assert second.recv(100) == b"second %d" % round_number
    assert len({address for _, address in echo_server.received}) == 2
    streams = {event.stream for event in proxy.transcript}
    assert streams == {"127.0.0.1:%d" % client.getsockname()[1] for client in (first, second)}


def test_drop_first_three_drops_exactly_three(echo_server: EchoServer, make_client: Callable[..., socket.socket]) -> None:
    with LossyUDPProxy(upstream=echo_server.address, script=Script.drop_first(3)) as proxy:
        client = make_client(proxy.address)
        for number in range(5):
            client.send(b"request %d" % number)
        assert client.recv(100) == b"request 3"
        assert client.recv(100) == b"request 4"
        stats = settled(proxy, lambda s: s.client_to_server.seen == 5 and s.server_to_client.delivered == 2)
    assert stats.client_to_server.dropped == 3
    assert [data for data, _ in echo_server.received] == [b"request 3", b"request 4"]
    notes = [event.note for event in proxy.transcript if event.direction == CLIENT_TO_SERVER]
    assert notes == ["dropped (script: drop_first(3))"] * 3 + ["delivered"] * 2


def test_duplication_delivers_twice(echo_server: EchoServer, make_client: Callable[..., socket.socket]) -> None:
    with LossyUDPProxy(upstream=echo_server.address, client_to_server=Faults(duplicate=1.0)) as proxy:
        client = make_client(proxy.address)
        client.send(b"once")
        assert [client.recv(100), client.recv(100)] == [b"once", b"once"]
        stats = settled(proxy, lambda s: s.server_to_client.delivered == 2)
    assert stats.client_to_server.duplicated == 1 and stats.client_to_server.delivered == 1
    assert [data for data, _ in echo_server.received] == [b"once", b"once"]


def test_a_delayed_datagram_arrives_after_a_later_one(make_client: Callable[..., socket.socket]) -> None:
    script = Script(lambda d: Decision(delays=(0.2,)) if (d.direction, d.index) == (CLIENT_TO_SERVER, 0) else None)
    with LossyUDPProxy(responder=lambda request, client: request, script=script) as proxy:
        client = make_client(proxy.address)
        client.send(b"early")
        client.send(b"late")
        assert [client.recv(100), client.recv(100)] == [b"late", b"early"]
        stats = settled(proxy, lambda s: s.client_to_server.in_flight == 0)
    assert stats.client_to_server.delayed == 1


def test_a_held_datagram_goes_out_right_after_the_next_one(
    echo_server: EchoServer, make_client: Callable[..., socket.socket]
) -> None:
    # The hold would last 30 s; the next datagram releases it, so the test takes no time.
    script = Script(lambda d: Decision(delays=(30.0,), hold=True) if (d.direction, d.index) == (CLIENT_TO_SERVER, 0) else None)
    with LossyUDPProxy(upstream=echo_server.address, script=script) as proxy:
        client = make_client(proxy.address)
        client.send(b"A")
        settled(proxy, lambda s: s.client_to_server.seen == 1)
        client.send(b"B")
        assert [client.recv(100), client.recv(100)] == [b"B", b"A"]
    assert [data for data, _ in echo_server.received] == [b"B", b"A"]
    assert proxy.stats.client_to_server.reordered == 1


def test_reordering_fault_swaps_neighbours(echo_server: EchoServer, make_client: Callable[..., socket.socket]) -> None:
    with LossyUDPProxy(upstream=echo_server.address, seed=3, client_to_server=Faults(reorder=0.3, reorder_timeout=5.0)) as proxy:
        client = make_client(proxy.address)
        sent = [b"%02d" % number for number in range(20)]
        for payload in sent[:-1]:
            client.send(payload)
        # The last one is never held (its decision is checked below), so it flushes any hold.
        client.send(sent[-1])
        stats = settled(proxy, lambda s: s.server_to_client.delivered == 20)
        received = [client.recv(100) for _ in sent]
    held = [decision.hold for _, direction, decision in proxy.decisions if direction == CLIENT_TO_SERVER]
    assert not held[-1] and stats.client_to_server.reordered == sum(held) > 0
    assert sorted(received) == sent and received != sent


def test_corruption_flips_one_bit_on_the_wire_and_the_transcript_keeps_the_original(
    echo_server: EchoServer, make_client: Callable[..., socket.socket]
) -> None:
    payload = bytes(range(64))
    with LossyUDPProxy(upstream=echo_server.address, client_to_server=Faults(corrupt=1.0)) as proxy:
        client = make_client(proxy.address)
        client.send(payload)
        damaged = client.recv(100)
    assert sum(bin(a ^ b).count("1") for a, b in zip(payload, damaged)) == 1
    assert proxy.transcript.received(CLIENT_TO_SERVER) == payload
    assert proxy.stats.client_to_server.corrupted == 1
    assert "corrupted byte" in proxy.transcript.events[0].note


def test_reply_from_other_port_comes_from_a_different_port(make_client: Callable[..., socket.socket]) -> None:
    with LossyUDPProxy(responder=lambda request, client: b"reply", script=Script.reply_from_other_port(0)) as proxy:
        promiscuous = make_client(proxy.address, connect=False)
        promiscuous.sendto(b"hello", proxy.address)
        data, source = promiscuous.recvfrom(100)
        assert (data, source[:2]) == (b"reply", proxy.other_address)
        assert proxy.other_address != proxy.address
        # A connected client never sees it: the kernel filters other sources (book ch. 2).
        careful = make_client(proxy.address, timeout=0.3)
        careful.send(b"hello")
        assert careful.recv(100) == b"reply"  # reply 1, from the right port


def test_spoof_reply_arrives_first_from_the_other_port(make_client: Callable[..., socket.socket]) -> None:
    with LossyUDPProxy(responder=lambda request, client: b"real", script=Script.spoof_reply(0, b"FAKE", delay=0.05)) as proxy:
        client = make_client(proxy.address, connect=False)
        client.sendto(b"question", proxy.address)
        first, second = client.recvfrom(100), client.recvfrom(100)
    assert (first[0], first[1][:2]) == (b"FAKE", proxy.other_address)
    assert (second[0], second[1][:2]) == (b"real", proxy.address)


def test_the_spoofed_datagram_is_noted_before_the_real_reply(make_client: Callable[..., socket.socket]) -> None:
    with LossyUDPProxy(responder=lambda request, client: b"real", script=Script.spoof_reply(0, b"FAKE", delay=0.01)) as proxy:
        client = make_client(proxy.address)  # connected: the kernel drops the spoof
        client.send(b"question")
        assert client.recv(100) == b"real"
    spoof, reply = [e for e in proxy.transcript if e.direction == SERVER_TO_CLIENT]
    assert (spoof.kind, spoof.data, spoof.note) == ("note", b"FAKE", "spoofed, sent from the other port")
    assert (reply.kind, reply.data) == ("data", b"real")
    assert proxy.transcript.received(SERVER_TO_CLIENT) == b"real"


def test_send_to_client_answers_an_earlier_client_past_the_model(make_client: Callable[..., socket.socket]) -> None:
    seen: list[Address] = []
    proxies: list[LossyUDPProxy] = []

    def answer_the_first_client_late(request: bytes, client: Address) -> bytes | None:
        seen.append(client)
        if len(seen) == 2:
            proxies[0].send_to_client(seen[0], b"late reply")
        return None

    # Every reply the model would decide is dropped: send_to_client goes around it.
    with LossyUDPProxy(responder=answer_the_first_client_late, server_to_client=Faults(loss=1.0)) as proxy:
        proxies.append(proxy)
        first, second = make_client(proxy.address), make_client(proxy.address, connect=False)
        first.send(b"request")
        settled(proxy, lambda s: s.client_to_server.seen == 1)
        second.sendto(b"request again", proxy.address)
        assert first.recvfrom(100) == (b"late reply", proxy.address)
        proxy.send_to_client(second.getsockname(), b"from the side", other_port=True)
        assert second.recvfrom(100) == (b"from the side", proxy.other_address)
        stats = settled(proxy, lambda s: s.server_to_client.delivered == 2)
    assert (stats.server_to_client.seen, stats.server_to_client.dropped) == (2, 0)
    notes = [e.note for e in proxy.transcript if e.direction == SERVER_TO_CLIENT]
    assert notes == ["delivered (sent by the test)", "from the other port (sent by the test)"]
    with pytest.raises(RuntimeError, match="start"):
        LossyUDPProxy(responder=answer_the_first_client_late).send_to_client(seen[0], b"too early")


def test_stats_add_up_and_every_datagram_is_logged(
    echo_server: EchoServer, make_client: Callable[..., socket.socket]
) -> None:
    faults = Faults(loss=0.2, burst=GilbertElliott(0.05, 0.5), duplicate=0.2, corrupt=0.1, delay=0.002, jitter=0.002)
    with LossyUDPProxy(upstream=echo_server.address, seed=42, client_to_server=faults, server_to_client=faults) as proxy:
        client = make_client(proxy.address)
        for batch in range(20):
            for number in range(10):
                client.send(b"datagram %d" % (10 * batch + number))
            # Paced, so that no socket buffer on the way overflows: every loss here is ours.
            settled(proxy, lambda s: s.client_to_server.seen == 10 * (batch + 1))
        settled(proxy, lambda s: s.client_to_server.in_flight == 0)
    stats = proxy.stats
    for direction in (CLIENT_TO_SERVER, SERVER_TO_CLIENT):
        counts = stats[direction]
        assert counts.seen == counts.delivered + counts.dropped
        assert counts.dropped > 0 and counts.duplicated > 0 and counts.corrupted > 0
        data_events = [e for e in proxy.transcript if e.direction == direction and e.kind == "data"]
        assert len(data_events) == counts.seen
        assert sum(1 for _, d, _ in proxy.decisions if d == direction) == counts.seen
    # Every copy we sent reached the server, and nothing else did.
    c2s = stats.client_to_server
    echo_server.wait_received(c2s.delivered + c2s.duplicated)
    assert len(echo_server.received) == c2s.delivered + c2s.duplicated
    times = [t for t, _, _ in proxy.decisions]
    assert times == sorted(times)


def test_same_seed_same_fate(echo_server: EchoServer, make_client: Callable[..., socket.socket]) -> None:
    def fates(seed: int) -> list[bool]:
        with LossyUDPProxy(upstream=echo_server.address, seed=seed, client_to_server=Faults(loss=0.5)) as proxy:
            client = make_client(proxy.address)
            for number in range(30):
                client.send(b"%d" % number)
            settled(proxy, lambda s: s.client_to_server.seen == 30)
        return [decision.dropped for _, _, decision in proxy.decisions if _ == CLIENT_TO_SERVER]

    assert fates(7) == fates(7)
    assert fates(7) != fates(8)


def test_transcript_times_are_receive_times(make_client: Callable[..., socket.socket]) -> None:
    gap = threading.Event()
    with LossyUDPProxy(responder=lambda request, client: None) as proxy:
        client = make_client(proxy.address)
        client.send(b"first")
        gap.wait(0.2)  # the spacing is what is measured here
        client.send(b"second")
        settled(proxy, lambda s: s.client_to_server.seen == 2)
    first, second = proxy.transcript.events
    assert 0.1 <= second.t - first.t < 2.0
    assert [event.data for event in (first, second)] == [b"first", b"second"]


def test_responder_errors_are_raised_by_close(make_client: Callable[..., socket.socket]) -> None:
    def broken(request: bytes, client: object) -> bytes:
        raise ZeroDivisionError("the test's own responder")

    proxy = LossyUDPProxy(responder=broken).start()
    make_client(proxy.address).send(b"boom")
    settled(proxy, lambda s: s.client_to_server.seen == 1)
    with pytest.raises(ZeroDivisionError):
        proxy.close()
    assert "responder raised ZeroDivisionError" in proxy.transcript.events[-1].note


def test_upstream_refusal_is_logged_and_the_proxy_carries_on(make_client: Callable[..., socket.socket]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        nobody = placeholder.getsockname()
    with LossyUDPProxy(upstream=nobody) as proxy:
        client = make_client(proxy.address)
        client.send(b"anyone?")
        assert proxy.wait_for(lambda s: any(e.kind == "fault" for e in proxy.transcript), TIMEOUT)
        client.send(b"still there?")
        settled(proxy, lambda s: s.client_to_server.seen == 2)
    assert "Connection refused" in [e for e in proxy.transcript if e.kind == "fault"][0].note


def test_close_leaves_no_threads_or_sockets(echo_server: EchoServer, make_client: Callable[..., socket.socket]) -> None:
    threads_before = set(threading.enumerate())
    descriptors_before = set(os.listdir("/proc/self/fd"))
    proxy = LossyUDPProxy(upstream=echo_server.address, server_to_client=Faults(delay=5.0)).start()
    clients = [make_client(proxy.address) for _ in range(3)]
    for client in clients:
        client.send(b"hello")
    settled(proxy, lambda s: s.server_to_client.seen == 3)
    for client in clients:
        client.close()
    proxy.close()
    assert set(threading.enumerate()) == threads_before
    assert set(os.listdir("/proc/self/fd")) == descriptors_before
    stats = proxy.stats.server_to_client
    assert (stats.seen, stats.delivered, stats.dropped) == (3, 0, 3)  # the delayed replies were discarded
    proxy.close()  # idempotent


def test_address_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="start"):
        LossyUDPProxy(upstream=("127.0.0.1", 9)).address
    with pytest.raises(ValueError, match="exactly one of"):
        LossyUDPProxy()


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback_available(), reason="::1 cannot be bound on this machine")
def test_ipv6(make_client: Callable[..., socket.socket]) -> None:
    server = EchoServer("::1")
    try:
        with LossyUDPProxy(upstream=server.address, script=Script.drop_first(1)) as proxy:
            assert proxy.address[0] == "::1"
            client = make_client(proxy.address)
            client.send(b"lost")
            client.send(b"six")
            assert client.recv(100) == b"six"
    finally:
        server.close()
    assert proxy.transcript.events[0].stream.startswith("[::1]:")


# -- a connected socket per client flow ----------------------------------------------------


def connected_sockets_on(port: int) -> set[int]:
    """Remote ports of the connected IPv4 UDP sockets whose local port is ``port`` (from /proc/net/udp)."""
    remote_ports = set()
    with open("/proc/net/udp") as table:
        next(table)
        for line in table:
            local, remote, state = line.split()[1:4]
            if int(local.split(":")[1], 16) == port and state == "01":  # 01: TCP_ESTABLISHED, i.e. connected
                remote_ports.add(int(remote.split(":")[1], 16))
    return remote_ports


def test_each_client_gets_its_own_socket_on_the_proxy_address_connected_to_it(
    echo_server: EchoServer, make_client: Callable[..., socket.socket]
) -> None:
    with LossyUDPProxy(upstream=echo_server.address) as proxy:
        first, second = make_client(proxy.address), make_client(proxy.address, connect=False)
        for round_number in range(3):
            first.send(b"first %d" % round_number)
            second.sendto(b"second %d" % round_number, proxy.address)
            assert first.recv(100) == b"first %d" % round_number
            # The reply comes from the proxy's address, not from the flow socket's own port.
            assert second.recvfrom(100) == (b"second %d" % round_number, proxy.address)
        clients = {first.getsockname()[1], second.getsockname()[1]}
        assert connected_sockets_on(proxy.address[1]) == clients
        settled(proxy, lambda s: s.server_to_client.delivered == 6)
    assert connected_sockets_on(proxy.address[1]) == set()
    assert len({address for _, address in echo_server.received}) == 2


def test_datagrams_that_reach_the_main_socket_for_a_known_client_are_relayed_in_order(
    echo_server: EchoServer, make_client: Callable[..., socket.socket]
) -> None:
    with LossyUDPProxy(upstream=echo_server.address) as proxy:
        client = make_client(proxy.address)

        def send_a_burst(stats: ProxyStats) -> bool:
            # wait_for runs this holding the proxy's lock, which the proxy needs to open a flow:
            # the whole burst reaches the main socket before the client has a socket of its own.
            for number in range(5):
                client.send(b"%02d" % number)
            return True

        assert proxy.wait_for(send_a_burst, TIMEOUT)
        assert [client.recv(100) for _ in range(5)] == [b"%02d" % number for number in range(5)]
        for number in range(5, 10):  # these reach the client's own socket
            client.send(b"%02d" % number)
        assert [client.recv(100) for _ in range(5)] == [b"%02d" % number for number in range(5, 10)]
        assert connected_sockets_on(proxy.address[1]) == {client.getsockname()[1]}
        settled(proxy, lambda s: s.server_to_client.delivered == 10)
    assert [data for data, _ in echo_server.received] == [b"%02d" % number for number in range(10)]
    assert len({address for _, address in echo_server.received}) == 1


@pytest.mark.parametrize("replies", [Faults(), Faults(duplicate=1.0)], ids=["fast path", "fault model"])
def test_a_client_that_went_away_does_not_stop_its_flow(
    echo_server: EchoServer, make_client: Callable[..., socket.socket], replies: Faults
) -> None:
    with LossyUDPProxy(upstream=echo_server.address, server_to_client=replies) as proxy:
        client = make_client(proxy.address)
        client.send(b"hello")
        assert client.recv(100) == b"hello"
        client_address = client.getsockname()
        upstream_address = echo_server.received[0][1]
        client.close()
        # The server answers a client that has gone: the kernel refuses it with an ICMP error.
        echo_server.sock.sendto(b"too late", upstream_address)
        assert proxy.wait_for(lambda s: any("client refused" in e.note for e in proxy.transcript), TIMEOUT)
        # The same address comes back (a new socket on the same port): its flow still relays.
        again = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            again.settimeout(TIMEOUT)
            again.bind(client_address)
            again.connect(proxy.address)
            again.send(b"back again")
            # A copy of the refused reply may be sent again (duplicated, or retried once the error
            # has been read) after the port is back: it arrives first then.
            arrived = [again.recv(100)]
            while arrived[-1] == b"too late" and len(arrived) < 4:
                arrived.append(again.recv(100))
            assert arrived[-1] == b"back again", arrived
        finally:
            again.close()
    streams = {event.stream for event in proxy.transcript}
    assert streams == {"127.0.0.1:%d" % client_address[1]}
    assert not [e for e in proxy.transcript if "stopped relaying" in e.note]


def test_close_leaves_no_threads_or_sockets_of_busy_flows(
    echo_server: EchoServer, make_client: Callable[..., socket.socket]
) -> None:
    threads_before = set(threading.enumerate())
    descriptors_before = set(os.listdir("/proc/self/fd"))
    proxy = LossyUDPProxy(upstream=echo_server.address).start()
    clients = [make_client(proxy.address) for _ in range(3)]
    for round_number in range(3):  # the second round on goes through each client's own socket
        for client in clients:
            client.send(b"%d" % round_number)
            assert client.recv(100) == b"%d" % round_number
    # Two threads per flow (requests from its socket, replies from its upstream), and the proxy's own.
    assert len(set(threading.enumerate()) - threads_before) == 2 * len(clients) + 2
    for client in clients:
        client.close()
    proxy.close()
    assert set(threading.enumerate()) == threads_before
    assert set(os.listdir("/proc/self/fd")) == descriptors_before
    assert proxy.stats.server_to_client.delivered == 9


def test_a_proxy_listens_on_the_port_it_is_given_and_no_other_can_take_it(
    echo_server: EchoServer, make_client: Callable[..., socket.socket]
) -> None:
    with LossyUDPProxy(upstream=echo_server.address) as first:
        port = first.address[1]
        # A port that a running proxy holds, even though it lets its own flow sockets share it.
        with pytest.raises(HarnessError, match=f"port {port}"):
            LossyUDPProxy(upstream=echo_server.address, port=port).start()
    with LossyUDPProxy(upstream=echo_server.address, port=port) as second:
        assert second.address == ("127.0.0.1", port)
        client = make_client(second.address)
        client.send(b"on the given port")
        assert client.recv(100) == b"on the given port"
    with pytest.raises(ValueError, match="port"):
        LossyUDPProxy(upstream=echo_server.address, port=70000)


def test_lazily_logged_datagrams_take_their_place_in_a_shared_transcript(
    echo_server: EchoServer, make_client: Callable[..., socket.socket]
) -> None:
    transcript = Transcript()
    with LossyUDPProxy(upstream=echo_server.address, transcript=transcript) as proxy:
        client = make_client(proxy.address)
        client.send(b"0")
        assert client.recv(100) == b"0"
        # Another recorder writes between two exchanges; no one has read the log yet.
        transcript.record("", "note", note="the test's own note")
        client.send(b"1")
        assert client.recv(100) == b"1"
        # Forwarded first, logged after: a request may even be logged after its reply.
        settled(proxy, lambda s: s.client_to_server.delivered == s.server_to_client.delivered == 2)
        assert len(transcript) == 5
    seen = [(event.direction, event.kind, event.data) for event in transcript]
    assert seen == [
        (CLIENT_TO_SERVER, "data", b"0"),
        (SERVER_TO_CLIENT, "data", b"0"),
        ("", "note", b""),
        (CLIENT_TO_SERVER, "data", b"1"),
        (SERVER_TO_CLIENT, "data", b"1"),
    ]
    times = [event.t for event in transcript]
    assert times == sorted(times)
    assert [(direction, decision.describe()) for _, direction, decision in proxy.decisions] == [
        (CLIENT_TO_SERVER, "delivered"), (SERVER_TO_CLIENT, "delivered")
    ] * 2
