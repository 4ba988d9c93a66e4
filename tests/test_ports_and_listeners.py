"""Ports: disjoint per xdist worker, never reused, really free. Listeners: who listens where."""

from __future__ import annotations

import os
import socket

import pytest

from pytest_netlab.listeners import listeners_of, listeners_on_port, process_tree
from pytest_netlab.ports import PortAllocator, port_is_free
from pytest_netlab.readiness import parse_ready, tcp_accepts, tcp_listening, udp_port_bound


def test_workers_draw_from_disjoint_ranges_below_the_ephemeral_range() -> None:
    ranges = [PortAllocator(i, 4).range for i in range(4)]
    for (low, high), (next_low, _) in zip(ranges, ranges[1:]):
        assert low <= high < next_low
    assert all(high < 32768 for _, high in ranges) or all(low >= 40000 for low, _ in ranges)


def test_ports_are_free_and_never_handed_out_twice() -> None:
    allocator = PortAllocator()
    ports = [allocator.allocate() for _ in range(50)]
    assert len(set(ports)) == 50
    low, high = allocator.range
    assert all(low <= p <= high for p in ports)


def test_a_bound_port_is_not_free() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        assert not port_is_free(sock.getsockname()[1])


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc/net")
def test_listeners_show_the_bound_address() -> None:
    with socket.create_server(("127.0.0.1", 0)) as specific, socket.create_server(("0.0.0.0", 0)) as wildcard:
        mine = {(l.host, l.port) for l in listeners_of(os.getpid())}
        assert ("127.0.0.1", specific.getsockname()[1]) in mine
        assert ("0.0.0.0", wildcard.getsockname()[1]) in mine
        (found,) = listeners_on_port(wildcard.getsockname()[1])
        assert found.wildcard and str(found) == f"tcp 0.0.0.0:{wildcard.getsockname()[1]}"
    assert os.getpid() in process_tree(os.getpid())


@pytest.mark.skipif(not os.path.exists("/proc/net/udp"), reason="needs Linux /proc/net")
def test_probes() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        assert tcp_accepts("127.0.0.1", listener.getsockname()[1])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        assert udp_port_bound("127.0.0.1", sock.getsockname()[1])
        assert {str(l) for l in listeners_of(os.getpid(), "udp")} >= {f"udp 127.0.0.1:{sock.getsockname()[1]}"}
    probe = parse_ready("stdout:listening on (\\d+)")
    assert probe.kind == "stdout" and probe.pattern is not None and str(probe) == "stdout:listening on (\\d+)"


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc/net")
def test_tcp_readiness_reads_the_listener_without_connecting() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        port = listener.getsockname()[1]
        assert tcp_listening("127.0.0.1", port)
        assert not tcp_listening("127.0.0.2", port)  # bound elsewhere: not where it was told
        assert not tcp_listening("::1", port)
        with pytest.raises(BlockingIOError):
            listener.accept()  # no probe connection is waiting to be accepted
    with socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True) as everywhere:
        port = everywhere.getsockname()[1]
        assert tcp_listening("127.0.0.1", port) and tcp_listening("::1", port)
    assert not tcp_listening("127.0.0.1", port)  # closed


def test_sock_diag_lists_listeners_of_both_families() -> None:
    from pytest_netlab._sock_diag import listening_ports

    with socket.create_server(("127.0.0.1", 0)) as v4, socket.create_server(("::1", 0), family=socket.AF_INET6) as v6:
        found4, found6 = listening_ports(socket.AF_INET), listening_ports(socket.AF_INET6)
        if found4 is None or found6 is None:
            pytest.skip("sock_diag netlink is not available here")
        assert (socket.inet_aton("127.0.0.1"), v4.getsockname()[1]) in found4
        assert (socket.inet_pton(socket.AF_INET6, "::1"), v6.getsockname()[1]) in found6
        assert all(port != v4.getsockname()[1] for _, port in found6)
