"""The failover drill on the real lab with a real Prefect server, judged by its own checker.

Each drill uses a private domain (topic with 3 partitions, two groups, own audit DB), a 3 s lease
and 1 s quiesce, and leaves the shared lab as it found it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from baton.audit import AuditStore
from baton.settings import load_topology
from tests.integration.runbook_support import make_domain, restore_lab

pytestmark = pytest.mark.integration

CHROMIUM = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def domain(topology, tmp_path, prefect_api):
    created = []

    def create():
        path = make_domain(topology, tmp_path)
        created.append(path)
        return path

    yield create
    for path in created:
        restore_lab(load_topology(path))


def baton(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "baton", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_planned_drill_loses_and_repeats_nothing_and_reports_it(domain, tmp_path):
    from flows.drill import drill

    path = domain()
    card = drill(config=str(path), auto_approve=True, rate=60, settle_seconds=2, report_dir=str(tmp_path))

    assert card["outcome"] == "passed", [o for o in card["objectives"] if not o["passed"]]
    work = card["workload"]
    assert work["acked"] > 100 and set(work["acked_by_region"]) == {"east", "west"}
    for group, found in card["consumers"].items():
        assert found["missing"] == 0, (group, found["missing_ids"])
        assert found["duplicates"] == 0, (group, found["duplicate_ids"])
        assert found["distinct"] == work["acked"]
    assert card["second_writer_violations"] == []
    for leg, (before, after) in (("failover", ("east", "west")), ("failback", ("west", "east"))):
        assert card[leg]["producers_switched_cleanly"] is True
        assert (card[leg]["owner_before"], card[leg]["owner_after"]) == (before, after)
        assert card[leg]["rto_seconds"] > 0 and card[leg]["write_gap_seconds"] > 0
        assert all(a["channel"] == "cli" for a in card[leg]["approvals"])
        # The outage as producers saw it, beside its automated part: no gate waited inside it.
        assert card[leg]["write_outage_seconds"] == card[leg]["write_gap_seconds"]
        assert card[leg]["gate_wait_in_fenced_window_seconds"] == 0
        assert card[leg]["automated_outage_seconds"] == card[leg]["write_gap_seconds"]
    # every group really read in both regions (it followed authority and came back)
    for group in card["workload"]["groups"]:
        assert {"east", "west"} <= {j["region"] for j in group["regions_joined"]}
    assert card["lag_before_failover"]["source"] == "check_lag of the failover run"
    assert card["approvals"] == {"auto_approve": True, "lab": True, "note": card["approvals"]["note"]}
    # stored in the audit DB with the failover run
    store = AuditStore.for_topology(load_topology(path))
    reports = store.run(card["runs"]["failover"]).drill_reports
    assert [r.outcome for r in reports] == ["passed"]

    # The HTML report: rendered by a real browser, with the scorecard and the timeline chart.
    result = baton("report", card["runs"]["failback"], "--format", "html", "--config", str(path))
    assert result.returncode == 0, result.stderr
    page = tmp_path / "report.html"
    page.write_text(result.stdout)
    rendered = subprocess.run([*CHROMIUM, f"--user-data-dir={tmp_path / 'chromium'}", "--dump-dom",
                               page.as_uri()], capture_output=True, text=True, timeout=90)
    dom = rendered.stdout
    assert 'id="scorecard"' in dom and "producers switched cleanly" in dom, rendered.stderr[-2000:]
    assert 'id="timeline"' in dom and 'class="rate" data-region="east"' in dom
    assert 'class="rate" data-region="west"' in dom and 'class="authority"' in dom
    assert dom.count('class="gate"') == 2  # one decision per planned leg, before its fence
    assert 'id="outcome">passed<' in dom
    # self-contained: nothing loaded from elsewhere
    assert "<script" not in result.stdout and " src=" not in result.stdout and "<link" not in result.stdout


def test_unplanned_drill_loses_what_it_predicted_and_the_policy_accounts_for_every_record(domain):
    from flows.drill import drill

    path = domain()
    card = drill(config=str(path), unplanned=True, auto_approve=True, divergent_policy="quarantine",
                 rate=60, settle_seconds=2)

    lost, predicted = card["divergent"]["lost"]["count"], card["prediction"]["records"]
    assert lost > 0, "the drill must build a divergent tail (replication stopped before the kill)"
    assert lost == predicted
    assert card["failover"]["runbook_divergent_tail"] == lost  # the failback found exactly those
    assert card["divergent"]["accounted"]["by_fate"] == {"quarantined": lost}
    assert card["second_writer_violations"] == []
    assert card["failover"]["trigger"]["kind"] == "unplanned"
    assert card["failover"]["producers_switched_cleanly"] and card["failback"]["producers_switched_cleanly"]
    passed = {o["objective"]: o["passed"] for o in card["objectives"]}
    assert passed["records lost == predicted at risk"]
    assert passed["divergent records accounted for by the policy"]
    # The runbook's own statement (the watch's newest sample) agrees with what was lost.
    assert card["workload"]["watch_started_by_drill"] is True
    stated = card["failover"]["runbook_data_at_risk_records"]
    assert passed["runbook's at-risk statement (watch sample) vs records lost"], (stated, lost)


def test_drill_cli_refuses_bad_input_with_usage_errors(domain, tmp_path):
    assert baton("drill", "--unplanned").returncode == 2  # kills a region: lab only
    assert baton("drill", "--lab", "--policy", "keep").returncode == 2
    assert baton("drill", "--lab", "--rate", "0").returncode == 2
    path = domain()
    missing = baton("report", "failover-nope", "--format", "html", "--config", str(path))
    assert missing.returncode == 2 and "failover-nope" in missing.stderr
    assert baton("report", "x", "--format", "pdf", "--config", str(path)).returncode == 2


def test_a_drill_on_a_domain_a_crashed_run_still_locks_is_refused_before_any_workload(domain):
    from baton.authority import authority_store
    from baton.errors import RunLocked
    from flows.drill import drill

    path = domain()
    topology = load_topology(path)
    name = topology.domain.name
    audit = AuditStore.for_topology(topology)
    store = authority_store(topology, audit)

    def authority():
        current = store.current(name)
        return current and (current.owner, current.state, current.epoch)

    before = authority()
    crashed = audit.start_run(name, "failover", reason="a run whose process died after its switch")
    try:
        with pytest.raises(RunLocked) as refused:
            drill(config=str(path), auto_approve=True, settle_seconds=0)
        message = str(refused.value)
        assert f"`baton failover --resume {crashed.id}`" in message and "changed nothing" in message
        assert [r.id for r in audit.runs(name)] == [crashed.id]  # no drill run was opened
        assert authority() == before
    finally:
        audit.finish_run(crashed.id, "aborted", detail="test: the crashed run's stand-in")
