"""Trust boundaries against real components: a real Prefect server (deployments served by a
real runner), `baton approvals serve` processes, the Slack stand-in, the lab's Kafka control
topics, SQLite and PostgreSQL audit databases.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from baton.approvals.requests import ActionId, GateRequest
from baton.audit import AuditStore
from baton.audit.store import default_actor
from baton.authority import State, change_authority, initialize_authority
from baton.settings import load_topology
from tests.conftest import wait_until
from tests.integration.runbook_support import make_domain, restore_lab, resume, wait_paused_at
from tests.integration.test_approvals import ALICE, BOB, INITIATOR, ONCALL, Service, state_of, updates_of
from tests.integration.test_runbooks import authority_of, latest_artifacts, seed, start_cli_failover
from tests.slack_standin import (
    BOT_TOKEN,
    CHANNEL,
    SIGNING_SECRET,
    SlackStandIn,
    click_payload,
    signed_request,
)

pytestmark = pytest.mark.integration

INJECTION = "west lags <!channel> see <https://evil.example/approve|Approve the switch here> & more"


@pytest.fixture
def slack():
    standin = SlackStandIn(groups={ONCALL: [BOB]}).start()
    yield standin
    standin.stop()


def with_approvals(path: Path, slack: SlackStandIn, prefect_api: str, *, lab: bool = True,
                   database_url: str | None = None, **approvals) -> Path:
    """Point a make_domain topology at the Slack stand-in; `lab=False` names the same brokers
    as `localhost:<port>`, so the topology is not the lab's (the drill's lab check fails)."""
    document = yaml.safe_load(path.read_text())
    document["approvals"] = {
        "slack_channel": CHANNEL, "slack_bot_token": BOT_TOKEN, "slack_signing_secret": SIGNING_SECRET,
        "slack_api_url": slack.api_url, "approvers": [ALICE, INITIATOR], "approver_groups": [ONCALL],
        "operators": {ALICE: "alice", INITIATOR: default_actor()}, "prefect_api_url": prefect_api,
    } | approvals
    if not lab:
        for region in document["regions"].values():
            region["bootstrap_servers"] = region["bootstrap_servers"].replace("127.0.0.1", "localhost")
    if database_url:
        document["audit"]["database_url"] = database_url
    path.write_text(yaml.safe_dump(document))
    return path


def start_probe(path: Path, operator: str = "carol") -> subprocess.Popen:
    env = os.environ | {"BATON_CONFIG": str(path)}
    return subprocess.Popen([sys.executable, "-m", "tests.integration.gate_probe", str(path), "--operator",
                             operator, "--poll", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)


def request_for(slack: SlackStandIn, run_id: str) -> dict:
    """The approval request message posted for this audit run."""
    def find():
        for message in slack.requests():
            values = [e["value"] for b in message["blocks"] for e in b.get("elements", []) if "value" in e]
            if values and GateRequest.decode(values[0]).run_id == run_id:
                return message
        return None

    return wait_until(find, 30, f"the approval request of {run_id}")


def newest_run(store: AuditStore, domain: str) -> str:
    return wait_until(lambda: (store.runs(domain) or [None])[0], 60, f"a run of {domain}").id


def probe_result(process: subprocess.Popen) -> list[dict]:
    _, stderr = process.communicate(timeout=90)
    return [json.loads(line[11:]) for line in stderr.splitlines() if line.startswith("GATE-PROBE ")]


# -- 1. approval policy is the topology's -------------------------------------------------------


@pytest.fixture
def served_failover(prefect_api, tmp_path):
    """The failover flow as a deployment served by a real Prefect runner (a UI/API run's path)."""
    name = f"tb-{uuid.uuid4().hex[:6]}"
    log = tmp_path / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "-c", f"from flows.failover import failover; failover.serve(name={name!r})"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)

    def deployed():
        assert process.poll() is None, log.read_text()
        return _read_deployment(f"failover/{name}")

    wait_until(deployed, 60, "the served failover deployment")
    yield f"failover/{name}"
    process.terminate()
    process.wait(20)


def _read_deployment(name: str):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    async def read():
        async with get_client() as client:
            try:
                return await client.read_deployment_by_name(name)
            except ObjectNotFound:
                return None

    return asyncio.run(read())


def _run_deployment(name: str, parameters: dict, timeout: float):
    from prefect.deployments import run_deployment

    return run_deployment(name, parameters=parameters, timeout=timeout)


def test_deployment_cannot_skip_gates_or_choose_its_starter(topology, tmp_path, prefect_api, slack,
                                                            served_failover):
    path = with_approvals(make_domain(topology, tmp_path, gate_timeout_seconds=25), slack, prefect_api,
                          lab=False, require_slack_for=["approve-switch"])
    t = load_topology(path)
    seed(t)
    store = AuditStore.for_topology(t)
    before = initialize_authority(t).authority
    try:
        # auto_approve from a deployment on a non-lab topology: refused before any step.
        run = _run_deployment(served_failover, {"config": str(path), "auto_approve": True,
                                                "operator": "intruder"}, timeout=180)
        assert run.state.type.value == "FAILED", run.state
        # Only the gate a planned run asks is named.
        assert "auto-approve is refused for approve-failover:" in run.state.message
        assert store.runs(t.domain.name) == []
        after = authority_of(t)
        assert (after.epoch, after.owner, after.state) == (before.epoch, before.owner, State.ACTIVE)

        # Without it: the typed operator is recorded as unverified, and a Prefect UI answer
        # (identity not verified either) is refused: the gate waits for Slack, then times out.
        run = _run_deployment(served_failover, {"config": str(path), "operator": "intruder"}, timeout=0)
        wait_paused_at("failover", "approve-failover", config=path)
        run_id = newest_run(store, t.domain.name)
        assert store.run(run_id).run.started_by == "unverified: intruder"
        assert store.run(run_id).run.trigger == "deployment"
        resume(str(run.id), decision="approve", approver="intruder")
        wait_until(lambda: state_of(str(run.id)) == ("PAUSED", "approve-failover-2"), 30,
                   "the gate to refuse the UI answer and pause again")
        wait_until(lambda: store.run(run_id).status == "failed", 90, "the gate to time out")
    finally:
        restore_lab(t)
    view = store.run(run_id)
    assert [(a.gate, a.decision, a.approver, a.channel) for a in view.approvals] == [
        ("approve-failover", "refused", "intruder", "prefect-ui"),
        ("approve-failover", "timed_out", "-", "timeout")]
    after = authority_of(t)
    assert (after.epoch, after.owner, after.state) == (before.epoch, before.owner, State.ACTIVE)


def test_cli_yes_on_a_non_lab_topology_is_a_usage_error(topology, tmp_path, prefect_api, slack):
    path = with_approvals(make_domain(topology, tmp_path), slack, prefect_api, lab=False)
    result = subprocess.run([sys.executable, "-m", "baton", "failover", "--yes", "--config", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "--yes: auto-approve is refused for approve-failover:" in " ".join(
        result.stderr.split())
    assert AuditStore.for_topology(load_topology(path)).runs() == []


# -- 2. the approval service checks every link ----------------------------------------------------


def test_service_refuses_cross_run_malformed_oversized_and_floods(topology, tmp_path, prefect_api, slack):
    first = with_approvals(make_domain(topology, tmp_path), slack, prefect_api)
    shared_db = load_topology(first).audit.database_url
    second = with_approvals(make_domain(topology, tmp_path), slack, prefect_api, database_url=shared_db)
    store = AuditStore.for_topology(load_topology(first))
    service = Service(first, tmp_path)
    p1, p2 = start_probe(first), start_probe(second)
    try:
        flow_1 = wait_paused_at("gate-probe", "approve-failover", config=first)
        flow_2 = wait_paused_at("gate-probe", "approve-failover", config=second)
        run_1 = newest_run(store, load_topology(first).domain.name)
        run_2 = newest_run(store, load_topology(second).domain.name)
        request_1, request_2 = request_for(slack, run_1), request_for(slack, run_2)

        # P1's run id with P2's flow run id, validly signed by an approver: refused, recorded.
        crossed = click_payload(request_1, ActionId.APPROVE, ALICE, "alice")
        forged = GateRequest(run_id=run_1, gate="approve-failover", flow_run_id=flow_2).encode()
        crossed["actions"][0]["value"] = forged
        assert service.click(crossed) == 200
        assert state_of(flow_1) == ("PAUSED", "approve-failover-1")
        assert state_of(flow_2) == ("PAUSED", "approve-failover-1")
        refused = store.run(run_1).approval_attempts[-1]
        assert refused.outcome == "refused" and refused.flow_run_id == flow_2
        assert refused.reason == (f"the button names flow run {flow_2}, but approve-failover of run {run_1} "
                                  f"is asked by flow run {flow_1}")
        assert store.run(run_1).approvals == [] and store.run(run_2).approvals == []

        # Wrong shapes, validly signed: 400 naming the field, never 500.
        good = click_payload(request_1, ActionId.APPROVE, ALICE, "alice")
        shapes = {"user": good | {"user": "U0APPROVER"},
                  "actions[0]": good | {"actions": ["baton.approve"]},
                  "state.values": good | {"state": {"values": []}},
                  "the payload": ["not", "an", "object"]}
        for field, payload in shapes.items():
            body, headers = signed_request(payload)
            response = httpx.post(f"{service.url}/slack/interactions", content=body, headers=headers)
            assert response.status_code == 400, (field, response.text)
            assert field in response.text

        # A 5 MB unsigned body: refused unread, nothing stored.
        rows = len(store.approval_attempts())
        big = httpx.post(f"{service.url}/slack/interactions", content=b"payload=" + b"x" * 5_000_000,
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert big.status_code == 413 and len(store.approval_attempts()) == rows

        # 15 unsigned clicks with a 20 KB user name: 10 stored (fields bounded), then one summary.
        flood = click_payload(request_1, ActionId.APPROVE, ALICE, "m" * 20_000)
        for _ in range(15):
            assert service.click(flood, secret="not-the-signing-secret") == 401
        stored = store.approval_attempts()[rows:]
        assert len(stored) == 11
        assert max(len(a.slack_user_name) for a in stored) <= 200
        assert sum("rate limit: more than 10 unverified requests" in a.reason for a in stored) == 1

        # The real buttons still work: each run resumes with its own click.
        assert service.click(click_payload(request_2, ActionId.APPROVE, ALICE, "alice")) == 200
        assert service.click(click_payload(request_1, ActionId.APPROVE, ALICE, "alice")) == 200
        results = probe_result(p1) + probe_result(p2)
    finally:
        p1.kill()
        p2.kill()
        logs = service.stop()
    assert sorted(r["run_id"] for r in results) == sorted([run_1, run_2])
    assert all(r["channel"] == "slack" for r in results)
    assert "Traceback" not in logs and "500 Internal" not in logs
    assert store.verify().ok


# -- 3. counted once across replicas ------------------------------------------------------------


def test_two_service_replicas_count_one_of_eight_identical_clicks(topology, tmp_path, prefect_api, slack,
                                                                  audit_url):
    path = with_approvals(make_domain(topology, tmp_path), slack, prefect_api, database_url=audit_url)
    t = load_topology(path)
    store = AuditStore.for_topology(t)
    replicas = [Service(path, tmp_path), Service(path, tmp_path)]
    rounds = 3  # each round a new flow run: warm replicas race harder than cold ones
    env = os.environ | {"BATON_CONFIG": str(path)}
    probe = subprocess.Popen([sys.executable, "-m", "tests.integration.gate_probe", str(path), "--operator",
                              "carol", "--poll", "1", "--rounds", str(rounds)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    lines = iter(probe.stderr.readline, "")
    results, statuses, runs = [], [], []
    try:
        for round_ in range(rounds):
            request = wait_until(lambda n=round_: slack.requests()[n:], 60, "the next round's request")[0]
            asked = GateRequest.decode(next(e["value"] for b in request["blocks"]
                                            for e in b.get("elements", []) if "value" in e))
            wait_until(lambda a=asked: state_of(a.flow_run_id)[0] == "PAUSED", 60, "the probe to pause")
            run_id = asked.run_id
            click = click_payload(request, ActionId.APPROVE, ALICE, "alice")
            go = threading.Barrier(8)

            def send(replica: Service, click=click, go=go):
                go.wait()
                statuses.append(replica.click(click))

            threads = [threading.Thread(target=send, args=(replicas[i % 2],)) for i in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            line = next(x for x in lines if x.startswith("GATE-PROBE "))
            results.append(json.loads(line[len("GATE-PROBE "):]))
            runs.append(run_id)
        probe.wait(60)
    finally:
        probe.kill()
        for replica in replicas:
            replica.stop()
    assert statuses == [200] * 8 * rounds
    assert [(r["run_id"], r["decision"]) for r in results] == [(run, "approved") for run in runs]
    for run_id in runs:  # each gate resumed once: one accepted click, seven refused
        attempts = store.run(run_id).approval_attempts
        assert sorted(a.outcome for a in attempts) == ["accepted"] + ["refused"] * 7
        assert [(a.decision, a.approver, a.channel) for a in store.run(run_id).approvals] == [
            ("approved", "alice", "slack")]
    assert store.verify().ok


# -- 4. everything echoed is escaped ------------------------------------------------------------


def test_injected_markup_is_shown_literally_in_slack_and_in_the_artifact(topology, tmp_path, prefect_api,
                                                                         slack):
    path = with_approvals(make_domain(topology, tmp_path), slack, prefect_api)
    t = load_topology(path)
    seed(t)
    service = Service(path, tmp_path)
    process = start_cli_failover(path, "--reason", INJECTION)
    try:
        wait_paused_at("failover", "approve-failover", config=path)
        request = wait_until(lambda: slack.requests(), 30, "the approval request")[0]
        reject = click_payload(request, ActionId.REJECT, ALICE, "alice", reason=INJECTION)
        assert service.click(reject) == 200
        _, stderr = process.communicate(timeout=180)
    finally:
        process.kill()
        service.stop()
        restore_lab(t)
    assert process.returncode == 1, stderr
    escaped = INJECTION.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    posted = json.dumps(request["blocks"])
    update = json.dumps(updates_of(slack, request)[-1]["blocks"])
    for text in (posted, update):  # the run's reason in the evidence; the rejection's in the outcome
        assert json.dumps(escaped)[1:-1] in text
        assert "<!channel>" not in text and "<https://evil.example" not in text
    artifact = latest_artifacts("failover-summary")[0]
    assert artifact.description == store_run_id(t)
    assert "&lt;!channel&gt;" in artifact.data
    assert "&lt;https://evil.example/approve\\|Approve" in artifact.data
    assert "<" not in artifact.data.replace("&lt;", "")  # no raw HTML, no autolink


def store_run_id(t) -> str:
    return AuditStore.for_topology(t).runs(t.domain.name)[0].id


# -- 5. an anchored chain -------------------------------------------------------------------------


def verify(path: Path) -> tuple[int, dict]:
    result = subprocess.run([sys.executable, "-m", "baton", "audit", "verify", "--json", "--config",
                             str(path)], capture_output=True, text=True, timeout=120)
    return result.returncode, json.loads(result.stdout)


def variant(path: Path, tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A copy of the topology whose audit DB is a copy of the original's (to tamper with)."""
    document = yaml.safe_load(path.read_text())
    source = Path(document["audit"]["database_url"].removeprefix("sqlite:///"))
    copy = tmp_path / f"{name}.db"
    with sqlite3.connect(source) as original, sqlite3.connect(copy) as target:  # WAL included
        original.backup(target)
    document["audit"]["database_url"] = f"sqlite:///{copy}"
    target = tmp_path / f"{name}.yaml"
    target.write_text(yaml.safe_dump(document))
    return target, copy


def recompute_chain(url: str, edit) -> None:
    """What someone with write access but no chain key can do: edit a row, recompute every hash."""
    from sqlmodel import Session, select

    from baton.audit import chain
    from baton.audit.db import get_engine
    from baton.audit.models import CHAINED, ChainHead

    with Session(get_engine(url)) as session:
        rows = sorted((r for table in CHAINED for r in session.exec(select(table))), key=lambda r: r.seq)
        edit(rows)
        previous = chain.GENESIS
        for row in rows:
            row.prev_hash = previous
            row.hash = chain.row_hash(row)
            previous = row.hash
            session.add(row)
        head = session.get(ChainHead, 1)
        head.seq, head.hash = rows[-1].seq, previous
        session.add(head)
        session.commit()


def test_audit_verify_detects_recomputed_chain_swapped_authority_emptied_locks_and_replaced_database(
        topology, tmp_path):
    path = make_domain(topology, tmp_path)
    t = load_topology(path)
    store = AuditStore.for_topology(t)
    assert store.chain_key is not None  # the lab's default key
    run = store.start_run(t.domain.name, "failover", started_by="alice", reason="planned")
    epoch = initialize_authority(t, store=None).authority.epoch
    fenced = change_authority(t, epoch, "east", State.FENCED, run_id=run.id, reason="fence")
    change_authority(t, fenced.authority.epoch, "west", State.ACTIVE, run_id=run.id, reason="switch")
    store.finish_run(run.id, "succeeded", actor="alice")
    running = store.start_run(t.domain.name, "failback", started_by="bob")  # holds the lock
    code, report = verify(path)
    assert code == 0, report
    assert report["signed"] and report["control_topics"]["problems"] == []
    assert sum("matches" in note for note in report["control_topics"]["notes"]) == 2

    # A recomputed chain (an edited reason, every hash redone): the head's signature fails.
    recomputed, copy = variant(path, tmp_path, "recomputed")

    def edit(rows):
        next(r for r in rows if r.__tablename__ == "runs").reason = "unplanned"

    recompute_chain(f"sqlite:///{copy}", edit)
    code, report = verify(recomputed)
    assert code == 1
    assert report["first_bad_row"]["table"] == "chain_head"
    assert "signature does not match the chain key" in report["first_bad_row"]["problem"]
    assert any("the chain was rewritten" in p for p in report["control_topics"]["problems"])

    # The authority row swapped to another owner: it disagrees with its history.
    swapped, copy = variant(path, tmp_path, "swapped")
    with sqlite3.connect(copy) as connection:
        connection.execute("UPDATE authority SET owner = 'east' WHERE domain = ?", (t.domain.name,))
    code, report = verify(swapped)
    assert code == 1 and report["first_bad_row"]["table"] == "authority"
    assert "owner 'east' vs 'west'" in report["first_bad_row"]["problem"]

    # The run locks emptied: a run that never ended no longer holds its domain's lock.
    unlocked, copy = variant(path, tmp_path, "unlocked")
    with sqlite3.connect(copy) as connection:
        connection.execute("DELETE FROM run_locks")
    code, report = verify(unlocked)
    assert code == 1 and report["first_bad_row"]["table"] == "run_locks"
    assert f"run {running.id} has not ended but does not hold the lock" in report["first_bad_row"]["problem"]

    # A replaced (fresh) database: both regions' control topics know epoch 3.
    replaced, copy = variant(path, tmp_path, "replaced")
    copy.unlink()
    code, report = verify(replaced)
    assert code == 1 and report["rows"] == 0
    problems = report["control_topics"]["problems"]
    for region in ("east", "west"):
        assert any(p.startswith(f"{region}'s control topic knows epoch 3") and "no authority record" in p
                   for p in problems), problems


# -- 6. schedules keep their timezone; analytics off where Baton starts Prefect -------------------


def test_deploy_keeps_the_drill_schedule_timezone(prefect_api):
    from flows.deploy import deploy

    registered = {row["deployment"]: row for row in deploy()}
    assert (registered["drill"]["cron"], registered["drill"]["timezone"]) == ("0 9 1 * *", "UTC")
    drill = _read_deployment("drill/drill")
    assert [(s.schedule.cron, s.schedule.timezone) for s in drill.schedules] == [("0 9 1 * *", "UTC")]


def test_the_cli_turns_prefect_analytics_off_for_its_temporary_server():
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_ANALYTICS_ENABLED"}
    result = subprocess.run([sys.executable, "-c", "import baton.cli; from prefect.settings import "
                             "get_current_settings as s; print(s().server.analytics_enabled)"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.stdout.strip() == "False", result.stderr
