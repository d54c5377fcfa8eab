"""The audit database on real SQLite and a real PostgreSQL server: evidence, chain, tampering, locks.

No Kafka needed; these run against the `audit_url` fixture (sqlite and postgresql).
"""

from __future__ import annotations

import json
import threading

import pytest
import yaml
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from baton.audit import AuditStore
from baton.audit.chain import row_hash
from baton.audit.db import normalize_url
from baton.audit.models import Step
from baton.cli import app
from baton.errors import RunLocked, UsageError

pytestmark = pytest.mark.integration


def topology_file(tmp_path, database_url: str):
    """A minimal valid topology whose audit database is `database_url`."""
    region = {"bootstrap_servers": "127.0.0.1:9", "admin": {"username": "a", "password": "b"}}
    document = {
        "domain": {"name": "orders", "topics": ["orders.events"], "initial_owner": "east"},
        "regions": {"east": region, "west": region},
        "audit": {"database_url": database_url},
    }
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(document))
    return str(path)


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def a_finished_run(store: AuditStore) -> str:
    run = store.start_run("orders", "drill", reason="monthly drill", started_by="alice")
    with store.step(run.id, "check_lag", region="west", epoch=1) as step:
        step.evidence = {"lag_records": 42, "partitions": {"0": 40, "1": 2}}
    store.record_approval(run.id, "before_fence", "approved", "U123", channel="slack",
                          identity_verified=True, comment="go")
    with pytest.raises(RuntimeError), store.step(run.id, "fence_old_owner", region="east") as step:
        step.evidence["acls_created"] = 2
        raise RuntimeError("read-back found 1 of 2 ACLs")
    store.record_drill_report(run.id, "passed", {"missing": 0, "duplicates": 0})
    store.finish_run(run.id, "failed", detail="fence step failed")
    return run.id


def raw(url: str, *statements: tuple[str, dict]) -> None:
    """Run raw SQL on the real database, the way someone tampering with it would."""
    engine = create_engine(normalize_url(url))
    with engine.begin() as connection:
        for sql, params in statements:
            connection.execute(text(sql), params)
    engine.dispose()


def scalar(url: str, sql: str):
    engine = create_engine(normalize_url(url))
    with engine.connect() as connection:
        value = connection.execute(text(sql)).scalar_one()
    engine.dispose()
    return value


def test_a_run_is_recorded_and_shown_with_its_evidence(audit_url, tmp_path):
    store = AuditStore(audit_url)
    run_id = a_finished_run(store)
    config = topology_file(tmp_path, audit_url)

    verified = cli("audit", "verify", "--config", config, "--json", "--offline")
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.output) == {
        "ok": True, "rows": 6, "head_seq": 6, "first_bad_row": None, "signed": False,
        "control_topics": {"problems": [], "notes": [
            "no chain key configured (audit.chain_key or BATON_AUDIT__CHAIN_KEY): the chain head's "
            "signature was not checked"]}}

    shown = cli("audit", "show", run_id, "--config", config, "--json")
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.output)
    assert data["run"]["status"] == "failed"
    assert data["run"]["started_by"] == "alice"
    assert [(s["position"], s["name"], s["status"]) for s in data["steps"]] == [
        (1, "check_lag", "succeeded"), (2, "fence_old_owner", "failed")]
    assert data["steps"][0]["evidence"] == {"lag_records": 42, "partitions": {"0": 40, "1": 2}}
    assert data["steps"][1]["evidence"] == {"acls_created": 2}
    assert data["steps"][1]["error"] == "RuntimeError: read-back found 1 of 2 ACLs"
    assert [(a["gate"], a["decision"], a["approver"], a["identity_verified"]) for a in data["approvals"]] == [
        ("before_fence", "approved", "U123", True)]
    assert data["drill_reports"][0]["report"] == {"missing": 0, "duplicates": 0}

    human = cli("audit", "show", run_id, "--config", config)
    assert human.exit_code == 0
    assert "fence_old_owner failed" in human.output and "read-back found 1 of 2 ACLs" in human.output


def test_show_unknown_run_is_a_usage_error(audit_url, tmp_path):
    AuditStore(audit_url)
    result = cli("audit", "show", "no-such-run", "--config", topology_file(tmp_path, audit_url))
    assert result.exit_code == 2
    assert "no run 'no-such-run'" in result.output


def _edit(url):
    raw(url, ("UPDATE steps SET evidence = :e WHERE position = 1", {"e": '{"lag_records": 0}'}))
    return "steps row 1 (seq 2): its content does not match its hash: the row was edited"


def _delete(url):
    raw(url, ("DELETE FROM approvals WHERE id = 1", {}))
    return "steps row 2 (seq 4): seq 3 missing before it"


def _reorder(url):
    # Swap the two steps' places in the chain (seq 2 and seq 4), through a free value.
    raw(url, ("UPDATE steps SET seq = -1 WHERE id = 1", {}),
        ("UPDATE steps SET seq = 2 WHERE id = 2", {}),
        ("UPDATE steps SET seq = 4 WHERE id = 1", {}))
    return "steps row 2 (seq 2): prev_hash does not match the hash of the row before it"


def _insert_out_of_order(url):
    # A careful forger: a well-formed step with a correct own hash, linked to an old row.
    old_hash = scalar(url, "SELECT hash FROM steps WHERE id = 1")
    forged = Step(id=99, run_id="x", position=9, name="check_lag", status="succeeded",
                  started_at=_utc(), ended_at=_utc(), evidence="{}", seq=7, recorded_at=_utc(),
                  prev_hash=old_hash, hash="")
    forged.hash = row_hash(forged)
    raw(url, ("INSERT INTO steps (id, run_id, position, name, status, started_at, ended_at, evidence, "
              "seq, recorded_at, prev_hash, hash) VALUES (99, 'x', 9, 'check_lag', 'succeeded', :t, :t, "
              "'{}', 7, :t, :p, :h)", {"t": "2026-01-01 00:00:00.000000", "p": old_hash, "h": forged.hash}))
    return "steps row 99 (seq 7): prev_hash does not match the hash of the row before it"


def _delete_newest(url):
    raw(url, ("DELETE FROM run_events", {}))
    return "drill_reports row 1 (seq 5): the chain ends at seq 5 but chain_head records seq 6"


def _utc():
    from datetime import UTC, datetime

    return datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("tamper", [_edit, _delete, _reorder, _insert_out_of_order, _delete_newest],
                         ids=["edit", "delete", "reorder", "insert-out-of-order", "delete-newest"])
def test_verify_names_the_first_bad_row_after_tampering(audit_url, tmp_path, tamper):
    store = AuditStore(audit_url)
    a_finished_run(store)
    config = topology_file(tmp_path, audit_url)
    assert cli("audit", "verify", "--config", config, "--offline").exit_code == 0

    expected = tamper(audit_url)

    result = cli("audit", "verify", "--config", config, "--offline")
    assert result.exit_code == 1
    assert expected in " ".join(result.output.split())
    as_json = json.loads(cli("audit", "verify", "--config", config, "--json", "--offline").output)
    assert as_json["ok"] is False
    assert f"{as_json['first_bad_row']['table']} row {as_json['first_bad_row']['id']}" in expected


def test_one_run_at_a_time_per_domain_and_explicit_unlock(audit_url):
    store = AuditStore(audit_url)
    crashed = store.start_run("orders", "failover", started_by="bob")

    # The one way out of a crashed run that holds the lock is to continue it.
    with pytest.raises(RunLocked, match=f"locked by run {crashed.id} .*started by bob.*"
                                        f"`baton failover --resume {crashed.id}`"):
        store.start_run("orders", "failback")
    other_domain = store.start_run("payments", "drill")  # locks are per domain
    assert store.lock_holder("payments").run_id == other_domain.id

    with pytest.raises(UsageError, match="no run 'no-such-run'"):
        store.unlock("no-such-run")
    finished = store.start_run("inventory", "drill")
    store.finish_run(finished.id, "succeeded")
    with pytest.raises(UsageError, match="does not hold the lock .*no run holds it"):
        store.unlock(finished.id)
    assert store.lock_holder("orders").run_id == crashed.id

    store.unlock(crashed.id, actor="carol", reason="worker died")
    view = store.run(crashed.id)
    assert view.status == "aborted"
    assert [(e.kind, e.actor, e.detail) for e in view.events] == [("lock_released", "carol", "worker died")]
    assert store.lock_holder("orders") is None
    assert store.start_run("orders", "failback").runbook == "failback"
    assert store.verify().ok


def test_cli_unlock_releases_a_crashed_runs_lock(audit_url, tmp_path):
    store = AuditStore(audit_url)
    crashed = store.start_run("orders", "failover")
    config = topology_file(tmp_path, audit_url)

    result = cli("authority", "unlock", "--run", crashed.id, "--config", config, "--reason", "host lost")
    assert result.exit_code == 0, result.output
    assert f"released the lock of run {crashed.id}" in result.output
    assert store.lock_holder("orders") is None
    shown = json.loads(cli("audit", "show", crashed.id, "--config", config, "--json").output)
    assert shown["run"]["status"] == "aborted"
    assert [(e["kind"], e["detail"]) for e in shown["events"]] == [("lock_released", "host lost")]

    again = cli("authority", "unlock", "--run", crashed.id, "--config", config)
    assert again.exit_code == 2 and "does not hold the lock" in again.output


def test_unreachable_postgres_is_a_clear_error(tmp_path):
    config = topology_file(tmp_path, "postgresql+psycopg://nobody@127.0.0.1:1/audit")
    result = cli("audit", "verify", "--config", config, "--offline")
    assert result.exit_code == 1
    assert "cannot open the audit database" in result.output
    assert "Check audit.database_url" in " ".join(result.output.split())


def test_migrations_build_exactly_the_models_schema(audit_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from baton.audit.models import SQLModel

    store = AuditStore(audit_url)
    with store.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), SQLModel.metadata) == []
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0005"


def test_concurrent_writers_keep_one_dense_chain(audit_url):
    store = AuditStore(audit_url)
    run = store.start_run("orders", "drill")
    writers, steps_each = 6, 5
    start = threading.Barrier(writers)

    def write(i: int) -> None:
        mine = AuditStore(audit_url)
        start.wait()
        for n in range(steps_each):
            with mine.step(run.id, f"step-{i}-{n}") as step:
                step.evidence["writer"] = i

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    steps = store.run(run.id).steps
    assert sorted(s.position for s in steps) == list(range(1, writers * steps_each + 1))
    assert [s.seq for s in steps] == list(range(2, writers * steps_each + 2))
    verdict = store.verify()
    assert verdict.ok and verdict.rows == writers * steps_each + 1
