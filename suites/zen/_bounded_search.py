"""A Hypothesis search for a failing example against a live target, bounded in count and time.

Hand-picked cases catch the mistakes someone thought of; a property search
catches the rest (a question cut inside a UTF-8 character, a frame boundary
that falls one byte into the next header). A check hands
:func:`search_for_failure` a strategy and an ``attempt(example)`` that talks
to the target and raises :class:`~pytest_netlab.errors.ProtocolViolation`;
the search runs at most ``max_examples`` attempts and stops exploring when
``budget`` seconds are spent, and the smallest failing example Hypothesis
shrank to goes into the violation it raises.

The search is seeded from ``ctx.rng`` (so ``--netlab-seed`` replays it),
keeps no example database, never prints, and keeps Hypothesis's caches in
the check's own directory, so that no ``.hypothesis/`` appears where the
user runs pytest. Network timing can make an
example fail once and pass when replayed; Hypothesis calls that flaky, and
this module reports the failure it saw rather than Hypothesis's complaint.

This module must not know any protocol. It is shared by the zen and framed
suites (it belongs in ``pytest_netlab/`` once the lead moves it there).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir, storage_directory

from pytest_netlab.context import CheckContext
from pytest_netlab.errors import ProtocolViolation
from pytest_netlab.rawclient import ConnectFailed
from pytest_netlab.transcript import Transcript

__all__ = ["search_for_failure", "FoundFailure"]

T = TypeVar("T")


@dataclass
class FoundFailure(Generic[T]):
    """One failing attempt: the example, what went wrong, and its part of the transcript."""

    example: T
    violation: ProtocolViolation
    excerpt: str
    attempt: int


def _target_died(ctx: CheckContext) -> bool:
    """True once an instance the check uses has exited: every later attempt would fail for that reason."""
    for instance in ctx.instances():
        process = instance.process
        if process is not None and not instance.expect_exit and process.poll() is not None:
            return True
    return False


def _excerpt_since(transcript: Transcript, first_event: int, last: int = 12) -> str:
    """The transcript of one attempt, unmerged so that every segment shows with its time."""
    attempt = Transcript(clock_start=transcript.start)
    for event in transcript.events[first_event:]:
        attempt.record(event.direction, event.kind, event.data, event.note, event.stream, at=transcript.start + event.t)
    return attempt.excerpt(last=last, merge=False)


def search_for_failure(
    ctx: CheckContext,
    strategy: st.SearchStrategy[T],
    attempt: Callable[[T], None],
    *,
    describe: Callable[[T], str],
    max_examples: int,
    budget: float,
) -> None:
    """Try examples drawn from ``strategy`` against the target; raise the smallest failure found.

    Args:
        ctx: the check's context (its rng seeds the search; its transcript records it).
        strategy: what to try.
        attempt: talks to the target about one example; raises ProtocolViolation
            when the target gets it wrong. It must open its own connections.
        describe: one line for an example, shown in the failure.
        max_examples: at most this many examples are generated.
        budget: seconds (already scaled) after which no more attempts are made;
            shrinking stops there too, keeping the smallest failure so far.

    Raises:
        ProtocolViolation: the target failed an example; the summary names
            Hypothesis's smallest failing example and the search's seed.

    Example::

        search_for_failure(ctx, st.binary(min_size=1), lambda data: echo_once(ctx, data),
                           describe=repr, max_examples=40, budget=ctx.timeout(10))
    """
    deadline = time.monotonic() + budget
    failures: list[FoundFailure[T]] = []
    attempts = 0
    target_gone = False
    search_seed = ctx.rng.getrandbits(64)

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=False,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        print_blob=False,
    )
    @hypothesis_seed(search_seed)
    @given(strategy)
    def property_holds(example: T) -> None:
        nonlocal attempts, target_gone
        # Out of time, or the target is dead: pass at once, so that Hypothesis
        # finishes quickly and the failure already seen is the one reported.
        if target_gone or time.monotonic() > deadline or (failures and _target_died(ctx)):
            return
        attempts += 1
        first_event = len(ctx.transcript)
        try:
            attempt(example)
        except ConnectFailed as refused:
            if failures:
                # An earlier example killed the target (its exit may not be reaped yet):
                # this one says nothing about itself.
                target_gone = True
                return
            failures.append(FoundFailure(example, refused, _excerpt_since(ctx.transcript, first_event), attempts))
            raise
        except ProtocolViolation as violation:
            failures.append(FoundFailure(example, violation, _excerpt_since(ctx.transcript, first_event), attempts))
            raise

    # Hypothesis caches what it learns about source files and Unicode under its
    # home directory, ./.hypothesis by default: keep that in the check's own directory.
    users_home = storage_directory(intent_to_write=False).home_directory
    set_hypothesis_home_dir(ctx.workdir / "hypothesis")
    try:
        property_holds()
    except ProtocolViolation:
        pass  # recorded in `failures`
    except Exception:  # noqa: BLE001 - Hypothesis's Flaky*: an example failed once and passed when replayed
        if not failures:
            raise
    finally:
        set_hypothesis_home_dir(users_home)
    if not failures:
        return
    # Hypothesis only keeps a failing example that is simpler than the best so
    # far, so the last one recorded is the smallest it found.
    smallest = failures[-1]
    violation = smallest.violation
    raise ProtocolViolation(
        f"{violation.summary}; Hypothesis's smallest failing example: {describe(smallest.example)}",
        expected=violation.expected,
        got=(
            f"{violation.got} (first failure at attempt {failures[0].attempt} of {attempts}; "
            f"search seed {search_seed}, replayed by the same --netlab-seed)"
        ),
        hint=violation.hint,
        excerpt=smallest.excerpt,
    ) from None
