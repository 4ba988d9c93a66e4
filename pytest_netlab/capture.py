"""Packet capture on loopback: start it before the first packet, stop it after the last.

This module owns recording a test's loopback traffic into a pcap file: which
backend the machine allows (``tcpdump``, or an ``AF_PACKET`` socket when the
process holds CAP_NET_RAW), and why none does when capture is not permitted.
It must not interpret packets (that is :mod:`pytest_netlab.packets`) nor
decide what to keep after a test (that is the plugin's fixture).

No race at either end, and no fixed sleeps. A capture sends itself a UDP
marker datagram (to a port of its own, included in its filter) and returns
from :meth:`LoopbackCapture.start` only once the marker is in the file: the
capture is then provably running, so the test's first SYN cannot be missed.
:meth:`LoopbackCapture.stop` sends a second marker and waits for it in the
same way before ending the backend: what crossed ``lo`` before the marker is
recorded before it, and a loopback packet crosses ``lo`` within the system
call that sends it, so whatever was sent before ``stop()`` is in the file.
(Packets the kernel sends later on its own, a delayed ACK or a retransmission,
are not: a test that wants them waits for them before stopping.)
The markers stay in the file, marking the capture window for a Wireshark
reader; :func:`pytest_netlab.packets.packets` drops them.
"""

from __future__ import annotations

import enum
import itertools
import os
import socket
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from pytest_netlab._packet_socket import PacketSocketRecorder, compile_port_filter, packet_socket_problem
from pytest_netlab._tcpdump import TcpdumpFailed, TcpdumpRecorder, bpf_filter, find_tcpdump
from pytest_netlab.errors import HarnessError, NotApplicable
from pytest_netlab.packets import MARKER_PREFIX, Packet, packets

__all__ = [
    "CaptureBackend",
    "CaptureSupport",
    "CaptureError",
    "CaptureUnavailable",
    "LoopbackCapture",
    "capture_support",
    "HOW_TO_ENABLE",
    "DEFAULT_SNAPLEN",
]

#: What a user can do when capture is not permitted; part of every "unavailable" reason.
HOW_TO_ENABLE = (
    "to enable it, run the tests as root, or let tcpdump capture as your user with "
    "`sudo setcap cap_net_raw,cap_net_admin=eip $(command -v tcpdump)`, "
    "or install tcpdump (`sudo apt-get install tcpdump`)"
)

#: Bytes kept per frame: the headers and the first 1,800-odd payload bytes of a
#: segment (:attr:`Packet.length <pytest_netlab.packets.Packet.length>` is the
#: length on the wire whatever is kept). Not whole frames, because tcpdump's
#: immediate mode (libpcap's TPACKET_V2 ring) gives every frame a fixed slot
#: sized from this length: on ``lo`` (MTU 64 KiB) a whole-frame slot is
#: 128 KiB, so an 8 MiB ring holds 64 frames and drops packets whenever tcpdump
#: waits a few milliseconds for a CPU. 1,900 bytes fit two slots in a page.
DEFAULT_SNAPLEN = 1900
# Markers are re-sent at this period while waiting: one lost datagram must not cost a timeout.
_MARKER_RESEND_SECONDS = 0.2
# The longest single poll while waiting for a marker; polls start shorter and double.
_MAX_POLL_SECONDS = 0.02
# Distinct marker tokens within a process, across threads.
_capture_ids = itertools.count(1)


class CaptureBackend(enum.Enum):
    """How packets are captured: a ``tcpdump`` process or an in-process ``AF_PACKET`` socket."""

    TCPDUMP = "tcpdump"
    AF_PACKET = "af_packet"


@dataclass(frozen=True)
class CaptureSupport:
    """Whether this machine lets us capture, with which backend, or why not.

    Example::

        support = capture_support()
        if not support.available:
            pytest.skip(support.reason)   # names the cause and how to enable capture
    """

    backend: CaptureBackend | None
    reason: str

    @property
    def available(self) -> bool:
        """True when :attr:`backend` can capture on loopback here."""
        return self.backend is not None


class CaptureUnavailable(NotApplicable):
    """Capture is not permitted on this machine; the message says why and how to enable it."""


class CaptureError(HarnessError):
    """A capture that should work failed (backend died, a marker never arrived)."""


class _Recorder(Protocol):
    """What a backend does for :class:`LoopbackCapture`."""

    dropped: int | None

    def start(self, timeout: float) -> None: ...
    def expect(self, token: bytes) -> None: ...
    def wait_for(self, token: bytes, timeout: float) -> bool: ...
    def failure(self) -> str | None: ...
    def stop(self, timeout: float) -> None: ...


class LoopbackCapture:
    """Record the loopback traffic of the given ports into a pcap file.

    Args:
        ports: the ports the test uses (the target's, a proxy's); both
            directions of any flow with one of them as source or destination
            are kept. May be empty (then only the markers are recorded).
        path: the pcap file to write. Prefer a name ending in ``.pcap``: the
            AppArmor profile of tcpdump on Ubuntu only lets it write such names.
        protocol: ``"tcp"`` or ``"udp"`` to keep only that protocol; ``None`` keeps both.
        backend: force a backend; ``None`` picks what :func:`capture_support` finds.
        snaplen: bytes kept per frame (see :data:`DEFAULT_SNAPLEN`; more costs
            tcpdump ring slots, hence packets dropped under load).
        start_timeout, stop_timeout: bounds on :meth:`start` and :meth:`stop`.

    Example::

        with LoopbackCapture([server_port], tmp_path / "echo.pcap", protocol="tcp") as capture:
            exchange_with(server_port)
        assert not resets(capture.packets())
    """

    def __init__(
        self,
        ports: Iterable[int],
        path: str | os.PathLike[str],
        *,
        protocol: Literal["tcp", "udp"] | None = None,
        backend: CaptureBackend | None = None,
        snaplen: int = DEFAULT_SNAPLEN,
        start_timeout: float = 10.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.ports = tuple(sorted(set(ports)))
        bad = [p for p in self.ports if not isinstance(p, int) or not 0 < p < 65536]
        if bad:
            raise ValueError(f"ports must be integers in 1..65535, got {bad!r}")
        if protocol not in ("tcp", "udp", None):
            raise ValueError(f"protocol must be 'tcp', 'udp' or None, got {protocol!r}")
        self.path = Path(path).absolute()
        self.protocol = protocol
        self.backend = backend
        self.snaplen = snaplen
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        #: Packets the kernel dropped before the backend read them (known after stop()).
        self.dropped: int | None = None
        capture_id = next(_capture_ids)
        self._tokens = {
            kind: MARKER_PREFIX + f"{kind} pid={os.getpid()} capture={capture_id}".encode() for kind in ("start", "stop")
        }
        self._marker: _MarkerSocket | None = None
        self._recorder: _Recorder | None = None
        self._shutdown: weakref.finalize[[_Recorder, _MarkerSocket, float], LoopbackCapture] | None = None

    @property
    def running(self) -> bool:
        """True between a successful :meth:`start` and :meth:`stop`."""
        return self._shutdown is not None and self._shutdown.alive

    def start(self) -> LoopbackCapture:
        """Start capturing; returns once the capture provably records packets.

        Raises:
            CaptureUnavailable: no backend is permitted here (the reason says how to enable one).
            CaptureError: the backend failed to start or never saw the start marker.
        """
        if self._recorder is not None:
            raise RuntimeError("a LoopbackCapture is started once; create a new one")
        if self.backend is None:
            support = capture_support()
            if support.backend is None:
                raise CaptureUnavailable(support.reason)
            self.backend = support.backend
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._marker = marker = _MarkerSocket()
        recorder: _Recorder
        if self.backend is CaptureBackend.TCPDUMP:
            bpf = bpf_filter(self.ports, self.protocol, marker.port)
            recorder = TcpdumpRecorder(find_tcpdump() or "tcpdump", self.path, bpf, self.snaplen)
        else:
            tcp_ports, udp_ports = _port_sets(self.ports, self.protocol, marker.port)
            program = compile_port_filter(tcp_ports, udp_ports)
            recorder = PacketSocketRecorder(self.path, program, self.snaplen)
        self._recorder = recorder
        # The finalizer holds the resources, not the capture: a capture dropped
        # without stop() (or alive at interpreter exit) still ends its backend.
        self._shutdown = weakref.finalize(self, _shut_down, recorder, marker, self.stop_timeout)
        try:
            recorder.start(self.start_timeout)
            self._await_marker("start", self.start_timeout)
        except TcpdumpFailed as exc:
            self._shutdown()
            raise CaptureError(str(exc)) from exc
        except OSError as exc:
            self._shutdown()
            raise CaptureError(f"{self.backend.value} capture could not start: {exc}") from exc
        except BaseException:
            self._shutdown()
            raise
        return self

    def stop(self) -> Path:
        """Stop capturing once every packet sent before this call is in the file.

        :attr:`dropped` then says how many packets the kernel dropped because
        the backend fell behind (0 for a complete capture).

        Idempotent. Returns the pcap path.

        Raises:
            CaptureError: the closing marker never arrived (the last packets may be missing).
        """
        if not self.running:
            return self.path
        assert self._recorder is not None and self._shutdown is not None
        try:
            self._await_marker("stop", self.stop_timeout)
        finally:
            self._shutdown()
            self.dropped = self._recorder.dropped
        return self.path

    close = stop

    def packets(self) -> list[Packet]:
        """The captured packets, parsed (stops the capture first if needed)."""
        self.stop()
        return packets(self.path)

    def __enter__(self) -> LoopbackCapture:
        return self.start()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.stop()
            return
        # The body already failed: end the backend, but do not hide the body's error.
        try:
            self.stop()
        except CaptureError:
            pass

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<LoopbackCapture ports={list(self.ports)} {self.backend and self.backend.value} {state} {self.path}>"

    def _await_marker(self, kind: str, timeout: float) -> None:
        """Send the ``kind`` marker (again every so often) until the backend has recorded it."""
        assert self._recorder is not None and self._marker is not None
        token = self._tokens[kind]
        self._recorder.expect(token)
        deadline = time.monotonic() + timeout
        poll = 0.0005
        resend_at = 0.0
        while True:
            now = time.monotonic()
            if now >= resend_at:
                self._marker.send(token)
                resend_at = now + _MARKER_RESEND_SECONDS
            if self._recorder.wait_for(token, min(poll, max(deadline - now, 0.0))):
                return
            problem = self._recorder.failure()
            if problem is not None:
                raise CaptureError(problem)
            if time.monotonic() >= deadline:
                raise CaptureError(
                    f"the {kind} marker of a {self.backend and self.backend.value} capture was not recorded within "
                    f"{timeout:g} s" + ("; packets sent just before stop() may be missing" if kind == "stop" else "")
                )
            poll = min(poll * 2, _MAX_POLL_SECONDS)


def _shut_down(recorder: _Recorder, marker: _MarkerSocket, timeout: float) -> None:
    try:
        recorder.stop(timeout)
    finally:
        marker.close()


class _MarkerSocket:
    """A UDP socket on 127.0.0.1 that sends marker datagrams to itself.

    Sending to its own port means no ICMP "port unreachable" joins the capture,
    and the port is ours while the socket lives, so no other test can use it.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(1.0)
        self.port: int = self._sock.getsockname()[1]

    def send(self, token: bytes) -> None:
        self._sock.sendto(token, ("127.0.0.1", self.port))

    def close(self) -> None:
        self._sock.close()


def _port_sets(ports: tuple[int, ...], protocol: str | None, marker_port: int) -> tuple[set[int], set[int]]:
    """The selection of :func:`~pytest_netlab._tcpdump.bpf_filter`, as the TCP and the UDP ports to keep."""
    tcp_ports = set(ports) if protocol in (None, "tcp") else set()
    udp_ports = set(ports) if protocol in (None, "udp") else set()
    return tcp_ports, udp_ports | {marker_port}


_support_lock = threading.Lock()
_support_cache: dict[CaptureBackend, CaptureSupport] = {}


def capture_support(backend: CaptureBackend | None = None, *, refresh: bool = False) -> CaptureSupport:
    """Which backend can capture on loopback here, or why none can.

    tcpdump is preferred (it costs the test process nothing per packet); it is
    tried for real, with a short capture, since being on PATH does not mean
    being permitted. The answer is cached for the process.

    Args:
        backend: probe only this backend.
        refresh: probe again instead of using the cached answer.
    """
    failures = []
    for candidate in [backend] if backend else list(CaptureBackend):
        with _support_lock:
            if refresh or candidate not in _support_cache:
                _support_cache[candidate] = _probe(candidate)
            support = _support_cache[candidate]
        if support.available:
            return support
        failures.append(support.reason)
    return CaptureSupport(None, f"packet capture is not permitted here: {'; '.join(failures)}; {HOW_TO_ENABLE}")


def _probe(backend: CaptureBackend) -> CaptureSupport:
    if backend is CaptureBackend.AF_PACKET:
        problem = packet_socket_problem()
        if problem:
            return CaptureSupport(None, f"AF_PACKET socket: {problem}")
        return CaptureSupport(backend, "AF_PACKET socket (the process holds CAP_NET_RAW)")
    executable = find_tcpdump()
    if executable is None:
        return CaptureSupport(None, "tcpdump: not installed")
    with tempfile.TemporaryDirectory(prefix="netlab-capture-probe-") as directory:
        try:
            LoopbackCapture([], Path(directory) / "probe.pcap", backend=backend, start_timeout=5, stop_timeout=5).start().stop()
        except CaptureError as exc:
            return CaptureSupport(None, str(exc))
    return CaptureSupport(backend, f"tcpdump ({executable})")
