"""Reports: the JSON report, Gradescope results.json, JUnit names, the score table."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from conftest import FIXTURES

ECHO = FIXTURES / "tcp_echo"


@pytest.fixture
def two_targets(pytester: pytest.Pytester) -> None:
    pytester.makefile(
        ".toml",
        netlab=f'[targets.good]\ncommand = "{{python}} {ECHO / "reference.py"} {{host}} {{port}}"\nsuites = ["tcp-echo"]\n'
        f'[targets.rst]\ncommand = "{{python}} {ECHO / "reset_on_eof.py"} {{host}} {{port}}"\nsuites = ["tcp-echo"]\n'
        'points = { "tcp-echo/echo/half-close" = 5 }\n',
    )


def run(pytester: pytest.Pytester, *extra: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "--netlab-target=good", "--netlab-target=rst", "--netlab-check=tcp-echo/echo/*", "--netlab-seed=5", *extra, "-p", "no:cacheprovider"
    )


def test_json_report(pytester: pytest.Pytester, two_targets: None, run_marker: str) -> None:
    result = run(pytester, "--netlab-report=out/report.json")
    assert result.ret == 1
    document = json.loads((pytester.path / "out" / "report.json").read_text())
    assert document["seed"] == 5
    targets = {t["target"]: t for t in document["targets"]}
    assert targets["good"]["score"] == targets["good"]["max_score"] == 10
    rst = targets["rst"]
    assert (rst["score"], rst["max_score"]) == (8, 13)  # half-close is worth 5 points here
    half_close = next(c for c in rst["checks"] if c["id"] == "tcp-echo/echo/half-close")
    assert half_close["outcome"] == "failed"
    assert half_close["severity"] == "MUST"
    assert half_close["points_earned"] == 0 and half_close["points_possible"] == 5
    assert "RST" in half_close["message"]  # with or without the data the RST threw away
    assert set(half_close) >= {"id", "title", "severity", "outcome", "points_earned", "points_possible", "message", "duration", "artifacts"}
    result.stdout.fnmatch_lines(["*netlab scores (seed 5)*", "good  10/10 points  (5 passed)", "rst   8/13 points  (4 passed, 1 failed)", "    FAILED tcp-echo/echo/half-close*"])


def test_gradescope_one_file_per_target(pytester: pytest.Pytester, two_targets: None, run_marker: str) -> None:
    run(pytester, "--netlab-gradescope=grades/{target}/results.json")
    rst = json.loads((pytester.path / "grades" / "rst" / "results.json").read_text())
    assert (rst["score"], rst["max_score"]) == (8, 13)
    failed = [t for t in rst["tests"] if t["status"] == "failed"]
    assert [t["name"].split(" ")[0] for t in failed] == ["tcp-echo/echo/half-close"]
    assert failed[0]["score"] == 0 and failed[0]["max_score"] == 5 and "reproduce:" in failed[0]["output"]


def test_junit_names_are_targets_and_check_ids(pytester: pytest.Pytester, two_targets: None, run_marker: str) -> None:
    run(pytester, "--junitxml=junit.xml")
    cases = ET.parse(pytester.path / "junit.xml").getroot().iter("testcase")
    names = {(case.get("classname"), case.get("name")) for case in cases}
    assert ("rst", "tcp-echo/echo/half-close") in names
    assert ("good", "tcp-echo/echo/binary") in names
