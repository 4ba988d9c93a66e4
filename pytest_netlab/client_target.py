"""Client targets: running a client command once per check, to completion.

In a client suite (udp-client, tls-client, http-client) the check plays the
server and the target is a program that connects to it, does its job, prints
what it got and exits. :class:`ClientLauncher` runs that program with the
check's placeholders filled in, under the same isolation as a server target
(own session, scrubbed environment, limits, marker), waits for it within a
bound, and returns a :class:`ClientRun`: exit status, stdout bytes, stderr
tail, duration, and whether it had to be killed.

This module must not play any protocol; checks do that.
"""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .declarations import TargetSpec
from .errors import HarnessError, TargetStartError
from .placeholders import fill_command, split_command
from .process import ExitStatus, LaunchError, ManagedProcess, scrubbed_environment
from .target import limits_for

__all__ = ["ClientRun", "RunningClient", "ClientLauncher"]

# A client's stdout is its answer: keep all of it up to this size.
_STDOUT_KEPT = 4 * 2**20


@dataclass
class ClientRun:
    """How one run of a client target ended."""

    argv: list[str]
    status: ExitStatus
    timed_out: bool
    stdout: bytes
    stdout_truncated: bool
    stderr_tail: list[str] = field(default_factory=list)
    duration: float = 0.0

    @property
    def succeeded(self) -> bool:
        """Exited by itself with status 0."""
        return not self.timed_out and self.status.returncode == 0

    def describe(self) -> str:
        """One paragraph for failure messages: how it ended, what it printed."""
        ended = f"was killed after {self.duration:.1f} s (it did not exit by itself)" if self.timed_out else self.status.describe()
        lines = [f"the client {ended}", f"  command: {' '.join(self.argv)}"]
        shown = self.stdout[:300]
        lines.append(f"  stdout: {shown!r}{'...' if len(self.stdout) > 300 else ''}")
        if self.stderr_tail:
            lines.append("  stderr (last lines):")
            lines.extend(f"    {line}" for line in self.stderr_tail[-8:])
        return "\n".join(lines)


class RunningClient:
    """A client target that was started and has not been waited for yet."""

    def __init__(self, process: ManagedProcess, started: float) -> None:
        self.process = process
        self._started = started
        self._result: ClientRun | None = None

    def wait(self, timeout: float) -> ClientRun:
        """Wait up to ``timeout`` seconds for the client to exit, then stop it either way."""
        if self._result is not None:
            return self._result
        status = self.process.wait(timeout)
        timed_out = status is None
        final = self.process.terminate(grace=0.5)
        process = self.process
        self._result = ClientRun(
            argv=list(process.argv),
            status=final,
            timed_out=timed_out,
            stdout=process.stdout.data(),
            stdout_truncated=process.stdout.truncated,
            stderr_tail=process.stderr.tail_lines(20),
            duration=time.monotonic() - self._started,
        )
        return self._result

    def stop(self) -> None:
        """Kill the client now if it still runs (cleanup)."""
        if self._result is None:
            self.wait(0.0)


class ClientLauncher:
    """Starts runs of one client target.

    Args:
        spec: the target's declaration (a command).
        workdir: a directory of its own (HOME and TMPDIR).
        run_marker: marks its processes for cleanup.
    """

    def __init__(self, spec: TargetSpec, workdir: Path, run_marker: str) -> None:
        if spec.command is None:
            raise HarnessError(f"target {spec.name} has no command to run")
        self.spec = spec
        self.workdir = workdir
        self.run_marker = run_marker
        self._words = split_command(spec.command, source=spec.source, target=spec.name)

    def start(self, values: Mapping[str, str]) -> RunningClient:
        """Start the client with these placeholder values (``python`` is added)."""
        try:
            argv = fill_command(self._words, {"python": sys.executable, **values})
        except KeyError as missing:
            raise HarnessError(f"the check did not provide placeholder {missing}") from None
        home, tmp = self.workdir / "home", self.workdir / "tmp"
        home.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(parents=True, exist_ok=True)
        env = scrubbed_environment(self.spec.env, home=home, tmpdir=tmp)
        env["NETLAB_RUN"] = self.run_marker
        try:
            process = ManagedProcess.start(
                argv,
                cwd=self.spec.cwd,
                env=env,
                limits=limits_for(self.spec),
                log_head=_STDOUT_KEPT,
                marker=f"c-{uuid.uuid4().hex[:20]}",
                die_with_parent=False,  # the run's Reaper kills it if pytest dies; a start is 10 ms faster
            )
        except LaunchError as error:
            raise TargetStartError(f"target {self.spec.name} could not be started: {error}", details=f"command: {' '.join(argv)}") from None
        return RunningClient(process, time.monotonic())
