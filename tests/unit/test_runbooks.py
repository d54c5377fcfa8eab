"""The runbook validator rejects every unsafe ordering; the shipped runbooks pass it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from baton.steps.context import clauses
from runbooks import FAILBACK, FAILOVER, REPROTECT, RUNBOOKS
from runbooks.model import Kind, RunbookInvalid, validate, violations
from runbooks.render import markdown


def without(runbook, name):
    return replace(runbook, steps=tuple(s for s in runbook.steps if s.name != name))


def swapped(runbook, first, second):
    steps = list(runbook.steps)
    i, j = (steps.index(runbook.step(n)) for n in (first, second))
    steps[i], steps[j] = steps[j], steps[i]
    return replace(runbook, steps=tuple(steps))


def test_shipped_runbooks_are_valid_and_ordered_as_the_issue_says():
    assert [s.name for s in FAILOVER.steps] == [
        "check_lag", "approve-failover", "stop_primary_producers", "verify_secondary_currency",
        "translate_consumer_offsets", "approve-translation-resolutions", "apply_translation_resolutions",
        "check_switch_conditions", "approve-switch", "switch_authority",
        "reconcile", "find_divergent_tail", "handle_divergent_tail", "start_reverse_replication",
        "verify_standby_current"]
    # A planned failover ends by reprotecting the old owner; an unplanned one ends at reconcile.
    assert {s.when for s in FAILOVER.steps[FAILOVER.steps.index(FAILOVER.step("reconcile")) + 1:]} == {
        "unplanned=False"}
    assert [s.name for s in REPROTECT.steps] == [
        "find_divergent_tail", "approve-discard", "handle_divergent_tail", "start_reverse_replication",
        "verify_standby_current"]
    assert FAILBACK.steps[0].name == "find_divergent_tail"
    assert FAILBACK.steps[-1].name == "reconcile"
    for runbook in RUNBOOKS.values():
        assert violations(runbook) == []


@pytest.mark.parametrize(("mutated", "message"), [
    (swapped(FAILOVER, "stop_primary_producers", "switch_authority"), "before any step fences"),
    (without(FAILOVER, "stop_primary_producers"), "before any step fences"),
    (swapped(FAILOVER, "verify_secondary_currency", "translate_consumer_offsets"),
     "before currency is verified"),
    (without(FAILOVER, "approve-switch"),
     "'switch_authority' is irreversible and no gate .*\\(unplanned path\\)"),
    (without(FAILOVER, "check_switch_conditions"), "'switch_authority' is irreversible and no gate"),
    (without(FAILOVER, "approve-failover"), "'stop_primary_producers' is irreversible and no gate"),
    (swapped(FAILOVER, "switch_authority", "reconcile"), "last step must reconcile"),
    (without(FAILBACK, "approve-failback"), "'stop_primary_producers' is irreversible and no gate"),
    (replace(FAILOVER, steps=FAILOVER.steps + (FAILOVER.steps[0],)), "unique"),
    (swapped(REPROTECT, "handle_divergent_tail", "start_reverse_replication"),
     "'start_reverse_replication' starts replication towards a region before its divergent tail"),
    (swapped(FAILBACK, "handle_divergent_tail", "start_reverse_replication"), "before its divergent tail"),
    (without(FAILOVER, "handle_divergent_tail"), "before its divergent tail is handled"),
    (without(REPROTECT, "verify_standby_current"), "last step must reconcile"),
    # The planned path ends with reprotect; without it the unplanned path still ends at reconcile,
    # so a misplaced reconcile is named on the path where it is missing.
    (replace(FAILOVER, steps=tuple(s for s in FAILOVER.steps if s.name != "reconcile")),
     "last step must reconcile, not 'switch_authority' \\(unplanned path\\)"),
])
def test_validator_rejects_unsafe_orderings(mutated, message):
    with pytest.raises(RunbookInvalid, match=message):
        validate(mutated)


def test_a_gate_only_counts_once_per_irreversible_step():
    # One gate, then two irreversible steps in a row: the second is unguarded.
    steps = list(FAILOVER.steps)
    steps.remove(FAILOVER.step("approve-switch"))
    problems = violations(replace(FAILOVER, steps=tuple(steps)))
    assert len(problems) == 1 and "switch_authority" in problems[0]


def test_rendered_markdown_is_committed_and_current():
    for runbook in RUNBOOKS.values():
        path = Path(__file__).parents[2] / "runbooks" / f"{runbook.name}.md"
        assert path.read_text() == markdown(runbook), f"run `python -m runbooks.render` ({path.name})"
        for step in runbook.steps:
            assert f"`{step.name}`" in path.read_text()
    assert all(s.kind is Kind.GATE for s in FAILOVER.gates)


def planned_with_gate_inside_the_fence(runbook):
    """The old order: the switch approved by a person while producers are refused."""
    steps = [s for s in runbook.steps if s.name != "check_switch_conditions"]
    steps = [replace(s, when="") if s.name == "approve-switch" else s for s in steps]
    return replace(runbook, steps=tuple(steps))


@pytest.mark.parametrize("runbook", [FAILOVER, FAILBACK])
def test_no_human_gate_inside_a_planned_fenced_window(runbook):
    problems = violations(planned_with_gate_inside_the_fence(runbook))
    assert any("'approve-switch' is a human gate inside the fenced window of a planned run" in p
               for p in problems), problems
    # The shipped runbooks decide before the fence: on the planned path no gate follows the fence.
    planned = [s for s in runbook.steps if "unplanned=True" not in clauses(s.when)]
    fence = next(i for i, s in enumerate(planned) if s.name == "stop_primary_producers")
    switch = next(i for i, s in enumerate(planned) if s.name == "switch_authority")
    assert [s.name for s in planned[fence:switch] if s.kind is Kind.GATE] == []
    assert "check_switch_conditions" in [s.name for s in planned[fence:switch]]


def test_conditions_need_a_gate_before_the_fence():
    # Conditions checked in a window that no person approved do not stand in for a gate.
    steps = tuple(s for s in FAILOVER.steps if s.name != "approve-failover")
    problems = violations(replace(FAILOVER, steps=steps))
    assert any("checks switch conditions that no gate before the fence approved" in p for p in problems)


def test_unplanned_path_keeps_its_data_loss_gate():
    unplanned = [s.name for s in FAILOVER.steps if s.when != "unplanned=False"]
    assert unplanned.index("approve-switch") == unplanned.index("switch_authority") - 1
    assert "check_switch_conditions" not in unplanned


def test_gates_asked_follow_the_runs_options():
    assert FAILOVER.gates_asked(unplanned=False) == ["approve-failover"]
    assert FAILOVER.gates_asked(unplanned=True) == [
        "approve-failover", "approve-translation-resolutions", "approve-switch"]
    assert "approve-discard" not in FAILBACK.gates_asked(divergent_policy="quarantine")
    assert "approve-discard" in FAILBACK.gates_asked(divergent_policy="discard")
