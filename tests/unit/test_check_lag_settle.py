"""check_lag reads a DEGRADED replication again until RUNNING (bounded) before refusing."""

from __future__ import annotations

import pytest

from baton.errors import ReplicationError
from baton.replication.engine import ConnectorState, ReplicationStatus
from baton.steps import failover


def status(*tasks: str, state: str = "RUNNING") -> ReplicationStatus:
    return ReplicationStatus("mm2", "east", "west", (ConnectorState("mm2-d-east-west-source", state, tasks),))


class Engine:
    def __init__(self, after_wait: ReplicationStatus | None, now: ReplicationStatus):
        self.after_wait, self.now, self.waits = after_wait, now, []

    def wait_for(self, source, target, wanted, wait_seconds, progress=None):
        self.waits.append((source, target, wanted, wait_seconds))
        if self.after_wait is None:
            raise ReplicationError(f"replication {source}->{target} did not reach {wanted}")
        return self.after_wait

    def status(self, source, target):
        return self.now


def test_a_rebalance_that_settles_is_not_a_refusal_and_both_reads_are_kept():
    engine = Engine(after_wait=status("RUNNING"), now=status("RUNNING"))
    evidence = failover.settled_replication(engine, status("UNASSIGNED"), lambda m: None, wait=True)
    assert evidence["replication"]["state"] == "RUNNING"
    assert evidence["replication_first_read"]["state"] == "DEGRADED"
    assert engine.waits == [("east", "west", "RUNNING", failover.DEGRADED_SETTLE_SECONDS)]


def test_a_degraded_replication_that_stays_so_is_still_refused_on_its_last_read():
    engine = Engine(after_wait=None, now=status("UNASSIGNED"))
    evidence = failover.settled_replication(engine, status("UNASSIGNED"), lambda m: None, wait=True)
    assert evidence["replication"]["state"] == "DEGRADED"
    assert "did not reach RUNNING" in evidence["replication_wait"]


@pytest.mark.parametrize("first, wait", [(status("RUNNING"), True), (status(state="STOPPED"), True),
                                         (status("UNASSIGNED"), False)])
def test_running_stopped_or_unplanned_reads_are_taken_as_they_are(first, wait):
    engine = Engine(after_wait=status("RUNNING"), now=status("RUNNING"))
    evidence = failover.settled_replication(engine, first, lambda m: None, wait=wait)
    assert evidence == {"replication": first.as_dict()} and engine.waits == []
