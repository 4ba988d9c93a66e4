"""Shared helpers for the project's own tests.

``pytester`` drives the plugin as a user would; :func:`leftover_processes`
proves a run left nothing behind by looking for the run marker that every
target process carries in its environment.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"


def leftover_processes(marker: str) -> list[str]:
    """Command lines of live processes whose ``NETLAB_RUN`` starts with ``marker``."""
    needle = f"NETLAB_RUN={marker}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if any(entry_.startswith(needle) for entry_ in environ.split(b"\0")):
            try:
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return found


@pytest.fixture
def run_marker(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """A run marker for pytest runs started by this test; asserts nothing outlives them."""
    marker = f"selftest-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("NETLAB_RUN_MARKER", marker)
    yield marker
    assert leftover_processes(marker) == [], "a target process outlived its pytest run"
