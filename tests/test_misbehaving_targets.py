"""Bad targets get a clear message in bounded time, and leave nothing behind.

Each program of ``fixtures/misbehaving/`` breaks one rule of being a target.
The ``run_marker`` fixture fails a test if any process it started survives
the pytest run (the daemon of forks_children.py included).
"""

from __future__ import annotations

import time

import pytest

from conftest import FIXTURES

BAD = FIXTURES / "misbehaving"


def declare(pytester: pytest.Pytester, script: str, *, startup_timeout: float = 2.0, extra: str = "") -> None:
    pytester.makefile(
        ".toml",
        netlab=f'[targets.bad]\ncommand = "{{python}} {BAD / script} {{host}} {{port}}{extra}"\n'
        f'suites = ["tcp-echo"]\nstartup_timeout = {startup_timeout}\n'
        f'[targets.good]\ncommand = "{{python}} {FIXTURES / "tcp_echo" / "reference.py"} {{host}} {{port}}"\nsuites = ["tcp-echo"]\n',
    )


def run_bad(pytester: pytest.Pytester, *checks: str, also_good: bool = False) -> tuple[pytest.RunResult, float]:
    args = ["--netlab-target=bad"] + (["--netlab-target=good"] if also_good else [])
    args += [f"--netlab-check={c}" for c in checks or ("tcp-echo/echo/byte-exact",)]
    started = time.monotonic()
    result = pytester.runpytest_subprocess(*args, "-p", "no:cacheprovider")
    return result, time.monotonic() - started


def test_exits_at_once_shows_status_and_stderr(pytester: pytest.Pytester, run_marker: str) -> None:
    declare(pytester, "exits_at_once.py")
    result, _ = run_bad(pytester, also_good=True)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*problem:    target bad exited with status 3 before it was ready*", "*stderr*"])
    result.assert_outcomes(passed=1, failed=1)  # the good target in the same run is not affected


def test_never_listens_times_out_once_not_per_check(pytester: pytest.Pytester, run_marker: str) -> None:
    declare(pytester, "never_listens.py", startup_timeout=1.0)
    result, elapsed = run_bad(pytester, "tcp-echo/*")
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        ["*target bad was not ready after 1.0 s: waited for a socket listening on TCP 127.0.0.1:*; it is still running but listens on no port at all*"]
    )
    result.stdout.fnmatch_lines(["*(when first started; not retried)*"])
    assert elapsed < 20, f"13 checks of a target that never listens took {elapsed:.1f} s"


def test_wrong_port_names_where_it_listens(pytester: pytest.Pytester, run_marker: str) -> None:
    declare(pytester, "wrong_port.py")
    result, _ = run_bad(pytester)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*was not ready after 2.0 s*it listens on tcp 127.0.0.1:* instead*"])


def test_crash_on_connect_is_reported_with_its_traceback(pytester: pytest.Pytester, run_marker: str) -> None:
    declare(pytester, "crash_on_connect.py")
    result, _ = run_bad(pytester)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*exited with status 1*", "*Traceback*"])


def test_hang_is_called_a_stall_at_once_with_the_transcript(pytester: pytest.Pytester, run_marker: str) -> None:
    declare(pytester, "hangs.py")
    result, elapsed = run_bad(pytester)
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "*problem:    the target went idle without sending the echo of*",
            "*got:*silence: the target's 1 thread slept 0.* s without running once, waiting in calls without a timeout, no timer armed, with 15 bytes of ours unread in its receive queue*",
            "*transcript: *c->s b'Hello, netlab!*",
        ]
    )
    # "slept 0.x s": the check ended on the stall, not on its 3 s timeout.
    assert elapsed < 30


def test_a_hang_that_keeps_running_is_judged_by_the_timeout(pytester: pytest.Pytester, run_marker: str) -> None:
    # Waking every 50 ms, it is never proven stalled: the check waits out its 3 s.
    declare(pytester, "hangs_polling.py")
    result, _ = run_bad(pytester)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*problem:    timed out after 3.0 s waiting for the echo of*", "*got:*nothing, then silence"])


def test_output_flood_is_capped_and_the_checks_still_run(pytester: pytest.Pytester, run_marker: str) -> None:
    declare(pytester, "floods_output.py", startup_timeout=30.0)
    result, elapsed = run_bad(pytester)
    assert result.ret == 0, result.stdout.str()[-3000:]
    result.assert_outcomes(passed=1)
    assert elapsed < 60


def test_ignoring_sigterm_fails_that_check_and_is_killed(pytester: pytest.Pytester, run_marker: str) -> None:
    declare(pytester, "ignores_sigterm.py")
    result, elapsed = run_bad(pytester, "tcp-echo/common/sigterm", "tcp-echo/echo/byte-exact")
    result.stdout.fnmatch_lines(["*the target ignores SIGTERM (SIG_IGN)*", "*got:*still running, with SIGTERM set to SIG_IGN*"])
    result.assert_outcomes(passed=1)  # byte-exact passes; sigterm is a SHOULD, reported as unmet
    assert elapsed < 30


def test_forked_daemons_do_not_outlive_the_run(pytester: pytest.Pytester, run_marker: str) -> None:
    declare(pytester, "forks_children.py")
    result, _ = run_bad(pytester)
    assert result.ret == 0
    # run_marker's teardown asserts that the double-forked daemon is gone.


def test_missing_argument_shows_the_usage_line(pytester: pytest.Pytester, run_marker: str) -> None:
    declare(pytester, "needs_placeholder.py")
    result, _ = run_bad(pytester)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*target bad exited with status 2 before it was ready*", "*usage*"])


def test_command_not_found_is_a_clear_target_failure(pytester: pytest.Pytester, run_marker: str) -> None:
    pytester.makefile(".toml", netlab='[targets.bad]\ncommand = "no-such-server-program {host} {port}"\nsuites = ["tcp-echo"]\n')
    result, _ = run_bad(pytester)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*target bad could not be started: *no-such-server-program*"])
