"""The test certificate authority and the identities it issues.

This module owns :class:`CertificateAuthority`, a per-session ``trustme`` CA
(optionally with an intermediate) that issues server and client leaves, and
:class:`Identity`, the chain and key one TLS endpoint presents. Import both
from :mod:`pytest_netlab.certs`.

It must not write files or decide verdicts, and no public attribute or
method returns a CA's private key: the key leaves trustme only as an
in-memory argument to :func:`pytest_netlab._cert_builder.build_leaf`, for the
leaves trustme cannot express.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Sequence

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ._cert_builder import ORGANIZATION, SERVER_AUTH, build_leaf

__all__ = ["DEFAULT_SERVER_NAMES", "Identity", "CertificateAuthority"]

#: The names every suite server certificate covers (SPEC section 6, tls-echo).
DEFAULT_SERVER_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Identity:
    """What one TLS endpoint presents: a certificate chain and the leaf's own key.

    Attributes:
        cert_chain_pem: the leaf first, then any intermediates up to (not
            including) the root; exactly what a server should send.
        key_pem: the leaf's private key. Hidden from ``repr``.

    Example::

        server = CertificateAuthority().issue_server_cert()
        ctx = server_context(server)
    """

    cert_chain_pem: bytes
    key_pem: bytes = field(repr=False)

    def __repr__(self) -> str:
        chain = self.certificates()
        return f"Identity(leaf={chain[0].subject.rfc4514_string()!r}, chain_length={len(chain)})"

    def certificates(self) -> list[x509.Certificate]:
        """The parsed chain, leaf first."""
        return x509.load_pem_x509_certificates(self.cert_chain_pem)

    @property
    def leaf_pem(self) -> bytes:
        """The leaf certificate alone, as PEM."""
        return self.certificates()[0].public_bytes(serialization.Encoding.PEM)

    def leaf_only(self) -> Identity:
        """The same leaf and key without its intermediates (a misconfigured server)."""
        return Identity(cert_chain_pem=self.leaf_pem, key_pem=self.key_pem)


class CertificateAuthority:
    """A throwaway certificate authority for one test session, built on trustme.

    Leaves use EC P-256 keys: about 0.3 ms each against over 100 ms for
    RSA-2048, so a whole zoo costs tens of milliseconds.

    Args:
        name: the CA's organizational unit, shown in certificate subjects.
        parent: issue this CA from ``parent`` (an intermediate) instead of
            making a self-signed root. Prefer :meth:`create_intermediate`.

    Example::

        ca = CertificateAuthority()
        server = ca.issue_server_cert()              # localhost, 127.0.0.1, ::1
        client = ca.issue_client_cert("student-1")   # for mutual TLS
        ctx = client_context(ca.trust_pem)
    """

    def __init__(self, name: str = "pytest-netlab test CA", *, parent: CertificateAuthority | None = None) -> None:
        self.name = name
        self._parent = parent
        self._ca: trustme.CA
        # path_length=0 for an intermediate: it issues leaves only, like a
        # real issuing CA, and never trips the root's path length.
        self._ca = trustme.CA(
            parent_cert=parent._ca if parent else None,
            path_length=0 if parent else 9,
            organization_name=ORGANIZATION,
            organization_unit_name=name,
        )

    def __repr__(self) -> str:
        kind = "intermediate" if self._parent else "root"
        return f"CertificateAuthority({self.name!r}, {kind})"

    @property
    def cert_pem(self) -> bytes:
        """This CA's own certificate."""
        return self._ca.cert_pem.bytes()

    @property
    def trust_pem(self) -> bytes:
        """The root certificate a client must trust to accept this CA's leaves."""
        return self._parent.trust_pem if self._parent else self.cert_pem

    @property
    def is_intermediate(self) -> bool:
        """True when this CA was issued by another one."""
        return self._parent is not None

    def _chain_above_leaf(self) -> bytes:
        """The intermediates a server sends after a leaf of this CA (empty for a root)."""
        if self._parent is None:
            return b""
        return self.cert_pem + self._parent._chain_above_leaf()

    def create_intermediate(self, name: str = "pytest-netlab intermediate CA") -> CertificateAuthority:
        """An intermediate CA signed by this one; its leaves carry it in their chain."""
        return CertificateAuthority(name, parent=self)

    def issue_server_cert(
        self,
        *names: str,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> Identity:
        """A server leaf with a SAN for each name (default :data:`DEFAULT_SERVER_NAMES`).

        Names may be host names, wildcards (``*.example.test``) or IP
        addresses. The chain includes any intermediates.
        """
        leaf = self._ca.issue_cert(
            *(names or DEFAULT_SERVER_NAMES),
            organization_name=ORGANIZATION,
            not_before=not_before,
            not_after=not_after,
        )
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        return Identity(cert_chain_pem=chain, key_pem=leaf.private_key_pem.bytes())

    def issue_client_cert(self, name: str = "netlab-client") -> Identity:
        """A client leaf for mutual TLS, with CN and DNS SAN ``name``.

        trustme's extended key usage lists clientAuth (with serverAuth), so
        a server that checks the client purpose accepts it.
        """
        leaf = self._ca.issue_cert(name, common_name=name, organization_name=ORGANIZATION)
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        return Identity(cert_chain_pem=chain, key_pem=leaf.private_key_pem.bytes())

    def issue_custom_cert(
        self,
        *,
        unit: str,
        common_name: str | None = None,
        san: Sequence[str] = DEFAULT_SERVER_NAMES,
        extended_key_usages: Sequence[x509.ObjectIdentifier] = (SERVER_AUTH,),
    ) -> Identity:
        """A leaf trustme cannot express (no SAN, a chosen EKU), signed by this CA."""
        built = build_leaf(
            unit=unit,
            common_name=common_name,
            san=san,
            extended_key_usages=extended_key_usages,
            issuer_cert_pem=self.cert_pem,
            # The CA key only crosses into the builder's signing call, in memory.
            issuer_key_pem=self._ca.private_key_pem.bytes(),
        )
        return Identity(cert_chain_pem=built.cert_pem + self._chain_above_leaf(), key_pem=built.key_pem)

