"""The watch's pure parts: readiness rules, ACL evaluation, alert hysteresis, sample storage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from baton.audit import AuditStore
from baton.audit.models import WatchSample
from baton.authority.record import Authority, State
from baton.settings import Topology
from baton.watch.alerts import Alerts
from baton.watch.readiness import (
    FAIL,
    PASS,
    WARN,
    Check,
    Readiness,
    allows,
    check_heartbeat,
    check_lag,
    check_lease,
    check_offset_syncs,
    check_replication,
)
from baton.watch.sampler import Sample
from baton.watch.store import MINUTE, RAW, SampleStore, data_at_risk, fold_minutes


def topology(tmp_path=None, **watch) -> Topology:
    document = {
        "domain": {"name": "orders", "topics": ["orders.events"], "initial_owner": "east"},
        "regions": {r: {"bootstrap_servers": f"{r}:9092", "security_protocol": "PLAINTEXT"}
                    for r in ("east", "west")},
        "thresholds": {"max_lag_records": 100, "max_lag_seconds": 10},
        "watch": watch,
    }
    if tmp_path is not None:
        document["audit"] = {"database_url": f"sqlite:///{tmp_path / 'audit.db'}"}
    return Topology(**document)


def sample(**fields) -> Sample:
    base = {"domain": "orders", "owner": "east", "secondary": "west",
            "taken_at": datetime.now(UTC).timestamp(), "interval_seconds": 5.0,
            "replication_state": "RUNNING", "heartbeat_age_seconds": 1.0, "records_at_risk": 0,
            "seconds_at_risk": 0.0}
    return Sample(**(base | fields))


def test_lag_check_fails_above_either_threshold_and_when_unmeasured():
    t = topology()
    assert check_lag(t, sample(records_at_risk=100)).status == PASS
    assert check_lag(t, sample(records_at_risk=101)).status == FAIL
    slow = check_lag(t, sample(records_at_risk=1, seconds_at_risk=11))
    assert "11.0 s > max_lag_seconds 10" in slow.evidence
    assert check_lag(t, sample(unknown_partitions=2)).status == WARN
    unmeasured = check_lag(t, sample(records_at_risk=None, error="region 'east' did not answer"))
    assert unmeasured.status == FAIL and "did not answer" in unmeasured.evidence


def test_stopped_replication_under_an_active_owner_names_reprotect():
    now = datetime.now(UTC)
    stopped = sample(owner="west", secondary="east", replication_state="STOPPED")
    assert check_replication(stopped).evidence == "replication west -> east is STOPPED"
    owner = Authority(domain="orders", epoch=3, owner="west", state=State.ACTIVE, lease_expires_at=now,
                      changed_at=now, changed_by="test")
    active = check_replication(sample(owner="west", secondary="east", replication_state="STOPPED",
                                      authority=owner))
    assert active.status == FAIL
    assert active.evidence == ("replication west -> east is STOPPED: `baton reprotect` starts it once east "
                               "answers")


def test_heartbeat_and_offset_sync_checks():
    t = topology(heartbeat_max_age_seconds=30)
    assert check_heartbeat(t, sample(heartbeat_age_seconds=29.9)).status == PASS
    assert check_heartbeat(t, sample(heartbeat_age_seconds=30.1)).status == FAIL
    assert check_heartbeat(t, sample(heartbeat_age_seconds=None)).status == FAIL
    gaps = {"orders.events[0]": 3, "orders.events[1]": 500, "orders.events[2]": None}
    assert check_offset_syncs(t, sample(offset_sync_gaps=gaps)).status == FAIL
    del gaps["orders.events[2]"]
    behind = check_offset_syncs(t, sample(offset_sync_gaps=gaps))
    assert behind.status == WARN and "orders.events[1] (500 records)" in behind.evidence


def test_lease_check_names_a_lapsed_lease_and_a_hand_over():
    now = datetime.now(UTC)

    def authority(state, lease):
        return Authority(domain="orders", epoch=4, owner="east", state=state, lease_expires_at=lease,
                         changed_at=now, changed_by="test")

    assert check_lease(sample(authority=authority(State.ACTIVE, now + timedelta(seconds=9)))).status == PASS
    lapsed = check_lease(sample(authority=authority(State.ACTIVE, now - timedelta(seconds=5))))
    assert lapsed.status == FAIL and "lease keeper" in lapsed.evidence
    assert check_lease(sample(authority=authority(State.FENCED, None))).status == WARN
    assert check_lease(sample(authority=None)).status == FAIL


def test_acl_evaluation_follows_kafka_prefixed_literal_and_deny():
    allow, deny = AclPermissionType.ALLOW, AclPermissionType.DENY
    topic, write = ResourceType.TOPIC, AclOperation.WRITE
    prefixed = AclBinding(topic, "orders.", ResourcePatternType.PREFIXED, "User:app", "*", write, allow)
    assert allows([prefixed], topic, "orders.events", write)
    assert not allows([prefixed], topic, "billing.events", write)
    assert not allows([prefixed], topic, "orders.events", AclOperation.READ)
    everything = AclBinding(topic, "*", ResourcePatternType.LITERAL, "User:app", "*", AclOperation.ALL, allow)
    assert allows([everything], topic, "anything", write)
    fence = AclBinding(topic, "orders.events", ResourcePatternType.LITERAL, "User:app", "*", write, deny)
    assert not allows([prefixed, fence], topic, "orders.events", write)
    from baton.watch.readiness import acl_key

    assert allows([prefixed, fence], topic, "orders.events", write, frozenset({acl_key(fence)}))


def readiness(taken_at: float, **statuses) -> Readiness:
    return Readiness("orders", "east", "west", taken_at,
                     [Check(name, status, f"{name} is {status}") for name, status in statuses.items()])


def test_alerts_once_per_cause_lag_after_n_samples_and_one_recovery():
    posted: list[str] = []
    alerts = Alerts(lambda text: posted.append(text) or True, lag_samples=3)
    alerts.observe(readiness(0, lag_within_thresholds=FAIL, replication_running=FAIL))
    assert len(posted) == 1 and "replication_running failing" in posted[0]
    alerts.observe(readiness(5, lag_within_thresholds=FAIL, replication_running=FAIL))
    assert len(posted) == 1  # lag: 2 samples of 3
    alerts.observe(readiness(10, lag_within_thresholds=FAIL, replication_running=FAIL))
    assert len(posted) == 2 and "lag_within_thresholds failing (3 sample(s) in a row)" in posted[1]
    for t in (15, 20, 25):
        alerts.observe(readiness(t, lag_within_thresholds=FAIL, replication_running=FAIL))
    assert len(posted) == 2
    alerts.observe(readiness(30, lag_within_thresholds=PASS, replication_running=WARN))
    assert len(posted) == 4
    assert "replication_running recovered after 30 s (warn)" in posted[2] + posted[3]
    alerts.observe(readiness(35, lag_within_thresholds=PASS, replication_running=PASS))
    assert len(posted) == 4
    # A lag blip shorter than N samples never alerts.
    alerts.observe(readiness(40, lag_within_thresholds=FAIL))
    alerts.observe(readiness(45, lag_within_thresholds=PASS))
    assert len(posted) == 4


def test_an_alert_slack_refused_is_retried_at_the_next_sample():
    answers = iter([False, True])
    posted = []
    alerts = Alerts(lambda text: (posted.append(text), next(answers))[1])
    alerts.observe(readiness(0, heartbeat_fresh=FAIL))
    alerts.observe(readiness(5, heartbeat_fresh=FAIL))
    alerts.observe(readiness(10, heartbeat_fresh=FAIL))
    assert len(posted) == 2 and ("orders", "heartbeat_fresh") in alerts.open


def row(minute_offset_seconds: float, records: int, base: datetime, **fields) -> WatchSample:
    taken = base + timedelta(seconds=minute_offset_seconds)
    return WatchSample(domain="orders", owner="east", secondary="west", resolution=RAW,
                       slot=int(taken.timestamp() // 5), taken_at=taken, records_at_risk=records,
                       seconds_at_risk=records / 10, replication_state="RUNNING",
                       lease_seconds_left=fields.get("lease", 10.0),
                       readiness=fields.get("readiness", "pass"),
                       detail=f'{{"records": {records}}}')


def test_minute_folding_keeps_the_worst_of_each_minute():
    base = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)
    rows = [row(0, 5, base), row(5, 40, base, lease=2.0), row(55, 7, base, readiness="fail"),
            row(60, 1, base)]
    folded = sorted(fold_minutes(rows), key=lambda r: r.slot)
    assert [r.records_at_risk for r in folded] == [40, 1]
    first = folded[0]
    assert first.resolution == MINUTE and first.taken_at == base
    assert first.seconds_at_risk == 4.0 and first.lease_seconds_left == 2.0 and first.readiness == "fail"
    assert first.detail == '{"records": 40}'  # the detail of the worst sample


def test_store_is_idempotent_per_slot_and_prunes_to_minutes(tmp_path):
    t = topology(tmp_path, interval_seconds=5)
    store = SampleStore(AuditStore.for_topology(t))
    now = datetime.now(UTC)
    same_slot = [sample(taken_at=now.timestamp(), records_at_risk=n) for n in (3, 4)]
    assert store.record(same_slot[0]) is True
    assert store.record(same_slot[1]) is False  # a second watch's sample of the same slot
    assert store.count("orders") == 1
    old = now - timedelta(hours=30)
    for i in range(24):  # two minutes of 5 s samples, 30 h ago
        store.record(sample(taken_at=old.timestamp() + 5 * i, records_at_risk=i))
    ancient = now - timedelta(days=31)
    store.record(sample(taken_at=ancient.timestamp(), records_at_risk=1))
    result = store.prune(raw_hours=24, downsampled_days=30)
    assert result["raw_folded"] == 25
    assert store.count("orders", RAW) == 1
    assert 2 <= store.count("orders", MINUTE) <= 3  # two minutes (three if the samples straddle one)
    assert store.prune(raw_hours=24, downsampled_days=30) == {
        "raw_folded": 0, "minutes_written": 0, "minutes_dropped": 0}


def test_data_at_risk_states_the_sample_and_its_age_or_says_it_is_stale(tmp_path):
    t = topology(tmp_path, interval_seconds=5)
    audit = AuditStore.for_topology(t)
    assert "no watch sample of east -> west" in data_at_risk(audit, t, "east", "west")["statement"]
    store = SampleStore(audit)
    store.record(sample(taken_at=datetime.now(UTC).timestamp() - 2, records_at_risk=137,
                        seconds_at_risk=4.5))
    stated = data_at_risk(audit, t, "east", "west")
    assert stated["records"] == 137 and stated["fresh"] is True
    assert stated["statement"].startswith("137 records / 4.5 seconds at risk as of ")
    assert "(sample age 2." in stated["statement"]
    # The reverse flow's sample is never used for this flow.
    assert data_at_risk(audit, t, "west", "east")["records"] is None
    store.record(sample(owner="west", secondary="east", records_at_risk=9,
                        taken_at=datetime.now(UTC).timestamp()))
    assert data_at_risk(audit, t, "east", "west")["records"] == 137
    stale_t = topology(tmp_path, interval_seconds=0.5)
    stale = data_at_risk(audit, stale_t, "east", "west")
    assert stale["fresh"] is False and stale["statement"].startswith("NO FRESH WATCH SAMPLE of east -> west")


def test_watch_settings_are_validated():
    with pytest.raises(ValueError, match="interval_seconds"):
        topology(interval_seconds=0)
    assert topology().watch.interval_seconds == 5


def test_switch_readiness_blocks_only_on_checks_a_planned_switch_needs(tmp_path):
    from baton.watch.store import switch_readiness

    t = topology(tmp_path, interval_seconds=5)
    audit = AuditStore.for_topology(t)
    store = SampleStore(audit)
    assert switch_readiness(audit, t, "east", "west")["ready"] is None  # no sample: not measured
    now = datetime.now(UTC).timestamp()
    # Missing checkpoints matter to an unplanned takeover, not to a planned switch.
    store.record(sample(taken_at=now - 10), Readiness("orders", "east", "west", now - 10, [
        Check("checkpoints_fresh", FAIL, "no checkpoint for orders.events[0]")]))
    passing = switch_readiness(audit, t, "east", "west")
    assert passing["ready"] is True and passing["failing"] == []
    store.record(sample(taken_at=now - 2), Readiness("orders", "east", "west", now - 2, [
        Check("producers_can_write", FAIL, "no ALLOW WRITE for User:orders-app on west"),
        Check("heartbeat_fresh", WARN, "12 s")]))
    blocked = switch_readiness(audit, t, "east", "west")
    assert blocked["ready"] is False and blocked["failing"] == ["producers_can_write"]
    stale = topology(tmp_path, interval_seconds=0.5)  # the same samples, now older than 3 intervals
    assert switch_readiness(audit, stale, "east", "west")["ready"] is None


def test_a_planned_failover_waits_for_a_sample_newer_than_its_question_before_refusing(tmp_path):
    """A failing sample taken before the run asked may be out of date (the mirror topic appeared
    since): the check waits for a newer sample; a failure that is measured again refuses."""
    import threading
    from types import SimpleNamespace

    from baton.steps.switch_conditions import readiness_before_fence

    t = topology(tmp_path, interval_seconds=1)
    audit = AuditStore.for_topology(t)
    store = SampleStore(audit)
    said: list[str] = []
    ctx = SimpleNamespace(runbook="failover", audit=audit, topology=t, old_owner="east",
                          new_owner="west", log=said.append)
    missing = Check("topic_parity", FAIL, "east.orders.events does not exist on west")

    def record(status_checks, delay):
        def go():
            taken = datetime.now(UTC).timestamp() + delay
            threading.Event().wait(delay)
            store.record(sample(taken_at=taken, interval_seconds=1.0),
                         Readiness("orders", "east", "west", taken, status_checks))
        return threading.Thread(target=go)

    before = datetime.now(UTC).timestamp() - 1.5
    store.record(sample(taken_at=before, interval_seconds=1.0),
                 Readiness("orders", "east", "west", before, [missing]))
    fixed = record([], 0.4)
    fixed.start()
    result = readiness_before_fence(ctx, poll=0.05)
    fixed.join()
    assert result["passing"] is True and result["sample_taken_after_asking"] is True
    assert said and "waiting up to" in said[0]

    # The same failure measured again after the question: a real refusal.
    (tmp_path / "again").mkdir()
    t = topology(tmp_path / "again", interval_seconds=1)
    ctx.audit = audit = AuditStore.for_topology(t)
    ctx.topology, store = t, SampleStore(audit)
    before = datetime.now(UTC).timestamp() - 1.5
    store.record(sample(taken_at=before, interval_seconds=1.0),
                 Readiness("orders", "east", "west", before, [missing]))
    still = record([missing], 0.4)
    still.start()
    result = readiness_before_fence(ctx, poll=0.05)
    still.join()
    assert result["passing"] is False and result["failing"] == ["topic_parity"]
    assert result["sample_taken_after_asking"] is True


def test_transactional_topics_fail_readiness_when_replication_reads_uncommitted():
    from types import SimpleNamespace

    from baton.watch.readiness import check_transactions

    def engine(config: dict):
        connect = SimpleNamespace(config=lambda name: config)
        return SimpleNamespace(name="mm2", connect=connect, connector_names=lambda o, s: [f"mm2-{o}-{s}"])

    t = topology(transactional_topics=["orders.events"])
    uncommitted = check_transactions(t, sample(), engine({}))
    assert uncommitted.status == FAIL and "read_uncommitted" in uncommitted.evidence
    committed = check_transactions(t, sample(), engine({"consumer.isolation.level": "read_committed"}))
    assert committed.status == PASS
    # Not declared, but the watch saw a transaction on it: the same check applies.
    seen = sample(transactions_seen={"orders.events": "open transaction from offset 7 of partition 0",
                                     "other.topic": "not a domain topic"})
    detected = check_transactions(topology(), seen, engine({}))
    assert detected.status == FAIL and "open transaction from offset 7" in detected.evidence
    assert "other.topic" not in detected.evidence
    assert check_transactions(topology(), sample(), engine({})).status == PASS


def test_lag_continues_from_the_verified_position_or_asks_for_a_new_measurement():
    from baton.kafka.reading import Rec, Watermarks
    from baton.replication.lag import PartitionLag, Verified, continuable, continue_lag

    def recs(offsets, tag):
        return [Rec(o, f"{tag}{o}".encode(), 1_000_000 + o, 1) for o in offsets]

    # Owner 0..9 committed; the mirror copied 0..5 (mirror offsets 0..5); 6..9 were counted missing.
    owner_tail = recs(range(6, 10), "r")
    previous = PartitionLag("t", "east.t", 0, 0, 10, 0, 6, 5, 4, 3.0, "offset-sync", owner_stable_end=10)
    verified = Verified(5, 6, owner_tail, 10)
    # Since: owner 10, 11 data, 12 a commit marker (absent from reads), 13..14 an open transaction;
    # the mirror copied 6, 7 (mirror offsets 6, 7).
    owner, mirror = Watermarks(0, 15, 13), Watermarks(0, 8)
    assert continuable(verified, owner, mirror)
    copies = [Rec(6 + i, r.fingerprint, r.timestamp_ms, 1) for i, r in enumerate(owner_tail[:2])]
    lag, after = continue_lag(previous, verified, owner, mirror, copies, recs([10, 11], "r"), now=2000.0)
    assert (lag.replicated_through, lag.missing_records) == (7, 4)  # 8, 9, 10, 11
    assert lag.oldest_missing_age_seconds == pytest.approx(2000.0 - 1000.008)
    assert "open transaction holds owner offsets 13..14" in lag.note
    assert (after.replicated_through, after.mirror_end, after.read_to) == (7, 8, 13)
    assert [r.offset for r in after.tail] == [8, 9, 10, 11]

    # The engine re-copied an already copied record (a restart): not a continuation.
    again = [Rec(6, owner_tail[0].fingerprint, 0, 1), Rec(7, owner_tail[0].fingerprint, 0, 1)]
    assert continue_lag(previous, verified, owner, mirror, again, [], now=2000.0) is None
    # Retention passed the replicated position, the mirror was truncated, or the span is too long.
    assert not continuable(verified, Watermarks(7, 15, 13), mirror)
    assert not continuable(verified, owner, Watermarks(0, 3))
    assert not continuable(verified, Watermarks(0, 20_000, 20_000), mirror)


def test_open_alerts_survive_a_restart_of_the_watch_and_a_database_outage(tmp_path):
    from baton.errors import AuditError
    from baton.watch.alerts import StoredAlerts

    store = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}")
    posted: list[str] = []

    def watch() -> Alerts:  # a watch process starting: nothing in memory
        return Alerts(lambda text: posted.append(text) or True, stored=StoredAlerts(lambda: store))

    first = watch()
    first.observe(readiness(0, replication_running=FAIL, heartbeat_fresh=FAIL))
    assert len(posted) == 2
    restarted = watch()
    restarted.observe(readiness(5, replication_running=FAIL, heartbeat_fresh=FAIL))
    assert len(posted) == 2  # still failing: not alerted again
    restarted = watch()  # restarted again; meanwhile replication recovered
    restarted.observe(readiness(10, replication_running=PASS, heartbeat_fresh=FAIL))
    restarted.observe(readiness(15, replication_running=PASS, heartbeat_fresh=FAIL))
    # Exactly one recovery, timed from the first watch's alert.
    assert len(posted) == 3 and "replication_running recovered after 10 s" in posted[2]
    assert watch().observe(readiness(20, replication_running=PASS)) == []

    # The database goes away: the watch goes on from memory, then writes what it missed.
    outage = watch()
    outage.observe(readiness(25, heartbeat_fresh=FAIL))  # still open from before: nothing
    outage.stored._audit = None
    outage.stored._factory = lambda: (_ for _ in ()).throw(AuditError("audit database down"))
    outage.observe(readiness(30, heartbeat_fresh=PASS, lease_renewing=FAIL))
    assert len(posted) == 5 and "heartbeat_fresh recovered" in posted[3] and "lease_renewing" in posted[4]
    outage.stored._factory = lambda: store
    outage.observe(readiness(35, heartbeat_fresh=PASS, lease_renewing=FAIL))
    after = watch()
    after.observe(readiness(40, heartbeat_fresh=PASS, lease_renewing=FAIL))
    assert len(posted) == 5  # neither the recovery nor the alert is repeated after the outage
    assert set(StoredAlerts(lambda: store).open_alerts("orders")) == {"lease_renewing"}
