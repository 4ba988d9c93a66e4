"""Grading a class: one template for every submission, shards, the gradebook."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from pytest_netlab.declarations import resolve_targets
from pytest_netlab.registry import all_suites
from pytest_netlab.session import shard_targets

from conftest import FIXTURES

ECHO = FIXTURES / "tcp_echo"


def make_class(root: Path, students: dict[str, str]) -> Path:
    """submissions/netlab.toml (the instructor's) and one folder per student holding server.py."""
    submissions = root / "submissions"
    submissions.mkdir()
    (submissions / "netlab.toml").write_text('[submission]\ncommand = "{python} server.py {host} {port}"\nsuites = ["tcp-echo"]\nstartup_timeout = 3\n')
    for student, script in students.items():
        (submissions / student).mkdir()
        shutil.copy(ECHO / script, submissions / student / "server.py")
        shutil.copy(ECHO / "_echo_parts.py", submissions / student / "_echo_parts.py")
    return submissions


def test_a_template_makes_every_subfolder_a_target(tmp_path: Path) -> None:
    make_class(tmp_path, {"alice": "reference.py", "bob": "no_reuseaddr.py"})
    for form in ("submissions", "submissions/*"):
        specs = resolve_targets([form], rootdir=tmp_path, invocation_dir=tmp_path, suites=all_suites(), selected_suites=())
        assert [(s.name, s.cwd.name) for s in specs] == [("submissions/alice", "alice"), ("submissions/bob", "bob")]


def test_shards_partition_the_targets(tmp_path: Path) -> None:
    make_class(tmp_path, {f"s{i:02}": "reference.py" for i in range(7)})
    specs = resolve_targets(["submissions"], rootdir=tmp_path, invocation_dir=tmp_path, suites=all_suites(), selected_suites=())
    shards = [[s.name for s in shard_targets(list(reversed(specs)), k, 3)] for k in (1, 2, 3)]
    assert sorted(sum(shards, [])) == sorted(s.name for s in specs)
    assert [len(shard) for shard in shards] == [3, 2, 2]


def test_class_run_gradebook_and_isolation(pytester: pytest.Pytester, run_marker: str) -> None:
    make_class(pytester.path, {"alice": "reference.py", "bob": "reset_on_eof.py", "carol": "crash_on_reset.py"})
    # dave hands in a program that never starts: it costs only dave's points.
    (pytester.path / "submissions" / "dave").mkdir()
    (pytester.path / "submissions" / "dave" / "server.py").write_text("raise SystemExit('forgot to finish')\n")
    args = ["--netlab-target=submissions/*", "--netlab-check=tcp-echo/echo/*", "--netlab-check=*/abrupt-reset", "-p", "no:cacheprovider"]
    result = pytester.runpytest_subprocess(*args, "--netlab-gradebook=grades.csv", "--netlab-gradescope=gs/{target}.json")
    assert result.ret == 1
    rows = {row["target"]: row for row in csv.DictReader((pytester.path / "grades.csv").open())}
    assert list(rows) == ["submissions/alice", "submissions/bob", "submissions/carol", "submissions/dave"]
    assert (rows["submissions/alice"]["total"], rows["submissions/alice"]["max"]) == ("12", "12")
    assert rows["submissions/bob"]["total"] == "10" and rows["submissions/bob"]["failed checks"] == "tcp-echo/echo/half-close"
    assert rows["submissions/carol"]["failed checks"] == "tcp-echo/common/abrupt-reset"
    assert rows["submissions/dave"]["total"] == "0"
    assert (pytester.path / "gs" / "submissions_alice.json").is_file()
    markdown = pytester.runpytest_subprocess(*args, "--netlab-gradebook=grades.md", "--netlab-shard=1/2")
    table = (pytester.path / "grades.md").read_text()
    assert "| submissions/alice | " in table and "**12/12**" in table and "submissions/bob" not in table
    markdown.stdout.fnmatch_lines(["netlab shard 1/2: 2 targets"])


def test_bad_shard_and_gradebook_values(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--netlab-target=reference:tcp-echo", "--netlab-shard=3/2")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*'--netlab-shard': '3/2': K must be between 1 and N*"])
    result = pytester.runpytest_subprocess("--netlab-target=reference:tcp-echo", "--netlab-gradebook=grades.xlsx")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*must end in .csv or .md*"])
