"""The one way back to a run's last safe state, computed from what is true now.

The last safe state of a run that did not hand authority over is: its old owner ACTIVE (at a
new epoch if the run fenced it), no fence ACLs on the old owner, and replication old owner ->
new owner RUNNING (if it ran when the run started, as a failover requires, or the run started
it). Each part is read from where it lives (the authority record in the audit DB, the ACLs in
the old owner region, the connector states in Connect), changed only when it differs, and read
back. Nothing comes from in-memory flags, so the reconciler is idempotent and can run again at
any time: from the runner's compensation, from `baton recover --run RUN`, from `baton authority
unlock`, and from the lease keeper while parts are pending.

A part that cannot be read or changed now (a region or Connect unreachable) is `pending`,
with the reason; the authority stays FENCED while the old owner's fence cannot be verified
gone, so `baton authority show` never says "accepts writes" where ACLs still deny them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, timedelta

from sqlmodel import select

from baton.audit.models import Run
from baton.audit.models import Step as StepRow
from baton.audit.store import utcnow
from baton.authority import State, change_authority
from baton.errors import BatonError, RegionUnreachable, ReplicationError, StepFailed, UsageError
from baton.kafka.admin import check_reachable
from baton.kafka.fencing import present_bindings, unfence
from baton.replication import engine_for

RECOVERY_STEPS = ("compensate", "recover")
PROBE_SECONDS = 3.0  # how long to ask a region that may be down before calling a part pending
REPLICATION_WAIT_SECONDS = 60.0
STOP_SETTLE_SECONDS = 90.0  # how long a stop request Connect did not answer may still be applied


@dataclass
class Part:
    """One part of the safe state: `ok` (already so), `fixed` (changed now, read back) or `pending`."""

    name: str
    status: str
    detail: str
    where: str = ""  # the region (or "connect") that must answer before a pending part can be done
    action: str = ""  # what was changed, in a few words (for a `fixed` part)
    seen_stopped: list[str] = field(default_factory=list)  # connectors read STOPPED (replication)

    def as_dict(self) -> dict:
        return {"part": self.name, "status": self.status, "detail": self.detail, "where": self.where} | (
            {"seen_stopped": self.seen_stopped} if self.seen_stopped else {})


@dataclass
class Recovery:
    run_id: str
    runbook: str
    old_owner: str
    new_owner: str
    parts: list[Part] = field(default_factory=list)
    authority: str = ""  # the authority as read at the end
    moved: bool = False  # authority is ACTIVE on the new owner: there is nothing to return to
    stop_in_flight: dict | None = None  # a stop this run requested, settled before the restart

    @property
    def pending(self) -> list[Part]:
        return [p for p in self.parts if p.status == "pending"]

    @property
    def converged(self) -> bool:
        return not self.pending and not self.moved

    def statement(self) -> str:
        """One line an operator can act on, from what was read."""
        if self.moved:
            return (f"authority is {self.authority}: this run already handed it to {self.new_owner}; "
                    f"there is no earlier state to return to")
        if self.converged:
            return (f"back in the last safe state: authority {self.authority}, {self.old_owner} "
                    f"unfenced, replication {self.old_owner} -> {self.new_owner} RUNNING")
        return (f"NOT yet in the last safe state (authority {self.authority}); pending: "
                + "; ".join(f"{p.name}: {p.detail}" for p in self.pending)
                + f". Run `baton recover --run {self.run_id}` once that is fixed "
                "(the lease keeper retries it too)")

    def as_dict(self) -> dict:
        return {"run_id": self.run_id, "old_owner": self.old_owner, "new_owner": self.new_owner,
                "authority": self.authority, "moved": self.moved, "converged": self.converged,
                "parts": [p.as_dict() for p in self.parts],
                "actions": [p.action for p in self.parts if p.action]
                or ["none: every part was already in its safe state"],
                "pending": [p.as_dict() for p in self.pending], "statement": self.statement()} | (
                    {"stop_in_flight": self.stop_in_flight} if self.stop_in_flight else {})


def run_plan(audit, run_id: str) -> tuple[str, dict]:
    """(runbook, recorded plan) of a run: its owners and the replication state it started from."""
    view = audit.run(run_id)
    plan = next((json.loads(s.evidence) for s in view.steps if s.name == "run_plan"), None)
    if plan is None:
        raise UsageError(f"run {run_id} is a {view.run.runbook} run with no recorded plan: it never "
                         "changed authority, so there is nothing to recover")
    return view.run.runbook, plan


def replication_state(topology, source: str, target: str) -> str:
    """The flow's state as Connect reports it now (UNKNOWN if Connect does not answer)."""
    try:
        return engine_for(topology).status(source, target).state
    except (ReplicationError, OSError):
        return "UNKNOWN"


def _replication_wanted(audit, run_id: str, runbook: str, plan: dict) -> bool:
    """Replication old -> new belongs to the safe state if it ran when the run started, or this
    run started it (a failback's reverse replication). A failover requires it running anyway;
    a failback must not start it before the returning region's divergent tail is handled."""
    started = any(s.name == "start_reverse_replication" and s.status == "succeeded"
                  for s in audit.run(run_id).steps)
    at_start = plan.get("replication_at_start", "RUNNING" if runbook == "failover" else "UNKNOWN")
    return started or at_start == "RUNNING"


def _acl_part(topology, region: str, log) -> Part:
    name = f"acls on {region}"
    try:
        check_reachable(region, topology.regions[region], timeout=PROBE_SECONDS)
        present = present_bindings(topology, region)
        if not present:
            return Part(name, "ok", "no fence ACLs (read back)")
        result = unfence(topology, region)
        log(f"recover: removed {result['changed']} fence ACL(s) on {region}")
        return Part(name, "fixed", f"removed {result['changed']} DENY ACL(s), read back",
                    action=f"unfenced {region}")
    except BatonError as e:  # RegionUnreachable, FencingError: the fence may still be there
        return Part(name, "pending", f"{region} did not answer, its fence cannot be verified gone: "
                                     f"{_first_line(e)}", where=region)


def _unanswered_stop(steps):
    """When a stop request of the run went unanswered (Connect may still apply it later), the
    time its step ended; None if every stop the run sent was answered. From its audit DB steps."""
    ended = [s.ended_at for s in steps if s.status == "failed" and s.error
             and ("/stop" in s.error or "did not reach STOPPED" in s.error)]
    return max(ended) if ended else None


def _seen_stopped_since(steps, since) -> set[str]:
    """Connectors an earlier recovery of the run read STOPPED after `since` (from its evidence)."""
    seen: set[str] = set()
    for step in steps:
        if step.name in RECOVERY_STEPS and step.started_at >= since and step.evidence:
            for part in json.loads(step.evidence).get("parts", []):
                seen.update(part.get("seen_stopped", []))
    return seen


def _replication_part(topology, audit, run_id: str, source: str, target: str, log,
                      unsettled_stop: bool = False) -> Part:
    name = f"replication {source} -> {target}"
    try:
        engine = engine_for(topology)
        status = engine.status(source, target)
        state = status.state
        stopped = sorted(c.name for c in status.components if c.state == "STOPPED")
        if state == "RUNNING":
            part = Part(name, "ok", "RUNNING (read from Connect)")
        else:
            log(f"recover: replication {source} -> {target} is {state}; starting it")
            status = engine.start(source, target, wait_seconds=REPLICATION_WAIT_SECONDS, keep_config=True)
            part = Part(name, "fixed", f"was {state}, now {status.state} (read from Connect)",
                        action=f"restarted replication {source} -> {target}")
        part.seen_stopped = stopped
    except (ReplicationError, OSError) as e:
        return Part(name, "pending", f"not RUNNING and could not be started: {_first_line(e)}",
                    where="connect")
    steps = audit.run(run_id).steps
    sent = _unanswered_stop(steps)
    stop = utcnow() if unsettled_stop else sent
    if stop is None:
        return part
    # A stop is one target-state record per connector that copies data, and a run that did not
    # move authority sent one (the switch's; reconcile asks again only after the switch): once
    # each connector was read STOPPED after it, it was applied and cannot apply again; a restart
    # since then stands. Until then Connect may apply it after this start, so it is watched for
    # up to STOP_SETTLE_SECONDS (a partial application does not end the wait).
    targets = {c.name for c in status.components if c.writes_data}
    seen = set(stopped) | (_seen_stopped_since(steps, sent) if sent is not None else set())
    if targets and targets <= seen:
        part.detail += (f"; the unanswered stop this run sent was since read applied to "
                        f"{', '.join(sorted(targets))}: it cannot apply again")
        return part
    settled = stop.replace(tzinfo=stop.tzinfo or UTC) + timedelta(seconds=STOP_SETTLE_SECONDS)
    if utcnow() < settled:
        part.status, part.where = "pending", "connect"
        part.detail += (f"; a stop request this run sent went unanswered and Connect may still apply "
                        f"it: checked again until {settled:%H:%M:%S} UTC")
    return part


def _stopped_part(topology, source: str, target: str, log) -> Part:
    """After a switch: replication source (old owner) -> target STOPPED, read from Connect."""
    name = f"replication {source} -> {target}"
    try:
        engine = engine_for(topology)
        state = engine.status(source, target).state
        if state == "STOPPED":
            return Part(name, "ok", "STOPPED after the switch (read from Connect)")
        log(f"recover: replication {source} -> {target} is {state} after the switch; stopping it")
        status = engine.stop(source, target, wait_seconds=REPLICATION_WAIT_SECONDS)
    except (ReplicationError, OSError) as e:
        return Part(name, "pending", f"not STOPPED after the switch and could not be stopped: "
                                     f"{_first_line(e)}", where="connect")
    return Part(name, "fixed", f"was {state}, now {status.state} (read from Connect)",
                action=f"stopped replication {source} -> {target}")


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def reconcile_to_safe_state(topology, audit, store, run_id: str, *, actor: str, why: str,
                            log: Callable[[str], None] | None = None,
                            stop_in_flight: dict | None = None) -> Recovery:
    """Converge the domain to the run's last safe state (see the module docstring); idempotent."""
    log = log or (lambda message: None)
    runbook, plan = run_plan(audit, run_id)
    old, new = plan["old_owner"], plan["new_owner"]
    recovery = Recovery(run_id, runbook, old, new, stop_in_flight=stop_in_flight)
    domain = topology.domain.name
    current = store.current(domain)
    if current is not None and current.owner == new and current.state == State.ACTIVE:
        # Nothing to return to; the switch's own request to stop replication old -> new may not
        # have taken effect if the run failed before reconcile checked it: finished here.
        recovery.moved, recovery.authority = True, current.describe()
        recovery.parts.append(_stopped_part(topology, old, new, log))
        return recovery
    acls = _acl_part(topology, old, log)
    recovery.parts.append(acls)
    if _replication_wanted(audit, run_id, runbook, plan):
        unsettled = bool(stop_in_flight and stop_in_flight.get("error"))
        recovery.parts.append(_replication_part(topology, audit, run_id, old, new, log, unsettled))
    else:
        was = plan.get("replication_at_start", "not recorded")
        recovery.parts.append(Part(f"replication {old} -> {new}", "ok",
                                   f"left as it is: it was {was} when the run started"))
    recovery.parts.append(_authority_part(topology, store, run_id, old, acls, actor, why, log))
    recovery.authority = store.current(domain).describe()
    return recovery


def _authority_part(topology, store, run_id, old, acls: Part, actor, why, log) -> Part:
    current = store.current(topology.domain.name)
    if current.state == State.ACTIVE and current.owner == old:
        return Part("authority", "ok", f"{current.describe()} (audit DB)")
    if current.run_id != run_id:  # e.g. a manual fence, or another run: not ours to undo
        return Part("authority", "pending", f"{current.describe()} was set by "
                    f"{'run ' + current.run_id if current.run_id else current.changed_by}, not this run: "
                    f"recover that one (`baton recover --run {current.run_id}`)")
    if acls.status == "pending":
        # ACTIVE while DENY ACLs may remain would tell clients a region accepts writes it refuses.
        return Part("authority", "pending", f"stays {current.describe()} until the fence on {old} is "
                                            "verified gone")
    result = change_authority(topology, current.epoch, old, State.ACTIVE, run_id=run_id, changed_by=actor,
                              reason=f"recovery to the last safe state: {why}", store=store)
    unpublished = {r: e for r, e in result.published.items() if e}
    log(f"recover: authority {result.authority.describe()}")
    return Part("authority", "fixed", f"ACTIVE on {old} at epoch {result.authority.epoch}"
                + (f" (not yet published to {', '.join(unpublished)})" if unpublished else ""),
                action=f"authority ACTIVE on {old} at epoch {result.authority.epoch}")


def record_recovery(audit, recovery: Recovery, name: str, started_at) -> None:
    """Store the outcome as step `name` of the run: failed (naming what is pending) unless converged."""
    error = None if recovery.converged or recovery.moved else "pending: " + "; ".join(
        f"{p.name}: {p.detail}" for p in recovery.pending)
    audit.record_step(recovery.run_id, name, "succeeded" if error is None else "failed", started_at,
                      utcnow(), recovery.as_dict(), error=error, region=recovery.old_owner)


def recover_run(topology, audit, store, run_id: str, *, actor: str, why: str, step: str = "recover",
                log: Callable[[str], None] | None = None, stop_in_flight: dict | None = None) -> Recovery:
    """Reconcile and record the outcome as a step of the run (the CLI, unlock and the keeper)."""
    holder = audit.lock_holder(topology.domain.name)
    if holder is not None and holder.run_id != run_id:
        # Another run is changing the domain now: undoing fences or epochs under it would be unsafe.
        raise StepFailed(f"run {holder.run_id} holds the lock of domain {topology.domain.name!r}: "
                         f"recovering run {run_id} now could undo its changes. Wait for it to finish, "
                         f"then run `baton recover --run {run_id}` if anything is still pending")
    started = utcnow()
    try:
        recovery = reconcile_to_safe_state(topology, audit, store, run_id, actor=actor, why=why, log=log,
                                           stop_in_flight=stop_in_flight)
    except BatonError as e:
        audit.record_step(run_id, step, "failed", started, utcnow(), {"why": why},
                          error=f"{type(e).__name__}: {e}")
        raise
    record_recovery(audit, recovery, step, started)
    return recovery


def pending_recoveries(audit, domain: str) -> dict[str, list[dict]]:
    """Runs of the domain whose latest recovery left parts pending -> those parts (for the keeper)."""
    latest: dict[str, StepRow] = {}
    with audit.transaction() as session:
        rows = session.exec(select(StepRow).join(Run, Run.id == StepRow.run_id)
                            .where(Run.domain == domain, StepRow.name.in_(RECOVERY_STEPS))
                            .order_by(StepRow.seq))
        for row in rows:
            latest[row.run_id] = row
    pending = {run_id: json.loads(row.evidence).get("pending") for run_id, row in latest.items()}
    return {run_id: parts for run_id, parts in pending.items() if parts}


def can_retry(topology, parts: list[dict]) -> bool:
    """Whether every region a pending part waits for answers now (Connect is simply tried again)."""
    regions = {p.get("where") for p in parts} & set(topology.regions)
    for region in regions:
        try:
            check_reachable(region, topology.regions[region], timeout=PROBE_SECONDS)
        except RegionUnreachable:
            return False
    return True


def compensate(ctx, why: str) -> Recovery:
    """The runner's way back, in the run's own process: a replication stop the run requested and
    that may still be in flight settles first (Connect could apply it after the restart)."""
    from baton.steps.failover import settle_stop_request

    settled = settle_stop_request(ctx)
    if settled is not None:
        ctx.log(f"compensate: the replication stop this run requested: {settled.get('error') or 'settled'}")
    return recover_run(ctx.topology, ctx.audit, ctx.authority, ctx.run_id, actor=ctx.operator, why=why,
                       step="compensate", log=ctx.log, stop_in_flight=settled)
