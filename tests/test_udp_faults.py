"""The pure fault model of the lossy UDP proxy: exact seeded decisions, rates, bursts, scripts."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_netlab.transcript import CLIENT_TO_SERVER, SERVER_TO_CLIENT
from pytest_netlab.udp_faults import (
    DELIVER,
    Datagram,
    Decision,
    Faults,
    FaultState,
    GilbertElliott,
    Script,
    route,
)

MANY = 10_000


def decide_many(
    faults: Faults,
    count: int,
    seed: int = 1234,
    data: bytes = b"0123456789",
    script: Script | None = None,
    direction: str = CLIENT_TO_SERVER,
) -> list[Decision]:
    """The decisions for ``count`` datagrams in a row, as the proxy would ask for them."""
    rng = random.Random(seed)
    state = FaultState(faults, script)
    return [route(Datagram(direction, data, "127.0.0.1:40312", i, i), state, rng) for i in range(count)]


def runs_of_losses(decisions: list[Decision]) -> list[int]:
    runs, current = [], 0
    for decision in decisions:
        if decision.dropped:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    return runs + ([current] if current else [])


# -- no faults -------------------------------------------------------------------------


def test_no_faults_delivers_everything_and_draws_nothing() -> None:
    rng = random.Random(7)
    before = rng.getstate()
    state = FaultState()
    decisions = [route(Datagram(CLIENT_TO_SERVER, b"x", "c", i, i), state, rng) for i in range(100)]
    assert all(decision is DELIVER for decision in decisions)
    assert rng.getstate() == before
    assert state.is_clean and Faults().is_clean
    assert DELIVER.describe() == "delivered"


# -- exact decisions for a seed ----------------------------------------------------------


def test_loss_decisions_are_exact_for_a_seed() -> None:
    decisions = decide_many(Faults(loss=0.5), 20, seed=1234)
    assert "".join("x" if d.dropped else "." for d in decisions) == ".xx....x.xx.x..xxxxx"
    assert decisions[1].describe() == "dropped (loss p=0.5)"


def test_combined_decisions_are_exact_for_a_seed() -> None:
    decisions = decide_many(Faults(duplicate=0.5, delay=0.05, jitter=0.02, corrupt=0.5), 4, seed=1234)
    assert [len(d.delays) for d in decisions] == [1, 1, 1, 2]
    assert [d.flips for d in decisions] == [((9, 0x01),), (), ((7, 0x80),), ()]
    assert decisions[0].delays == pytest.approx((0.0476293,))
    assert decisions[0].describe() == "delayed 0.048 s, corrupted byte 9 (xor 0x01)"
    assert decisions[3].describe() == "duplicated x2, delayed 0.055, 0.055 s"


def test_same_seed_same_decisions_other_seed_others() -> None:
    faults = Faults(loss=0.2, burst=GilbertElliott(0.05, 0.3), duplicate=0.1, reorder=0.1, jitter=0.01, corrupt=0.1)
    assert decide_many(faults, 500, seed=99) == decide_many(faults, 500, seed=99)
    assert decide_many(faults, 500, seed=99) != decide_many(faults, 500, seed=100)


@given(sizes=st.lists(st.integers(min_value=0, max_value=65507), min_size=30, max_size=30))
def test_payload_sizes_do_not_shift_later_random_decisions(sizes: list[int]) -> None:
    faults = Faults(loss=0.3, duplicate=0.3, corrupt=0.5)
    rng_a, rng_b = random.Random(5), random.Random(5)
    state_a, state_b = FaultState(faults), FaultState(faults)
    for index, size in enumerate(sizes):
        a = route(Datagram(CLIENT_TO_SERVER, b"\0" * size, "c", index, index), state_a, rng_a)
        b = route(Datagram(CLIENT_TO_SERVER, b"\0" * 10, "c", index, index), state_b, rng_b)
        assert (a.dropped, a.delays) == (b.dropped, b.delays)
    assert rng_a.getstate() == rng_b.getstate()


def test_a_script_does_not_shift_the_random_decisions_of_other_datagrams() -> None:
    faults = Faults(loss=0.4)
    plain = decide_many(faults, 200)
    scripted = decide_many(faults, 200, script=Script.drop_first(5))
    assert all(d.dropped for d in scripted[:5])
    assert scripted[5:] == plain[5:]


# -- rates over many datagrams -------------------------------------------------------------
# The seed is fixed, so these are exact; the tolerances state what the model promises.


@pytest.mark.parametrize("loss", [0.0, 0.05, 0.3, 0.5, 1.0])
def test_loss_rate(loss: float) -> None:
    decisions = decide_many(Faults(loss=loss), MANY)
    assert sum(d.dropped for d in decisions) / MANY == pytest.approx(loss, abs=0.02)


def test_duplicate_rate() -> None:
    decisions = decide_many(Faults(duplicate=0.2), MANY)
    assert sum(d.duplicated for d in decisions) / MANY == pytest.approx(0.2, abs=0.02)
    assert all(len(d.delays) in (1, 2) and not d.dropped for d in decisions)


def test_reorder_rate_and_hold_bound() -> None:
    decisions = decide_many(Faults(reorder=0.1, reorder_timeout=0.25), MANY)
    held = [d for d in decisions if d.hold]
    assert len(held) / MANY == pytest.approx(0.1, abs=0.02)
    assert all(d.delays == (0.25,) for d in held)
    assert "reordered (held for the next datagram, at most 0.250 s)" == held[0].describe()


def test_delay_with_jitter_stays_in_range_and_centres_on_the_delay() -> None:
    decisions = decide_many(Faults(delay=0.1, jitter=0.03), MANY)
    delays = [d.delays[0] for d in decisions]
    assert min(delays) >= 0.07 and max(delays) <= 0.13
    assert sum(delays) / MANY == pytest.approx(0.1, abs=0.002)
    assert all(d.delayed for d in decisions)


def test_jitter_never_makes_a_delay_negative() -> None:
    decisions = decide_many(Faults(delay=0.01, jitter=0.05), 1000)
    assert all(d is DELIVER or d.delays[0] > 0.0 for d in decisions)


def test_corruption_rate_flips_exactly_one_bit() -> None:
    data = bytes(range(200))
    decisions = decide_many(Faults(corrupt=0.1), MANY, data=data)
    corrupted = [d for d in decisions if d.corrupted]
    assert len(corrupted) / MANY == pytest.approx(0.1, abs=0.02)
    for decision in corrupted:
        damaged = decision.apply(data)
        assert len(damaged) == len(data)
        assert sum(bin(a ^ b).count("1") for a, b in zip(data, damaged)) == 1
    offsets = {d.flips[0][0] for d in corrupted}
    assert len(offsets) > 150  # spread over the whole datagram, not one favourite byte


def test_an_empty_datagram_is_never_corrupted() -> None:
    decisions = decide_many(Faults(corrupt=1.0), 50, data=b"")
    assert all(decision is DELIVER for decision in decisions)


# -- Gilbert-Elliott bursts ----------------------------------------------------------------


def test_gilbert_elliott_parameters() -> None:
    model = GilbertElliott.from_loss(loss_rate=0.1, mean_burst=4)
    assert model.p_leave_bad == pytest.approx(0.25)
    assert model.loss_rate == pytest.approx(0.1)
    assert model.mean_burst == pytest.approx(4)


def test_gilbert_elliott_loses_in_bursts_of_the_configured_mean_length() -> None:
    decisions = decide_many(Faults(burst=GilbertElliott.from_loss(0.1, 4)), 4 * MANY)
    runs = runs_of_losses(decisions)
    assert sum(d.dropped for d in decisions) / len(decisions) == pytest.approx(0.1, abs=0.02)
    assert sum(runs) / len(runs) == pytest.approx(4.0, rel=0.15)
    assert max(runs) >= 12
    assert decisions[[d.dropped for d in decisions].index(True)].describe() == "dropped (burst loss, bad state)"


def test_independent_loss_of_the_same_rate_has_short_runs() -> None:
    runs = runs_of_losses(decide_many(Faults(loss=0.1), 4 * MANY))
    assert sum(runs) / len(runs) == pytest.approx(1 / 0.9, rel=0.1)


def test_gilbert_elliott_with_losses_in_both_states() -> None:
    model = GilbertElliott(p_enter_bad=0.1, p_leave_bad=0.4, loss_in_bad=0.5, loss_in_good=0.02)
    decisions = decide_many(Faults(burst=model), 4 * MANY)
    assert model.loss_rate == pytest.approx(0.2 * 0.5 + 0.8 * 0.02)
    assert sum(d.dropped for d in decisions) / len(decisions) == pytest.approx(model.loss_rate, abs=0.02)


@pytest.mark.parametrize("loss_rate, mean_burst", [(1.0, 3), (0.5, 0.5), (0.9, 1)])
def test_gilbert_elliott_rejects_unreachable_parameters(loss_rate: float, mean_burst: float) -> None:
    with pytest.raises(ValueError):
        GilbertElliott.from_loss(loss_rate, mean_burst)


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"loss": 1.5}, "Faults.loss must be a probability in [0, 1], got 1.5"),
        ({"duplicate": -0.1}, "Faults.duplicate must be a probability"),
        ({"delay": -1.0}, "Faults.delay must be >= 0 seconds, got -1.0"),
    ],
)
def test_bad_faults_are_rejected_with_the_field_named(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Faults(**arguments)


# -- scripts -------------------------------------------------------------------------------


def requests_and_replies(script: Script, count: int = 6) -> tuple[list[Decision], list[Decision]]:
    return (
        decide_many(Faults(), count, script=script, direction=CLIENT_TO_SERVER),
        decide_many(Faults(), count, script=script, direction=SERVER_TO_CLIENT),
    )


def test_drop_first_drops_exactly_the_first_requests() -> None:
    requests, replies = requests_and_replies(Script.drop_first(3))
    assert [d.dropped for d in requests] == [True, True, True, False, False, False]
    assert not any(d.dropped for d in replies)
    assert requests[0].describe() == "dropped (script: drop_first(3))"


def test_drop_requests_and_drop_replies_by_index() -> None:
    requests, replies = requests_and_replies(Script.drop_requests({1, 4}) + Script.drop_replies(0))
    assert [i for i, d in enumerate(requests) if d.dropped] == [1, 4]
    assert [i for i, d in enumerate(replies) if d.dropped] == [0]
    assert replies[0].reason == "script: drop_replies({0})"


def test_reply_from_other_port() -> None:
    requests, replies = requests_and_replies(Script.reply_from_other_port([0, 2]))
    assert [d.other_port for d in replies] == [True, False, True, False, False, False]
    assert not any(d.other_port for d in requests)
    assert replies[0].describe() == "from the other port (script: reply_from_other_port({0, 2}))"


def test_spoof_reply_sends_a_fake_first_and_the_real_reply_late() -> None:
    _, replies = requests_and_replies(Script.spoof_reply(1, payload=b"FAKE", delay=0.05))
    assert replies[1].spoof == b"FAKE" and replies[1].delays == (0.05,)
    assert replies[0] is DELIVER
    assert replies[1].describe().startswith("spoofed b'FAKE' from the other port first, delayed 0.050 s")


def test_custom_rules_see_the_datagram_and_the_first_claim_wins() -> None:
    def drop_big(datagram: Datagram) -> Decision | None:
        return Decision.drop() if len(datagram.data) > 5 else None

    script = Script(drop_big) + Script(lambda d: Decision(delays=(0.0, 0.3), reason="late duplicate"))
    assert repr(script) == "drop_big + <lambda>"
    big, small = decide_many(Faults(), 1, data=b"0123456789", script=script), decide_many(Faults(), 1, data=b"hi", script=script)
    assert big[0].describe() == "dropped (script: drop_big)"
    assert small[0].delays == (0.0, 0.3) and small[0].describe() == "duplicated x2, delayed 0.000, 0.300 s (late duplicate)"


def test_a_script_overrides_the_random_faults() -> None:
    decisions = decide_many(Faults(loss=1.0), 5, script=Script(lambda d: DELIVER if d.index == 2 else None))
    assert [d.dropped for d in decisions] == [True, True, False, True, True]


def test_decision_apply_and_flags() -> None:
    decision = Decision(flips=((0, 0xFF), (2, 0x01)))
    assert decision.apply(b"\x00ab") == b"\xffac"
    assert decision.corrupted and not decision.dropped and not decision.delayed
    assert Decision.drop("why").describe() == "dropped (why)"
