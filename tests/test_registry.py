"""The registry: ids, severities, glob selection, points."""

from __future__ import annotations

import pytest

from pytest_netlab.registry import DEFAULT_POINTS, Role, Severity, Suite, all_suites, match_checks


def make_suite() -> Suite:
    suite = Suite("demo", Role.SERVER, title="demo", placeholders=("host", "port"))
    for group, name, severity in [("a", "one", Severity.MUST), ("a", "two", Severity.SHOULD), ("b", "three", Severity.INFO)]:
        suite.check(group, name, title=name, severity=severity)(lambda ctx: None)
    return suite


def test_ids_and_default_points() -> None:
    suite = make_suite()
    assert list(suite.checks) == ["demo/a/one", "demo/a/two", "demo/b/three"]
    assert [c.points for c in suite.checks.values()] == [DEFAULT_POINTS[s] for s in Severity]
    check = suite.checks["demo/a/two"]
    assert (check.suite, check.group, check.name) == ("demo", "a", "two")


def test_globs_select_suites_groups_and_checks() -> None:
    checks = make_suite().checks.values()
    ids = lambda selected: [c.id for c in selected]  # noqa: E731
    assert ids(match_checks(checks, ["demo"], [])) == ["demo/a/one", "demo/a/two", "demo/b/three"]
    assert ids(match_checks(checks, ["demo/a"], [])) == ["demo/a/one", "demo/a/two"]
    assert ids(match_checks(checks, ["*/three"], [])) == ["demo/b/three"]
    assert ids(match_checks(checks, [], ["demo/a/*"])) == ["demo/b/three"]


def test_bad_ids_and_duplicates_are_refused() -> None:
    suite = make_suite()
    with pytest.raises(ValueError, match="lowercase"):
        suite.check("Group", "x", title="x")(lambda ctx: None)
    with pytest.raises(ValueError, match="registered twice"):
        suite.check("a", "one", title="again")(lambda ctx: None)


def test_bundled_suites_are_registered_with_unique_titles() -> None:
    suites = all_suites()
    assert "tcp-echo" in suites
    for suite in suites.values():
        assert suite.checks, f"{suite.name} has no checks"
        for check in suite.checks.values():
            assert check.title and check.references, f"{check.id} needs a title and a reference"
