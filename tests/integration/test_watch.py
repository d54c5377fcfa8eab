"""The watch on the real lab: samples, the unplanned at-risk statement, readiness, metrics, alerts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from baton.audit import AuditStore
from baton.replication import engine_for
from baton.settings import load_topology
from baton.watch.store import SampleStore
from tests.conftest import wait_until
from tests.integration.runbook_support import commit, make_domain, produce, restore_lab, wait_mirrored

pytestmark = pytest.mark.integration

BATON = str(Path(sys.executable).with_name("baton"))


def with_watch_settings(path: Path, **watch) -> Path:
    document = yaml.safe_load(path.read_text())
    document["watch"] = document.get("watch", {}) | watch
    path.write_text(yaml.safe_dump(document))
    return path


@contextmanager
def watch_process(*configs: Path, extra: tuple[str, ...] = (), log: Path | None = None):
    """`baton watch` as its own process (as in production); stopped by its pid."""
    arguments = [BATON, "watch", *[a for c in configs for a in ("--config", str(c))], *extra]
    output = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    process = subprocess.Popen(arguments, stdout=output, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        if log:
            output.close()


def samples_after(store: SampleStore, domain: str, after: float) -> list:
    return [r for r in samples_after_all(store, domain, after) if r.records_at_risk is not None]


def test_unplanned_check_lag_states_the_newest_watch_sample_of_the_flow(lab, topology, tmp_path, prefect_api):
    from flows.failover import failover

    path = with_watch_settings(make_domain(topology, tmp_path), interval_seconds=2)
    t = load_topology(path)
    topic = t.domain.topics[0]
    store = SampleStore(AuditStore.for_topology(t))
    watch_log = tmp_path / "watch.log"
    try:
        produce(t, "east", topic, 30, 3, "base")
        for group in t.domain.consumer_groups:
            commit(t, "east", group, topic, {0: 5, 1: 5, 2: 5})
        wait_mirrored(t, topic, 30)
        engine = engine_for(t)
        wait_until(lambda: len([k for k in engine.checkpoints("east", "west").items
                                if k[0] in t.domain.consumer_groups]) == 6, 60, "MM2 checkpoints")
        with watch_process(path, extra=("--no-alerts",), log=watch_log):
            lab.fault("stop", "replication")
            at_risk = produce(t, "east", topic, 47, 3, "risk", who="producer")
            produced_at = time.time()
            # Two samples taken after the last record was acknowledged, both measuring all of them.
            wait_until(lambda: [s.records_at_risk for s in samples_after(store, t.domain.name, produced_at)]
                       [-2:] == [len(at_risk)] * 2, 60, "two watch samples counting the records at risk")
            lab.fault("kill", "east")
            summary = failover(config=str(path), unplanned=True, reason="east killed by the watch test",
                               auto_approve=True)
        assert summary["status"] == "succeeded" and summary["owner_after"] == "west"
        steps = {s.name: json.loads(s.evidence) for s in store.audit.run(summary["run_id"]).steps}
        stated = steps["check_lag"]["data_at_risk"]
        assert stated["records"] == len(at_risk) == 47
        assert stated["flow"] == "east -> west" and stated["source"] == "watch"
        assert f"{len(at_risk)} records / " in stated["statement"]
        assert f"(sample age {stated['sample_age_seconds']:.1f} s)" in stated["statement"]
        assert stated["sample_age_seconds"] >= 0
        # The statement matches the sample as stored (not an earlier run's check_lag).
        newest = store.newest(t.domain.name, "east", "west", measured=True)
        assert newest.row.taken_at.isoformat() == stated["as_of"]
        # The approve-failover gate showed the watch's readiness: not ready (replication stopped).
        assert "NOT READY" in steps["approve-failover"]["shown"]["readiness"]
        assert "watch sample" in steps["approve-failover"]["shown"]["readiness"]
    finally:
        if lab.status()["regions"]["east"]["process"] != "running":
            lab.fault("restart", "east")
        restore_lab(t)
        wait_until(lambda: lab.status()["replication"]["state"] == "RUNNING", 90, "replication RUNNING")


def test_unplanned_check_lag_says_plainly_when_no_sample_exists(lab, topology, tmp_path, prefect_api):
    """Without a watch there is no statement to make: the evidence says so (no reverse-flow guess)."""
    from baton.watch.store import data_at_risk

    t = load_topology(make_domain(topology, tmp_path))
    stated = data_at_risk(AuditStore.for_topology(t), t, "east", "west")
    assert stated["records"] is None and stated["fresh"] is False
    assert "no watch sample of east -> west" in stated["statement"]


# -- readiness: each check broken for real, then restored ----------------------------------------


@contextmanager
def lease_keeper(t):
    """The lease keeper renewing the domain's lease (in a thread), as `baton authority keep` does."""
    import threading

    from baton.authority import authority_store
    from baton.authority.keeper import LeaseKeeper

    keeper = LeaseKeeper(t, authority_store(t), interval=0.5)
    stop = threading.Event()
    thread = threading.Thread(target=keeper.run, args=(stop,), daemon=True)
    thread.start()
    wait_until(lambda: (a := authority_store(t).current(t.domain.name)) and a.lease_left() > 0, 30,
               "the keeper's first renewal")
    try:
        yield
    finally:
        stop.set()
        thread.join(10)
        keeper.close()


def statuses(t) -> dict[str, str]:
    from baton.watch.service import check_now

    _sample, readiness = check_now(t)
    return {c.name: c.status for c in readiness.checks} | {"_evidence": {c.name: c.evidence
                                                                        for c in readiness.checks}}


def ready_domain(topology, tmp_path, **watch):
    path = with_watch_settings(make_domain(topology, tmp_path), **watch)
    t = load_topology(path)
    topic = t.domain.topics[0]
    produce(t, "east", topic, 12, 3, "base")
    wait_mirrored(t, topic, 12)
    return path, t


def test_ready_cli_passes_then_fails_when_replication_stops(lab, topology, tmp_path):
    path, t = ready_domain(topology, tmp_path, heartbeat_max_age_seconds=4)
    environment = os.environ | {"BATON_CONFIG": str(path)}
    try:
        with lease_keeper(t):
            result = subprocess.run([BATON, "ready", "--json"], capture_output=True, text=True,
                                    env=environment, timeout=120)
            document = json.loads(result.stdout)
            assert result.returncode == 0, document["summary"]
            assert document["ready"] is True
            assert {c["name"]: c["status"] for c in document["checks"]} == dict.fromkeys(
                [c["name"] for c in document["checks"]], "pass")
            assert len(document["checks"]) == 10

            lab.fault("stop", "replication")
            # The heartbeat ages past 4 s once the heartbeat connector stopped.
            wait_until(lambda: statuses(t)["heartbeat_fresh"] == "fail", 60, "heartbeat stale")
            result = subprocess.run([BATON, "ready", "--json"], capture_output=True, text=True,
                                    env=environment, timeout=120)
            document = json.loads(result.stdout)
            checks = {c["name"]: c for c in document["checks"]}
            assert result.returncode == 1 and document["ready"] is False
            assert checks["replication_running"]["status"] == "fail"
            assert "STOPPED" in checks["replication_running"]["evidence"]
            assert checks["heartbeat_fresh"]["status"] == "fail"
        usage = subprocess.run([BATON, "ready", "--config", str(tmp_path / "missing.yaml")],
                               capture_output=True, text=True, timeout=60)
        assert usage.returncode == 2 and "missing.yaml" in usage.stderr
    finally:
        restore_lab(t)
        wait_until(lambda: lab.status()["replication"]["state"] == "RUNNING", 90, "replication RUNNING")


def test_ready_reads_the_acls_on_the_secondary(lab, topology, tmp_path):
    from confluent_kafka.admin import (
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    from baton.kafka.admin import admin_client, ensure_acls
    from baton.kafka.fencing import fence, unfence
    from baton.lab.lab import lab_acls

    _path, t = ready_domain(topology, tmp_path)
    west = admin_client(t.regions["west"])
    try:
        with lease_keeper(t):
            before = statuses(t)
            assert before["producers_can_write"] == "pass" and before["consumers_can_read"] == "pass"
            # Fencing west adds Baton's own DENY: producers can still write there once unfenced.
            fence(t, "west")
            assert statuses(t)["producers_can_write"] == "pass"
            unfence(t, "west")
            # Remove the producer principal's WRITE on orders.* in west.
            for future in west.delete_acls([AclBindingFilter(
                    ResourceType.TOPIC, "orders.", ResourcePatternType.PREFIXED, "User:orders-app", "*",
                    AclOperation.WRITE, AclPermissionType.ALLOW)]).values():
                assert future.result(), "the lab's WRITE ACL was there to delete"
            after = statuses(t)
            assert after["producers_can_write"] == "fail"
            assert f"User:orders-app WRITE {t.domain.topics[0]}" in after["_evidence"]["producers_can_write"]
            ensure_acls(west, lab_acls())
            # Remove the consumer principal's READ on the domain's groups in west.
            for future in west.delete_acls([AclBindingFilter(
                    ResourceType.GROUP, "orders-", ResourcePatternType.PREFIXED, "User:orders-consumer", "*",
                    AclOperation.READ, AclPermissionType.ALLOW)]).values():
                assert future.result()
            after = statuses(t)
            assert after["consumers_can_read"] == "fail" and after["producers_can_write"] == "pass"
            assert f"READ group {t.domain.consumer_groups[0]}" in after["_evidence"]["consumers_can_read"]
    finally:
        ensure_acls(west, lab_acls())
        unfence(t, "west")
    assert statuses(t)["consumers_can_read"] == "pass"


def test_ready_fails_on_mirror_parity_checkpoints_transactions_and_lease(lab, topology, tmp_path):
    from confluent_kafka.admin import (
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        NewPartitions,
        ResourceType,
    )

    from baton.kafka.admin import admin_client

    path, t = ready_domain(topology, tmp_path)
    topic = t.domain.topics[0]
    mirror = t.replication.remote_topic(topic, "east")
    west = admin_client(t.regions["west"])
    with lease_keeper(t):
        assert statuses(t)["topic_parity"] == "pass"
        resource = ConfigResource(ResourceType.TOPIC, mirror, incremental_configs=[
            ConfigEntry("min.insync.replicas", "2", incremental_operation=AlterConfigOpType.SET)])
        for future in west.incremental_alter_configs([resource]).values():
            future.result()
        found = statuses(t)
        assert found["topic_parity"] == "fail"
        assert f"min.insync.replicas: {topic} 1 vs {mirror} 2" in found["_evidence"]["topic_parity"]
        for future in west.create_partitions([NewPartitions(mirror, 4)]).values():
            future.result()
        found = statuses(t)
        assert f"partitions: {topic} 3 vs {mirror} 4" in found["_evidence"]["topic_parity"]
        assert found["lag_within_thresholds"] == "fail"  # partition-wise lag is impossible now

    # A domain group MM2 does not checkpoint (outside its groups pattern), with a position on east.
    (tmp_path / "second").mkdir()
    path2, t2 = ready_domain(topology, tmp_path / "second", transactional_topics=[])
    group = f"baton-t-{t2.domain.name}"
    document = yaml.safe_load(path2.read_text())
    document["domain"]["consumer_groups"] = [group]
    document["watch"]["transactional_topics"] = document["domain"]["topics"]
    path2.write_text(yaml.safe_dump(document))
    t2 = load_topology(path2)
    commit(t2, "east", group, t2.domain.topics[0], {0: 2, 1: 2, 2: 2})
    found = statuses(t2)  # no keeper for this domain: its lease never started
    assert found["checkpoints_fresh"] == "fail"
    assert f"{group}: no checkpoint for {t2.domain.topics[0]}[0]" in found["_evidence"]["checkpoints_fresh"]
    # The lab's MM2 reads read_committed (issue 11), so the declared transactional topic passes;
    # the failing case (read_uncommitted) is in tests/unit/test_watch_units.py.
    assert found["transactions_read_committed"] == "pass"
    assert "reads read_committed" in found["_evidence"]["transactions_read_committed"]
    assert found["lease_renewing"] == "fail"


# -- metrics and Slack alerts ----------------------------------------------------------------------


def scrape(port: int) -> dict[tuple, float]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def series(metrics: dict, name: str, **labels) -> float | None:
    for (found, pairs), value in metrics.items():
        if found == name and labels.items() <= dict(pairs).items():
            return value
    return None


def test_watch_serves_metrics_and_alerts_once_per_cause_then_recovers(lab, topology, tmp_path):
    import socket

    from baton.authority import authority_store
    from tests.slack_standin import BOT_TOKEN, CHANNEL, SlackStandIn

    slack = SlackStandIn().start()
    path, t = ready_domain(topology, tmp_path, interval_seconds=1, heartbeat_max_age_seconds=4)
    document = yaml.safe_load(path.read_text())
    document["approvals"] |= {"slack_channel": CHANNEL, "slack_bot_token": BOT_TOKEN,
                              "slack_api_url": slack.api_url}
    path.write_text(yaml.safe_dump(document))
    t = load_topology(path)
    domain = t.domain.name
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def alerts() -> list[str]:
        return [a["text"] for a in slack.called("chat.postMessage")]

    try:
        with lease_keeper(t), watch_process(path, extra=("--metrics-port", str(port)),
                                            log=tmp_path / "watch.log"):
            healthy = wait_until(lambda: _scraped_ready(port, domain), 60, "a ready sample in the metrics")
            epoch = authority_store(t).current(domain).epoch
            assert series(healthy, "baton_replication_up", domain=domain, owner="east", secondary="west") == 1
            assert series(healthy, "baton_at_risk_records", domain=domain) == 0
            for p in range(3):
                assert series(healthy, "baton_partition_at_risk_records", domain=domain,
                              topic=t.domain.topics[0], partition=str(p)) == 0
            assert series(healthy, "baton_authority_epoch", domain=domain) == epoch
            assert series(healthy, "baton_authority_owner_info", domain=domain, owner="east",
                          state="ACTIVE") == 1
            assert series(healthy, "baton_lease_remaining_seconds", domain=domain) > 0
            assert series(healthy, "baton_heartbeat_age_seconds", domain=domain) < 4
            assert series(healthy, "baton_watch_samples_total", domain=domain, outcome="measured") >= 1
            for check in ("replication_running", "topic_parity", "lease_renewing"):
                assert series(healthy, "baton_readiness_check_status", domain=domain, check=check,
                              status="pass") == 1
            assert alerts() == []

            def posted(*causes: str) -> bool:
                return all(any(cause in a for a in alerts()) for cause in causes)

            lab.fault("stop", "replication")
            # Waited for by cause: another alert (e.g. the lease on a loaded machine) may come first.
            wait_until(lambda: posted("replication_running failing", "heartbeat_fresh failing"), 90,
                       "alerts for replication and heartbeat")
            broken = scrape(port)
            assert series(broken, "baton_replication_up", domain=domain) == 0
            assert series(broken, "baton_ready", domain=domain) == 0
            assert series(broken, "baton_readiness_check_status", domain=domain, check="replication_running",
                          status="fail") == 1
            # Several more samples while broken: still one alert per cause.
            samples = series(broken, "baton_watch_samples_total", domain=domain, outcome="measured")
            wait_until(lambda: series(scrape(port), "baton_watch_samples_total", domain=domain,
                                      outcome="measured") >= samples + 3, 60, "three more samples")
            texts = alerts()
            assert len([a for a in texts if "replication_running failing" in a]) == 1, texts
            assert len([a for a in texts if "heartbeat_fresh failing" in a]) == 1, texts
            assert all(domain in a and "NOT READY" in a for a in texts if " failing " in a), texts
            evidence = next(a for a in texts if "replication_running" in a)  # the state as sampled
            assert "replication east -> west is STOPPED" in evidence or "is DEGRADED" in evidence, texts

            lab.fault("start", "replication")
            wait_until(lambda: posted("replication_running recovered", "heartbeat_fresh recovered"), 90,
                       "recovery posts")
            wait_until(lambda: _scraped_ready(port, domain), 60, "ready again in the metrics")
            texts = alerts()
            assert len([a for a in texts if "replication_running recovered" in a]) == 1, texts
            assert len([a for a in texts if "heartbeat_fresh recovered" in a]) == 1, texts
            # Hysteresis for every cause: failing and recovered alternate, never two open at once.
            from baton.watch.readiness import CHECKS

            for cause in [c for c in CHECKS if any(c in a for a in texts)]:
                kinds = ["failing" if f"{cause} failing" in a else "recovered" for a in texts if cause in a]
                assert kinds == ["failing", "recovered"] * (len(kinds) // 2), (cause, texts)
            assert all(a["channel"] == CHANNEL for a in slack.called("chat.postMessage"))
    finally:
        slack.stop()
        restore_lab(t)
        wait_until(lambda: lab.status()["replication"]["state"] == "RUNNING", 90, "replication RUNNING")


def _scraped_ready(port: int, domain: str):
    try:
        metrics = scrape(port)
    except Exception:  # noqa: BLE001 - not listening yet
        return None
    return metrics if series(metrics, "baton_ready", domain=domain) == 1 else None


# -- hiccups: a broker restart and a database restart ----------------------------------------------


def _pg_ctl(url: str, action: str) -> None:
    """Stop or start the test PostgreSQL server behind `url` (the conftest's throwaway cluster)."""
    import psycopg
    from sqlalchemy.engine import make_url

    from tests.conftest import _postgres_bin

    server = make_url(url)
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if action == "stop":
        dsn = server.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(dsn, autocommit=True) as connection:
            data = connection.execute("SHOW data_directory").fetchone()[0]
            sockets = connection.execute("SHOW unix_socket_directories").fetchone()[0]
        _pg_ctl.started = (data, f"-p {server.port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off")
        subprocess.run([*as_user, str(_postgres_bin() / "pg_ctl"), "-D", data, "-m", "fast", "-w", "stop"],
                       check=True, capture_output=True)
    else:
        data, options = _pg_ctl.started
        subprocess.run([*as_user, str(_postgres_bin() / "pg_ctl"), "-D", data, "-l", f"{data}/../log",
                        "-o", options, "-w", "-t", "60", "start"], check=True, capture_output=True)


@pytest.mark.parametrize("audit_url", ["postgresql"], indirect=True)
def test_watch_keeps_sampling_through_a_broker_restart_and_a_database_restart(lab, topology, tmp_path,
                                                                               audit_url):
    path = with_watch_settings(make_domain(topology, tmp_path), interval_seconds=1)
    document = yaml.safe_load(path.read_text())
    document["audit"] = {"database_url": audit_url}
    path.write_text(yaml.safe_dump(document))
    t = load_topology(path)
    store = SampleStore(AuditStore.for_topology(t))
    log = tmp_path / "watch.log"
    started = time.time()

    def stored(after: float, measured: bool | None = True) -> list:
        rows = samples_after_all(store, t.domain.name, after)
        return [r for r in rows if measured is None or (r.records_at_risk is not None) == measured]

    try:
        with watch_process(path, extra=("--no-alerts",), log=log) as process:
            wait_until(lambda: len(stored(started)) >= 2, 60, "two measured samples")
            lab.fault("kill", "east")
            wait_until(lambda: stored(started, measured=False), 60, "a sample of the unreachable owner")
            failed = stored(started, measured=False)[-1]
            assert "east" in failed.detail and failed.replication_state
            lab.fault("restart", "east")
            back = time.time()
            wait_until(lambda: len(stored(back)) >= 2, 120, "measured samples after east restarted")

            _pg_ctl(audit_url, "stop")
            stopped = time.time()
            wait_until(lambda: log.read_text().count("audit database unavailable") >= 3, 60,
                       "the watch logging the database outage for three samples")
            _pg_ctl(audit_url, "start")
            restarted = time.time()
            wait_until(lambda: "audit database back" in log.read_text(), 60, "the watch logging recovery")
            kept = [r for r in stored(stopped, measured=None) if r.taken_at.timestamp() < restarted]
            assert len(kept) >= 3  # samples taken while the database was down, written once it was back
            wait_until(lambda: stored(restarted), 30, "a sample after the database restart")
            assert process.poll() is None  # the watch never stopped
    finally:
        if lab.status()["regions"]["east"]["process"] != "running":
            lab.fault("restart", "east")
        restore_lab(t)


def samples_after_all(store: SampleStore, domain: str, after: float) -> list:
    from sqlmodel import select

    from baton.audit.models import WatchSample

    with store.audit.transaction() as session:
        rows = session.exec(select(WatchSample).where(WatchSample.domain == domain)
                            .order_by(WatchSample.taken_at)).all()
    return [r for r in rows if r.taken_at.timestamp() > after]


# -- the lab as a complete system -------------------------------------------------------------------


def test_lab_runs_prefect_keeper_and_watch_and_runbooks_use_its_prefect(lab, topology, tmp_path):
    import httpx

    status = lab.status()
    services = status["services"]
    assert {name: s["process"] for name, s in services.items()} == dict.fromkeys(
        ("prefect", "keeper", "watch"), "running")
    assert httpx.get(f"{services['prefect']['api']}/health", timeout=10).status_code == 200
    environment = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "BATON_CONFIG")}

    # The lab's own domain: ACTIVE with a live lease (the lab's keeper), ready, measured by the watch.
    shown = subprocess.run([BATON, "authority", "show", "--json"], capture_output=True, text=True,
                           env=environment, timeout=60)
    authority = json.loads(shown.stdout)["authority"]
    from datetime import UTC, datetime

    assert authority["state"] == "ACTIVE" and authority["owner"] == topology.domain.initial_owner
    assert datetime.fromisoformat(authority["lease_expires_at"]) > datetime.now(UTC)
    domain = topology.domain.name
    metrics = wait_until(lambda: _scraped_ready(lab.ports.metrics, domain), 60, "the lab watch's metrics")
    assert series(metrics, "baton_at_risk_records", domain=domain) is not None
    assert series(metrics, "baton_lease_remaining_seconds", domain=domain) > 0

    # A runbook command without PREFECT_API_URL runs on the lab's Prefect server, visible there.
    path = make_domain(topology, tmp_path)
    t = load_topology(path)
    produce(t, "east", t.domain.topics[0], 12, 3, "lab")
    for group in t.domain.consumer_groups:
        commit(t, "east", group, t.domain.topics[0], {0: 2, 1: 2, 2: 2})
    wait_mirrored(t, t.domain.topics[0], 12)
    engine = engine_for(t)
    wait_until(lambda: len([k for k in engine.checkpoints("east", "west").items
                            if k[0] in t.domain.consumer_groups]) == 6, 60, "MM2 checkpoints")
    try:
        result = subprocess.run([BATON, "failover", "--config", str(path), "--yes", "--json"],
                                capture_output=True, text=True, env=environment, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "using the lab's Prefect server" in result.stderr
        runs = httpx.post(f"{services['prefect']['api']}/flow_runs/filter", json={"limit": 50},
                          timeout=10).json()
        assert any(r["parameters"].get("config") == str(path) and r["state_type"] == "COMPLETED"
                   for r in runs)
    finally:
        restore_lab(t)


# -- the watch's lag is `baton lag`'s, measured from the new records only -------------------------


def test_watch_lag_equals_baton_lag_per_partition_reading_only_new_records(lab, topology, tmp_path):
    """Replication stopped; plain records, a committed, an aborted and an open transaction on the
    owner: the watch continues each partition from its previous verified position (no offset-sync
    verification) and counts exactly what measure_lag (`baton lag`) counts, partition by partition;
    then replication resumes and both agree again at 0."""
    from confluent_kafka import Producer

    from baton.replication.lag import measure_lag
    from baton.watch.sampler import Sampler

    t = load_topology(make_domain(topology, tmp_path))
    topic = t.domain.topics[0]

    def compare(sample) -> dict:
        report = measure_lag(t, owner="east")
        watched = {(p.topic, p.partition): p for p in sample.lag.partitions}
        for expected in report.partitions:
            got = watched[(expected.topic, expected.partition)]
            assert (got.missing_records, got.replicated_through, got.owner_end, got.owner_stable_end) == (
                expected.missing_records, expected.replicated_through, expected.owner_end,
                expected.owner_stable_end), (got, expected)
            if expected.missing_records:  # the same oldest missing record, aged by the time between
                assert abs(got.oldest_missing_age_seconds - expected.oldest_missing_age_seconds) <= (
                    report.measured_at - sample.lag.measured_at + 0.01)
        assert sample.records_at_risk == report.records_at_risk
        return {p.partition: p.missing_records for p in report.partitions}

    transactional = Producer(t.regions["east"].client_config("admin") | {"transactional.id": f"tx-{topic}"})
    try:
        produce(t, "east", topic, 12, 3, "base")
        wait_mirrored(t, topic, 12)
        sampler = Sampler(t)
        assert sampler.sample().records_at_risk == 0

        lab.fault("stop", "replication")
        plain_records = produce(t, "east", topic, 10, 3, "risk")
        transactional.init_transactions(30)
        for values, end in (([b"c-0", b"c-1", b"c-2"], "commit"), ([b"a-0", b"a-1"], "abort"),
                            ([b"o-0", b"o-1"], None)):
            transactional.begin_transaction()
            for value in values:
                transactional.produce(topic, value=value, partition=0)
            transactional.flush(30)
            if end == "commit":
                transactional.commit_transaction(30)
            elif end == "abort":
                transactional.abort_transaction(30)
        sample = sampler.sample()
        assert sampler.breakdown == {"kept": 0, "continued": 3, "measured": 0}, sampler.breakdown
        missing = compare(sample)
        # 10 plain records round-robin + the 3 committed ones on partition 0; aborted and open: none.
        assert missing == {0: 4 + 3, 1: 3, 2: 3} and sample.records_at_risk == len(plain_records) + 3
        # Transactions seen without being declared (watch.transactional_topics is empty here).
        assert topic in sample.transactions_seen, sample.transactions_seen

        transactional.abort_transaction(30)  # the open one: the last stable offset moves to the end
        restore_lab(t)
        wait_mirrored(t, topic, 12 + 10 + 3)
        sample = sampler.sample()
        assert sampler.breakdown["measured"] == 0 and sampler.breakdown["continued"] >= 1, sampler.breakdown
        assert compare(sample) == {0: 0, 1: 0, 2: 0}
    finally:
        restore_lab(t)
        wait_until(lambda: lab.status()["replication"]["state"] == "RUNNING", 90, "replication RUNNING")


def test_a_restarted_watch_neither_alerts_again_nor_misses_the_recovery(lab, topology, tmp_path):
    """Alert state lives in the audit DB: a new watch (a restart) finds the open alert, does not
    post it again while the cause still fails, and posts exactly one recovery once it clears."""
    from baton.watch.alerts import StoredAlerts
    from baton.watch.service import Watch
    from tests.slack_standin import BOT_TOKEN, CHANNEL, SlackStandIn

    slack = SlackStandIn().start()
    path, _ = ready_domain(topology, tmp_path)
    document = yaml.safe_load(path.read_text())
    document["approvals"] |= {"slack_channel": CHANNEL, "slack_bot_token": BOT_TOKEN,
                              "slack_api_url": slack.api_url}
    path.write_text(yaml.safe_dump(document))
    t = load_topology(path)

    def lease_posts() -> list[str]:
        return [a["text"] for a in slack.called("chat.postMessage") if "lease_renewing" in a["text"]]

    def a_watch_samples_once() -> None:  # a watch process starting: alert state only from the DB
        watch = Watch([t])
        watch.run_once(watch.domains[0])

    try:
        a_watch_samples_once()  # no authority record yet: lease_renewing fails
        assert len(lease_posts()) == 1 and "lease_renewing failing" in lease_posts()[0]
        a_watch_samples_once()
        assert len(lease_posts()) == 1, lease_posts()
        with lease_keeper(t):  # the keeper initializes the domain and renews its lease
            a_watch_samples_once()
            a_watch_samples_once()
        posts = lease_posts()
        assert len(posts) == 2 and "lease_renewing recovered" in posts[1], posts
        stored = StoredAlerts(lambda: AuditStore.for_topology(t)).open_alerts(t.domain.name)
        assert "lease_renewing" not in stored
    finally:
        slack.stop()
