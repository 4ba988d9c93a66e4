"""Sending a target's checks to one xdist worker, so that it starts the target once.

The checks of a suite that share a running target instance are one scope:
the worker that gets them starts the target once and reuses it. Checks that
need a fresh instance (they stop, signal or restart it) and the user's own
tests are scopes of one and spread over all workers. Used only when the user
did not choose a ``--dist`` mode; verdicts do not depend on it.

This module must only be imported when pytest-xdist is installed.
"""

from __future__ import annotations

from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling

from .registry import Role
from .session import NetlabSession

__all__ = ["TargetScheduling", "user_chose_dist"]


class TargetScheduling(LoadScopeScheduling):  # type: ignore[misc]  # xdist ships no type hints
    """LoadScope scheduling whose scopes are (target, suite) for shared-instance checks."""

    def __init__(self, config: pytest.Config, log: Any, netlab: NetlabSession) -> None:
        super().__init__(config, log)
        self._scopes: dict[str, str] = {}
        for planned in netlab.plan:
            nodeid = f"{planned.spec.name}::{planned.check.id}"
            shared = planned.spec.launched and not planned.check.fresh_target and planned.suite.role is Role.SERVER
            self._scopes[nodeid] = f"{planned.spec.name}::{planned.suite.name}" if shared else nodeid

    def _split_scope(self, nodeid: str) -> str:
        return self._scopes.get(nodeid, nodeid)


def user_chose_dist(config: pytest.Config) -> bool:
    """True when ``--dist`` (or ``-d``) is on the command line or in addopts."""
    words = list(config.invocation_params.args) + list(config.getini("addopts"))
    return any(word == "--dist" or word.startswith("--dist=") or word == "-d" for word in words)
