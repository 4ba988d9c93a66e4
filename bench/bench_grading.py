"""Grading a class of 50 submissions: serial against ``-n 2``, and the harness's overhead.

Builds a temporary ``submissions/`` folder (one instructor ``netlab.toml``
with a ``[submission]`` template, 50 student folders holding a ``server.py``:
the tcp-echo reference, its faulty variants, and programs that crash, hang
or flood their output), grades it serially and with ``-n 2``, and prints:

- the wall time of each run and the speed-up of ``-n 2`` over serial;
- whether the two gradebooks are identical (they must be);
- the harness overhead per check: the median of (item time - time in the
  check function), from the JSON report;
- the harness overhead per target launch: starting the reference through
  pytest-netlab (session, limits, capped logs, ready probe) against a bare
  ``subprocess.Popen`` plus a connect loop, interleaved, median;
- how long a target that fails every check takes compared to one that passes;
- the wall time of every bundled suite against its reference with ``-n 2``.

    python bench/bench_grading.py [--students 50] [--checks GLOB]

Bounded: each pytest run has a timeout, every loop a count.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ECHO = REPO / "fixtures" / "tcp_echo"
BAD = REPO / "fixtures" / "misbehaving"

# What the class hands in: mostly working servers, some with the book's bugs,
# and a few that misbehave as programs (crash, hang, flood their output).
PROGRAMS = [
    (ECHO, "reference.py"),
    (ECHO, "reference.py"),
    (ECHO, "no_reuseaddr.py"),
    (ECHO, "reset_on_eof.py"),
    (ECHO, "single_threaded.py"),
    (ECHO, "partial_send.py"),
    (ECHO, "crash_on_reset.py"),
    (ECHO, "first_recv_only.py"),
    (ECHO, "ipv4_only.py"),
    (BAD, "crash_on_connect.py"),
    (BAD, "hangs.py"),
    (BAD, "floods_output.py"),
]


def build_class(root: Path, students: int) -> Path:
    submissions = root / "submissions"
    submissions.mkdir()
    (submissions / "netlab.toml").write_text(
        '[submission]\ncommand = "{python} server.py {host} {port}"\nsuites = ["tcp-echo"]\nstartup_timeout = 10\n'
    )
    for index in range(students):
        folder, script = PROGRAMS[index % len(PROGRAMS)]
        student = submissions / f"student{index:02}"
        student.mkdir()
        shutil.copy(folder / script, student / "server.py")
        for helper in ("_echo_parts.py", "_echo.py"):
            if (folder / helper).exists():
                shutil.copy(folder / helper, student / helper)
    return submissions


def grade(workdir: Path, name: str, *extra: str) -> tuple[float, Path, Path]:
    gradebook, report = workdir / f"{name}.csv", workdir / f"{name}.json"
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--netlab-target=submissions",
        f"--netlab-gradebook={gradebook}", f"--netlab-report={report}", "--netlab-seed=1", "--netlab-capture=off", *extra,
    ]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=3600)
    elapsed = time.perf_counter() - started
    if result.returncode not in (0, 1):
        raise SystemExit(f"grading run {name} failed to run:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return elapsed, gradebook, report


def reference_suite_times(workdir: Path) -> dict[str, float]:
    """Wall seconds of ``pytest --netlab-target=reference:SUITE -n 2`` for every bundled suite."""
    from pytest_netlab.registry import all_suites

    times: dict[str, float] = {}
    for suite in all_suites():
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--netlab-target=reference:{suite}", "-n", "2"]
        started = time.perf_counter()
        result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=600)
        times[suite] = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"reference:{suite} did not pass:\n{result.stdout[-3000:]}")
    return times


def launch_overhead(rounds: int) -> tuple[float, float]:
    """Median seconds to a connectable server: through pytest-netlab, and bare."""
    from pytest_netlab.declarations import TargetSpec
    from pytest_netlab.ports import PortAllocator
    from pytest_netlab.target import TargetPool

    workroot = Path(tempfile.mkdtemp(prefix="netlab-bench-"))
    ports = PortAllocator()
    pool = TargetPool(ports, "bench-launch", 1.0, workroot)
    spec = TargetSpec(
        name="reference",
        origin="bench",
        source="bench",
        command="{python} reference.py {host} {port}",
        address=None,
        suites=(),
        cwd=ECHO,
    )
    ours: list[float] = []
    bare: list[float] = []
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            instance = pool.fresh(spec, None)
            ours.append(time.perf_counter() - started)
            pool.release(instance)

            port = ports.allocate()
            started = time.perf_counter()
            process = subprocess.Popen([sys.executable, "reference.py", "127.0.0.1", str(port)], cwd=ECHO)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    time.sleep(0.002)
            bare.append(time.perf_counter() - started)
            process.kill()
            process.wait(10)
    finally:
        pool.close()
        shutil.rmtree(workroot, ignore_errors=True)
    return statistics.median(ours), statistics.median(bare)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=50)
    parser.add_argument("--launches", type=int, default=15)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="netlab-grading-"))
    try:
        build_class(workdir, args.students)
        serial_time, serial_book, serial_report = grade(workdir, "serial")
        parallel_time, parallel_book, _ = grade(workdir, "parallel", "-n", "2")
        same = serial_book.read_text() == parallel_book.read_text()
        document = json.loads(serial_report.read_text())
        checks = [c for t in document["targets"] for c in t["checks"]]
        overheads = sorted(c["duration"] - c["check_time"] for c in checks if c["outcome"] != "skipped")
        per_target = {t["target"]: sum(c["duration"] for c in t["checks"]) for t in document["targets"]}
        program_of = {f"submissions/student{i:02}": PROGRAMS[i % len(PROGRAMS)][1] for i in range(args.students)}
        by_program: dict[str, list[float]] = {}
        for target, seconds in per_target.items():
            by_program.setdefault(program_of.get(target, "?"), []).append(seconds)
        ours, bare = launch_overhead(args.launches)
        suite_times = reference_suite_times(workdir)
        print(f"{args.students} submissions x {len(checks) // max(len(per_target), 1)} tcp-echo checks ({len(checks)} checks)")
        print(f"  serial         {serial_time:7.1f} s")
        print(f"  -n 2           {parallel_time:7.1f} s   speed-up {serial_time / parallel_time:.2f}x")
        print(f"  gradebooks     {'identical' if same else 'DIFFERENT'}")
        print(f"  harness overhead per check: median {statistics.median(overheads) * 1000:.2f} ms, 90th percentile {overheads[int(len(overheads) * 0.9)] * 1000:.2f} ms")
        print(f"  target launch to ready: pytest-netlab {ours * 1000:.1f} ms, bare Popen + connect loop {bare * 1000:.1f} ms, overhead {(ours - bare) * 1000:.1f} ms")
        print("  seconds per submission by program (sum of its check times, serial):")
        reference = statistics.median(by_program.get("reference.py", [1.0]))
        for program, seconds in sorted(by_program.items(), key=lambda item: statistics.median(item[1])):
            median = statistics.median(seconds)
            print(f"    {program:<22} {median:6.2f} s   {median / reference:5.2f}x the reference")
        print("  every bundled suite against its reference, -n 2 (wall time, pytest start included):")
        for suite, seconds in suite_times.items():
            print(f"    {suite:<12} {seconds:6.1f} s")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
