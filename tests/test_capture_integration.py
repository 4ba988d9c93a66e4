"""Packet capture in a run: kept for failing checks, a ladder in the message, valid pcaps.

And the checks that read the wire: udp-client's request times (kernel
timestamps), tls-echo's close_notify (a TLS record after the echo, or a bare FIN).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_netlab.packets import Packet, datagrams_to, packets
from pytest_netlab.run_capture import RunCapture
from pytest_netlab.suites.tls_echo._closing import server_ending

from conftest import FIXTURES

ECHO = FIXTURES / "tcp_echo"
needs_capture = pytest.mark.skipif(RunCapture.unavailable_reason() is not None, reason=f"capture unavailable: {RunCapture.unavailable_reason()}")


def inline(script: str) -> str:
    return f"--netlab-target={{python}} {ECHO / script} {{host}} {{port}}"


@needs_capture
def test_failing_half_close_shows_the_rst_and_keeps_a_pcap(pytester: pytest.Pytester, run_marker: str) -> None:
    result = pytester.runpytest_subprocess(
        inline("reset_on_eof.py"), "--netlab-suite=tcp-echo", "--netlab-check=*/half-close", "--netlab-report=r.json", "-p", "no:cacheprovider"
    )
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "netlab capture: on-failure (tcpdump on lo); pcaps of failing checks go to *netlab-artifacts",
            "*capture:    *netlab-artifacts/reset_on_eof.py/tcp-echo__echo__half-close.pcap (* packets; tshark -r or Wireshark opens it)",
            "*packets:",
            "*client* -> server*[[]SYN[]]*",
            "*server -> client*[[]RST*",
        ]
    )
    report = json.loads((pytester.path / "r.json").read_text())
    artifacts = report["targets"][0]["checks"][0]["artifacts"]
    pcap = Path(artifacts["pcap"])
    assert pcap.is_file() and Path(artifacts["transcript"]).is_file()
    if shutil.which("tshark"):
        shown = subprocess.run(["tshark", "-r", str(pcap)], capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and "RST" in shown.stdout


@needs_capture
def test_always_keeps_every_check_and_off_keeps_none(pytester: pytest.Pytester, run_marker: str) -> None:
    args = ["--netlab-target=reference:tcp-echo", "--netlab-check=tcp-echo/echo/*", "-p", "no:cacheprovider"]
    result = pytester.runpytest_subprocess(*args, "--netlab-capture=always")
    assert result.ret == 0
    kept = sorted(p.name for p in (pytester.path / "netlab-artifacts").rglob("*.pcap"))
    assert len(kept) == 5 and "tcp-echo__echo__half-close.pcap" in kept
    shutil.rmtree(pytester.path / "netlab-artifacts")
    result = pytester.runpytest_subprocess(*args, "--netlab-capture=off", inline_failure := inline("reset_on_eof.py"), "--netlab-suite=tcp-echo")
    assert inline_failure and result.ret == 1
    result.stdout.fnmatch_lines(["netlab capture: off"])
    assert not (pytester.path / "netlab-artifacts").exists()


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux) to drop capabilities")
def test_without_permission_the_run_passes_and_says_why(pytester: pytest.Pytester, run_marker: str) -> None:
    # Without CAP_NET_RAW and CAP_NET_ADMIN neither tcpdump nor an AF_PACKET
    # socket may capture: what a user without the permission gets.
    drop = ["setpriv", "--bounding-set=-net_raw,-net_admin", "--inh-caps=-net_raw,-net_admin", "--"]
    command = [*drop, sys.executable, "-m", "pytest", "--netlab-target=reference:tcp-echo", "--netlab-check=tcp-echo/echo/*", "-p", "no:cacheprovider"]
    result = subprocess.run(command, cwd=pytester.path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "netlab capture: off (packet capture is not permitted here" in result.stdout
    assert "to enable it, run the tests as root" in result.stdout
    assert "5 passed" in result.stdout


@needs_capture
def test_failing_backoff_shows_the_wire_timeline_and_keeps_a_pcap(pytester: pytest.Pytester, run_marker: str) -> None:
    client = f"--netlab-target={{python}} {FIXTURES / 'udp_client' / 'fixed_interval.py'} {{host}} {{port}}"
    result = pytester.runpytest_subprocess(client, "--netlab-suite=udp-client", "--netlab-check=*/backoff", "--netlab-report=r.json", "-p", "no:cacheprovider")
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "*got:*waits of * ms, * ms, * ms, * ms between the requests on the wire; ratios *",
            "*on the wire (kernel timestamps; the server is 127.0.0.1:*):",
            "*t=  0.000  127.0.0.1:* -> server  23 bytes b'This is another message'",
            "*t=*  127.0.0.1:* -> server  23 bytes b'This is another message'  (+* ms)",
            "*the proxy's log:",
            "*capture:    *netlab-artifacts/fixed_interval.py/udp-client__retransmit__backoff.pcap (5 packets; *",
        ]
    )
    assert "no packet capture" not in result.stdout.str()
    report = json.loads((pytester.path / "r.json").read_text())
    pcap = Path(report["targets"][0]["checks"][0]["artifacts"]["pcap"])
    server_port = int(result.stdout.str().split("the server is 127.0.0.1:")[1].split(")")[0])
    assert len(datagrams_to(packets(pcap), server_port)) == 5


@needs_capture
def test_bare_fin_tls_server_shows_the_wire_evidence(pytester: pytest.Pytester, run_marker: str) -> None:
    server = f"--netlab-target={{python}} {FIXTURES / 'tls_echo' / 'no_close_notify.py'} {{host}} {{port}} {{certfile}} {{keyfile}}"
    result = pytester.runpytest_subprocess(server, "--netlab-suite=tls-echo", "--netlab-check=*/close-notify", "--netlab-strict", "-p", "no:cacheprovider")
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "*problem:    the server closed the connection without a TLS close_notify",
            "*got:*; on the wire: the server's FIN came with no TLS record after the echo",
            "*capture:    *netlab-artifacts/no_close_notify.py/tls-echo__tls__close-notify.pcap (* packets; *",
        ]
    )


# -- how a TLS server ended, from packets made here --------------------------------

CLIENT_PORT, SERVER_PORT = 50000, 8443


def record(content_type: int, length: int) -> bytes:
    """A TLS record of ``length`` filler bytes (the checks never decrypt)."""
    return bytes([content_type, 3, 3]) + length.to_bytes(2, "big") + b"\xee" * length


def segment(at: float, sender: int, payload: bytes = b"", flags: str = "ACK", seq: int = 0) -> Packet:
    receiver = SERVER_PORT if sender == CLIENT_PORT else CLIENT_PORT
    return Packet(at, at, "127.0.0.1", sender, "127.0.0.1", receiver, "tcp", frozenset(flags.split(",")), seq or int(at * 1000), 0, 65535, len(payload), payload)


REQUEST = record(23, 30)  # b"goodbye soon\n" in TLS 1.3: 13 bytes, the inner type, a 16-byte tag
TICKET = record(23, 250)
CLOSE_NOTIFY = record(23, 19)


def conversation(*server_ending_segments: Packet) -> list[Packet]:
    """Handshake records, the request (a ticket racing it), the echo, the client's close_notify; then the server's end."""
    return [
        segment(0.0, CLIENT_PORT, record(22, 512)),
        segment(0.1, SERVER_PORT, record(22, 122) + record(20, 1) + record(23, 1500)),
        segment(0.2, CLIENT_PORT, record(20, 1) + record(23, 53)),
        segment(0.3, CLIENT_PORT, REQUEST),
        segment(0.31, SERVER_PORT, TICKET),
        segment(0.4, SERVER_PORT, REQUEST),  # the echo: the request's type and length
        segment(0.5, CLIENT_PORT, CLOSE_NOTIFY),
        *server_ending_segments,
    ]


@pytest.mark.parametrize(
    ("ending", "bare", "words"),
    [
        (
            [segment(0.6, SERVER_PORT, CLOSE_NOTIFY, "FIN,ACK")],
            False,
            "after the echo the server sent an encrypted record (type 23, 19 bytes; TLS 1.3 encrypts its alerts), then its FIN",
        ),
        (
            [segment(0.6, SERVER_PORT, record(21, 26)), segment(0.7, SERVER_PORT, flags="FIN,ACK")],
            False,
            "after the echo the server sent an alert record (type 21, 26 bytes), then its FIN",
        ),
        ([segment(0.6, SERVER_PORT, flags="FIN,ACK")], True, "the server's FIN came with no TLS record after the echo"),
        ([segment(0.6, SERVER_PORT, flags="RST")], True, "the server reset the connection (RST) with no TLS record after the echo"),
        ([], False, "the server sent no TLS record after the echo and did not close the connection"),
    ],
)
def test_server_ending_reads_what_followed_the_echo(ending: list[Packet], bare: bool, words: str) -> None:
    found = server_ending(conversation(*ending), client_port=CLIENT_PORT, server_port=SERVER_PORT)
    assert found.echo_found and found.bare_close is bare
    assert found.describe() == "on the wire: " + words


def test_a_close_notify_sent_before_the_clients_counts() -> None:
    # A server that ends the conversation itself: its close_notify follows the echo at once.
    early = conversation()
    early.insert(6, segment(0.45, SERVER_PORT, CLOSE_NOTIFY))
    found = server_ending([*early, segment(0.6, SERVER_PORT, flags="FIN,ACK")], client_port=CLIENT_PORT, server_port=SERVER_PORT)
    assert not found.bare_close and len(found.records_after_echo) == 1


def test_without_the_echo_the_wire_proves_nothing() -> None:
    no_echo = [p for p in conversation(segment(0.6, SERVER_PORT, flags="FIN,ACK")) if p.payload != REQUEST or p.sport == CLIENT_PORT]
    found = server_ending(no_echo, client_port=CLIENT_PORT, server_port=SERVER_PORT)
    assert not found.echo_found and not found.bare_close
    assert found.describe() == "on the wire: the echo was not found among the server's TLS records, then its FIN"
