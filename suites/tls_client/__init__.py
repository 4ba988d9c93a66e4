"""tls-client: a TLS client that verifies the server, the client side of FOPNP ch. 6.

The target is a command run once per check. It connects to ``{host}:{port}``,
verifies the server's certificate against the CA in ``{cafile}`` and the name
``{server_hostname}``, sends one line, prints the reply and exits 0. On any
verification failure it exits non-zero having sent no application data.

Each check plays the server with one certificate of the zoo (or one obsolete
TLS version) and judges what the client did with it. The server answers a
line with a line, and an HTTP request (``curl``) with an HTTP/1.0 response;
both carry a random token the client must print. After the reply the server
sends close_notify and closes; a client's close_notify ends the
conversation, and the server never waits for a raw TCP half-close.
"""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass
from typing import Callable

from pytest_netlab.certs import CertZoo, Verdict, legacy_server_context, legacy_tls_unavailable_reason, server_context, write_tls_files
from pytest_netlab.client_target import ClientRun
from pytest_netlab.context import CheckContext
from pytest_netlab.registry import Role, Severity, Suite, register_suite

from ._server import CertificateServer, ServedConnection
from ._verdicts import Scenario, judge_acceptance, judge_rejection

SUITE = register_suite(
    Suite(
        "tls-client",
        Role.CLIENT,
        title="TLS client that verifies the server (FOPNP ch. 6)",
        placeholders=("host", "port", "cafile", "server_hostname"),
        description=(
            "Connects to {host}:{port}, verifies the certificate against {cafile} and {server_hostname}, sends one "
            "line, prints the reply, exits 0; on a verification failure exits non-zero having sent nothing."
        ),
    )
)

BOOK = "FOPNP ch. 6"
_HINT_VERIFY = "use ssl.create_default_context(cafile={cafile}); never CERT_NONE or ssl._create_unverified_context()"
_HINT_HOSTNAME = "pass server_hostname={server_hostname} to wrap_socket() and keep check_hostname = True"
_HINT_WILDCARD = "a wildcard covers exactly one left-most label; let check_hostname match names (fnmatch's * crosses dots)"

_REF_TRUST = "RFC 5280 section 6.1; FOPNP ch. 6 (B:3644, B:3677-3689)"
_REF_DATES = "RFC 5280 section 4.1.2.5; FOPNP ch. 6 (B:3407)"
_REF_WILDCARD = "RFC 6125 section 6.4.3 (a wildcard matches one whole left-most label); FOPNP ch. 6 (B:3409)"
_REF_IP = "RFC 9110 section 4.3.4 (an IP-ID matches an iPAddress SAN only); RFC 2818 section 3.1; FOPNP ch. 6 (B:3651)"
_REF_CHAIN = "RFC 8446 section 4.4.2; RFC 5280 section 6.1; FOPNP ch. 6 (B:3548)"


@dataclass(frozen=True)
class _EntryCheck:
    """How the check for one zoo entry is presented (the verdict itself comes from the zoo)."""

    title: str
    hint: str
    reference: str
    severity: Severity = Severity.MUST


# One check per zoo entry. Severities are the zoo's: only the CN-only
# certificate is a SHOULD (Python's default context still accepts it).
_ENTRIES: dict[str, _EntryCheck] = {
    "good": _EntryCheck("accepts a valid certificate, sends its line and prints the reply",
                        "create_default_context(cafile={cafile}) and wrap_socket(sock, server_hostname={server_hostname})",
                        _REF_TRUST),
    "wrong-host": _EntryCheck("rejects a certificate issued for another host name", _HINT_HOSTNAME,
                              "RFC 9110 section 4.3.4; RFC 6125 section 6.4; FOPNP ch. 6 (B:3407, B:3651)"),
    "expired": _EntryCheck("rejects an expired certificate", _HINT_VERIFY, _REF_DATES),
    "not-yet-valid": _EntryCheck("rejects a certificate that is not valid yet", _HINT_VERIFY, _REF_DATES),
    "untrusted-ca": _EntryCheck("rejects a certificate from a CA it was not told to trust", _HINT_VERIFY, _REF_TRUST),
    "self-signed": _EntryCheck("rejects a self-signed certificate", _HINT_VERIFY, _REF_TRUST),
    "cn-only": _EntryCheck("rejects a certificate naming the host only in its CN (no subjectAltName)",
                           "set context.hostname_checks_common_name = False: RFC 9110 4.3.4 forbids matching the CN",
                           "RFC 9110 section 4.3.4 (a reference identity of type CN-ID MUST NOT be used by clients); "
                           "RFC 9525; FOPNP ch. 6 (B:3407)",
                           Severity.SHOULD),
    "wildcard": _EntryCheck("accepts *.example.test for a.example.test", _HINT_WILDCARD, _REF_WILDCARD),
    "wildcard-deep": _EntryCheck("rejects *.example.test for a.b.example.test (a wildcard covers one label)",
                                 _HINT_WILDCARD, _REF_WILDCARD),
    "wildcard-apex": _EntryCheck("rejects *.example.test for example.test itself", _HINT_WILDCARD, _REF_WILDCARD),
    "wrong-eku": _EntryCheck("rejects a certificate whose extended key usage excludes serverAuth",
                             "verify with ssl.create_default_context() (Purpose.SERVER_AUTH), which checks the key usage",
                             "RFC 5280 section 4.2.1.12"),
    "ip-san": _EntryCheck("accepts an IP address SAN when told to verify that IP address",
                          "pass the IP address itself as server_hostname: Python matches it against the certificate's IP SANs",
                          _REF_IP),
    "ip-not-in-san": _EntryCheck("rejects a certificate without that IP address SAN when told to verify an IP address",
                                 "an IP address matches only an IP SAN, never a DNS name", _REF_IP),
    "chain": _EntryCheck("accepts a leaf from an intermediate CA the server sends along",
                         "verify the chain up to {cafile}; the server sends the intermediate, so do not pin the issuer",
                         _REF_CHAIN),
    "chain-missing-intermediate": _EntryCheck("rejects a leaf whose intermediate the server does not send", _HINT_VERIFY,
                                              _REF_CHAIN),
}

#: The zoo entries a correct client accepts (the zoo's verdicts; a unit test keeps them in step).
ACCEPTED = frozenset({"good", "wildcard", "ip-san", "chain"})


@functools.lru_cache(maxsize=1)
def _zoo() -> CertZoo:
    """The process's certificate zoo (built once; validity is judged against its build time)."""
    return CertZoo()


def _serve_and_run(ctx: CheckContext, context: ssl.SSLContext, *, ca_pem: bytes, server_hostname: str) -> tuple[list[ServedConnection], ClientRun, bytes]:
    """Play the server with ``context`` while the client runs; every wait is bounded."""
    token = ctx.random_bytes(8).hex().encode()
    cafile = write_tls_files(ctx.workdir, ca_pem=ca_pem).cafile
    assert cafile is not None
    with CertificateServer(context, token=token, timeout=ctx.timeout(5.0), port=ctx.allocate_port(), transcript=ctx.transcript) as server:
        run = ctx.run_client(
            timeout=15.0, host=server.host, port=str(server.port), cafile=str(cafile), server_hostname=server_hostname
        )
    return server.connections, run, token


def _certificate_check(name: str) -> Callable[[CheckContext], None]:
    def check(ctx: CheckContext) -> None:
        entry = _zoo()[name]
        scenario = Scenario(
            name=f"the {name} certificate" if name != "good" else "a valid certificate",
            defect=entry.defect,
            server_hostname=entry.server_hostname,
            hint=_ENTRIES[name].hint,
        )
        connections, run, token = _serve_and_run(ctx, server_context(entry.identity), ca_pem=entry.ca_pem,
                                                 server_hostname=entry.server_hostname)
        if entry.verdict is Verdict.ACCEPT:
            violation = judge_acceptance(scenario, connections, run, token)
        else:
            violation = judge_rejection(scenario, connections, run)
        if violation is not None:
            raise violation

    return check


def _register_certificate_checks() -> None:
    for name, entry in _ENTRIES.items():
        check = _certificate_check(name)
        check.__doc__ = (
            f"Play the server with the zoo's {name!r} certificate and tell the client to verify the name the zoo "
            "gives for it; a correct client "
            + ("accepts it: it sends its line, prints the reply and exits 0." if name in ACCEPTED
               else "rejects it: it sends no application data and exits non-zero.")
        )
        SUITE.check("certificate", name, title=entry.title, severity=entry.severity, references=(entry.reference,))(check)


_register_certificate_checks()


@SUITE.check(
    "protocol",
    "sni-sent",
    title="sends the name it verifies as SNI (server_name)",
    severity=Severity.SHOULD,
    references=("RFC 6066 section 3", "RFC 8446 section 9.2", "RFC 9325 section 3.6", f"{BOOK} (B:3651)"),
)
def check_sni_sent(ctx: CheckContext) -> None:
    """Tell the client to verify a random name under *.example.test; its
    ClientHello must carry that name in the server_name extension, so a
    server with several certificates can pick the right one."""
    name = f"sni-{ctx.random_bytes(3).hex()}.example.test"
    entry = _zoo()["wildcard"]
    connections, run, _ = _serve_and_run(ctx, server_context(entry.identity), ca_pem=entry.ca_pem, server_hostname=name)
    if not connections:
        ctx.fail("the client never connected", expected=f"a ClientHello with SNI {name!r}", got=run.describe())
    sni = connections[0].sni
    ctx.expect(
        sni is not None and sni.lower() == name,
        "the client sent no SNI" if sni is None else f"the client sent the SNI {sni!r}, not the name it was told to verify",
        expected=f"a ClientHello with SNI {name!r}",
        got=f"SNI {sni!r}\n{run.describe()}",
        hint="pass server_hostname={server_hostname} to wrap_socket(): it sets SNI and the name to verify",
    )


@SUITE.check(
    "protocol",
    "legacy-server-refused",
    title="refuses a server that speaks only TLS 1.0",
    references=("RFC 8996 section 5 (a {03,01} ServerHello MUST get a protocol_version alert)", "RFC 9325 section 3.1.1", f"{BOOK} (B:3642)"),
)
def check_legacy_server_refused(ctx: CheckContext) -> None:
    """Play a server that offers only TLS 1.0 (with the good certificate); the
    client must refuse it: no application data, non-zero exit."""
    reason = legacy_tls_unavailable_reason(ssl.TLSVersion.TLSv1)
    if reason:
        ctx.skip(f"this machine cannot play a TLS 1.0 server: {reason}")
    entry = _zoo()["good"]
    connections, run, _ = _serve_and_run(ctx, legacy_server_context(entry.identity, ssl.TLSVersion.TLSv1),
                                         ca_pem=entry.ca_pem, server_hostname=entry.server_hostname)
    scenario = Scenario(
        name="a server that speaks only TLS 1.0",
        defect="TLS 1.0 is obsolete (RFC 8996)",
        server_hostname=entry.server_hostname,
        hint="keep Python's default minimum_version (TLS 1.2); do not lower it or the security level",
    )
    violation = judge_rejection(scenario, connections, run)
    if violation is not None:
        raise violation
