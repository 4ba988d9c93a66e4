"""Leaf certificates that trustme cannot express, built with ``cryptography``.

trustme always gives a leaf a subjectAltName and an extended key usage that
includes serverAuth, and always signs with a CA. The certificate zoo also
needs a leaf with *no* SAN (a CN-only certificate), a leaf whose EKU lacks
serverAuth, and a self-signed leaf. This module builds exactly those, one
certificate at a time, from PEM inputs.

It owns the X.509 construction only. It must not decide what a certificate
is for or what a client should make of it (``certs.py`` does), write files,
or keep any key after the call returns. Every certificate still carries the
v3 extensions modern verifiers insist on (basicConstraints, SKI, AKI), so a
certificate here is rejected only for the defect it was built to have, also
under Python 3.13's ``VERIFY_X509_STRICT``.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, field
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["BuiltCertificate", "build_leaf", "new_private_key", "SERVER_AUTH", "CLIENT_AUTH"]

SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH

# The same window trustme uses for its own certificates: valid for any
# plausible test-machine clock, and inside what OpenSSL can represent.
DEFAULT_NOT_BEFORE = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
DEFAULT_NOT_AFTER = datetime.datetime(3000, 1, 1, tzinfo=datetime.timezone.utc)

ORGANIZATION = "pytest-netlab"


@dataclass(frozen=True)
class BuiltCertificate:
    """A freshly built leaf: its certificate and its own private key, as PEM."""

    cert_pem: bytes
    # Keys never appear in reprs, logs or assertion messages.
    key_pem: bytes = field(repr=False)


def new_private_key() -> ec.EllipticCurvePrivateKey:
    """A new EC P-256 key: the same type trustme uses, and ~400x faster than RSA-2048."""
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _general_name(identity: str) -> x509.GeneralName:
    """``"127.0.0.1"`` / ``"::1"`` become IP SANs, anything else a DNS SAN."""
    try:
        return x509.IPAddress(ipaddress.ip_address(identity))
    except ValueError:
        return x509.DNSName(identity)


def _subject(unit: str, common_name: str | None) -> x509.Name:
    attributes = [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
    ]
    if common_name is not None:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def build_leaf(
    *,
    unit: str,
    common_name: str | None = None,
    san: Sequence[str] = (),
    extended_key_usages: Sequence[x509.ObjectIdentifier] = (SERVER_AUTH, CLIENT_AUTH),
    issuer_cert_pem: bytes | None = None,
    issuer_key_pem: bytes | None = None,
    not_before: datetime.datetime = DEFAULT_NOT_BEFORE,
    not_after: datetime.datetime = DEFAULT_NOT_AFTER,
) -> BuiltCertificate:
    """Build one end-entity certificate with a new key.

    Args:
        unit: the subject's organizational unit, to tell certificates apart.
        common_name: the subject CN, or None for none.
        san: DNS names and IP addresses for the subjectAltName; empty means
            no SAN extension at all (not an empty one, which is invalid DER).
        extended_key_usages: the EKU purposes; empty means no EKU extension.
        issuer_cert_pem: the signing CA's certificate, or None for a
            self-signed leaf.
        issuer_key_pem: the signing CA's private key (used here, never kept).
        not_before: start of validity.
        not_after: end of validity.

    Returns:
        The certificate and the new leaf's private key.

    Example::

        built = build_leaf(unit="cn-only", common_name="localhost",
                           issuer_cert_pem=ca_cert_pem, issuer_key_pem=ca_key_pem)
    """
    key = new_private_key()
    subject = _subject(unit, common_name)
    self_signed = issuer_cert_pem is None
    if issuer_cert_pem is None:
        issuer_name = subject
        signing_key: ec.EllipticCurvePrivateKey = key
        issuer_ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    else:
        if issuer_key_pem is None:
            raise ValueError("issuer_key_pem is required with issuer_cert_pem")
        issuer_cert = x509.load_pem_x509_certificate(issuer_cert_pem)
        loaded = serialization.load_pem_private_key(issuer_key_pem, password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise TypeError(f"expected an EC issuer key, got {type(loaded).__name__}")
        signing_key = loaded
        issuer_name = issuer_cert.subject
        issuer_ski = issuer_cert.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value

    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
            critical=False,
        )
    )
    if not self_signed:
        # A self-signed leaf gets no keyUsage on purpose: OpenSSL only treats
        # a certificate as self-issued when its keyUsage (if present) allows
        # keyCertSign, and without that it reports "unable to get local
        # issuer" instead of the "self-signed certificate" we want to provoke.
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if san:
        # RFC 5280 4.2.1.6: SAN is critical only when the subject is empty.
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(name) for name in san]),
            critical=False,
        )
    if extended_key_usages:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(list(extended_key_usages)), critical=False
        )
    certificate = builder.sign(private_key=signing_key, algorithm=hashes.SHA256())
    return BuiltCertificate(
        cert_pem=certificate.public_bytes(serialization.Encoding.PEM),
        key_pem=_key_pem(key),
    )
