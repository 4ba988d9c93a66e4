"""A scripted loopback HTTP server that plays the other side of an HTTP client check.

:class:`ScriptedHttpServer` listens on 127.0.0.1 (port 0), reads every request
the client under test sends with the strict
:class:`~pytest_netlab.http_wire.RequestReader`, records it (raw bytes in the
check's transcript, parsed in :attr:`ScriptedHttpServer.seen`), and answers
with whatever the check's script returns for it: exact bytes, then keep the
connection, hold it open whatever the client asked, close it, or say nothing
at all. Every wait is bounded; threads are daemons stopped by an event and
joined by :meth:`ScriptedHttpServer.close`, which the check's cleanup calls.

This module must not judge the client; the checks do.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from typing import Callable

from pytest_netlab.context import CheckContext
from pytest_netlab.http_wire import HttpRequest, RequestReader, WireViolation
from pytest_netlab.transcript import CLIENT_TO_SERVER, SERVER_TO_CLIENT

__all__ = ["Reply", "Seen", "ScriptedHttpServer"]

_POLL = 0.05  # how often blocked threads look at the stop event
_JOIN = 2.0


@dataclass(frozen=True)
class Reply:
    """What to do with one request.

    Attributes:
        data: the bytes to send (a whole response, or several).
        then: ``"keep"`` keeps the connection unless the client asked to
            close; ``"hold"`` keeps it open whatever the client asked;
            ``"close"`` closes after sending; ``"silence"`` sends nothing and
            holds the connection open.
    """

    data: bytes = b""
    then: str = "keep"


@dataclass(frozen=True)
class Seen:
    """One request as the server received it, in arrival order."""

    request: HttpRequest
    connection: int
    port: int


class ScriptedHttpServer:
    """Answers the client under test by a script and records what it sent.

    Example::

        def script(request: HttpRequest, count: int) -> Reply:
            return Reply(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")

        server = ScriptedHttpServer(ctx, script)
        run = ctx.run_client(url=server.url("/start"))
        server.seen[0].request.target        # "/start"

    Args:
        ctx: the check (transcript, timeouts, cleanup).
        script: ``(request, count) -> Reply``; ``count`` is how many requests
            this server had received before this one.
        max_requests: requests answered at most; later ones are cut off
            (the connection closed), which bounds a client that loops.
        label: names this server's connections in the transcript.
        shared_log: another server's ``seen`` list to append to, so that
            requests to two servers read in one order.
    """

    def __init__(
        self,
        ctx: CheckContext,
        script: Callable[[HttpRequest, int], Reply],
        *,
        max_requests: int = 100,
        label: str = "server",
        shared_log: list[Seen] | None = None,
    ) -> None:
        self.ctx = ctx
        self.script = script
        self.max_requests = max_requests
        self.label = label
        self.seen: list[Seen] = shared_log if shared_log is not None else []
        self.violations: list[tuple[int, WireViolation]] = []
        self.connections = 0
        self.cut_off = False
        self._count = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(32)
        self._listener.settimeout(_POLL)
        self.port = self._listener.getsockname()[1]
        self._start(self._accept_loop, f"netlab-{label}-accept")
        ctx.add_cleanup(self.close)

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """The absolute URL of ``path`` on this server."""
        return f"http://{self.authority}{path}"

    @property
    def requests(self) -> list[HttpRequest]:
        """The requests this server received, in order."""
        return [s.request for s in self.seen if s.port == self.port]

    def _start(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number = self.connections
                self._sockets.append(sock)
            self._start(self._serve, f"netlab-{self.label}-conn{number}", sock, number)

    def _record(self, direction: str, kind: str, data: bytes = b"", note: str = "", number: int = 0) -> None:
        self.ctx.transcript.record(direction, kind, data, note=note, stream=f"{self.label}:{number}")

    def _serve(self, sock: socket.socket, number: int) -> None:
        """One connection: read requests, answer each by the script, until either side ends it."""
        reader = RequestReader()
        sock.settimeout(_POLL)
        self._record(CLIENT_TO_SERVER, "connect", note=f"client connected to {self.label} (port {self.port})", number=number)
        holding = False
        try:
            while not self._stop.is_set():
                try:
                    request = None if holding else reader.next_message()
                except WireViolation as violation:
                    self.violations.append((number, violation))
                    self._record(CLIENT_TO_SERVER, "note", note=f"malformed request: {violation.summary}", number=number)
                    return
                if request is None:
                    try:
                        data = sock.recv(65536)
                    except (TimeoutError, socket.timeout):
                        continue
                    if not data:
                        self._record(CLIENT_TO_SERVER, "eof", number=number)
                        if holding:
                            return
                        reader.feed_eof()
                        continue
                    self._record(CLIENT_TO_SERVER, "data", data, number=number)
                    if not holding:
                        reader.feed(data)
                    continue
                then = self._answer(sock, request, number)
                if then is None:
                    return
                holding = then in ("hold", "silence")
        except OSError as error:
            self._record(CLIENT_TO_SERVER, "note", note=f"connection ended: {error}", number=number)
        finally:
            sock.close()

    def _answer(self, sock: socket.socket, request: HttpRequest, number: int) -> str | None:
        """Answer one request; return what comes next, or None when the connection is to be closed now."""
        with self._lock:
            count = self._count
            self._count += 1
            if count >= self.max_requests:
                self.cut_off = True
            self.seen.append(Seen(request, number, self.port))
        if self.cut_off:
            self._record(SERVER_TO_CLIENT, "note", note=f"more than {self.max_requests} requests: cut off", number=number)
            return None
        reply = self.script(request, count)
        if reply.data:
            sock.sendall(reply.data)
            self._record(SERVER_TO_CLIENT, "data", reply.data, number=number)
        if reply.then == "close" or (reply.then == "keep" and "close" in request.connection_tokens()):
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self._record(SERVER_TO_CLIENT, "eof", number=number)
            return None
        return reply.then

    def close(self) -> None:
        """Stop accepting, end every connection, join the threads."""
        self._stop.set()
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(_JOIN)
