"""tls-echo: RFC 862 echo inside TLS, the server side of FOPNP ch. 6.

The target listens on ``{host}:{port}``, completes a TLS handshake with the
certificate chain in ``{certfile}`` and the key in ``{keyfile}`` (a leaf for
localhost, 127.0.0.1 and ::1, issued by the suite's intermediate CA), then
echoes every byte until the client ends the conversation. A target whose
command uses ``{cafile}`` declares mutual TLS: it must require a client
certificate signed by that CA.

The client's ``close_notify`` ends the conversation: echo after it is not
required, and a raw TCP half-close under TLS is not a TLS half-close, so
the suite never asks for either.
"""

from __future__ import annotations

import ssl

from pytest_netlab.context import CheckContext
from pytest_netlab.errors import ProtocolViolation
from pytest_netlab.registry import Role, Severity, Suite, register_suite
from pytest_netlab.transcript import format_bytes

from ..common_tcp import add_common_checks, exchange
from ._closing import server_ending
from ._conversation import PROTOCOL, echo_windowed, expect_echo, served_with_certificate, still_serves
from ._handshake import (
    attempt_handshake,
    describe_tls_error,
    legacy_probe_context,
    legacy_versions_available,
    suite_client_context,
    tls_connect,
    weak_cipher_probe_context,
    weak_ciphers_unavailable_reason,
)
from ._pki import declares_mutual_tls, prepare_target

SUITE = register_suite(
    Suite(
        "tls-echo",
        Role.SERVER,
        title="TLS echo server (RFC 862 inside TLS; FOPNP ch. 6)",
        placeholders=("host", "port", "certfile", "keyfile", "cafile"),
        description=(
            "tcp-echo inside TLS: handshake with {certfile}/{keyfile} (leaf + intermediate), then echo every byte "
            "until the client's close_notify; using {cafile} declares mutual TLS."
        ),
        prepare=prepare_target,
    )
)

BOOK = "FOPNP ch. 6"
BOOK_CIPHERS = 'FOPNP ch. 6 "Hand-Picked Ciphers and Perfect Forward Security" (B:3802-3817, B:4079)'
RFC_CLOSE = 'RFC 8446 section 6.1 ("Each party MUST send a close_notify alert before closing its write side")'
RFC_OLD_VERSIONS = "RFC 8996 sections 4-5 (TLS 1.0 and 1.1 MUST NOT be negotiated)"
RFC_BCP195 = "RFC 9325 (BCP 195)"
#: Said wherever the close was judged without the wire.
NO_CAPTURE = "(no packet capture: judged from what the TLS library reports)"


add_common_checks(SUITE, PROTOCOL)


# X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY: the chain stops short of a trusted root.
_UNABLE_TO_GET_LOCAL_ISSUER = 20


def _mutual(ctx: CheckContext) -> bool:
    return declares_mutual_tls(ctx.spec.command)


# -- the handshake ----------------------------------------------------------------


@SUITE.check(
    "tls",
    "verified-handshake",
    title="completes a handshake a verifying client accepts (trusting only the root), then echoes",
    references=(f"{BOOK} (B:3548, B:3644, B:3651)", "RFC 8446 section 4.4.2", "RFC 862"),
)
def check_verified_handshake(ctx: CheckContext) -> None:
    """Connect with Python's default client context trusting only the suite's
    root CA and verifying the address it connects to, as any real client
    does; the handshake must succeed and a message must come back."""
    context = suite_client_context(client_cert="suite" if _mutual(ctx) else "none", trust_intermediate=False)
    client = tls_connect(ctx, ctx.address, "verified", context=context)
    expect_echo(ctx, client, b"hello over TLS " + ctx.random_bytes(8).hex().encode() + b"\n")


@SUITE.check(
    "tls",
    "full-chain",
    title="sends the intermediate certificate after its leaf",
    references=(f"{BOOK} (B:3548)", "RFC 8446 section 4.4.2", "RFC 5246 section 7.4.2"),
)
def check_full_chain(ctx: CheckContext) -> None:
    """The leaf in {certfile} comes from an intermediate CA and the file holds
    both. A client that trusts only the root can verify the leaf only if the
    server sends the intermediate too."""
    client_cert = "suite" if _mutual(ctx) else "none"
    root_only = attempt_handshake(ctx, suite_client_context(client_cert=client_cert, trust_intermediate=False), label="root-only")
    if root_only.completed:
        return
    knows_intermediate = attempt_handshake(ctx, suite_client_context(client_cert=client_cert), label="knows-intermediate")
    if not knows_intermediate.completed:
        ctx.fail(
            "the handshake fails even for a client that already has the intermediate certificate",
            expected="a handshake with the certificate chain from {certfile}",
            got=knows_intermediate.error,
            hint="load_cert_chain({certfile}, {keyfile}); see the target's stderr",
        )
    error = root_only.exception
    if not (isinstance(error, ssl.SSLCertVerificationError) and error.verify_code == _UNABLE_TO_GET_LOCAL_ISSUER):
        ctx.fail(
            "a client that trusts only the root failed where one that also has the intermediate succeeded",
            expected="both handshakes succeed",
            got=f"root only: {root_only.error}; with the intermediate: {knows_intermediate.describe()}",
        )
    ctx.fail(
        "the server does not send the intermediate certificate: a client that trusts only the root cannot verify it",
        expected="the chain from {certfile}: the leaf, then the intermediate CA that signed it",
        got=f"the root-only client failed ({root_only.error}); a client given the intermediate succeeded",
        hint="give load_cert_chain() the certfile as it is (leaf + intermediate); do not cut it down to the first certificate",
    )


@SUITE.check(
    "tls",
    "legacy-versions-refused",
    title="refuses a client that offers only TLS 1.0 and 1.1",
    references=(RFC_OLD_VERSIONS, f"{RFC_BCP195} section 3.1.1", f"{BOOK} (B:3642, B:3802-3806)"),
)
def check_legacy_versions_refused(ctx: CheckContext) -> None:
    """Offer only TLS 1.0 and 1.1 (whichever the local OpenSSL can still
    speak, at security level 0); the handshake must fail."""
    versions, reasons = legacy_versions_available()
    if not versions:
        ctx.skip("this machine cannot offer TLS 1.0 or 1.1 at all: " + "; ".join(reasons))
    offered = " and ".join(v.name.replace("v1_", "v1.") for v in versions)
    attempt = attempt_handshake(ctx, legacy_probe_context(versions, mutual=_mutual(ctx)), label="legacy-client")
    ctx.expect(
        not attempt.completed,
        f"the server agreed to {attempt.version} with a client that offered only {offered}",
        expected=f"the handshake refused (a protocol_version alert) when only {offered} is offered",
        got=attempt.describe(),
        hint="do not lower the context's minimum_version below TLSVersion.TLSv1_2 (Python's default)",
    )
    attempt.client.close()
    still_serves(ctx, f"refusing a client that offered only {offered}")


@SUITE.check(
    "tls",
    "tls13-offered",
    title="speaks TLS 1.3",
    severity=Severity.SHOULD,
    references=(f"{RFC_BCP195} section 3.1.1 (implementations SHOULD support TLS 1.3)", "RFC 8446"),
)
def check_tls13_offered(ctx: CheckContext) -> None:
    """Connect with a client that offers TLS 1.3 and nothing else."""
    if not ssl.HAS_TLSv1_3:
        ctx.skip(f"{ssl.OPENSSL_VERSION} cannot offer TLS 1.3")
    context = suite_client_context(client_cert="suite" if _mutual(ctx) else "none", tls13_only=True)
    attempt = attempt_handshake(ctx, context, label="tls13-only")
    ctx.expect(
        attempt.completed,
        "the server refused a client that offers only TLS 1.3",
        expected="a TLS 1.3 handshake",
        got=attempt.describe(),
        hint="do not cap maximum_version at TLSv1_2; Python's default server context speaks TLS 1.3",
    )
    attempt.client.close()  # a one-client-at-a-time server is judged by silent-client, not here
    still_serves(ctx, "a TLS 1.3 handshake")


@SUITE.check(
    "tls",
    "weak-ciphers-refused",
    title="refuses a client that offers only weak cipher suites (NULL, anonymous, export, RC4, DES, MD5)",
    references=(f"{RFC_BCP195} section 4.1", "RFC 5246 appendix F.1.1.1 (anonymous key exchange)", BOOK_CIPHERS),
)
def check_weak_ciphers_refused(ctx: CheckContext) -> None:
    """Offer TLS 1.2 with only cipher suites that encrypt nothing, authenticate
    nobody or are broken; the handshake must fail."""
    reason = weak_ciphers_unavailable_reason()
    if reason:
        ctx.skip(f"this machine cannot offer weak cipher suites: {reason}")
    attempt = attempt_handshake(ctx, weak_cipher_probe_context(mutual=_mutual(ctx)), label="weak-ciphers")
    ctx.expect(
        not attempt.completed,
        f"the server agreed to the weak cipher suite {attempt.cipher}",
        expected="the handshake refused (a handshake_failure alert): no shared cipher",
        got=attempt.describe(),
        hint="keep Python's default server cipher list; never add eNULL/aNULL or lower @SECLEVEL",
    )
    attempt.client.close()
    still_serves(ctx, "refusing a client that offered only weak cipher suites")


# -- robustness -------------------------------------------------------------------


@SUITE.check(
    "tls",
    "plaintext-client",
    title="a plaintext client gets neither a plaintext answer nor a crash",
    references=(f"{BOOK} (B:3395, B:3558: the handshake comes first)", 'FOPNP ch. 5 "Network Exceptions"', "FOPNP ch. 6 (B:3682, B:3817)"),
)
def check_plaintext_client(ctx: CheckContext) -> None:
    """Send a plaintext line, as a client that forgot TLS would; the server may
    send a TLS alert and close, but must not answer in plaintext, and must go
    on serving TLS clients."""
    line = b"hello, I forgot to speak TLS " + ctx.random_bytes(6).hex().encode() + b"\r\n"
    plain = ctx.connect(label="plaintext")
    try:
        plain.send(line)
        plain.read_until_close(timeout=ctx.timeout(2.0))
    except ProtocolViolation:
        pass  # silence or a reset are fine answers; what matters is what came back
    plain.close()
    answer = ctx.transcript.received(stream="plaintext")
    if line.strip() in answer:
        ctx.fail(
            "the server answered a plaintext client in plaintext (it echoed the line without TLS)",
            expected="a TLS alert and a close: application data only after a handshake",
            got=format_bytes(answer),
            hint="never fall back to plaintext: wrap every accepted socket, and drop the connection when the handshake fails",
        )
    still_serves(ctx, "a plaintext client")


@SUITE.check(
    "tls",
    "silent-client",
    title="a client that never sends its ClientHello does not block others",
    severity=Severity.SHOULD,
    references=("FOPNP ch. 7 (single-threaded server)", f"{BOOK} (B:3682)"),
)
def check_silent_client(ctx: CheckContext) -> None:
    """Open a TCP connection and send nothing; another client must still get
    its handshake and its echo (a server that handshakes in its accept loop,
    for example by accept() on a wrapped listening socket, blocks here)."""
    silent = ctx.connect(label="silent")
    try:
        other = tls_connect(ctx, ctx.address, "other", timeout=3.0)
        exchange(ctx, other, PROTOCOL, timeout=3.0)
    except ProtocolViolation as violation:
        raise ProtocolViolation(
            "a client that connected and never sent a ClientHello kept another client from being served",
            expected="the second client's handshake and echo while the first one is silent",
            got=violation.got or violation.summary,
            hint="do the handshake in the connection's own thread (wrap_socket after accept()), with a timeout; "
            "accept() on a wrapped listening socket handshakes in the accept loop",
        ) from None
    silent.close()


# -- ending -----------------------------------------------------------------------


@SUITE.check(
    "tls",
    "close-notify",
    title="answers the client's close_notify with its own, and closes",
    severity=Severity.SHOULD,
    references=(RFC_CLOSE, "RFC 5246 section 7.2.1", f"{BOOK} (B:3413)"),
)
def check_close_notify(ctx: CheckContext) -> None:
    """After an echo, send close_notify (``unwrap()``): the server must end the
    conversation with a close_notify of its own rather than a bare TCP close,
    which a client cannot tell from a truncation attack. With packet capture
    the wire is read too: a FIN or RST with no TLS record after the echo fails
    whatever the TLS library made of it."""
    context = suite_client_context(client_cert="suite" if _mutual(ctx) else "none", strict_close=True)
    client = tls_connect(ctx, ctx.address, "closing", context=context, ragged_eof_is_error=True)
    expect_echo(ctx, client, b"goodbye soon\n")
    tls = client.sock
    assert isinstance(tls, ssl.SSLSocket)
    client_port = tls.getsockname()[1]
    tls.settimeout(ctx.timeout(3.0))
    ctx.transcript.record("c->s", "note", note="TLS close_notify (unwrap)", stream="closing")
    failure: tuple[str, str, str, str] | None = None
    try:
        tls.unwrap()
    except TimeoutError:
        failure = (
            "after the client's close_notify the server neither answered it nor closed the connection",
            "the server's close_notify, then its TCP close",
            f"nothing within {ctx.timeout(3.0):.1f} s",
            "recv() returns b'' after the peer's close_notify: treat it as the end, call unwrap(), then close()",
        )
    except (ssl.SSLEOFError, ConnectionError) as error:
        failure = (
            "the server closed the connection without a TLS close_notify",
            "the server's close_notify before its TCP close",
            describe_tls_error(error),
            "SSLSocket.close() sends no close_notify: call unwrap() before close()",
        )
    except OSError as error:
        failure = (
            "the server did not answer the client's close_notify with its own",
            "the server's close_notify, then its TCP close",
            describe_tls_error(error),
            "after recv() returns b'', send nothing more: call unwrap(), then close()",
        )
    captured = ctx.packets()
    ending = server_ending(captured, client_port=client_port, server_port=ctx.address[1]) if captured is not None else None
    evidence = f"; {ending.describe()}" if ending is not None else f" {NO_CAPTURE}"
    if failure is not None:
        summary, expected, got, hint = failure
        ctx.fail(summary, expected=expected, got=got + evidence, hint=hint)
    if ending is not None and ending.bare_close:
        ctx.fail(
            "the server closed the connection without a TLS close_notify",
            expected="the server's close_notify (a TLS record after the echo) before its TCP close",
            got=f"{ending.describe()}, although the TLS library reported a clean close",
            hint="SSLSocket.close() sends no close_notify: call unwrap() before close()",
        )
    ctx.transcript.record("s->c", "note", note="TLS close_notify", stream="closing")


# -- the echo ---------------------------------------------------------------------


@SUITE.check("echo", "byte-exact", title="echoes every byte unchanged, message after message", references=("RFC 862", BOOK))
def check_byte_exact(ctx: CheckContext) -> None:
    """Send three messages on one TLS connection, waiting for each echo: a
    line, all 256 byte values, and random bytes."""
    client = tls_connect(ctx, ctx.address, "echo")
    for message in (b"Hello, TLS!\n", bytes(range(256)) + b"\r\n\x00", ctx.random_bytes(1000)):
        expect_echo(ctx, client, message)


# Bytes allowed in flight: far below what loopback socket buffers hold, so a
# correct server never blocks, and a single-threaded client never deadlocks.
_WINDOW = 128 * 1024
_RECORD = 16 * 1024  # the largest TLS record: one sendall() of this is one record


@SUITE.check(
    "echo",
    "large",
    title="echoes 1 MiB sent in full-size TLS records",
    references=("RFC 862", "RFC 8446 section 5.1 (records up to 2^14 bytes)", 'FOPNP ch. 7 "select/poll"'),
    timeout=60.0,
)
def check_large(ctx: CheckContext) -> None:
    """Send 1 MiB in 16 KiB writes (each a full TLS record), reading the echo
    as it comes: every byte must come back. A server that reads less than a
    record per wake-up of select()/poll() leaves decrypted bytes inside the
    TLS layer, where the socket no longer looks readable, and stalls."""
    payload = ctx.random_bytes(1024 * 1024)
    echo_windowed(ctx, tls_connect(ctx, ctx.address, "large"), payload, record=_RECORD, window=_WINDOW)


# -- mutual TLS -------------------------------------------------------------------


@SUITE.check(
    "mutual",
    "client-certificate-required",
    title="with {cafile} declared: serves a client certified by that CA, refuses one without a certificate or from another CA",
    references=("RFC 8446 sections 4.3.2 and 4.4.2.4", f"{BOOK} (B:3644, B:3980)", "RFC 5280 section 6.1"),
)
def check_client_certificate_required(ctx: CheckContext) -> None:
    """Declared by using {cafile} in the command. Three clients: one with a
    certificate from {cafile} must be served; one without a certificate and
    one whose certificate comes from a CA the server was not given must get
    no echo (a handshake failure or an alert)."""
    if not _mutual(ctx):
        ctx.skip("the target does not declare mutual TLS (its command does not use {cafile})")
    served, how = served_with_certificate(ctx, "suite", "with-certificate")
    ctx.expect(
        served,
        "the server refused a client whose certificate comes from {cafile}",
        expected="the handshake and the echo",
        got=how,
        hint="load_verify_locations({cafile}) and verify_mode = CERT_REQUIRED",
    )
    for client_cert, who in (("none", "a client without a certificate"), ("stranger", "a client whose certificate comes from another CA")):
        served, how = served_with_certificate(ctx, client_cert, f"client-cert-{client_cert}")
        ctx.expect(
            not served,
            f"the server echoed to {who}",
            expected="no application data: a certificate_required or unknown_ca alert, or a failed handshake",
            got=how,
            hint="verify_mode = ssl.CERT_REQUIRED (CERT_OPTIONAL lets clients without a certificate in)",
        )
    still_serves(ctx, "refusing clients without a proper certificate")
