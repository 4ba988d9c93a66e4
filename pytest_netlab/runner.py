"""Running one check against one target, and the verdict it earns.

:class:`CheckRunner` gets the target ready (shared or fresh instance), calls
the check with a :class:`~pytest_netlab.context.CheckContext`, notices a
target that crashed meanwhile, and turns whatever happened into a
:class:`Verdict` with a message that teaches (STYLE.md). It decides *whose
fault* an error is: a violation or a crash blames the target, a harness
error or a bug in a check never does.

This module must not import pytest; the plugin maps verdicts to pytest
outcomes.
"""

from __future__ import annotations

import re
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .context import CaptureWindow, CheckContext
from .declarations import TargetSpec
from .errors import HarnessError, NotApplicable, ProtocolViolation, TargetCrashed, TargetError
from .registry import Check, Role, Severity, Suite
from .stall import thread_activity
from .target import TargetPool

if TYPE_CHECKING:
    from .process import ExitStatus, ManagedProcess
    from .run_capture import RunCapture

__all__ = ["Verdict", "CheckRunner", "OUTCOMES", "ipv6_available"]

# Outcomes whose capture --netlab-capture=on-failure keeps.
_KEEP_ON_FAILURE = ("failed", "unmet", "error")

# Seconds a failed check waits for a dying target's exit status (bounded, and
# only on the failure path: a passing check never waits).
_CRASH_SETTLE = 0.3

#: passed; failed (a MUST, or a SHOULD under --netlab-strict); unmet (a SHOULD);
#: observed (an INFO note); skipped (not applicable); error (harness).
OUTCOMES = ("passed", "failed", "unmet", "observed", "skipped", "error")


@dataclass
class Verdict:
    """What one check concluded about one target."""

    outcome: str
    summary: str = ""
    message: str = ""
    duration: float = 0.0
    #: Seconds spent in the check function itself (the protocol's own waiting
    #: included); ``duration`` minus this is the harness's overhead.
    check_time: float = 0.0
    artifacts: dict[str, str] = field(default_factory=dict)


def ipv6_available() -> bool:
    """True when this machine can bind ::1."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


class CheckRunner:
    """Runs checks for one worker.

    Args:
        pool: the worker's target instances.
        seed: the run's seed.
        timeout_scale: ``--netlab-timeout-scale``.
        strict: unmet SHOULD checks fail (``--netlab-strict``).
        reproduce: builds the command line that reruns one check.
    """

    def __init__(
        self,
        pool: TargetPool,
        *,
        seed: int,
        timeout_scale: float,
        strict: bool,
        reproduce: Callable[[Check, TargetSpec], str],
        capture: RunCapture | None = None,
        capture_mode: str = "off",
        artifacts: Path | None = None,
    ) -> None:
        self.pool = pool
        self.seed = seed
        self.timeout_scale = timeout_scale
        self.strict = strict
        self.reproduce = reproduce
        self.capture = capture
        self.capture_mode = capture_mode
        self.artifacts = artifacts or Path("netlab-artifacts")
        self._check_seconds = 0.0

    def run(self, check: Check, spec: TargetSpec, suite: Suite) -> Verdict:
        """Run ``check`` against ``spec`` and return its verdict; never raises."""
        started = time.monotonic()
        begin = self.capture.mark(f"begin {check.id} [{spec.name}]") if self.capture else None
        evidence = CaptureWindow(self.capture, begin) if self.capture and begin else None
        self._check_seconds = 0.0
        verdict = self._run(check, spec, suite, evidence)
        verdict.duration = time.monotonic() - started
        verdict.check_time = self._check_seconds
        if evidence is not None and (verdict.outcome in _KEEP_ON_FAILURE or self.capture_mode == "always"):
            self._keep_evidence(check, spec, verdict, evidence)
        return verdict

    def _keep_evidence(self, check: Check, spec: TargetSpec, verdict: Verdict, evidence: CaptureWindow) -> None:
        from .packets import ladder, packets  # dpkt is loaded only when a capture is kept

        base = self.artifacts / _file_name(spec.name) / check.id.replace("/", "__")
        pcap = base.with_suffix(".pcap")
        try:
            count = evidence.save(pcap)
        except HarnessError as error:
            verdict.message += f"\n  capture:    not kept ({error})"
            return
        verdict.artifacts["pcap"] = str(pcap)
        if evidence.transcript_lines:
            transcript = base.with_suffix(".transcript.txt")
            transcript.write_text("\n".join(evidence.transcript_lines) + "\n")
            verdict.artifacts["transcript"] = str(transcript)
        if verdict.outcome in _KEEP_ON_FAILURE:
            picture = ladder(packets(pcap), server_port=evidence.server_port, limit=30) if count else "  (no packets)"
            verdict.message += f"\n  capture:    {pcap} ({count} packets; tshark -r or Wireshark opens it)\n  packets:\n" + "\n".join(
                "    " + line for line in picture.splitlines()
            )

    def _not_applicable(self, check: Check, spec: TargetSpec) -> str | None:
        missing = spec.missing_requirements()
        if missing:
            return f"target {spec.name} needs {', '.join(missing)}, which is not installed"
        if check.role is Role.CLIENT and not spec.launched:
            return f"{spec.name} is a running server, but {check.suite} checks a client program: give its command"
        if ("lifecycle" in check.needs or check.fresh_target) and not spec.launched:
            return f"{spec.name} is a running server: this check must start, stop or restart it"
        if "ipv6" in check.needs and not ipv6_available():
            return "IPv6 loopback (::1) is not available on this machine"
        return None

    def _run(self, check: Check, spec: TargetSpec, suite: Suite, evidence: CaptureWindow | None) -> Verdict:
        reason = self._not_applicable(check, spec)
        if reason:
            return Verdict("skipped", summary=reason, message=reason)
        ctx = CheckContext(check, spec, suite, pool=self.pool, seed=self.seed, timeout_scale=self.timeout_scale, capture=evidence)
        try:
            try:
                if spec.launched and not check.fresh_target and suite.role is Role.SERVER:
                    ctx.attach(self.pool.shared(spec, suite))
                called = time.monotonic()
                try:
                    check.func(ctx)
                finally:
                    self._check_seconds = time.monotonic() - called
            finally:
                crash = _find_crash(ctx)
            if crash is not None:
                raise crash
        except ProtocolViolation as violation:
            crash = _find_crash(ctx, settle=ctx.timeout(_CRASH_SETTLE))
            return self._violation(check, spec, ctx, violation, crash)
        except TargetError as error:
            return Verdict("failed", summary=error.summary, message=self._render_target_error(check, spec, ctx, error))
        except NotApplicable as error:
            return Verdict("skipped", summary=str(error), message=str(error))
        except HarnessError as error:
            return Verdict("error", summary=str(error), message=self._render_harness(check, spec, str(error)))
        except (ConnectionError, TimeoutError) as error:
            # A raw socket call in a check met the target's RST or silence: that is the target's doing.
            network_failure = ProtocolViolation(
                f"the connection failed: {type(error).__name__}: {error}",
                expected="the target keeps the connection open and answers",
                got=f"{type(error).__name__} ({error})",
            )
            return self._violation(check, spec, ctx, network_failure, _find_crash(ctx, settle=ctx.timeout(_CRASH_SETTLE)))
        except Exception:
            detail = traceback.format_exc(limit=8)
            return Verdict("error", summary="internal error in the check", message=self._render_harness(check, spec, detail))
        finally:
            ctx.close()
        if check.severity is Severity.INFO and ctx.observations:
            note = "; ".join(ctx.observations)
            return Verdict("observed", summary=note, message=f"{check.id} (INFO): {note}")
        return Verdict("passed")

    # -- rendering -----------------------------------------------------------

    def _violation(self, check: Check, spec: TargetSpec, ctx: CheckContext, violation: ProtocolViolation, crash: TargetCrashed | None) -> Verdict:
        if check.severity is Severity.INFO:
            outcome, label = "observed", "OBSERVED"
        elif check.severity is Severity.SHOULD and not self.strict:
            outcome, label = "unmet", "SHOULD NOT MET"
        else:
            outcome, label = "failed", "FAILED"
        lines = [f"{check.id} {label} ({check.severity.value}): {check.title}", f"  problem:    {violation.summary}"]
        if check.references:
            lines.append(f"  reference:  {'; '.join(check.references)}")
        if violation.expected:
            lines.append(f"  expected:   {violation.expected}")
        if violation.got:
            lines.append(f"  got:        {violation.got}")
        if violation.hint:
            lines.append(f"  hint:       {violation.hint}")
        excerpt = violation.excerpt or ctx.transcript.excerpt(last=8)
        if excerpt:
            lines.append(f"  transcript: {excerpt}")
        if crash is not None:
            lines.append(f"  target:     {crash.summary}")
            lines.extend("    " + line for line in crash.details.splitlines())
        lines.append(f"  reproduce:  {self.reproduce(check, spec)}")
        return Verdict(outcome, summary=violation.summary, message="\n".join(lines))

    def _render_target_error(self, check: Check, spec: TargetSpec, ctx: CheckContext, error: TargetError) -> str:
        lines = [f"{check.id} FAILED ({check.severity.value}): {check.title}", f"  problem:    {error.summary}"]
        lines.extend("  " + line for line in error.details.splitlines())
        excerpt = ctx.transcript.excerpt(last=6)
        if excerpt:
            lines.append(f"  transcript: {excerpt}")
        lines.append(f"  reproduce:  {self.reproduce(check, spec)}")
        return "\n".join(lines)

    def _render_harness(self, check: Check, spec: TargetSpec, detail: str) -> str:
        return (
            f"{check.id} HARNESS ERROR against {spec.name}: pytest-netlab itself failed; this says nothing about the target.\n"
            f"{detail.rstrip()}\n"
            f"  reproduce:  {self.reproduce(check, spec)}"
        )


def _find_crash(ctx: CheckContext, settle: float = 0.0) -> TargetCrashed | None:
    """A TargetCrashed for the first instance that died without being asked to.

    Args:
        settle: after a failed check, how long to give a dying target to
            finish exiting: its RST often arrives before its exit status.
    """
    for instance in ctx.instances():
        process = instance.process
        if process is None or instance.expect_exit:
            continue
        status = _exit_status_unless_asleep(process, settle) if settle else process.poll()
        if status is not None:
            return TargetCrashed(
                f"the target crashed during this check: it {status.describe()}",
                details=process.describe(),
            )
    return None


def _exit_status_unless_asleep(process: ManagedProcess, settle: float) -> ExitStatus | None:
    """The exit status within ``settle`` s, or None as soon as the process is seen asleep.

    A dying process runs (or waits on the disk) until it exits; one whose
    threads all sleep, unscheduled, between two looks 10 ms apart is alive and
    staying so: no need to wait out the settle time on every failed check.
    """
    deadline = time.monotonic() + settle
    last = None
    while True:
        status = process.poll()
        if status is not None or time.monotonic() >= deadline:
            return status
        activity = thread_activity([process.pid])
        if activity is not None and activity == last:
            return None
        last = activity
        status = process.wait(min(0.01, max(0.0, deadline - time.monotonic())))
        if status is not None:
            return status


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)
