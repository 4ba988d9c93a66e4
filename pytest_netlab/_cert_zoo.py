"""The certificate zoo: good and deliberately bad server certificates with verdicts.

This module owns :class:`CertZoo`, one certificate per defect a TLS client
must catch (wrong host, expired, not yet valid, untrusted CA, self-signed,
CN-only, wildcard depth, wrong EKU, IP SAN, missing intermediate), each with
the hostname to verify, the CA to trust, and the verdict a correct client
reaches. Import it from :mod:`pytest_netlab.certs`.

It must not do I/O or judge a target: it states expectations, which
``tests/test_certs.py`` proves against CPython's own client on every run.
"""

from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass, field
from typing import Iterator

from ._cert_authority import DEFAULT_SERVER_NAMES, CertificateAuthority, Identity
from ._cert_builder import CLIENT_AUTH, SERVER_AUTH, build_leaf
from .errors import HarnessError

__all__ = ["Verdict", "ZooEntry", "CertZoo", "ZOO_ENTRY_NAMES"]


class Verdict(str, enum.Enum):
    """What a verifying TLS client does with a certificate."""

    ACCEPT = "accept"
    REJECT = "reject"


@dataclass(frozen=True)
class ZooEntry:
    """One certificate of the zoo and what a correct client must make of it.

    Attributes:
        name: stable id (``expired``, ``wildcard-deep``...), used in check ids.
        defect: one line saying what is wrong with it (or that nothing is).
        identity: what the harness server presents, chain included as sent.
        server_hostname: the name the client is told to verify.
        ca_pem: the CA certificate the client is told to trust (always the
            suite's root; for ``untrusted-ca`` the leaf comes from elsewhere).
        signed_by: who signed the leaf, in words.
        verdict: what a correct, verifying client does (RFC 9110 4.3.4,
            RFC 5280, RFC 6125/9525).
        severity: ``MUST`` or ``SHOULD`` for a client that gets it wrong.
        python_default: what ``ssl.create_default_context(cafile=...)`` with
            ``server_hostname`` does (CPython 3.11, OpenSSL 3.0; the project's
            tests re-check it on every run).
        verify_code: the OpenSSL ``X509_V_ERR_*`` a rejecting client reports.
        expected_error: the phrase in OpenSSL's verify message for it.
        reference: where the rule comes from.
    """

    name: str
    defect: str
    identity: Identity
    server_hostname: str
    ca_pem: bytes = field(repr=False)
    signed_by: str
    verdict: Verdict
    python_default: Verdict
    severity: str = "MUST"
    verify_code: int | None = None
    expected_error: str = ""
    reference: str = ""


# X509_V_ERR_* codes (stable across OpenSSL 1.1 and 3.x), with the phrase
# OpenSSL puts in the verify message.
_NOT_YET_VALID = (9, "certificate is not yet valid")
_EXPIRED = (10, "certificate has expired")
_SELF_SIGNED = (18, "self-signed certificate")  # "self signed" before OpenSSL 3.0
_UNKNOWN_ISSUER = (20, "unable to get local issuer certificate")
_WRONG_PURPOSE = (26, "unsuitable certificate purpose")
_HOSTNAME_MISMATCH = (62, "Hostname mismatch")
_IP_MISMATCH = (64, "IP address mismatch")

_REF_TRUST = "FOPNP ch. 6 (B:3644, B:3682); RFC 5280 6.1"
_REF_NAME = "FOPNP ch. 6 (B:3407, B:3651); RFC 9110 4.3.4; RFC 6125 6.4.1"
_REF_WILDCARD = "FOPNP ch. 6 (B:3409); RFC 6125 6.4.3 (wildcard matches one whole left-most label)"
_REF_DATES = "FOPNP ch. 6 (B:3407); RFC 5280 4.1.2.5"
_REF_IP = "FOPNP ch. 6 (B:3651); RFC 9110 4.3.4 (an IP reference identity matches an iPAddress SAN)"
_REF_CHAIN = "FOPNP ch. 6 (B:3548); RFC 8446 4.4.2"

#: Every zoo entry, in the order :class:`CertZoo` builds them.
ZOO_ENTRY_NAMES: tuple[str, ...] = (
    "good", "wrong-host", "expired", "not-yet-valid", "untrusted-ca", "self-signed",
    "cn-only", "wildcard", "wildcard-deep", "wildcard-apex", "wrong-eku",
    "ip-san", "ip-not-in-san", "chain", "chain-missing-intermediate",
)


class CertZoo:
    """Good and bad server certificates, each with the verdict a correct client reaches.

    Built eagerly (tens of milliseconds with EC keys); keep one per session.

    Args:
        ca: the suite CA whose root clients trust; a new one when omitted.
        now: the moment validity is judged against (expired and
            not-yet-valid leaves are a month off either side of it).

    Example::

        zoo = CertZoo(ca)
        entry = zoo["expired"]
        ctx = server_context(entry.identity)   # the harness plays the server
        # run the client with cafile=entry.ca_pem, server_hostname=entry.server_hostname;
        # it must exit non-zero because entry.verdict is Verdict.REJECT
    """

    def __init__(self, ca: CertificateAuthority | None = None, *, now: datetime.datetime | None = None) -> None:
        self.ca = ca if ca is not None else CertificateAuthority()
        self.unrelated_ca = CertificateAuthority("pytest-netlab unrelated CA (not trusted)")
        self.intermediate = self.ca.create_intermediate()
        moment = now if now is not None else datetime.datetime.now(datetime.timezone.utc)
        self._entries = {entry.name: entry for entry in self._build(moment)}
        if tuple(self._entries) != ZOO_ENTRY_NAMES:
            raise HarnessError(f"zoo built {tuple(self._entries)}, ZOO_ENTRY_NAMES says {ZOO_ENTRY_NAMES}")

    def __getitem__(self, name: str) -> ZooEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"no zoo entry {name!r}; known: {', '.join(ZOO_ENTRY_NAMES)}") from None

    def __iter__(self) -> Iterator[ZooEntry]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def _build(self, now: datetime.datetime) -> list[ZooEntry]:
        ca, trust = self.ca, self.ca.trust_pem
        month = datetime.timedelta(days=30)
        wildcard = ca.issue_server_cert("*.example.test")
        dns_only = ca.issue_server_cert("localhost")
        chained = self.intermediate.issue_server_cert()

        def entry(name: str, identity: Identity, host: str, verdict: Verdict, defect: str,
                  error: tuple[int, str] | None = None, *, signed_by: str = "suite CA",
                  reference: str = _REF_NAME, severity: str = "MUST",
                  python_default: Verdict | None = None) -> ZooEntry:
            code, phrase = error if error else (None, "")
            return ZooEntry(name=name, defect=defect, identity=identity, server_hostname=host,
                            ca_pem=trust, signed_by=signed_by, verdict=verdict, severity=severity,
                            python_default=python_default or verdict, verify_code=code,
                            expected_error=phrase, reference=reference)

        accept, reject = Verdict.ACCEPT, Verdict.REJECT
        return [
            entry("good", ca.issue_server_cert(), "localhost", accept,
                  "nothing: SAN localhost, 127.0.0.1, ::1 from the trusted CA", reference=_REF_TRUST),
            entry("wrong-host", ca.issue_server_cert("www.example.test"), "localhost", reject,
                  "valid only for www.example.test, client expects localhost", _HOSTNAME_MISMATCH),
            entry("expired", ca.issue_server_cert(not_before=now - 2 * month, not_after=now - month),
                  "localhost", reject, "notAfter is a month in the past", _EXPIRED, reference=_REF_DATES),
            entry("not-yet-valid", ca.issue_server_cert(not_before=now + month), "localhost", reject,
                  "notBefore is a month in the future", _NOT_YET_VALID, reference=_REF_DATES),
            entry("untrusted-ca", self.unrelated_ca.issue_server_cert(), "localhost", reject,
                  "signed by a CA the client was not told to trust", _UNKNOWN_ISSUER,
                  signed_by="unrelated CA", reference=_REF_TRUST),
            entry("self-signed", self._self_signed(), "localhost", reject,
                  "self-signed leaf (SAN localhost, 127.0.0.1, ::1), no CA at all", _SELF_SIGNED,
                  signed_by="itself", reference=_REF_TRUST),
            entry("cn-only", ca.issue_custom_cert(unit="cn-only", common_name="localhost", san=()),
                  "localhost", reject, "CN=localhost and no subjectAltName", _HOSTNAME_MISMATCH,
                  severity="SHOULD", python_default=accept,
                  reference="RFC 9110 4.3.4 (a client MUST NOT use a CN-ID); RFC 9525 drops CN-IDs; "
                  "Python's hostname_checks_common_name defaults to True and accepts it"),
            entry("wildcard", wildcard, "a.example.test", accept,
                  "nothing: *.example.test covers a.example.test", reference=_REF_WILDCARD),
            entry("wildcard-deep", wildcard, "a.b.example.test", reject,
                  "*.example.test must not cover two labels (a.b.example.test)", _HOSTNAME_MISMATCH,
                  reference=_REF_WILDCARD),
            entry("wildcard-apex", wildcard, "example.test", reject,
                  "*.example.test must not cover the bare domain example.test", _HOSTNAME_MISMATCH,
                  reference=_REF_WILDCARD),
            entry("wrong-eku", ca.issue_custom_cert(unit="wrong-eku", extended_key_usages=(CLIENT_AUTH,)),
                  "localhost", reject, "extended key usage is clientAuth only (no serverAuth)",
                  _WRONG_PURPOSE, reference="RFC 5280 4.2.1.12"),
            entry("ip-san", ca.issue_server_cert("127.0.0.1", "::1"), "127.0.0.1", accept,
                  "nothing: IP SANs 127.0.0.1 and ::1 only, client verifies 127.0.0.1",
                  reference=_REF_IP),
            entry("ip-not-in-san", dns_only, "127.0.0.1", reject,
                  "DNS SAN localhost only; an IP literal needs an IP SAN", _IP_MISMATCH,
                  reference=_REF_IP),
            entry("chain", chained, "localhost", accept,
                  "nothing: leaf from an intermediate, server sends leaf + intermediate",
                  signed_by="suite intermediate CA", reference=_REF_CHAIN),
            entry("chain-missing-intermediate", chained.leaf_only(), "localhost", reject,
                  "leaf from an intermediate the server does not send", _UNKNOWN_ISSUER,
                  signed_by="suite intermediate CA", reference=_REF_CHAIN),
        ]

    @staticmethod
    def _self_signed() -> Identity:
        built = build_leaf(unit="self-signed", common_name="localhost", san=DEFAULT_SERVER_NAMES,
                           extended_key_usages=(SERVER_AUTH,))
        return Identity(cert_chain_pem=built.cert_pem, key_pem=built.key_pem)

