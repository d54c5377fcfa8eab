"""The drill's scorecard: what the checker found, per leg (failover, failback), against objectives."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict

from pydantic import BaseModel, Field

from baton.drill.checker import account_divergent, check, lost_records
from baton.drill.session import DrillSession, _lag_per_topic, _seconds

GATE_PREFIX = "approve-"


class Objectives(BaseModel):
    """What a drill must show to pass. None: reported, not judged."""

    max_rto_seconds: float | None = Field(120.0, gt=0, description="trigger to first write on the new "
                                          "owner, gate waits excluded, per leg")
    max_missing: int | None = Field(0, ge=0, description="acknowledged, never processed; per group")
    max_duplicates: int | None = Field(0, ge=0, description="processed more than once; per group")
    max_write_gap_seconds: float | None = Field(None, gt=0, description="per hand-over")
    prediction_must_hold: bool = Field(True, description="unplanned: lost == predicted at risk")


def _leg(session: DrillSession, name: str, run_id: str, move: dict | None, trigger_at: float | None,
         trigger: dict) -> dict:
    view = session.audit.run(run_id)
    steps, gate_wait = [], 0.0
    for step in view.steps:
        seconds = (step.ended_at - step.started_at).total_seconds()
        gate = step.name.startswith(GATE_PREFIX)
        gate_wait += seconds if gate else 0.0
        steps.append({"name": step.name, "status": step.status, "seconds": round(seconds, 3), "gate": gate,
                      "started_at": _seconds(step.started_at), "ended_at": _seconds(step.ended_at)})
    trigger_at = trigger_at or _seconds(view.run.started_at)
    outage = write_outage(steps, move["write_gap_seconds"] if move else None)
    first = move["first_ack_new_owner"] if move else None
    rto_with_gates = round(first - trigger_at, 3) if first else None
    return {
        "run_id": run_id, "status": view.status, "trigger": trigger | {"at": trigger_at},
        "owner_before": move["from"] if move else None, "owner_after": move["to"] if move else None,
        "rto_seconds": round(rto_with_gates - gate_wait, 3) if rto_with_gates is not None else None,
        "gate_wait_seconds": round(gate_wait, 3), "rto_including_gates_seconds": rto_with_gates,
        "write_gap_seconds": move["write_gap_seconds"] if move else None, **outage,
        "approvals": [{"gate": a.gate, "decision": a.decision, "approver": a.approver, "channel": a.channel,
                       "at": _seconds(a.decided_at)} for a in view.approvals],
        "steps": steps,
        "_evidence": {s.name: json.loads(s.evidence) for s in view.steps},
    }


def write_outage(steps: list[dict], write_gap: float | None) -> dict:
    """The write outage as producers saw it (the measured write gap, which includes any gate
    wait inside the fenced window), beside the part of it that was automated."""
    fence = next((s for s in steps if s["name"] == "stop_primary_producers"), None)
    switch = next((s for s in steps if s["name"] == "switch_authority"), None)
    if fence is None or switch is None:
        return {"fenced_window_seconds": None, "gate_wait_in_fenced_window_seconds": None,
                "write_outage_seconds": write_gap, "automated_outage_seconds": None}
    inside = sum(s["seconds"] for s in steps if s["gate"] and s["started_at"] >= fence["started_at"]
                 and s["ended_at"] <= switch["ended_at"])
    return {"fenced_window_seconds": round(switch["ended_at"] - fence["started_at"], 3),
            "gate_wait_in_fenced_window_seconds": round(inside, 3),
            "write_outage_seconds": write_gap,
            "automated_outage_seconds": (round(max(0.0, write_gap - inside), 3)
                                         if write_gap is not None else None)}


def _rates(acked, start: float, end: float) -> dict[str, list[list[float]]]:
    """Acknowledged writes per second per region, zeros included (a pause shows as a pause)."""
    buckets: dict[str, Counter] = defaultdict(Counter)
    for write in acked:
        buckets[write.region][int(write.acked_at - start)] += 1
    seconds = range(int(end - start) + 1)
    return {region: [[start + second, counts.get(second, 0)] for second in seconds]
            for region, counts in buckets.items()}


def build_scorecard(session: DrillSession, *, failover_run: str, failback_run: str | None,
                    unplanned: bool, policy: str, objectives: Objectives, auto_approve: bool, lab: bool,
                    operator: str, prediction: dict | None = None, error: str | None = None) -> dict:
    """Check the drill's event logs and assemble the scorecard (JSON-able)."""
    topology = session.topology
    groups = [w.group for w in session.workers]
    acked = list(session.producer.acked) if session.producer else []
    processed = [p for w in session.workers for p in w.processed]
    epochs = session.epochs()
    runs = {"failover": failover_run, "failback": failback_run}
    moves = {}
    findings = check(acked, processed, epochs, groups)
    for move in findings["handovers"]:
        for leg, run_id in runs.items():
            if run_id and move["run_id"] == run_id:
                moves[leg] = move
    divergent = None
    excused: set = set()
    if unplanned and "failover" in moves and "after_failover" in session.scans:
        move = moves["failover"]
        lost = lost_records(acked, session.scans["after_failover"], old_owner=move["from"],
                            new_owner=move["to"], before_epoch=move["to_epoch"])
        lost_set = lost.pop("_set")
        final = [c for name, copies in session.scans.items() if name != "after_failover" for c in copies]
        accounted = account_divergent(lost_set, final, policy=policy, current_owner=move["to"],
                                      returning=move["from"]) if failback_run else None
        divergent = {"lost": lost, "accounted": accounted}
        if accounted and policy in ("quarantine", "discard"):
            # records the policy set aside are not "missing work" (they are reported as lost)
            excused = lost_set
            findings = check(acked, processed, epochs, groups, excused)
    legs = {}
    for leg, run_id in runs.items():
        if not run_id:
            continue
        trigger = {"kind": "unplanned" if unplanned and leg == "failover" else "planned",
                   "by": operator, "reason": "scheduled failover drill"}
        trigger_at = None
        if unplanned and leg == "failover":
            trigger |= {"by": "drill fault injection (lab)", "reason": f"{moves.get(leg, {}).get('from')} "
                        "broker killed after replication stopped"}
            trigger_at = getattr(session, "trigger_at", None)
        legs[leg] = _leg(session, leg, run_id, moves.get(leg), trigger_at, trigger)
    # lag just before the failover: the runbook's own measurement (planned) or the drill's (unplanned)
    lag_before = None
    if "failover" in legs:
        measured = legs["failover"]["_evidence"].get("check_lag", {}).get("lag")
        if measured:
            lag_before = {"records": measured["records_at_risk"], "seconds": measured["seconds_at_risk"],
                          "per_topic": _lag_per_topic(measured), "source": "check_lag of the failover run"}
        elif prediction:
            lag_before = {k: prediction[k] for k in ("records", "seconds", "per_topic")} | {
                "source": "measured by the drill just before the owner was killed"}
    switch_epoch = {leg: m["to_epoch"] for leg, m in moves.items()}
    failback_at = moves.get("failback", {}).get("active_at")
    evidence = {leg: data.pop("_evidence") for leg, data in legs.items()}
    for leg, move in moves.items():
        violations = [v for v in findings["violations"]
                      if (leg == "failover") == (v["epoch"] < switch_epoch.get("failback", 10**9))]
        legs[leg]["producers_switched_cleanly"] = (not violations and move["first_ack_new_owner"] is not None
                                                   and move["old_owner_acks_after_switch"] == 0)
        legs[leg]["second_writer_violations"] = len(violations)
        legs[leg]["consumers"] = _per_leg(acked, processed, groups, leg, failback_at,
                                          switch_epoch.get("failback"), excused)
    if unplanned and "failover" in legs:
        legs["failover"]["stated_duplicates_bound"] = stated_duplicates_bound(evidence["failover"])
    if unplanned and "failover" in legs and divergent:
        legs["failover"]["rpo_records"] = divergent["lost"]["count"]
        legs["failover"]["predicted_at_risk_records"] = prediction["records"] if prediction else None
        # what the runbooks themselves said: the unplanned check_lag's statement, the failback's tail
        legs["failover"]["runbook_data_at_risk"] = (
            evidence["failover"].get("check_lag", {}).get("data_at_risk", {}).get("statement"))
        legs["failover"]["runbook_data_at_risk_records"] = (  # the watch's sample, beside rpo_records
            evidence["failover"].get("check_lag", {}).get("data_at_risk", {}).get("records"))
        # The sample may precede the kill by one watch interval: what the workload writes in one.
        legs["failover"]["runbook_at_risk_tolerance_records"] = math.ceil(
            session.rate * topology.watch.interval_seconds)
        if "failback" in evidence:
            legs["failover"]["runbook_divergent_tail"] = (
                evidence["failback"].get("find_divergent_tail", {}).get("count"))
    elif "failover" in legs:
        legs["failover"]["rpo_records"] = 0 if not any(
            c["missing"] for c in legs["failover"].get("consumers", {}).values()) else None
    if "failback" in legs:
        legs["failback"]["rpo_records"] = 0 if not any(
            c["missing"] for c in legs["failback"].get("consumers", {}).values()) else None
    card_end = getattr(session, "ended_at", None) or session.started_at
    card = {
        "drill": session.producer_id, "domain": topology.domain.name,
        "variant": "unplanned" if unplanned else "planned", "divergent_policy": policy,
        "started_at": session.started_at, "ended_at": getattr(session, "ended_at", None),
        "runs": runs, "error": error,
        "approvals": {"auto_approve": auto_approve, "lab": lab,
                      "note": ("gates answered by the drill as the operator (lab only), recorded as "
                               "channel cli") if auto_approve else "gates answered by approvers"},
        "workload": (session.producer.stats() if session.producer else {}) | {
            "groups": [w.stats() for w in session.workers],
            "keeper_started_by_drill": session.keeper_started,
            "watch_started_by_drill": getattr(session, "watch_started", False)},
        "lag_before_failover": lag_before,
        "prediction": prediction, "divergent": divergent,
        "failover": legs.get("failover"), "failback": legs.get("failback"),
        "consumers": {g: {k: v for k, v in f.items()} for g, f in findings["consumers"].items()},
        "second_writer_violations": findings["violations"][:50],
        "handovers": findings["handovers"],
        "timeline": {"rates": _rates(acked, session.started_at, card_end), "lag": session.lag_samples,
                     "authority": [{"epoch": e.epoch, "owner": e.owner, "state": e.state, "at": e.changed_at}
                                   for e in epochs if e.changed_at >= session.started_at - 60],
                     "events": session.events},
    }
    card["objectives"] = evaluate(card, objectives, unplanned)
    card["passed"] = error is None and all(o["passed"] for o in card["objectives"])
    card["outcome"] = "passed" if card["passed"] else "failed"
    return card


def stated_duplicates_bound(evidence: dict) -> dict[str, int] | None:
    """Per group, the duplicates an unplanned run stated before its switch: the translation's,
    or after an operator's resolution the bounds of the positions actually applied."""
    summary = (evidence.get("apply_translation_resolutions", {}).get("summary")
               or evidence.get("translate_consumer_offsets", {}).get("summary", {}))
    return summary.get("duplicates_bound_by_group")


def _per_leg(acked, processed, groups, leg, failback_at, failback_epoch, excused) -> dict:
    """Missing by the epoch a record was acknowledged under; duplicates by when the repeat happened."""
    if leg == "failover":
        def in_leg_epoch(epoch):
            return failback_epoch is None or epoch < failback_epoch

        def in_leg_time(at):
            return failback_at is None or at < failback_at
    else:
        def in_leg_epoch(epoch):
            return failback_epoch is not None and epoch >= failback_epoch

        def in_leg_time(at):
            return failback_at is not None and at >= failback_at
    result = {}
    for group in groups:
        seen: Counter = Counter()
        repeats = 0
        for p in sorted((p for p in processed if p.group == group), key=lambda p: p.at):
            seen[p.id] += 1
            if seen[p.id] > 1 and in_leg_time(p.at):
                repeats += 1
        missing = sum(1 for a in acked if a.id not in seen and a.id not in excused and in_leg_epoch(a.epoch))
        result[group] = {"missing": missing, "duplicates": repeats}
    return result


def evaluate(card: dict, objectives: Objectives, unplanned: bool) -> list[dict]:
    results = []

    def judge(name, target, actual, passed):
        results.append({"objective": name, "target": target, "actual": actual, "passed": bool(passed)})

    for leg in ("failover", "failback"):
        data = card.get(leg)
        if not data:
            judge(f"{leg} ran", "succeeded", "did not run", False)
            continue
        judge(f"{leg} run", "succeeded", data["status"], data["status"] == "succeeded")
        if objectives.max_rto_seconds is not None:
            rto = data.get("rto_seconds")
            judge(f"{leg} RTO (s, gates excluded)", f"<= {objectives.max_rto_seconds:g}", rto,
                  rto is not None and rto <= objectives.max_rto_seconds)
        judge(f"{leg} producers switched cleanly", True, data.get("producers_switched_cleanly"),
              data.get("producers_switched_cleanly"))
        if objectives.max_write_gap_seconds is not None:
            gap = data.get("write_gap_seconds")
            judge(f"{leg} write gap (s)", f"<= {objectives.max_write_gap_seconds:g}", gap,
                  gap is not None and gap <= objectives.max_write_gap_seconds)
    judge("second-writer violations", 0, len(card["second_writer_violations"]),
          not card["second_writer_violations"])
    # Unplanned: a group may re-see what it consumed after its last checkpoint on the dead owner;
    # the runbook states that bound per group before the switch, and the drill holds it to it.
    stated = (card.get("failover") or {}).get("stated_duplicates_bound") or {} if unplanned else {}
    for group, found in card["consumers"].items():
        if objectives.max_missing is not None:
            judge(f"{group} missing", f"<= {objectives.max_missing}", found["missing"],
                  found["missing"] <= objectives.max_missing)
        if objectives.max_duplicates is not None:
            allowed = objectives.max_duplicates + stated.get(group, 0)
            why = " (bound stated by the unplanned translation)" if group in stated else ""
            target = f"<= {allowed}{why}"
            judge(f"{group} duplicates", target, found["duplicates"], found["duplicates"] <= allowed)
    if unplanned and objectives.prediction_must_hold:
        lost = (card.get("divergent") or {}).get("lost", {}).get("count")
        predicted = (card.get("prediction") or {}).get("records")
        judge("records lost == predicted at risk", predicted, lost, lost is not None and lost == predicted)
        leg = card.get("failover") or {}
        stated = leg.get("runbook_data_at_risk_records")
        tolerance = leg.get("runbook_at_risk_tolerance_records")
        judge("runbook's at-risk statement (watch sample) vs records lost",
              f"lost - stated in 0..{tolerance}", stated,
              stated is not None and lost is not None and 0 <= lost - stated <= (tolerance or 0))
        accounted = (card.get("divergent") or {}).get("accounted") or {}
        judge("divergent records accounted for by the policy", 0, accounted.get("unaccounted"),
              accounted.get("unaccounted") == 0)
    return results
