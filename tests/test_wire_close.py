"""A FIN followed by an RST: invisible to the socket API, caught on the wire (suites/wire_close.py)."""

from __future__ import annotations

import pytest

from pytest_netlab.run_capture import RunCapture

from conftest import FIXTURES

FIN_THEN_RESET = f"--netlab-target={{python}} {FIXTURES / 'framed' / 'fin_then_reset.py'} {{host}} {{port}}"
ARGS = (FIN_THEN_RESET, "--netlab-suite=framed", "--netlab-check=*/zero-length-end", "-p", "no:cacheprovider")


@pytest.mark.skipif(RunCapture.unavailable_reason() is not None, reason=f"capture unavailable: {RunCapture.unavailable_reason()}")
def test_with_capture_the_reset_after_the_fin_fails(pytester: pytest.Pytester, run_marker: str) -> None:
    result = pytester.runpytest_subprocess(*ARGS)
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "*the target sent its FIN after the zero-length message, then reset the connection (RST)*",
            "*expected:*FIN, and nothing after it but ACKs*",
            "*got:*RST at t=*",
            "*server -> client*[[]RST*",
        ]
    )


def test_without_capture_the_socket_api_sees_an_orderly_close(pytester: pytest.Pytester, run_marker: str) -> None:
    # The limit the capture removes: recv() returned b'' for the FIN, the RST came later.
    result = pytester.runpytest_subprocess(*ARGS, "--netlab-capture=off")
    assert result.ret == 0, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines(["netlab capture: off", "*1 passed*"])
