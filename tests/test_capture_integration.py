"""Packet capture in a run: kept for failing checks, a ladder in the message, valid pcaps."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_netlab.run_capture import RunCapture

from conftest import FIXTURES

ECHO = FIXTURES / "tcp_echo"
needs_capture = pytest.mark.skipif(RunCapture.unavailable_reason() is not None, reason=f"capture unavailable: {RunCapture.unavailable_reason()}")


def inline(script: str) -> str:
    return f"--netlab-target={{python}} {ECHO / script} {{host}} {{port}}"


@needs_capture
def test_failing_half_close_shows_the_rst_and_keeps_a_pcap(pytester: pytest.Pytester, run_marker: str) -> None:
    result = pytester.runpytest_subprocess(
        inline("reset_on_eof.py"), "--netlab-suite=tcp-echo", "--netlab-check=*/half-close", "--netlab-report=r.json", "-p", "no:cacheprovider"
    )
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "netlab capture: on-failure (tcpdump on lo); pcaps of failing checks go to *netlab-artifacts",
            "*capture:    *netlab-artifacts/reset_on_eof.py/tcp-echo__echo__half-close.pcap (* packets; tshark -r or Wireshark opens it)",
            "*packets:",
            "*client* -> server*[[]SYN[]]*",
            "*server -> client*[[]RST*",
        ]
    )
    report = json.loads((pytester.path / "r.json").read_text())
    artifacts = report["targets"][0]["checks"][0]["artifacts"]
    pcap = Path(artifacts["pcap"])
    assert pcap.is_file() and Path(artifacts["transcript"]).is_file()
    if shutil.which("tshark"):
        shown = subprocess.run(["tshark", "-r", str(pcap)], capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and "RST" in shown.stdout


@needs_capture
def test_always_keeps_every_check_and_off_keeps_none(pytester: pytest.Pytester, run_marker: str) -> None:
    args = ["--netlab-target=reference:tcp-echo", "--netlab-check=tcp-echo/echo/*", "-p", "no:cacheprovider"]
    result = pytester.runpytest_subprocess(*args, "--netlab-capture=always")
    assert result.ret == 0
    kept = sorted(p.name for p in (pytester.path / "netlab-artifacts").rglob("*.pcap"))
    assert len(kept) == 5 and "tcp-echo__echo__half-close.pcap" in kept
    shutil.rmtree(pytester.path / "netlab-artifacts")
    result = pytester.runpytest_subprocess(*args, "--netlab-capture=off", inline_failure := inline("reset_on_eof.py"), "--netlab-suite=tcp-echo")
    assert inline_failure and result.ret == 1
    result.stdout.fnmatch_lines(["netlab capture: off"])
    assert not (pytester.path / "netlab-artifacts").exists()


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux) to drop capabilities")
def test_without_permission_the_run_passes_and_says_why(pytester: pytest.Pytester, run_marker: str) -> None:
    # Without CAP_NET_RAW and CAP_NET_ADMIN neither tcpdump nor an AF_PACKET
    # socket may capture: what a user without the permission gets.
    drop = ["setpriv", "--bounding-set=-net_raw,-net_admin", "--inh-caps=-net_raw,-net_admin", "--"]
    command = [*drop, sys.executable, "-m", "pytest", "--netlab-target=reference:tcp-echo", "--netlab-check=tcp-echo/echo/*", "-p", "no:cacheprovider"]
    result = subprocess.run(command, cwd=pytester.path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "netlab capture: off (packet capture is not permitted here" in result.stdout
    assert "to enable it, run the tests as root" in result.stdout
    assert "5 passed" in result.stdout
