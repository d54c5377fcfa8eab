"""Region evacuation on the lab: every domain east owns moves to west as one approved batch, the
domains west owns stay; a domain that fails is returned to safety alone, or takes every domain
back with it under all-or-nothing.

The evacuated domains are throwaway domains with their own topics (`evac<hex><letter>.events`)
and their own MM2 connectors (not riding on orders'), deleted at the end so the shared lab is
left as it was. `orders` is left out of the file: it must stay on east for the other tests.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import uuid

import pytest
import yaml
from confluent_kafka import KafkaException

from baton.audit import AuditStore
from baton.authority import authority_store
from baton.errors import StepFailed
from baton.kafka.admin import admin_client, ensure_acls, ensure_topics
from baton.kafka.fencing import unfence
from baton.replication import engine_for
from baton.settings import load_topologies
from tests.conftest import wait_until
from tests.integration.runbook_support import commit, lab_domain, produce, wait_mirrored
from tests.integration.test_drill import CHROMIUM

pytestmark = pytest.mark.integration


def authority_of(t):
    return authority_store(t, AuditStore.for_topology(t)).current(t.domain.name)


def app_acls(prefix: str) -> list:
    """What the lab grants orders' app and consumer on orders, for the names starting `prefix`."""
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    from baton.lab import config as lab

    allow, prefixed = AclPermissionType.ALLOW, ResourcePatternType.PREFIXED
    app, consumer = f"User:{lab.PRODUCER_USER}", f"User:{lab.CONSUMER_USER}"
    bindings = [AclBinding(resource, prefix, prefixed, app, "*", operation, allow)
                for resource in (ResourceType.TOPIC, ResourceType.TRANSACTIONAL_ID)
                for operation in (AclOperation.WRITE, AclOperation.DESCRIBE)]
    bindings.append(AclBinding(ResourceType.GROUP, prefix, prefixed, consumer, "*", AclOperation.READ, allow))
    bindings += [AclBinding(ResourceType.TOPIC, name, prefixed, consumer, "*", operation, allow)
                 for name in (prefix, f"east.{prefix}", f"west.{prefix}")
                 for operation in (AclOperation.READ, AclOperation.DESCRIBE)]
    return bindings


def drop_acls(admin, bindings: list) -> None:
    from confluent_kafka.admin import AclBindingFilter

    filters = [AclBindingFilter(b.restype, b.name, b.resource_pattern_type, b.principal, b.host,
                                b.operation, b.permission_type) for b in bindings]
    for future in admin.delete_acls(filters).values():
        future.result()


def east_domains_file(lab, workdir, n: int, partitions: int = 3, tag: str = "evac",
                      **thresholds) -> tuple[str, list, str]:
    """A topology file of payments (owned by west) plus `n` fresh east-owned domains, each with its
    own topic (both regions), groups, ACLs for the lab's app principals and connectors east -> west
    (started, concurrently). (path, the new domains' topologies, their common name prefix)."""
    from concurrent.futures import ThreadPoolExecutor

    prefix = f"{tag}{uuid.uuid4().hex[:6]}"
    document = yaml.safe_load(lab.topology_file.read_text())
    payments = next(d for d in document["domains"] if d["name"] == "payments")
    names = [f"{prefix}{chr(ord('a') + i)}" for i in range(n)]
    document["domains"] = [payments] + [
        {"name": name, "topics": [f"{name}.events"], "topic_prefixes": [f"{name}."],
         "consumer_groups": [f"{name}-g1", f"{name}-g2"], "initial_owner": "east",
         "replication": {"groups_pattern": f"{name}-.*"}} for name in names]
    document["default_domain"] = "payments"
    document["thresholds"] |= thresholds
    path = workdir / f"{prefix}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    domains = [t for t in load_topologies(path) if t.domain.name in names]
    for region in domains[0].regions.values():
        ensure_acls(admin_client(region), app_acls(prefix))
        ensure_topics(admin_client(region), {t.domain.topics[0]: partitions for t in domains})
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda t: engine_for(t).start("east", "west", wait_seconds=120), domains))
    return str(path), domains, prefix


def remove_domains(domains: list, prefixes: list[str]) -> None:
    """The lab as it was: no fence, no connector of these domains, no ACL granted for them."""
    for t in domains:
        for region in t.regions:
            unfence(t, region)
        engine = engine_for(t)
        for source, target in (("east", "west"), ("west", "east")):
            for name in engine.connector_names(source, target):
                if engine.connect.status(name) is not None:
                    engine.connect.delete(name)
    if domains:
        # Their topics and mirrors too: a region's restart loads every partition it holds. Their
        # connectors are gone, so no other domain's MM2 task is assigned them.
        topics = [t.domain.topics[0] for t in domains]
        for region in domains[0].regions.values():
            admin = admin_client(region)
            for prefix in prefixes:
                drop_acls(admin, app_acls(prefix))
            names = topics + [f"{alias}.{topic}" for alias in domains[0].regions for topic in topics]
            for future in admin.delete_topics(names, operation_timeout=30, request_timeout=30).values():
                with contextlib.suppress(KafkaException):  # not on this region
                    future.result()


@pytest.fixture
def evac_file(lab, prefect_api, tmp_path):
    """Factory: east_domains_file(n), removed at the end."""
    made: list = []
    prefixes: list[str] = []

    def create(n: int, **thresholds) -> tuple[str, list]:
        path, domains, prefix = east_domains_file(lab, tmp_path, n, **thresholds)
        made.extend(domains)
        prefixes.append(prefix)
        return path, domains

    yield create
    remove_domains(made, prefixes)


def runs_of(t) -> list:
    audit = AuditStore.for_topology(t)
    return [audit.run(r.id) for r in audit.runs(t.domain.name, limit=5)]


def test_evacuation_drill_moves_every_east_owned_domain_and_back_losing_nothing(lab, evac_file, tmp_path):
    """`baton drill --evacuate`'s flow: evacuate east under a workload per domain, return the moved
    domains as a second evacuation; the drill's checker per domain, one timeline lane per domain."""
    from flows.drill import evacuation_drill

    config, domains = evac_file(2)
    names = sorted(t.domain.name for t in domains)
    payments = lab_domain(lab, "payments")
    payments_before = authority_of(payments)
    assert (payments_before.owner, payments_before.state.value) == ("west", "ACTIVE")

    card = evacuation_drill(config=config, from_region="east", auto_approve=True, rate=30,
                            settle_seconds=1, report_dir=str(tmp_path))

    assert card["error"] is None and sorted(card["domains"]) == names
    for leg in ("failover", "failback"):  # east -> west for both, then both back, as batches
        results = sorted((r["domain"], r["outcome"]) for r in card["results"][leg])
        assert results == [(n, "moved") for n in names]
    for t in domains:
        domain = card["domains"][t.domain.name]
        # The drill's independent checker, per domain: nothing missing, repeated or written twice.
        assert domain["outcome"] == "passed", [o for o in domain["objectives"] if not o["passed"]]
        work = domain["workload"]
        assert work["acked"] > 30 and set(work["acked_by_region"]) == {"east", "west"}
        for group, found in domain["consumers"].items():
            assert (found["missing"], found["duplicates"]) == (0, 0), (t.domain.name, group)
            assert found["distinct"] == domain["workload"]["acked"]
        assert domain["second_writer_violations"] == []
        assert (domain["failover"]["owner_before"], domain["failover"]["owner_after"]) == ("east", "west")
        assert (domain["failback"]["owner_before"], domain["failback"]["owner_after"]) == ("west", "east")
        after = authority_of(t)
        assert (after.owner, after.state.value, after.epoch) == ("east", "ACTIVE", 5)  # 1 + 2 + 2
        # The old owner is protected again after each hand-over: this domain's own flow RUNNING.
        assert engine_for(t).status("east", "west").state == "RUNNING"
    # payments, owned by west, was not part of either batch: same owner, same epoch, flow RUNNING.
    payments_after = authority_of(payments)
    assert (payments_after.owner, payments_after.epoch) == ("west", payments_before.epoch)
    assert engine_for(payments).status("west", "east").state == "RUNNING"
    # One decision for the batch, recorded on every member run, each run knowing its batch.
    evacuation = card["evacuations"]["failover"]
    views = [next(v for v in runs_of(t) if v.run.id == card["domains"][t.domain.name]["runs"]["failover"])
             for t in domains]
    batches = [json.loads(next(s.evidence for s in v.steps if s.name == "evacuation_batch")) for v in views]
    assert {b["evacuation"] for b in batches} == {evacuation}
    assert batches[0]["members"] == {t.domain.name: v.run.id for t, v in zip(domains, views, strict=True)}
    approvals = [[(a.gate, a.decision, a.approver, a.channel) for a in v.approvals] for v in views]
    assert approvals[0] == approvals[1] and len(approvals[0]) == 1
    assert approvals[0][0][:2] == ("approve-failover", "approved")
    comments = [v.approvals[0].comment for v in views]
    assert sum(f"batch approval of evacuation {evacuation}" in c for c in comments) == 1  # the other decided
    assert all(v.status == "succeeded" and v.run.runbook == "failover" for v in views)
    # The HTML report, rendered by a browser: one timeline lane per domain, each with writes in both regions.
    page = tmp_path / f"evacuation-drill-{evacuation}.html"
    assert card["report_path"] == str(page)
    rendered = subprocess.run([*CHROMIUM, f"--user-data-dir={tmp_path / 'chromium'}", "--dump-dom",
                               page.as_uri()], capture_output=True, text=True, timeout=90)
    dom = rendered.stdout
    assert 'id="outcome">passed<' in dom, rendered.stderr[-2000:]
    assert dom.count('class="lane"') == 2
    for name in names:
        lane = dom[dom.index(f'data-domain="{name}"'):]
        lane = lane[:lane.index("</svg>")]
        assert 'class="rate" data-region="east"' in lane and 'class="rate" data-region="west"' in lane
        assert lane.count('class="gate"') == 2  # one batch decision per evacuation, before its fence


def test_a_failing_domain_returns_to_safety_alone_or_takes_the_batch_back_with_all_or_nothing(
        lab, evac_file):
    from confluent_kafka import Consumer

    from flows.evacuate import evacuate

    config, (healthy, failing) = evac_file(2)
    for t in (healthy, failing):
        topic = t.domain.topics[0]
        produce(t, "east", topic, 30, 3, "seed")
        for group in t.domain.consumer_groups:
            commit(t, "east", group, topic, {0: 2, 1: 4, 2: 6})
    # A group of `failing` keeps consuming on east: it cannot be translated exactly.
    group = failing.domain.consumer_groups[1]
    consumer = Consumer(failing.regions["east"].client_config("admin")
                        | {"group.id": group, "enable.auto.commit": False, "session.timeout.ms": 45000})
    consumer.subscribe([failing.domain.topics[0]])
    try:
        wait_until(lambda: consumer.poll(0.2) is not None or consumer.assignment(), 60,
                   "the consumer to join its group on east")
        with pytest.raises(StepFailed) as all_or_nothing:
            evacuate(from_region="east", config=config, auto_approve=True, all_or_nothing=True)
        after_all = {t.domain.name: authority_of(t) for t in (healthy, failing)}
        with pytest.raises(StepFailed) as partial:
            evacuate(from_region="east", config=config, auto_approve=True)
        consumer.poll(0.1)
    finally:
        consumer.close()

    # all-or-nothing: neither switched; both ACTIVE on east again (each compensated, new epoch).
    assert "0 of 2 domain(s) moved" in str(all_or_nothing.value)
    assert {(a.owner, a.state.value) for a in after_all.values()} == {("east", "ACTIVE")}
    healthy_run = runs_of(healthy)[1]  # the all-or-nothing run (newest first)
    hold = next(s for s in healthy_run.steps if s.name == "hold_for_batch")
    assert hold.status == "failed" and f"{failing.domain.name} (" in hold.error
    assert "switch_authority" not in [s.name for s in healthy_run.steps]
    # without it: the healthy domain moved, the failing one returned to safety, naming why.
    message = str(partial.value)
    assert "1 of 2 domain(s) moved" in message
    assert f"{healthy.domain.name}: moved" in message
    assert f"{failing.domain.name}: returned to safety" in message and group in message
    assert "switch condition failed: every group translated exactly" in message
    assert (authority_of(healthy).owner, authority_of(healthy).state.value) == ("west", "ACTIVE")
    assert (authority_of(failing).owner, authority_of(failing).state.value) == ("east", "ACTIVE")


def test_unplanned_evacuation_of_a_dead_region_asks_each_batch_gate_once_with_every_domains_risk(
        lab, evac_file):
    from baton.kafka.admin import check_reachable
    from flows.evacuate import evacuate

    config, domains = evac_file(2, lease_ttl_seconds=3)
    for t in domains:
        topic = t.domain.topics[0]
        produce(t, "east", topic, 30, 3, "seed")
        for group in t.domain.consumer_groups:
            commit(t, "east", group, topic, {0: 2, 1: 4, 2: 6})
        wait_mirrored(t, topic, 30)
        # The link fails first (as in the unplanned drill): Connect would otherwise take ~45 s to
        # stop tasks polling a dead cluster at the switch, for one domain as for several.
        engine_for(t).stop("east", "west")
    lab.fault("kill", "east")
    try:
        outcome = evacuate(from_region="east", config=config, auto_approve=True, unplanned=True,
                           reason="east killed by the test")
    finally:
        lab.fault("restart", "east")
        check_reachable("east", domains[0].regions["east"], timeout=60)

    assert outcome["all_moved"] and sorted(d["domain"] for d in outcome["domains"]) == sorted(
        t.domain.name for t in domains)
    views = [runs_of(t)[0] for t in domains]
    for t, view in zip(domains, views, strict=True):
        assert (authority_of(t).owner, authority_of(t).state.value) == ("west", "ACTIVE")
        assert view.run.planned is False and view.status == "succeeded"
        batch_gates = [(a.gate, a.decision) for a in view.approvals
                       if a.gate != "approve-translation-resolutions"]
        assert batch_gates == [("approve-failover", "approved"), ("approve-switch", "approved")]
    # approve-switch was asked once for both, its evidence listing each domain's data at risk.
    shown = [json.loads(next(s.evidence for s in v.steps if s.name == "approve-switch"))["batch"]
             for v in views]
    assert shown[0] == shown[1] and shown[0]["evacuation"] == outcome["evacuation"]
    for t in domains:
        line = next(line for line in shown[0]["shown"]["domains"] if line.startswith(t.domain.name))
        assert "records at risk:" in line and "translations:" in line
    comments = [a.comment for v in views for a in v.approvals if a.gate == "approve-switch"]
    assert sum(f"batch approval of evacuation {outcome['evacuation']}" in c for c in comments) == 1
    # Each member's opening line reaches the evacuation's own flow run log (the members open in
    # pool threads; without the flow's context they logged to a temporary local server).
    wanted = {f"[{t.domain.name}] run {v.run.id}: failover of {t.domain.name} from east to west"
              for t, v in zip(domains, views, strict=True)}
    wait_until(lambda: wanted <= set(evacuation_log(outcome["evacuation"])[0]), 30,
               "the members' opening lines in the evacuation's flow run log")
    # One flow run holds every member's steps: each task run names its domain.
    steps = {f"{step} [{t.domain.name}]" for t in domains
             for step in ("stop_primary_producers", "translate_consumer_offsets", "switch_authority")}
    wait_until(lambda: steps <= set(evacuation_log(outcome["evacuation"])[1]), 30,
               "each domain's steps as task runs of the evacuation's flow run")


def evacuation_log(evacuation_id: str) -> tuple[list[str], list[str]]:
    """The log lines and task run names of the `evacuate` flow run that ran `evacuation_id`,
    from the Prefect API."""
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    from tests.integration.test_deployments import read

    async def lines(client):
        runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["evacuate"])),
                                           sort=FlowRunSort.START_TIME_DESC, limit=5)
        for run in runs:
            logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
            if any(log.message.startswith(f"{evacuation_id}: evacuating") for log in logs):
                tasks = await client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
                return [log.message for log in logs], [task.name for task in tasks]
        return [], []

    return read(lines)


def test_a_domain_whose_groups_never_committed_fails_over_and_back(evac_file):
    """A fresh domain: none of its groups has a position anywhere. The failover carries none,
    applies none and moves authority (librdkafka refuses to describe zero groups; the run used to
    fail in translate_consumer_offsets there)."""
    from flows.failover import failover

    path, (t,) = evac_file(1)
    topic = t.domain.topics[0]
    produce(t, "east", topic, 12, 3, "fresh")
    wait_mirrored(t, topic, 12, timeout=120)
    over = failover(config=path, domain=t.domain.name, auto_approve=True)
    evidence = {s.name: json.loads(s.evidence) for s in AuditStore.for_topology(t).run(over["run_id"]).steps}
    assert over["status"] == "succeeded" and evidence["translate_consumer_offsets"]["applied"] == []
    assert (authority_of(t).owner, authority_of(t).state.value) == ("west", "ACTIVE")
    back = failover(config=path, domain=t.domain.name, auto_approve=True)
    assert back["status"] == "succeeded"
    assert (authority_of(t).owner, authority_of(t).state.value) == ("east", "ACTIVE")
