"""`baton audit`: prove the evidence chain is intact; show what a run measured and decided."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from baton.cli.common import ConfigOption, DomainOption, JsonOption, err, handles_errors, out

audit_app = typer.Typer(no_args_is_help=True, help="The audit database (evidence, approvals).")


def _store(config: str | None, domain: str | None = None):
    from baton.audit import AuditStore
    from baton.settings import load_topology

    return AuditStore.for_topology(load_topology(config, domain))


@audit_app.command("verify")
@handles_errors
def audit_verify(config: ConfigOption = None, domain: DomainOption = None, as_json: JsonOption = False,
                 offline: Annotated[bool, typer.Option(
                     "--offline", help="skip the comparison with the regions' control topics")] = False,
                 ) -> None:
    """Check the hash chain, its signed head, the authority row against its history, and the
    database against the chain anchors in every region's control topic; exit 1 naming what
    disagrees."""
    from baton.settings import load_topology

    topology = load_topology(config, domain)
    store = _store(config, domain)
    verdict = store.verify()
    problem = verdict.first_break
    problems, notes = [], []
    if not offline:
        from baton.authority.control import anchor_problems

        problems, notes = anchor_problems(topology, store, timeout=3)
    if store.chain_key is None:
        notes.append("no chain key configured (audit.chain_key or BATON_AUDIT__CHAIN_KEY): the chain "
                     "head's signature was not checked")
    ok = problem is None and not problems
    if as_json:
        print(json.dumps({
            "ok": ok, "rows": verdict.rows, "head_seq": verdict.head_seq, "signed": verdict.signed,
            "first_bad_row": None if problem is None else {
                "table": problem.table, "id": problem.row_id, "seq": problem.seq,
                "problem": problem.problem},
            "control_topics": {"problems": problems, "notes": notes},
        }))
    else:
        if problem is None:
            out.print(f"audit chain intact: {verdict.rows} rows, head seq {verdict.head_seq}"
                      + (", head signature valid" if verdict.signed else ""), highlight=False)
        else:
            err.print(f"[red]audit chain broken[/red] at {problem}", highlight=False)
        for line in problems:
            err.print(f"[red]disagrees with the control topics[/red]: {line}", highlight=False)
        for line in notes:
            out.print(f"  note: {line}", highlight=False)
    if not ok:
        raise typer.Exit(1)


@audit_app.command("show")
@handles_errors
def audit_show(run_id: Annotated[str, typer.Argument(help="the run id")],
               config: ConfigOption = None, domain: DomainOption = None, as_json: JsonOption = False) -> None:
    """A run with its steps, evidence, approvals and drill reports."""
    view = _store(config, domain).run(run_id)
    if as_json:
        print(json.dumps(view.as_dict(), indent=2))
        return
    run = view.run
    out.print(f"run {run.id}: {run.runbook} on {run.domain} [bold]{view.status}[/bold]", highlight=False)
    out.print(f"  started {run.started_at:%Y-%m-%d %H:%M:%S} UTC by {run.started_by} "
              f"({'planned' if run.planned else 'unplanned'}, trigger {run.trigger})"
              + (f"; ended {view.ended_at:%H:%M:%S}" if view.ended_at else ""), highlight=False)
    if run.reason:
        out.print(f"  reason: {run.reason}", highlight=False)
    for step in view.steps:
        seconds = (step.ended_at - step.started_at).total_seconds()
        where = " ".join(filter(None, [step.region and f"region={step.region}",
                                       step.epoch is not None and f"epoch={step.epoch}"]))
        out.print(f"  {step.position:2}. {step.name} {step.status} ({seconds:.2f}s) {where}",
                  highlight=False)
        if step.evidence not in ("{}", ""):
            out.print(f"      evidence {step.evidence}", highlight=False)
        if step.error:
            out.print(f"      error {step.error}", highlight=False)
    for approval in view.approvals:
        verified = "verified" if approval.identity_verified else "unverified"
        out.print(f"  gate {approval.gate}: {approval.decision} by {approval.approver} "
                  f"via {approval.channel} ({verified}) at {approval.decided_at:%H:%M:%S}"
                  + (f": {approval.comment}" if approval.comment else ""), highlight=False)
    for attempt in view.approval_attempts:
        how = f"verified by {attempt.verified_by}" if attempt.identity_verified else "unverified"
        out.print(f"  slack click {attempt.action} on {attempt.gate} by {attempt.slack_user_id} "
                  f"({attempt.slack_user_name or '?'}, team {attempt.slack_team_id or '?'}, channel "
                  f"{attempt.slack_channel_id or '?'}, {how}) at {attempt.attempted_at:%H:%M:%S}: "
                  f"{attempt.outcome}" + (f" ({attempt.reason})" if attempt.reason else ""), highlight=False)
    for event in view.events:
        out.print(f"  {event.kind} {event.status} by {event.actor} at {event.at:%H:%M:%S}"
                  + (f": {event.detail}" if event.detail else ""), highlight=False)
    for report in view.drill_reports:
        out.print(f"  drill report {report.outcome}: {report.report}", highlight=False)


@audit_app.command("runs")
@handles_errors
def audit_runs(config: ConfigOption = None, domain: DomainOption = None, as_json: JsonOption = False,
               limit: Annotated[int, typer.Option(min=1, help="newest N runs")] = 20) -> None:
    """The newest runs."""
    runs = _store(config, domain).runs(limit=limit)
    if as_json:
        print(json.dumps([r.model_dump(mode="json", exclude={"prev_hash"}) for r in runs]))
        return
    for run in runs:
        out.print(f"{run.id}  {run.runbook:10} {run.domain:12} {run.started_at:%Y-%m-%d %H:%M:%S} "
                  f"{run.started_by}", highlight=False)
