"""Benchmark: what packet capture costs a run, as a ratio of capture on against capture off.

Run it from the repository root (about 20 s)::

    python bench/bench_capture.py [--rounds 21] [--round-trips 1000] [--echo thread|process]

One "run" is what a test does: connect to a TCP echo server, make
``--round-trips`` request/reply exchanges of 32 bytes, close. It is timed
without capture, and with a :class:`LoopbackCapture` on the server's port,
once per backend this machine permits. The rounds are interleaved so that load
from other programs hits every variant alike, and the figures printed are
medians. The echo server runs in a thread of this process (default) or in a
process of its own (``--echo process``, as a real target does: client, server
and tcpdump then compete for the CPUs, which costs more on a 2-core machine).

Two ratios per backend:

- ``traffic``: the run alone, capture running around it: the cost of capture
  on every packet (the issue's target: at most 1.05).
- ``with start/stop``: the run plus starting and stopping the capture, what a
  test pays when capture is always on. Start and stop are a fixed cost (about
  a process start for tcpdump), printed separately, so this ratio depends on
  how long the run is.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from resource import RUSAGE_CHILDREN, RUSAGE_SELF, getrusage

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from pytest_netlab.capture import CaptureBackend, LoopbackCapture, capture_support  # noqa: E402
from pytest_netlab.packets import packets  # noqa: E402

PAYLOAD = b"x" * 32
TIMEOUT = 10.0

# Prints its port, then echoes one connection after another until its stdin closes.
ECHO_PROCESS = """
import socket, sys, threading
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
# shutdown() wakes a blocked accept() on Linux; close() alone would not.
threading.Thread(target=lambda: (sys.stdin.read(), listener.shutdown(socket.SHUT_RDWR)), daemon=True).start()
while True:
    try:
        conn, _ = listener.accept()
    except OSError:
        break
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(65536):
            conn.sendall(data)
"""


@contextmanager
def echo_in_process() -> Iterator[int]:
    """A TCP echo server in a process of its own; yields its port."""
    server = subprocess.Popen([sys.executable, "-c", ECHO_PROCESS], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdin is not None and server.stdout is not None
    try:
        yield int(server.stdout.readline())
    finally:
        server.stdin.close()
        try:
            server.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(TIMEOUT)


@contextmanager
def echo_in_thread() -> Iterator[int]:
    """A TCP echo server in a daemon thread of this process; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # shut down: the benchmark is over
                return
            with conn:
                conn.settimeout(TIMEOUT)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while data := conn.recv(65536):
                    conn.sendall(data)

    thread = threading.Thread(target=serve, name="bench-echo", daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        thread.join(TIMEOUT)
        listener.close()


def run_round_trips(port: int, round_trips: int) -> None:
    """One test's traffic: connect, ``round_trips`` echoes, close."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(round_trips):
            sock.sendall(PAYLOAD)
            received = 0
            while received < len(PAYLOAD):
                chunk = sock.recv(len(PAYLOAD) - received)
                if not chunk:
                    raise RuntimeError("echo server closed the connection")
                received += len(chunk)


@dataclass
class Sample:
    """One run: wall time, and CPU time of this process and of its reaped children (tcpdump)."""

    wall: float
    cpu_self: float
    cpu_children: float


def cpu_seconds(who: int) -> float:
    usage = getrusage(who)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def sampled(into: list[Sample]) -> Iterator[None]:
    wall, cpu_self, cpu_children = time.perf_counter(), cpu_seconds(RUSAGE_SELF), cpu_seconds(RUSAGE_CHILDREN)
    yield
    into.append(
        Sample(
            time.perf_counter() - wall,
            cpu_seconds(RUSAGE_SELF) - cpu_self,
            cpu_seconds(RUSAGE_CHILDREN) - cpu_children,
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21, help="interleaved repetitions (median taken)")
    parser.add_argument("--round-trips", type=int, default=1000, help="echo round trips per run")
    parser.add_argument("--echo", choices=("thread", "process"), default="thread", help="where the echo server runs")
    args = parser.parse_args()

    backends = [b for b in CaptureBackend if capture_support(b).available]
    if not backends:
        print(capture_support().reason)
        return 1

    off: list[Sample] = []
    traffic: dict[CaptureBackend, list[Sample]] = {b: [] for b in backends}
    total: dict[CaptureBackend, list[Sample]] = {b: [] for b in backends}
    idle: dict[CaptureBackend, list[Sample]] = {b: [] for b in backends}
    packet_counts: dict[CaptureBackend, int] = {}
    dropped: dict[CaptureBackend, int | None] = {}
    echo_server = echo_in_thread if args.echo == "thread" else echo_in_process
    with echo_server() as port, tempfile.TemporaryDirectory(prefix="netlab-bench-capture-") as directory:

        def run() -> None:
            run_round_trips(port, args.round_trips)

        run()  # warm up: imports, first connection, caches
        for round_number in range(args.rounds):
            # Alternate the order, so that neither side always runs first after a tcpdump exits.
            variants: list[CaptureBackend | None] = [None, *backends]
            for variant in variants if round_number % 2 == 0 else variants[::-1]:
                if variant is None:
                    with sampled(off):
                        run()
                    continue
                path = Path(directory) / f"{variant.value}-{round_number}.pcap"
                with sampled(total[variant]):
                    capture = LoopbackCapture([port], path, protocol="tcp", backend=variant).start()
                    with sampled(traffic[variant]):
                        run()
                    capture.stop()  # reaps tcpdump: its CPU time joins RUSAGE_CHILDREN
                packet_counts[variant] = len(packets(path))
                dropped[variant] = capture.dropped
                # The same capture without traffic: the CPU cost of a start and a stop alone.
                with sampled(idle[variant]):
                    LoopbackCapture([port], path, protocol="tcp", backend=variant).start().stop()
                path.unlink()

    def paired_ratio(samples: list[Sample]) -> float:
        # Each run against the capture-off run of the same round: both saw the same load.
        return statistics.median(on.wall / without.wall for on, without in zip(samples, off))

    def cpu_per_packet(backend: CaptureBackend) -> float:
        # Capture CPU beyond the run's own and beyond an idle start/stop, per captured packet.
        extra = [
            (t.cpu_self + t.cpu_children) - o.cpu_self - (i.cpu_self + i.cpu_children)
            for t, o, i in zip(total[backend], off, idle[backend])
        ]
        return statistics.median(extra) / packet_counts[backend]

    print(
        f"{args.round_trips} TCP echo round trips over loopback (echo server in a {args.echo}),"
        f" {args.rounds} interleaved rounds; medians, ratios paired by round"
    )
    walls = [s.wall for s in off]
    print(f"  capture off: {statistics.median(walls) * 1000:8.1f} ms (fastest {min(walls) * 1000:.1f}, slowest {max(walls) * 1000:.1f})")
    for backend in backends:
        start_stop = statistics.median(t.wall - r.wall for t, r in zip(total[backend], traffic[backend]))
        print(
            f"  {backend.value:>11}: traffic {statistics.median(s.wall for s in traffic[backend]) * 1000:8.1f} ms,"
            f" ratio {paired_ratio(traffic[backend]):.3f}"
            f" | with start/stop ratio {paired_ratio(total[backend]):.3f}"
            f" | start+stop {start_stop * 1000:.1f} ms wall,"
            f" {statistics.median(s.cpu_self + s.cpu_children for s in idle[backend]) * 1000:.1f} ms CPU"
            f" | {cpu_per_packet(backend) * 1e6:.1f} us CPU per packet"
            f" | {packet_counts[backend]} packets, {dropped[backend]} dropped"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
