"""Every mistake in options or netlab.toml is a usage error (exit 4) that names
the file, the target and the key, and lists what is valid."""

from __future__ import annotations

import pytest

USAGE_ERROR = 4


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*args, "-p", "no:cacheprovider")


def test_unknown_suite_lists_suites(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--netlab-target={python} srv.py {host} {port}", "--netlab-suite=tcp-ekko")
    assert result.ret == USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown suite 'tcp-ekko'; suites: *tcp-echo*"])


def test_inline_command_needs_a_suite(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--netlab-target={python} srv.py {host} {port}")
    assert result.ret == USAGE_ERROR
    result.stderr.fnmatch_lines(["*needs --netlab-suite to say what it implements (suites: *tcp-echo*"])


def test_unknown_placeholder_lists_known_ones(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--netlab-target={python} srv.py {hots} {port}", "--netlab-suite=tcp-echo")
    assert result.ret == USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown placeholder {hots}*known placeholders: {host} {port} {python}*"])


def test_placeholder_the_suite_does_not_provide(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--netlab-target={python} srv.py {host} {port} {certfile}", "--netlab-suite=tcp-echo")
    assert result.ret == USAGE_ERROR
    result.stderr.fnmatch_lines(["*uses {certfile}, which suite tcp-echo does not provide; it provides {host} {port} {python}*"])


def test_unknown_key_names_file_target_and_key(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", netlab='[targets.web]\ncomand = "{python} srv.py {host} {port}"\nsuites = ["tcp-echo"]\n')
    result = run(pytester, "--netlab-target=web")
    assert result.ret == USAGE_ERROR
    result.stderr.fnmatch_lines(["*netlab.toml [[]targets.web[]] key 'comand': unknown key; valid keys: command, address, suites*"])


def test_missing_command(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", netlab='[targets.web]\nsuites = ["tcp-echo"]\n')
    result = run(pytester, "--netlab-target=web")
    assert result.ret == USAGE_ERROR
    result.stderr.fnmatch_lines(["*netlab.toml [[]targets.web[]] key 'command': missing: every target needs a command*"])


def test_wrong_type(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", netlab='[targets.web]\ncommand = "{python} s.py {host} {port}"\nsuites = "tcp-echo"\n')
    result = run(pytester, "--netlab-target=web")
    assert result.ret == USAGE_ERROR
    result.stderr.fnmatch_lines(["*[[]targets.web[]] key 'suites': must be a list of suite names, not str 'tcp-echo'*"])


def test_invalid_toml(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", netlab="[targets.web\n")
    result = run(pytester, "--netlab-target=web")
    assert result.ret == USAGE_ERROR
    result.stderr.fnmatch_lines(["*netlab.toml: not valid TOML*"])


def test_unknown_target_name_lists_declared_ones(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", netlab='[targets.web]\ncommand = "{python} s.py {host} {port}"\nsuites = ["tcp-echo"]\n')
    result = run(pytester, "--netlab-target=wbe")
    assert result.ret == USAGE_ERROR
    result.stderr.fnmatch_lines(["*no target called 'wbe'*declared targets: web*"])


def test_no_checks_to_run_is_an_error_not_exit_5(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--netlab-target=reference:tcp-echo", "--netlab-check=tcp-echo/nothing/*")
    assert result.ret == USAGE_ERROR
    result.stderr.fnmatch_lines(["*no checks to run for target reference:tcp-echo*its checks: tcp-echo/common/reuseaddr*"])


def test_bad_option_value_names_the_option(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--netlab-target=reference:tcp-echo", "--netlab-seed=abc")
    assert result.ret == USAGE_ERROR
    result.stderr.fnmatch_lines(["*command line key '--netlab-seed': 'abc' is not a whole number*"])


def test_bad_ini_value_names_the_ini_file(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nnetlab_timeout_scale = fast\n")
    result = run(pytester, "--netlab-target=reference:tcp-echo")
    assert result.ret == USAGE_ERROR
    result.stderr.fnmatch_lines(["*tox.ini key 'netlab_timeout_scale': 'fast' is not a number*"])


def test_bad_address(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--netlab-target=tcp://localhost")
    assert result.ret == USAGE_ERROR
    result.stderr.fnmatch_lines(["*is not a valid address; use tcp://HOST:PORT*"])


def test_glob_matching_nothing(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--netlab-target=submissions/*")
    assert result.ret == USAGE_ERROR
    result.stderr.fnmatch_lines(["*the glob 'submissions/[*]' matches no directory*"])
