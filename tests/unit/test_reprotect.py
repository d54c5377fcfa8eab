"""Reprotect's logic on plain data: which way it protects, and when the standby counts as current."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from baton.errors import StepFailed
from baton.replication.lag import LagReport, PartitionLag
from baton.steps import reprotect
from baton.steps.context import RunContext


def partition(owner_end, replicated_through, missing):
    return PartitionLag("orders.events", "west.orders.events", 0, 0, owner_end, 0, 0, replicated_through,
                        missing, None, "offset-sync")


def report(*partitions):
    return LagReport("west", "east", 0.0, list(partitions), None)


def context(**state):
    topology = SimpleNamespace(thresholds=SimpleNamespace(step_timeout_seconds=0.3),
                               domain=SimpleNamespace(name="orders"))
    return RunContext(topology=topology, runbook="failover", run_id="r", old_owner="east", new_owner="west",
                      audit=None, authority=None, operator="t", state=dict(state), log=lambda m: None)


def test_the_protected_direction_follows_the_switch():
    before, after = context(), context(switched=True)
    # A failback or reprotect run protects its new owner from the owner it starts with...
    assert (before.owner_now, before.standby_now) == ("east", "west")
    # ...a failover's reprotect steps, after its switch, protect the old owner.
    assert (after.owner_now, after.standby_now) == ("west", "east")


def test_current_against_the_owner_end_when_the_step_began(monkeypatch):
    # The owner keeps writing: at the start it ends at 10; later at 15 with the mirror through 11.
    reports = iter([report(partition(10, 5, 4)), report(partition(15, 11, 3))])
    monkeypatch.setattr(reprotect, "measure_lag", lambda topology, owner: next(reports))
    monkeypatch.setattr(reprotect, "FIRST_POLL_SECONDS", 0)
    evidence = reprotect.verify_standby_current(context(switched=True))
    assert (evidence["owner"], evidence["standby"]) == ("west", "east")
    [p] = evidence["partitions"]
    assert (p["owner_end_at_start"], p["replicated_through"], p["caught_up"], p["lag_records_now"]) == (
        10, 11, True, 3)


def test_a_standby_that_never_catches_up_is_refused_naming_the_way_on(monkeypatch):
    monkeypatch.setattr(reprotect, "measure_lag", lambda topology, owner: report(partition(10, None, None)))
    monkeypatch.setattr(reprotect, "MAX_POLL_SECONDS", 0.05)
    with pytest.raises(StepFailed, match="east is not current against west .*run `baton reprotect` again"):
        reprotect.verify_standby_current(context(switched=True))
