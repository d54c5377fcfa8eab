"""The evacuation flow: fail over every domain a region owns, as one approved batch.

Launched from the Prefect UI (deployment `evacuate`) or `baton evacuate --from REGION`. Each
domain is its own `failover` run (its lock, evidence and compensation, resumable and
recoverable on its own), executed with the `evacuate` runbook's steps in its own thread; the
runs meet at each gate (one decision, asked once, recorded on every run) and, with
all-or-nothing, before the switch. Which runs form the batch is recorded on each run as step
`evacuation_batch` (the evacuation id and every member run).
"""

from __future__ import annotations

import contextvars
import threading
import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from baton.approvals.policy import auto_approve_refusal
from baton.errors import ApprovalRejected, StepFailed, UsageError
from baton.evacuation import (
    MOVED,
    Batch,
    PerMember,
    all_or_nothing_refusal,
    domain_result,
    new_evacuation_id,
    recorded_authority,
    result_line,
    select_domains,
)
from baton.settings import load_topologies
from baton.steps import resolution
from baton.steps.context import RunContext
from flows.gates import GATE_POLL_SECONDS, request_approval
from flows.runner import _trigger, escape_markdown, execute, open_run, starter
from runbooks import EVACUATE, FAILOVER
from runbooks.evacuate import HOLD_FOR_BATCH

BATCH_STEP = "evacuation_batch"


def _domain_line(domain: str, ctx: RunContext, summary: dict) -> str:
    """One domain's evidence at a batch gate."""
    from flows.gates import _translations

    groups = ctx.state.get("check_lag", {}).get("groups") or {}
    parts = [f"{domain} (run {ctx.run_id})", summary.get("planned_change", "?"),
             f"lag: {summary.get('lag') or 'not measured'}",
             f"records at risk: {summary.get('data_at_risk_records', '0 required once fenced')}",
             f"readiness: {summary.get('readiness') or 'not available'}"]
    if summary.get("currency"):
        parts.append(f"currency: {summary['currency']}")
    if summary.get("translation"):  # after the fence: what was translated, duplicates bound, missing
        parts.append(f"translations: {_translations(summary)}")
    elif groups:
        parts.append("groups: " + ", ".join(f"{g} {s.get('state', s.get('error', '?'))}"
                                            for g, s in groups.items()))
    return "; ".join(str(p) for p in parts)


class Evacuation:
    """The batch side of the member runs: execute(..., batch=this) asks it at every gate and at
    the hold before the switch."""

    def __init__(self, evacuation_id: str, contexts: dict[str, RunContext], *, all_or_nothing: bool,
                 auto_approve: bool, notifier=None, poll_seconds: float = GATE_POLL_SECONDS):
        self.id = evacuation_id
        self.contexts = contexts
        self.all_or_nothing = all_or_nothing
        self.auto_approve = auto_approve
        self.notifier = notifier
        self.poll_seconds = poll_seconds
        self.batch = Batch(list(contexts), self._decide, order=[s.name for s in EVACUATE.steps])

    def handles(self, step) -> bool:
        return step.name == HOLD_FOR_BATCH.name

    def gate(self, ctx: RunContext, step, summary: dict) -> dict:
        return self.batch.arrive(ctx.domain, step.name, (ctx, step, summary))

    def hold(self, ctx: RunContext, step) -> dict:
        if not self.all_or_nothing:
            return {"evacuation": self.id, "all_or_nothing": False, "waited_seconds": 0.0}
        started = time.monotonic()
        answer = self.batch.arrive(ctx.domain, step.name)
        return answer | {"waited_seconds": round(time.monotonic() - started, 3)}

    def _decide(self, point: str, payloads: dict, failed: dict[str, str]) -> dict:
        if point == resolution.GATE:  # each domain's own groups and choices: asked per domain
            return self._resolve(payloads)
        if point == HOLD_FOR_BATCH.name:
            refusal = all_or_nothing_refusal(failed, "their switch")
            if refusal:
                raise StepFailed(refusal)
            return {"evacuation": self.id, "all_or_nothing": True, "domains_at_switch": sorted(payloads)}
        if self.all_or_nothing and (refusal := all_or_nothing_refusal(failed, f"gate {point}")):
            raise ApprovalRejected(f"{refusal}; nobody was asked")
        return self._approve(point, payloads, failed)

    def summary(self, gate: str, payloads: dict, failed: dict[str, str]) -> dict:
        """The one gate summary for the batch: every domain's evidence, and who dropped out."""
        members = sorted(payloads)
        lead, _, first = payloads[members[0]]
        summary = {key: first.get(key) for key in ("gate", "started_by", "unplanned", "reason",
                                                   "switch_conditions")}
        summary |= {"runbook": "evacuate", "domain": ", ".join(members), "evacuation": self.id,
                    "planned_change": f"{lead.old_owner} -> {lead.new_owner} for {len(members)} "
                                      f"domain(s): {', '.join(members)}",
                    "authority_now": "; ".join(f"{m}: {payloads[m][2].get('authority_now')}"
                                               for m in members),
                    "domains": [_domain_line(m, payloads[m][0], payloads[m][2]) for m in members]}
        if not summary["unplanned"]:
            summary["data_at_risk_records"] = 0
        else:  # each domain's own statement is in its line; the total where every one is known
            at_risk = [payloads[m][2].get("data_at_risk_records") for m in members]
            summary["data_at_risk_records"] = (sum(at_risk) if all(isinstance(r, int) for r in at_risk)
                                               else "unknown for some domain (see each domain)")
        if failed:
            summary["failed_domains"] = [f"{d}: {why}" for d, why in sorted(failed.items())]
        return summary

    def _approve(self, gate: str, payloads: dict, failed: dict[str, str]) -> dict:
        members = sorted(payloads)
        lead, step, _ = payloads[members[0]]
        summary = self.summary(gate, payloads, failed)
        try:
            answer = request_approval(lead, step, summary, auto_approve=self.auto_approve,
                                      notifier=self.notifier, poll_seconds=self.poll_seconds)
        finally:  # approved, rejected or timed out: the one decision, on every member's run
            self._fan_out(lead, gate, [self.contexts[m] for m in members[1:]])
        # every domain's gate evidence holds what the approver saw for the whole batch
        return answer | {"batch": {"evacuation": self.id, "decided_on_run": lead.run_id,
                                   "domains": members, "shown": summary}}

    def _resolve(self, payloads: dict) -> PerMember:
        """approve-translation-resolutions, one domain after the other (every other domain waits
        at a barrier meanwhile, so only one pause is open at a time)."""
        answers = PerMember()
        for member in sorted(payloads):
            ctx, step, summary = payloads[member]
            try:
                answers[member] = request_approval(
                    ctx, step, summary | {"evacuation": self.id}, auto_approve=self.auto_approve,
                    notifier=self.notifier, poll_seconds=self.poll_seconds, key_suffix=f"-{member}")
            except (ApprovalRejected, StepFailed) as e:
                answers[member] = e
        return answers

    def _fan_out(self, lead: RunContext, gate: str, others: list[RunContext]) -> None:
        decisions = [a for a in lead.audit.run(lead.run_id).approvals
                     if a.gate == gate and a.decision in ("approved", "rejected", "timed_out")]
        if not decisions:
            return
        decision = decisions[-1]
        for ctx in others:
            ctx.audit.record_approval(
                ctx.run_id, gate, decision.decision, decision.approver, channel=decision.channel,
                identity_verified=decision.identity_verified,
                comment=f"batch approval of evacuation {self.id}: decided once for "
                        f"{len(others) + 1} domains, recorded first on run {lead.run_id} "
                        f"(approval {decision.id}): {decision.comment}"[:2000])


def _member(evacuation: Evacuation, ctx: RunContext, results: dict) -> None:
    """One domain's run, in its own thread (with the flow run's context copied in)."""
    try:
        results[ctx.domain] = {"summary": execute(EVACUATE, ctx, batch=evacuation)}
        evacuation.batch.leave(ctx.domain)
    except BaseException as e:  # noqa: BLE001 - recorded by execute; reported per domain
        results[ctx.domain] = {"error": f"{type(e).__name__}: {e}"}
        evacuation.batch.leave(ctx.domain, str(e).split(". Compensation")[0])


def _open_members(selection, config, *, unplanned, reason, operator, trigger, log) -> dict[str, RunContext]:
    """Open every member run (each takes its domain's lock), concurrently: each reads its
    replication state, seconds per domain when the region is dead. If one cannot start, close
    the ones that did as aborted: nothing was changed."""
    from concurrent.futures import ThreadPoolExecutor

    topologies = {t.domain.name: t for t in selection.members}  # the file is read once, not per member

    def open_one(name: str):
        try:
            return open_run(FAILOVER, config=config, domain=name, reason=reason, unplanned=unplanned,
                            operator=operator, trigger=trigger, log=lambda m: log(f"[{name}] {m}"),
                            topology=topologies[name])
        except BaseException as e:  # noqa: BLE001 - returned, raised below once every run is closed
            return e

    names = selection.names
    # Each in a copy of the flow's context: a pool thread starts with an empty one, and Prefect
    # read no API URL there (its settings live in context variables), so the members' log lines
    # went to a temporary local server instead of this flow run's.
    contexts = {name: contextvars.copy_context() for name in names}
    with ThreadPoolExecutor(max_workers=min(8, len(names))) as pool:
        opened = dict(zip(names, pool.map(lambda n: contexts[n].run(open_one, n), names), strict=True))
    errors = [e for e in opened.values() if isinstance(e, BaseException)]
    if errors:
        for ctx in opened.values():
            if not isinstance(ctx, BaseException):
                ctx.audit.finish_run(ctx.run_id, "aborted", actor=operator,
                                     detail=f"the evacuation did not start: {errors[0]}")
        raise errors[0]
    return opened


@flow(name="evacuate", log_prints=True, retries=0)
def evacuate(from_region: str, config: str | None = None, all_or_nothing: bool = False,
             auto_approve: bool = False, reason: str = "", operator: str | None = None,
             domains: list[str] | None = None, unplanned: bool = False) -> dict:
    """Fail over every domain `from_region` owns, in parallel, with one approval per gate.

    Args:
        from_region: the region to evacuate (the domains whose recorded authority is ACTIVE there)
        config: topology file holding the domains (default: $BATON_CONFIG, ./baton.yaml or the lab's)
        all_or_nothing: no domain switches unless every domain reached its switch
        auto_approve: answer the gates as the operator (lab, or gates the topology names)
        reason: why the region is evacuated
        operator: who starts the evacuation (default: the OS user)
        domains: only these of the region's domains (default: every domain it owns)
        unplanned: the region is unreachable (needs a reason): batch gates approve-failover and
            approve-switch, each domain's data at risk listed; translation resolutions per domain
    """
    logger = get_run_logger()
    if unplanned and not reason:
        raise UsageError("an unplanned evacuation needs a reason: say what declared the region unavailable")
    trigger = _trigger()
    operator = starter(operator, trigger)
    selection = select_domains(load_topologies(config), from_region, recorded_authority, domains)
    if auto_approve:
        for topology in selection.members:
            refusal = auto_approve_refusal(topology, EVACUATE.gates_asked(unplanned=unplanned))
            if refusal:
                raise UsageError(f"{topology.domain.name}: {refusal}")
    evacuation_id = new_evacuation_id(from_region)
    logger.info(f"{evacuation_id}: evacuating {from_region}: {', '.join(selection.names)}"
                + "".join(f"; {d} left out: {why}" for d, why in selection.skipped.items()))
    reason = reason or f"evacuation of {from_region}"
    contexts = _open_members(selection, config, unplanned=unplanned, reason=f"{evacuation_id}: {reason}",
                             operator=operator,
                             trigger=trigger, log=logger.info)
    members = {name: ctx.run_id for name, ctx in contexts.items()}
    for ctx in contexts.values():
        with ctx.audit.step(ctx.run_id, BATCH_STEP, region=ctx.new_owner) as record:
            record.evidence = {"evacuation": evacuation_id, "from_region": from_region,
                               "unplanned": unplanned, "all_or_nothing": all_or_nothing, "members": members,
                               "skipped": selection.skipped}
    notifier = None
    if not auto_approve:
        from prefect.runtime import flow_run

        from baton.approvals.slack import SlackNotifier

        notifier = SlackNotifier.for_topology(selection.members[0], flow_run_id=flow_run.id)
    evacuation = Evacuation(evacuation_id, contexts, all_or_nothing=all_or_nothing,
                            auto_approve=auto_approve, notifier=notifier)
    started = time.monotonic()
    results: dict[str, dict] = {}
    threads = [threading.Thread(target=contextvars.copy_context().run, name=f"evacuate-{name}",
                                args=(_member, evacuation, ctx, results), daemon=True)
               for name, ctx in contexts.items()]
    for thread in threads:
        thread.start()
    evacuation.batch.serve()
    for thread in threads:
        thread.join()
    outcome = _outcome(evacuation_id, from_region, contexts, results, all_or_nothing,
                       time.monotonic() - started)
    _publish(outcome, logger)
    if not outcome["all_moved"]:
        failure = StepFailed(f"{evacuation_id}: {outcome['moved']} of {len(contexts)} domain(s) moved: "
                             + "; ".join(result_line(r) for r in outcome["domains"]))
        failure.outcome = outcome  # the drill reads each domain's result from it
        raise failure
    return outcome


def _outcome(evacuation_id: str, region: str, contexts: dict[str, RunContext], results: dict,
             all_or_nothing: bool, seconds: float) -> dict:
    domains = []
    for name, ctx in sorted(contexts.items()):
        result = results.get(name, {"error": "the domain's thread did not report"})
        summary = result.get("summary") or {}
        row = domain_result(name, target=ctx.new_owner, source=ctx.old_owner,
                            authority=ctx.authority.current(name), run_id=ctx.run_id,
                            error=result.get("error"),
                            compensation=ctx.state.get("compensation", {}).get("statement"))
        row["wall_seconds"] = summary.get("wall_seconds")
        domains.append(row)
    moved = sum(1 for d in domains if d["outcome"] == MOVED)
    return {"evacuation": evacuation_id, "from_region": region, "all_or_nothing": all_or_nothing,
            "domains": domains, "moved": moved, "all_moved": moved == len(domains),
            "wall_seconds": round(seconds, 2)}


def _publish(outcome: dict, logger) -> None:
    lines = [f"# {outcome['evacuation']}: {outcome['moved']} of {len(outcome['domains'])} domain(s) moved",
             "", f"- from: {outcome['from_region']}; all-or-nothing: {outcome['all_or_nothing']}; "
                 f"wall time {outcome['wall_seconds']} s", "",
             "| domain | outcome | authority | run | why |", "|---|---|---|---|---|"]
    lines += [f"| {d['domain']} | {d['outcome']} | {d['authority']} | `{d['run_id']}` | "
              f"{escape_markdown(d['why'] or '')} |" for d in outcome["domains"]]
    for line in lines[6:]:
        logger.info(line)
    try:
        create_markdown_artifact("\n".join(lines), key="evacuate-summary", description=outcome["evacuation"])
    except Exception as e:  # noqa: BLE001 - artifacts are a view; the audit DB holds the record
        logger.warning(f"could not publish the evacuation artifact: {e}")
