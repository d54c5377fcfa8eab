"""Execute a runbook inside a Prefect flow: steps as tasks, gates as pauses, evidence always.

A run that fails before write authority moved (a rejected or timed-out gate, a failed step)
is returned to the last safe state by the reconciler (baton/steps/recover.py), recorded as
step `compensate`; the operator's error line says what it read back.
A run can be resumed by its run id: steps that succeeded and gates that were approved are
not repeated, and irreversible steps check their own postcondition anyway.
"""

from __future__ import annotations

import json
import os
import re
import time

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.utilities.annotations import quote

from baton.approvals.policy import auto_approve_refusal, unverified
from baton.audit import AuditStore
from baton.audit.store import default_actor
from baton.authority import State, authority_store, initialize_authority
from baton.errors import AuditUnwritable, BatonError, StepFailed, UsageError
from baton.kafka.admin import kept_admin_clients
from baton.settings import Topology, load_topology
from baton.steps import resolution
from baton.steps.context import DIVERGENT_POLICIES, RunContext
from baton.steps.recover import replication_state
from baton.steps.switch_conditions import stated as stated_conditions
from baton.watch.store import readiness_line
from flows.gates import GATE_POLL_SECONDS, request_approval
from runbooks import RUNBOOKS
from runbooks.model import Kind, Role, Runbook, Step
from tasks.failback import TASKS as FAILBACK_TASKS
from tasks.failover import TASKS as FAILOVER_TASKS
from tasks.recover import recover_task
from tasks.reprotect import TASKS as REPROTECT_TASKS

STEP_TASKS = FAILOVER_TASKS | FAILBACK_TASKS | REPROTECT_TASKS
PLAN_STEP = "run_plan"


def _trigger() -> str:
    # The flow run in this process's context says it; prefect.runtime.deployment.id would read
    # the flow run from the API first (0.45 s measured at the start of every run).
    from prefect.context import FlowRunContext

    flow_run = getattr(FlowRunContext.get(), "flow_run", None)
    if flow_run is None or flow_run.deployment_id:
        return "cli" if flow_run is None else "deployment"
    # A top-level run not started from a deployment, or a process no worker started (a worker
    # gives the process its flow run's id).
    if flow_run.parent_task_run_id is None or not os.environ.get("PREFECT__FLOW_RUN_ID"):
        return "cli"
    # A subflow (the drill's failover and failback) carries no deployment of its own: Prefect
    # reads its parent's, through the API when it must.
    from prefect.runtime import deployment

    return "deployment" if deployment.id else "cli"


def starter(operator: str | None, trigger: str | None = None) -> str:
    """Who started the run, from something the caller cannot type where there is one: the
    Prefect run's creating user (Prefect Cloud), else the claimed name marked unverified. A
    CLI run is started by the logged-in OS user."""
    if (trigger or _trigger()) != "deployment":
        return operator or default_actor()
    from prefect.context import FlowRunContext

    creator = getattr(getattr(FlowRunContext.get(), "flow_run", None), "created_by", None)
    if creator is not None and str(creator.type).upper() == "USER" and creator.display_value:
        return str(creator.display_value)
    return unverified(operator)


def open_run(runbook: Runbook, *, config: str | None, domain: str | None = None,
             unplanned: bool = False, reason: str = "",
             operator: str | None = None, lag_override_reason: str = "",
             divergent_policy: str = "quarantine", resume_run_id: str | None = None,
             trigger: str | None = None, log=None, topology: Topology | None = None) -> RunContext:
    """Start a run in the audit DB (taking the domain's lock), or reopen one to resume it.
    `topology`: the domain's, already read from `config` (an evacuation reads the file once)."""
    topology = topology if topology is not None else load_topology(config, domain)
    if unplanned and not reason:
        raise UsageError("an unplanned failover needs --reason: say what declared the owner unavailable")
    if divergent_policy not in DIVERGENT_POLICIES:
        raise UsageError(f"divergent policy must be one of {', '.join(DIVERGENT_POLICIES)}")
    audit = AuditStore.for_topology(topology)
    store = authority_store(topology, audit)
    log = log or (lambda message: None)
    if resume_run_id:
        return _reopen(runbook, topology, audit, store, resume_run_id, log)
    current = store.current(topology.domain.name)
    if current is None:
        current = initialize_authority(topology, store=store).authority
    operator = operator or default_actor()
    # The lock first: a second concurrent run is refused naming the run that holds it.
    run = audit.start_run(topology.domain.name, runbook.name, trigger=trigger or _trigger(),
                          reason=reason, started_by=operator, planned=not unplanned)
    if current.state != State.ACTIVE:
        message = (f"authority is {current.describe()} and no run holds the lock: an earlier hand-over "
                   f"did not finish. {_way_out(topology, store, current.run_id)}")
        audit.finish_run(run.id, "aborted", actor=operator, detail=message)
        raise StepFailed(message)
    ctx = RunContext(topology=topology, runbook=runbook.name, run_id=run.id, old_owner=current.owner,
                     new_owner=topology.other_region(current.owner), audit=audit, authority=store,
                     operator=operator, unplanned=unplanned, reason=reason,
                     lag_override_reason=lag_override_reason, divergent_policy=divergent_policy, log=log)
    with audit.step(run.id, PLAN_STEP, region=ctx.new_owner, epoch=current.epoch) as record:
        record.evidence = {"old_owner": ctx.old_owner, "new_owner": ctx.new_owner,
                           "unplanned": unplanned, "reason": reason, "operator": operator,
                           "divergent_policy": divergent_policy, "lag_override_reason": lag_override_reason,
                           "epoch_at_start": current.epoch, "steps": [s.name for s in runbook.steps],
                           # what the last safe state restores (baton/steps/recover.py)
                           "replication_at_start": replication_state(topology, ctx.old_owner, ctx.new_owner)}
    log(f"run {run.id}: {runbook.name} of {topology.domain.name} from {ctx.old_owner} to {ctx.new_owner}")
    return ctx


def _way_out(topology, store, run_id: str | None) -> str:
    """The one command that gets out, from the authority as read now."""
    current = store.current(topology.domain.name)
    if current is not None and current.state == State.FENCED:
        who = f"run {current.run_id}" if current.run_id else current.changed_by
        return (f"Authority is {current.describe()} (set by {who}): return to the last safe state with "
                f"`baton recover --run {current.run_id or run_id}`, then start a new run.")
    return f"Authority is {current.describe() if current else 'not recorded'}: start a new run instead."


def _reopen(runbook, topology, audit, store, run_id: str, log) -> RunContext:
    view = audit.run(run_id)
    if view.run.runbook != runbook.name:
        raise UsageError(f"run {run_id} is a {view.run.runbook} run, not {runbook.name}")
    if view.run.domain != topology.domain.name:  # a multi-domain file: never resume with another domain
        raise UsageError(f"run {run_id} is a run of domain {view.run.domain}, not {topology.domain.name}: "
                         f"resume it with --domain {view.run.domain}")
    if view.status != "running":
        raise UsageError(f"run {run_id} is {view.status}: it no longer holds the domain's lock and cannot "
                         f"continue. {_way_out(topology, store, run_id)}")
    plan = next(json.loads(s.evidence) for s in view.steps if s.name == PLAN_STEP)
    ctx = RunContext(topology=topology, runbook=runbook.name, run_id=run_id, old_owner=plan["old_owner"],
                     new_owner=plan["new_owner"], audit=audit, authority=store,
                     operator=plan["operator"], unplanned=plan["unplanned"], reason=plan["reason"],
                     lag_override_reason=plan["lag_override_reason"],
                     divergent_policy=plan["divergent_policy"], log=log)
    done = set()
    for row in view.steps:
        if row.status == "succeeded" and row.name != PLAN_STEP:
            done.add(row.name)
            ctx.state[row.name] = json.loads(row.evidence)
    done |= {a.gate for a in view.approvals if a.decision == "approved"}
    stop = ctx.state.get("stop_primary_producers", {})
    if "final_end_offsets" in stop:
        ctx.state["final_end_offsets"] = stop["final_end_offsets"]
    if "stop_primary_producers" in done:
        ctx.state["fenced"] = True
    if "switch_authority" in done:
        ctx.state["switched"] = True
    applied = ctx.state.get("translate_consumer_offsets", {}).get("applied", [])
    ctx.state["applied_offsets"] = {a["group"]: a["committed"] for a in applied}
    ctx.state["_done"] = done
    log(f"resuming run {run_id}: already done: {', '.join(sorted(done)) or 'nothing'}")
    return ctx


def gate_summary(ctx: RunContext, step: Step) -> dict:
    """The key evidence an approver sees for this gate."""
    state = ctx.state
    authority = ctx.authority.current(ctx.domain)
    summary: dict = {"runbook": ctx.runbook, "domain": ctx.domain, "gate": step.name,
                     "started_by": ctx.operator, "unplanned": ctx.unplanned, "reason": ctx.reason,
                     "authority_now": authority.describe(),
                     "planned_change": f"{ctx.old_owner} -> {ctx.new_owner} (epoch {authority.epoch} -> "
                                       f"{authority.epoch + (1 if step.name == 'approve-switch' else 2)})"}
    if not any(Role.SWITCH in s.roles for s in RUNBOOKS[ctx.runbook].steps):  # reprotect
        summary["planned_change"] = (f"none to authority (stays on {ctx.owner_now}); replication "
                                     f"{ctx.owner_now} -> {ctx.standby_now} started")
    else:
        summary["readiness"] = readiness_line(ctx.audit, ctx.topology, ctx.old_owner, ctx.new_owner)
    if not ctx.unplanned and not state.get("fenced") and "readiness" in summary:
        summary["switch_conditions"] = stated_conditions(ctx.topology)  # a planned hand-over's decision
    lag = state.get("check_lag", {})
    if lag:
        measured = (lag.get("lag") or {}).get("statement")
        summary["lag"] = measured or lag.get("data_at_risk", {}).get("statement")
    if "verify_secondary_currency" in state:
        currency = state["verify_secondary_currency"]
        summary["currency"] = currency.get("statement") or currency.get("why")
        summary["current"] = currency.get("current", False)
    if "translate_consumer_offsets" in state:
        translated = state["translate_consumer_offsets"]
        # after a resolution, what was applied (with the chosen positions' bounds) is the statement
        summary["translation"] = (state.get("apply_translation_resolutions", {}).get("summary")
                                  or translated.get("summary"))
        if step.name == resolution.GATE:
            summary["refused_translations"] = translated.get("refused", [])
            summary["resolution_options"] = translated.get("resolution_options", {})
    if ctx.unplanned:
        summary["data_at_risk_records"] = state.get("data_at_risk_records")
    elif step.name == "approve-switch":
        summary["data_at_risk_records"] = 0
    if "find_divergent_tail" in state:
        summary["divergent_records"] = state["find_divergent_tail"]["count"]
        summary["divergent_policy"] = ctx.divergent_policy
    return summary


def execute(runbook: Runbook, ctx: RunContext, *, auto_approve: bool = False, notifier=None,
            poll_seconds: float = GATE_POLL_SECONDS, batch=None) -> dict:
    """Run every step in order; compensate and re-raise on failure before the switch.

    `batch` (flows/evacuate.py): a member of an evacuation; it answers the gates for the whole
    batch and runs the batch's own steps (`batch.handles(step)`)."""
    with kept_admin_clients():  # one admin client per region for the run, not one per check
        return _execute(runbook, ctx, auto_approve=auto_approve, notifier=notifier,
                        poll_seconds=poll_seconds, batch=batch)


def _execute(runbook: Runbook, ctx: RunContext, *, auto_approve: bool, notifier, poll_seconds: float,
             batch) -> dict:
    done = ctx.state.pop("_done", set())
    started = time.monotonic()
    try:
        for step in runbook.steps:
            if step.name in done:
                ctx.log(f"{step.name}: done in an earlier attempt of this run, skipped")
                continue
            if not ctx.option(step.when):
                continue
            if step.kind is Kind.GATE:
                summary = gate_summary(ctx, step)
                with ctx.audit.step(ctx.run_id, step.name, region=ctx.new_owner) as record:
                    record.evidence = {"shown": summary}
                    if batch is not None:
                        record.evidence |= batch.gate(ctx, step, summary)
                    else:
                        record.evidence |= request_approval(ctx, step, summary, auto_approve=auto_approve,
                                                            notifier=notifier, poll_seconds=poll_seconds)
                ctx.state[step.name] = record.evidence  # e.g. the choices of approve-translation-resolutions
            elif batch is not None and batch.handles(step):
                with ctx.audit.step(ctx.run_id, step.name, region=ctx.new_owner) as record:
                    record.evidence = batch.hold(ctx, step)
                ctx.state[step.name] = record.evidence
            else:
                # quote: Prefect would otherwise walk the whole context (every earlier step's
                # evidence) to track task inputs, before every task: seconds inside the fence.
                STEP_TASKS[step.name](quote(ctx))
    except AuditUnwritable as error:
        _stop_for_audit(ctx, error)
        raise
    except BaseException as error:
        ctx.state["error"] = f"{type(error).__name__}: {error}"
        try:
            if not ctx.state.get("switched"):
                _compensate(ctx, str(error))
                if notifier is not None:  # the request message says what compensation ran
                    notifier.mark_compensated(ctx)
            ctx.audit.finish_run(ctx.run_id, "failed", actor=ctx.operator, detail=ctx.state["error"])
        except AuditUnwritable as audit_error:
            _stop_for_audit(ctx, audit_error)
            raise audit_error from error
        _publish_artifacts(ctx, "failed", time.monotonic() - started)
        outcome = ctx.state.get("compensation", {}).get("statement")
        if outcome and isinstance(error, BatonError):  # the operator's one line says where things stand
            error.args = (f"{str(error).rstrip('.')}. Compensation (read back): {outcome}",)
        elif ctx.state.get("switched") and isinstance(error, BatonError):
            error.args = (f"{str(error).rstrip('.')}. Write authority is on {ctx.owner_now} (the switch "
                          f"stands); {ctx.standby_now} is not protected yet: run `baton reprotect` once "
                          "that is fixed",)
        raise
    ctx.audit.finish_run(ctx.run_id, "succeeded", actor=ctx.operator)
    return _publish_artifacts(ctx, "succeeded", time.monotonic() - started)


def _stop_for_audit(ctx: RunContext, error: AuditUnwritable) -> None:
    """Evidence cannot be recorded: change nothing more (no compensation, which could not be
    recorded either), keep the lock, and say how to continue."""
    ctx.log(f"stopping: {error}")
    error.args = (f"{error}. The run stopped here and changed nothing it could not record; it keeps "
                  f"its lock. Fix the database, then `baton {ctx.runbook} --resume {ctx.run_id}`",)


def _changed_anything(ctx: RunContext, runbook: Runbook) -> bool:
    """Whether the run began a step that changes state (read from the audit DB, not from flags)."""
    changing = {s.name for s in runbook.steps if s.kind in (Kind.CHANGE, Kind.IRREVERSIBLE)}
    return any(s.name in changing for s in ctx.audit.run(ctx.run_id).steps)


def _compensate(ctx: RunContext, why: str) -> None:
    """Return to the last safe state with the one reconciler (baton/steps/recover.py)."""
    if not _changed_anything(ctx, RUNBOOKS[ctx.runbook]):
        with ctx.audit.step(ctx.run_id, "compensate", region=ctx.old_owner) as record:
            record.evidence = {"why": why, "actions": ["none: the run had changed nothing"],
                               "pending": []}
        ctx.state["compensation"] = record.evidence
        return
    try:
        recovery = recover_task(quote(ctx), why)
    except AuditUnwritable:
        raise
    except BatonError as e:  # recorded as a failed step `compensate`; the original error stays the headline
        ctx.state["compensation"] = {"failed": str(e), "statement": f"recovery FAILED: {e}. "
                                     f"Run `baton recover --run {ctx.run_id}` once that is fixed"}
        ctx.log(f"compensation FAILED: {e}")
        return
    ctx.state["compensation"] = recovery.as_dict()
    ctx.log("compensation: " + recovery.statement())


def run_summary(ctx: RunContext, status: str, seconds: float) -> dict:
    view = ctx.audit.run(ctx.run_id)
    authority = ctx.authority.current(ctx.domain)
    return {
        "run_id": ctx.run_id, "runbook": ctx.runbook, "domain": ctx.domain, "status": status,
        "unplanned": ctx.unplanned, "owner_before": ctx.old_owner,
        "owner_after": authority.owner if authority.state == State.ACTIVE else None,
        "authority": authority.describe(), "epoch": authority.epoch,
        "wall_seconds": round(seconds, 2), "error": ctx.state.get("error"),
        "compensation": ctx.state.get("compensation", {}).get("actions"),
        "steps": [{"name": s.name, "status": s.status,
                   "seconds": round((s.ended_at - s.started_at).total_seconds(), 3)} for s in view.steps],
        "approvals": [{"gate": a.gate, "decision": a.decision, "approver": a.approver,
                       "channel": a.channel, "identity_verified": a.identity_verified}
                      for a in view.approvals],
    }


MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]()|~])")  # values never start a line: # - + are safe


def escape_markdown(value: object) -> str:
    """Text shown literally in a Markdown artifact: no raw HTML (&, <, > as entities), no
    links, images or emphasis (punctuation backslash-escaped), one line."""
    text = " ".join(str(value).split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return MARKDOWN_SPECIAL.sub(r"\\\1", text)


def _publish_artifacts(ctx: RunContext, status: str, seconds: float) -> dict:
    summary = run_summary(ctx, status, seconds)
    try:
        lines = [f"# {ctx.runbook} of `{ctx.domain}`: {status}", "",
                 f"- run: `{ctx.run_id}` ({'unplanned' if ctx.unplanned else 'planned'})",
                 f"- authority: {summary['authority']}", f"- wall time: {seconds:.1f} s", ""]
        if summary["error"]:  # carries reasons typed by people: shown literally
            lines += [f"- error: {escape_markdown(summary['error'])}",
                      f"- compensation: {escape_markdown(summary['compensation'])}", ""]
        lines += ["| step | status | seconds |", "|---|---|---|"]
        lines += [f"| {s['name']} | {s['status']} | {s['seconds']} |" for s in summary["steps"]]
        if summary["approvals"]:  # who decided each gate, and how far that identity is proven
            lines += ["", "| gate | decision | by | channel | identity |", "|---|---|---|---|---|"]
            lines += [f"| {a['gate']} | {a['decision']} | {escape_markdown(a['approver'])} | "
                      f"{a['channel']} | {'verified' if a['identity_verified'] else 'unverified'} |"
                      for a in summary["approvals"]]
        key = ctx.runbook.replace("_", "-")
        create_markdown_artifact("\n".join(lines), key=f"{key}-summary", description=ctx.run_id)
        entries = ctx.state.get("translate_consumer_offsets", {}).get("translation", {}).get("entries", [])
        if entries:
            create_table_artifact(
                [{k: e.get(k) for k in ("group", "topic", "mirror_topic", "partition", "owner_offset",
                                        "translated_offset", "method", "duplicates_bound", "missing")}
                 for e in entries], key=f"{key}-offsets", description=ctx.run_id)
    except Exception as e:  # artifacts are a view; the audit DB holds the record
        get_run_logger().warning(f"could not publish artifacts: {e}")
    return summary


def run_runbook(name: str, **options) -> dict:
    """Open (or resume) a run of a runbook and execute it; used by every flow."""
    logger = get_run_logger()
    runbook = RUNBOOKS[name]
    auto_approve = options.pop("auto_approve", False)
    notifier = options.pop("notifier", None)
    trigger = options.pop("trigger", None) or _trigger()
    options["operator"] = starter(options.get("operator"), trigger)
    if auto_approve:  # the topology's policy, checked before any step (nothing is recorded yet)
        # A resumed run keeps the options it was opened with: then every gate counts.
        known = {} if options.get("resume_run_id") else {
            k: options[k] for k in ("unplanned", "divergent_policy") if k in options}
        topology = load_topology(options.get("config"), options.get("domain"))
        refusal = auto_approve_refusal(topology, runbook.gates_asked(**known))
        if refusal:
            raise UsageError(refusal)
    ctx = open_run(runbook, log=logger.info, trigger=trigger, **options)
    if notifier is None and not auto_approve:
        from prefect.runtime import flow_run

        from baton.approvals.slack import SlackNotifier

        notifier = SlackNotifier.for_topology(ctx.topology, flow_run_id=flow_run.id)
    return execute(runbook, ctx, auto_approve=auto_approve, notifier=notifier)
