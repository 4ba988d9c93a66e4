"""Sockets of the lossy UDP proxy: a listener whose address each flow's own socket shares.

This module owns how the proxy's sockets are set up and stopped: the main
socket (the listener), bound so that more sockets can bind its address;
per client flow, a client-facing socket bound to that same address and
connected to the client, the way socat's ``fork`` mode serves a flow; and
waking a thread blocked in ``recv``. It must not log, decide or relay: the
proxy does that with what these functions return.

Linux delivers a datagram to the socket whose binding matches it best, and
a connected socket (which names the source too) beats the listener, so a
client's datagrams reach its own socket once that is connected. Between
``bind`` and ``connect`` the new socket is an unconnected twin of the
listener, and, being the newer, wins the tie: a datagram from another
client can land on it then. :func:`open_client_socket` hands those strays
back to the caller.
"""

from __future__ import annotations

import socket

from pytest_netlab._udp_flows import Address

__all__ = ["BUFFER_SIZE", "bind", "bind_listener", "open_client_socket", "open_upstream", "wake"]

# The largest UDP payload is 65,507 bytes over IPv4 and 65,527 over IPv6; a bigger
# buffer would show truncation rather than hide it.
BUFFER_SIZE = 65536
# Strays can only arrive in the microseconds between bind and connect: a few at most.
_MOST_STRAYS = 64


def bind(family: socket.AddressFamily, host: str, port: int = 0) -> socket.socket:
    """A UDP socket bound to ``(host, port)``, its own (port 0: any free port)."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def open_upstream(family: socket.AddressFamily, host: str, server: Address) -> socket.socket:
    """A flow's socket towards the server: its own port on ``host``, connected to ``server``."""
    sock = bind(family, host)
    try:
        sock.connect(server)
    except OSError:
        sock.close()
        raise
    return sock


def bind_listener(family: socket.AddressFamily, host: str, port: int) -> socket.socket:
    """A UDP socket bound to ``(host, port)`` (port 0: any free port) that flow sockets can share.

    ``SO_REUSEADDR`` is set only *after* the bind: Linux does not count a
    port held by a socket with ``SO_REUSEADDR`` as taken when the socket
    being bound has it too, so a port-0 bind could be given a port that
    another proxy (or socat) already listens on (measured: 149 of 3,000 such
    binds shared a port), and the two would steal each other's datagrams.
    """
    sock = bind(family, host, port)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    except OSError:
        sock.close()
        raise
    return sock


def open_client_socket(
    family: socket.AddressFamily, listener: Address, client: Address
) -> tuple[socket.socket, list[tuple[bytes, Address]]]:
    """A socket bound to the listener's address and connected to ``client``, and the strays it caught.

    The strays are ``(payload, source)`` of datagrams that reached the new
    socket before it was connected (from other clients) or just after (from
    ``client``); the caller handles them as if the listener had received them.
    """
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(listener)
        sock.connect(client)
        strays: list[tuple[bytes, Address]] = []
        for _ in range(_MOST_STRAYS):
            try:
                strays.append(sock.recvfrom(BUFFER_SIZE, socket.MSG_DONTWAIT))
            except BlockingIOError:
                break
            except ConnectionRefusedError:  # an ICMP error for an earlier reply from the listener: no datagram
                continue
    except OSError:
        sock.close()
        raise
    return sock, strays


def wake(sock: socket.socket) -> None:
    """Make a thread blocked in ``recv`` on ``sock`` return now, with no data (an unconnected socket says ENOTCONN, and wakes anyway)."""
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass
