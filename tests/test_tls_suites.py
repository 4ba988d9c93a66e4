"""Unit tests of the tls-echo and tls-client suites' own logic.

The proof matrix (test_proof_matrix.py) runs both suites against their
reference and faulty implementations; these tests pin the pieces a matrix
run cannot see directly: the verdict functions of tls-client, the reply its
server builds, the server's record of real handshakes, the suites' tables
against the certificate zoo, and the files tls-echo hands a target.
"""

from __future__ import annotations

import random
import socket
import ssl
import stat
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_netlab.certs import ZOO_ENTRY_NAMES, CertificateAuthority, CertZoo, Verdict, client_context, server_context
from pytest_netlab.client_target import ClientRun
from pytest_netlab.process import ExitStatus
from pytest_netlab.registry import Severity, all_suites
from pytest_netlab.suites.tls_client import ACCEPTED
from pytest_netlab.suites.tls_client._server import CertificateServer, ServedConnection, build_reply, is_http_request_line
from pytest_netlab.suites.tls_client._verdicts import Scenario, judge_acceptance, judge_rejection
from pytest_netlab.suites.tls_echo._conversation import partial_client_hello
from pytest_netlab.suites.tls_echo._pki import declares_mutual_tls, pki, prepare_target

SCENARIO = Scenario(name="the expired certificate", defect="notAfter is a month in the past", server_hostname="localhost", hint="h")
TOKEN = b"0123456789abcdef"


def client_run(status: int = 1, stdout: bytes = b"", timed_out: bool = False) -> ClientRun:
    return ClientRun(argv=["client"], status=ExitStatus(status), timed_out=timed_out, stdout=stdout, stdout_truncated=False)


def handshaken(received: bytes = b"") -> ServedConnection:
    return ServedConnection(sni="localhost", handshake_done=True, version="TLSv1.3", received=received)


# -- the reply ------------------------------------------------------------------------


@pytest.mark.parametrize("line", [b"GET / HTTP/1.1\r\n", b"HEAD /x HTTP/1.0\n", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"])
def test_http_request_lines_are_recognised(line: bytes) -> None:
    assert is_http_request_line(line)


@pytest.mark.parametrize("line", [b"hello\n", b"get / HTTP/1.1\r\n", b"GET / HTTP/2\r\n", b"", b"GET /\r\n"])
def test_other_lines_are_not_http(line: bytes) -> None:
    assert not is_http_request_line(line)


def test_a_line_gets_a_line_with_the_token() -> None:
    assert build_reply(b"hello\n", TOKEN) == b"netlab " + TOKEN + b"\n"


def test_an_http_request_gets_an_http_response_whose_body_is_the_line() -> None:
    reply = build_reply(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", TOKEN)
    head, body = reply.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.0 200 OK\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    assert body == b"netlab " + TOKEN + b"\n"


# -- verdicts ---------------------------------------------------------------------------


def test_a_client_that_sent_data_after_a_bad_certificate_is_told_which_defect_and_what_data() -> None:
    violation = judge_rejection(SCENARIO, [handshaken(b"secret line\n")], client_run(status=0, stdout=b"netlab x"))
    assert violation is not None
    assert "expired" in violation.summary and "notAfter is a month in the past" in violation.summary
    assert "secret line" in violation.summary
    assert "exited with status 0" in violation.got


def test_refusing_with_a_non_zero_exit_and_no_data_passes() -> None:
    failed = ServedConnection(handshake_error="TLSV1_ALERT_UNKNOWN_CA")
    assert judge_rejection(SCENARIO, [failed], client_run(status=1)) is None


def test_rejecting_after_the_handshake_without_data_passes() -> None:
    # A TLS 1.3 client may finish the handshake, then check the name and hang up.
    assert judge_rejection(SCENARIO, [handshaken()], client_run(status=2)) is None


@pytest.mark.parametrize(
    ("run", "words"),
    [
        (client_run(status=0), "status 0"),
        (client_run(status=-11), "killed by signal 11"),
        (client_run(status=-9, timed_out=True), "did not exit"),
    ],
)
def test_a_refusal_must_end_in_an_error_status(run: ClientRun, words: str) -> None:
    violation = judge_rejection(SCENARIO, [ServedConnection(handshake_error="alert")], run)
    assert violation is not None and words in violation.summary


def test_a_client_that_never_connects_proves_nothing_about_rejection() -> None:
    violation = judge_rejection(SCENARIO, [], client_run(status=1))
    assert violation is not None and "never connected" in violation.summary


def test_acceptance_needs_the_reply_printed() -> None:
    good = Scenario(name="a valid certificate", defect="nothing", server_hostname="localhost")
    ok = judge_acceptance(good, [handshaken(b"hi\n")], client_run(status=0, stdout=b"netlab " + TOKEN + b"\n"), TOKEN)
    assert ok is None
    canned = judge_acceptance(good, [handshaken(b"hi\n")], client_run(status=0, stdout=b"reply received\n"), TOKEN)
    assert canned is not None and "did not print the server's reply" in canned.summary


@pytest.mark.parametrize(
    ("connections", "run", "words"),
    [
        ([], client_run(status=1), "never connected"),
        ([ServedConnection(handshake_error="TLSV1_ALERT_UNKNOWN_CA")], client_run(status=1), "rejected a valid certificate"),
        ([handshaken()], client_run(status=0), "sent no request"),
        ([handshaken(b"hi\n")], client_run(status=1, stdout=b"netlab " + TOKEN), "status 0"),
    ],
)
def test_acceptance_failures_say_what_went_wrong(connections: list[ServedConnection], run: ClientRun, words: str) -> None:
    violation = judge_acceptance(SCENARIO, connections, run, TOKEN)
    assert violation is not None and words in violation.summary


# -- the suites' tables against the zoo -------------------------------------------------------


def test_every_zoo_entry_has_a_check_with_the_zoo_severity_and_verdict() -> None:
    zoo = CertZoo()
    checks = all_suites()["tls-client"].checks
    for entry in zoo:
        check = checks[f"tls-client/certificate/{entry.name}"]
        assert check.severity is Severity(entry.severity), entry.name
        assert (entry.name in ACCEPTED) == (entry.verdict is Verdict.ACCEPT), entry.name
    assert {c.name for c in checks.values() if c.group == "certificate"} == set(ZOO_ENTRY_NAMES)


# -- tls-echo pieces ------------------------------------------------------------------------------


def test_the_partial_client_hello_announces_more_than_it_sends() -> None:
    hello = partial_client_hello(random.Random(1))
    assert hello[0] == 0x16 and hello[5] == 0x01  # a handshake record holding a ClientHello
    announced = int.from_bytes(hello[3:5], "big")
    assert announced > len(hello) - 5
    assert partial_client_hello(random.Random(1)) == hello


@pytest.mark.parametrize(
    ("command", "mutual"),
    [
        ("{python} srv.py {host} {port} {certfile} {keyfile} --cafile {cafile}", True),
        ("{python} srv.py {host} {port} {certfile} {keyfile}", False),
        ("echo {{cafile}} {port}", False),
        (None, False),
    ],
)
def test_mutual_tls_is_declared_by_using_cafile(command: str | None, mutual: bool) -> None:
    assert declares_mutual_tls(command) is mutual


def test_prepare_hands_the_target_its_chain_and_key_and_the_ca_certificate_only(tmp_path: Path) -> None:
    values = prepare_target(SimpleNamespace(workdir=tmp_path))
    assert set(values) == {"certfile", "keyfile", "cafile"}
    chain = Path(values["certfile"]).read_bytes()
    assert chain.count(b"BEGIN CERTIFICATE") == 2  # the leaf and the intermediate
    assert b"PRIVATE KEY" not in chain and b"PRIVATE KEY" not in Path(values["cafile"]).read_bytes()
    assert stat.S_IMODE(Path(values["keyfile"]).stat().st_mode) == 0o600
    # A client trusting only {cafile} verifies the chain the target will send.
    server, client = server_context(pki().server), client_context(Path(values["cafile"]).read_bytes())
    _handshake_over_socketpair(server, client, "localhost")


def _handshake_over_socketpair(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str) -> None:
    left, right = socket.socketpair()
    with left, right:
        left.settimeout(5.0)
        right.settimeout(5.0)
        errors: list[BaseException] = []

        def serve() -> None:
            try:
                with server.wrap_socket(left, server_side=True):
                    pass
            except BaseException as error:  # reported below
                errors.append(error)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with client.wrap_socket(right, server_hostname=hostname):
            pass
        thread.join(5.0)
        assert not thread.is_alive() and errors == []


# -- the tls-client server with real handshakes ------------------------------------------------------


def _talk(port: int, context: ssl.SSLContext, hostname: str, line: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as raw:
        with context.wrap_socket(raw, server_hostname=hostname) as tls:
            tls.sendall(line)
            reply = b""
            while chunk := tls.recv(4096):
                reply += chunk
            return reply


def test_the_server_records_sni_data_and_its_reply() -> None:
    ca = CertificateAuthority()
    with CertificateServer(server_context(ca.issue_server_cert()), token=TOKEN, timeout=5.0) as server:
        reply = _talk(server.port, client_context(ca.trust_pem), "localhost", b"hello\n")
    assert reply == b"netlab " + TOKEN + b"\n"
    (connection,) = server.connections
    assert connection.sni == "localhost" and connection.handshake_done
    assert connection.received == b"hello\n" and connection.replied == reply


def test_the_server_records_a_client_that_rejects_it() -> None:
    ca, other = CertificateAuthority(), CertificateAuthority("other")
    with CertificateServer(server_context(ca.issue_server_cert()), token=TOKEN, timeout=5.0) as server:
        with pytest.raises(ssl.SSLCertVerificationError):
            _talk(server.port, client_context(other.trust_pem), "localhost", b"hello\n")
    (connection,) = server.connections
    assert not connection.handshake_done and connection.received == b""
    assert "UNKNOWN_CA" in connection.handshake_error.upper()


def test_closing_the_server_ends_its_thread() -> None:
    before = threading.active_count()
    server = CertificateServer(server_context(CertificateAuthority().issue_server_cert()), token=TOKEN, timeout=1.0)
    server.close()
    assert threading.active_count() == before
