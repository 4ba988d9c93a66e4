"""Who listens where: reading Linux's socket tables to explain what a target did.

When a target is not reachable where it was told to listen, the most useful
message names where it *does* listen ("listens on 0.0.0.0:5001, not
127.0.0.1:5000"). This module reads ``/proc/net/{tcp,tcp6,udp,udp6}`` and the
``/proc/PID/fd`` links of a process tree to answer that. Where ``/proc`` is
missing (not Linux) every function returns nothing and callers fall back to
what a socket can observe.

This module must not open network connections.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from ._process_tree import process_tree

__all__ = ["Listener", "listeners_on_port", "listeners_of", "process_tree"]

_TCP_LISTEN = "0A"
_UDP_UNCONNECTED = "07"


@dataclass(frozen=True)
class Listener:
    """A listening TCP socket or a bound UDP socket."""

    proto: str  # "tcp" or "udp"
    host: str
    port: int
    inode: int

    @property
    def wildcard(self) -> bool:
        """True for 0.0.0.0 and ::, which accept connections on every interface."""
        return self.host in ("0.0.0.0", "::")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.proto} {host}:{self.port}"


def _decode_address(text: str) -> tuple[str, int]:
    hex_host, hex_port = text.split(":")
    raw = bytes.fromhex(hex_host)
    if len(raw) == 4:
        host = str(ipaddress.IPv4Address(raw[::-1]))
    else:
        # /proc prints IPv6 as four host-order 32-bit words.
        words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
        address = ipaddress.IPv6Address(words)
        host = str(address.ipv4_mapped) if address.ipv4_mapped else str(address)
    return host, int(hex_port, 16)


def _table(proto: str) -> list[Listener]:
    found: list[Listener] = []
    for suffix in ("", "6"):
        try:
            lines = Path(f"/proc/net/{proto}{suffix}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            state = fields[3]
            if (proto == "tcp" and state != _TCP_LISTEN) or (proto == "udp" and state != _UDP_UNCONNECTED):
                continue
            host, port = _decode_address(fields[1])
            found.append(Listener(proto, host, port, int(fields[9])))
    return found


def listeners_on_port(port: int, proto: str = "tcp") -> list[Listener]:
    """Every socket listening (TCP) or bound (UDP) on ``port``, whoever owns it."""
    return [listener for listener in _table(proto) if listener.port == port]


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes


def listeners_of(pid: int, proto: str = "tcp") -> list[Listener]:
    """The sockets that ``pid`` or its descendants listen on (TCP) or are bound to (UDP)."""
    inodes: set[int] = set()
    for member in process_tree(pid):
        inodes |= _socket_inodes(member)
    return [listener for listener in _table(proto) if listener.inode in inodes]
