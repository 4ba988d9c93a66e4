"""Running targets: one started copy of a declared target, and the pool that shares them.

A :class:`TargetInstance` is one process of a target, started for one suite
on a port we chose, ready-probed, and stopped with SIGTERM then SIGKILL to its
whole tree. The :class:`TargetPool` shares an instance between the checks of
a suite when that is safe, hands a *fresh* instance to checks that stop,
signal or restart it, restarts a target that crashed, and remembers a target
that would not start so that the next checks fail at once instead of waiting
for the startup timeout again.

This module owns the lifecycle rules of SPEC 3; process mechanics (limits,
capped logs, killing trees) live in :mod:`pytest_netlab.process`.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

from .declarations import TargetSpec
from .errors import HarnessError, TargetStartError
from .listeners import listeners_of
from .placeholders import fill_command, split_command
from .ports import PortAllocator, port_is_free
from .process import ExitStatus, LaunchError, ManagedProcess, ResourceLimits, scrubbed_environment
from .readiness import format_address, parse_ready
from .registry import Suite

if TYPE_CHECKING:
    from .client_target import ClientLauncher

__all__ = ["TargetInstance", "TargetPool", "limits_for"]

# A bind race is retried this many times before we give up and blame the machine.
_BIND_ATTEMPTS = 3
_STOP_GRACE = 2.0
_ADDRESS_IN_USE = re.compile(r"address already in use|EADDRINUSE|errno 98", re.IGNORECASE)

#: Extra placeholder values a suite prepares for an instance (certificates, docroot...).
PlaceholderProvider = Callable[["TargetInstance"], Mapping[str, str]]


def limits_for(spec: TargetSpec) -> ResourceLimits:
    """The resource limits of a target, from its ``limits`` table over the defaults."""
    defaults = ResourceLimits()
    table = spec.limits
    mib = 2**20
    return ResourceLimits(
        cpu_seconds=table.get("cpu_seconds", defaults.cpu_seconds),
        memory_bytes=table["memory_mb"] * mib if "memory_mb" in table else defaults.memory_bytes,
        processes=table.get("processes", defaults.processes),
        file_size_bytes=table["file_size_mb"] * mib if "file_size_mb" in table else defaults.file_size_bytes,
        open_files=table.get("open_files", defaults.open_files),
    )


class TargetInstance:
    """One process of a target, listening where we told it to.

    Example::

        instance = pool.fresh(spec, suite)   # started and ready
        instance.address                     # ("127.0.0.1", 17342)
        instance.restart()                   # same port: the SO_REUSEADDR check
        instance.stop()

    Attributes:
        spec: the declaration it runs.
        suite: the suite it runs for (which fills in extra placeholders).
        host: the address it was told to listen on.
        port: the port it was told to listen on.
        process: the running process, or None before start / after stop.
    """

    def __init__(
        self,
        spec: TargetSpec,
        suite: Suite | None,
        *,
        host: str,
        ports: PortAllocator,
        workdir: Path,
        run_marker: str,
        timeout_scale: float,
        placeholders: PlaceholderProvider | None = None,
    ) -> None:
        if spec.command is None:
            raise HarnessError(f"target {spec.name} has no command to start")
        self.spec = spec
        self.suite = suite
        self.host = host
        self.port = 0
        self.process: ManagedProcess | None = None
        self.workdir = workdir
        self.starts = 0
        self.last_exit: ExitStatus | None = None
        #: Set when a check signals the target on purpose: its exit is then not a crash.
        self.expect_exit = False
        self._ports = ports
        self._run_marker = run_marker
        self._scale = timeout_scale
        self._placeholders = placeholders
        self._words = split_command(spec.command, source=spec.source, target=spec.name)
        self._probe = parse_ready(spec.ready or (suite.ready if suite else "tcp"))

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def argv(self) -> list[str]:
        """The command as launched (placeholders filled in)."""
        return list(self.process.argv) if self.process else []

    def start(self, port: int | None = None) -> None:
        """Start the target and wait until it is ready.

        Args:
            port: listen on this port (a restart); None picks a new free port,
                and a lost bind race is retried on another one.

        Raises:
            TargetStartError: it could not be executed, exited, or was not
                ready within ``startup_timeout``; the message says which,
                with its exit status and output tail.
        """
        attempts = 1 if port is not None else _BIND_ATTEMPTS
        self.expect_exit = False
        for attempt in range(attempts):
            self.port = port if port is not None else self._ports.allocate()
            failure = self._launch_once()
            if failure is None:
                return
            raced = port is None and self.process is not None and self._lost_bind_race()
            self._discard()
            if raced and attempt + 1 < attempts:
                continue
            raise failure
        raise HarnessError(f"target {self.spec.name}: lost the race for a free port {attempts} times")  # pragma: no cover

    def _launch_once(self) -> TargetStartError | None:
        values = {"host": self.host, "port": str(self.port), "python": sys.executable}
        if self._placeholders is not None:
            values.update(self._placeholders(self))
        try:
            argv = fill_command(self._words, values)
        except KeyError as missing:
            provider = f"suite {self.suite.name}" if self.suite else "launch_server()"
            raise HarnessError(f"{provider} did not provide placeholder {missing}") from None
        home = self.workdir / "home"
        tmp = self.workdir / "tmp"
        home.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(parents=True, exist_ok=True)
        env = scrubbed_environment(self.spec.env, home=home, tmpdir=tmp)
        env["NETLAB_RUN"] = self._run_marker
        try:
            self.process = ManagedProcess.start(
                argv,
                cwd=self.spec.cwd,
                env=env,
                limits=limits_for(self.spec),
                marker=f"t-{uuid.uuid4().hex[:20]}",
                die_with_parent=False,  # the run's Reaper kills it if pytest dies; a start is 10 ms faster
            )
        except LaunchError as error:
            return TargetStartError(f"target {self.spec.name} could not be started: {error}", details=f"command: {' '.join(argv)}")
        self.starts += 1
        process = self.process
        timeout = self.spec.startup_timeout * self._scale
        ready = self._probe.wait(
            self.host,
            self.port,
            timeout,
            alive=lambda: process.poll() is None,
            wait_output=lambda pattern, t: process.stdout.wait_for(pattern, t, lambda: process.poll() is None) is not None,
        )
        if ready:
            return None
        return self._start_failure(timeout)

    def _start_failure(self, timeout: float) -> TargetStartError:
        assert self.process is not None
        process = self.process
        status = process.poll()
        where = format_address(self.host, self.port)
        command = " ".join(process.argv)
        if status is not None:
            summary = f"target {self.spec.name} {status.describe()} before it was ready (told to listen on {where})"
        else:
            summary = f"target {self.spec.name} was not ready after {timeout:.1f} s: waited for {self._probe.describe(self.host, self.port)}; it is still running"
            actual = [str(listener) for listener in listeners_of(process.pid, "udp" if self._probe.kind == "udp" else "tcp")]
            if actual:
                summary += f"; it listens on {', '.join(actual)} instead"
            elif self._probe.kind in ("tcp", "udp"):
                summary += " but listens on no port at all"
        return TargetStartError(summary, details=f"  command: {command}\n{_indent(process.describe())}")

    def _lost_bind_race(self) -> bool:
        """True when the port was taken by someone else between our test and the target's bind."""
        assert self.process is not None
        self.process.wait(0.2)
        stderr = self.process.stderr.text()
        return bool(_ADDRESS_IN_USE.search(stderr)) and not port_is_free(self.port)

    def _discard(self) -> None:
        if self.process is not None:
            self.last_exit = self.process.terminate(grace=_STOP_GRACE * self._scale)
            self.process = None

    def poll(self) -> ExitStatus | None:
        """The exit status if the process has ended, else None."""
        return self.process.poll() if self.process else self.last_exit

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = _STOP_GRACE) -> ExitStatus | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds, to the whole process tree."""
        if self.process is None:
            return self.last_exit
        self.last_exit = self.process.terminate(grace=grace * self._scale)
        self.process = None
        return self.last_exit

    def kill(self) -> ExitStatus | None:
        """Stop at once (SIGKILL), as a crash or ``kill -9`` would."""
        return self.stop(grace=0.0)

    def restart(self, same_port: bool = True) -> None:
        """Stop (if running) and start again, on the same port unless told otherwise."""
        port = self.port if same_port else None
        self.stop()
        self.start(port=port)

    def describe(self, lines: int = 15) -> str:
        """Exit status and output tail, for messages."""
        return self.process.describe(lines) if self.process else (self.last_exit.describe() if self.last_exit else "not started")

    def close(self) -> None:
        """Stop the target and remove its working files."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


class TargetPool:
    """The started instances of one worker, shared between checks where safe.

    Args:
        ports: where ports come from.
        run_marker: marks every process we start, so that nothing escapes cleanup.
        timeout_scale: ``--netlab-timeout-scale``.
        workroot: the run's temporary directory (instances get folders in it).
        placeholders: suite name -> provider of extra placeholder values.
    """

    def __init__(
        self,
        ports: PortAllocator,
        run_marker: str,
        timeout_scale: float,
        workroot: Path,
        placeholders: Mapping[str, PlaceholderProvider] | None = None,
    ) -> None:
        self._ports = ports
        self._run_marker = run_marker
        self._scale = timeout_scale
        self._workroot = workroot
        self._placeholders = dict(placeholders or {})
        self._shared: dict[tuple[str, str], TargetInstance] = {}
        self._start_failures: dict[tuple[str, str], TargetStartError] = {}
        self._instances: list[TargetInstance] = []
        self._clients: dict[str, ClientLauncher] = {}

    def _new(self, spec: TargetSpec, suite: Suite | None, host: str | None) -> TargetInstance:
        workdir = Path(tempfile.mkdtemp(prefix=_safe(spec.name) + "-", dir=self._workroot))
        instance = TargetInstance(
            spec,
            suite,
            host=host or spec.host,
            ports=self._ports,
            workdir=workdir,
            run_marker=self._run_marker,
            timeout_scale=self._scale,
            placeholders=(self._placeholders.get(suite.name) or suite.prepare) if suite else None,
        )
        self._instances.append(instance)
        return instance

    def _raise_if_never_started(self, key: tuple[str, str]) -> None:
        earlier = self._start_failures.get(key)
        if earlier is not None:
            raise TargetStartError(f"{earlier.summary} (when first started; not retried)", details=earlier.details)

    def shared(self, spec: TargetSpec, suite: Suite) -> TargetInstance:
        """The running instance the checks of ``suite`` share, (re)started if needed."""
        key = (spec.name, suite.name)
        self._raise_if_never_started(key)
        instance = self._shared.get(key)
        if instance is not None and instance.running:
            return instance
        if instance is None:
            instance = self._shared[key] = self._new(spec, suite, None)
        else:
            instance.stop(grace=0.0)
        try:
            instance.start()
        except TargetStartError as error:
            self._start_failures[key] = error
            raise
        return instance

    def fresh(self, spec: TargetSpec, suite: Suite | None, host: str | None = None) -> TargetInstance:
        """A new instance for one check; the caller stops it (or :meth:`release` does)."""
        self._raise_if_never_started((spec.name, suite.name if suite else ""))
        instance = self._new(spec, suite, host)
        try:
            instance.start()
        except TargetStartError:
            self.release(instance)
            raise
        return instance

    def allocate_port(self) -> int:
        """A free port from this worker's range (where the run's capture looks)."""
        return self._ports.allocate()

    @property
    def workroot(self) -> Path:
        """The run's temporary directory (removed by the watchdog if pytest dies)."""
        return self._workroot

    def client_launcher(self, spec: TargetSpec) -> "ClientLauncher":
        """Runs of a client target, each with the placeholders a check gives."""
        from .client_target import ClientLauncher

        if spec.name not in self._clients:
            workdir = Path(tempfile.mkdtemp(prefix=_safe(spec.name) + "-client-", dir=self._workroot))
            self._clients[spec.name] = ClientLauncher(spec, workdir, self._run_marker)
        return self._clients[spec.name]

    def release(self, instance: TargetInstance) -> None:
        """Stop a fresh instance and forget it."""
        instance.close()
        if instance in self._instances:
            self._instances.remove(instance)

    def stop_target(self, spec: TargetSpec) -> None:
        """Stop every instance of one target (its checks are over)."""
        for instance in [i for i in self._instances if i.spec.name == spec.name]:
            self.release(instance)
        for key in [k for k in self._shared if k[0] == spec.name]:
            del self._shared[key]

    def close(self) -> None:
        """Stop everything this pool started."""
        for instance in list(self._instances):
            self.release(instance)
        self._shared.clear()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40]


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())
