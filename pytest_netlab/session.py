"""The state of one netlab run in one pytest process, and the plan of what it checks.

:class:`NetlabSession` is built once per process (controller or xdist
worker) from the resolved settings: it validates the targets, plans the
(target, suite, check) triples, chooses the seed, owns the temporary
directory, the reaper watchdog, the target pool and the runner, and tears
them all down at the end. The plugin keeps it in ``config.stash``.

This module must not define pytest hooks; :mod:`pytest_netlab.plugin` does.
"""

from __future__ import annotations

import fnmatch
import os
import random
import shlex
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .declarations import TargetSpec, resolve_targets
from .errors import ConfigError
from .options import Settings
from .ports import PortAllocator
from .process import Reaper
from .registry import Check, Suite, all_suites, match_checks
from .runner import CheckRunner
from .target import TargetPool

if TYPE_CHECKING:
    from .run_capture import RunCapture

__all__ = ["PlannedCheck", "NetlabSession", "plan_checks", "points_for", "shard_targets", "ARTIFACTS_DIR"]

#: Where kept pcaps and transcripts go, under the directory pytest was started in.
ARTIFACTS_DIR = "netlab-artifacts"


@dataclass(frozen=True)
class PlannedCheck:
    """One check to run against one target."""

    spec: TargetSpec
    suite: Suite
    check: Check

    @property
    def expected_to_fail(self) -> bool:
        """True when the target declares this check in ``expect_fail``."""
        return any(_glob_matches(self.check.id, pattern) for pattern in self.spec.expect_fail)

    @property
    def points(self) -> float:
        return points_for(self.spec, self.check)


def _glob_matches(check_id: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(check_id, pattern) or fnmatch.fnmatchcase(check_id, pattern.rstrip("/") + "/*")


def points_for(spec: TargetSpec, check: Check) -> float:
    """Points of a check for a target: its first matching ``points`` glob, else the registry's."""
    for pattern, value in spec.points.items():
        if _glob_matches(check.id, pattern):
            return value
    return check.points


def shard_targets(specs: list[TargetSpec], shard: int, count: int) -> list[TargetSpec]:
    """Shard ``shard`` of ``count`` (1-based): every count-th target by name.

    Sorting by name makes the split the same on every machine, whatever order
    the shell expanded a glob in; dealing them out round-robin keeps the
    shards within one target of each other.

    Raises:
        ConfigError: the shard would be empty.
    """
    ordered = sorted(specs, key=lambda spec: spec.name)
    mine = ordered[shard - 1 :: count]
    if not mine:
        raise ConfigError(f"shard {shard}/{count} has no targets: there are only {len(ordered)}", source="--netlab-shard")
    return mine


def plan_checks(specs: list[TargetSpec], settings: Settings, suites: dict[str, Suite]) -> list[PlannedCheck]:
    """Every (target, suite, check) to run, after suite selection and id globs.

    Raises:
        ConfigError: a target would run no check at all.
    """
    planned: list[PlannedCheck] = []
    for spec in specs:
        names = [s for s in spec.suites if not settings.suites or s in settings.suites] if spec.suites else list(settings.suites)
        if not names:
            raise ConfigError(
                f"target {spec.name} implements {', '.join(spec.suites)}, but --netlab-suite selects {', '.join(settings.suites)}",
                source="--netlab-suite",
            )
        count = 0
        for name in names:
            suite = suites[name]
            for check in match_checks(suite.checks.values(), settings.check_globs, settings.skip_globs):
                planned.append(PlannedCheck(spec, suite, check))
                count += 1
        if count == 0:
            every = ", ".join(c for name in names for c in suites[name].checks)
            raise ConfigError(
                f"no checks to run for target {spec.name}: --netlab-check {list(settings.check_globs)} / "
                f"--netlab-skip {list(settings.skip_globs)} leave none of its checks; its checks: {every}",
                source="--netlab-check",
            )
    return planned


class NetlabSession:
    """Everything one pytest process needs to check targets.

    Args:
        settings: resolved options.
        rootdir: pytest's rootdir (where ``netlab.toml`` is looked for).
        invocation_dir: where pytest was started (relative DIR targets).
        seed: the seed handed down by the xdist controller, if any.
        worker: ``(index, count)`` of this xdist worker.
    """

    def __init__(self, settings: Settings, *, rootdir: Path, invocation_dir: Path, seed: int | None, worker: tuple[int, int]) -> None:
        self.settings = settings
        self.suites = all_suites()
        self.specs = resolve_targets(
            settings.targets,
            rootdir=rootdir,
            invocation_dir=invocation_dir,
            suites=self.suites,
            selected_suites=settings.suites,
        )
        if settings.shard is not None:
            self.specs = shard_targets(self.specs, *settings.shard)
        self.plan = plan_checks(self.specs, settings, self.suites)
        if seed is None:
            seed = settings.seed if settings.seed is not None else random.SystemRandom().randrange(1, 2**31)
        self.seed = seed
        self.worker = worker
        # NETLAB_RUN_MARKER lets a self-test find what a run left behind; each
        # xdist worker gets its own suffix so that one worker's watchdog never
        # kills another worker's targets.
        base = os.environ.get("NETLAB_RUN_MARKER") or f"netlab-{uuid.uuid4().hex[:12]}"
        self.run_marker = f"{base}-w{worker[0]}"
        self.artifacts = invocation_dir / ARTIFACTS_DIR
        #: Why packet capture is off, or None when it is on.
        self.capture_off_reason: str | None = "--netlab-capture=off" if settings.capture == "off" else _capture_unavailable_reason()
        self._workroot: Path | None = None
        self._reaper: Reaper | None = None
        self._pool: TargetPool | None = None
        self._runner: CheckRunner | None = None
        self._capture: RunCapture | None = None

    @property
    def runner(self) -> CheckRunner:
        """The check runner, created (with its temp dir and watchdog) on first use."""
        if self._runner is None:
            self._workroot = Path(tempfile.mkdtemp(prefix="netlab-"))
            self._reaper = Reaper.start(self.run_marker, [self._workroot])
            ports = PortAllocator(*self.worker)
            self._pool = TargetPool(ports, self.run_marker, self.settings.timeout_scale, self._workroot)
            self._capture = self._start_capture(ports.range)
            self._runner = CheckRunner(
                self._pool,
                seed=self.seed,
                timeout_scale=self.settings.timeout_scale,
                strict=self.settings.strict,
                reproduce=self.reproduce,
                capture=self._capture,
                capture_mode=self.settings.capture,
                artifacts=self.artifacts,
            )
        return self._runner

    def _start_capture(self, port_range: tuple[int, int]) -> RunCapture | None:
        if self.capture_off_reason is not None:
            return None
        from .capture import CaptureError, CaptureUnavailable
        from .run_capture import RunCapture

        assert self._workroot is not None
        capture = RunCapture(port_range, self._workroot / "run.pcap", env={"NETLAB_RUN": self.run_marker})
        try:
            capture.start()
        except (CaptureError, CaptureUnavailable) as error:
            self.capture_off_reason = f"tcpdump did not start: {error}"
            return None
        return capture

    def describe_capture(self) -> str:
        """The header line about packet capture."""
        if self.capture_off_reason is None:
            kept = "every check" if self.settings.capture == "always" else "failing checks"
            return f"netlab capture: {self.settings.capture} (tcpdump on lo); pcaps of {kept} go to {self.artifacts}"
        if self.settings.capture == "off":
            return "netlab capture: off"
        if self.settings.capture_explicit:
            return f"netlab capture: UNAVAILABLE, you asked for {self.settings.capture}: {self.capture_off_reason}"
        return f"netlab capture: off ({self.capture_off_reason})"

    def reproduce(self, check: Check, spec: TargetSpec) -> str:
        """The command line that reruns one check against one target."""
        words = ["pytest", f"--netlab-target={spec.origin}"]
        if spec.source == "--netlab-target" and not spec.origin.startswith("reference"):
            words.append(f"--netlab-suite={check.suite}")
        words += [f"--netlab-check={check.id}", f"--netlab-seed={self.seed}"]
        if self.settings.timeout_scale != 1.0:
            words.append(f"--netlab-timeout-scale={self.settings.timeout_scale}")
        return " ".join(shlex.quote(word) for word in words)

    def finish_target(self, spec: TargetSpec) -> None:
        """Stop a target's instances once its last check in this process ran."""
        if self._pool is not None:
            self._pool.stop_target(spec)

    def close(self) -> None:
        """Stop every target and the capture, remove temporary files, dismiss the watchdog."""
        if self._pool is not None:
            self._pool.close()
        if self._capture is not None:
            self._capture.stop()
            self._capture = None
        if self._workroot is not None:
            shutil.rmtree(self._workroot, ignore_errors=True)
        if self._reaper is not None:
            self._reaper.close()
        self._pool = self._runner = self._reaper = None


def _capture_unavailable_reason() -> str | None:
    from .run_capture import RunCapture  # tcpdump and dpkt only for runs that capture

    return RunCapture.unavailable_reason()
