"""The pytest11 entry point: options, hooks and fixtures, and nothing else.

Hooks wire the pieces together: options become :class:`Settings`, settings
become a :class:`NetlabSession` (validated targets and a plan), the plan
becomes items named by check id, verdicts become pytest outcomes, and the
results become the JSON and Gradescope reports and the score table. Without
``--netlab-target`` the plugin adds nothing to a run but its fixtures, so the
project's own tests never run the bundled suites by accident.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Generator

import pytest

from .errors import ConfigError
from .items import SESSION_KEY, CheckItem, build_items
from .options import add_options, resolve_settings
from .reports import Scoreboard, result_from_item
from .session import NetlabSession

SCOREBOARD_KEY = pytest.StashKey[Scoreboard]()
WRITTEN_KEY = pytest.StashKey[list[Path]]()

# Fixtures for users' own tests live in their own module; importing them here
# registers them with pytest through this plugin module.
from .fixtures_api import (  # noqa: E402,F401
    _netlab_pool,
    cert_zoo,
    launch_server,
    netlab_ca,
    netlab_seed,
    netlab_target,
    netlab_transcript,
    packet_capture,
    scripted_client,
    tcp_proxy,
    udp_proxy,
)


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "netlab(target=None): a pytest-netlab conformance check (added to every check item); "
        "in your own tests, target='NAME' picks what the netlab_target fixture starts, over --netlab-target",
    )
    try:
        settings = resolve_settings(config)
    except ConfigError as error:
        raise pytest.UsageError(f"pytest-netlab: {error}") from None
    board = config.stash[SCOREBOARD_KEY] = Scoreboard()
    config.pluginmanager.register(_ScoreCollector(board), "netlab-scores")
    if not settings.active:
        return
    worker_input = getattr(config, "workerinput", None)
    seed = worker_input.get("netlab_seed") if worker_input else None
    worker = _worker_slot(worker_input)
    try:
        netlab = NetlabSession(
            settings,
            rootdir=config.rootpath,
            invocation_dir=config.invocation_params.dir,
            seed=seed,
            worker=worker,
        )
    except ConfigError as error:
        raise pytest.UsageError(f"pytest-netlab: {error}") from None
    config.stash[SESSION_KEY] = netlab
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        # No test paths on the command line: run the suites only, not the
        # tests of whatever directory pytest was started in.
        config.args[:] = []


def _worker_slot(worker_input: dict[str, Any] | None) -> tuple[int, int]:
    if not worker_input:
        return 0, 1
    index = int(str(worker_input.get("workerid", "gw0")).lstrip("gw") or 0)
    return index, int(worker_input.get("workercount", 1))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: every worker uses the controller's seed."""
    netlab = node.config.stash.get(SESSION_KEY, None)
    if netlab is not None:
        node.workerinput["netlab_seed"] = netlab.seed


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist: keep a target's shared-instance checks on one worker (unless --dist was chosen)."""
    netlab = config.stash.get(SESSION_KEY, None)
    if netlab is None or config.getvalue("dist") != "load":
        return None
    from .xdist_scheduling import TargetScheduling, user_chose_dist

    if user_chose_dist(config):
        return None
    return TargetScheduling(config, log, netlab)


def pytest_report_header(config: pytest.Config) -> list[str]:
    netlab = config.stash.get(SESSION_KEY, None)
    if netlab is None:
        return []
    settings = netlab.settings
    lines = [
        f"netlab: seed {netlab.seed} (rerun with --netlab-seed={netlab.seed}), timeout scale {settings.timeout_scale:g}, "
        f"{'strict' if settings.strict else 'SHOULD checks reported, not failed'}",
        netlab.describe_capture(),
    ]
    if settings.shard is not None:
        lines.append(f"netlab shard {settings.shard[0]}/{settings.shard[1]}: {len(netlab.specs)} targets")
    for spec in netlab.specs:
        what = spec.command if spec.command is not None else str(spec.address)
        count = sum(1 for p in netlab.plan if p.spec is spec)
        lines.append(f"netlab target {spec.name}: {', '.join(p for p in spec.suites) or ', '.join(settings.suites)}, {count} checks: {what}")
    return lines


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    netlab = config.stash.get(SESSION_KEY, None)
    if netlab is None:
        return
    created = build_items(session, netlab)
    items.extend(created)
    # Our items are made here, not by a collector, so the terminal's
    # "collected N items" has not counted them yet.
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and hasattr(reporter, "_numcollected"):
        reporter._numcollected += len(created)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    if not isinstance(item, CheckItem) or call.when != "call":
        return
    report = outcome.get_result()
    planned = item.planned
    data = result_from_item(planned.spec.name, planned.check.id, planned.check.title, planned.check.severity.value, planned.points)
    verdict = item.verdict
    if hasattr(report, "wasxfail"):
        data["outcome"] = "xfailed"
    elif verdict is None:
        data["outcome"] = "error"
    elif verdict.outcome == "passed" and report.failed:
        data["outcome"] = "xpassed"
    else:
        data["outcome"] = verdict.outcome
    data["message"] = verdict.message if verdict else str(call.excinfo.value if call.excinfo else "")
    data["duration"] = report.duration
    data["check_time"] = verdict.check_time if verdict else 0.0
    data["artifacts"] = dict(verdict.artifacts) if verdict else {}
    report.netlab = data


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> tuple[str, str, str] | None:
    data = getattr(report, "netlab", None)
    if not data or report.when != "call":
        return None
    outcome = data.get("outcome")
    if outcome == "unmet":
        return "SHOULD unmet", "w", "SHOULD-UNMET"
    if outcome == "observed":
        return "observed", "i", "INFO"
    if outcome == "error":
        return "error", "E", "ERROR"
    return None


class _ScoreCollector:
    """Gathers results on the process that reports (the controller under xdist)."""

    def __init__(self, board: Scoreboard) -> None:
        self.board = board

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = getattr(report, "netlab", None)
        if data and report.when == "call":
            self.board.add(data)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    netlab = config.stash.get(SESSION_KEY, None)
    board = config.stash.get(SCOREBOARD_KEY, None)
    if netlab is None or board is None or not board.targets or hasattr(config, "workerinput"):
        return
    unmet = [r for score in board.sorted_targets() for r in score.results if r.outcome == "unmet"]
    if unmet:
        terminalreporter.write_sep("=", "netlab: unmet SHOULD checks (not failures; --netlab-strict makes them fail)")
        for result in unmet:
            terminalreporter.write_line(f"[{result.target}] {result.message}")
            terminalreporter.write_line("")
    terminalreporter.write_sep("=", f"netlab scores (seed {netlab.seed})")
    for line in board.summary_lines(width=terminalreporter._tw.fullwidth):
        terminalreporter.write_line(line)
    for path in config.stash.get(WRITTEN_KEY, []):
        terminalreporter.write_line(f"netlab: wrote {path}")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    netlab = config.stash.get(SESSION_KEY, None)
    if netlab is None:
        return
    netlab.close()
    if hasattr(config, "workerinput"):
        return
    board = config.stash[SCOREBOARD_KEY]
    written: list[Path] = []
    settings = netlab.settings
    if settings.report:
        path = _resolve(config, settings.report)
        board.write_json(
            path,
            seed=netlab.seed,
            settings={"strict": settings.strict, "timeout_scale": settings.timeout_scale, "targets": list(settings.targets)},
        )
        written.append(path)
    if settings.gradescope:
        written.extend(board.write_gradescope(str(_resolve(config, settings.gradescope))))
    if settings.gradebook:
        path = _resolve(config, settings.gradebook)
        board.write_gradebook(path)
        written.append(path)
    config.stash[WRITTEN_KEY] = written


def pytest_unconfigure(config: pytest.Config) -> None:
    netlab = config.stash.get(SESSION_KEY, None)
    if netlab is not None:
        netlab.close()


def _resolve(config: pytest.Config, path: str) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() else Path(config.invocation_params.dir, candidate)

