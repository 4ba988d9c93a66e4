"""The TCP fault proxy: a toxiproxy-like relay between a client and the target, on loopback.

This module owns the public face of the proxy: the listening socket, the
thread that accepts clients, the faults handed to each new connection, the
statistics and ``close()``, which ends every connection and joins every
thread. It must not move bytes or decide faults itself: each connection is
relayed by :class:`pytest_netlab._tcp_relay.RelayedConnection`, following the
seeded model in :mod:`pytest_netlab._tcp_faults`.

Use it where a real network would split or delay data: a server that assumes
one ``recv()`` is one message fails behind ``TCPFaults(slice_size=1)``.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable

from pytest_netlab._tcp_faults import TCPFaults
from pytest_netlab._tcp_relay import Address, RelayedConnection
from pytest_netlab.errors import HarnessError
from pytest_netlab.transcript import CLIENT_TO_SERVER, SERVER_TO_CLIENT, Transcript

__all__ = ["TCPFaultProxy", "TCPFaults", "TCPProxyStats"]

# The accept loop wakes this often to notice close() even if shutting the listener down did not wake it.
_ACCEPT_POLL = 0.25
_JOIN_TIMEOUT = 5.0
# wait_for() re-checks byte counts this often; connection opens and closes wake it at once.
_WAIT_POLL = 0.01


@dataclass(frozen=True)
class TCPProxyStats:
    """A snapshot of the proxy's counters; ``stats["c->s"]`` gives the bytes of one direction.

    Attributes:
        connections: clients accepted so far.
        active: connections not yet closed.
        client_to_server: bytes delivered to the upstream server.
        server_to_client: bytes delivered to clients.
    """

    connections: int
    active: int
    client_to_server: int
    server_to_client: int

    def __getitem__(self, direction: str) -> int:
        return {CLIENT_TO_SERVER: self.client_to_server, SERVER_TO_CLIENT: self.server_to_client}[direction]


class TCPFaultProxy:
    """A TCP relay that delays, slices, throttles, resets, closes or stalls, and records it all.

    Clients connect to :attr:`address`; each connection is relayed to
    ``upstream`` with the faults set for each direction, drawn from a
    ``random.Random`` seeded per connection and direction, so the same seed
    gives the same decisions. Half-close passes through (a client's
    ``shutdown(SHUT_WR)`` becomes the proxy's ``shutdown(SHUT_WR)`` upstream,
    and the reply keeps flowing), and an RST from either side becomes an RST
    to the other. :attr:`transcript` records every connection (stream
    ``conn1``, ``conn2``...), its data both ways, EOFs, resets and every
    fault applied; pass ``record_data=False`` to leave payload bytes out of it
    in bulk transfers. With no fault set, bytes take a fast path as quick as
    socat.

    Args:
        upstream: the target's ``(host, port)``, IPv4 or IPv6.
        client_to_server: faults for bytes from the client to the target.
        server_to_client: faults for bytes from the target to the client.
        seed: seeds the jitter decisions.
        host: the loopback address to listen on; default: the upstream's host.
        transcript: record into this transcript instead of a new one.
        record_data: record payload bytes (EOFs, resets and faults are always recorded).
        connect_timeout: seconds to wait for the upstream to accept each connection.

    Example::

        with TCPFaultProxy(target.address, client_to_server=TCPFaults(slice_size=1, slice_pause=0.01),
                           server_to_client=TCPFaults(reset_after=1000), seed=1234) as proxy:
            sock = socket.create_connection(proxy.address, timeout=5)
            sock.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")   # reaches the target one byte at a time
            ...                                          # 1000 bytes of reply, then ConnectionResetError
        print(proxy.transcript.excerpt(), proxy.stats.connections)
    """

    def __init__(
        self,
        upstream: Address,
        *,
        client_to_server: TCPFaults = TCPFaults(),
        server_to_client: TCPFaults = TCPFaults(),
        seed: int = 0,
        host: str | None = None,
        transcript: Transcript | None = None,
        record_data: bool = True,
        connect_timeout: float = 2.0,
    ) -> None:
        self._upstream = upstream
        self._host = host or upstream[0]
        self._faults = {CLIENT_TO_SERVER: client_to_server, SERVER_TO_CLIENT: server_to_client}
        self._seed = seed
        self.transcript = transcript if transcript is not None else Transcript()
        self._record_data = record_data
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._open: set[RelayedConnection] = set()
        self._moved_by_closed = {CLIENT_TO_SERVER: 0, SERVER_TO_CLIENT: 0}
        # Every connection whose threads may still run; close() joins them. Pruned as clients arrive.
        self._connections: list[RelayedConnection] = []
        self._failures: list[BaseException] = []
        self._accepted = 0
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closing = False

    # -- public surface ---------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """Where clients connect: ``(host, port)``."""
        if self._listener is None:
            raise RuntimeError("the proxy has no address until start() (or `with proxy:`)")
        host, port = self._listener.getsockname()[:2]
        return host, port

    @property
    def stats(self) -> TCPProxyStats:
        """Connections and bytes delivered each way, so far."""
        with self._lock:
            moved = dict(self._moved_by_closed)
            for connection in self._open:
                for direction in moved:
                    moved[direction] += connection.moved[direction]
            return TCPProxyStats(self._accepted, len(self._open), moved[CLIENT_TO_SERVER], moved[SERVER_TO_CLIENT])

    def set_faults(self, *, client_to_server: TCPFaults | None = None, server_to_client: TCPFaults | None = None) -> None:
        """Change the faults of connections accepted from now on (open ones keep theirs).

        The proxy accepts in its own thread, a moment after the client's
        ``connect()`` returns: wait for ``stats.connections`` to count a client
        before changing faults meant to spare it.
        """
        with self._lock:
            if client_to_server is not None:
                self._faults[CLIENT_TO_SERVER] = client_to_server
            if server_to_client is not None:
                self._faults[SERVER_TO_CLIENT] = server_to_client

    def wait_for(self, predicate: Callable[[TCPProxyStats], bool], timeout: float = 5.0) -> bool:
        """Block until ``predicate(stats)`` holds (True) or ``timeout`` seconds pass (False).

        Example: ``proxy.wait_for(lambda stats: stats.active == 0)`` waits for
        every connection to be closed.
        """
        deadline = time.monotonic() + timeout
        while not predicate(self.stats):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._changed:
                self._changed.wait(min(remaining, _WAIT_POLL))
        return True

    def start(self) -> TCPFaultProxy:
        """Listen on an ephemeral loopback port and start accepting clients."""
        if self._listener is not None or self._closing:
            raise RuntimeError("a TCPFaultProxy can be started once")
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        try:
            self._listener = socket.create_server((self._host, 0), family=family, backlog=128)
        except OSError as exc:
            raise HarnessError(f"the TCP fault proxy could not listen on {self._host}: {exc}") from exc
        self._listener.settimeout(_ACCEPT_POLL)
        self._thread = threading.Thread(target=self._accept_clients, name=f"netlab-tcp-proxy accept {self.address}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting, end every connection (FIN to both sides) and join every thread.

        Raises:
            HarnessError: a relay thread failed or did not stop in time.
        """
        if self._closing:
            return
        with self._lock:
            self._closing = True
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() at once on Linux
            except OSError:
                pass  # the accept loop's own timeout notices _closing
        if self._thread is not None:
            self._thread.join(_JOIN_TIMEOUT)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.abort()
        deadline = time.monotonic() + _JOIN_TIMEOUT
        stuck = [c.label for c in connections if not c.join(max(0.0, deadline - time.monotonic()))]
        if stuck or (self._thread is not None and self._thread.is_alive()):
            raise HarnessError(f"the TCP fault proxy's threads did not stop in time (connections: {', '.join(stuck) or 'none'})")
        failures = self._failures + [c.failure for c in connections if c.failure is not None]
        if failures:
            raise HarnessError(f"the TCP fault proxy's relay failed: {failures[0]!r}") from failures[0]

    def __enter__(self) -> TCPFaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- accepting ----------------------------------------------------------------------

    def _accept_clients(self) -> None:
        assert self._listener is not None
        while not self._closing:
            try:
                client, client_address = self._listener.accept()
            except socket.timeout:
                continue
            except OSError as exc:
                if not self._closing:
                    self.transcript.record("", "note", note=f"the proxy stopped accepting: {exc}")
                return
            client.settimeout(None)  # relaying blocks (fast pump) or polls (careful pump) on its own terms
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._closing:
                    client.close()
                    return
                self._accepted += 1
                self._prune_connections()
                connection = RelayedConnection(
                    f"conn{self._accepted}",
                    client,
                    client_address,
                    self._upstream,
                    dict(self._faults),
                    self._seed,
                    self.transcript,
                    self._record_data,
                    self._connect_timeout,
                    self._on_connection_finished,
                )
                self._connections.append(connection)
                self._open.add(connection)
                self._changed.notify_all()
            connection.start()

    def _prune_connections(self) -> None:
        """Forget connections whose threads have all ended, keeping their failures (under the lock)."""
        still_running = []
        for connection in self._connections:
            if connection in self._open or not connection.join(0):
                still_running.append(connection)
            elif connection.failure is not None:
                self._failures.append(connection.failure)
        self._connections = still_running

    def _on_connection_finished(self, connection: RelayedConnection) -> None:
        with self._lock:
            self._open.discard(connection)
            for direction, count in connection.moved.items():
                self._moved_by_closed[direction] += count
            self._changed.notify_all()
