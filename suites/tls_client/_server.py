"""The server the tls-client suite plays: one certificate, every step bounded, all recorded.

:class:`CertificateServer` listens on a loopback port, presents whatever
``ssl.SSLContext`` a check gives it (a zoo certificate, an obsolete TLS
version), and for each connection records what a verdict needs: the SNI the
client sent, whether the handshake completed and how it failed, the
application data that arrived, the reply sent, and how the conversation
ended. It answers one request per connection: a line gets a line, and an
HTTP request line (``curl``) gets an HTTP/1.0 response, both carrying the
check's random token, so a client that prints a canned reply is caught.

It must not judge (``_verdicts.py`` does). Everything it starts ends in
:meth:`CertificateServer.close`: the accept loop polls a stop event, every
socket operation has a timeout, and the thread is a daemon joined on close.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

from pytest_netlab.transcript import CLIENT_TO_SERVER, SERVER_TO_CLIENT, Transcript

__all__ = ["ServedConnection", "CertificateServer", "is_http_request_line", "build_reply"]

_ACCEPT_POLL = 0.1  # how often the accept loop looks at the stop event
_MAX_REQUEST = 64 * 1024
_MAX_CONNECTIONS = 8  # a client that retries is recorded; a flood is not served forever
# Once a client has sent something, this much silence ends its request: a
# client that forgets the newline is still answered.
_QUIET_ENDS_REQUEST = 1.0

_HTTP_REQUEST_LINE = re.compile(rb"^[A-Z]+ \S+ HTTP/1\.[01]\r?\n")


def is_http_request_line(data: bytes) -> bool:
    """Whether ``data`` starts with an HTTP/1.x request line (``GET / HTTP/1.1``)."""
    return bool(_HTTP_REQUEST_LINE.match(data))


def build_reply(request: bytes, token: bytes) -> bytes:
    """The reply to one request: ``netlab <token>\\n``, inside an HTTP/1.0 response for HTTP clients."""
    body = b"netlab " + token + b"\n"
    if not is_http_request_line(request):
        return body
    head = (
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
    )
    return head + body


@dataclass
class ServedConnection:
    """What happened on one connection to the harness server.

    Attributes:
        sni: the server name the client sent (None: no SNI).
        handshake_done: the TLS handshake completed.
        handshake_error: why it did not, in OpenSSL's words.
        version: the negotiated TLS version.
        received: application data from the client (decrypted).
        replied: what the server sent back.
        ending: how the conversation ended (close_notify, EOF, silence...).
    """

    sni: str | None = None
    handshake_done: bool = False
    handshake_error: str = ""
    version: str = ""
    received: bytes = b""
    replied: bytes = b""
    ending: str = ""


def _tls_error_words(error: BaseException) -> str:
    if isinstance(error, ssl.SSLError):
        return str(error.reason or error)
    if isinstance(error, TimeoutError):
        return "the client sent nothing more (timeout)"
    if isinstance(error, ConnectionResetError):
        return "the client reset the connection"
    return f"{type(error).__name__}: {error}"


class CertificateServer:
    """A TLS server on loopback for one check, recording each connection.

    Example::

        context = server_context(zoo["expired"].identity)
        with CertificateServer(context, token=b"3f9a", timeout=5.0) as server:
            run = ctx.run_client(host="127.0.0.1", port=str(server.port), ...)
        server.connections   # [ServedConnection(handshake_done=False, ...)]

    Args:
        context: the server context; its ``sni_callback`` is replaced by
            one that records the client's server name.
        token: the random bytes every reply carries.
        timeout: the bound of each step (handshake, request, closing).
        host: where to listen.
        port: where to listen (0: any free port); a check passes
            ``ctx.allocate_port()`` so that the run's packet capture sees it.
        transcript: where each connection's events are recorded as they happen.
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        token: bytes,
        timeout: float,
        host: str = "127.0.0.1",
        port: int = 0,
        transcript: Transcript | None = None,
    ) -> None:
        self._transcript = transcript if transcript is not None else Transcript()
        self._context = context
        self._context.sni_callback = self._record_sni
        self._token = token
        self._timeout = timeout
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._connections: list[ServedConnection] = []
        self._current: ServedConnection | None = None
        self._stream = ""
        self._listener = socket.create_server((host, port))
        self._listener.settimeout(_ACCEPT_POLL)
        self.host = host
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve_forever, name="netlab-tls-client-server", daemon=True)
        self._thread.start()

    def __enter__(self) -> CertificateServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connections(self) -> list[ServedConnection]:
        """A snapshot of every connection so far."""
        with self._lock:
            return list(self._connections)

    def close(self) -> None:
        """Stop accepting, finish the connection in progress (bounded), join the thread."""
        self._stop.set()
        # Each step of a connection is bounded by the timeout; three steps at most.
        self._thread.join(3 * self._timeout + 1.0)
        self._listener.close()

    # -- the serving thread ---------------------------------------------------------

    def _record_sni(self, _sslobj: Any, server_name: str | None, _context: ssl.SSLContext) -> None:
        if self._current is not None:
            self._current.sni = server_name
            self._note(CLIENT_TO_SERVER, f"ClientHello with SNI {server_name!r}" if server_name else "ClientHello without SNI")

    def _note(self, direction: str, note: str) -> None:
        self._transcript.record(direction, "note", note=note, stream=self._stream)

    def _serve_forever(self) -> None:
        accepted = 0
        while not self._stop.is_set() and accepted < _MAX_CONNECTIONS:
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed
            accepted += 1
            record = ServedConnection()
            with self._lock:
                self._connections.append(record)
            self._stream = f"conn{accepted}"
            self._transcript.record(CLIENT_TO_SERVER, "connect", stream=self._stream)
            self._current = record
            try:
                self._serve(sock, record)
            finally:
                self._current = None

    def _serve(self, sock: socket.socket, record: ServedConnection) -> None:
        sock.settimeout(self._timeout)
        with sock:
            try:
                tls = self._context.wrap_socket(sock, server_side=True, suppress_ragged_eofs=False)
            except OSError as error:
                record.handshake_error = _tls_error_words(error)
                self._note("", f"TLS handshake failed: {record.handshake_error}")
                return
            with tls:
                record.handshake_done = True
                record.version = tls.version() or ""
                self._note("", f"TLS handshake done: {record.version}")
                request = self._read_request(tls, record)
                if not request or record.ending.startswith("close_notify"):
                    return  # nothing to answer, or the client already ended the conversation
                reply = build_reply(request, self._token)
                try:
                    tls.sendall(reply)
                    record.replied = reply
                    self._transcript.record(SERVER_TO_CLIENT, "data", reply, stream=self._stream)
                except OSError:
                    return  # the client went away first; what it did is already recorded
                _send_close_notify(tls)

    def _read_request(self, tls: ssl.SSLSocket, record: ServedConnection) -> bytes:
        """Read one request: a line, or an HTTP request head; bounded in size and time."""
        data = bytearray()
        deadline = time.monotonic() + self._timeout
        while len(data) < _MAX_REQUEST:
            if _request_complete(bytes(data)):
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                record.ending = "the client stopped sending before its request was complete"
                break
            tls.settimeout(min(remaining, _QUIET_ENDS_REQUEST) if data else remaining)
            try:
                chunk = tls.recv(4096)
            except TimeoutError:
                if data:
                    break  # a request without its newline: answer what came
                continue
            except OSError as error:
                record.ending = f"then a TLS error or reset: {_tls_error_words(error)}"
                self._note("", record.ending)
                break
            if not chunk:
                record.ending = "close_notify from the client"
                self._note(CLIENT_TO_SERVER, "TLS close_notify")
                break
            data += chunk
            record.received = bytes(data)
            self._transcript.record(CLIENT_TO_SERVER, "data", chunk, stream=self._stream)
        return bytes(data)


def _send_close_notify(tls: ssl.SSLSocket) -> None:
    """Send our close_notify without waiting for the client's: the reply is the end of the conversation.

    A blocking ``unwrap()`` would wait for the client's close_notify, and a
    client that waits for the TCP close instead would stall both sides.
    Non-blocking, OpenSSL sends ours and reports "want read" for theirs.
    """
    try:
        tls.setblocking(False)
        tls.unwrap()
    except OSError:
        pass  # SSLWantReadError: ours is sent, theirs is not awaited; or the client is gone


def _request_complete(data: bytes) -> bool:
    if is_http_request_line(data):
        return b"\r\n\r\n" in data or b"\n\n" in data
    return b"\n" in data
