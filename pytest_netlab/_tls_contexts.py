"""``ssl.SSLContext`` builders for the TLS suites, and the local legacy-TLS probe.

The harness plays both sides of TLS: a verifying client against a student
server (tls-echo), a server presenting a zoo certificate to a student client
(tls-client), and deliberately obsolete peers for the "TLS 1.0/1.1 refused"
checks. This module builds those contexts and answers, without touching the
network, whether the local OpenSSL can speak an obsolete version at all, so
a check can skip with that reason instead of blaming the target.

It must not build certificates (``certs.py`` does), open sockets, or leave
files behind: a certificate and key are loaded through a private temporary
directory that is gone when the builder returns. Contexts take anything with
``cert_chain_pem`` and ``key_pem`` (a :class:`pytest_netlab.certs.Identity`).
"""

from __future__ import annotations

import functools
import os
import ssl
import tempfile
import warnings
from typing import Protocol

from ._cert_builder import build_leaf

__all__ = [
    "LEGACY_CIPHERS",
    "server_context",
    "client_context",
    "legacy_client_context",
    "legacy_server_context",
    "legacy_tls_unavailable_reason",
]

#: OpenSSL 3 refuses TLS 1.0/1.1 at security level 1 and above (they need
#: SHA-1/MD5), so an obsolete peer has to lower it; the research digest
#: reproduced NO_CIPHERS_AVAILABLE without this.
LEGACY_CIPHERS = "DEFAULT:@SECLEVEL=0"

_LEGACY_VERSIONS = {
    ssl.TLSVersion.SSLv3: ("SSLv3", ssl.HAS_SSLv3),
    ssl.TLSVersion.TLSv1: ("TLSv1", ssl.HAS_TLSv1),
    ssl.TLSVersion.TLSv1_1: ("TLSv1.1", ssl.HAS_TLSv1_1),
}

# An in-memory handshake of TLS <= 1.3 takes a handful of flights; 50 rounds
# only bounds a bug, it is never reached.
_MAX_HANDSHAKE_ROUNDS = 50


class _HasCertAndKey(Protocol):
    @property
    def cert_chain_pem(self) -> bytes: ...
    @property
    def key_pem(self) -> bytes: ...


def _load_identity(context: ssl.SSLContext, cert_chain_pem: bytes, key_pem: bytes) -> None:
    # load_cert_chain only reads files (bpo-16487); keep them private and brief.
    with tempfile.TemporaryDirectory(prefix="netlab-tls-") as private_dir:
        path = os.path.join(private_dir, "identity.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key_pem + cert_chain_pem)
        context.load_cert_chain(path)


def _pin_versions(context: ssl.SSLContext, minimum: ssl.TLSVersion, maximum: ssl.TLSVersion) -> None:
    # Python 3.10+ warns that TLS 1.0/1.1 are deprecated; here they are the
    # point, and a user running with -W error must not see the harness fail.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = minimum
        context.maximum_version = maximum


def server_context(identity: _HasCertAndKey, *, client_ca_pem: bytes | None = None) -> ssl.SSLContext:
    """A modern server context presenting ``identity`` (chain included).

    Args:
        identity: the certificate chain and key to present.
        client_ca_pem: when given, require a client certificate issued by
            this CA (mutual TLS).

    Example::

        ctx = server_context(zoo["expired"].identity)
        tls = ctx.wrap_socket(conn, server_side=True)
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _load_identity(context, identity.cert_chain_pem, identity.key_pem)
    if client_ca_pem is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=client_ca_pem.decode("ascii"))
    return context


def client_context(ca_pem: bytes, *, identity: _HasCertAndKey | None = None) -> ssl.SSLContext:
    """A correct verifying client: Python's default context trusting only ``ca_pem``.

    Hostname checking is on; pass ``server_hostname`` to ``wrap_socket``.

    Args:
        ca_pem: the only CA certificate(s) to trust.
        identity: a client certificate to present for mutual TLS.
    """
    context = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    if identity is not None:
        _load_identity(context, identity.cert_chain_pem, identity.key_pem)
    return context


def legacy_client_context(
    minimum: ssl.TLSVersion = ssl.TLSVersion.TLSv1,
    maximum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_1,
) -> ssl.SSLContext:
    """A client offering only obsolete versions (default TLS 1.0 and 1.1).

    It does not verify the server: the probe asks one question, "does the
    server agree to an old version?", and a certificate problem must not
    muddy the answer. Check :func:`legacy_tls_unavailable_reason` first.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    _pin_versions(context, minimum, maximum)
    context.set_ciphers(LEGACY_CIPHERS)
    return context


def legacy_server_context(identity: _HasCertAndKey, version: ssl.TLSVersion = ssl.TLSVersion.TLSv1) -> ssl.SSLContext:
    """A server offering only ``version`` (default TLS 1.0), for "client refuses TLS 1.0"."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _pin_versions(context, version, version)
    context.set_ciphers(LEGACY_CIPHERS)
    _load_identity(context, identity.cert_chain_pem, identity.key_pem)
    return context


def _handshake_in_memory(server: ssl.SSLObject, client: ssl.SSLObject,
                         to_server: ssl.MemoryBIO, to_client: ssl.MemoryBIO,
                         from_server: ssl.MemoryBIO, from_client: ssl.MemoryBIO) -> None:
    """Pump handshake bytes between two SSLObjects until both finish (or one raises)."""
    pending = [client, server]
    for _ in range(_MAX_HANDSHAKE_ROUNDS):
        for endpoint in list(pending):
            try:
                endpoint.do_handshake()
                pending.remove(endpoint)
            except ssl.SSLWantReadError:
                pass
        to_server.write(from_client.read())
        to_client.write(from_server.read())
        if not pending:
            return
    raise ssl.SSLError(f"in-memory handshake unfinished after {_MAX_HANDSHAKE_ROUNDS} rounds")


@functools.lru_cache(maxsize=None)
def legacy_tls_unavailable_reason(
    version: ssl.TLSVersion = ssl.TLSVersion.TLSv1, ciphers: str = LEGACY_CIPHERS
) -> str | None:
    """Why the local OpenSSL cannot negotiate ``version`` with itself, or None if it can.

    The answer comes from a real handshake between two in-memory endpoints
    pinned to ``version`` (no sockets), so it reflects the build, the
    system OpenSSL configuration and the security level, not a guess.
    Cached per process.

    Example::

        reason = legacy_tls_unavailable_reason(ssl.TLSVersion.TLSv1)
        if reason:
            raise NotApplicable(f"cannot offer TLS 1.0 from this machine: {reason}")
    """
    if version not in _LEGACY_VERSIONS:
        raise ValueError(f"{version!r} is not an obsolete version; expected one of {list(_LEGACY_VERSIONS)}")
    label, compiled_in = _LEGACY_VERSIONS[version]
    if not compiled_in:
        return f"{ssl.OPENSSL_VERSION} was built without {label}"
    built = build_leaf(unit="legacy-probe", common_name="localhost", san=("localhost",))
    try:
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client_ctx.check_hostname = False
        client_ctx.verify_mode = ssl.CERT_NONE
        for context in (server_ctx, client_ctx):
            _pin_versions(context, version, version)
            context.set_ciphers(ciphers)
        _load_identity(server_ctx, built.cert_pem, built.key_pem)
        bios = [ssl.MemoryBIO() for _ in range(4)]
        to_server, from_server, to_client, from_client = bios
        server = server_ctx.wrap_bio(to_server, from_server, server_side=True)
        client = client_ctx.wrap_bio(to_client, from_client, server_side=False)
        _handshake_in_memory(server, client, to_server, to_client, from_server, from_client)
    except (ssl.SSLError, ValueError) as error:
        detail = getattr(error, "reason", None) or str(error)
        return f"{ssl.OPENSSL_VERSION} cannot negotiate {label} with ciphers {ciphers!r}: {detail}"
    negotiated = client.version()
    if negotiated != label:
        return f"{ssl.OPENSSL_VERSION} negotiated {negotiated} when pinned to {label}"
    return None
