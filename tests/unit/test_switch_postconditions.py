"""Replication stopped, as reconcile's postcondition of the switch, on plain data: the switch only
requests the stop; reconcile waits for it, asks again when the request failed or the run was
resumed, and reports (never hides) a flow that did not stop."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace

import pytest

from baton.errors import ReplicationError
from baton.replication.engine import ConnectorState, ReplicationStatus
from baton.settings import Topology
from baton.steps import failover, recover
from baton.steps.context import RunContext


class Connect:
    """Plain data standing in for the engine: connector states, changed by stop requests."""

    def __init__(self, state: str):
        self.state, self.requests = state, 0

    def status(self, source, target):
        return ReplicationStatus("mm2", source, target, (ConnectorState("source", self.state),))

    def request_stop(self, source, target):
        self.requests += 1
        self.state = "STOPPED"

    def stop(self, source, target, wait_seconds=60):
        self.request_stop(source, target)
        return self.wait_for(source, target, "STOPPED", wait_seconds)

    def wait_for(self, source, target, wanted, wait_seconds, progress=None):
        if self.state != wanted:
            raise ReplicationError(f"replication {source}->{target} did not reach {wanted}")
        return self.status(source, target)


def context(state: dict) -> RunContext:
    topology = SimpleNamespace(thresholds=SimpleNamespace(step_timeout_seconds=1),
                               domain=SimpleNamespace(name="orders"))
    return RunContext(topology=topology, runbook="failover", run_id="r", old_owner="east", new_owner="west",
                      audit=None, authority=None, operator="t", state=state, log=lambda m: None)


def done(result=None, error=None) -> Future:
    future = Future()
    future.set_exception(error) if error else future.set_result(result)
    return future


@pytest.fixture
def engine(monkeypatch):
    def install(connect: Connect) -> Connect:
        monkeypatch.setattr(failover, "engine_for", lambda topology: connect)
        monkeypatch.setattr(recover, "engine_for", lambda topology: connect)
        return connect
    return install


def test_the_switch_request_answered_is_waited_for_not_sent_again(engine):
    connect = engine(Connect("STOPPED"))
    ctx = context({failover.STOP_REQUEST: done()})
    result = failover.replication_stopped(ctx)
    assert result["stopped"] and result["status"]["state"] == "STOPPED" and connect.requests == 0
    assert failover.STOP_REQUEST not in ctx.state  # a second reconcile reads Connect, not the future


def test_a_failed_switch_request_is_sent_again(engine):
    connect = engine(Connect("RUNNING"))
    error = ReplicationError("Kafka Connect PUT /connectors/x/stop failed with 500")
    result = failover.replication_stopped(context({failover.STOP_REQUEST: done(error=error)}))
    assert result["stopped"] and connect.requests == 1 and "/stop" in result["switch_request_failed"]


def test_a_resumed_run_asks_only_when_not_stopped(engine):
    running = engine(Connect("RUNNING"))
    assert failover.replication_stopped(context({}))["requested_again"] and running.requests == 1
    stopped = engine(Connect("STOPPED"))
    assert "requested_again" not in failover.replication_stopped(context({})) and stopped.requests == 0


def test_a_flow_that_does_not_stop_is_reported(engine):
    class Stuck(Connect):
        def request_stop(self, source, target):
            self.requests += 1  # Connect accepts the request but the connector stays RUNNING

    engine(Stuck("RUNNING"))
    result = failover.replication_stopped(context({}))
    assert result["stopped"] is False and "did not reach STOPPED" in result["error"]


def test_recovery_after_the_switch_finishes_a_stop_that_did_not_take_effect(engine):
    # The run failed between the switch (authority moved) and reconcile: nothing to return to,
    # but replication old -> new must end STOPPED; read from Connect, changed only when it is not.
    running = engine(Connect("RUNNING"))
    part = recover._stopped_part(None, "east", "west", log=lambda m: None)
    assert (part.status, part.action, running.requests) == ("fixed", "stopped replication east -> west", 1)
    stopped = engine(Connect("STOPPED"))
    assert recover._stopped_part(None, "east", "west", log=lambda m: None).status == "ok"
    assert stopped.requests == 0


def test_recovery_after_the_switch_leaves_an_unanswered_stop_pending(engine):
    class Down(Connect):
        def status(self, source, target):
            raise ReplicationError("Kafka Connect at http://connect did not answer GET /connectors/x/status")

    engine(Down("RUNNING"))
    part = recover._stopped_part(None, "east", "west", log=lambda m: None)
    assert (part.status, part.where) == ("pending", "connect") and "did not answer" in part.detail


def test_replication_is_stopped_only_once_no_task_runs_any_more():
    from baton.replication.engine import ConnectorState, ReplicationStatus

    def status(*components):
        return ReplicationStatus("mm2", "east", "west", components).state

    # Connect reads the connector STOPPED while its task still copies: not stopped yet.
    assert status(ConnectorState("source", "STOPPED", ("RUNNING",)),
                  ConnectorState("checkpoint", "STOPPED", ())) == "DEGRADED"
    assert status(ConnectorState("source", "STOPPED", ()),
                  ConnectorState("checkpoint", "MISSING")) == "STOPPED"
    assert status(ConnectorState("source", "RUNNING", ("RUNNING",))) == "RUNNING"


def test_a_task_that_writes_no_data_does_not_hold_stopped():
    """A heartbeat task, or a checkpoint task without group-offset sync, finishing its wait
    after its connector read STOPPED copies nothing; a checkpoint task that syncs offsets does."""
    from baton.replication.engine import ConnectorState, ReplicationStatus

    def status(*components):
        return ReplicationStatus("mm2", "east", "west", components).state

    source = ConnectorState("source", "STOPPED", ())
    for writes, expected in ((False, "STOPPED"), (True, "DEGRADED")):
        assert status(source, ConnectorState("checkpoint", "STOPPED", ("RUNNING",), writes_data=writes),
                      ConnectorState("heartbeat", "STOPPED", ("RUNNING",), writes_data=False)) == expected
    # A connector that writes data and still runs keeps the flow from STOPPED; one that writes
    # none may run on (the engine leaves it running).
    running = ("RUNNING",)
    assert status(source, ConnectorState("checkpoint", "RUNNING", running, writes_data=True)) == "DEGRADED"
    assert status(source, ConnectorState("heartbeat", "RUNNING", running, writes_data=False)) == "STOPPED"

    kinds = ("source", "checkpoint", "heartbeat")
    assert [mm2_engine()._writes_data(k) for k in kinds] == [True, False, False]
    assert mm2_engine(sync_group_offsets=True)._writes_data("checkpoint") is True
    syncing = {"sync.group.offsets.enabled": "true"}
    assert mm2_engine(extra_connector_config=syncing)._writes_data("checkpoint")


def mm2_engine(**replication):
    """An MM2 engine for a two-region `orders` topology (no Connect is asked until used)."""
    from baton.replication.mm2.engine import MirrorMakerEngine

    return MirrorMakerEngine(Topology(
        domain={"name": "orders", "topics": ["orders.events"], "initial_owner": "east"},
        regions={r: {"bootstrap_servers": f"{r}:9092", "security_protocol": "PLAINTEXT"}
                 for r in ("east", "west")},
        replication=replication))


def test_only_the_components_that_write_data_are_asked_to_stop():
    """Connect serves stops one rebalance at a time, each waiting for the revoked tasks' poll (a
    heartbeat's or checkpoint's lasts its emit interval): those that copy nothing keep running."""
    class Recorder:
        def __init__(self):
            self.asked = []

        def status(self, name):
            return {"connector": {"state": "RUNNING"}, "tasks": []}

        def stop(self, name):
            self.asked.append(name.rsplit("-", 1)[-1])

    def asked(**replication):
        engine = mm2_engine(**replication)
        engine.connect = Recorder()
        engine.request_stop("east", "west")
        return sorted(engine.connect.asked)

    assert asked() == ["source"]
    # A checkpoint task that syncs group offsets writes data: it is stopped with the source.
    assert asked(sync_group_offsets=True) == ["checkpoint", "source"]
    # The flow reads STOPPED with the heartbeat and checkpoint still running.
    flow = ReplicationStatus("mm2", "east", "west", (
        ConnectorState("source", "STOPPED", ()),
        ConnectorState("checkpoint", "RUNNING", ("RUNNING",), writes_data=False),
        ConnectorState("heartbeat", "RUNNING", ("RUNNING",), writes_data=False)))
    assert flow.state == "STOPPED"


class Groups:
    """Plain data standing in for an admin client: the groups keep members for `polls` reads."""

    def __init__(self, polls: int):
        self.polls, self.reads = polls, 0

    def describe_consumer_groups(self, groups, request_timeout):
        self.reads += 1
        members = [SimpleNamespace(client_id="c1", host="/10.0.0.1")] if self.reads <= self.polls else []
        return {g: done(SimpleNamespace(state="ConsumerGroupState.STABLE" if members else "EMPTY",
                                        members=members)) for g in groups}


def groups_context(leave_seconds: float) -> RunContext:
    ctx = context({})
    ctx.topology.thresholds.groups_leave_seconds = leave_seconds
    ctx.topology.domain.consumer_groups = ["g1"]
    return ctx


def test_translation_waits_for_groups_that_leave_and_names_those_that_stay():
    leaving = Groups(polls=2)
    states, active, waited = failover._groups_left(groups_context(5), leaving)
    assert active == {} and states["g1"]["members"] == [] and leaving.reads == 3 and waited >= 0.4
    staying = Groups(polls=10_000)
    states, active, waited = failover._groups_left(groups_context(0.5), staying)
    assert active == {"g1": ["c1@/10.0.0.1"]} and 0.5 <= waited < 5  # bounded, loaded machine or not


class Restartable(Connect):
    """A source (copies data) and a checkpoint connector that syncs group offsets (copies too);
    `applied` names the connectors on which the run's unanswered stop has taken effect."""

    def __init__(self, applied: set[str]):
        super().__init__("RUNNING")
        self.states = {name: "STOPPED" if name in applied else "RUNNING" for name in ("source", "checkpoint")}

    def status(self, source, target):
        return ReplicationStatus("mm2", source, target, tuple(
            ConnectorState(name, state, ("RUNNING",) if state == "RUNNING" else ())
            for name, state in self.states.items()))

    def start(self, source, target, wait_seconds=60, keep_config=False):
        self.states = dict.fromkeys(self.states, "RUNNING")
        return self.status(source, target)


def test_an_unanswered_stop_keeps_recovery_pending_until_every_connector_read_it_applied(engine, tmp_path):
    """The settle window ends early only once each connector the stop named was read STOPPED
    after it (then it cannot apply again); a partial application keeps it open."""
    from baton.audit.store import AuditStore, utcnow

    audit = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}")
    run = audit.start_run("orders", "failover")
    audit.record_step(run.id, "switch_write_authority", "failed", utcnow(), utcnow(), {},
                      error="Kafka Connect at http://c did not answer PUT /connectors/source/stop")

    def recover_once(connect: Restartable) -> recover.Part:
        engine(connect)
        part = recover._replication_part(None, audit, run.id, "east", "west", log=lambda m: None)
        audit.record_step(run.id, "recover", "failed" if part.status == "pending" else "succeeded",
                          utcnow(), utcnow(), {"parts": [part.as_dict()]})
        return part

    assert recover_once(Restartable(set())).status == "pending"  # not applied yet: may still apply
    part = recover_once(Restartable({"source"}))  # applied to one connector of two: still open
    assert (part.status, part.where, part.seen_stopped) == ("pending", "connect", ["source"])
    part = recover_once(Restartable({"checkpoint"}))  # the other one, read in a later recovery
    assert part.status == "fixed" and "cannot apply again" in part.detail
    # Observations made before the stop was sent do not count.
    audit.record_step(run.id, "switch_write_authority", "failed", utcnow(), utcnow(), {},
                      error="replication east->west did not reach STOPPED within 5s")
    assert recover_once(Restartable({"source"})).status == "pending"
