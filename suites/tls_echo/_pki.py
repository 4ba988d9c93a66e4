"""The tls-echo suite's certificates, and the files a target gets from them.

This module owns the one public-key infrastructure per process the suite
uses: a root CA, an intermediate that issues the target's server leaf (so
"full chain sent" means something), a client leaf from the root for mutual
TLS, and a client leaf from an unrelated CA that a mutual-TLS server must
refuse. :func:`prepare_target` writes the target's own files (leaf + chain,
its key, and the root as ``{cafile}``) into the instance's directory.

It must not hand a target any CA key (``write_tls_files`` refuses to) and
must not open sockets; the handshake side lives in ``_handshake.py``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from pytest_netlab.certs import DEFAULT_SERVER_NAMES, CertificateAuthority, Identity, write_tls_files
from pytest_netlab.placeholders import placeholders_in

__all__ = ["EchoPKI", "pki", "prepare_target", "declares_mutual_tls"]


@dataclass(frozen=True)
class EchoPKI:
    """The certificates of one test process.

    Attributes:
        root_pem: the root every suite client trusts, and the ``{cafile}``
            a mutual-TLS target trusts for client certificates.
        intermediate_pem: the CA that issued the server leaf; the target
            must send it after its leaf.
        server: the target's leaf (localhost, 127.0.0.1, ::1) with its chain.
        client: a client leaf from the root, for mutual TLS.
        stranger: a client leaf from a CA the target was not told to trust.
    """

    root_pem: bytes
    intermediate_pem: bytes
    server: Identity
    client: Identity
    stranger: Identity


@functools.lru_cache(maxsize=1)
def pki() -> EchoPKI:
    """The process's certificates, built once (EC keys: a few milliseconds)."""
    root = CertificateAuthority("pytest-netlab tls-echo CA")
    intermediate = root.create_intermediate("pytest-netlab tls-echo intermediate CA")
    stranger_ca = CertificateAuthority("pytest-netlab unrelated CA (not trusted)")
    return EchoPKI(
        root_pem=root.trust_pem,
        intermediate_pem=intermediate.cert_pem,
        server=intermediate.issue_server_cert(*DEFAULT_SERVER_NAMES),
        client=root.issue_client_cert("netlab-client"),
        stranger=stranger_ca.issue_client_cert("netlab-stranger"),
    )


def prepare_target(instance: Any) -> dict[str, str]:
    """``Suite.prepare``: write cert.pem, key.pem and ca.pem for one target instance.

    ``{cafile}`` is the root that signs the suite's client certificates; a
    target that uses it declares mutual TLS (see :func:`declares_mutual_tls`).
    """
    files = write_tls_files(instance.workdir, identity=pki().server, ca_pem=pki().root_pem)
    return files.placeholders()


def declares_mutual_tls(command: str | None) -> bool:
    """A target declares mutual TLS by using ``{cafile}`` in its command.

    An address target (no command) declares nothing: the suite connects
    without a client certificate.
    """
    return command is not None and "cafile" in placeholders_in(command)
