"""Tests for pytest_netlab.certs: every zoo certificate meets a real Python client.

Each handshake runs over a loopback TCP connection with a server thread; the
client is the *correct* one (``ssl.create_default_context(cadata=...)`` with
hostname checking), so the verdicts recorded in the zoo are facts about this
machine's CPython and OpenSSL, not claims.
"""

from __future__ import annotations

import datetime
import socket
import ssl
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from pytest_netlab.certs import (
    DEFAULT_SERVER_NAMES,
    ZOO_ENTRY_NAMES,
    CertificateAuthority,
    CertZoo,
    Identity,
    Verdict,
    client_context,
    legacy_client_context,
    legacy_server_context,
    legacy_tls_unavailable_reason,
    server_context,
    write_tls_files,
)
from pytest_netlab.errors import HarnessError

# Generous: two shared cores, other helpers running; a handshake takes ms.
IO_TIMEOUT = 10.0
PING = b"ping"


@dataclass
class HandshakeOutcome:
    """What each side saw; ``client_error`` is None when the client accepted."""

    client_error: BaseException | None = None
    server_error: BaseException | None = None
    version: str | None = None
    echoed: bytes = b""
    server_saw: list[bytes] = field(default_factory=list)


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str | None) -> HandshakeOutcome:
    """One TLS connection over 127.0.0.1: handshake, then the client sends PING and reads it back."""
    outcome = HandshakeOutcome()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(IO_TIMEOUT)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError as error:
            outcome.server_error = error
            return
        with conn:
            conn.settimeout(IO_TIMEOUT)
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    data = tls.recv(len(PING))
                    outcome.server_saw.append(data)
                    tls.sendall(data)
            except (ssl.SSLError, OSError) as error:
                outcome.server_error = error

    server = threading.Thread(target=serve, name="tls-handshake-server", daemon=True)
    server.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=IO_TIMEOUT) as raw:
            try:
                with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                    outcome.version = tls.version()
                    tls.sendall(PING)
                    outcome.echoed = tls.recv(len(PING))
            except (ssl.SSLError, OSError) as error:
                outcome.client_error = error
    finally:
        server.join(IO_TIMEOUT)
        listener.close()
    assert not server.is_alive(), "server thread did not finish"
    return outcome


@pytest.fixture(scope="module")
def zoo() -> CertZoo:
    return CertZoo()


@pytest.mark.parametrize("name", ZOO_ENTRY_NAMES)
def test_default_python_client_reaches_the_recorded_verdict(zoo: CertZoo, name: str) -> None:
    entry = zoo[name]
    outcome = handshake(server_context(entry.identity), client_context(entry.ca_pem), entry.server_hostname)
    if entry.python_default is Verdict.ACCEPT:
        assert outcome.client_error is None, f"{name}: {outcome.client_error!r}"
        assert outcome.echoed == PING
    else:
        error = outcome.client_error
        assert isinstance(error, ssl.SSLCertVerificationError), f"{name}: {error!r}"
        assert error.verify_code == entry.verify_code, error.verify_message
        assert entry.expected_error.lower() in error.verify_message.lower()
        # A rejecting client sent no application data.
        assert outcome.server_saw == []


def test_zoo_entries_are_complete_and_named_in_order(zoo: CertZoo) -> None:
    assert tuple(entry.name for entry in zoo) == ZOO_ENTRY_NAMES
    for entry in zoo:
        assert entry.defect and entry.reference
        assert entry.ca_pem == zoo.ca.trust_pem
        assert (entry.verify_code is None) == (entry.verdict is Verdict.ACCEPT)
    with pytest.raises(KeyError, match="known: good"):
        zoo["no-such-entry"]


def test_cn_only_is_rejected_by_a_client_that_ignores_the_common_name(zoo: CertZoo) -> None:
    # Python's default still falls back to the CN (recorded as python_default);
    # a client following RFC 9110 4.3.4 does not.
    entry = zoo["cn-only"]
    assert entry.verdict is Verdict.REJECT and entry.python_default is Verdict.ACCEPT
    strict = client_context(entry.ca_pem)
    strict.hostname_checks_common_name = False
    outcome = handshake(server_context(entry.identity), strict, entry.server_hostname)
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)
    assert outcome.client_error.verify_code == entry.verify_code
    leaf = entry.identity.certificates()[0]
    with pytest.raises(x509.ExtensionNotFound):
        leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_chain_is_accepted_only_when_the_intermediate_is_sent(zoo: CertZoo) -> None:
    full, bare = zoo["chain"].identity, zoo["chain-missing-intermediate"].identity
    assert len(full.certificates()) == 2 and len(bare.certificates()) == 1
    assert full.leaf_pem == bare.leaf_pem
    assert zoo.intermediate.cert_pem in full.cert_chain_pem
    assert zoo.ca.cert_pem not in full.cert_chain_pem  # the root is never sent
    # Trusting the intermediate itself would hide the missing-chain defect.
    assert zoo["chain"].ca_pem == zoo.ca.cert_pem == zoo.intermediate.trust_pem


def test_wildcard_entries_share_one_certificate(zoo: CertZoo) -> None:
    names = ["wildcard", "wildcard-deep", "wildcard-apex"]
    assert len({zoo[name].identity for name in names}) == 1
    assert [zoo[name].server_hostname for name in names] == ["a.example.test", "a.b.example.test", "example.test"]


def test_expired_and_not_yet_valid_bracket_now(zoo: CertZoo) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    expired = zoo["expired"].identity.certificates()[0]
    future = zoo["not-yet-valid"].identity.certificates()[0]
    assert expired.not_valid_after_utc < now
    assert future.not_valid_before_utc > now


def test_default_server_cert_covers_localhost_and_both_loopback_addresses() -> None:
    ca = CertificateAuthority()
    server = server_context(ca.issue_server_cert())
    for hostname in DEFAULT_SERVER_NAMES:
        outcome = handshake(server, client_context(ca.trust_pem), hostname)
        assert outcome.client_error is None, f"{hostname}: {outcome.client_error!r}"


def test_mutual_tls_requires_a_client_certificate_from_the_suite_ca(zoo: CertZoo) -> None:
    ca = zoo.ca
    server = server_context(ca.issue_server_cert(), client_ca_pem=ca.trust_pem)
    good = handshake(server, client_context(ca.trust_pem, identity=ca.issue_client_cert("student-1")), "localhost")
    assert good.client_error is None and good.server_error is None and good.echoed == PING

    anonymous = handshake(server, client_context(ca.trust_pem), "localhost")
    assert anonymous.server_error is not None and anonymous.echoed == b""

    stranger = zoo.unrelated_ca.issue_client_cert("stranger")
    foreign = handshake(server, client_context(ca.trust_pem, identity=stranger), "localhost")
    assert isinstance(foreign.server_error, ssl.SSLCertVerificationError)
    assert foreign.echoed == b"" and foreign.server_saw == []


def test_written_files_never_contain_a_ca_private_key(zoo: CertZoo, tmp_path: Path) -> None:
    # The CA keys exist only inside trustme; fetch them the way an attacker could not.
    ca_keys = [authority._ca.private_key_pem.bytes() for authority in (zoo.ca, zoo.intermediate, zoo.unrelated_ca)]
    identities = [entry.identity for entry in zoo] + [zoo.ca.issue_client_cert()]
    for index, identity in enumerate(identities):
        directory = tmp_path / str(index)
        directory.mkdir()
        files = write_tls_files(directory, identity=identity, ca_pem=zoo.ca.trust_pem)
        assert set(files.placeholders()) == {"certfile", "keyfile", "cafile"}
        assert files.keyfile is not None and files.certfile is not None and files.cafile is not None
        assert stat.S_IMODE(files.keyfile.stat().st_mode) == 0o600
        assert files.certfile.read_bytes() == identity.cert_chain_pem
        assert files.cafile.read_bytes() == zoo.ca.trust_pem
        for written in directory.iterdir():
            content = written.read_bytes()
            assert not any(key in content for key in ca_keys), written
        # What was written loads as a working server identity.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(files.certfile, files.keyfile)


def test_ca_only_files_for_a_client_target(zoo: CertZoo, tmp_path: Path) -> None:
    files = write_tls_files(tmp_path, ca_pem=zoo.ca.trust_pem)
    assert files.placeholders() == {"cafile": str(tmp_path / "ca.pem")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.pem"]


def test_writing_a_ca_as_an_identity_is_refused(tmp_path: Path) -> None:
    raw_ca = trustme.CA()
    as_identity = Identity(cert_chain_pem=raw_ca.cert_pem.bytes(), key_pem=raw_ca.private_key_pem.bytes())
    with pytest.raises(HarnessError, match="CA certificate"):
        write_tls_files(tmp_path, identity=as_identity)
    assert list(tmp_path.iterdir()) == []


def test_writing_a_foreign_key_or_key_material_as_ca_is_refused(zoo: CertZoo, tmp_path: Path) -> None:
    leaf, other = zoo["good"].identity, zoo["expired"].identity
    with pytest.raises(HarnessError, match="does not belong"):
        write_tls_files(tmp_path, identity=Identity(leaf.cert_chain_pem, other.key_pem))
    with pytest.raises(HarnessError, match="exactly one PEM block"):
        write_tls_files(tmp_path, identity=Identity(leaf.cert_chain_pem, leaf.key_pem + other.key_pem))
    with pytest.raises(HarnessError, match="private key"):
        write_tls_files(tmp_path, ca_pem=zoo.ca.trust_pem + other.key_pem)
    assert list(tmp_path.iterdir()) == []


def test_write_does_not_follow_a_planted_symlink(zoo: CertZoo, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    workdir = tmp_path / "target"
    workdir.mkdir()
    (workdir / "key.pem").symlink_to(victim)
    with pytest.raises(OSError):
        write_tls_files(workdir, identity=zoo["good"].identity)
    assert victim.read_bytes() == b"precious"


def test_identity_repr_hides_the_key(zoo: CertZoo) -> None:
    identity = zoo["good"].identity
    assert identity.key_pem.decode() not in repr(identity)
    assert "PRIVATE KEY" not in repr(zoo["good"])


def test_legacy_probe_explains_what_cannot_work() -> None:
    sslv3 = legacy_tls_unavailable_reason(ssl.TLSVersion.SSLv3)
    assert sslv3 is None or "SSLv3" in sslv3
    if not ssl.HAS_SSLv3:
        assert sslv3 is not None and "built without SSLv3" in sslv3
    # OpenSSL 3 refuses TLS 1.0 at the default security level; the probe says so.
    if ssl.OPENSSL_VERSION_INFO >= (3,):
        at_default_level = legacy_tls_unavailable_reason(ssl.TLSVersion.TLSv1, "DEFAULT")
        assert at_default_level is not None and "TLSv1" in at_default_level
    with pytest.raises(ValueError, match="not an obsolete version"):
        legacy_tls_unavailable_reason(ssl.TLSVersion.TLSv1_2)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["TLSv1", "TLSv1.1"])
def test_legacy_probe_agrees_with_a_real_handshake(zoo: CertZoo, version: ssl.TLSVersion) -> None:
    reason = legacy_tls_unavailable_reason(version)
    identity = zoo["good"].identity
    try:
        outcome = handshake(legacy_server_context(identity, version), legacy_client_context(version, version), None)
    except ssl.SSLError as error:  # building the contexts already failed
        assert reason is not None, f"probe said available, but: {error!r}"
        return
    if reason is None:
        assert outcome.client_error is None, repr(outcome.client_error)
        assert outcome.version == {ssl.TLSVersion.TLSv1: "TLSv1", ssl.TLSVersion.TLSv1_1: "TLSv1.1"}[version]
    else:
        assert outcome.client_error is not None


def test_modern_server_refuses_the_legacy_client(zoo: CertZoo) -> None:
    if reason := legacy_tls_unavailable_reason(ssl.TLSVersion.TLSv1_1):
        pytest.skip(reason)
    outcome = handshake(server_context(zoo["good"].identity), legacy_client_context(), None)
    assert isinstance(outcome.client_error, ssl.SSLError)
    assert outcome.server_saw == []
    assert isinstance(outcome.server_error, ssl.SSLError)
    assert "UNSUPPORTED_PROTOCOL" in str(outcome.server_error)


def test_default_client_refuses_a_tls10_only_server(zoo: CertZoo) -> None:
    if reason := legacy_tls_unavailable_reason(ssl.TLSVersion.TLSv1):
        pytest.skip(reason)
    entry = zoo["good"]
    outcome = handshake(legacy_server_context(entry.identity), client_context(entry.ca_pem), entry.server_hostname)
    assert isinstance(outcome.client_error, ssl.SSLError)
    assert not isinstance(outcome.client_error, ssl.SSLCertVerificationError)
    assert outcome.server_saw == []
