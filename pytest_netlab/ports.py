"""Free ports for targets, safe when several pytest-xdist workers run at once.

A target is an external program, so it needs a port *number* before it
starts: we cannot hand it a bound socket. To make collisions rare, ports are
drawn from below the kernel's ephemeral range (where outgoing connections
take their local ports), each xdist worker draws from its own slice of that
range, and a port is never handed out twice in one run (so a restarted
target never lands on a port that an old connection still holds in
TIME_WAIT). A port is tested free on TCP and UDP, IPv4 and IPv6, before it is
handed out. The rare race that remains (another program binds it between our
test and the target's bind) is retried by the launcher, never blamed on the
target.

This module must not start targets.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

from .errors import HarnessError

__all__ = ["PortAllocator", "port_is_free"]

# Below this we are in the range of well-known and registered services.
_LOWEST = 10000


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return low


def port_is_free(port: int) -> bool:
    """True when ``port`` can be bound on the wildcard address, TCP and UDP, IPv4 and IPv6."""
    attempts = [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")]
    for family, host in attempts:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            try:
                sock = socket.socket(family, kind)
            except OSError:
                continue  # no IPv6 on this machine: nothing to collide with
            try:
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((host, port))
            except OSError:
                return False
            finally:
                sock.close()
    return True


class PortAllocator:
    """Hands out ports no other worker of this run and no earlier target used.

    Example::

        ports = PortAllocator(worker_index=0, worker_count=2)
        port = ports.allocate()     # e.g. 17342, free on TCP and UDP

    Args:
        worker_index: this xdist worker's number (0 when not distributed).
        worker_count: how many workers share the range.
    """

    def __init__(self, worker_index: int = 0, worker_count: int = 1) -> None:
        high = min(_ephemeral_low(), 65536) - 1
        if high - _LOWEST < 1000 * max(worker_count, 1):
            # An unusual ip_local_port_range leaves no room below it: share the upper range instead.
            low, high = 40000, 65000
        else:
            low = _LOWEST
        span = (high - low) // max(worker_count, 1)
        self._low = low + span * worker_index
        self._high = self._low + span - 1
        self._used: set[int] = set()
        self._lock = threading.Lock()
        self._random = random.SystemRandom()  # port numbers must not depend on --netlab-seed

    @property
    def range(self) -> tuple[int, int]:
        """The inclusive range this allocator draws from."""
        return self._low, self._high

    def allocate(self) -> int:
        """A port free right now that this allocator never handed out before."""
        with self._lock:
            for _ in range(200):
                port = self._random.randint(self._low, self._high)
                if port in self._used:
                    continue
                self._used.add(port)
                if port_is_free(port):
                    return port
        raise HarnessError(f"no free port found in {self._low}-{self._high} after 200 tries; is the machine out of ports?")
