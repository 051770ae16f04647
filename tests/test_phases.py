"""The exchange's phases (router/proxy/phase.py): the transition table, and that an illegal move is refused."""

from __future__ import annotations

import itertools

import pytest

from router.proxy import phase
from router.proxy.phase import TRANSITIONS, IllegalTransition, Phase, check_transition


def test_the_hot_paths_constants_are_the_phases() -> None:
    assert {member.name: int(member) for member in Phase} == {
        member.name: getattr(phase, member.name) for member in Phase
    }


def test_every_phase_has_its_transitions_and_only_done_and_abandoned_end() -> None:
    assert set(TRANSITIONS) == set(Phase)
    assert {p for p, after in TRANSITIONS.items() if not after} == {Phase.DONE, Phase.ABANDONED}
    assert all(Phase.ABANDONED in after for p, after in TRANSITIONS.items() if p < Phase.DONE)  # a client may leave


@pytest.mark.parametrize(("old", "new"), list(itertools.product(Phase, Phase)))
def test_a_transition_is_allowed_exactly_when_the_table_says(old: Phase, new: Phase) -> None:
    if new in TRANSITIONS[old]:
        check_transition(old, new)
    else:
        with pytest.raises(IllegalTransition, match=f"{old.name} -> {new.name}"):
            check_transition(old, new)


def test_the_response_never_goes_back_and_a_tunnel_only_ends() -> None:
    for started in (Phase.RELAYING, Phase.TUNNEL):
        assert TRANSITIONS[started] <= {Phase.DONE, Phase.ABANDONED}
    assert TRANSITIONS[Phase.TUNNEL] == {Phase.ABANDONED}
    # Only a request no response byte has answered may go back to routing: the retry on a fresh connection, and
    # a request held while its deployment woke.
    assert {p for p, after in TRANSITIONS.items() if Phase.ROUTING in after} == {
        Phase.WAITING,
        Phase.HELD,
        Phase.SENDING,
        Phase.AWAITING_HEAD,
    }


def test_checks_are_on_wherever_the_tests_run() -> None:
    """make test sets WHALERAY_CHECK_PHASES=1, so the compiled build checks every transition here too."""
    assert phase.CHECK_PHASES
