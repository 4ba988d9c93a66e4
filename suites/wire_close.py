"""How a TCP server ended a connection, as the wire shows it (SPEC 5, packet capture).

The socket API reports the first of FIN and RST that reaches a client: a
server that closes with unread data, or with SO_LINGER 0, may send its FIN
and then an RST, and ``recv()`` has already returned ``b''``. Only the
captured packets show the RST that follows. This module owns that one
judgement for every TCP suite; it must not open sockets or wait for
anything but the capture.
"""

from __future__ import annotations

from pytest_netlab.context import CheckContext
from pytest_netlab.packets import resets

__all__ = ["NO_CAPTURE", "evidence_note", "expect_no_reset_after_fin"]

NO_CAPTURE = " (no packet capture: judged from what the socket API reports)"


def evidence_note(ctx: CheckContext) -> str:
    """Appended to what a check got: empty when capture covers the check, else says the wire was not seen."""
    return "" if ctx.capturing else NO_CAPTURE


def expect_no_reset_after_fin(ctx: CheckContext, *client_ports: int, after: str) -> None:
    """Fail when the target reset a connection (from one of ``client_ports``) that the socket API saw end with a FIN.

    Call it once the client has seen EOF; without capture it does nothing
    (the check has judged from the socket API and said so).
    """
    captured = ctx.packets()
    if captured is None:
        return
    server_port = ctx.address[1]
    late_resets = [p for p in resets(captured) if p.sport == server_port and p.dport in client_ports]
    ctx.expect(
        not late_resets,
        f"the target sent its FIN {after}, then reset the connection (RST)",
        expected="FIN, and nothing after it but ACKs",
        got=f"RST at t={late_resets[0].t:.3f}" if late_resets else "",
        hint="an RST after FIN means the socket was closed with unread data or SO_LINGER 0: read until b'', then close()",
    )
