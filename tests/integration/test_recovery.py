"""Recovery to the last safe state on the real lab, after faults injected into real runs.

Each test checks what is true afterwards, read back from where it lives: the authority record,
the ACLs in each region, the connector states in Connect, and that the old owner accepts a
record from a guarded producer. Each uses its own domain; the shared lab is restored after.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time

import pytest
from confluent_kafka import KafkaError

from baton.audit import AuditStore
from baton.authority import authority_store
from baton.authority.keeper import LeaseKeeper
from baton.client import GuardedProducer
from baton.kafka.fencing import present_bindings
from baton.replication import engine_for
from baton.settings import load_topology
from tests.conftest import wait_until
from tests.integration.runbook_support import (
    make_domain,
    produce,
    restore_lab,
    resume,
    wait_checkpointed,
    wait_mirrored,
    wait_paused_at,
)
from tests.integration.test_runbooks import authority_of, baton, seed, start_cli_failover

pytestmark = pytest.mark.integration


@pytest.fixture
def domain(topology, tmp_path, prefect_api):
    """Factory for a private domain's topology file; the lab is restored afterwards."""
    created = []

    def create(**thresholds):
        path = make_domain(topology, tmp_path, **thresholds)
        created.append(path)
        return path

    yield create
    for path in created:
        restore_lab(load_topology(path))


class Keeper:
    """The lease keeper of a test domain, in a thread (as `baton authority keep` runs it)."""

    def __init__(self, t):
        self.keeper = LeaseKeeper(t, authority_store(t, AuditStore.for_topology(t)), interval=1.0)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.keeper.run, args=(self.stop,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self.keeper

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)
        self.keeper.close()


def guarded_write(t, region: str) -> KafkaError | None:
    """Write one record with a guarded producer that can reach `region` only; the delivery error."""
    producer = GuardedProducer(t, regions=[region], block_seconds=15)
    errors: list = []
    try:
        producer.produce(t.domain.topics[0], value=b"after-recovery",
                         on_delivery=lambda error, message: errors.append(error))
        producer.flush(20)
    finally:
        producer.close()
    assert errors, "the guarded producer got no delivery report"
    return errors[0]


def assert_replication_copies(t) -> None:
    """Replication east -> west really copies (not just a RUNNING state): new records reach west."""
    from baton.kafka.admin import admin_client, end_offsets

    topic = t.domain.topics[0]
    partitions = len(admin_client(t.regions["east"]).list_topics(topic).topics[topic].partitions)
    total = sum(end_offsets(t.regions["east"].client_config("admin"), topic, partitions)) + 30
    produce(t, "east", topic, 30, partitions, "after")
    wait_mirrored(t, topic, total, timeout=90)


# A planned failover has no gate inside the fenced window any more (its one decision is
# approve-failover, before the fence); an unplanned one still pauses at approve-switch after the
# fence. The owner stays reachable, so its fence is really applied: the cases that need a pause
# while fenced run unplanned.
UNPLANNED = ("--unplanned", "--reason", "a pause inside the fenced window, for the test")


def start_unplanned(path):
    """The CLI's unplanned failover of a seeded domain, once MM2 has checkpointed its groups."""
    wait_checkpointed(load_topology(path))
    return start_cli_failover(path, *UNPLANNED)


def paused_at_switch_then_crash(path) -> str:
    """An unplanned failover of the domain, approved to approve-switch (east fenced), whose CLI
    is then killed."""
    process = start_unplanned(path)
    try:
        run = wait_paused_at("failover", "approve-failover", config=path, process=process)
        resume(run, decision="approve", approver="alice")
        wait_paused_at("failover", "approve-switch", timeout=180, config=path, process=process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    t = load_topology(path)
    store = AuditStore.for_topology(t)
    return store.runs(t.domain.name)[0].id


def show(path) -> dict:
    result = baton("authority", "show", "--json", "--config", str(path))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_switch_failing_after_replication_stopped_restarts_replication(domain):
    """Case 1: the switch stops MM2, then cannot unfence west (wrong admin password)."""
    path = domain()
    t = load_topology(path)
    seed(t)
    run_id = paused_at_switch_then_crash(path)
    assert engine_for(t).status("east", "west").state == "RUNNING"

    env = os.environ | {"BATON_REGIONS__WEST__ADMIN__PASSWORD": "wrong"}
    result = baton("failover", "--yes", "--resume", run_id, "--config", str(path), env=env)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    view = AuditStore.for_topology(t).run(run_id)
    switch = [s for s in view.steps if s.name == "switch_authority"]
    assert [s.status for s in switch] == ["failed"]
    # Replication the switch stopped runs again, read from Connect; east owns and is unfenced.
    assert engine_for(t).status("east", "west").state == "RUNNING"
    authority = authority_of(t)
    assert (authority.owner, authority.state.value) == ("east", "ACTIVE")
    assert present_bindings(t, "east") == []
    compensation = json.loads(next(s.evidence for s in view.steps if s.name == "compensate"))
    assert compensation["converged"] and compensation["pending"] == []
    assert "restarted replication east -> west" in compensation["actions"]
    assert "back in the last safe state" in result.stderr
    assert_replication_copies(t)
    with Keeper(t):
        assert guarded_write(t, "east") is None
    shown = show(path)
    assert shown["regions"]["east"]["deny_acls"] == 0 and shown["pending_recoveries"] == {}


def test_hung_owner_keeps_no_fence_once_it_answers_again(lab, domain):
    """Case 2: east hangs after its deny ACLs were applied (during the quiesce)."""
    # The fence proof waits one settle interval after the deny ACLs are read back: long enough here
    # to hang east in between (the quiesce of the old fixed-wait proof).
    path = domain(fence_settle_seconds=20)
    t = load_topology(path)
    seed(t)
    with Keeper(t):
        process = start_cli_failover(path, "--yes")
        try:
            wait_until(lambda: present_bindings(t, "east"), 90, "the fence ACLs on east")
            lab.fault("hang", "east")
            try:
                _, stderr = process.communicate(timeout=180)
            finally:
                lab.fault("resume", "east")
        finally:
            process.kill()
        assert process.returncode == 1
        assert "Traceback" not in stderr
        store = AuditStore.for_topology(t)
        run_id = store.runs(t.domain.name)[0].id
        # The CLI says the truth: the fence on east could not be verified gone, and how to finish.
        assert "NOT yet in the last safe state" in stderr and f"baton recover --run {run_id}" in stderr
        compensation = json.loads(next(s.evidence for s in store.run(run_id).steps if s.name == "compensate"))
        assert [p["part"] for p in compensation["pending"]] == ["acls on east", "authority"]
        # East answers again: the keeper finishes the pending parts by itself.
        wait_until(lambda: authority_of(t).state.value == "ACTIVE" and not present_bindings(t, "east"),
                   90, "the keeper to unfence east and make it ACTIVE")
        assert guarded_write(t, "east") is None
    assert engine_for(t).status("east", "west").state == "RUNNING"
    assert_replication_copies(t)
    shown = show(path)
    assert shown["regions"]["east"]["deny_acls"] == 0 and shown["pending_recoveries"] == {}
    recovered = [s for s in store.run(run_id).steps if s.name == "recover"]
    assert recovered and recovered[-1].status == "succeeded"


def test_owner_hung_while_fencing_gets_a_true_message_and_recover_finishes(lab, domain):
    """Case 3: east stops answering between approve-failover and the fence."""
    path = domain()
    t = load_topology(path)
    seed(t)
    process = start_cli_failover(path)
    try:
        run = wait_paused_at("failover", "approve-failover", config=path, process=process)
        lab.fault("hang", "east")
        try:
            resume(run, decision="approve", approver="alice")
            _, stderr = process.communicate(timeout=180)
            authority_while_hung = authority_of(t)
        finally:
            lab.fault("resume", "east")
    finally:
        process.kill()
    assert process.returncode == 1 and "Traceback" not in stderr
    run_id = AuditStore.for_topology(t).runs(t.domain.name)[0].id
    # The message states the authority as read back, and names the one command that gets out.
    assert "re-run as an unplanned failover" not in stderr
    assert authority_while_hung.describe().split(",")[0] in stderr
    assert f"baton recover --run {run_id}" in stderr

    result = baton("recover", "--run", run_id, "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "back in the last safe state" in result.stdout
    authority = authority_of(t)
    assert (authority.owner, authority.state.value) == ("east", "ACTIVE")
    assert present_bindings(t, "east") == []
    assert engine_for(t).status("east", "west").state == "RUNNING"
    # Idempotent: a second recovery changes nothing and says so.
    again = baton("recover", "--run", run_id, "--config", str(path), "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["actions"] == [
        "none: every part was already in its safe state"]
    assert authority_of(t).epoch == authority.epoch
    with Keeper(t):
        assert guarded_write(t, "east") is None


def test_crashed_run_has_one_way_out_and_unlock_never_strands_authority_fenced(domain):
    """Case 4: the CLI is killed at approve-switch of an unplanned run (east fenced, authority
    FENCED)."""
    path = domain()
    t = load_topology(path)
    seed(t)
    run_id = paused_at_switch_then_crash(path)
    assert authority_of(t).state.value == "FENCED"

    second = baton("failover", "--yes", "--config", str(path))
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert f"baton failover --resume {run_id}" in second.stderr
    assert "authority unlock" not in second.stderr

    unlocked = baton("authority", "unlock", "--run", run_id, "--config", str(path))
    assert unlocked.returncode == 0, unlocked.stderr
    authority = authority_of(t)
    assert (authority.owner, authority.state.value) == ("east", "ACTIVE")
    assert present_bindings(t, "east") == []
    assert engine_for(t).status("east", "west").state == "RUNNING"

    resumed = baton("failover", "--yes", "--resume", run_id, "--config", str(path))
    assert resumed.returncode == 2 and "Traceback" not in resumed.stderr
    assert f"run {run_id} is aborted" in resumed.stderr and "start a new run" in resumed.stderr
    assert authority.describe().split(",")[0] in resumed.stderr
    with Keeper(t):
        assert guarded_write(t, "east") is None


def test_guarded_producer_refuses_acl_denied_writes_with_write_refused(domain_topology):
    """Item 3: authority says east may write, but east's brokers deny the principal."""
    from baton.errors import WriteRefused
    from baton.kafka.fencing import fence, unfence

    t = domain_topology(lease_ttl=3.0)
    topic = t.domain.topics[0]
    with Keeper(t):
        producer = GuardedProducer(t, regions=["east"], block_seconds=10)
        try:
            producer.produce(topic, value=b"before")
            assert producer.flush(15) == 0
            fence(t, "east")
            try:
                outcomes: dict[str, int] = {}
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    try:
                        producer.produce(topic, value=b"while fenced")
                        outcomes["accepted"] = outcomes.get("accepted", 0) + 1
                    except WriteRefused as e:
                        outcomes[e.reason] = outcomes.get(e.reason, 0) + 1
                    producer.poll(0.2)
            finally:
                unfence(t, "east")
            # Every refusal is a WriteRefused naming the ACL (a raw KafkaException would fail the test).
            assert outcomes.get("acl denied", 0) > 0 and set(outcomes) <= {"accepted", "acl denied"}
            # Once unfenced, the same producer writes again (a fatal producer is replaced).
            errors: list = []
            wait_until(lambda: _try_write(producer, topic, errors), 30, "a write after unfencing")
        finally:
            producer.close()


def _try_write(producer, topic, errors) -> bool:
    from baton.errors import WriteRefused

    try:
        producer.produce(topic, value=b"after", on_delivery=lambda error, message: errors.append(error))
    except WriteRefused:
        return False
    producer.flush(10)
    return bool(errors) and errors[-1] is None


def test_config_check_connect_names_a_wrong_password_as_authentication_failure(topology):
    """Item 4: within its 5 s probe, a refused SASL login is named as such (not "brokers down")."""
    env = os.environ | {"BATON_REGIONS__WEST__ADMIN__PASSWORD": "wrong"}
    result = baton("config", "check", "--connect", "--timeout", "5", "--json", env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    probes = {(p["region"], p["identity"]): p["result"] for p in json.loads(result.stdout)["connect"]}
    assert probes[("west", "admin")] == "authentication failed"
    assert probes[("east", "admin")] == "ok"
    assert "refused the admin credentials" in result.stderr and "did not answer" not in result.stderr
    assert baton("config", "check", "--connect", "--timeout", "5").returncode == 0


def test_audit_database_not_writable_stops_the_run_and_resume_finishes_it(domain):
    """Case 5: the audit DB becomes immutable while paused at approve-switch (unplanned: the
    pause inside the fenced window); then approved."""
    import subprocess

    path = domain()
    t = load_topology(path)
    seed(t)
    # The database file and its write-ahead log immutable: every write fails ("disk I/O error").
    database = t.audit.database_url.removeprefix("sqlite:///")
    files = [database, database + "-wal"]
    process = start_unplanned(path)
    try:
        run = wait_paused_at("failover", "approve-failover", config=path, process=process)
        resume(run, decision="approve", approver="alice")
        run = wait_paused_at("failover", "approve-switch", timeout=180, config=path, process=process)
        subprocess.run(["chattr", "+i", *files], check=True)
        try:
            resume(run, decision="approve", approver="bob")
            _, stderr = process.communicate(timeout=120)
        finally:
            subprocess.run(["chattr", "-i", *files], check=True)
    finally:
        process.kill()
    assert process.returncode == 1 and "Traceback" not in stderr
    assert "the audit database is not writable" in stderr
    run_id = AuditStore.for_topology(t).runs(t.domain.name)[0].id
    assert f"then `baton failover --resume {run_id}`" in stderr
    # Stopped at a safe point: nothing half-done; the run still holds its lock, east stays fenced.
    store = AuditStore.for_topology(t)
    assert store.run(run_id).status == "running"
    assert authority_of(t).state.value == "FENCED" and present_bindings(t, "east") != []
    assert engine_for(t).status("east", "west").state == "RUNNING"

    result = baton("failover", "--yes", "--json", "--resume", run_id, "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["owner_after"] == "west"
    assert store.verify().ok


def test_audit_database_replaced_mid_run_is_detected(domain):
    """Case 5b: the SQLite file is replaced while the run is paused: the run notices."""
    path = domain()
    t = load_topology(path)
    seed(t)
    database = t.audit.database_url.removeprefix("sqlite:///")
    process = start_cli_failover(path)
    try:
        run = wait_paused_at("failover", "approve-failover", config=path, process=process)
        shutil.copy(database, database + ".saved")
        os.replace(database + ".saved", database)  # same content, another file: writes would go astray
        resume(run, decision="approve", approver="alice")
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 1 and "Traceback" not in stderr
    assert "disappeared or was replaced while in use" in stderr and "--resume" in stderr
    # It stopped before fencing anything.
    assert authority_of(t).state.value == "ACTIVE" and present_bindings(t, "east") == []


def test_gate_waits_out_a_prefect_server_outage_until_its_own_timeout(domain, tmp_path):
    """Case 6: the Prefect server goes away while the run is paused; the gate outlives the
    client's retry budget (cut to one retry here) and takes the answer once it is back."""
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from baton.lab.prefect_server import launch_prefect_server, start_prefect_server

    launched = launch_prefect_server()  # its migrations (~15 s) overlap the seeding
    try:
        path = domain(gate_timeout_seconds=300)
        t = load_topology(path)
        seed(t)
        wait_checkpointed(t)
        server = launched.wait()
    except BaseException:
        launched.server.stop()
        shutil.rmtree(launched.server.home, ignore_errors=True)
        raise
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    log = tmp_path / "cli.err"
    env = os.environ | {"BATON_CONFIG": str(path), "PREFECT_API_URL": server.url,
                        "PREFECT_CLIENT_MAX_RETRIES": "1"}
    with open(log, "w") as stderr:
        # Unplanned, so a second gate (approve-switch) is asked on the restarted server.
        process = subprocess.Popen([sys.executable, "-m", "baton", "failover", "--json", *UNPLANNED],
                                   stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
                                   start_new_session=True)
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.url}):
            wait_paused_at("failover", "approve-failover", config=path, process=process)
            os.killpg(server.process.pid, signal.SIGTERM)
            server.process.wait(30)
            wait_until(lambda: "the Prefect API failed" in log.read_text(), 120,
                       "the gate to notice the Prefect API is gone")
            wait_until(lambda: "still waiting" in log.read_text(), 60, "the gate to keep waiting")
            assert process.poll() is None, log.read_text()
            server = start_prefect_server(home=server.home, port=port)
            run = wait_paused_at("failover", "approve-failover", config=path, process=process)
            resume(run, decision="approve", approver="alice")
            run = wait_paused_at("failover", "approve-switch", timeout=180, config=path, process=process)
            resume(run, decision="approve", approver="bob")
            stdout, _ = process.communicate(timeout=180)
    finally:
        process.kill()
        server.stop()
        shutil.rmtree(server.home, ignore_errors=True)
    assert process.returncode == 0, log.read_text()[-3000:]
    assert json.loads(stdout)["owner_after"] == "west"
    view = AuditStore.for_topology(t).run(json.loads(stdout)["run_id"])
    assert [(a.gate, a.decision) for a in view.approvals] == [("approve-failover", "approved"),
                                                              ("approve-switch", "approved")]


def test_an_answer_after_the_run_was_recovered_is_refused_and_recorded(domain):
    """Case 6b: while paused, the run is given up (`baton recover`); a later approval changes nothing."""
    path = domain()
    t = load_topology(path)
    seed(t)
    process = start_cli_failover(path)
    try:
        run = wait_paused_at("failover", "approve-failover", config=path, process=process)
        run_id = AuditStore.for_topology(t).runs(t.domain.name)[0].id
        recovered = baton("recover", "--run", run_id, "--config", str(path))
        assert recovered.returncode == 0, recovered.stderr
        resume(run, decision="approve", approver="alice")
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 1 and "Traceback" not in stderr
    assert "recorded as refused and nothing was applied" in stderr
    view = AuditStore.for_topology(t).run(run_id)
    assert [(a.gate, a.decision, a.approver) for a in view.approvals] == [
        ("approve-failover", "refused", "alice")]
    assert "stop_primary_producers" not in [s.name for s in view.steps]
    authority = authority_of(t)
    assert (authority.epoch, authority.owner, authority.state.value) == (1, "east", "ACTIVE")
    assert present_bindings(t, "east") == []


def test_target_killed_at_the_last_gate_leaves_no_connector_acl_or_lock_behind(lab, domain):
    """Item 7: west is killed while the run pauses at approve-switch (unplanned: the last gate,
    inside the fenced window); then the switch is approved."""
    from baton.steps.recover import pending_recoveries

    path = domain()
    t = load_topology(path)
    seed(t)
    process = start_unplanned(path)
    try:
        run = wait_paused_at("failover", "approve-failover", config=path, process=process)
        resume(run, decision="approve", approver="alice")
        run = wait_paused_at("failover", "approve-switch", timeout=180, config=path, process=process)
        lab.fault("kill", "west")
        try:
            resume(run, decision="approve", approver="bob")
            _, stderr = process.communicate(timeout=300)
        finally:
            lab.fault("restart", "west")
    finally:
        process.kill()
    assert process.returncode == 1 and "Traceback" not in stderr
    print(stderr.splitlines()[-1])  # the operator's line, for the record
    store = AuditStore.for_topology(t)
    run_id = store.runs(t.domain.name)[0].id
    assert store.lock_holder(t.domain.name) is None and store.run(run_id).status == "failed"
    # Whatever compensation could not finish while west was down, recovery finishes now.
    with Keeper(t):
        wait_until(lambda: not pending_recoveries(store, t.domain.name), 240,
                   "the keeper to finish the pending recovery")
        result = baton("recover", "--run", run_id, "--config", str(path))
        assert result.returncode == 0 and "back in the last safe state" in result.stdout, result.stderr
        authority = authority_of(t)
        assert (authority.owner, authority.state.value) == ("east", "ACTIVE")
        assert present_bindings(t, "east") == [] and present_bindings(t, "west") == []
        status = engine_for(t).status("east", "west")
        assert status.state == "RUNNING" and all(c.running for c in status.components)
        assert engine_for(t).status("west", "east").state in ("STOPPED", "MISSING")
        assert guarded_write(t, "east") is None
    assert_replication_copies(t)
