"""Region evacuation as plain data: the runbook, which domains move, the batch barrier, results."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from baton.authority.record import Authority, State
from baton.errors import ApprovalRejected, StepFailed, UsageError
from baton.evacuation import (
    MOVED,
    RETURNED,
    UNSAFE,
    Batch,
    all_or_nothing_refusal,
    domain_result,
    select_domains,
)
from baton.lab.config import LabPorts, topology_document
from baton.settings import load_topologies
from runbooks import EVACUATE, FAILOVER
from runbooks.model import violations


def authority(domain: str, owner: str, state: State = State.ACTIVE, epoch: int = 3) -> Authority:
    return Authority(domain=domain, epoch=epoch, owner=owner, state=state,
                     changed_at=datetime.now(UTC), changed_by="test")


@pytest.fixture
def domains(tmp_path) -> list:
    """orders (initial_owner east) and payments (initial_owner west), plus billing (east)."""
    document = topology_document(LabPorts(29600))
    billing = yaml.safe_load(yaml.safe_dump(document["domains"][-1]))
    billing |= {"name": "billing", "initial_owner": "east", "topics": ["billing.events"],
                "topic_prefixes": ["billing."], "consumer_groups": ["billing-app"],
                "replication": {"groups_pattern": "billing-.*"}}
    document["domains"].append(billing)
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return load_topologies(path)


def test_evacuate_runbook_is_the_failover_with_a_hold_before_the_switch_and_is_valid():
    names = [s.name for s in EVACUATE.steps]
    assert names[:names.index("hold_for_batch")] + names[names.index("hold_for_batch") + 1:] == [
        s.name for s in FAILOVER.steps]
    assert names.index("hold_for_batch") == names.index("switch_authority") - 1
    assert violations(EVACUATE) == []
    # A planned evacuation asks one gate, before the fence (the batch approval).
    assert EVACUATE.gates_asked(unplanned=False) == ["approve-failover"]
    # The validator's rule holds for it: the batch gate moved inside the fenced window is refused.
    steps = list(EVACUATE.steps)
    gate = steps.pop(names.index("approve-failover"))
    steps.insert(names.index("hold_for_batch") - 1, gate)
    assert any("human gate inside the fenced window" in p
               for p in violations(replace(EVACUATE, steps=tuple(steps))))


def test_selection_follows_recorded_authority_not_initial_owner(domains):
    # payments was failed over to east earlier; billing is mid-hand-over; orders never recorded.
    recorded = {"payments": authority("payments", "east"),
                "billing": authority("billing", "east", State.FENCED)}
    selection = select_domains(domains, "east", lambda t: recorded.get(t.domain.name))
    assert selection.names == ["orders", "payments"]
    assert list(selection.skipped) == ["billing"] and "FENCED" in selection.skipped["billing"]
    moved = {"orders": authority("orders", "west")}
    west = select_domains(domains, "west", lambda t: moved.get(t.domain.name))
    assert west.names == ["orders", "payments"]  # payments: nothing recorded, initial_owner west


def test_selection_refuses_unknown_region_and_a_region_that_owns_nothing(domains):
    with pytest.raises(UsageError, match=r"'north' is not a region .*east, west"):
        select_domains(domains, "north", lambda t: None)
    owners = {"orders": "west", "payments": "west", "billing": "west"}
    with pytest.raises(UsageError) as caught:
        select_domains(domains, "east", lambda t: authority(t.domain.name, owners[t.domain.name]))
    message = str(caught.value)
    assert "no domain is owned (ACTIVE) by east" in message and "nothing was changed" in message
    for name in owners:
        assert f"{name}: epoch 3: west ACTIVE" in message


def test_cli_refuses_bad_region_with_exit_2_before_prefect(domains, tmp_path):
    from baton.cli import app

    result = CliRunner().invoke(app, ["evacuate", "--from", "north", "--config",
                                      str(tmp_path / "topology.yaml")])
    assert result.exit_code == 2
    assert "'north' is not a region" in result.output


def run_members(batch: Batch, script: dict) -> dict:
    """Each member runs its script (a list of points, or an exception to fail with) in a thread."""
    outcome: dict = {}

    def member(name):
        answers = []
        try:
            for point in script[name]:
                if isinstance(point, Exception):
                    raise point
                answers.append(batch.arrive(name, point, payload=f"{name}@{point}"))
            outcome[name] = answers
            batch.leave(name)
        except Exception as e:  # noqa: BLE001 - the test reads what each member saw
            outcome[name] = e
            batch.leave(name, str(e))

    threads = [threading.Thread(target=member, args=(n,)) for n in script]
    for t in threads:
        t.start()
    batch.serve()
    for t in threads:
        t.join(5)
    return outcome


def test_one_decision_per_point_goes_to_every_member():
    calls = []

    def decide(point, payloads, failed):
        calls.append((point, sorted(payloads.values()), dict(failed)))
        return {"decision": "approved", "point": point}

    batch = Batch(["a", "b", "c"], decide)
    outcome = run_members(batch, {m: ["approve-failover", "hold_for_batch"] for m in "abc"})
    assert [c[0] for c in calls] == ["approve-failover", "hold_for_batch"]  # asked once each
    assert calls[0][1] == ["a@approve-failover", "b@approve-failover", "c@approve-failover"]
    for m in "abc":
        assert [a["point"] for a in outcome[m]] == ["approve-failover", "hold_for_batch"]


def test_a_rejection_reaches_every_member_and_a_failed_member_does_not_block_the_others():
    def decide(point, payloads, failed):
        if point == "hold_for_batch":
            refusal = all_or_nothing_refusal(failed, "their switch")
            if refusal:
                raise StepFailed(refusal)
            return {"ok": sorted(payloads)}
        raise ApprovalRejected("gate approve-failover rejected by ops: not now")

    rejected = run_members(Batch(["a", "b"], decide), {m: ["approve-failover"] for m in "ab"})
    assert all(isinstance(rejected[m], ApprovalRejected) and "not now" in str(rejected[m]) for m in "ab")
    assert rejected["a"] is not rejected["b"]  # each thread raises its own exception

    # all-or-nothing: c failed before the hold, so a and b are refused there, naming c.
    batch = Batch(["a", "b", "c"], decide)
    outcome = run_members(batch, {"a": ["hold_for_batch"], "b": ["hold_for_batch"],
                                  "c": [StepFailed("translation refused for group g")]})
    assert batch.failed["c"] == "translation refused for group g" and set(batch.failed) == {"a", "b", "c"}
    for m in "ab":
        assert isinstance(outcome[m], StepFailed)
        assert ("all-or-nothing: 1 domain(s) failed before their switch: c (translation refused"
                in str(outcome[m]))


def test_a_coordinator_that_breaks_releases_every_waiting_member():
    def decide(point, payloads, failed):
        raise RuntimeError("coordinator bug")

    batch = Batch(["a", "b"], decide)
    with pytest.raises(RuntimeError):
        run_members(batch, {m: ["approve-failover"] for m in "ab"})


def test_each_domain_result_is_read_from_its_authority():
    moved = domain_result("orders", target="west", source="east", authority=authority("orders", "west"),
                          run_id="r1")
    back = domain_result("a", target="west", source="east", authority=authority("a", "east", epoch=5),
                         run_id="r2", error="StepFailed: all-or-nothing: ...")
    stuck = domain_result("b", target="west", source="east",
                          authority=authority("b", "east", State.FENCED), run_id="r3", error="boom")
    assert (moved["outcome"], moved["why"]) == (MOVED, None)
    assert (back["outcome"], back["why"]) == (RETURNED, "StepFailed: all-or-nothing: ...")
    assert stuck["outcome"] == UNSAFE and "baton recover --run r3" in stuck["why"]


def test_rendered_evacuate_markdown_is_committed():
    from runbooks.render import markdown

    path = Path(__file__).parents[2] / "runbooks" / "evacuate.md"
    assert path.read_text() == markdown(EVACUATE)


def test_all_or_nothing_refuses_the_batch_gate_without_asking_when_a_domain_already_failed():
    from flows.evacuate import Evacuation

    asked = []
    evacuation = Evacuation("evacuation-east-x", {"a": None, "b": None}, all_or_nothing=True,
                            auto_approve=True)
    evacuation._approve = lambda *args: asked.append(args)  # never reached
    with pytest.raises(ApprovalRejected, match=r"b \(lag refused\).*nobody was asked"):
        Evacuation._decide(evacuation, "approve-failover", {"a": None}, {"b": "lag refused"})
    hold = evacuation._decide("hold_for_batch", {"a": None, "b": None}, {})
    assert hold["domains_at_switch"] == ["a", "b"] and asked == []


def test_connect_requests_wait_out_a_rebalance_caused_by_another_domain():
    import httpx

    from baton.replication.mm2.connect import ConnectClient

    answers = [httpx.Response(500, json={"message": "Request cannot be completed because a rebalance is "
                                                    "expected"}),
               httpx.Response(409, json={"message": "Cannot complete request because of a conflicting "
                                                    "operation (e.g. worker rebalance)"}),
               httpx.Response(200, json={"name": "x"})]
    seen = []

    def handler(request):
        seen.append(request.url.path)
        return answers.pop(0)

    client = ConnectClient("http://connect.invalid")
    client._http = httpx.Client(base_url=client.url, transport=httpx.MockTransport(handler))
    assert client.config("x") == {"name": "x"} and len(seen) == 3


def test_members_at_different_points_are_decided_in_runbook_order():
    calls = []

    def decide(point, payloads, failed):
        calls.append((point, sorted(payloads)))
        return {}

    # b needs a conditional gate a does not: "approve-switch" sorts before it by name, not by order.
    batch = Batch(["a", "b"], decide, order=["approve-translation-resolutions", "approve-switch"])
    run_members(batch, {"a": ["approve-switch"], "b": ["approve-translation-resolutions", "approve-switch"]})
    assert calls == [("approve-translation-resolutions", ["b"]), ("approve-switch", ["a", "b"])]


def test_a_per_domain_decision_reaches_each_member_with_its_own_answer_or_error():
    from baton.evacuation import PerMember

    def decide(point, payloads, failed):
        return PerMember(a={"choices": {"a-g1": "checkpoint"}}, b=ApprovalRejected("b: no valid choice"))

    outcome = run_members(Batch(["a", "b"], decide), {m: ["approve-translation-resolutions"] for m in "ab"})
    assert outcome["a"] == [{"choices": {"a-g1": "checkpoint"}}]
    assert isinstance(outcome["b"], ApprovalRejected) and "no valid choice" in str(outcome["b"])


def test_cli_unplanned_evacuation_needs_a_reason(domains, tmp_path):
    from baton.cli import app

    result = CliRunner().invoke(app, ["evacuate", "--from", "east", "--unplanned", "--config",
                                      str(tmp_path / "topology.yaml")])
    assert result.exit_code == 2 and "--unplanned needs --reason" in result.output


def test_the_batch_request_lists_every_domain_in_slack_and_in_the_prefect_form():
    from baton.approvals.messages import evidence_lines
    from flows.gates import decision_form

    summary = {"runbook": "evacuate", "evacuation": "evacuation-east-1", "domain": "a, b",
               "gate": "approve-failover", "planned_change": "east -> west for 2 domain(s): a, b",
               "domains": ["a (run r1): lag: 0 records; records at risk: 0",
                           "b (run r2): lag: 3 records <script>"],
               "failed_domains": ["c: check_lag refused: replication down"]}
    lines = evidence_lines(summary)
    assert "*Evacuation*: evacuation-east-1" in lines
    assert "• a (run r1): lag: 0 records; records at risk: 0" in lines
    assert "• b (run r2): lag: 3 records &lt;script&gt;" in lines
    assert "• *failed*: c: check_lag refused: replication down" in lines
    form = decision_form(EVACUATE.step("approve-failover"), summary)
    description = form._description
    assert "one decision for every domain below" in description
    assert "- b \\(run r2\\): lag: 3 records &lt;script&gt;" in description
    assert "- failed: c: check\\_lag refused: replication down" in description


def test_a_batch_of_ten_domains_fits_slack_sections_without_losing_a_domain():
    from baton.approvals.messages import request_blocks
    from baton.approvals.requests import GateRequest

    domains = [f"d{i} (run r{i}): " + "lag: 12 records; readiness: ready; " * 12 for i in range(10)]
    blocks = request_blocks(GateRequest(run_id="r0", gate="approve-failover", flow_run_id="f",
                                        domain="d0", runbook="failover"),
                            {"gate": "approve-failover", "domains": domains}, "http://prefect")
    texts = [b["text"]["text"] for b in blocks if b["type"] == "section"]
    assert len(texts) > 1 and all(len(t) <= 3000 for t in texts)
    assert all(any(f"• d{i} (run r{i})" in t for t in texts) for i in range(10))


def test_the_batch_request_posted_to_slack_is_titled_for_the_evacuation_not_its_first_domain():
    from types import SimpleNamespace

    from slack_sdk import WebClient

    from baton.approvals.slack import SlackNotifier
    from baton.settings import ApprovalSettings
    from tests.slack_standin import BOT_TOKEN, CHANNEL, SlackStandIn

    standin = SlackStandIn().start()
    try:
        settings = ApprovalSettings(slack_channel=CHANNEL, slack_api_url=standin.api_url)
        notifier = SlackNotifier(settings, flow_run_id="f-1",
                                 client=WebClient(token=BOT_TOKEN, base_url=standin.api_url))
        lead = SimpleNamespace(run_id="r-a", domain="a", runbook="failover", log=lambda message: None)
        summary = {"runbook": "evacuate", "domain": "a, b", "gate": "approve-failover",
                   "domains": ["a (run r-a): lag: 0 records", "b (run r-b): lag: 0 records"]}
        notifier.post_request(lead, EVACUATE.step("approve-failover"), summary)
        (posted,) = standin.requests()
        assert posted["blocks"][0]["text"]["text"] == "Approval needed: approve-failover (evacuate of a, b)"
        assert "evacuate of a, b" in posted["text"]
    finally:
        standin.stop()


def test_connect_requests_wait_out_a_stale_configuration_refusal():
    """Connect answers a change that arrives while another's rebalance is pending with 409 "stale
    configuration" (RebalanceNeededException): retried like "rebalance", so changes sent together
    (an evacuation's domains in one round) all go through."""
    import httpx

    from baton.replication.mm2.connect import ConnectClient

    answers = [httpx.Response(409, json={"message": "Cannot complete request momentarily due to stale "
                                                    "configuration (typically caused by a concurrent "
                                                    "config change)"}),
               httpx.Response(202)]
    seen = []

    def handler(request):
        seen.append((request.method, request.url.path))
        return answers.pop(0)

    client = ConnectClient("http://connect.invalid")
    client._http = httpx.Client(base_url=client.url, transport=httpx.MockTransport(handler))
    client.resume("mm2-orders-west-east-source")
    assert seen == [("PUT", "/connectors/mm2-orders-west-east-source/resume")] * 2
