"""The lossy UDP proxy: a userspace relay that applies the seeded fault model on loopback.

This module owns the proxy's public face: what a test configures, reads
(transcript, decisions, stats) and waits for, and the proxy's life (start,
close). It must not decide anything itself: the faults come from
:func:`pytest_netlab.udp_faults.route`, carried out by
:mod:`pytest_netlab._udp_decisions`; the sockets and threads are run by
:mod:`pytest_netlab._udp_relay` (set up by :mod:`pytest_netlab._udp_sockets`),
flows live in :mod:`pytest_netlab._udp_flows`, the log in
:mod:`pytest_netlab._udp_log`. It needs no root, unlike ``tc netem``.

Why a connected socket and a thread per flow and direction: one datagram in
flight is bound by wake-ups and per-datagram work, not bandwidth. A thread
blocked in ``recv`` wakes straight into its datagram (a ``poll`` loop made
0.58-0.67x socat's round trips). As socat's ``fork`` mode does, each flow
has an upstream socket connected to the server and a client-facing socket
bound to the proxy's address and connected to the client, which Linux
prefers to the listener for that client's datagrams: no flow lookup and no
address per datagram. With the faultless directions only appending a tuple
to the log, that took the proxy from 0.83x socat's round trips to about 1.0x
(``bench/bench_udp_proxy.py``, 12 runs on two cores loaded 2-4.5 by other
work: median 0.99x in its own process, 1.05x in the test's; single runs
0.83-1.12x). The barest two-thread Python relay on one shared socket makes
0.91-0.93x. ``recv`` has no timeout: ``close()`` ends it with
``shutdown(SHUT_RD)`` and joins each thread within a bound (a
``SO_RCVTIMEO`` cost 5-10 %, a timer armed on every wait). Sends never block
(``MSG_DONTWAIT``): a full buffer is a logged loss, as on a real network.

Order and logging: the main socket gets each flow's first datagram (and any
that beat the flow socket's ``connect``); the flow's own thread starts only
once the main socket is empty, so each client's datagrams keep their order.
A faultless direction forwards first and logs lazily with the receive time:
a test that has just received a datagram waits for it to be counted with
:meth:`LossyUDPProxy.wait_for`; the transcript brings the lazy events in at
their place in time whenever it is read. Datagrams of the fault model are
logged before anything is sent, under the proxy's lock.
"""

from __future__ import annotations

import random
import socket
from dataclasses import replace
from typing import Callable

from pytest_netlab._udp_decisions import Responder
from pytest_netlab._udp_flows import Address, DirectionStats, ProxyStats
from pytest_netlab._udp_log import ProxyLog
from pytest_netlab._udp_relay import Relay
from pytest_netlab.errors import HarnessError
from pytest_netlab.transcript import CLIENT_TO_SERVER, SERVER_TO_CLIENT, Transcript
from pytest_netlab.udp_faults import Decision, Faults, FaultState, Script

__all__ = ["Address", "DirectionStats", "LossyUDPProxy", "ProxyStats", "Responder"]

#: What :meth:`LossyUDPProxy.send_to_client` logs as its decision.
_SENT_BY_TEST = Decision(reason="sent by the test")


class LossyUDPProxy:
    """A UDP relay between clients and a server that loses, duplicates, delays and corrupts.

    Clients send to :attr:`address`. Each client address gets its own
    upstream socket, so the server sees distinct clients and replies map
    back; replies reach the client from :attr:`address`, except when a
    scripted decision sends them from :attr:`other_address`. Instead of an
    ``upstream`` server, a ``responder`` callable can play the server in the
    proxy's thread (it must return quickly). Every datagram is recorded in
    :attr:`transcript` with its receive time, its decision as the note and
    the client (``"127.0.0.1:40312"``) as the stream; :attr:`decisions` and
    :attr:`stats` summarise (use :meth:`wait_for` to wait until they show
    what a client sent). A scripted rule sees both directions: test
    ``datagram.direction``.

    Args:
        upstream: the server's ``(host, port)``; or None with ``responder``.
        responder: ``(request, client_address) -> reply | None``.
        seed: seeds one ``random.Random`` per direction.
        client_to_server: faults for requests.
        server_to_client: faults for replies.
        script: scripted decisions, overriding the random ones.
        host: the loopback address to listen on; default: the upstream's host, or 127.0.0.1.
        port: the port to listen on; default 0, any free port.
        transcript: record into this transcript instead of a new one.
        max_clients: distinct client addresses served (with an upstream,
            each has two sockets and two threads); datagrams from more are dropped.

    Example::

        proxy = LossyUDPProxy(upstream=("127.0.0.1", server_port), seed=1234,
                              client_to_server=Faults(loss=0.3), script=Script.drop_first(3))
        with proxy:
            run_client(*proxy.address)
            assert proxy.wait_for(lambda stats: stats.server_to_client.delivered >= 1)
        print(proxy.transcript.excerpt(), proxy.stats.client_to_server.dropped)

        # No server at all: the test plays it, through the same fault model.
        def length_server(request: bytes, client: tuple[str, int]) -> bytes:
            return b"Your data was %d bytes long" % len(request)

        with LossyUDPProxy(responder=length_server, script=Script.spoof_reply(0)) as proxy:
            ...
    """

    def __init__(
        self,
        upstream: Address | None = None,
        *,
        responder: Responder | None = None,
        seed: int = 0,
        client_to_server: Faults = Faults(),
        server_to_client: Faults = Faults(),
        script: Script | None = None,
        host: str | None = None,
        port: int = 0,
        transcript: Transcript | None = None,
        max_clients: int = 256,
    ) -> None:
        if (upstream is None) == (responder is None):
            raise ValueError("LossyUDPProxy needs exactly one of upstream=(host, port) or responder=callable")
        if max_clients < 1:
            raise ValueError(f"need max_clients >= 1, got {max_clients!r}")
        if not 0 <= port <= 65535:
            raise ValueError(f"need a port in 0..65535 (0: any free port), got {port!r}")
        host = host or (upstream[0] if upstream else "127.0.0.1")
        states = {
            CLIENT_TO_SERVER: FaultState(client_to_server, script),
            SERVER_TO_CLIENT: FaultState(server_to_client, script),
        }
        self.transcript = transcript if transcript is not None else Transcript()
        self._log = ProxyLog(self.transcript)
        self._relay = Relay(
            family=socket.AF_INET6 if ":" in host else socket.AF_INET,
            host=host,
            port=port,
            upstream=upstream,
            responder=responder,
            states=states,
            # One generator per direction: the fate of requests does not depend on how replies interleave.
            rngs={direction: random.Random(f"{seed}/{direction}") for direction in states},
            log=self._log,
            max_clients=max_clients,
        )
        self._where = f"{host} port {port}"
        self._started = False
        self._closed = False

    # -- public surface -----------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """Where clients must send: ``(host, port)``."""
        return _known(self._relay.address)

    @property
    def other_address(self) -> tuple[str, int]:
        """The spare port that "from the other port" decisions send from."""
        return _known(self._relay.other_address)

    @property
    def stats(self) -> ProxyStats:
        """A consistent snapshot of the counters of both directions."""
        with self._relay.lock:
            return self._log.snapshot()

    @property
    def decisions(self) -> list[tuple[float, str, Decision]]:
        """Every decision so far as ``(t, direction, decision)`` in time order, ``t`` as in the transcript."""
        with self._relay.lock:
            return self._log.decided()

    def wait_for(self, predicate: Callable[[ProxyStats], bool], timeout: float = 5.0) -> bool:
        """Block until ``predicate(stats)`` holds (True) or ``timeout`` seconds pass (False)."""
        relay = self._relay
        with relay.changed:
            relay.waiters += 1
            try:
                return relay.changed.wait_for(lambda: predicate(self.stats), timeout)
            finally:
                relay.waiters -= 1

    def send_to_client(self, client: Address, payload: bytes, *, other_port: bool = False) -> None:
        """Send ``payload`` to ``client`` now, past the fault model, logged as a reply.

        For a test that plays the server and answers on its own schedule: a
        late reply to an earlier request, a reply to a client address that
        is no longer the one asking. It goes from :attr:`address` (or
        :attr:`other_address`), like a reply; a failed send is logged.

        Example::

            first_client = []
            def late(request, client):
                first_client.append(client)
                if len(first_client) == 2:   # the client retransmitted: answer the first copy
                    proxy.send_to_client(first_client[0], b"reply")
                return None
        """
        _known(self._relay.address)
        self._relay.send_to_client(client, payload, replace(_SENT_BY_TEST, other_port=other_port))

    def start(self) -> LossyUDPProxy:
        """Bind the sockets on loopback and start relaying."""
        if self._started or self._closed:
            raise RuntimeError("a LossyUDPProxy can be started once")
        self._started = True
        try:
            self._relay.start()
        except OSError as exc:
            raise HarnessError(f"the lossy UDP proxy could not bind on {self._where}: {exc}") from exc
        return self

    def close(self) -> None:
        """Stop the threads, discard datagrams still in flight, close every socket.

        Re-raises the first exception the responder (or the relay itself) raised.
        """
        if self._closed:
            return
        self._closed = True
        failure = self._relay.close()
        if failure is not None:
            raise failure

    def __enter__(self) -> LossyUDPProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _known(address: tuple[str, int] | None) -> tuple[str, int]:
    if address is None:
        raise RuntimeError("the proxy has no address until start() (or `with proxy:`)")
    return address
