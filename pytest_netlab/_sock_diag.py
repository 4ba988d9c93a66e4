"""Listening TCP sockets from the kernel's sock_diag netlink interface (what ``ss -lt`` reads).

``/proc/net/tcp`` makes the kernel walk its whole connection hash table and
format every socket as text: several milliseconds per read even on an idle
machine, far too slow for a ready probe that polls every 2 ms. A sock_diag
dump asked for the LISTEN state walks only the listening sockets and answers
in binary, in tens of microseconds. This module owns that one question; it
must not open network connections, and it says None (not an empty answer)
when the interface is unavailable, so that callers fall back.
"""

from __future__ import annotations

import socket
import struct

__all__ = ["listening_ports"]

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_TCP_LISTEN = 10

# struct nlmsghdr, then struct inet_diag_req_v2 (family, protocol, ext, pad, states, inet_diag_sockid).
_HEADER = struct.Struct("=IHHII")
_REQUEST = struct.Struct("=BBBBI2s2s16s16sI8s")
# struct inet_diag_msg: family, state, timer, retrans, then inet_diag_sockid: sport and dport are big-endian.
_MESSAGE = struct.Struct("=BBBB")
_PORTS = struct.Struct("!HH")
_SRC_OFFSET = 8  # the source address inside inet_diag_msg


def listening_ports(family: int) -> list[tuple[bytes, int]] | None:
    """``(raw local address, port)`` of every listening TCP socket of ``family``, or None when sock_diag is unavailable.

    The address is 4 bytes (IPv4) or 16 (IPv6), as the kernel stores it.
    """
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG)
    except (OSError, AttributeError):
        return None
    with sock:
        sock.settimeout(1.0)  # the kernel answers at once; bounded all the same
        request = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, 1 << _TCP_LISTEN, b"", b"", b"", b"", 0, b"")
        header = _HEADER.pack(_HEADER.size + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0)
        try:
            sock.sendto(header + request, (0, 0))
            return _read_dump(sock, 4 if family == socket.AF_INET else 16)
        except OSError:
            return None


def _read_dump(sock: socket.socket, address_size: int) -> list[tuple[bytes, int]] | None:
    found: list[tuple[bytes, int]] = []
    for _ in range(10_000):  # bounded: a dump ends with NLMSG_DONE
        data = sock.recv(65536)
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, kind, _, _, _ = _HEADER.unpack_from(data, offset)
            if length < _HEADER.size:
                return None
            if kind == _NLMSG_DONE:
                return found
            if kind == _NLMSG_ERROR:
                return None
            body = offset + _HEADER.size
            _, state, _, _ = _MESSAGE.unpack_from(data, body)
            sport, _ = _PORTS.unpack_from(data, body + 4)
            source = data[body + _SRC_OFFSET : body + _SRC_OFFSET + address_size]
            if state == _TCP_LISTEN:
                found.append((source, sport))
            offset += (length + 3) & ~3
    return None
