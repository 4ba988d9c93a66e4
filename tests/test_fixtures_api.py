"""The public fixtures, used from a user's own test file as the docs show."""

from __future__ import annotations

import pytest

from conftest import FIXTURES

ECHO = FIXTURES / "tcp_echo" / "reference.py"


def test_proxies_certs_and_capture_from_user_tests(pytester: pytest.Pytester, run_marker: str) -> None:
    pytester.makepyfile(
        f"""
        import socket
        from pytest_netlab.tcp_proxy import TCPFaults
        from pytest_netlab.udp_faults import Script
        from pytest_netlab.packets import resets

        def test_tcp_proxy_slices(tcp_proxy, launch_server, scripted_client, netlab_transcript):
            server = launch_server("{{python}} {ECHO} {{host}} {{port}}")
            proxy = tcp_proxy(server.address, client_to_server=TCPFaults(slice_size=3))
            client = scripted_client(proxy.address, timeout=3)
            client.send(b"hello world")
            assert client.recv_exactly(11) == b"hello world"
            assert any(e.kind == "fault" for e in netlab_transcript)

        def test_udp_proxy_drops(udp_proxy):
            proxy = udp_proxy(responder=lambda data, addr: data.upper(), script=Script.drop_first(2))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(0.3)
                answers = []
                for attempt in range(6):
                    sock.sendto(b"ping", proxy.address)
                    try:
                        answers.append(sock.recvfrom(100)[0])
                        break
                    except TimeoutError:
                        continue
            assert answers == [b"PING"]
            assert proxy.stats.client_to_server.dropped == 2

        def test_certificates(netlab_ca, cert_zoo):
            assert cert_zoo["expired"].verdict.name == "REJECT"
            assert b"BEGIN CERTIFICATE" in netlab_ca.cert_pem.encode() if isinstance(netlab_ca.cert_pem, str) else netlab_ca.cert_pem

        def test_capture(packet_capture, launch_server, scripted_client):
            server = launch_server("{{python}} {ECHO} {{host}} {{port}}")
            with packet_capture([server.port], protocol="tcp") as capture:
                client = scripted_client(server.address, timeout=3)
                client.send(b"x")
                assert client.recv_exactly(1) == b"x"
                client.shutdown_write()
                client.read_until_close()
            assert not resets(capture.packets())
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
