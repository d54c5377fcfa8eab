"""Drill report rendering on a crafted scorecard: Markdown rows and a self-contained HTML page."""

from __future__ import annotations

from baton.drill.report import summary_rows, to_html, to_markdown


def card() -> dict:
    leg = {"run_id": "failover-1", "status": "succeeded", "owner_before": "east", "owner_after": "west",
           "trigger": {"kind": "planned", "by": "ops", "reason": "drill", "at": 100.0},
           "rto_seconds": 8.2, "gate_wait_seconds": 0.01, "write_gap_seconds": 7.3,
           "producers_switched_cleanly": True, "second_writer_violations": 0, "rpo_records": 0,
           "consumers": {"billing": {"missing": 0, "duplicates": 2}},
           "steps": [{"name": "approve-switch", "gate": True, "seconds": 0.01, "started_at": 103.0,
                      "ended_at": 103.5}]}
    return {"outcome": "failed", "passed": False, "variant": "planned", "domain": "orders",
            "divergent_policy": "quarantine", "started_at": 100.0, "ended_at": 130.0, "error": None,
            "runs": {"failover": "failover-1", "failback": None},
            "approvals": {"auto_approve": True, "lab": True, "note": "lab <only>"},
            "workload": {"acked": 10, "rate": 50}, "lag_before_failover": {"records": 1, "seconds": 0.1},
            "failover": leg, "failback": None, "consumers": {"billing": {"missing": 0, "duplicates": 2}},
            "objectives": [{"objective": "billing duplicates", "target": "<= 0", "actual": 2,
                            "passed": False}],
            "timeline": {"rates": {"east": [[100.0, 50], [101.0, 0]], "west": [[110.0, 50]]},
                         "lag": [{"at": 101.0, "records": 3}],
                         "authority": [{"epoch": 2, "owner": "east", "state": "FENCED", "at": 102.0}],
                         "events": [{"at": 101.5, "kind": "fault", "detail": "east killed"}]}}


def test_rows_and_markdown_show_each_leg_and_the_failed_objective():
    rows = dict((r[0], r[1:]) for r in summary_rows(card()))
    assert rows["RTO (gates excluded)"] == ("8.20 s", "-")
    assert rows["billing: missing / duplicates"] == ("0 / 2", "-")
    markdown = to_markdown(card())
    assert "| billing duplicates | <= 0 | 2 | FAIL |" in markdown


def test_html_is_one_page_with_scorecard_and_timeline_and_escapes_text():
    page = to_html(card())
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and " src=" not in page
    assert 'id="scorecard"' in page and 'id="timeline"' in page
    assert page.count('class="rate"') == 2 and 'class="lag"' in page and 'class="gate"' in page
    assert 'class="authority"' in page and 'class="fault"' in page
    assert "lab &lt;only&gt;" in page and "lab <only>" not in page


def test_evacuation_page_has_one_lane_per_domain_on_one_time_axis_and_escapes_names():
    from baton.drill.report import evacuation_markdown, evacuation_rows, evacuation_to_html

    one, two = card(), card() | {"domain": "pay<ments>", "started_at": 120.0, "ended_at": 160.0}
    evacuation = {"kind": "evacuation", "from_region": "east", "outcome": "failed", "passed": False,
                  "error": None, "started_at": 100.0, "ended_at": 160.0,
                  "evacuations": {"failover": "evacuation-east-1"},
                  "results": {"failover": [{"domain": "orders", "outcome": "moved"},
                                           {"domain": "pay<ments>", "outcome": "returned to safety"}]},
                  "domains": {"orders": one, "pay<ments>": two}}
    rows = {r[0]: r for r in evacuation_rows(evacuation)}
    assert rows["orders"][1:3] == ("moved", "-") and rows["pay<ments>"][1] == "returned to safety"
    assert rows["orders"][4] == "billing 0 / 2"
    page = evacuation_to_html(evacuation)
    assert page.count('class="lane"') == 2 and 'data-domain="pay&lt;ments&gt;"' in page
    assert "pay<ments>" not in page and "<script" not in page
    # both lanes share the evacuation's axis: the same record time maps to the same x in each lane
    lanes = page.split('class="lane"')[1:]
    assert all('<text x="60.0" y="' in lane and "+60 s</text>" in lane for lane in lanes)
    assert "| orders | moved | - |" in evacuation_markdown(evacuation)
