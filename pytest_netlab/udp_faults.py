"""What the lossy UDP proxy does to each datagram: a pure, seeded fault model.

This module owns the decision for one datagram: loss, Gilbert-Elliott burst
loss, duplication, reordering, delay with jitter, corruption, and scripted
rules ("drop the first 3 requests", "answer from another port"). The entry
point is :func:`route`, ``route(datagram, state, rng) -> Decision``, in the
manner of trio's ``FakeNet``: the same datagram, state and ``random.Random``
state always give the same decision. It must not do any I/O, read a clock,
sleep or start threads; :mod:`pytest_netlab.udp_proxy` carries decisions out
on real sockets and logs them.

Example::

    rng = random.Random(1234)
    state = FaultState(Faults(loss=0.3, duplicate=0.1), Script.drop_first(3))
    decision = route(Datagram(CLIENT_TO_SERVER, b"ping", "127.0.0.1:40312", 0, 0), state, rng)
    decision.dropped, decision.describe()   # (True, 'dropped (script: drop_first(3))')
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable

from pytest_netlab.transcript import CLIENT_TO_SERVER, SERVER_TO_CLIENT

__all__ = [
    "DELIVER",
    "Datagram",
    "Decision",
    "FaultState",
    "Faults",
    "GilbertElliott",
    "Rule",
    "Script",
    "route",
]


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


def _check_seconds(name: str, value: float) -> None:
    if value < 0.0:
        raise ValueError(f"{name} must be >= 0 seconds, got {value!r}")


@dataclass(frozen=True)
class GilbertElliott:
    """Two-state burst-loss model (Gilbert-Elliott), the model of ``netem loss gemodel``.

    Each datagram first moves the channel between a *good* and a *bad* state,
    then is lost with the loss probability of the state it is in. With the
    defaults (nothing lost in good, everything lost in bad) a loss burst is a
    stay in the bad state: its length is geometric with mean
    ``1 / p_leave_bad``.

    Attributes:
        p_enter_bad: probability per datagram of going from good to bad (netem ``p``).
        p_leave_bad: probability per datagram of going from bad to good (netem ``r``).
        loss_in_bad: loss probability in the bad state (netem ``1-h``).
        loss_in_good: loss probability in the good state (netem ``1-k``).

    Example::

        Faults(burst=GilbertElliott.from_loss(loss_rate=0.1, mean_burst=4))
    """

    p_enter_bad: float
    p_leave_bad: float
    loss_in_bad: float = 1.0
    loss_in_good: float = 0.0

    def __post_init__(self) -> None:
        for name in ("p_enter_bad", "p_leave_bad", "loss_in_bad", "loss_in_good"):
            _check_probability(f"GilbertElliott.{name}", getattr(self, name))

    @classmethod
    def from_loss(cls, loss_rate: float, mean_burst: float) -> GilbertElliott:
        """The simple Gilbert model with a given long-run loss rate and mean burst length."""
        _check_probability("loss_rate", loss_rate)
        if loss_rate >= 1.0 or mean_burst < 1.0:
            raise ValueError(f"need loss_rate < 1 and mean_burst >= 1, got {loss_rate!r}, {mean_burst!r}")
        leave = 1.0 / mean_burst
        # Stationary P(bad) = p / (p + r) = loss_rate  =>  p = loss_rate * r / (1 - loss_rate).
        enter = loss_rate * leave / (1.0 - loss_rate)
        if enter > 1.0:
            raise ValueError(f"loss_rate {loss_rate} is unreachable with bursts of mean {mean_burst}")
        return cls(enter, leave)

    @property
    def loss_rate(self) -> float:
        """The long-run fraction of datagrams lost."""
        total = self.p_enter_bad + self.p_leave_bad
        in_bad = self.p_enter_bad / total if total else 0.0
        return in_bad * self.loss_in_bad + (1.0 - in_bad) * self.loss_in_good

    @property
    def mean_burst(self) -> float:
        """Mean number of consecutive datagrams spent in the bad state."""
        return 1.0 / self.p_leave_bad if self.p_leave_bad else float("inf")


@dataclass(frozen=True)
class Faults:
    """The random faults applied to one direction of traffic.

    Attributes:
        loss: independent loss probability per datagram.
        burst: an optional Gilbert-Elliott burst-loss model, applied as well.
        duplicate: probability that a datagram is sent twice.
        reorder: probability that a datagram is held back until the next
            datagram of the same client and direction has gone out (so it
            arrives after it), or ``reorder_timeout`` seconds at most.
        reorder_timeout: the longest a reordered datagram is held.
        delay: seconds added to every datagram.
        jitter: each delay is ``delay`` plus a uniform draw in
            ``[-jitter, +jitter]``, never below zero.
        corrupt: probability that one bit of one byte is flipped.

    Example::

        Faults(loss=0.3, delay=0.05, jitter=0.01)
    """

    loss: float = 0.0
    burst: GilbertElliott | None = None
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_timeout: float = 0.1
    delay: float = 0.0
    jitter: float = 0.0
    corrupt: float = 0.0

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder", "corrupt"):
            _check_probability(f"Faults.{name}", getattr(self, name))
        for name in ("reorder_timeout", "delay", "jitter"):
            _check_seconds(f"Faults.{name}", getattr(self, name))

    @property
    def is_clean(self) -> bool:
        """True when nothing is configured: every datagram is delivered at once."""
        return not (
            self.loss or self.burst or self.duplicate or self.reorder or self.delay or self.jitter or self.corrupt
        )


@dataclass(frozen=True)
class Datagram:
    """What a decision may look at: one datagram as the proxy received it.

    Attributes:
        direction: ``"c->s"`` (a request) or ``"s->c"`` (a reply).
        data: the payload.
        client: the client's address as ``"127.0.0.1:40312"`` (the flow it belongs to).
        index: 0-based position among all datagrams the proxy saw in this direction.
        flow_index: 0-based position among this client's datagrams in this direction.
    """

    direction: str
    data: bytes
    client: str
    index: int
    flow_index: int


@dataclass(frozen=True)
class Decision:
    """What to do with one datagram.

    Attributes:
        delays: one entry per copy to send, the seconds to hold it; ``()`` drops it.
        hold: reordering: the copies wait until the next datagram of the same
            client and direction has gone out, ``delays`` being the longest wait.
        flips: corruption as ``(byte offset, xor mask)`` pairs.
        other_port: send from the proxy's spare port instead of the expected address.
        spoof: a payload sent at once from the spare port before the copies
            (the third-party datagram of the "promiscuous client" test).
        reason: why, for the transcript (``"loss p=0.3"``, ``"script: drop_first(3)"``).

    Example::

        Decision(delays=(0.0, 0.3), reason="late duplicate")   # twice, 300 ms apart
    """

    delays: tuple[float, ...] = (0.0,)
    hold: bool = False
    flips: tuple[tuple[int, int], ...] = ()
    other_port: bool = False
    spoof: bytes | None = None
    reason: str = ""

    @classmethod
    def drop(cls, reason: str = "") -> Decision:
        """A decision to drop the datagram."""
        return cls(delays=(), reason=reason)

    @property
    def dropped(self) -> bool:
        return not self.delays

    @property
    def duplicated(self) -> bool:
        return len(self.delays) > 1

    @property
    def delayed(self) -> bool:
        return not self.hold and any(d > 0.0 for d in self.delays)

    @property
    def corrupted(self) -> bool:
        return bool(self.flips)

    def apply(self, data: bytes) -> bytes:
        """The payload to send: ``data`` with the corruption flips applied."""
        if not self.flips:
            return data
        damaged = bytearray(data)
        for offset, mask in self.flips:
            damaged[offset] ^= mask
        return bytes(damaged)

    def describe(self) -> str:
        """One line for the transcript: ``"delivered"``, ``"dropped (loss p=0.3)"``..."""
        why = f" ({self.reason})" if self.reason else ""
        if self.dropped:
            return f"dropped{why}"
        parts = []
        if self.spoof is not None:
            parts.append(f"spoofed {self.spoof!r} from the other port first")
        if self.duplicated:
            parts.append(f"duplicated x{len(self.delays)}")
        if self.hold:
            parts.append(f"reordered (held for the next datagram, at most {max(self.delays):.3f} s)")
        elif self.delayed:
            parts.append("delayed " + ", ".join(f"{d:.3f}" for d in self.delays) + " s")
        for offset, mask in self.flips:
            parts.append(f"corrupted byte {offset} (xor 0x{mask:02x})")
        if self.other_port:
            parts.append("from the other port")
        return (", ".join(parts) or "delivered") + why


#: Deliver once, at once, untouched: the decision of the fast path.
DELIVER = Decision()

#: A scripted rule: looks at a datagram and decides, or returns None to pass.
Rule = Callable[[Datagram], Decision | None]


def _index_set(indices: int | Iterable[int]) -> frozenset[int]:
    return frozenset((indices,) if isinstance(indices, int) else indices)


def _shown(indices: frozenset[int]) -> str:
    return "{" + ", ".join(map(str, sorted(indices))) + "}"


class Script:
    """Scripted decisions that override the random faults for chosen datagrams.

    A script is an ordered list of rules; the first rule that returns a
    :class:`Decision` wins, and a datagram no rule claims gets the random
    decision. Scripts add up with ``+``. Indices are 0-based and count all
    datagrams the proxy saw in that direction (:attr:`Datagram.index`).

    Example::

        script = Script.drop_first(3) + Script.reply_from_other_port(0)
        script = Script(lambda d: Decision.drop("too big") if len(d.data) > 512 else None)
    """

    def __init__(self, *rules: Rule) -> None:
        self.rules: tuple[Rule, ...] = rules

    def __add__(self, other: Script) -> Script:
        return Script(*self.rules, *other.rules)

    def __repr__(self) -> str:
        return " + ".join(_rule_name(rule) for rule in self.rules) or "Script()"

    def decide(self, datagram: Datagram) -> Decision | None:
        """The first rule's decision for ``datagram``, or None if no rule claims it."""
        for rule in self.rules:
            decision = rule(datagram)
            if decision is not None:
                reason = decision.reason or f"script: {_rule_name(rule)}"
                return decision if reason == decision.reason else replace(decision, reason=reason)
        return None

    @classmethod
    def drop_first(cls, count: int) -> Script:
        """Drop the first ``count`` requests (client-to-server datagrams), counted over all clients."""
        return cls(_NamedRule(f"drop_first({count})", CLIENT_TO_SERVER, lambda d: d.index < count, Decision.drop()))

    @classmethod
    def drop_requests(cls, indices: int | Iterable[int]) -> Script:
        """Drop the requests at these 0-based indices."""
        chosen = _index_set(indices)
        name = f"drop_requests({_shown(chosen)})"
        return cls(_NamedRule(name, CLIENT_TO_SERVER, lambda d: d.index in chosen, Decision.drop()))

    @classmethod
    def drop_replies(cls, indices: int | Iterable[int]) -> Script:
        """Drop the replies (server-to-client datagrams) at these 0-based indices."""
        chosen = _index_set(indices)
        name = f"drop_replies({_shown(chosen)})"
        return cls(_NamedRule(name, SERVER_TO_CLIENT, lambda d: d.index in chosen, Decision.drop()))

    @classmethod
    def reply_from_other_port(cls, indices: int | Iterable[int]) -> Script:
        """Send these replies from the proxy's spare port: a correct client ignores them."""
        chosen = _index_set(indices)
        name = f"reply_from_other_port({_shown(chosen)})"
        return cls(_NamedRule(name, SERVER_TO_CLIENT, lambda d: d.index in chosen, Decision(other_port=True)))

    @classmethod
    def spoof_reply(cls, index: int, payload: bytes = b"FAKE", delay: float = 0.05) -> Script:
        """Before reply ``index``, send ``payload`` from the spare port; the real reply follows ``delay`` s later."""
        _check_seconds("delay", delay)
        decision = Decision(delays=(delay,), spoof=payload)
        name = f"spoof_reply({index}, {payload!r}, delay={delay:g})"
        return cls(_NamedRule(name, SERVER_TO_CLIENT, lambda d: d.index == index, decision))


@dataclass(frozen=True)
class _NamedRule:
    """A built-in rule: in one direction, when ``matches``, decide ``decision``."""

    name: str
    direction: str
    matches: Callable[[Datagram], bool]
    decision: Decision

    def __call__(self, datagram: Datagram) -> Decision | None:
        if datagram.direction == self.direction and self.matches(datagram):
            return self.decision
        return None


def _rule_name(rule: Rule) -> str:
    return rule.name if isinstance(rule, _NamedRule) else getattr(rule, "__name__", repr(rule))


@dataclass
class FaultState:
    """The model's state for one direction: its faults, the script, the burst state.

    The only thing :func:`route` changes here is ``in_bad_state``.

    Example::

        state = FaultState(Faults(burst=GilbertElliott(0.05, 0.5)))
    """

    faults: Faults = field(default_factory=Faults)
    script: Script | None = None
    in_bad_state: bool = False

    @property
    def is_clean(self) -> bool:
        """True when every datagram will be delivered at once untouched."""
        return self.faults.is_clean and not (self.script and self.script.rules)


def route(datagram: Datagram, state: FaultState, rng: random.Random) -> Decision:
    """Decide what happens to ``datagram``.

    Every configured fault draws from ``rng`` for every datagram, whatever
    happened to earlier ones and whatever the script decides, so the random
    decision for the n-th datagram depends only on the seed, the faults and n:
    adding a scripted rule or changing payload sizes does not shift the
    others. Loss is drawn first; a lost datagram is dropped whatever else
    was drawn for it.
    """
    decision = _random_decision(state, rng, len(datagram.data))
    if state.script is not None:
        scripted = state.script.decide(datagram)
        if scripted is not None:
            return scripted
    return decision


def _random_decision(state: FaultState, rng: random.Random, size: int) -> Decision:
    faults = state.faults
    if faults.is_clean:
        return DELIVER
    drop_reasons: list[str] = []
    if faults.loss and rng.random() < faults.loss:
        drop_reasons.append(f"loss p={faults.loss:g}")
    if faults.burst is not None:
        burst = faults.burst
        leave_or_enter = burst.p_leave_bad if state.in_bad_state else burst.p_enter_bad
        if rng.random() < leave_or_enter:
            state.in_bad_state = not state.in_bad_state
        in_state_loss = burst.loss_in_bad if state.in_bad_state else burst.loss_in_good
        if rng.random() < in_state_loss:
            drop_reasons.append("burst loss, bad state" if state.in_bad_state else "burst loss, good state")
    copies = 2 if faults.duplicate and rng.random() < faults.duplicate else 1
    hold = bool(faults.reorder) and rng.random() < faults.reorder
    delay = faults.delay
    if faults.jitter:
        delay = max(0.0, delay + (2.0 * rng.random() - 1.0) * faults.jitter)
    flips: tuple[tuple[int, int], ...] = ()
    if faults.corrupt:
        hit = rng.random() < faults.corrupt
        # One draw picks the bit, so every datagram consumes the same draws whatever its size.
        position = rng.random()
        if hit and size:
            bit = int(position * size * 8)
            flips = ((bit // 8, 1 << (bit % 8)),)
    if drop_reasons:
        return Decision.drop("; ".join(drop_reasons))
    if hold:
        delay += faults.reorder_timeout
    if copies == 1 and not hold and not flips and delay == 0.0:
        return DELIVER
    return Decision(delays=(delay,) * copies, hold=hold, flips=flips)
