"""The proof matrix (SPEC 7): every check is failed by some faulty implementation.

Each ``fixtures/<suite>/netlab.toml`` declares the suite's reference (which
must pass every check) and faulty implementations, each with one documented
``bug`` and the checks it must fail in ``expect_fail`` (an xfail there; an
unexpected pass or an unexpected failure fails the run, and an unexpected
unmet SHOULD fails this test). So one pytest run per folder, with ``-n 2``,
proves the suite; tcp-echo is also run serially to show both modes give the
same verdicts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_netlab.declarations import load_declarations
from pytest_netlab.registry import Severity, all_suites, match_checks

from conftest import FIXTURES

SUITES = all_suites()
PROOF_DIRS = sorted(d for d in FIXTURES.iterdir() if (d / "netlab.toml").is_file() and d.name.replace("_", "-") in SUITES)


def verdicts(report: Path) -> dict[tuple[str, str], str]:
    document = json.loads(report.read_text())
    return {(t["target"], c["id"]): c["outcome"] for t in document["targets"] for c in t["checks"]}


def prove(pytester: pytest.Pytester, folder: Path, report: str, *extra: str) -> dict[tuple[str, str], str]:
    """Run a proof folder; every check must pass or fail exactly as declared."""
    result = pytester.runpytest_subprocess(f"--netlab-target={folder}", f"--netlab-report={report}", "-p", "no:cacheprovider", *extra)
    assert result.ret == 0, result.stdout.str()[-6000:]
    outcomes = verdicts(pytester.path / report)
    # An unmet SHOULD does not fail a run, so exactness is checked here: every
    # check either passes or is an expected failure (xfailed).
    surprises = {key: outcome for key, outcome in outcomes.items() if outcome not in ("passed", "observed", "xfailed", "skipped")}
    assert surprises == {}, surprises
    reference = {check: outcome for (target, check), outcome in outcomes.items() if target.endswith(":reference")}
    assert reference and set(reference.values()) <= {"passed", "observed"}, reference
    return outcomes


@pytest.mark.parametrize("folder", PROOF_DIRS, ids=[d.name for d in PROOF_DIRS])
def test_suite_is_proven(pytester: pytest.Pytester, folder: Path, run_marker: str) -> None:
    prove(pytester, folder, "proof.json", "-n", "2")


def test_serial_and_parallel_verdicts_are_the_same(pytester: pytest.Pytester, run_marker: str) -> None:
    folder = FIXTURES / "tcp_echo"
    assert prove(pytester, folder, "serial.json") == prove(pytester, folder, "parallel.json", "-n", "2")


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_every_check_is_failed_by_a_faulty_implementation(suite: str) -> None:
    folder = FIXTURES / SUITES[suite].fixtures_dir
    assert (folder / "netlab.toml").is_file(), f"suite {suite} has no fixtures/{SUITES[suite].fixtures_dir}/netlab.toml"
    specs = load_declarations(folder / "netlab.toml", origin=str(folder))
    assert any(s.name == "reference" for s in specs), f"suite {suite} has no reference implementation"
    faulty = [s for s in specs if s.bug]
    for spec in faulty:
        assert spec.expect_fail, f"{spec.name} documents a bug but declares no check it fails"
    checks = [c for c in SUITES[suite].checks.values() if c.severity is not Severity.INFO]
    proven = {c.id for spec in faulty for c in match_checks(checks, spec.expect_fail, [])}
    unproven = sorted(c.id for c in checks if c.id not in proven)
    assert unproven == [], f"no faulty implementation fails these {suite} checks: {unproven}"
