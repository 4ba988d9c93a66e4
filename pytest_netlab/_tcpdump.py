"""The tcpdump capture backend: a ``tcpdump`` process writing the pcap file.

This module owns running tcpdump on ``lo`` with the filter of a capture, the
ring size its snapshot length needs, and finding a marker in the file it
writes. It must not decide what a capture is for;
:class:`pytest_netlab.capture.LoopbackCapture` drives it, and turns its
failures into :class:`~pytest_netlab.capture.CaptureError`.

``--immediate-mode`` hands each packet to tcpdump at once and ``-U`` writes it
to the file at once, so a marker shows in the file as soon as it crossed
``lo``: that is what makes start and stop race-free without sleeping.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import BinaryIO, Mapping

__all__ = ["TcpdumpRecorder", "TcpdumpFailed", "bpf_filter", "find_tcpdump"]

# Frames tcpdump's ring holds: each packet on `lo` takes two (libpcap discards the
# outgoing copy only after the ring); 8192 is ~20 ms of the tightest ping-pong.
_RING_SLOTS = 8192
_MAX_BUFFER_KIB = 65536


class TcpdumpFailed(Exception):
    """tcpdump could not be run or did not start listening; the message says why."""


def bpf_filter(ports: tuple[int, ...], protocol: str | None, marker_port: int) -> str:
    """The tcpdump filter: the test's ports (both directions) plus our marker port."""
    marker = f"(udp and port {marker_port})"
    if not ports:
        return marker
    any_port = " or ".join(f"port {p}" for p in ports)
    test_traffic = f"({protocol} and ({any_port}))" if protocol else f"(tcp or udp) and ({any_port})"
    return f"({test_traffic}) or {marker}"


def _tcpdump_buffer_kib(snaplen: int) -> int:
    """The ring size (-B) giving :data:`_RING_SLOTS` slots of this snapshot length."""
    # A slot holds libpcap's headers (about 80 bytes, aligned) and at most MTU + 18 bytes.
    frame = min(snaplen, 65536 + 18) + 128
    slot = 2048
    while slot < frame:
        slot *= 2
    return min(_RING_SLOTS * slot // 1024, _MAX_BUFFER_KIB)


def find_tcpdump() -> str | None:
    # Unprivileged users often lack /usr/sbin in PATH, where older Debian put tcpdump.
    return shutil.which("tcpdump") or shutil.which("tcpdump", path="/usr/sbin:/sbin:/usr/local/sbin")


class TcpdumpRecorder:
    """A tcpdump process writing the pcap file; markers are found by scanning the file."""

    def __init__(self, executable: str, path: Path, bpf_filter: str, snaplen: int, env: Mapping[str, str] | None = None) -> None:
        self.command = [
            executable, "-i", "lo", "-n",
            "--immediate-mode",  # deliver each packet now, not when a buffer block fills
            "-U",  # write each packet to the file as it arrives, so markers show at once
            "-B", str(_tcpdump_buffer_kib(snaplen)), "-s", str(snaplen), "-w", str(path), bpf_filter,
        ]  # fmt: skip
        self.path = path
        # Extra environment: a run capture passes the run marker, so the watchdog
        # that cleans up after a killed pytest stops this tcpdump too.
        self._env = {**os.environ, **env} if env else None
        self.dropped: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr = b""
        self._scan_file: BinaryIO | None = None
        self._scan_tail = b""
        self._seen: set[bytes] = set()
        self._expected: set[bytes] = set()

    def start(self, timeout: float) -> None:
        try:
            # A session of its own: a Ctrl-C at the terminal reaches pytest, whose
            # teardown stops the capture in order, not tcpdump mid-test.
            self._proc = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, start_new_session=True, env=self._env,
            )  # fmt: skip
        except OSError as exc:
            raise TcpdumpFailed(f"cannot run {self.command[0]}: {exc}") from exc
        self._read_stderr_until(b"listening on", timeout)

    def _read_stderr_until(self, needle: bytes, timeout: float) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self._proc.stderr, selectors.EVENT_READ)
            while needle not in self._stderr:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TcpdumpFailed(f"tcpdump did not start listening within {timeout:g} s: {self._stderr_text()}")
                if not selector.select(remaining):
                    continue
                chunk = os.read(self._proc.stderr.fileno(), 4096)
                if not chunk:  # tcpdump exited: its stderr says why
                    self._proc.wait(timeout=max(remaining, 1.0))
                    raise TcpdumpFailed(self.failure() or "tcpdump closed its stderr")
                self._stderr += chunk

    def expect(self, token: bytes) -> None:
        self._expected.add(token)
        # Everything already in the file was written before the marker is sent: skip it.
        if self._scan_file is not None:
            self._scan_file.seek(0, os.SEEK_END)
            self._scan_tail = b""

    def wait_for(self, token: bytes, timeout: float) -> bool:
        if self._scan(token):
            return True
        assert self._proc is not None
        try:
            self._proc.wait(timeout=timeout)  # a poll that ends early if tcpdump dies
        except subprocess.TimeoutExpired:
            pass
        return self._scan(token)

    def _scan(self, token: bytes) -> bool:
        if token in self._seen:
            return True
        if self._scan_file is None:
            try:
                self._scan_file = open(self.path, "rb")  # noqa: SIM115 (closed in stop)
            except FileNotFoundError:
                return False
        chunk = self._scan_file.read()
        if chunk:
            window = self._scan_tail + chunk
            self._seen.update(t for t in self._expected if t in window)
            # Keep enough of the end to find a token split across two reads.
            self._scan_tail = window[-max(len(t) for t in self._expected) :]
        return token in self._seen

    def failure(self) -> str | None:
        if self._proc is None or self._proc.poll() is None:
            return None
        return f"tcpdump exited with status {self._proc.returncode}: {self._stderr_text()}"

    def stop(self, timeout: float) -> None:
        if self._scan_file is not None:
            self._scan_file.close()
            self._scan_file = None
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            # SIGINT makes tcpdump flush the file and print its statistics.
            proc.send_signal(signal.SIGINT)
        try:
            _, rest = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, rest = proc.communicate(timeout=timeout)
        self._stderr += rest or b""
        match = re.search(rb"(\d+) packets? dropped by kernel", self._stderr)
        self.dropped = int(match.group(1)) if match else None

    def _stderr_text(self) -> str:
        # One line, without tcpdump's "tcpdump: " prefixes: it ends up in a skip reason.
        lines = self._stderr.decode(errors="replace").splitlines()
        text = " ".join(line.removeprefix("tcpdump: ").strip() for line in lines if line.strip())
        hint = ""
        if "ermission denied" in text and not str(self.path).endswith(".pcap"):
            hint = " (an AppArmor profile may only let tcpdump write files named *.pcap)"
        return (text or "(no output)") + hint
