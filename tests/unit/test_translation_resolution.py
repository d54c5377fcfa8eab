"""Operator resolution of refused translations (unplanned runs), on plain data."""

from __future__ import annotations

from dataclasses import asdict, replace
from types import SimpleNamespace

import pytest

from baton.replication.engine import EngineReading, GroupCheckpoint
from baton.replication.translation import Translation, _by_checkpoints
from baton.steps import resolution
from baton.steps.context import RunContext
from runbooks import FAILOVER
from runbooks.model import violations


def refused_entry(group="g1", partition=0, checkpoint=None) -> dict:
    entry = Translation(group, "orders", "east.orders", partition, None, None, "checkpoint")
    entry.refuse("no-checkpoint", "MM2 emitted no checkpoint")
    entry.checkpoint_offset = checkpoint
    return asdict(entry)


def test_checkpoint_is_offered_only_where_every_refused_partition_has_one():
    entries = [refused_entry("g1", 0, checkpoint=5), refused_entry("g1", 1, checkpoint=7),
               refused_entry("g2", 0, checkpoint=3), refused_entry("g2", 1)]
    assert resolution.options(entries) == {"g1": ["checkpoint", "earliest", "latest"],
                                           "g2": ["earliest", "latest"]}
    assert resolution.auto_choices(resolution.options(entries)) == {"g1": "checkpoint", "g2": "earliest"}


def test_refused_lists_entries_without_an_offset_only():
    ok = Translation("g1", "orders", "east.orders", 2, 4, None, "checkpoint")
    ok.resolve(4)
    recorded = {"entries": [refused_entry("g1", 0), asdict(ok)]}
    assert [(e["group"], e["partition"]) for e in resolution.refused(recorded)] == [("g1", 0)]
    assert resolution.describe(resolution.refused(recorded)[0]) == \
        "g1 east.orders[0] no-checkpoint: MM2 emitted no checkpoint"


def test_parse_choices_needs_one_offered_choice_per_group():
    offered = {"orders-a": ["earliest", "latest"], "orders-b": ["checkpoint", "earliest", "latest"]}
    assert resolution.parse_choices("orders-a=earliest, orders-b=Checkpoint", offered) == (
        {"orders-a": "earliest", "orders-b": "checkpoint"}, [])
    choices, problems = resolution.parse_choices("orders-a=checkpoint", offered)
    assert choices == {} and problems == [
        "orders-a=checkpoint is not offered (options: earliest, latest)",
        "no choice for orders-a (options: earliest, latest), "
        "orders-b (options: checkpoint, earliest, latest)"]
    _, problems = resolution.parse_choices("orders-a=latest orders-a=earliest orders-b=latest other=latest",
                                           offered)
    assert problems == ["orders-a is given two choices (latest, earliest)",
                        "'other' has no refused translation (groups to resolve: orders-a, orders-b)"]
    assert resolution.parse_choices("approve", offered)[1][0].startswith("no choice for orders-a")


@pytest.mark.parametrize(("choice", "offset", "bound", "missing"), [
    ("earliest", 10, 40, 0), ("latest", 50, 0, None), ("checkpoint", 30, 20, 0)])
def test_resolve_entry_places_the_chosen_position_and_states_its_bound(choice, offset, bound, missing):
    entry = Translation(**refused_entry(checkpoint=30))
    resolution.resolve_entry(entry, choice, 10, 50, "alice")
    assert entry.usable and entry.translated_offset == offset
    assert entry.method == f"operator-resolution:{choice}"
    assert entry.duplicates_bound == bound and entry.missing == missing
    assert entry.note.startswith(f"chosen by alice at gate approve-translation-resolutions ({choice}")
    assert "was no-checkpoint: MM2 emitted no checkpoint" in entry.note


def test_the_resolution_steps_run_only_on_an_unplanned_run_with_a_refusal():
    ctx = RunContext(topology=None, runbook="failover", run_id="r", old_owner="east", new_owner="west",
                     audit=None, authority=None, operator="op", unplanned=True)
    gate = FAILOVER.step("approve-translation-resolutions")
    assert not ctx.option(gate.when)  # nothing translated yet, nothing refused
    ctx.state["translate_consumer_offsets"] = {"refused": ["g1 east.orders[0] no-checkpoint: ..."]}
    assert ctx.translations == "refused" and ctx.option(gate.when)
    assert ctx.option(FAILOVER.step("apply_translation_resolutions").when)
    ctx.unplanned = False
    assert not ctx.option(gate.when)


def test_a_resolution_gate_on_the_planned_path_would_sit_inside_the_fenced_window():
    planned_too = replace(FAILOVER, steps=tuple(
        replace(s, when="translations=refused") if s.name == "approve-translation-resolutions" else s
        for s in FAILOVER.steps))
    assert any("'approve-translation-resolutions' is a human gate inside the fenced window" in v
               for v in violations(planned_too))
    assert violations(FAILOVER) == []


def test_owner_down_every_partition_in_scope_gets_an_entry_even_without_a_checkpoint():
    checkpoint = GroupCheckpoint("g1", "east.orders", 0, 40, 38, 1)
    engine = SimpleNamespace(checkpoints=lambda s, t: EngineReading({("g1", "east.orders", 0): checkpoint}),
                             checkpoint_duplicates_bound=lambda: 100)
    scope = SimpleNamespace(engine=engine, owner="east", secondary="west", mirrors={"orders": "east.orders"},
                            pairs=lambda: [("orders", 0), ("orders", 1)])
    entries = _by_checkpoints(scope, ["g1", "g2"], None, [])
    outcome = {(e.group, e.partition): (e.status, e.translated_offset) for e in entries}
    assert outcome == {("g1", 0): ("ok", 38), ("g1", 1): ("no-checkpoint", None),
                       ("g2", 0): ("no-checkpoint", None), ("g2", 1): ("no-checkpoint", None)}
    assert "owner 'east' is unreachable" in entries[1].note


def test_the_drill_holds_an_unplanned_run_to_the_bound_it_stated_after_a_resolution():
    from baton.drill.scorecard import Objectives, evaluate, stated_duplicates_bound

    evidence = {"translate_consumer_offsets": {"refused": ["..."], "summary": None},
                "apply_translation_resolutions": {"summary": {"duplicates_bound_by_group": {"g1": 3,
                                                                                            "g2": 40}}}}
    stated = stated_duplicates_bound(evidence)
    assert stated == {"g1": 3, "g2": 40}
    assert stated_duplicates_bound({"translate_consumer_offsets": {
        "summary": {"duplicates_bound_by_group": {"g1": 7}}}}) == {"g1": 7}
    leg = {"status": "succeeded", "producers_switched_cleanly": True, "stated_duplicates_bound": stated}
    card = {"failover": leg, "failback": leg | {"stated_duplicates_bound": None},
            "second_writer_violations": [],
            "consumers": {"g1": {"missing": 0, "duplicates": 4}, "g2": {"missing": 0, "duplicates": 40}}}
    judged = {r["objective"]: r for r in evaluate(card, Objectives(max_rto_seconds=None,
                                                                   prediction_must_hold=False), True)}
    assert not judged["g1 duplicates"]["passed"] and judged["g1 duplicates"]["target"].startswith("<= 3")
    assert judged["g2 duplicates"]["passed"]


def test_auto_approval_picks_checkpoint_else_earliest_and_records_it_as_auto(tmp_path):
    from baton.audit import AuditStore
    from baton.settings import Topology
    from flows.gates import request_approval

    region = {"bootstrap_servers": "192.0.2.1:9092", "admin": {"username": "a", "password": "b"}}
    # a topology may name the gate like any other (require Slack for it, or let --yes answer it)
    topology = Topology(domain={"name": "orders", "topics": ["orders.events"], "initial_owner": "east"},
                        regions={"east": region, "west": region},
                        approvals={"auto_approve_gates": [resolution.GATE],
                                   "require_slack_for": [resolution.GATE]})
    store = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}")
    run = store.start_run("orders", "failover", started_by="op")
    ctx = RunContext(topology=topology, runbook="failover", run_id=run.id, old_owner="east",
                     new_owner="west", audit=store, authority=None, operator="op", unplanned=True)
    summary = {"resolution_options": {"g1": ["checkpoint", "earliest", "latest"],
                                      "g2": ["earliest", "latest"]}}
    answer = request_approval(ctx, FAILOVER.step(resolution.GATE), summary, auto_approve=True)
    assert answer["choices"] == {"g1": "checkpoint", "g2": "earliest"} and answer["chosen_by"] == "auto (op)"
    (approval,) = store.run(run.id).approvals
    assert (approval.gate, approval.decision, approval.comment) == (
        resolution.GATE, "approved", "answered by --yes: g1=checkpoint g2=earliest")
