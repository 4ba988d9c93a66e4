"""How a TLS server ended a conversation, as the captured packets show it.

The TLS library tells a client only what it could decode: a close_notify, an
EOF without one, a reset. The wire tells more: whether the server sent any
TLS record after its echo (its close_notify: an alert record, type 21, in
TLS 1.2; an encrypted record, type 23, in TLS 1.3, which encrypts alerts)
before its FIN, or a bare FIN or an RST. This module owns that reading of one
connection's packets; it must not open sockets, wait, or decide a verdict
(the close-notify check does).

The echo is found by its size: the server's echo of one request record is one
record of the same content type and length as the request's (the same cipher
protects both directions, and the plaintext is the same). That tells it apart
from the TLS 1.3 session tickets, which a server may send after the client's
first request, and from a close_notify.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pytest_netlab.packets import Packet, TLSRecord, tls_records

__all__ = ["ServerEnding", "server_ending"]


@dataclass(frozen=True)
class ServerEnding:
    """What the server sent after its echo, until its FIN or RST.

    Attributes:
        echo_found: whether the echo of the client's request was found on the
            wire; when not, the rest says nothing about the close.
        records_after_echo: TLS records the server sent after the echo.
        unreadable_after_echo: bytes sent after the echo that were not whole
            TLS records (cut by the capture, or not TLS at all).
        close: ``"FIN"``, ``"RST"``, or ``""`` when the server did neither.

    Example::

        ending = server_ending(ctx.packets(), client_port=port, server_port=ctx.address[1])
        if ending.bare_close:
            ctx.fail("no close_notify", got=ending.describe())
    """

    echo_found: bool
    records_after_echo: tuple[TLSRecord, ...] = ()
    unreadable_after_echo: int = 0
    close: str = ""

    @property
    def bare_close(self) -> bool:
        """True when the wire proves it: the echo, then nothing but a FIN or an RST."""
        return self.echo_found and not self.records_after_echo and not self.unreadable_after_echo and self.close != ""

    def describe(self) -> str:
        """The evidence in words, starting "on the wire: "."""
        if not self.echo_found:
            return f"on the wire: the echo was not found among the server's TLS records{self._then()}"
        if self.unreadable_after_echo and not self.records_after_echo:
            return f"on the wire: after the echo the server sent {self.unreadable_after_echo} bytes that are not whole TLS records{self._then()}"
        if not self.records_after_echo:
            if self.close == "FIN":
                return "on the wire: the server's FIN came with no TLS record after the echo"
            if self.close == "RST":
                return "on the wire: the server reset the connection (RST) with no TLS record after the echo"
            return "on the wire: the server sent no TLS record after the echo and did not close the connection"
        kinds = ", ".join(_record_name(record) for record in self.records_after_echo)
        return f"on the wire: after the echo the server sent {kinds}{self._then()}"

    def _then(self) -> str:
        return {"FIN": ", then its FIN", "RST": ", then an RST"}.get(self.close, ", and did not close the connection")


def _record_name(record: TLSRecord) -> str:
    if record.kind == "alert":
        return f"an alert record (type 21, {record.length} bytes)"
    if record.kind == "application_data":
        return f"an encrypted record (type 23, {record.length} bytes; TLS 1.3 encrypts its alerts)"
    return f"a {record.kind} record (type {record.content_type}, {record.length} bytes)"


def _data_segments(connection: Iterable[Packet], sender: int) -> list[Packet]:
    """The data-carrying segments ``sender`` sent, in capture order, retransmissions dropped."""
    seen: set[int] = set()
    segments = []
    for p in connection:
        if p.sport == sender and p.payload and p.seq not in seen:
            seen.add(p.seq)
            segments.append(p)
    return segments


def server_ending(captured: Sequence[Packet], *, client_port: int, server_port: int) -> ServerEnding:
    """Read how the server ended the connection from ``client_port``.

    Call it after the client sent its request, got the echo, and sent its
    close_notify (so the client's last two data segments are the request and
    the close_notify: it waited for the echo in between).
    """
    connection = [p for p in captured if p.proto == "tcp" and {p.sport, p.dport} == {client_port, server_port}]
    client_data = _data_segments(connection, client_port)
    request_records = tls_records(client_data[-2].payload) if len(client_data) >= 2 else None
    if not request_records:
        return ServerEnding(echo_found=False, close=_close_after(connection, server_port, None))
    request = request_records[-1]
    request_at = client_data[-2].timestamp
    after_request = [p for p in _data_segments(connection, server_port) if p.timestamp >= request_at]
    after_echo: list[TLSRecord] = []
    unreadable = 0
    echo_segment: Packet | None = None
    for segment in after_request:
        records = tls_records(segment.payload)
        if records is None:
            if echo_segment is not None:
                unreadable += segment.length
            continue
        for record in records:
            if echo_segment is not None:
                after_echo.append(record)
            elif (record.content_type, record.length) == (request.content_type, request.length):
                echo_segment = segment
    if echo_segment is None:
        return ServerEnding(echo_found=False, close=_close_after(connection, server_port, None))
    return ServerEnding(True, tuple(after_echo), unreadable, _close_after(connection, server_port, echo_segment))


def _close_after(connection: Sequence[Packet], server_port: int, echo: Packet | None) -> str:
    """``"FIN"`` or ``"RST"``: the first the server sent (after ``echo``, when given); else ``""``."""
    start = connection.index(echo) if echo is not None else 0
    for p in connection[start:]:
        if p.sport != server_port:
            continue
        if "RST" in p.flags:
            return "RST"
        if "FIN" in p.flags:
            return "FIN"
    return ""
