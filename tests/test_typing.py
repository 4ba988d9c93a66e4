"""The package and the suites type-check under mypy --strict."""

from __future__ import annotations

import pytest

from conftest import REPO


def test_mypy_strict() -> None:
    mypy = pytest.importorskip("mypy.api", reason="mypy comes with the test extras: pip install '.[test]'")
    stdout, stderr, status = mypy.run(["--strict", "--ignore-missing-imports", "--no-incremental", str(REPO / "pytest_netlab"), str(REPO / "suites")])
    assert status == 0, stdout + stderr
