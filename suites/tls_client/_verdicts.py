"""Verdicts of the tls-client suite: what a client did with a certificate, in words.

A check plays the server with one certificate and runs the client; this
module turns the server's record (:class:`ServedConnection`) and the
client's run (:class:`ClientRun`) into a violation, or None. A client must
reject a bad certificate by sending no application data and exiting
non-zero; it must accept a good one by sending its line, printing the
reply (which carries a random token) and exiting 0.

Pure functions: no sockets, no processes, no pytest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from pytest_netlab.client_target import ClientRun
from pytest_netlab.errors import ProtocolViolation
from pytest_netlab.transcript import format_bytes

from ._server import ServedConnection

__all__ = ["Scenario", "judge_rejection", "judge_acceptance", "application_data"]


@dataclass(frozen=True)
class Scenario:
    """What the suite's server presented, for the messages.

    Attributes:
        name: the certificate (zoo entry) or server setup.
        defect: what is wrong with it, or that nothing is.
        server_hostname: the name the client was told to verify.
        hint: the likely cause of a wrong verdict, in a student's words.
    """

    name: str
    defect: str
    server_hostname: str
    hint: str = ""


def application_data(connections: Sequence[ServedConnection]) -> bytes:
    """Everything clients sent after a completed handshake, over all connections."""
    return b"".join(c.received for c in connections if c.handshake_done)


def _server_side(connections: Sequence[ServedConnection]) -> str:
    if not connections:
        return "the client never connected"
    parts = []
    for index, c in enumerate(connections, 1):
        label = f"connection {index}: " if len(connections) > 1 else ""
        if not c.handshake_done:
            parts.append(f"{label}handshake failed at the server ({c.handshake_error or 'no reason given'})")
            continue
        sent = f"it sent {format_bytes(c.received)}" if c.received else "it sent no application data"
        parts.append(f"{label}handshake completed ({c.version}); {sent}" + (f"; {c.ending}" if c.ending else ""))
    return "; ".join(parts)


def _ended_badly(run: ClientRun) -> str | None:
    """Why the client's way of rejecting is not an orderly non-zero exit, or None."""
    if run.timed_out:
        return "the client did not exit by itself after the handshake failed"
    if run.status.returncode == 0:
        return "the client exited with status 0, reporting success"
    if run.status.returncode < 0:
        return f"the client was {run.status.describe()} instead of exiting with an error status"
    return None


def judge_rejection(scenario: Scenario, connections: Sequence[ServedConnection], run: ClientRun) -> ProtocolViolation | None:
    """A correct client refuses: no application data, a non-zero exit (not a hang, not a crash)."""
    expected = (
        f"reject the certificate (verifying {scenario.server_hostname}): abort the handshake, "
        "send no application data, exit with a non-zero status"
    )
    got = f"{_server_side(connections)}\n{run.describe()}"
    if not connections:
        # A client that cannot connect rejects everything and proves nothing.
        return ProtocolViolation(
            "the client never connected to the server, so it never judged the certificate",
            expected=expected,
            got=got,
            hint="connect to {host}:{port}",
        )
    data = application_data(connections)
    if data:
        return ProtocolViolation(
            f"the client accepted {scenario.name} ({scenario.defect}) and sent application data {format_bytes(data)}",
            expected=expected,
            got=got,
            hint=scenario.hint,
        )
    problem = _ended_badly(run)
    if problem is None:
        return None
    completed = any(c.handshake_done for c in connections)
    return ProtocolViolation(
        f"{problem} ({scenario.name}: {scenario.defect}); it sent no application data"
        + (", though it completed the handshake" if completed else ""),
        expected=expected,
        got=got,
        hint=scenario.hint if run.status.returncode == 0 else "report the verification error and exit with a non-zero status",
    )


def judge_acceptance(
    scenario: Scenario, connections: Sequence[ServedConnection], run: ClientRun, token: bytes
) -> ProtocolViolation | None:
    """A correct client accepts: handshake, a request, the reply printed, exit 0."""
    expected = (
        f"accept the certificate (verifying {scenario.server_hostname}), send one line, "
        f"print the reply (it contains {token.decode()}), exit 0"
    )
    got = f"{_server_side(connections)}\n{run.describe()}"
    if not connections:
        return ProtocolViolation("the client never connected to the server", expected=expected, got=got,
                                 hint="connect to {host}:{port}; verify {server_hostname}")
    if not any(c.handshake_done for c in connections):
        return ProtocolViolation(
            f"the client rejected a valid certificate ({scenario.name}: {scenario.defect})",
            expected=expected,
            got=got,
            hint=scenario.hint,
        )
    if not application_data(connections):
        return ProtocolViolation("the client completed the handshake but sent no request", expected=expected, got=got)
    if run.timed_out or run.status.returncode != 0:
        return ProtocolViolation(
            "the client did not exit with status 0 after a successful exchange",
            expected=expected,
            got=got,
            hint="after the reply, the server sends close_notify and closes: recv() returns b''; print and exit 0",
        )
    if token not in run.stdout:
        return ProtocolViolation(
            "the client did not print the server's reply",
            expected=f"stdout containing {token.decode()}",
            got=got,
            hint="print what the server sent, not a message of your own",
        )
    return None
