"""The plugin as a user drives it: targets, verdicts, exit statuses, messages."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from conftest import FIXTURES

ECHO = FIXTURES / "tcp_echo"


def inline(script: str) -> str:
    return f"--netlab-target={{python}} {ECHO / script} {{host}} {{port}}"


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*args, "-p", "no:cacheprovider", "-rA")


def test_without_a_target_the_plugin_adds_nothing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_plain():\n    assert True\n")
    result = run(pytester)
    result.assert_outcomes(passed=1)
    assert "netlab" not in result.stdout.str().split("plugins:")[0]


def test_reference_passes_every_check(pytester: pytest.Pytester, run_marker: str) -> None:
    result = run(pytester, "--netlab-target=reference:tcp-echo", "-v")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "netlab: seed * (rerun with --netlab-seed=*)*",
            "*collected 13 items",
            "reference:tcp-echo::tcp-echo/echo/half-close PASSED*",
            "reference:tcp-echo  22/22 points  (13 passed)",
        ]
    )


def test_check_ids_work_with_k_and_globs(pytester: pytest.Pytester, run_marker: str) -> None:
    result = run(pytester, "--netlab-target=reference:tcp-echo", "-k", "tcp-echo/echo/byte-exact or binary", "-v")
    result.assert_outcomes(passed=2, deselected=11)
    result = run(pytester, "--netlab-target=reference:tcp-echo", "--netlab-check=tcp-echo/echo", "--netlab-skip=*/large-concurrent")
    result.assert_outcomes(passed=4)


def test_a_failed_must_teaches_and_exits_1(pytester: pytest.Pytester, run_marker: str) -> None:
    result = run(pytester, inline("reset_on_eof.py"), "--netlab-suite=tcp-echo", "--netlab-check=*/half-close", "--netlab-seed=77")
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "tcp-echo/echo/half-close FAILED (MUST): after the client's half-close, echoes everything, then closes with FIN",
            "  problem:    *",
            "  reference:  RFC 862; *",
            "  expected:   *",
            "  got:        *",
            "  hint:       *",
            "  transcript: *c->s <EOF> shutdown(SHUT_WR)*",
            "  reproduce:  pytest '--netlab-target={python} *reset_on_eof.py {host} {port}' --netlab-suite=tcp-echo --netlab-check=tcp-echo/echo/half-close --netlab-seed=77",
        ]
    )
    assert "Traceback" not in result.stdout.str()


def test_no_reuseaddr_is_caught_with_its_stderr(pytester: pytest.Pytester, run_marker: str) -> None:
    result = run(pytester, inline("no_reuseaddr.py"), "--netlab-suite=tcp-echo", "--netlab-check=*/reuseaddr")
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "*problem:    the target could not restart on port * right after being killed with a client connected",
            "*Address already in use*",
            "*hint:       set SO_REUSEADDR on the listening socket before bind()",
        ]
    )


def test_unmet_should_is_reported_but_fails_only_when_strict(pytester: pytest.Pytester, run_marker: str) -> None:
    args = (inline("single_threaded.py"), "--netlab-suite=tcp-echo", "--netlab-check=*/stalled-client")
    result = run(pytester, *args)
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "*netlab: unmet SHOULD checks*",
            "*tcp-echo/common/stalled-client SHOULD NOT MET (SHOULD)*",
            "*1 SHOULD unmet in*",
        ]
    )
    strict = run(pytester, *args, "--netlab-strict")
    assert strict.ret == 1
    strict.stdout.fnmatch_lines(["*tcp-echo/common/stalled-client FAILED (SHOULD)*"])


def test_expect_fail_turns_a_pass_into_an_error(pytester: pytest.Pytester, run_marker: str) -> None:
    pytester.makefile(
        ".toml",
        netlab=f'[targets.good]\ncommand = "{{python}} {ECHO / "reference.py"} {{host}} {{port}}"\n'
        'suites = ["tcp-echo"]\nexpect_fail = ["tcp-echo/echo/binary"]\nbug = "none really"\n',
    )
    result = run(pytester, "--netlab-target=good", "--netlab-check=*/binary")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*tcp-echo/echo/binary PASSED but good declares it in expect_fail*", "*bug: none really*"])


def test_ini_twin_sets_the_target(pytester: pytest.Pytester, run_marker: str) -> None:
    pytester.makeini("[pytest]\nnetlab_target = reference:tcp-echo\nnetlab_check = tcp-echo/echo/byte-exact\n")
    result = run(pytester)
    result.assert_outcomes(passed=1)


def test_running_server_skips_lifecycle_checks(pytester: pytest.Pytester, run_marker: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, str(ECHO / "reference.py"), "127.0.0.1", str(port)])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.02)
        result = run(pytester, f"--netlab-target=tcp://127.0.0.1:{port}", "--netlab-suite=tcp-echo")
    finally:
        server.terminate()
        server.wait(10)
    assert result.ret == 0
    result.assert_outcomes(passed=10, skipped=3)
    result.stdout.fnmatch_lines(["*SKIPPED*127.0.0.1:*is a running server: this check must start, stop or restart it*"])


def test_users_own_tests_use_the_fixtures(pytester: pytest.Pytester, run_marker: str) -> None:
    pytester.makepyfile(
        f"""
        def test_echo_with_fixtures(launch_server, scripted_client, netlab_transcript):
            server = launch_server("{{python}} {ECHO / 'reference.py'} {{host}} {{port}}")
            client = scripted_client(server.address, timeout=2.0)
            client.send(b"ping")
            assert client.recv_exactly(4) == b"ping"
            client.shutdown_write()
            assert client.read_until_close() == (b"", "eof")
            assert "c->s b'ping'" in netlab_transcript.excerpt()

        def test_target_fixture(netlab_target, scripted_client):
            client = scripted_client(netlab_target.address)
            client.send(b"x")
            assert client.recv_exactly(1) == b"x"
            netlab_target.restart()
            client = scripted_client(netlab_target.address)
            client.send(b"y")
            assert client.recv_exactly(1) == b"y"
        """
    )
    result = run(pytester, ".", "--netlab-target=reference:tcp-echo", "--netlab-check=tcp-echo/echo/byte-exact")
    result.assert_outcomes(passed=3)


def test_fixture_docs_show_examples(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--fixtures", "-v")
    result.stdout.fnmatch_lines(["launch_server*", "*Launch any command as an ephemeral server*", "*Example::*"])


def test_marker_picks_the_target_over_the_command_line(pytester: pytest.Pytester, run_marker: str) -> None:
    script = ECHO / "reset_on_eof.py"
    pytester.makefile(".toml", netlab=f'[targets.rst]\ncommand = "{{python}} {script} {{host}} {{port}}"\nsuites = ["tcp-echo"]\n')
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.netlab(target="rst")
        def test_pinned(netlab_target):
            assert "reset_on_eof.py" in " ".join(netlab_target.argv)

        def test_default(netlab_target):
            assert "reference.py" in " ".join(netlab_target.argv)
        """
    )
    result = run(pytester, ".", "--netlab-target=reference:tcp-echo", "--netlab-check=tcp-echo/echo/byte-exact")
    result.assert_outcomes(passed=3)
