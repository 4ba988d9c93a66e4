"""Tests of pytest_netlab.process: starting, watching and killing untrusted targets.

Real processes throughout (the misbehaving catalogue in fixtures/misbehaving and
small ``python -c`` programs); every process a test starts is terminated by the
``launch`` fixture or a ``finally``, also when the test fails.
"""

from __future__ import annotations

import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from pytest_netlab._child_setup import confine, needs_preexec
from pytest_netlab._process_tree import PidsCgroup, children, find_marked
from pytest_netlab.process import (
    CappedLog,
    ExitStatus,
    LaunchError,
    ManagedProcess,
    Reaper,
    ResourceLimits,
    kill_marked,
    scrubbed_environment,
)

ROOT = Path(__file__).resolve().parent.parent
MISBEHAVING = ROOT / "fixtures" / "misbehaving"
LISTENING = re.compile(r"listening on \S+:(\d+)")
DAEMON = re.compile(r"daemon pid (\d+)")
MIB = 2**20

Launcher = Callable[..., ManagedProcess]


def misbehaving(name: str, *extra: str) -> list[str]:
    return [sys.executable, str(MISBEHAVING / name), "127.0.0.1", "0", *extra]


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] != b"Z"


def eventually(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes (for things no event announces)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def child_environment() -> dict[str, str]:
    """Our environment, plus the path that makes pytest_netlab importable in a child."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH"))))
    return env


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launcher]:
    """Start processes in tmp_path with a scrubbed environment; terminate them all afterwards."""
    started: list[ManagedProcess] = []

    def start(argv: list[str], **options: object) -> ManagedProcess:
        options.setdefault("cwd", tmp_path)
        options.setdefault("env", scrubbed_environment({}, home=tmp_path, tmpdir=tmp_path))
        process = ManagedProcess.start(argv, **options)  # type: ignore[arg-type]
        started.append(process)
        return process

    yield start
    for process in started:
        process.terminate(grace=0.5)


def wait_listening(process: ManagedProcess) -> int:
    match = process.stdout.wait_for(LISTENING, 30, lambda: process.running)
    assert match, process.describe()
    return int(match.group(1))


def echo_once(port: int, payload: bytes = b"hello") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
        return received


# --- start, stop, exit status ----------------------------------------------------


def test_normal_program_serves_and_stops_on_sigterm(launch: Launcher) -> None:
    process = launch([sys.executable, str(MISBEHAVING / "_echo.py"), "127.0.0.1", "0"])
    assert echo_once(wait_listening(process)) == b"hello"
    assert process.running

    status = process.terminate()

    assert status == ExitStatus(-signal.SIGTERM)
    assert status.describe() == "killed by signal 15 (SIGTERM)"
    assert not process.running and not alive(process.pid)
    assert process.terminate() is status  # idempotent


def test_program_exiting_by_itself_is_reported_not_killed(launch: Launcher) -> None:
    with launch(python("print('bye')")) as process:
        assert process.wait(30) == ExitStatus(0)
    assert process.terminate() == ExitStatus(0)
    assert process.stdout.text() == "bye\n"


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (ExitStatus(0), "exited with status 0"),
        (ExitStatus(1), "exited with status 1"),
        (ExitStatus(-11), "killed by signal 11 (SIGSEGV)"),
        (ExitStatus(-signal.SIGXCPU), "killed by signal 24 (SIGXCPU: CPU time limit exceeded)"),
        (ExitStatus(-9, escalated=True, grace=2.0), "killed by signal 9 (SIGKILL) after ignoring SIGTERM for 2.0 s"),
        (ExitStatus(-(signal.SIGRTMIN + 2)), f"killed by signal {signal.SIGRTMIN + 2} (SIGRTMIN+2)"),
    ],
)
def test_exit_status_descriptions(status: ExitStatus, text: str) -> None:
    assert status.describe() == text


def test_crash_by_signal_is_reported_with_its_name(launch: Launcher) -> None:
    process = launch(python("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"))
    status = process.wait(30)
    assert status == ExitStatus(-signal.SIGSEGV)
    assert "killed by signal 11 (SIGSEGV)" in process.describe()


def test_exits_at_once_is_an_exit_status_not_a_launch_error(launch: Launcher) -> None:
    process = launch(misbehaving("exits_at_once.py"))
    assert process.wait(30) == ExitStatus(3)
    description = process.describe()
    assert "exited with status 3" in description
    assert "cannot read configuration file 'server.conf'" in description


def test_missing_placeholder_shows_the_usage_line(launch: Launcher) -> None:
    process = launch(misbehaving("needs_placeholder.py"))
    assert process.wait(30) == ExitStatus(2)
    assert "usage:" in process.stderr.tail_lines(1)[0]


# --- launch errors -----------------------------------------------------------------


def _start_error(argv: list[str], cwd: Path, run_marker: str) -> str:
    with pytest.raises(LaunchError) as caught:
        ManagedProcess.start(argv, cwd=cwd, env={"PATH": "/usr/bin:/bin"}, run_marker=run_marker)
    return str(caught.value)


def test_launch_errors_say_what_is_wrong(tmp_path: Path) -> None:
    run = unique("launch")
    not_executable = tmp_path / "server.py"
    not_executable.write_text("print('hi')\n")
    lost_interpreter = tmp_path / "old.py"
    lost_interpreter.write_text("#!/nonexistent/python2.4\nprint 'hi'\n")
    lost_interpreter.chmod(0o755)
    not_a_program = tmp_path / "notes.txt"
    not_a_program.write_text("just some text\n")
    not_a_program.chmod(0o755)

    message = _start_error(["netlab-no-such-command"], tmp_path, run)
    assert "netlab-no-such-command: command not found (looked in PATH=/usr/bin:/bin)" in message
    assert "no such file" in _start_error(["./missing.py"], tmp_path, run)
    assert "server.py is not executable (mode -rw-r--r--)" in _start_error(["./server.py"], tmp_path, run)
    assert "interpreter '/nonexistent/python2.4'" in _start_error(["./old.py"], tmp_path, run)
    assert "not a program" in _start_error(["./notes.txt"], tmp_path, run)
    assert "is a directory" in _start_error([str(tmp_path)], tmp_path, run)
    assert f"working directory {tmp_path / 'gone'} does not exist" in _start_error(
        [sys.executable, "-c", "pass"], tmp_path / "gone", run
    )
    assert "empty command" in _start_error([], tmp_path, run)
    assert PidsCgroup.of_run(run) == []  # no cgroup left behind by a failed start


def test_bad_marker_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid marker 'a b'"):
        ManagedProcess.start([sys.executable, "-c", "pass"], cwd=tmp_path, env={}, marker="a b")


# --- capped logs and wait_for --------------------------------------------------------


def _pipe_log(head: int, tail: int) -> tuple[CappedLog, int]:
    read_end, write_end = os.pipe()
    return CappedLog(os.fdopen(read_end, "rb", buffering=0), name="stdout", head=head, tail=tail), write_end


def test_capped_log_keeps_head_and_tail_and_counts_the_rest() -> None:
    log, write_end = _pipe_log(head=10, tail=20)
    payload = bytes(range(48, 58)) * 10_000  # 100,000 bytes of digits
    try:
        os.write(write_end, payload[:50_000])
        os.write(write_end, payload[50_000:])
    finally:
        os.close(write_end)
        log.close()
    assert log.total_bytes == 100_000 and log.truncated
    dropped = 100_000 - 30
    assert log.text() == "0123456789" + f"\n[... {dropped} bytes dropped ...]\n" + "01234567890123456789"


def test_capped_log_small_output_is_whole_and_long_lines_are_cut() -> None:
    log, write_end = _pipe_log(head=8, tail=4096)
    try:
        os.write(write_end, "first line é\n".encode() + b"y" * 1000 + b"\nlast")
    finally:
        os.close(write_end)
        log.close()
    assert not log.truncated
    assert log.text().startswith("first line é\nyyy")
    assert log.tail_lines(2) == ["y" * 200 + "...", "last"]


def test_capped_log_close_returns_while_a_writer_keeps_the_pipe_open() -> None:
    log, write_end = _pipe_log(head=8, tail=8)
    try:
        os.write(write_end, b"partial")
        log.close(drain_timeout=0.1)
        # closed: waiting is over at once, whatever still_alive says
        assert log.wait_for(re.compile("never"), 30, lambda: True) is None
        assert log.text() == "partial"
    finally:
        os.close(write_end)


def test_wait_for_returns_the_first_matching_line(launch: Launcher) -> None:
    process = launch(python("""
        import time
        print('booting')
        print('ready on port 4242')
        print('ready on port 9999')
        time.sleep(60)
    """))
    match = process.stdout.wait_for(re.compile(r"ready on port (\d+)$"), 30, lambda: process.running)
    assert match is not None and match.group(1) == "4242"


def test_wait_for_matches_an_unfinished_line(launch: Launcher) -> None:
    process = launch(python("""
        import sys, time
        sys.stdout.write('prompt> ')
        sys.stdout.flush()
        time.sleep(60)
    """))
    assert process.stdout.wait_for(re.compile(r"prompt> $"), 30, lambda: process.running)


def test_wait_for_times_out_on_a_program_that_never_says_it(launch: Launcher) -> None:
    process = launch(misbehaving("never_listens.py"))
    assert process.stdout.wait_for(re.compile("starting"), 30, lambda: process.running)
    assert process.stdout.wait_for(LISTENING, 0.3, lambda: process.running) is None
    assert process.running


def test_wait_for_gives_up_when_the_program_dies(launch: Launcher) -> None:
    process = launch(misbehaving("exits_at_once.py"))
    started = time.monotonic()
    assert process.stdout.wait_for(LISTENING, 60, lambda: process.running) is None
    assert time.monotonic() - started < 30  # it did not sit out the 60 s timeout


def test_wait_for_gives_up_when_the_program_dies_but_a_child_holds_the_pipe(launch: Launcher) -> None:
    process = launch(python("""
        import os, time
        if os.fork() == 0:
            time.sleep(60)  # keeps stdout open after its parent exited
    """))
    started = time.monotonic()
    assert process.stdout.wait_for(LISTENING, 60, lambda: process.running) is None
    assert time.monotonic() - started < 30
    assert process.poll() == ExitStatus(0)


def test_wait_gives_the_pipes_their_last_words_once_when_a_child_holds_them(launch: Launcher) -> None:
    process = launch(python("""
        import os, time
        print('bye', flush=True)
        if os.fork() == 0:
            time.sleep(60)  # keeps stdout and stderr open after its parent exited
    """))
    assert process.wait(30) == ExitStatus(0)  # waits up to _LAST_WORDS per pipe for an EOF that does not come
    assert process.stdout.text() == "bye\n"
    started = time.monotonic()
    for _ in range(5):
        assert process.wait(30) == ExitStatus(0)
    assert time.monotonic() - started < 0.2  # not 5 x 2 x 0.25 s again


# --- misbehaving targets --------------------------------------------------------------


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def test_flooding_target_is_drained_with_bounded_memory_then_serves(launch: Launcher) -> None:
    peak_before = _peak_rss_bytes()
    process = launch(misbehaving("floods_output.py"), log_head=8192, log_tail=65536)

    # Nobody waits on stdout while it floods (the plugin's usual tcp probe);
    # the "listening" line comes only after the whole GiB went through the pipe.
    assert eventually(lambda: process.stdout.total_bytes > 2**30 or not process.running, timeout=120)
    port = wait_listening(process)

    assert process.stdout.total_bytes > 2**30
    assert process.stdout.truncated
    assert len(process.stdout.text()) < 8192 + 65536 + 100
    assert _peak_rss_bytes() - peak_before < 64 * MIB
    assert echo_once(port) == b"hello"
    assert process.terminate() == ExitStatus(-signal.SIGTERM)


def test_output_pipes_are_widened_so_a_flood_drains_in_fewer_wakeups(launch: Launcher) -> None:
    process = launch(python("""
        import fcntl, sys, time
        deadline = time.monotonic() + 10  # the parent widens the pipes just after the start
        sizes = lambda: [fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) for fd in (1, 2)]
        while sizes() != [256 * 1024] * 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        print(*sizes(), flush=True)
    """))
    assert process.wait(30) == ExitStatus(0), process.describe()
    assert process.stdout.text() == "262144 262144\n"


def test_flooding_target_is_terminated_mid_flood(launch: Launcher) -> None:
    process = launch(misbehaving("floods_output.py"))
    assert process.stdout.wait_for(re.compile(r"flooded 128 MiB"), 60, lambda: process.running)

    status = process.terminate(grace=5.0)

    assert status == ExitStatus(-signal.SIGTERM)  # not blocked on a full pipe: SIGTERM was enough
    assert process.stdout.total_bytes >= 128 * MIB
    assert "flooded" not in process.stderr.text()
    assert len(process.describe()) < 15 * 210 * 2 + 500


def test_target_ignoring_sigterm_is_killed_without_waiting(launch: Launcher) -> None:
    process = launch(misbehaving("ignores_sigterm.py"))
    assert echo_once(wait_listening(process)) == b"hello"

    started = time.monotonic()
    status = process.terminate(grace=30.0)

    # SIG_IGN is visible in /proc: waiting out the grace period would change nothing.
    assert time.monotonic() - started < 20.0
    assert status == ExitStatus(-signal.SIGKILL, escalated=True, grace=None)
    assert status.describe() == "killed by signal 9 (SIGKILL) after ignoring SIGTERM"
    assert not alive(process.pid)


def test_target_with_a_sigterm_handler_that_stays_is_killed_after_the_grace_period(launch: Launcher) -> None:
    process = launch(
        python(
            """
            import signal, time
            signal.signal(signal.SIGTERM, lambda *_: print("caught", flush=True))
            print("ready", flush=True)
            time.sleep(60)
            """
        )
    )
    assert process.stdout.wait_for(re.compile("ready"), 30, lambda: process.running)

    status = process.terminate(grace=0.5)

    assert status == ExitStatus(-signal.SIGKILL, escalated=True, grace=0.5)
    assert status.describe() == "killed by signal 9 (SIGKILL) after ignoring SIGTERM for 0.5 s"
    assert not alive(process.pid)


def test_zero_grace_kills_at_once_without_sigterm(launch: Launcher) -> None:
    process = launch(misbehaving("ignores_sigterm.py"))
    wait_listening(process)
    assert process.terminate(grace=0) == ExitStatus(-signal.SIGKILL)


@pytest.mark.parametrize("use_cgroup", [True, False], ids=["cgroup-if-any", "markers-only"])
def test_double_forked_daemon_is_killed_too(launch: Launcher, use_cgroup: bool) -> None:
    process = launch(misbehaving("forks_children.py"), use_cgroup=use_cgroup)
    wait_listening(process)
    daemon_line = process.stdout.wait_for(DAEMON, 30, lambda: process.running)
    assert daemon_line, process.describe()
    daemon = int(daemon_line.group(1))
    assert os.getsid(daemon) != process.pid  # it left the target's session
    assert {process.pid, daemon} <= set(find_marked(process.marker))

    process.terminate()

    assert find_marked(process.marker) == []
    assert not alive(daemon)


def test_crash_on_connect_leaves_a_traceback(launch: Launcher) -> None:
    process = launch(misbehaving("crash_on_connect.py"))
    port = wait_listening(process)
    with socket.create_connection(("127.0.0.1", port), timeout=10):
        status = process.wait(30)
    assert status == ExitStatus(1)
    assert "RuntimeError: unexpected client" in process.describe()


# --- isolation: environment, limits, signals, cgroup -----------------------------------


def test_scrubbed_environment_keeps_only_what_it_should(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NETLAB_TEST_SECRET", "hunter2")
    monkeypatch.setenv("LANG", "C.UTF-8")
    env = scrubbed_environment({"PATH": "/opt/bin", "MODE": "fast"}, home=tmp_path / "h", tmpdir=tmp_path / "t")
    assert "NETLAB_TEST_SECRET" not in env
    assert env["LANG"] == "C.UTF-8"
    assert env["PATH"] == "/opt/bin"  # the declared environment wins
    assert env["HOME"] == str(tmp_path / "h") and env["TMPDIR"] == str(tmp_path / "t")
    assert env["PYTHONUNBUFFERED"] == "1" and env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert set(env) <= {"PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM", "HOME", "TMPDIR", "MODE",
                        "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}


def test_target_sees_the_scrubbed_environment_and_its_markers(
    monkeypatch: pytest.MonkeyPatch, launch: Launcher, tmp_path: Path
) -> None:
    monkeypatch.setenv("NETLAB_TEST_SECRET", "hunter2")
    run = unique("envrun")
    process = launch(python("import json, os; print(json.dumps(dict(os.environ)))"), run_marker=run)
    assert process.wait(30) == ExitStatus(0)
    seen = json.loads(process.stdout.text())
    assert "NETLAB_TEST_SECRET" not in seen
    assert seen["NETLAB_MARKER"] == process.marker and seen["NETLAB_RUN"] == run
    assert seen["HOME"] == str(tmp_path)


def test_run_marker_comes_from_keyword_then_env_then_our_environment(
    monkeypatch: pytest.MonkeyPatch, launch: Launcher, tmp_path: Path
) -> None:
    monkeypatch.setenv("NETLAB_RUN", "from-os-environ")
    code = python("import os; print(os.environ.get('NETLAB_RUN'))")
    given = {"NETLAB_RUN": "from-env"}
    cases = [
        (launch(code, env=given, run_marker="from-keyword"), "from-keyword"),
        (launch(code, env=given), "from-env"),
        (launch(code, env={}), "from-os-environ"),
    ]
    for process, expected in cases:
        assert process.wait(30) == ExitStatus(0)
        assert process.stdout.text().strip() == expected
        assert process.run_marker == expected


@pytest.mark.parametrize("die_with_parent", [True, False], ids=["preexec", "vfork-then-confine"])
def test_resource_limits_are_applied(launch: Launcher, die_with_parent: bool) -> None:
    limits = ResourceLimits(cpu_seconds=30, memory_bytes=1024 * MIB, processes=64, file_size_bytes=MIB, open_files=100)
    process = launch(["sleep", "60"], limits=limits, die_with_parent=die_with_parent)
    table = Path(f"/proc/{process.pid}/limits").read_text()

    def limit(name: str) -> list[str]:
        line = next(line for line in table.splitlines() if line.startswith(name))
        return line[len(name):].split()[:2]

    assert limit("Max cpu time") == ["30", "31"]
    assert limit("Max address space") == [str(1024 * MIB)] * 2
    assert limit("Max processes") == ["64", "64"]
    assert limit("Max file size") == [str(MIB)] * 2
    assert limit("Max open files") == ["100", "100"]
    assert limit("Max core file size") == ["0", "0"]


def test_file_size_limit_stops_a_python_writer_with_efbig(launch: Launcher, tmp_path: Path) -> None:
    # Python ignores SIGXFSZ, so the oversized write fails with EFBIG instead.
    process = launch(python("""
        import sys
        try:
            with open('big', 'wb') as f:
                f.write(b'x' * (2 * 2**20))
        except OSError as error:
            print('errno', error.errno, flush=True)
            sys.exit(27)
    """), limits=ResourceLimits(file_size_bytes=MIB))
    status = process.wait(30)
    assert status in (ExitStatus(27), ExitStatus(-signal.SIGXFSZ)), process.describe()
    if status.returncode == 27:
        assert process.stdout.text() == "errno 27\n"  # EFBIG
    assert (tmp_path / "big").stat().st_size <= MIB


def test_file_size_limit_kills_a_native_writer_with_sigxfsz(launch: Launcher, tmp_path: Path) -> None:
    process = launch(["dd", "if=/dev/zero", "of=big", "bs=64K", "count=32"], limits=ResourceLimits(file_size_bytes=MIB))
    status = process.wait(30)
    assert status == ExitStatus(-signal.SIGXFSZ), process.describe()
    assert "SIGXFSZ: file size limit exceeded" in status.describe()
    assert not list(tmp_path.glob("core*"))  # core dumps are off


@pytest.mark.parametrize("die_with_parent", [True, False], ids=["preexec", "vfork-then-confine"])
def test_inherited_ignored_sigint_is_reset_for_the_target(launch: Launcher, die_with_parent: bool) -> None:
    # A pytest started as a background shell job has SIGINT ignored.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        process = launch(["sleep", "60"], die_with_parent=die_with_parent)
    finally:
        signal.signal(signal.SIGINT, previous)
    status_lines = Path(f"/proc/{process.pid}/status").read_text().splitlines()
    ignored = int(next(line for line in status_lines if line.startswith("SigIgn:")).split()[1], 16)
    assert not ignored & (1 << (signal.SIGINT - 1))
    process.send_signal(signal.SIGINT)
    assert process.wait(30) == ExitStatus(-signal.SIGINT)


@pytest.mark.parametrize("die_with_parent", [True, False], ids=["preexec", "vfork-then-confine"])
def test_pids_cgroup_caps_forks_even_for_root(launch: Launcher, die_with_parent: bool) -> None:
    process = launch(python("""
        import os, time
        forked = 0
        for _ in range(40):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            forked += 1
        print('forked', forked, flush=True)
        time.sleep(60)
    """), limits=ResourceLimits(processes=10), die_with_parent=die_with_parent)
    group = process.cgroup
    if group is None:
        pytest.skip("no writable cgroup-v1 pids hierarchy here (needs root or delegation)")
    match = process.stdout.wait_for(re.compile(r"forked (\d+)"), 30, lambda: process.running)
    assert match, process.describe()
    assert int(match.group(1)) < 10
    assert (group / "pids.max").read_text().strip() == "10"

    process.terminate()

    assert not group.exists()
    assert find_marked(process.marker) == []


def test_confine_reaches_children_forked_before_it(tmp_path: Path) -> None:
    # What a vfork'ed target may do before the parent confines it: fork at once.
    script = "import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n        time.sleep(60)\n        os._exit(0)\nprint('forked', flush=True)\ntime.sleep(60)\n"
    popen = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, start_new_session=True)
    group = PidsCgroup.create("", max_pids=20)
    try:
        assert popen.stdout is not None and popen.stdout.readline() == b"forked\n"
        family = [popen.pid, *children(popen.pid)]
        assert len(family) == 4

        confine(popen.pid, ResourceLimits(open_files=77).rlimits(), group)

        for pid in family:
            assert "Max open files            77                   77" in Path(f"/proc/{pid}/limits").read_text()
        if group is not None:
            assert sorted(group.members()) == sorted(family)
    finally:
        os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(10)
        popen.stdout.close()  # type: ignore[union-attr]
        if group is not None:
            group.remove()


def test_confine_skips_a_child_that_is_gone() -> None:
    popen = subprocess.Popen(["true"])
    popen.wait(10)  # a zombie: nothing left to confine, and no error
    confine(popen.pid, ResourceLimits().rlimits(), None)


def test_a_child_is_prepared_in_preexec_when_the_parent_ignores_or_blocks_signals() -> None:
    assert needs_preexec(die_with_parent=True)
    inherited = {sig: signal.signal(sig, signal.SIG_DFL) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        assert not needs_preexec(die_with_parent=False)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        assert needs_preexec(die_with_parent=False)  # a vfork'ed child would keep SIGHUP ignored
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
        try:
            assert needs_preexec(die_with_parent=False)  # ... and the blocked mask
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGUSR1])
    finally:
        for sig, handler in inherited.items():
            signal.signal(sig, handler)


# --- kill_marked ------------------------------------------------------------------------


def test_kill_marked_kills_every_carrier_and_only_them(launch: Launcher) -> None:
    run = unique("killrun")
    sleeper = ["sleep", "60"]
    marked = [launch(sleeper, run_marker=run), launch(sleeper, run_marker=run)]
    bystander = launch(sleeper, run_marker=unique("other"))

    killed = kill_marked(run)

    assert sorted(killed) == sorted(process.pid for process in marked)
    for process in marked:
        assert process.wait(30) == ExitStatus(-signal.SIGKILL)
    assert bystander.running
    assert kill_marked(bystander.marker, signal.SIGTERM) == [bystander.pid]
    assert bystander.wait(30) == ExitStatus(-signal.SIGTERM)


def test_kill_marked_never_signals_its_own_process() -> None:
    marker = unique("self")
    env = child_environment()
    env["NETLAB_MARKER"] = marker
    result = subprocess.run(
        [sys.executable, "-c", f"from pytest_netlab.process import kill_marked; print(kill_marked({marker!r}))"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- abandonment: PDEATHSIG and the Reaper -------------------------------------------------

ABANDONING_PARENT = """
import os, re, sys
from pathlib import Path
from pytest_netlab.process import ManagedProcess, Reaper, scrubbed_environment

run, workdir, program, with_reaper = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "reaper"
if with_reaper:
    Reaper.start(run, [workdir])
env = scrubbed_environment({}, home=workdir, tmpdir=workdir)
process = ManagedProcess.start([sys.executable, program, "127.0.0.1", "0"], cwd=workdir, env=env, run_marker=run)
daemon = process.stdout.wait_for(re.compile(r"daemon pid (\\d+)"), 30, lambda: process.running)
print(process.pid, daemon.group(1) if daemon else 0, flush=True)
os._exit(1)  # as pytest-timeout does: no cleanup at all
"""


def _abandon(tmp_path: Path, run: str, workdir: Path, with_reaper: bool) -> tuple[int, int, str]:
    script = tmp_path / "abandoning_parent.py"
    script.write_text(ABANDONING_PARENT)
    result = subprocess.run(
        [sys.executable, str(script), run, str(workdir), str(MISBEHAVING / "forks_children.py"),
         "reaper" if with_reaper else "none"],
        env=child_environment(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1, result.stderr
    main, daemon = map(int, result.stdout.split())
    return main, daemon, result.stderr


def test_target_dies_with_an_abandoning_parent_by_pdeathsig(tmp_path: Path) -> None:
    run = unique("pdeath")
    workdir = tmp_path / "work"
    workdir.mkdir()
    try:
        main, daemon, _ = _abandon(tmp_path, run, workdir, with_reaper=False)
        assert eventually(lambda: not alive(main))
        assert alive(daemon)  # the setsid() daemon is out of PDEATHSIG's reach: the Reaper's job
    finally:
        kill_marked(run)
        for group in PidsCgroup.of_run(run):  # nobody else will: there was no reaper
            group.remove()


def test_reaper_cleans_up_after_a_parent_that_died_without_cleaning_up(tmp_path: Path) -> None:
    run = unique("reap")
    workdir = tmp_path / "work"
    (workdir / "sub").mkdir(parents=True)
    (workdir / "sub" / "state.txt").write_text("left behind\n")
    try:
        main, daemon, stderr = _abandon(tmp_path, run, workdir, with_reaper=True)
        assert eventually(lambda: not alive(main) and not alive(daemon) and not workdir.exists())
        assert find_marked(run) == []
        assert PidsCgroup.of_run(run) == []
        assert f"pytest-netlab reaper: pytest ended without cleaning up run {run}" in stderr
    finally:
        kill_marked(run)
        shutil.rmtree(workdir, ignore_errors=True)


def test_reaper_close_kills_nothing_and_removes_nothing(launch: Launcher, tmp_path: Path) -> None:
    run = unique("keep")
    kept = tmp_path / "kept"
    kept.mkdir()
    reaper = Reaper.start(run, [kept])
    try:
        process = launch(["sleep", "60"], run_marker=run)
        os.kill(reaper.pid, signal.SIGINT)  # Ctrl-C reaches pytest's group; the reaper must survive it
        reaper.close()
        assert reaper.returncode == 0
        assert process.running and kept.is_dir()
    finally:
        reaper.close()


def test_reaper_refuses_directories_it_must_never_remove(tmp_path: Path) -> None:
    for precious in (Path("/"), Path("/tmp"), Path.home(), Path.cwd()):
        with pytest.raises(ValueError, match="refusing"):
            Reaper.start(unique("refuse"), [precious])
