"""Certificates for the TLS suites, and the only files of them a target may see.

This is the public face of the certificate machinery: a per-session test
CA (:class:`CertificateAuthority`, on ``trustme``) with its server and client
leaves, the :class:`CertZoo` of deliberately defective certificates with the
verdict a correct client reaches for each, the ``ssl.SSLContext`` builders
the suites need, and :func:`write_tls_files`, which this module owns: it
writes a target's leaf, key and CA certificate into a directory the target
owns.

It must not import pytest (fixtures wrap it) and must never hand a target a
CA's private key: :func:`write_tls_files` refuses a CA certificate as an
identity, a key that is not the leaf's, and key material among certificates
(SPEC section 3, last bullet). trustme builds whatever it can express;
``cryptography`` is used directly only for a CN-only leaf without SAN, a leaf
whose EKU lacks serverAuth, and a self-signed leaf.

Example::

    ca = CertificateAuthority()
    files = write_tls_files(workdir, identity=ca.issue_server_cert(), ca_pem=ca.trust_pem)
    command = "{python} server.py {port} {certfile} {keyfile}".format(port=port, **files.placeholders())
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ._cert_authority import DEFAULT_SERVER_NAMES, CertificateAuthority, Identity
from ._cert_zoo import ZOO_ENTRY_NAMES, CertZoo, Verdict, ZooEntry
from ._tls_contexts import (
    LEGACY_CIPHERS,
    client_context,
    legacy_client_context,
    legacy_server_context,
    legacy_tls_unavailable_reason,
    server_context,
)
from .errors import HarnessError

__all__ = [
    "DEFAULT_SERVER_NAMES",
    "ZOO_ENTRY_NAMES",
    "Verdict",
    "Identity",
    "CertificateAuthority",
    "ZooEntry",
    "CertZoo",
    "TLSFiles",
    "write_tls_files",
    "LEGACY_CIPHERS",
    "server_context",
    "client_context",
    "legacy_client_context",
    "legacy_server_context",
    "legacy_tls_unavailable_reason",
]

_CERT_BLOCK_BEGIN = b"-----BEGIN CERTIFICATE-----"
_PRIVATE_KEY_MARKER = b"PRIVATE KEY-----"


@dataclass(frozen=True)
class TLSFiles:
    """Paths of the PEM files written for one target; None for those not written."""

    certfile: Path | None = None
    keyfile: Path | None = None
    cafile: Path | None = None

    def placeholders(self) -> dict[str, str]:
        """``{"certfile": ..., "keyfile": ..., "cafile": ...}`` for the files that exist."""
        names = {"certfile": self.certfile, "keyfile": self.keyfile, "cafile": self.cafile}
        return {name: str(path) for name, path in names.items() if path is not None}


def _check_safe_to_hand_out(identity: Identity | None, ca_pem: bytes | None) -> None:
    """Refuse anything that would give a target a CA's key (SPEC section 3, last bullet)."""
    for label, pem in (("certificate chain", identity.cert_chain_pem if identity else b""),
                       ("CA file", ca_pem or b"")):
        if _PRIVATE_KEY_MARKER in pem:
            raise HarnessError(f"refusing to write the {label}: it contains a private key")
        if pem and not pem.lstrip().startswith(_CERT_BLOCK_BEGIN):
            raise HarnessError(f"refusing to write the {label}: it is not PEM certificates")
    if identity is None:
        return
    leaf = identity.certificates()[0]
    try:
        is_ca = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if is_ca:
        raise HarnessError("refusing to give a target a CA certificate and its key; issue it a leaf")
    if identity.key_pem.count(b"-----BEGIN ") != 1:
        raise HarnessError("refusing to write the key file: it must hold exactly one PEM block, the leaf's key")
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    key = serialization.load_pem_private_key(identity.key_pem, password=None)
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise HarnessError("refusing to write a key that does not belong to the leaf certificate")


def _write_file(path: Path, data: bytes, mode: int) -> None:
    # O_NOFOLLOW: the directory belongs to a target, which could have planted
    # a symlink to make us overwrite something else. fchmod: an existing file
    # keeps its old mode through O_CREAT, so set the mode explicitly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(data)


def write_tls_files(directory: os.PathLike[str] | str, *, identity: Identity | None = None,
                    ca_pem: bytes | None = None) -> TLSFiles:
    """Write the PEM files a target may see into a directory it owns.

    ``cert.pem`` holds the leaf and its chain, ``key.pem`` the leaf's key
    (mode 0600), ``ca.pem`` the CA certificate to trust. A CA's private key
    is never written: a CA certificate as ``identity``, a key that does not
    match the leaf, or key material among certificates raise
    :class:`~pytest_netlab.errors.HarnessError`.

    Example::

        files = write_tls_files(workdir, identity=ca.issue_server_cert(), ca_pem=ca.trust_pem)
        command.format(**files.placeholders())
    """
    _check_safe_to_hand_out(identity, ca_pem)
    root = Path(directory)
    certfile = keyfile = cafile = None
    if identity is not None:
        certfile, keyfile = root / "cert.pem", root / "key.pem"
        _write_file(certfile, identity.cert_chain_pem, 0o644)
        _write_file(keyfile, identity.key_pem, 0o600)
    if ca_pem is not None:
        cafile = root / "ca.pem"
        _write_file(cafile, ca_pem, 0o644)
    return TLSFiles(certfile=certfile, keyfile=keyfile, cafile=cafile)
