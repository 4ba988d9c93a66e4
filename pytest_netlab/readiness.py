"""Ready probes: deciding when a freshly started target can be talked to.

Probes poll; they never sleep a fixed time (``delay:`` is the user's explicit
choice). Each poll also asks whether the process is still alive, so a target
that exits at once is reported at once rather than after the startup
timeout.

- ``tcp``: a socket listens on host:port, asked of the kernel (sock_diag,
  else ``/proc/net/tcp*``): a probe connection would be a client the target
  did not expect; where neither exists, a connection that succeeds.
- ``udp``: the port is bound, read from ``/proc/net/udp*`` (UDP has no
  handshake to probe, and a probe datagram would be part of the conversation).
- ``stdout:REGEX``: a line of the target's output matches.
- ``delay:SECONDS``: the target is still alive after that long.

This module must not launch processes; it is handed a callable that says
whether the target is still alive.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from pathlib import Path
from typing import Callable

from ._sock_diag import listening_ports
from .listeners import listeners_on_port

__all__ = ["ReadyProbe", "parse_ready", "tcp_accepts", "tcp_listening", "udp_port_bound"]

# Poll every 2 ms while most servers start (a venv Python listens after ~20 ms,
# a loaded machine may take ten times that), then back off. A refused connect
# on loopback costs ~20 us, so the fast phase costs little; backing off from
# the start made the poll itself the launch overhead (13 ms on average).
_FIRST_INTERVAL = 0.002
_FAST_PHASE = 0.5
_MAX_INTERVAL = 0.05


class ReadyProbe:
    """A parsed ``ready`` setting that can wait for a target."""

    def __init__(self, kind: str, argument: str = "") -> None:
        self.kind = kind
        self.argument = argument
        self.pattern = re.compile(argument) if kind == "stdout" else None

    def __str__(self) -> str:
        return f"{self.kind}:{self.argument}" if self.argument else self.kind

    def describe(self, host: str, port: int) -> str:
        """What the probe was waiting for, in words, for timeout messages."""
        if self.kind == "tcp":
            return f"a socket listening on TCP {format_address(host, port)}"
        if self.kind == "udp":
            return f"UDP port {port} to be bound"
        if self.kind == "stdout":
            return f"a line of output matching {self.argument!r}"
        return f"{self.argument} s to pass"

    def wait(
        self,
        host: str,
        port: int,
        timeout: float,
        alive: Callable[[], bool],
        wait_output: Callable[[re.Pattern[str], float], bool] | None = None,
    ) -> bool:
        """Wait until ready (True), or until death or timeout (False)."""
        deadline = time.monotonic() + timeout
        if self.kind == "stdout":
            assert self.pattern is not None and wait_output is not None
            return wait_output(self.pattern, timeout)
        if self.kind == "delay":
            pause = min(float(self.argument), timeout)
            end = time.monotonic() + pause
            while time.monotonic() < end:
                if not alive():
                    return False
                time.sleep(min(_MAX_INTERVAL, max(0.0, end - time.monotonic())))
            return alive()
        check = tcp_listening if self.kind == "tcp" else udp_port_bound
        interval = _FIRST_INTERVAL
        fast_until = time.monotonic() + _FAST_PHASE
        while True:
            if not alive():
                return False
            if check(host, port):
                return alive()
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                return False
            time.sleep(min(interval, remaining))
            if now >= fast_until:
                interval = min(interval * 2, _MAX_INTERVAL)


def parse_ready(text: str) -> ReadyProbe:
    """``"tcp"`` / ``"udp"`` / ``"stdout:REGEX"`` / ``"delay:0.5"`` to a probe."""
    kind, _, argument = text.partition(":")
    return ReadyProbe(kind, argument)


def format_address(host: str, port: int) -> str:
    """``127.0.0.1:80`` or ``[::1]:80``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def tcp_listening(host: str, port: int) -> bool:
    """True when a socket listens on TCP ``host:port`` (or the wildcard); no connection is made.

    A probe that connects is a client the target did not expect: a server
    that dies on its first client dies of the probe, a moment after "ready",
    and which check then sees the crash is a race. The kernel's sock_diag
    interface answers in tens of microseconds (``/proc/net/tcp`` is the
    fallback, at milliseconds a read); where neither exists, or ``host`` is a
    name, this falls back to :func:`tcp_accepts`.
    """
    try:
        wanted = ipaddress.ip_address(host)
    except ValueError:
        return tcp_accepts(host, port)
    listening: list[tuple[str, int]] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        found = listening_ports(family)
        if found is None:
            if not Path("/proc/net/tcp").exists():
                return tcp_accepts(host, port)
            listening = [(listener.host, listener.port) for listener in listeners_on_port(port)]
            break
        listening += [(str(ipaddress.ip_address(raw)), bound) for raw, bound in found]
    for bound_host, bound_port in listening:
        if bound_port != port:
            continue
        address = ipaddress.ip_address(bound_host)
        if address == wanted or bound_host == "::" or (bound_host == "0.0.0.0" and wanted.version == 4):
            return True
    return False


def tcp_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connection to host:port succeeds (and is closed again)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def udp_port_bound(host: str, port: int) -> bool:
    """True when some socket is bound to UDP ``port`` (Linux ``/proc/net/udp*``)."""
    wanted = f":{port:04X}"
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 1 and fields[1].endswith(wanted):
                return True
    return False
