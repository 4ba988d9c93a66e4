"""pytest items for checks: one item per (target, check), named by the check id.

Node ids read ``<target>::<check id>`` (``reference:tcp-echo::tcp-echo/echo/half-close``),
so ``-k``, ``--lf`` and ``--junitxml`` speak in check ids, and the JUnit
class name is the target. An item maps its :class:`~pytest_netlab.runner.Verdict`
to a pytest outcome: a failed MUST fails, an unmet SHOULD passes but is
reported as such, an INFO observation passes, a check the target declares
in ``expect_fail`` is an xfail (and a pass is an error), a harness error is an
error. Failure text is the verdict's message, without harness stack frames.

This module must not run protocol logic; the runner does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .runner import Verdict
from .session import NetlabSession, PlannedCheck

__all__ = ["TargetNode", "CheckItem", "CheckFailed", "HarnessFailed", "SESSION_KEY"]

SESSION_KEY = pytest.StashKey[NetlabSession]()


class CheckFailed(Exception):
    """A check failed; the message is the teaching text."""


class HarnessFailed(Exception):
    """pytest-netlab failed while running a check; reported as an error."""


class TargetNode(pytest.Collector):
    """Groups the checks of one target (the JUnit class name)."""

    def collect(self) -> list[Any]:  # items are created by the plugin, not collected
        return []


class CheckItem(pytest.Item):
    """One check against one target."""

    def __init__(self, *, planned: PlannedCheck, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.planned = planned
        self.verdict: Verdict | None = None
        self.last_for_target = False
        self.add_marker(pytest.mark.netlab)
        self.extra_keyword_matches.update({planned.check.id, planned.check.suite, planned.spec.name, planned.check.severity.value})

    @property
    def netlab(self) -> NetlabSession:
        return self.config.stash[SESSION_KEY]

    def runtest(self) -> None:
        planned = self.planned
        session = self.netlab
        try:
            verdict = session.runner.run(planned.check, planned.spec, planned.suite)
        finally:
            if self.last_for_target:
                session.finish_target(planned.spec)
        self.verdict = verdict
        self._conclude(verdict)

    def _conclude(self, verdict: Verdict) -> None:
        __tracebackhide__ = True
        expected = self.planned.expected_to_fail
        if verdict.outcome == "skipped":
            pytest.skip(verdict.summary)
        if verdict.outcome == "error":
            raise HarnessFailed(verdict.message)
        if verdict.outcome in ("failed", "unmet"):
            if expected:
                pytest.xfail(f"expected to fail ({self.planned.spec.name} lists it in expect_fail): {verdict.summary}")
            if verdict.outcome == "failed":
                raise CheckFailed(verdict.message)
            return
        if expected:
            raise CheckFailed(
                f"{self.planned.check.id} PASSED but {self.planned.spec.name} declares it in expect_fail "
                f"({self.planned.spec.source}): the check no longer catches the documented bug, or the bug is gone"
                + (f"\n  bug: {self.planned.spec.bug}" if self.planned.spec.bug else "")
            )

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str | Any:
        if isinstance(excinfo.value, (CheckFailed, HarnessFailed)):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        # The "file" of the progress line is the target, so dots group by target.
        return Path(self.config.rootpath, self.planned.spec.name), None, f"{self.planned.check.id} [{self.planned.spec.name}]"


# Added to a check's own budget for pytest-timeout's backstop: starting the
# target, stopping it, and the crash detector's settle time.
_BACKSTOP_MARGIN = 30.0


def _wants_backstop(config: pytest.Config) -> bool:
    """True when pytest-timeout is active and the user set no timeout of their own
    (a marker would override their --timeout, which must win)."""
    if not config.pluginmanager.hasplugin("timeout"):
        return False
    if config.getoption("timeout", default=None):
        return False
    try:
        return not config.getini("timeout")
    except ValueError:
        return True


def build_items(session: pytest.Session, netlab: NetlabSession) -> list[CheckItem]:
    """Create the items of the plan, grouped under one node per target."""
    nodes: dict[str, TargetNode] = {}
    items: list[CheckItem] = []
    backstop = _wants_backstop(session.config)
    scale = netlab.settings.timeout_scale
    for planned in netlab.plan:
        name = planned.spec.name
        if name not in nodes:
            nodes[name] = TargetNode.from_parent(session, name=name, nodeid=name)
        item = CheckItem.from_parent(nodes[name], name=planned.check.id, planned=planned)
        if backstop:
            # Checks bound every wait themselves; this only stops a bug of ours
            # from hanging a grading run. The signal method raises in the check,
            # so the target is still stopped by the normal teardown.
            budget = (planned.check.timeout + 2 * planned.spec.startup_timeout) * scale + _BACKSTOP_MARGIN
            item.add_marker(pytest.mark.timeout(budget, method="signal"))
        items.append(item)
    last_index: dict[str, int] = {item.planned.spec.name: i for i, item in enumerate(items)}
    for index in last_index.values():
        items[index].last_for_target = True
    return items
