"""`baton failover`, `baton failback`, `baton reprotect`, `baton runs`, `baton report`: run and read
runbooks."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from baton.cli.common import ConfigOption, DomainOption, JsonOption, UsageError, err, handles_errors, out

PlanOption = Annotated[bool, typer.Option("--plan", help="print the steps and measurements; change nothing")]
YesOption = Annotated[bool, typer.Option(
    "--yes", help="answer every gate from the CLI: the lab only, or gates in approvals.auto_approve_gates")]
ResumeOption = Annotated[str | None, typer.Option("--resume", help="continue a crashed run by its run id")]
OverrideOption = Annotated[str, typer.Option("--override-lag", help="proceed despite lag, for this reason")]


def _print_plan(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    out.print(f"[bold]{result['runbook']}[/bold] plan ({'unplanned' if result['unplanned'] else 'planned'})")
    for key, value in result["measured"].items():
        out.print(f"  {key}: {value}")
    for number, step in enumerate(result["steps"], start=1):
        out.print(f"  {number:2}. {step['step']:28} {step['kind']:12} would change: {step['would_change']}"
                  + ("" if step["when"] == "always" else f"  (only when {step['when']})"))


def _print_summary(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    colour = "green" if summary["status"] == "succeeded" else "red"
    out.print(f"{summary['runbook']} [{colour}]{summary['status']}[/{colour}] run {summary['run_id']}: "
              f"{summary['owner_before']} -> {summary['owner_after']} ({summary['authority']})")
    for step in summary["steps"]:
        out.print(f"  {step['name']:28} {step['status']:10} {step['seconds']:7.2f} s")


def _check_auto_approve(topology, runbook, **known) -> None:
    """--yes follows the topology's policy for the gates this run may ask; refused (exit 2)
    before Prefect starts."""
    from baton.approvals.policy import auto_approve_refusal

    refusal = auto_approve_refusal(topology, runbook.gates_asked(**known))
    if refusal:
        raise UsageError(f"--yes: {refusal}")


def use_lab_prefect() -> None:
    """Without PREFECT_API_URL, use the running lab's Prefect server (not a temporary one)."""
    import os

    from baton.lab.lab import lab_prefect_api_url

    if not os.environ.get("PREFECT_API_URL") and (url := lab_prefect_api_url()):
        os.environ["PREFECT_API_URL"] = url
        err.print(f"using the lab's Prefect server {url.removesuffix('/api')}", highlight=False)


def _run_flow(flow, as_json: bool, **parameters) -> None:
    # A failed run raises its BatonError (exit 1); `baton runs` and `baton report` show its evidence.
    # Prefect's tracebacks for it stay in the Prefect logs, off the terminal.
    from flows.console import quiet_baton_refusals

    quiet_baton_refusals()
    _print_summary(flow(**parameters), as_json)


def failover(config: ConfigOption = None, domain: DomainOption = None, plan: PlanOption = False,
             unplanned: Annotated[bool, typer.Option(help="the owner is unreachable")] = False,
             reason: Annotated[str, typer.Option(help="why (required with --unplanned)")] = "",
             override_lag: OverrideOption = "", yes: YesOption = False,
             resume: ResumeOption = None, as_json: JsonOption = False) -> None:
    """Move write authority to the other region (a Prefect flow run)."""
    from baton.settings import load_topology, resolve_config_path
    from runbooks import FAILOVER

    if unplanned and not reason:
        raise UsageError("--unplanned needs --reason: say what declared the owner unavailable")
    if plan:
        from baton.steps.plan import plan as make_plan

        _print_plan(make_plan(load_topology(config, domain), FAILOVER, unplanned=unplanned), as_json)
        return
    topology = load_topology(config, domain)  # a bad file fails here, before Prefect starts
    if yes:
        _check_auto_approve(topology, FAILOVER, unplanned=unplanned)
    config = str(resolve_config_path(config))  # the flow run's parameters name the file used
    use_lab_prefect()
    from flows.failover import failover as flow

    err.print("starting the failover flow (Prefect)...")
    _run_flow(flow, as_json, config=config, domain=topology.domain.name, unplanned=unplanned, reason=reason,
              override_lag=override_lag,
              auto_approve=yes, resume_run_id=resume)


def failback(config: ConfigOption = None, domain: DomainOption = None, plan: PlanOption = False,
             policy: Annotated[str, typer.Option(help="divergent tail: republish|quarantine|discard")]
             = "quarantine",
             reason: Annotated[str, typer.Option(help="why")] = "",
             override_lag: OverrideOption = "", yes: YesOption = False,
             resume: ResumeOption = None, as_json: JsonOption = False) -> None:
    """Return write authority, handling the divergent tail by policy."""
    from baton.settings import load_topology, resolve_config_path
    from baton.steps.context import DIVERGENT_POLICIES
    from runbooks import FAILBACK

    if policy not in DIVERGENT_POLICIES:
        raise UsageError(f"--policy must be one of {', '.join(DIVERGENT_POLICIES)}, not {policy!r}")
    if plan:
        from baton.steps.plan import plan as make_plan

        _print_plan(make_plan(load_topology(config, domain), FAILBACK), as_json)
        return
    topology = load_topology(config, domain)
    if yes:
        _check_auto_approve(topology, FAILBACK, divergent_policy=policy)
    config = str(resolve_config_path(config))
    use_lab_prefect()
    from flows.failback import failback as flow

    err.print("starting the failback flow (Prefect)...")
    _run_flow(flow, as_json, config=config, domain=topology.domain.name, divergent_policy=policy,
              reason=reason, override_lag=override_lag, auto_approve=yes, resume_run_id=resume)


PROBE_SECONDS = 5.0  # how long `baton reprotect` asks the region to protect before refusing


def _refuse_unless_standby_answers(topology) -> None:
    """Exit 2 before Prefect starts when the region to protect does not answer (nothing changed)."""
    from baton.audit import AuditStore
    from baton.authority import State, authority_store
    from baton.errors import RegionUnreachable
    from baton.kafka.admin import check_reachable

    current = authority_store(topology, AuditStore.for_topology(topology)).current(topology.domain.name)
    if current is not None and current.state != State.ACTIVE:
        raise UsageError(f"authority is {current.describe()}: reprotect needs an ACTIVE owner; finish or "
                         "recover the hand-over first (`baton authority show`)")
    owner = current.owner if current is not None else topology.domain.initial_owner
    standby = topology.other_region(owner)
    try:
        check_reachable(standby, topology.regions[standby], timeout=PROBE_SECONDS)
    except RegionUnreachable as e:
        raise UsageError(f"{standby} does not answer ({str(e).splitlines()[0]}): nothing changed. "
                         f"Reprotect replicates {owner} -> {standby}; run it once {standby} answers; "
                         "`baton ready` says when") from None


def reprotect(config: ConfigOption = None, domain: DomainOption = None, plan: PlanOption = False,
              policy: Annotated[str, typer.Option(help="divergent tail: republish|quarantine|discard")]
              = "quarantine",
              reason: Annotated[str, typer.Option(help="why")] = "", yes: YesOption = False,
              resume: ResumeOption = None, as_json: JsonOption = False) -> None:
    """Protect the region that lost authority: its divergent tail, then replication towards it
    until it is current (authority does not move; running it twice is harmless)."""
    from baton.settings import load_topology, resolve_config_path
    from baton.steps.context import DIVERGENT_POLICIES
    from runbooks import REPROTECT

    if policy not in DIVERGENT_POLICIES:
        raise UsageError(f"--policy must be one of {', '.join(DIVERGENT_POLICIES)}, not {policy!r}")
    topology = load_topology(config, domain)
    if plan:
        from baton.steps.plan import plan as make_plan

        _print_plan(make_plan(topology, REPROTECT), as_json)
        return
    if yes:
        _check_auto_approve(topology, REPROTECT, divergent_policy=policy)
    if not resume:
        _refuse_unless_standby_answers(topology)
    config = str(resolve_config_path(config))
    use_lab_prefect()
    from flows.reprotect import reprotect as flow

    err.print("starting the reprotect flow (Prefect)...")
    _run_flow(flow, as_json, config=config, domain=topology.domain.name, divergent_policy=policy,
              reason=reason, auto_approve=yes, resume_run_id=resume)


def evacuate(from_region: Annotated[str, typer.Option("--from", help="the region to evacuate")],
             config: ConfigOption = None,
             all_or_nothing: Annotated[bool, typer.Option(
                 "--all-or-nothing", help="no domain switches unless every domain reached its switch")
             ] = False,
             unplanned: Annotated[bool, typer.Option(help="the region is unreachable")] = False,
             reason: Annotated[str, typer.Option(help="why the region is evacuated (required with "
                                                      "--unplanned)")] = "",
             yes: YesOption = False, as_json: JsonOption = False) -> None:
    """Fail over every domain the region owns, in parallel, with one approval per gate."""
    from baton.evacuation import recorded_authority, result_line, select_domains
    from baton.settings import load_topologies, resolve_config_path
    from runbooks import EVACUATE

    # Bad input (unknown region, nothing owned there, --yes refused) exits 2 before Prefect starts.
    if unplanned and not reason:
        raise UsageError("--unplanned needs --reason: say what declared the region unavailable")
    selection = select_domains(load_topologies(config), from_region, recorded_authority)
    if yes:
        for topology in selection.members:
            _check_auto_approve(topology, EVACUATE, unplanned=unplanned)
    config = str(resolve_config_path(config))
    use_lab_prefect()
    from flows.console import quiet_baton_refusals
    from flows.evacuate import evacuate as flow

    quiet_baton_refusals()
    err.print(f"evacuating {from_region}: {', '.join(selection.names)} (Prefect)..."
              + "".join(f"\n  left out {d}: {why}" for d, why in selection.skipped.items()))
    outcome = flow(from_region=from_region, config=config, all_or_nothing=all_or_nothing,
                   auto_approve=yes, reason=reason, unplanned=unplanned)  # not all moved: StepFailed, exit 1
    if as_json:
        print(json.dumps(outcome, indent=2, default=str))
        return
    out.print(f"{outcome['evacuation']}: [green]{outcome['moved']} of {len(outcome['domains'])} "
              f"domain(s) moved[/green] in {outcome['wall_seconds']} s")
    for row in outcome["domains"]:
        out.print(f"  {result_line(row)}", highlight=False)


def runs(config: ConfigOption = None, domain: DomainOption = None,
         limit: int = 20, as_json: JsonOption = False) -> None:
    """List recent runs from the audit database."""
    from baton.audit import AuditStore
    from baton.settings import load_topology

    topology = load_topology(config, domain)
    store = AuditStore.for_topology(topology)
    rows = []
    for run in store.runs(topology.domain.name, limit=limit):
        view = store.run(run.id)
        rows.append({"run_id": run.id, "runbook": run.runbook, "status": view.status,
                     "started_at": run.started_at.isoformat(), "started_by": run.started_by,
                     "planned": run.planned, "steps": len(view.steps)})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        out.print(f"{row['run_id']:45} {row['runbook']:9} {row['status']:10} {row['started_at'][:19]} "
                  f"{row['started_by']}")


def report(run_id: str, config: ConfigOption = None, domain: DomainOption = None,
           format: Annotated[str, typer.Option("--format", help="md|json|html")] = "md") -> None:
    """Render a run from the audit database."""
    from baton.audit import AuditStore
    from baton.settings import load_topology

    if format not in ("md", "json", "html"):
        raise UsageError(f"--format must be md, json or html, not {format!r}")
    store = AuditStore.for_topology(load_topology(config, domain))
    if format == "html":  # a drill's scorecard and timeline, one self-contained page
        from baton.drill.report import drill_card, to_html

        print(to_html(drill_card(store, run_id)))
        return
    view = store.run(run_id)
    data = view.as_dict()
    if format == "json":
        print(json.dumps(data, indent=2, default=str))
        return
    run = data["run"]
    lines = [f"# {run['runbook']} run `{run['id']}`: {data['run']['status']}", "",
             f"- domain: {run['domain']}; {'planned' if run['planned'] else 'unplanned'}; "
             f"trigger {run['trigger']}; started by {run['started_by']} at {run['started_at']}",
             f"- reason: {run['reason'] or '-'}", "", "| # | step | status | seconds | error |",
             "|---|---|---|---|---|"]
    for step in view.steps:
        seconds = (step.ended_at - step.started_at).total_seconds()
        error = step.error or ""
        lines.append(f"| {step.position} | {step.name} | {step.status} | {seconds:.2f} | {error} |")
    if view.approvals:
        lines += ["", "| gate | decision | approver | channel | verified |", "|---|---|---|---|---|"]
        lines += [f"| {a.gate} | {a.decision} | {a.approver} | {a.channel} | {a.identity_verified} |"
                  for a in view.approvals]
    print("\n".join(lines))




def deploy(pool: Annotated[str | None, typer.Option(help="work pool (default: from prefect.yaml)")] = None,
           as_json: JsonOption = False) -> None:
    """Register the failover, failback, reprotect, evacuate and drill deployments
    (deployments/prefect.yaml)."""
    import os

    from flows.deploy import deploy as register

    if not os.environ.get("PREFECT_API_URL"):
        raise UsageError("PREFECT_API_URL is not set: point it at your Prefect server's /api")
    registered = register(pool)
    if as_json:
        print(json.dumps(registered, indent=2))
        return
    for row in registered:
        out.print(f"{row['flow']}/{row['deployment']} -> pool {row['pool']}"
                  + (f", schedule {row['cron']}" if row["cron"] else ""))


def register(app: typer.Typer) -> None:
    for command in (failover, failback, reprotect, evacuate, runs, report, deploy):
        app.command(command.__name__)(handles_errors(command))
