"""Benchmark: UDP echo round trips through the lossy proxy, side by side with direct loopback and socat.

Run it from the repository root (about 30 s)::

    python bench/bench_udp_proxy.py [--rounds 20] [--seconds 0.2]

One client keeps one datagram in flight against an echo server in its own
process, through each relay in turn: nothing (direct loopback), a socat flow
relay, ``LossyUDPProxy`` with no faults in its own process, the same in the
client's process (how the pytest fixture runs it), and a plain asyncio
datagram relay. The rounds are interleaved so that load from other programs
hits every relay alike; the figures printed are medians, and each ratio is
the median of the per-round ratios (robust to load that changes during the
run). The load average is printed: on a shared machine, quote it with the
ratios. Each round trip crosses a relay twice, so datagrams per second
through the relay is twice the round trips.

socat form: ``socat -T 10 UDP4-LISTEN:P,bind=127.0.0.1,fork,reuseaddr UDP4:127.0.0.1:Q``,
a relay of flows: the listener forks one child per client address, and the
child keeps a connected socket each way. ``LossyUDPProxy`` serves a flow the
same way (a socket on the listener's address connected to the client, one
connected to the server), with a thread per socket instead of a process per
flow. ``UDP4-RECVFROM:P,fork UDP4-SENDTO:...`` forks a process *per
datagram* and manages about 1k round trips per second, so it would flatter us.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from pytest_netlab.udp_proxy import LossyUDPProxy  # noqa: E402

PAYLOAD = b"x" * 32
HOST = "127.0.0.1"

# Each helper process prints its port on the first line, then runs until its stdin closes.
ECHO_SERVER = """
import socket, sys, threading
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
sock.settimeout(0.5)
print(sock.getsockname()[1], flush=True)
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
buffer = bytearray(65536)
view = memoryview(buffer)
while not done.is_set():
    try:
        size, address = sock.recvfrom_into(buffer)
    except socket.timeout:
        continue
    sock.sendto(view[:size], address)
"""

PROXY_PROCESS = """
import sys
sys.path.insert(0, {repository!r})
from pytest_netlab.udp_proxy import LossyUDPProxy
with LossyUDPProxy(upstream=("127.0.0.1", {upstream})) as proxy:
    print(proxy.address[1], flush=True)
    sys.stdin.read()
"""

ASYNCIO_RELAY = """
import asyncio, sys
UPSTREAM = ("127.0.0.1", {upstream})

class Upstream(asyncio.DatagramProtocol):
    def __init__(self, front, client):
        self.front, self.client = front, client
    def datagram_received(self, data, address):
        self.front.transport.sendto(data, self.client)

class Front(asyncio.DatagramProtocol):
    def __init__(self):
        self.flows = {{}}
    def connection_made(self, transport):
        self.transport = transport
    def datagram_received(self, data, address):
        flow = self.flows.get(address)
        if flow is None:
            asyncio.ensure_future(self.open(data, address))
        else:
            flow.sendto(data)
    async def open(self, data, address):
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: Upstream(self, address), remote_addr=UPSTREAM)
        self.flows[address] = transport
        transport.sendto(data)

async def main():
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Front, local_addr=("127.0.0.1", 0))
    print(transport.get_extra_info("sockname")[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


def start_helper(source: str) -> tuple[subprocess.Popen[str], int]:
    """Start a helper Python process and read the port it prints."""
    process = subprocess.Popen([sys.executable, "-c", source], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, int(process.stdout.readline())


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def start_socat(upstream: int) -> tuple[subprocess.Popen[str], int]:
    """socat needs a port number up front; wait until it answers an echo through it.

    Each flow is a forked child that a signal to the parent does not reach: socat runs in
    its own session so that stop() can end the whole group, and ``-T`` ends idle children.
    """
    port = free_udp_port()
    command = ["socat", "-T", "10", f"UDP4-LISTEN:{port},bind={HOST},fork,reuseaddr", f"UDP4:{HOST}:{upstream}"]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        try:
            round_trips_per_second(port, 0.05, timeout=0.2)
            return process, port
        except OSError:
            time.sleep(0.05)
    stop(process)
    raise RuntimeError("socat did not start relaying within 5 s")


def stop(process: subprocess.Popen[str]) -> None:
    """End a helper and, for socat, its forked children (its own process group)."""
    if process.stdin:
        process.stdin.close()
    try:
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, signal.SIGTERM)
        else:
            process.terminate()
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def round_trips_per_second(port: int, seconds: float, timeout: float = 1.0) -> float:
    """Echo round trips per second with one datagram in flight, from a fresh client socket."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(timeout)
        client.connect((HOST, port))
        client.send(PAYLOAD)  # the first datagram opens the flow (socat forks, we bind)
        client.recv(65536)
        count = 0
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            for _ in range(50):
                client.send(PAYLOAD)
                client.recv(65536)
            count += 50
        return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds per relay (default 20)")
    parser.add_argument("--seconds", type=float, default=0.2, help="length of one measurement in seconds (default 0.2)")
    options = parser.parse_args()

    processes: list[subprocess.Popen[str]] = []
    in_process: LossyUDPProxy | None = None
    try:
        echo, echo_port = start_helper(ECHO_SERVER)
        processes.append(echo)
        relays: dict[str, int] = {"direct loopback": echo_port}
        if shutil.which("socat"):
            socat, relays["socat flow relay"] = start_socat(echo_port)
            processes.append(socat)
        else:
            print("socat is not installed: skipping the socat comparison")
        for name, source in [
            ("LossyUDPProxy, own process", PROXY_PROCESS.format(repository=str(REPOSITORY), upstream=echo_port)),
            ("plain asyncio relay", ASYNCIO_RELAY.format(upstream=echo_port)),
        ]:
            process, relays[name] = start_helper(source)
            processes.append(process)
        in_process = LossyUDPProxy(upstream=(HOST, echo_port)).start()
        relays["LossyUDPProxy, in-process thread"] = in_process.address[1]

        load_before = os.getloadavg()
        samples: dict[str, list[float]] = {name: [] for name in relays}
        for _ in range(options.rounds):
            for name, port in relays.items():
                samples[name].append(round_trips_per_second(port, options.seconds))
        load_after = os.getloadavg()
    finally:
        if in_process is not None:
            in_process.close()
        for process in processes:
            stop(process)
    report(samples, options, load_before, load_after)


def ratio(samples: dict[str, list[float]], name: str, baseline: str) -> float:
    """The median over rounds of ``name``'s rate divided by ``baseline``'s in the same round."""
    return statistics.median(a / b for a, b in zip(samples[name], samples[baseline]))


def report(samples: dict[str, list[float]], options: argparse.Namespace, load_before: tuple[float, ...], load_after: tuple[float, ...]) -> None:
    cores = os.cpu_count()
    print(f"UDP echo, {len(PAYLOAD)}-byte payload, one datagram in flight; median of {options.rounds} x {options.seconds} s")
    print(f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after, on {cores} cores")
    print(f"{'relay':36} {'round trips/s':>14} {'datagrams/s':>12}  spread (min..max round trips/s)")
    for name, values in samples.items():
        value = statistics.median(values)
        through = "" if name == "direct loopback" else f"{2 * value:12.0f}"
        print(f"{name:36} {value:14.0f} {through:>12}  {min(values):.0f}..{max(values):.0f}")
    ours = "LossyUDPProxy, own process"
    print(f"ratio ours (own process) / direct loopback: {ratio(samples, ours, 'direct loopback'):.2f}")
    if "socat flow relay" in samples:
        print(f"ratio ours (own process) / socat:           {ratio(samples, ours, 'socat flow relay'):.2f}")
        for name in ("LossyUDPProxy, in-process thread", "plain asyncio relay"):
            print(f"ratio {name} / socat: {ratio(samples, name, 'socat flow relay'):.2f}")


if __name__ == "__main__":
    main()
