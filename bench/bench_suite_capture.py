"""The cost of packet capture on a whole suite run, measured side by side.

Runs the tcp-echo suite against its reference with ``--netlab-capture=off``,
``on-failure`` (the default: one tcpdump per run, marker datagrams per check)
and ``always`` (also cutting a pcap per check), interleaved, several rounds,
and prints the median wall time of each and the ratios against ``off``.

    python bench/bench_suite_capture.py [--rounds 7]

Bounded: each pytest run has a timeout; the whole benchmark takes about
``rounds * 3 * (suite time)``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

MODES = ("off", "on-failure", "always")


def run_suite(mode: str, workdir: str) -> float:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--netlab-target=reference:tcp-echo", f"--netlab-capture={mode}"]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"the suite failed with --netlab-capture={mode}:\n{result.stdout[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as workdir:
        for round_number in range(args.rounds):
            # Rotate the order so that no mode always runs first (cold caches) or last.
            order = MODES[round_number % 3 :] + MODES[: round_number % 3]
            for mode in order:
                times[mode].append(run_suite(mode, workdir))
    off = statistics.median(times["off"])
    print(f"tcp-echo suite against its reference, {args.rounds} interleaved rounds, median wall time (pytest start-up included)")
    for mode in MODES:
        median = statistics.median(times[mode])
        print(f"  --netlab-capture={mode:<11} {median:6.3f} s   ratio to off {median / off:5.3f}   (min {min(times[mode]):.3f}, max {max(times[mode]):.3f})")


if __name__ == "__main__":
    main()
