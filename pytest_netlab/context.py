"""The check context: everything a check function is handed.

A check is a plain function ``check(ctx)`` (trio.testing style). The context
gives it the target's address, a way to connect scripted clients, fresh
target instances for lifecycle checks, a seeded random generator, scaled
timeouts, and the verbs that end a check: :meth:`CheckContext.fail`,
:meth:`CheckContext.skip`, :meth:`CheckContext.observe`. Everything the
context opens it closes in :meth:`CheckContext.close`.

This module must not import pytest: checks run the same from a grading
script.
"""

from __future__ import annotations

import functools
import random
import shutil
import signal
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NoReturn

from .errors import NotApplicable, ProtocolViolation
from .rawclient import ScriptedClient
from .stall import StallWatch, ignores_signal, process_tree, wait_until_asleep
from .transcript import Transcript

if TYPE_CHECKING:
    from .client_target import ClientRun, RunningClient
    from .packets import Packet
    from .process import ManagedProcess
    from .run_capture import RunCapture
    from .declarations import TargetSpec
    from .registry import Check, Suite
    from .target import TargetInstance, TargetPool

__all__ = ["CheckContext", "CaptureWindow", "SIGNAL_EXIT_SECONDS", "STALL_QUIET_SECONDS"]

#: How long a target may take to exit after SIGTERM or SIGINT. A correct
#: server exits in milliseconds and one that ignores the signal never does;
#: the bound only has to survive a busy machine.
SIGNAL_EXIT_SECONDS = 5.0
# How long (before scaling) every thread of a launched target must sleep,
# unscheduled, with nothing in flight, before a read gives up on a reply (stall.py).
# Reference servers answer within milliseconds; a book-style server that polls on
# a timer keeps running and is never called stalled.
STALL_QUIET_SECONDS = 0.15
# The same when every thread waits in a call without a timeout (accept, recv, a
# lock) and no timer is armed: nothing but input from outside can wake it.
STALL_PROVEN_QUIET_SECONDS = 0.05


class CaptureWindow:
    """The part of the run's packet capture that belongs to one check.

    Created by the runner when capture is on; a check reads its packets with
    :meth:`CheckContext.packets`, and the runner saves the window as a pcap
    when the check's capture is kept.
    """

    def __init__(self, capture: RunCapture, begin: bytes) -> None:
        self.capture = capture
        self.begin = begin
        self.end: bytes | None = None
        self.server_port: int | None = None
        #: The ports whose packets belong to this check (its targets', its own servers').
        self.ports: set[int] = set()
        self.transcript_lines: list[str] = []

    def finish(self) -> None:
        """Mark the end of the check's traffic (called once the check is over)."""
        if self.end is None:
            self.end = self.capture.mark("end")

    def save(self, dest: Path, timeout: float = 5.0) -> int:
        """Write the check's packets (start to end, or to now) to ``dest``; returns how many."""
        end = self.end or self.capture.mark("peek")
        return self.capture.cut(self.begin, end, dest, self.ports, timeout)


class CheckContext:
    """What a check function gets.

    Example::

        @SUITE.check("echo", "byte-exact", title="echoes bytes unchanged")
        def check_byte_exact(ctx: CheckContext) -> None:
            message = ctx.random_bytes(64)
            with ctx.connect() as client:
                client.send(message)
                reply = client.recv_exactly(len(message))
            ctx.expect(reply == message, "the echo differs from what was sent",
                       expected=repr(message), got=repr(reply))

    Attributes:
        check: the check being run.
        spec: the target's declaration.
        suite: the suite the check belongs to.
        seed: the run's seed.
        rng: a generator seeded from the seed, the target and the check id,
            so a check makes the same choices whatever ran before it.
        transcript: every event on every connection the check opened.
        timeout_scale: ``--netlab-timeout-scale``.
        observations: notes of an INFO check.
    """

    def __init__(
        self,
        check: Check,
        spec: TargetSpec,
        suite: Suite,
        *,
        pool: TargetPool | None,
        seed: int,
        timeout_scale: float = 1.0,
        capture: CaptureWindow | None = None,
    ) -> None:
        self.check = check
        self.spec = spec
        self.suite = suite
        self.seed = seed
        self.rng = random.Random(f"{seed}/{spec.name}/{check.id}")
        self.transcript = Transcript()
        self.timeout_scale = timeout_scale
        self.observations: list[str] = []
        self._pool = pool
        self._instance: TargetInstance | None = None
        self._fresh: list[TargetInstance] = []
        self._clients: list[ScriptedClient] = []
        self._client_runs: list[RunningClient] = []
        self._cleanups: list[Callable[[], None]] = []
        self._streams = 0
        self._workdir: Path | None = None
        self._capture = capture

    # -- the target ------------------------------------------------------------

    def attach(self, instance: TargetInstance | None) -> None:
        """Set the instance the check talks to (the runner does this)."""
        self._instance = instance

    @property
    def target(self) -> TargetInstance:
        """The running instance under test (not available for address targets)."""
        if self._instance is None:
            raise NotApplicable(f"target {self.spec.name} is a running server, not a command we start")
        return self._instance

    @property
    def address(self) -> tuple[str, int]:
        """Where the target listens."""
        if self._instance is not None:
            return self._instance.address
        if self.spec.address is not None:
            return self.spec.address.host, self.spec.address.port
        raise NotApplicable("the target has no address")

    def instances(self) -> list[TargetInstance]:
        """Every instance this check used (the crash detector looks at them)."""
        return list(dict.fromkeys(([self._instance] if self._instance else []) + self._fresh))

    def fresh_target(self, host: str | None = None) -> TargetInstance:
        """Start a new instance of the target for this check alone (stopped afterwards)."""
        if self._pool is None or not self.spec.launched:
            raise NotApplicable(f"{self.check.id} starts and stops the target, and {self.spec.name} is a running server")
        instance = self._pool.fresh(self.spec, self.suite, host=host)
        self._fresh.append(instance)
        if self._instance is None:
            self._instance = instance
        return instance

    def signal_target(self, instance: TargetInstance, sig: int = signal.SIGTERM) -> None:
        """Send a signal to the target's main process; its exit is then expected, not a crash."""
        instance.expect_exit = True
        if instance.process is not None:
            instance.process.send_signal(sig)

    def start_client(self, **values: str) -> RunningClient:
        """Start the client target with these placeholder values (host, port, url...).

        The check plays the server meanwhile; :meth:`RunningClient.wait`
        collects the result. A client still running when the check ends is
        killed.
        """
        if self._pool is None or not self.spec.launched:
            raise NotApplicable(f"{self.spec.name} is not a command, so it cannot be run as a client")
        running = self._pool.client_launcher(self.spec).start(values)
        self._client_runs.append(running)
        return running

    def run_client(self, timeout: float = 10.0, **values: str) -> ClientRun:
        """Run the client target to completion (at most ``timeout`` seconds, scaled)."""
        return self.start_client(**values).wait(self.timeout(timeout))

    def expect_exit_after_signal(self, instance: TargetInstance, sig: int, *, within: float = SIGNAL_EXIT_SECONDS, situation: str = "") -> None:
        """Signal the target and fail unless it exits within ``within`` seconds (scaled); then stop it.

        Args:
            situation: what was going on, for the message ("a client was connected").
        """
        name = signal.Signals(sig).name
        process = instance.process
        assert process is not None
        # SIG_IGN is certain at once: the signal is discarded, nothing will end the wait.
        ignored = ignores_signal(process.pid, sig)
        self._wait_until_asleep(process)
        self.signal_target(instance, sig)
        limit = self.timeout(within)
        if ignored or process.wait(limit) is None:
            self.fail(
                (f"the target ignores {name} (SIG_IGN)" if ignored else f"the target did not exit within {limit:.1f} s of {name}")
                + (f" ({situation})" if situation else ""),
                expected=f"exit promptly on {name}",
                got=f"still running, with {name} set to SIG_IGN" if ignored else "still running",
                hint="do not ignore SIGTERM/SIGINT; make worker threads daemon threads so they do not keep the process alive",
            )
        instance.stop()

    @staticmethod
    def _wait_until_asleep(process: ManagedProcess, limit: float = 1.0) -> None:
        """Wait (at most ``limit`` s) until every thread of the target sleeps in a system call.

        A signal that lands while a Python server's main thread is between two
        blocking calls runs the C handler at once, but the Python handler (the
        KeyboardInterrupt) only after the next call returns: a threaded server
        then sits in accept() and ignores the SIGINT (about 1 run in 100 on a
        busy machine). Asleep, the call is interrupted and the handler runs.
        """
        wait_until_asleep(functools.partial(process_tree, process.pid, process.cgroup), limit, interval=0.01)

    # -- talking to it ---------------------------------------------------------

    @property
    def workdir(self) -> Path:
        """A directory of this check's own for files handed to a target; removed afterwards."""
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="check-", dir=self._pool.workroot if self._pool else None))
        return self._workdir

    def timeout(self, seconds: float) -> float:
        """A protocol timeout, scaled by ``--netlab-timeout-scale``."""
        return seconds * self.timeout_scale

    def connect(
        self,
        address: tuple[str, int] | None = None,
        *,
        timeout: float = 5.0,
        label: str | None = None,
        receive_buffer: int | None = None,
        source_host: str | None = None,
    ) -> ScriptedClient:
        """Open a scripted TCP client to the target (or ``address``), recorded in the transcript."""
        self._streams += 1
        client = ScriptedClient.connect(
            address or self.address,
            transcript=self.transcript,
            stream=label or f"conn{self._streams}",
            timeout=self.timeout(timeout),
            receive_buffer=receive_buffer,
            source_host=source_host,
        )
        self._clients.append(client)
        client.stall_watch = self._stall_watch(address or self.address, client)
        return client

    def _stall_watch(self, address: tuple[str, int], client: ScriptedClient) -> StallWatch | None:
        """A watch on the launched instance at ``address`` (not a proxy in front of it, whose delays it cannot see)."""
        for instance in self.instances():
            process = instance.process
            if instance.address == address and process is not None and process.running:
                return StallWatch(
                    functools.partial(process_tree, process.pid, process.cgroup),
                    server_port=address[1],
                    client_port=client.sock.getsockname()[1],
                    quiet=self.timeout(STALL_QUIET_SECONDS),
                    proven_quiet=self.timeout(STALL_PROVEN_QUIET_SECONDS),
                )
        return None

    def allocate_port(self) -> int:
        """A free port for a server the check plays (a client suite's server).

        It comes from the worker's port range, so the run's packet capture
        records it, and it is added to this check's capture.
        """
        from .ports import PortAllocator

        port = self._pool.allocate_port() if self._pool is not None else PortAllocator().allocate()
        self.capture_port(port)
        return port

    def capture_port(self, port: int) -> None:
        """Include traffic to or from ``port`` (a server the check plays) in its capture."""
        if self._capture is not None:
            self._capture.ports.add(port)

    def packets(self) -> list[Packet] | None:
        """The packets this check has exchanged so far, or None when capture is off.

        Checks use it for what the socket API cannot see (who sent the RST,
        whether a FIN came first); without capture they judge by the socket
        API alone and say so.
        """
        if self._capture is None:
            return None
        from .packets import packets

        self._capture.ports.update(i.port for i in self.instances() if i.port)
        dest = self.workdir / f"peek-{len(self.transcript)}.pcap"
        self._capture.save(dest, timeout=self.timeout(5.0))
        return packets(dest)

    @property
    def capturing(self) -> bool:
        """True when the run's packet capture covers this check."""
        return self._capture is not None

    def random_bytes(self, n: int) -> bytes:
        """``n`` seeded random bytes."""
        return self.rng.randbytes(n)

    # -- verdicts --------------------------------------------------------------

    def fail(self, summary: str, *, expected: str = "", got: str = "", hint: str = "") -> NoReturn:
        """End the check: the target broke the rule."""
        raise ProtocolViolation(summary, expected=expected, got=got, hint=hint)

    def expect(self, condition: bool, summary: str, *, expected: str = "", got: str = "", hint: str = "") -> None:
        """Fail with these words unless ``condition`` holds."""
        if not condition:
            self.fail(summary, expected=expected, got=got, hint=hint)

    def skip(self, reason: str) -> NoReturn:
        """End the check: it does not apply here."""
        raise NotApplicable(reason)

    def observe(self, note: str) -> None:
        """Record an observation (INFO checks report these)."""
        self.observations.append(note)

    def add_cleanup(self, func: Callable[[], None]) -> None:
        """Run ``func`` when the check ends, whatever happened."""
        self._cleanups.append(func)

    def close(self) -> None:
        """Close every client, run cleanups, stop fresh instances."""
        if self._capture is not None:
            ports = [i.port for i in self.instances() if i.port] or ([self.spec.address.port] if self.spec.address else [])
            self._capture.server_port = ports[0] if ports else None
            self._capture.ports.update(ports)
            self._capture.transcript_lines = self.transcript.lines(last=0)
        for client in self._clients:
            client.close()
        for running in self._client_runs:
            running.stop()
        if self._capture is not None:
            self._capture.finish()
        for func in reversed(self._cleanups):
            func()
        if self._pool is not None:
            for instance in self._fresh:
                self._pool.release(instance)
        self._fresh.clear()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
