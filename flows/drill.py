"""The failover drill: a measured failover and failback under a workload Baton controls.

Deployment `drill` runs it monthly against a configured pair; `baton drill --lab` runs it on
the lab. The scorecard (baton/drill/scorecard.py) is stored as a drill report in the audit
database, published as a Markdown artifact and returned.
"""

from __future__ import annotations

import time
from datetime import UTC
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from baton.audit import AuditStore
from baton.authority import authority_store
from baton.drill.report import to_html, to_markdown
from baton.drill.scorecard import Objectives, build_scorecard
from baton.drill.session import DrillSession
from baton.errors import RunLocked, UsageError
from baton.settings import Topology, load_topology
from flows.failback import failback
from flows.failover import failover
from flows.runner import starter


def is_lab(topology: Topology) -> bool:
    """The topology points at this machine's lab brokers (same bootstrap servers)."""
    from baton.lab.lab import is_lab_topology

    return is_lab_topology(topology)


def refuse_locked(audit: AuditStore, domain: str) -> None:
    """Before any workload starts: a domain whose lock a run holds (e.g. one that crashed after its
    switch) would only be refused at the failover, after the readiness wait times out."""
    refusal = audit.lock_refusal(domain)
    if refusal:
        raise RunLocked(f"{refusal} The drill changed nothing")


def _latest_run(audit: AuditStore, domain: str, runbook: str, after: float) -> str | None:
    for run in audit.runs(domain, limit=10):
        if run.runbook == runbook and run.started_at.timestamp() >= after:
            return run.id
    return None


@flow(name="drill", log_prints=True, retries=0)
def drill(config: str | None = None, domain: str | None = None,
          unplanned: bool = False, auto_approve: bool = False,
          operator: str | None = None,
          divergent_policy: Literal["republish", "quarantine", "discard"] = "quarantine",
          rate: float = 50.0, settle_seconds: float = 5.0, objectives: Objectives | None = None,
          report_dir: str | None = None) -> dict:
    """Fail over and fail back under a sequenced workload; return the checked scorecard.

    Args:
        config: topology file (default: $BATON_CONFIG, ./baton.yaml or the lab's)
        domain: the domain of a multi-domain topology file (default: its default_domain)
        unplanned: kill the owner region (lab only), fail over unplanned, restart it, fail back
        auto_approve: answer every gate as the operator; allowed against the lab only (recorded)
        operator: who runs the drill (default: the OS user)
        divergent_policy: how the failback handles a divergent tail (unplanned drills have one)
        rate: workload records per second across all partitions
        settle_seconds: workload time before, between and after the hand-overs
        objectives: what the scorecard must show to pass (RTO, missing, duplicates, ...)
        report_dir: also write the HTML report there (drill-<run id>.html)
    """
    logger = get_run_logger()
    topology = load_topology(config, domain)
    domain = topology.domain.name
    objectives = objectives or Objectives()
    lab = is_lab(topology)
    if auto_approve and not lab:
        raise UsageError("auto-approve is allowed against the lab only: a drill on a real pair goes "
                         "through its approvers like any hand-over")
    if unplanned and not lab:
        raise UsageError("the unplanned drill kills the owner region: it runs against the lab only")
    if rate <= 0 or settle_seconds < 0:
        raise UsageError("rate must be > 0 records/s and settle_seconds >= 0")
    operator = starter(operator)  # typed in a deployment form: recorded as unverified
    audit = AuditStore.for_topology(topology)
    refuse_locked(audit, domain)
    session = DrillSession(topology, rate=rate, log=logger.info)
    failover_run = failback_run = None
    prediction = error = None
    started = session.started_at
    lab_handle = None
    session.start()
    try:
        session.settle(settle_seconds)
        owner = authority_store(topology, audit).current(topology.domain.name).owner
        other = topology.other_region(owner)
        session.wait_ready(owner)
        reason = "scheduled failover drill"
        if unplanned:
            from baton.lab.lab import Lab

            lab_handle = Lab(progress=logger.info)
            prediction = session.kill_owner(lab_handle, owner)
            reason = f"failover drill: {owner} killed by the drill (lab fault injection)"
        over = failover(config=config, domain=domain, unplanned=unplanned, reason=reason,
                        auto_approve=auto_approve,
                        operator=operator)
        failover_run = over["run_id"]
        if unplanned:
            session.scan("after_failover", other)
            session.restart(lab_handle, owner)
        session.settle(settle_seconds)
        back = failback(config=config, domain=domain, divergent_policy=divergent_policy,
                        auto_approve=auto_approve,
                        operator=operator, reason="failover drill: return authority")
        failback_run = back["run_id"]
        session.settle(settle_seconds)
    except BaseException as e:
        error = f"{type(e).__name__}: {e}"
        raise
    finally:
        session.stop()
        failover_run = failover_run or _latest_run(audit, topology.domain.name, "failover", started)
        if failover_run and failback_run is None and error:
            failback_run = _latest_run(audit, topology.domain.name, "failback", started)
        if unplanned and failover_run:
            for region in topology.regions:
                try:
                    session.scan(f"final_{region}", region)
                except Exception as scan_error:  # noqa: BLE001 - the scorecard says what is missing
                    logger.warning(f"could not scan {region}: {scan_error}")
        card = None
        if failover_run:
            card = build_scorecard(session, failover_run=failover_run, failback_run=failback_run,
                                   unplanned=unplanned, policy=divergent_policy, objectives=objectives,
                                   auto_approve=auto_approve, lab=lab, operator=operator,
                                   prediction=prediction, error=error)
            audit.record_drill_report(failover_run, card["outcome"], card)
            _publish(card, report_dir, logger, run=card["runs"]["failover"])
    return card


def _publish(card: dict, report_dir: str | None, logger, *, run: str | None, name: str = "drill",
             markdown=to_markdown, html=to_html) -> None:
    """The scorecard as a Prefect artifact, and as `<name>-<run>.html` in report_dir if given."""
    try:
        create_markdown_artifact(markdown(card), key=f"{name}-scorecard", description=run)
    except Exception as e:  # noqa: BLE001 - the artifact is a view; the audit DB holds the record
        logger.warning(f"could not publish the drill artifact: {e}")
    if report_dir:
        path = Path(report_dir) / f"{name}-{run}.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(html(card))
        card["report_path"] = str(path)


@flow(name="evacuation-drill", log_prints=True, retries=0)
def evacuation_drill(config: str | None = None, from_region: str = "east", auto_approve: bool = False,
                     operator: str | None = None, rate: float = 30.0, settle_seconds: float = 3.0,
                     objectives: Objectives | None = None, report_dir: str | None = None) -> dict:
    """Evacuate a region under a sequenced workload per domain, then return the moved domains as
    a second evacuation; every domain's checker on one scorecard, one timeline lane per domain.

    Args:
        config: topology file holding the domains (default: $BATON_CONFIG, ./baton.yaml or the lab's)
        from_region: the region to evacuate (every domain whose recorded authority is ACTIVE there)
        auto_approve: answer the batch gates as the operator; allowed against the lab only (recorded)
        operator: who runs the drill (default: the OS user)
        rate: workload records per second per domain
        settle_seconds: workload time before, between and after the evacuations
        objectives: what each domain's scorecard must show to pass
        report_dir: also write the HTML report there (evacuation-drill-<evacuation id>.html)
    """
    from baton.drill.report import evacuation_markdown, evacuation_to_html
    from baton.errors import BatonError
    from baton.evacuation import recorded_authority, select_domains
    from baton.settings import load_topologies
    from flows.evacuate import evacuate

    logger = get_run_logger()
    selection = select_domains(load_topologies(config), from_region, recorded_authority)
    lab = all(is_lab(t) for t in selection.members)
    if auto_approve and not lab:
        raise UsageError("auto-approve is allowed against the lab only: a drill on a real pair goes "
                         "through its approvers like any hand-over")
    if rate <= 0 or settle_seconds < 0:
        raise UsageError("rate must be > 0 records/s and settle_seconds >= 0")
    operator = starter(operator)
    objectives = objectives or Objectives()
    for topology in selection.members:
        refuse_locked(AuditStore.for_topology(topology), topology.domain.name)
    # one workload and checker per domain
    sessions = {t.domain.name: DrillSession(t, rate=rate,
                                            log=lambda m, n=t.domain.name: logger.info(f"[{n}] {m}"))
                for t in selection.members}
    other = selection.members[0].other_region(from_region)
    outcomes: dict[str, dict] = {}
    error = None
    started = time.time()
    for session in sessions.values():
        session.start()
    try:
        session_list = list(sessions.values())
        session_list[0].settle(settle_seconds)
        for session in session_list:
            session.wait_ready(from_region)
        for leg, region, only in (("failover", from_region, None), ("failback", other, "moved")):
            names = None if only is None else [d["domain"] for d in outcomes["failover"]["domains"]
                                                if d["outcome"] == "moved"]
            if names == []:
                break
            try:
                outcomes[leg] = evacuate(from_region=region, config=config, auto_approve=auto_approve,
                                         operator=operator, domains=names,
                                         reason="evacuation drill" + (": return" if only else ""))
            except BatonError as e:
                error = f"{type(e).__name__}: {e}"
                outcomes[leg] = getattr(e, "outcome", None) or {"domains": [], "evacuation": None}
            session_list[0].settle(settle_seconds)
    finally:
        for session in sessions.values():
            session.stop()
    cards = {}
    for name, session in sessions.items():
        ids = _failover_runs_since(session.audit, name, started)
        runs = {"failover": ids[0] if ids else None, "failback": ids[1] if len(ids) > 1 else None}
        if runs["failover"] is None:
            continue
        card = build_scorecard(session, failover_run=runs["failover"], failback_run=runs["failback"],
                               unplanned=False, policy="quarantine", objectives=objectives,
                               auto_approve=auto_approve, lab=lab, operator=operator, error=error)
        session.audit.record_drill_report(runs["failover"], card["outcome"], card)
        cards[name] = card
    passed = error is None and bool(cards) and all(c["passed"] for c in cards.values())
    card = {"kind": "evacuation", "from_region": from_region, "to_region": other,
            "evacuations": {leg: o.get("evacuation") for leg, o in outcomes.items()},
            "results": {leg: o.get("domains") for leg, o in outcomes.items()},
            "domains": cards, "error": error, "passed": passed, "outcome": "passed" if passed else "failed",
            "started_at": min((c["started_at"] for c in cards.values()), default=started),
            "ended_at": max((c["ended_at"] or started for c in cards.values()), default=time.time())}
    _publish(card, report_dir, logger, name="evacuation-drill", run=card["evacuations"].get("failover"),
             markdown=evacuation_markdown, html=evacuation_to_html)
    return card


def _failover_runs_since(audit: AuditStore, domain: str, after: float) -> list[str]:
    """The domain's failover runs started since `after`, oldest first (evacuation, then return)."""
    runs = [r for r in audit.runs(domain, limit=10)
            if r.runbook == "failover" and r.started_at.replace(tzinfo=UTC).timestamp() >= after]
    return [r.id for r in sorted(runs, key=lambda r: r.started_at)]
