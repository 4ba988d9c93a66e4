"""Benchmark: what the TCP fault proxy costs with no faults, next to a direct connection and socat.

Run ``python bench/bench_tcp_proxy.py``. It measures, interleaved and
repeated (the median is shown):

- the round trip of one 64-byte message in flight (2000 round trips to an
  echo server), and what a relay adds to it;
- bulk throughput: 256 MiB one way to a sink that answers one byte at the end;

for a direct loopback connection, ``socat -b 262144`` as a relay, and
:class:`~pytest_netlab.tcp_proxy.TCPFaultProxy` with and without payload
recording. The targets: the proxy adds no more round-trip latency than socat
and moves bulk data at least 2/3 as fast.

Every relay runs in its own process, as socat does, so none of them shares
the client's interpreter lock. socat gets ``fork`` so that one listener serves
the repeated connections; each connection is then relayed by one socat
process, exactly as without it. Skips socat, with a message, where it is not
installed. Bounded: about 20 s on two cores, never more than about 60 s.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESSAGE = b"m" * 64
IO_TIMEOUT = 20.0  # every socket operation of the benchmark is bounded by this
STARTUP_TIMEOUT = 10.0
TIME_BUDGET = 45.0  # stop repeating after this; the run still reports what it measured
SOCAT_BUFFER = 262144


# -- the child processes: echo/sink server and our proxy ------------------------------


def run_server() -> None:
    """Serve echo connections (first byte b"E") and sink connections (b"S" + 8-byte length)."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    print(listener.getsockname()[1], flush=True)

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(IO_TIMEOUT)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buffer = bytearray(1 << 20)
            kind = conn.recv(1)  # nothing: a probe (waiting for socat to listen)
            if kind == b"E":
                while size := conn.recv_into(buffer):
                    conn.sendall(memoryview(buffer)[:size])
            elif kind == b"S":
                (total,) = struct.unpack("!Q", recv_exactly(conn, 8))
                while total > 0 and (size := conn.recv_into(buffer)):
                    total -= size
                conn.sendall(b"k")

    def exit_with_parent() -> None:
        sys.stdin.read()  # returns when the parent closes our stdin, or dies
        os._exit(0)

    threading.Thread(target=exit_with_parent, daemon=True).start()
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def run_proxy(upstream_port: int, record_data: bool) -> None:
    """Run a TCPFaultProxy; each line on stdin replaces it by a fresh one (an empty transcript)."""
    sys.path.insert(0, ROOT)
    from pytest_netlab.tcp_proxy import TCPFaultProxy

    while True:
        with TCPFaultProxy(("127.0.0.1", upstream_port), record_data=record_data) as proxy:
            print(proxy.address[1], flush=True)
            if not sys.stdin.readline():
                return


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"EOF after {len(data)} of {size} bytes")
        data += chunk
    return data


# -- measurements ----------------------------------------------------------------------


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def round_trip(port: int, count: int) -> float:
    """Seconds per round trip of one 64-byte message: the median of ``count`` round trips.

    The median, not the mean: on a machine shared with other work, a few
    round trips wait for a CPU, and the mean would measure that wait.
    """
    with connect(port) as sock:
        sock.sendall(b"E")
        view = memoryview(bytearray(len(MESSAGE)))
        clock = time.perf_counter
        times = []
        for _ in range(100 + count):  # the first 100 warm up
            started = clock()
            sock.sendall(MESSAGE)
            got = 0
            while got < len(MESSAGE):
                size = sock.recv_into(view[got:])
                if not size:
                    raise ConnectionError("the echo server closed")
                got += size
            times.append(clock() - started)
        return statistics.median(times[100:])


def bulk(port: int, total: int) -> float:
    """Bits per second moving ``total`` bytes one way, until the sink has them all."""
    block = memoryview(bytearray(1 << 20))
    with connect(port) as sock:
        started = time.perf_counter()
        sock.sendall(b"S" + struct.pack("!Q", total))
        for _ in range(total // len(block)):
            sock.sendall(block)
        if sock.recv(1) != b"k":
            raise ConnectionError("the sink did not confirm")
        return total * 8 / (time.perf_counter() - started)


# -- the run ------------------------------------------------------------------------------


class Child:
    """A server or relay in its own process, listening on ``port``."""

    def __init__(self, process: subprocess.Popen[str], port: int) -> None:
        self.process = process
        self.port = port

    @classmethod
    def spawn(cls, argv: list[str]) -> Child:
        """Start ``argv``, which prints its listening port on its first line."""
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        return cls(process, read_port(process))

    def renew(self) -> None:
        """Ask a proxy child for a fresh proxy (its transcript starts empty)."""
        assert self.process.stdin is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        self.port = read_port(self.process)

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()  # the children exit when their stdin closes
        else:
            self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def read_port(process: subprocess.Popen[str]) -> int:
    stdout = process.stdout
    assert stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=STARTUP_TIMEOUT)
    except queue.Empty:
        line = ""
    if not line.strip().isdigit():
        raise RuntimeError(f"{process.args!r} did not report its port (got {line!r})")
    return int(line)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_socat(upstream_port: int) -> Child | None:
    if shutil.which("socat") is None:
        print("socat is not installed: skipping the socat relay (apt-get install socat)")
        return None
    port = free_port()
    argv = ["socat", "-b", str(SOCAT_BUFFER), f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", f"TCP:127.0.0.1:{upstream_port}"]
    child = Child(subprocess.Popen(argv, stdin=subprocess.DEVNULL, text=True), port)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:  # socat says nothing when it listens: poll until it does
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return child
        except OSError:
            time.sleep(0.02)
    child.stop()
    raise RuntimeError("socat did not start listening")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--role", choices=["server", "proxy", "proxy-recording"], help=argparse.SUPPRESS)
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=11, help="interleaved repetitions (default 11)")
    parser.add_argument("--round-trips", type=int, default=2000, help="round trips per latency run (default 2000)")
    parser.add_argument("--bulk-mib", type=int, default=256, help="MiB per throughput run (default 256)")
    args = parser.parse_args()
    if args.role == "server":
        return run_server()
    if args.role is not None:
        return run_proxy(args.upstream, record_data=args.role == "proxy-recording")

    me = [sys.executable, os.path.abspath(__file__)]
    children: list[Child] = []
    try:
        server = Child.spawn(me + ["--role", "server"])
        children.append(server)
        relays: dict[str, Child | None] = {"direct loopback": None}
        socat = start_socat(server.port)
        if socat is not None:
            children.append(socat)
            relays[f"socat -b {SOCAT_BUFFER}"] = socat
        for name, role in (("TCPFaultProxy", "proxy"), ("TCPFaultProxy, record_data", "proxy-recording")):
            proxy = Child.spawn(me + ["--role", role, "--upstream", str(server.port)])
            children.append(proxy)
            relays[name] = proxy
        measure(relays, server.port, args.reps, args.round_trips, args.bulk_mib << 20)
    finally:
        for child in reversed(children):
            child.stop()


def measure(relays: dict[str, Child | None], server_port: int, reps: int, round_trips: int, total: int) -> None:
    rtts: dict[str, list[float]] = {name: [] for name in relays}
    rates: dict[str, list[float]] = {name: [] for name in relays}
    started = time.monotonic()
    for rep in range(reps):
        if rep >= 2 and time.monotonic() - started > TIME_BUDGET:
            print(f"time budget spent: stopping after {rep} repetitions")
            break
        # Rotate the order every repetition, so no relay always runs right after the same one.
        names = list(relays)
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            child = relays[name]
            if child is not None and name.startswith("TCPFaultProxy"):
                child.renew()
            port = server_port if child is None else child.port
            rtts[name].append(round_trip(port, round_trips))
            rates[name].append(bulk(port, total))
    report(rtts, rates, round_trips, total, time.monotonic() - started)


def report(rtts: dict[str, list[float]], rates: dict[str, list[float]], round_trips: int, total: int, elapsed: float) -> None:
    runs = len(rtts["direct loopback"])
    median: Callable[[list[float]], float] = statistics.median
    direct_rtt, direct_rate = median(rtts["direct loopback"]), median(rates["direct loopback"])
    print(f"\n{round_trips} round trips of {len(MESSAGE)} bytes; {total >> 20} MiB one way; median of {runs} interleaved runs ({elapsed:.0f} s)")
    print(f"{'':30} {'round trip':>11} {'added':>9} {'bulk':>12} {'of direct':>10}")
    for name in rtts:
        rtt, rate = median(rtts[name]), median(rates[name])
        added_text = "" if name == "direct loopback" else f"{(rtt - direct_rtt) * 1e6:6.1f} us"
        spread = f"({min(rates[name]) / 1e9:.1f}..{max(rates[name]) / 1e9:.1f})"
        print(f"{name:30} {rtt * 1e6:8.1f} us {added_text:>9} {rate / 1e9:6.2f} Gbit/s {rate / direct_rate:9.2f}  {spread}")
    socat = next((name for name in rtts if name.startswith("socat")), None)
    if socat is None:
        return
    socat_added = median(rtts[socat]) - direct_rtt
    print("\nratios against socat (targets: added latency <= 1.00, throughput >= 0.67):")
    for name in rtts:
        if name.startswith("TCPFaultProxy"):
            added = median(rtts[name]) - direct_rtt
            latency_ratio = added / socat_added if socat_added > 0 else float("nan")
            print(f"  {name:28} added latency {latency_ratio:5.2f}   throughput {median(rates[name]) / median(rates[socat]):5.2f}")


if __name__ == "__main__":
    main()
