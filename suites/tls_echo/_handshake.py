"""The client side of the tls-echo suite: contexts, bounded handshakes, probes.

The suite plays a TLS client against the target. This module builds the
client contexts (a correct verifying client, with the suite's client
certificate when the target declares mutual TLS; clients that offer only
obsolete versions or only weak ciphers), performs every handshake within a
timeout, and turns what went wrong into words: a failed handshake becomes a
:class:`~pytest_netlab.errors.ProtocolViolation` that says what the server
did, and a TLS error after the handshake (an alert, a bad record) is raised
as one from the socket itself, so a :class:`ScriptedClient` read reports it
like any other violation.

It must not judge what a result means for a check (the checks do) and must
not hand any key to a target: client keys are loaded from a private
temporary directory that is gone when the context is built.
"""

from __future__ import annotations

import functools
import os
import re
import ssl
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any

from pytest_netlab.certs import Identity, client_context, legacy_tls_unavailable_reason, server_context
from pytest_netlab.context import CheckContext
from pytest_netlab.errors import ProtocolViolation
from pytest_netlab.rawclient import ScriptedClient

from ._pki import declares_mutual_tls, pki

__all__ = [
    "WEAK_CIPHERS",
    "HandshakeAttempt",
    "TLSLayerError",
    "suite_client_context",
    "legacy_probe_context",
    "weak_cipher_probe_context",
    "weak_ciphers_unavailable_reason",
    "legacy_versions_available",
    "attempt_handshake",
    "tls_connect",
    "describe_tls_error",
]

#: Cipher suites no server should agree to: no encryption (eNULL), no
#: authentication (aNULL), broken or export-grade ciphers, MD5 MACs. Only
#: TLS <= 1.2 has such suites; @SECLEVEL=0 lets the local OpenSSL offer them.
WEAK_CIPHERS = "eNULL:aNULL:EXP:RC4:DES:3DES:MD5:@SECLEVEL=0"

_OBSOLETE = (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)
_OPENSSL_TEXT = re.compile(r"^\[SSL(?:: [^\]]*)?\] (.*?)(?: \(_ssl\.c:\d+\))?$")
_MAX_PUMP_ROUNDS = 50  # an in-memory handshake takes a handful; this only bounds a bug


class TLSLayerError(ProtocolViolation, OSError):
    """The TLS layer failed after the handshake: an alert, a bad record, a truncated stream.

    It is the server's doing, so a violation; and, like ``ssl.SSLError``, an
    ``OSError``, so socket code that tolerates a dead connection (a drain
    before close) tolerates this one too.
    """


# The "try again" conditions of a non-blocking TLS socket: not errors at all.
_NOT_FAILURES = (ssl.SSLWantReadError, ssl.SSLWantWriteError)


class _ReportingSSLSocket(ssl.SSLSocket):
    """An SSLSocket whose TLS errors surface as violations, not as harness errors.

    ``ScriptedClient`` knows timeouts, FIN and RST; a TLS alert or a
    corrupt record is a fourth way a server can end a conversation, and it
    is the server's doing, so it is reported as a :class:`TLSLayerError`.
    """

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except _NOT_FAILURES:
            raise
        except ssl.SSLError as error:
            raise TLSLayerError(
                f"the TLS layer failed while reading: {describe_tls_error(error)}",
                expected="TLS records carrying the echo",
                got=describe_tls_error(error),
            ) from None

    def sendall(self, data: Any, flags: int = 0) -> None:
        try:
            super().sendall(data, flags)
        except _NOT_FAILURES:
            raise
        except ssl.SSLError as error:
            raise TLSLayerError(
                f"the TLS layer failed while sending: {describe_tls_error(error)}",
                expected="the server reads what the client sends",
                got=describe_tls_error(error),
            ) from None


def describe_tls_error(error: BaseException) -> str:
    """What a TLS failure means, in one line (the verify message, the alert, a timeout)."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {error.verify_message}"
    if isinstance(error, ssl.SSLEOFError):
        return "the connection ended without a TLS close_notify (a truncated TLS stream)"
    if isinstance(error, ssl.SSLError):
        # "[SSL: NO_SHARED_CIPHER] no shared cipher (_ssl.c:1006)" -> "NO_SHARED_CIPHER: no shared cipher"
        text = str(error.strerror or error)
        words = _OPENSSL_TEXT.match(text)
        detail = words.group(1) if words else text
        return f"{error.reason}: {detail}" if error.reason else detail
    if isinstance(error, TimeoutError):
        return "no answer within the time limit"
    if isinstance(error, (ConnectionResetError, BrokenPipeError)):
        return "the server reset the connection (RST)"
    return f"{type(error).__name__}: {error}"


def _with_identity(context: ssl.SSLContext, identity: Identity) -> None:
    # load_cert_chain reads files only; keep the key in a private directory for a moment.
    with tempfile.TemporaryDirectory(prefix="netlab-tls-echo-") as private:
        path = os.path.join(private, "client.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(identity.key_pem + identity.cert_chain_pem)
        context.load_cert_chain(path)


# OpenSSL 3 answers a TCP close without close_notify, met while reading, with
# a fatal alert. A suite client that reads before closing (ScriptedClient
# drains its socket so that close() sends FIN, not RST) would thus write to a
# server that is gone, and that server's kernel would answer with RST, which
# erases the TIME_WAIT common/reuseaddr looks for. Only the close-notify
# check needs to tell such a close from close_notify; it builds its own.
_QUIET_ON_TRUNCATION = getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)


def _reporting(context: ssl.SSLContext, *, strict_close: bool = False) -> ssl.SSLContext:
    context.sslsocket_class = _ReportingSSLSocket
    if not strict_close:
        context.options |= _QUIET_ON_TRUNCATION
    return context


@functools.lru_cache(maxsize=None)
def _cached_client_context(client: str, trust_intermediate: bool) -> ssl.SSLContext:
    material = pki()
    trust = material.root_pem + (material.intermediate_pem if trust_intermediate else b"")
    identity = {"none": None, "suite": material.client, "stranger": material.stranger}[client]
    return _reporting(client_context(trust, identity=identity))


def suite_client_context(
    *, client_cert: str = "none", trust_intermediate: bool = True, tls13_only: bool = False, strict_close: bool = False
) -> ssl.SSLContext:
    """A correct verifying client (Python's default context) trusting the suite's root.

    Args:
        client_cert: ``"none"``, ``"suite"`` (signed by the root, which the
            target trusts for mutual TLS) or ``"stranger"`` (another CA).
        trust_intermediate: also trust the intermediate, so that a server
            that forgets its chain is reported once, by the full-chain
            check, and not by every check.
        tls13_only: offer TLS 1.3 and nothing else.
        strict_close: a TCP close without close_notify is an error
            (``SSLEOFError``) rather than a quiet end of data.
    """
    if not tls13_only and not strict_close:
        return _cached_client_context(client_cert, trust_intermediate)
    material = pki()
    trust = material.root_pem + (material.intermediate_pem if trust_intermediate else b"")
    identity = {"none": None, "suite": material.client, "stranger": material.stranger}[client_cert]
    context = client_context(trust, identity=identity)
    if tls13_only:
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_3
    return _reporting(context, strict_close=strict_close)


def _unverified_client(mutual: bool) -> ssl.SSLContext:
    # The probes ask one question each ("old version?", "weak cipher?"); a
    # certificate problem must not answer it for them.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if mutual:
        _with_identity(context, pki().client)
    return _reporting(context)


def _pin(context: ssl.SSLContext, minimum: ssl.TLSVersion, maximum: ssl.TLSVersion) -> None:
    with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated: here they are the point
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = minimum
        context.maximum_version = maximum


def legacy_versions_available() -> tuple[list[ssl.TLSVersion], list[str]]:
    """The obsolete versions this machine can offer, and why the others cannot be."""
    available, reasons = [], []
    for version in _OBSOLETE:
        reason = legacy_tls_unavailable_reason(version)
        if reason is None:
            available.append(version)
        else:
            reasons.append(reason)
    return available, reasons


def legacy_probe_context(versions: list[ssl.TLSVersion], *, mutual: bool) -> ssl.SSLContext:
    """A client offering only ``versions`` (TLS 1.0 and/or 1.1), at security level 0."""
    context = _unverified_client(mutual)
    _pin(context, min(versions), max(versions))
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


def weak_cipher_probe_context(*, mutual: bool) -> ssl.SSLContext:
    """A TLS 1.2 client offering only :data:`WEAK_CIPHERS` (TLS 1.3 has no weak suites)."""
    context = _unverified_client(mutual)
    _pin(context, ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)
    context.set_ciphers(WEAK_CIPHERS)
    return context


@functools.lru_cache(maxsize=1)
def weak_ciphers_unavailable_reason() -> str | None:
    """Why this machine cannot offer weak ciphers at all, or None when it can.

    Answered by a handshake between two in-memory endpoints that both
    accept only :data:`WEAK_CIPHERS`, so a refusal by the target is never
    really our OpenSSL's refusal.
    """
    try:
        client = weak_cipher_probe_context(mutual=False)
        server = server_context(pki().server)
        _pin(server, ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)
        server.set_ciphers(WEAK_CIPHERS)
        bios = [ssl.MemoryBIO() for _ in range(4)]
        to_server, from_server, to_client, from_client = bios
        server_end = server.wrap_bio(to_server, from_server, server_side=True)
        client_end = client.wrap_bio(to_client, from_client, server_side=False)
        pending = [client_end, server_end]
        for _ in range(_MAX_PUMP_ROUNDS):
            for end in list(pending):
                try:
                    end.do_handshake()
                    pending.remove(end)
                except ssl.SSLWantReadError:
                    pass
            to_server.write(from_client.read())
            to_client.write(from_server.read())
            if not pending:
                return None
        return "an in-memory handshake with only weak ciphers did not finish"
    except ssl.SSLError as error:
        return f"{ssl.OPENSSL_VERSION} cannot negotiate any of {WEAK_CIPHERS!r}: {error.reason or error}"


@dataclass
class HandshakeAttempt:
    """How one handshake went.

    Attributes:
        client: the connection (TLS once ``completed``), recorded in the transcript.
        completed: the handshake finished.
        error: what ended it otherwise, in words.
        version: the negotiated version (``TLSv1.3``), when completed.
        cipher: the negotiated cipher suite, when completed.
        exception: the original error, for checks that tell errors apart.
    """

    client: ScriptedClient
    completed: bool
    error: str = ""
    version: str = ""
    cipher: str = ""
    exception: BaseException | None = None

    def describe(self) -> str:
        return f"{self.version} with {self.cipher}" if self.completed else f"handshake failed: {self.error}"


def attempt_handshake(
    ctx: CheckContext,
    context: ssl.SSLContext,
    *,
    label: str,
    address: tuple[str, int] | None = None,
    server_hostname: str | None = None,
    timeout: float = 5.0,
    ragged_eof_is_error: bool = False,
) -> HandshakeAttempt:
    """Connect and handshake within ``timeout`` (scaled); never raises for a TLS failure.

    ``ragged_eof_is_error`` makes a TCP close without close_notify an
    ``SSLEOFError`` instead of a plain end of data.

    Raises:
        ConnectFailed: the TCP connection itself was refused.
    """
    if not ctx.spec.launched:
        # The suite hands the target its certificate: a server we did not start has another one.
        ctx.skip("tls-echo gives the target its certificate through {certfile}, so it must start it: give a command, not an address")
    where = address or ctx.address
    client = ctx.connect(where, label=label)
    raw = client.sock
    raw.settimeout(ctx.timeout(timeout))
    hostname = server_hostname if server_hostname is not None else where[0]
    try:
        tls = context.wrap_socket(
            raw,
            server_hostname=hostname if context.check_hostname else None,
            do_handshake_on_connect=False,
            suppress_ragged_eofs=not ragged_eof_is_error,
        )
        client.sock = tls  # from here on the scripted client speaks TLS, and ctx closes it
        tls.do_handshake()
    except OSError as error:  # ssl.SSLError, a timeout, a reset, or a TLSLayerError
        words = error.summary if isinstance(error, TLSLayerError) else describe_tls_error(error)
        ctx.transcript.record("", "note", note=f"TLS handshake failed: {words}", stream=label)
        return HandshakeAttempt(client, completed=False, error=words, exception=error)
    version, cipher = tls.version() or "?", (tls.cipher() or ("?",))[0]
    ctx.transcript.record("", "note", note=f"TLS handshake done: {version}, {cipher}", stream=label)
    return HandshakeAttempt(client, completed=True, version=version, cipher=cipher)


def _handshake_hint(error: BaseException | None) -> str:
    if isinstance(error, ssl.SSLCertVerificationError) and error.verify_code == 20:
        return "send the whole chain: load_cert_chain({certfile}, {keyfile}) with the certfile as given (leaf, then intermediate)"
    if isinstance(error, ssl.SSLCertVerificationError):
        return "present the certificate in {certfile} with the key in {keyfile}, unchanged"
    if isinstance(error, ssl.SSLError) and error.reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE"):
        return "the server answered in plaintext: wrap the accepted socket with an SSLContext(PROTOCOL_TLS_SERVER) before reading"
    if isinstance(error, TimeoutError):
        return "the server never answered the ClientHello: is it speaking TLS on this port, and is it busy with another client's handshake?"
    return "do the TLS handshake with the certificate from {certfile} and the key from {keyfile}; see the target's stderr"


def tls_connect(
    ctx: CheckContext,
    address: tuple[str, int],
    label: str,
    *,
    context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    timeout: float = 5.0,
    ragged_eof_is_error: bool = False,
) -> ScriptedClient:
    """A :class:`ScriptedClient` over a verified TLS connection, or a violation saying why not.

    The default context is the suite's verifying client, presenting the
    suite's client certificate when the target declares mutual TLS. This is
    the ``connect`` of the suite's ``TcpProtocol``.
    """
    if context is None:
        context = suite_client_context(client_cert="suite" if declares_mutual_tls(ctx.spec.command) else "none")
    attempt = attempt_handshake(
        ctx, context, label=label, address=address, server_hostname=server_hostname, timeout=timeout,
        ragged_eof_is_error=ragged_eof_is_error,
    )
    if not attempt.completed:
        raise ProtocolViolation(
            f"the TLS handshake with the suite's verifying client failed: {attempt.error}",
            expected=f"a TLS 1.2 or 1.3 handshake presenting the suite's certificate, verified for {server_hostname or address[0]}",
            got=attempt.error,
            hint=_handshake_hint(attempt.exception),
        )
    return attempt.client
