"""The failover steps. Each takes the RunContext and returns its evidence (a JSON-able dict).

Irreversible steps check their postcondition first, so re-running a crashed run continues
without repeating them. Waits are bounded by thresholds.step_timeout_seconds and log progress.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from confluent_kafka import KafkaException

from baton.authority import State, change_authority
from baton.authority.control import read as read_control
from baton.errors import AuditUnwritable, BatonError, RegionUnreachable, ReplicationError, StepFailed
from baton.kafka.admin import check_reachable, topic_partitions
from baton.kafka.fencing import fence, is_fenced, unfence
from baton.kafka.reading import committed_offsets, partition_counts, watermarks
from baton.replication import engine_for
from baton.replication.currency import verify_currency
from baton.replication.lag import measure_lag, resolve_scope
from baton.replication.translation import (
    CARRIED_NOTE,
    TranslationReport,
    apply_translation,
    translate_offsets,
)
from baton.replication.upstream import keep_returning_positions, translate_to_upstream
from baton.steps import resolution
from baton.steps.context import RunContext
from baton.steps.switch_conditions import fenced_window_left, readiness_before_fence
from baton.steps.topics import stream_pairs
from baton.watch.store import data_at_risk

PROGRESS_EVERY = 5.0
UNREACHABLE_PROBE_SECONDS = 3.0  # how long to ask a region that may be down before moving on
# Currency is polled from 50 ms, doubling to 1 s: after a fence MM2 copies the last records
# within tens of milliseconds, and every poll while producers are refused is outage.
CURRENCY_FIRST_POLL, CURRENCY_MAX_POLL = 0.05, 1.0
STOP_REQUEST = "replication_stop_request"  # ctx.state: the stop of replication old -> new, in flight
# A planned run that reads its replication DEGRADED without a FAILED part waits this long for
# RUNNING before refusing: a Connect rebalance leaves tasks UNASSIGNED for a moment (seen under
# load: a failback refused right after its failover's reprotect had resumed the reverse source).
DEGRADED_SETTLE_SECONDS = 15.0
STOP_WAIT_SECONDS = 60.0  # a switch that fails before authority moved waits this long for its stop


class PairedEngine:
    """The engine, with explicit topic pairs instead of its naming policy (see steps/topics.py)."""

    def __init__(self, engine, pairs: dict[str, str]):
        self._engine, self._pairs = engine, pairs

    def remote_topic(self, topic: str, source_region: str) -> str:
        return self._pairs[topic]

    def __getattr__(self, name):
        return getattr(self._engine, name)


def _reachable(ctx: RunContext, region: str, timeout: float | None = None):
    """An admin client, or None when the region does not answer. Unplanned runs declare a dead
    region once (ctx.state["unreachable"], in the step's evidence) and never wait on it again."""
    declared = ctx.state.setdefault("unreachable", {})
    if ctx.unplanned and region in declared:
        return None
    try:
        return check_reachable(region, ctx.topology.regions[region], timeout=timeout)
    except RegionUnreachable as e:
        declared[region] = {"at": datetime.now(UTC).isoformat(), "error": str(e)}
        return None


def _declared_unreachable(ctx: RunContext, region: str) -> dict | None:
    return ctx.state.get("unreachable", {}).get(region) if ctx.unplanned else None


def _owner_partitions(ctx: RunContext, admin) -> list[tuple[str, int]]:
    counts = topic_partitions(admin, ctx.topology.domain.topics)
    return [(topic, p) for topic, count in counts.items() if count for p in range(count)]


def _end_offsets(ctx: RunContext, region: str, admin, partitions) -> dict[str, int]:
    marks = watermarks(admin, partitions, region, ctx.topology.regions[region].request_timeout_seconds)
    return {f"{t}[{p}]": marks[(t, p)].end for t, p in partitions}


def _groups_state(ctx: RunContext, region: str, admin) -> dict[str, dict]:
    groups = ctx.topology.domain.consumer_groups
    if not groups:
        return {}
    states = {}
    for group, future in admin.describe_consumer_groups(groups, request_timeout=10).items():
        try:
            description = future.result()
        except KafkaException as e:
            states[group] = {"error": str(e)}
            continue
        states[group] = {"state": str(description.state).split(".")[-1],
                         "members": [f"{m.client_id}@{m.host}" for m in description.members]}
    return states


def _groups_left(ctx: RunContext, admin) -> tuple[dict, dict, float]:
    """The groups' states on the old owner once none has members, or at groups_leave_seconds:
    (states, members of the groups still active, seconds waited). Consumers that follow authority
    leave once they see FENCED, which a fast fence can reach before they do."""
    started = time.monotonic()
    deadline = started + ctx.topology.thresholds.groups_leave_seconds
    told = False
    while True:
        states = _groups_state(ctx, ctx.old_owner, admin)
        active = {g: s["members"] for g, s in states.items() if s.get("members")}
        if not active or time.monotonic() >= deadline:
            return states, active, round(time.monotonic() - started, 3)
        if not told:
            ctx.log(f"waiting up to {ctx.topology.thresholds.groups_leave_seconds:g}s for consumer "
                    f"groups to leave {ctx.old_owner}: {', '.join(active)}")
            told = True
        time.sleep(0.2)


# -- check_lag --------------------------------------------------------------------------------


def settled_replication(engine, status, log, *, wait: bool) -> dict:
    """The replication state check_lag judges: a DEGRADED read with no FAILED part is read again
    until RUNNING (bounded; the engine's wait_for ends at once on FAILED), both reads kept."""
    if not wait or status.state != "DEGRADED":
        return {"replication": status.as_dict()}
    evidence = {"replication_first_read": status.as_dict()}
    try:
        status = engine.wait_for(status.source, status.target, "RUNNING", DEGRADED_SETTLE_SECONDS,
                                 progress=log)
    except ReplicationError as e:
        evidence["replication_wait"] = str(e)
        status = engine.status(status.source, status.target)
    return evidence | {"replication": status.as_dict()}


def check_lag(ctx: RunContext) -> dict:
    topology, thresholds = ctx.topology, ctx.topology.thresholds
    engine = engine_for(topology)
    evidence: dict = {"owner": ctx.old_owner, "secondary": ctx.new_owner, "unplanned": ctx.unplanned}
    scope = lag = None
    # The engine's view (connectors, heartbeat) is read beside the brokers' measurement.
    with ThreadPoolExecutor(max_workers=2) as pool:
        status = pool.submit(engine.status, ctx.old_owner, ctx.new_owner)
        heartbeat = pool.submit(engine.heartbeat_age, ctx.old_owner, ctx.new_owner, int(time.time() * 1000))
        if not ctx.unplanned:
            scope = resolve_scope(topology, owner=ctx.old_owner)
            lag = measure_lag(topology, scope=scope)
        try:
            evidence |= settled_replication(engine, status.result(), ctx.log, wait=not ctx.unplanned)
        except ReplicationError as e:
            evidence["replication"] = {"state": "UNKNOWN", "error": str(e)}
        heartbeat_age = None
        try:
            heartbeat_age = heartbeat.result()
        except ReplicationError as e:
            evidence["heartbeat_error"] = str(e)
    evidence["heartbeat_age_seconds"] = heartbeat_age

    if ctx.unplanned:
        # The owner cannot be asked for its end offsets: the watch's newest sample of this very
        # flow (owner -> secondary) is the statement, with its age.
        evidence["data_at_risk"] = data_at_risk(ctx.audit, topology, ctx.old_owner, ctx.new_owner)
        ctx.state["data_at_risk_records"] = evidence["data_at_risk"]["records"]
        ctx.log(f"check_lag: {evidence['data_at_risk']['statement']}")
        return evidence

    evidence["lag"] = lag.as_dict()
    evidence["readiness"] = ready = readiness_before_fence(ctx)
    if ready["passing"] is False:
        # Refused here, before the fence: inside it the same failure would only unfence again.
        raise StepFailed(f"refusing to fail over: {ctx.new_owner} is not ready to take over "
                         f"({', '.join(ready['failing'])} failing): {ready['statement']}. Fix what "
                         "fails (`baton ready` shows the evidence) and run again; nothing was changed.")
    owner_admin = scope.owner_admin
    evidence["groups"] = _groups_state(ctx, ctx.old_owner, owner_admin)
    refusals = []
    state = evidence["replication"].get("state")
    if state != "RUNNING":
        refusals.append(f"replication {ctx.old_owner} -> {ctx.new_owner} is {state}")
    if lag.records_at_risk > thresholds.max_lag_records:
        refusals.append(f"{lag.records_at_risk} records at risk > max_lag_records "
                        f"{thresholds.max_lag_records}")
    if lag.seconds_at_risk > thresholds.max_lag_seconds:
        refusals.append(f"{lag.seconds_at_risk:.1f} s at risk > max_lag_seconds {thresholds.max_lag_seconds}")
    if lag.unknown:
        refusals.append(f"{len(lag.unknown)} partition(s) whose replication position is unknown")
    evidence["refusals"] = refusals
    if refusals:
        if not ctx.lag_override_reason:
            raise StepFailed("refusing to fail over: " + "; ".join(refusals)
                             + ". Fix replication, or override with --override-lag REASON.")
        evidence["override"] = ctx.lag_override_reason
    evidence["translation_before_fence"] = _translate_before_fence(ctx, scope, lag)
    ctx.reuse["scope"] = scope
    ctx.log(f"check_lag: {lag.statement()}")
    return evidence


def _groups_on(ctx: RunContext, admin, topics) -> list[str]:
    """The domain's groups with a commit on one of `topics` on the owner (a group may sit only on
    mirrors, e.g. at failback)."""
    timeout = ctx.topology.regions[ctx.old_owner].request_timeout_seconds
    return [g for g in ctx.topology.domain.consumer_groups
            if any(t in topics for t, _ in committed_offsets(admin, g, ctx.old_owner, timeout))]


def _translate_before_fence(ctx: RunContext, scope, lag) -> dict:
    """Planned: translate now, read-only, from this step's own measurement, so that inside the
    fence only what may have changed is verified again (translation.still_verified). Nothing is
    applied and nothing is trusted from here without that check; a failure only means the fenced
    step does all the work."""
    try:
        groups = _groups_on(ctx, scope.owner_admin, scope.topics)
        if not groups:
            return {"prepared": False, "why": "no group has a commit on the owner's topics"}
        report = translate_offsets(ctx.topology, groups=groups, scope=scope, lag=lag)
    except BatonError as e:
        return {"prepared": False, "why": f"translated inside the fence instead: {e}"}
    ctx.reuse["translation_before_fence"] = report.entries
    return {"prepared": True, "entries": len(report.entries),
            "verified_from_offset_syncs": sum(1 for e in report.entries if e.verified_from_sync),
            "untranslated_now": [e.where() for e in report.untranslated][:20],
            "statement": "read-only, nothing applied: inside the fence an entry is carried only if its "
                         "group's committed offset and the newest offset sync at or below it are unchanged"}


# -- stop_primary_producers -------------------------------------------------------------------


def _fence_authority(ctx: RunContext) -> dict:
    """Authority FENCED at a new epoch, once per run (the postcondition is checked first)."""
    current = ctx.authority.current(ctx.domain)
    if current.state == State.FENCED and current.run_id == ctx.run_id:
        return {"authority": current.model_dump(mode="json"), "already": True}
    if current.owner != ctx.old_owner or current.state != State.ACTIVE:
        raise StepFailed(f"authority is {current.describe()}, not ACTIVE on {ctx.old_owner}; "
                         "refusing to fence (another run or operator changed it)")
    ctx.state["lease_expired_at"] = (current.lease_expires_at.isoformat()
                                     if current.lease_expires_at else None)
    result = change_authority(ctx.topology, current.epoch, current.owner, State.FENCED,
                              run_id=ctx.run_id, changed_by=ctx.operator,
                              reason=f"{ctx.runbook}: stop writes on {ctx.old_owner}",
                              store=ctx.authority)
    return result.as_dict() | {"previous_lease_expires_at": ctx.state["lease_expired_at"]}


def _quiesce(ctx: RunContext, admin) -> dict:
    """The baseline (thresholds.fence_proof = fixed-quiesce): wait until the owner's end offsets
    stand still for quiesce_seconds (bounded)."""
    thresholds = ctx.topology.thresholds
    partitions = _owner_partitions(ctx, admin)
    started = time.monotonic()
    last = _end_offsets(ctx, ctx.old_owner, admin, partitions)
    still_since, last_note = time.monotonic(), time.monotonic()
    while time.monotonic() - still_since < thresholds.quiesce_seconds:
        _check_still_moving(ctx, started)
        time.sleep(min(0.5, thresholds.quiesce_seconds))
        now = _end_offsets(ctx, ctx.old_owner, admin, partitions)
        if now != last:
            last, still_since = now, time.monotonic()
        if time.monotonic() - last_note > PROGRESS_EVERY:
            ctx.log(f"stop_primary_producers: waiting for {ctx.old_owner} to go quiet "
                    f"({time.monotonic() - started:.0f} s)")
            last_note = time.monotonic()
    return {"final_end_offsets": last, "quiesce_seconds": round(time.monotonic() - started, 2)}


def _check_still_moving(ctx: RunContext, started: float) -> None:
    timeout = ctx.topology.thresholds.step_timeout_seconds
    if time.monotonic() - started > timeout:
        raise StepFailed(f"{ctx.old_owner} end offsets were still moving after {timeout:.0f} s of "
                         "fencing: something writes with a principal that is not fenced (check "
                         "producer_principals)")


def _prove_fence(ctx: RunContext, admin, read_back_at: float) -> dict:
    """Evidence that no write can land any more, instead of a fixed wait: the deny ACLs were read
    back from the brokers (by `fence`) at `read_back_at`; a request authorized before that is
    appended within one producer retry interval, so two equal end-offset reads, the second at
    least fence_settle_seconds after the read-back and after the first, prove the log is closed."""
    settle = ctx.topology.thresholds.fence_settle_seconds
    partitions = _owner_partitions(ctx, admin)
    started = time.monotonic()
    reads = [(0.0, _end_offsets(ctx, ctx.old_owner, admin, partitions))]
    while True:
        _check_still_moving(ctx, started)
        earliest = max(read_back_at + settle, started + reads[-1][0] + settle)
        time.sleep(max(0.0, earliest - time.monotonic()))
        now = _end_offsets(ctx, ctx.old_owner, admin, partitions)
        reads.append((round(time.monotonic() - started, 3), now))
        if now == reads[-2][1]:
            break
    moved = sum(now.values()) - sum(reads[0][1].values())
    return {"final_end_offsets": now,
            "fence_proof": {"acl_read_back": True, "settle_seconds": settle,
                            "end_offset_reads": len(reads),
                            "read_at_seconds": [r[0] for r in reads],
                            "records_landed_after_read_back": moved,
                            "statement": f"deny ACLs read back; end offsets of {len(partitions)} "
                                         f"partition(s) equal in {len(reads)} reads over "
                                         f"{reads[-1][0]:.2f} s ({moved} records landed after the "
                                         "read-back)"},
            "quiesce_seconds": round(time.monotonic() - started, 2)}


def stop_primary_producers(ctx: RunContext) -> dict:
    started = time.monotonic()
    # Planned: connect to the owner before the window opens (and refuse before changing anything
    # if it does not answer). Unplanned: probe the owner while authority is fenced and published
    # (independent of each other), so a dead owner costs one timeout, not the publish's plus the probe's.
    if ctx.unplanned:
        with ThreadPoolExecutor(max_workers=1) as pool:
            probing = pool.submit(_reachable, ctx, ctx.old_owner, UNREACHABLE_PROBE_SECONDS)
            connected = time.monotonic()
            evidence = {"authority": _fence_authority(ctx)}
            authority_fenced = time.monotonic()
            admin = probing.result()
    else:
        admin = _reachable(ctx, ctx.old_owner, timeout=UNREACHABLE_PROBE_SECONDS)
        connected = time.monotonic()
        evidence = {"authority": _fence_authority(ctx)}
        authority_fenced = time.monotonic()
    if admin is None:
        if not ctx.unplanned:
            # No state is asserted here: compensation reads what is true and the runner says it.
            raise StepFailed(f"owner {ctx.old_owner} did not answer as the fence began (no answer within "
                             f"{UNREACHABLE_PROBE_SECONDS:g} s)")
        evidence["acl_fence"] = {"applied": False,
                                 "why": f"{ctx.old_owner} unreachable; ACLs cannot be written there"}
        evidence["declared_unreachable"] = {ctx.old_owner: _declared_unreachable(ctx, ctx.old_owner)}
    else:
        evidence["acl_fence"] = fence(ctx.topology, ctx.old_owner, admin=admin)
    acl_fenced = time.monotonic()
    if admin is not None and not ctx.unplanned:
        if ctx.topology.thresholds.fence_proof == "fixed-quiesce":
            evidence |= _quiesce(ctx, admin)
        else:
            evidence |= _prove_fence(ctx, admin, time.monotonic())
        ctx.state["final_end_offsets"] = evidence["final_end_offsets"]
    else:
        evidence["quiesce"] = "skipped: unplanned failover"
        evidence["lease_wait"] = _wait_out_lease(ctx)
    ctx.state["fenced"] = True
    evidence["seconds"] = {"connect_owner": round(connected - started, 3),
                           "authority_fenced": round(authority_fenced - connected, 3),
                           "acl_fence_read_back": round(acl_fenced - authority_fenced, 3),
                           "proof_or_lease_wait": round(time.monotonic() - acl_fenced, 3)}
    return evidence


def _wait_out_lease(ctx: RunContext) -> dict:
    """Unplanned: isolated guarded producers stop by themselves once the last lease lapses."""
    expires = ctx.state.get("lease_expired_at")
    if not expires:
        return {"waited_seconds": 0, "why": "no lease was recorded"}
    deadline = datetime.fromisoformat(expires)
    waited = 0.0
    while (left := (deadline - datetime.now(UTC)).total_seconds()) > 0:
        ctx.log(f"stop_primary_producers: waiting {left:.0f} s for the last lease on "
                f"{ctx.old_owner} to lapse")
        time.sleep(min(left, PROGRESS_EVERY))
        waited += min(left, PROGRESS_EVERY)
    return {"waited_seconds": round(waited, 1), "lease_expired_at": expires}


# -- verify_secondary_currency ----------------------------------------------------------------


def _scope_of_check_lag(ctx: RunContext):
    """check_lag's scope (clients, mirror names, fingerprint modes) when every topic and mirror
    still has the partitions it had then (a partition added since would go unchecked), else
    resolved anew."""
    scope = ctx.reuse.get("scope")
    if scope is not None:
        owner = partition_counts(scope.owner_admin, scope.topics, scope.owner, scope.timeout)
        mirror = partition_counts(scope.secondary_admin, scope.mirrors.values(), scope.secondary,
                                  scope.timeout)
        if all(owner[t] == scope.partitions[t] == mirror[scope.mirrors[t]] for t in scope.topics):
            return scope
    return resolve_scope(ctx.topology, owner=ctx.old_owner)


def verify_secondary_currency(ctx: RunContext) -> dict:
    if ctx.unplanned:
        return {"verified": False,
                "why": f"owner {ctx.old_owner} is unreachable: currency cannot be verified",
                "data_at_risk_records": ctx.state.get("data_at_risk_records")}
    timeout = ctx.topology.thresholds.step_timeout_seconds
    left = fenced_window_left(ctx)  # a planned run waits no longer than its fenced window allows
    timeout = timeout if left is None else max(0.0, min(timeout, left))
    started, last_note, pause = time.monotonic(), time.monotonic(), CURRENCY_FIRST_POLL
    scope = _scope_of_check_lag(ctx)  # topics, mirrors, clients: resolved once
    measured = 0
    while True:
        measured += 1
        report = verify_currency(ctx.topology, lag=measure_lag(ctx.topology, scope=scope))
        if report.current:
            break
        if time.monotonic() - started > timeout:
            missing = [f"{p.topic}[{p.partition}] {p.missing_ranges or 'unverified'}"
                       for p in report.partitions if not p.current]
            raise StepFailed(f"{ctx.new_owner} is not current after {timeout:.0f} s: "
                             + "; ".join(missing))
        if time.monotonic() - last_note > PROGRESS_EVERY:
            ctx.log(f"verify_secondary_currency: {report.lag.statement()} "
                    f"({time.monotonic() - started:.0f} s)")
            last_note = time.monotonic()
        time.sleep(pause)
        pause = min(CURRENCY_MAX_POLL, 2 * pause)
    evidence = report.as_dict() | {"waited_seconds": round(time.monotonic() - started, 2),
                                   "measurements": measured}
    final = ctx.state.get("final_end_offsets")
    if final:
        owner_ends = {f"{p.topic}[{p.partition}]": p.owner_end for p in report.lag.partitions}
        moved = {k: (final[k], owner_ends[k]) for k in final if k in owner_ends and owner_ends[k] != final[k]}
        if moved:
            raise StepFailed(f"{ctx.old_owner} was written to after its fence: {moved}")
    ctx.reuse["currency"] = (scope, report.lag)
    ctx.log(f"verify_secondary_currency: {ctx.new_owner} holds every record ({report.lag.statement()})")
    if _stop_overlaps(ctx):
        # The fenced owner's every record is on the mirror: replication old -> new has nothing
        # left to copy. Its stop (Connect takes 0.5-1.5 s) runs beside translation and the switch;
        # reconcile waits for STOPPED, and a run that fails before the switch lets the stop
        # settle before its compensation restarts replication (settle_stop_request).
        pool = ThreadPoolExecutor(max_workers=1)
        ctx.state[STOP_REQUEST] = pool.submit(_stop_old_direction, ctx, wait=False)
        pool.shutdown(wait=False)
        evidence["replication_stop"] = (f"requested: {ctx.new_owner} holds every record of the fenced "
                                        f"owner; reconcile waits for STOPPED")
    return evidence


def _stop_overlaps(ctx: RunContext) -> bool:
    """Whether replication old -> new may stop while authority moves: only when mirrors live in
    their own topics (default naming), and only for a planned run (its owner was fenced and read)."""
    return not ctx.unplanned and ctx.topology.replication.policy != "identity"


# -- translate_consumer_offsets ---------------------------------------------------------------


def currency_measurement(ctx: RunContext, evidence: dict, native: dict[str, str] | None = None):
    """(scope, lag) of the currency step when a later step may use them, else (None, None).

    The lag was measured on the fenced owner (its end offsets proven still) and showed the mirror
    current. It still describes both sides if every owner start/end/stable offset and every mirror
    start/end offset reads the same now: the owner is fenced, and a mirror that grew (a replayed
    copy) or lost its head (retention) would show here, so then everything is measured again.
    `native`: the mirror names the caller uses, when they may differ from the scope's.
    """
    scope, lag = ctx.reuse.get("currency", (None, None))
    if ctx.unplanned or scope is None or (native is not None and scope.mirrors != native):
        return None, None
    pairs = scope.pairs()
    owner = watermarks(scope.owner_admin, pairs, scope.owner, scope.timeout, stable=True)
    mirror = watermarks(scope.secondary_admin, [scope.mirror_of(tp) for tp in pairs], scope.secondary,
                        scope.timeout)
    moved = [f"{p.topic}[{p.partition}]" for p in lag.partitions
             if owner[(p.topic, p.partition)] != (p.owner_start, p.owner_end, p.owner_stable_end)
             or mirror[(p.mirror_topic, p.partition)][:2] != (p.mirror_start, p.mirror_end)]
    if moved:
        evidence["lag"] = f"measured again: offsets moved since verify_secondary_currency on {moved[:5]}"
        return None, None
    evidence["lag"] = ("verify_secondary_currency's measurement: owner and mirror start/end offsets of "
                       f"{len(pairs)} partition(s) re-read unchanged")
    return scope, lag


def translate_consumer_offsets(ctx: RunContext) -> dict:
    topology = ctx.topology
    groups = list(topology.domain.consumer_groups)
    if not groups:
        return {"groups": [], "why": "the domain lists no consumer groups"}
    owner_admin = None if ctx.unplanned else check_reachable(ctx.old_owner, topology.regions[ctx.old_owner])
    evidence: dict = {}
    if owner_admin is not None:
        states, active, waited = _groups_left(ctx, owner_admin)
        evidence["waited_for_groups_to_leave_seconds"] = waited
        if active:
            raise StepFailed("stop these consumer groups on " + ctx.old_owner + " first: " + "; ".join(
                f"{g}: {', '.join(m)}" for g, m in active.items()))
        evidence["groups_on_owner"] = states
        pairs = stream_pairs(topology, ctx.old_owner, ctx.new_owner, owner_admin)
    else:
        pairs = {t: topology.replication.remote_topic(t, ctx.old_owner) for t in topology.domain.topics}
    native = {t: m for t, m in pairs.items() if m == topology.replication.remote_topic(t, ctx.old_owner)}
    upstream = {t: u for t, u in pairs.items() if t not in native}
    declared = _declared_unreachable(ctx, ctx.old_owner)
    if declared:
        evidence["owner_declared_unreachable"] = declared  # by an earlier step: not probed again
    scope, lag = currency_measurement(ctx, evidence, native)
    scope = scope or resolve_scope(topology, owner=ctx.old_owner, topics=list(native),
                                   engine=PairedEngine(engine_for(topology), native),
                                   owner_required=not ctx.unplanned, owner_known_unreachable=bool(declared),
                                   # unplanned: the owner is known down; do not wait long to hear it again
                                   timeout=UNREACHABLE_PROBE_SECONDS if ctx.unplanned else None)
    method = "checkpoint" if ctx.unplanned else "exact"
    native_groups = groups if owner_admin is None else _groups_on(ctx, owner_admin, native)
    if native_groups:
        report = translate_offsets(topology, groups=native_groups, method=method, scope=scope, lag=lag,
                                   prior=None if ctx.unplanned else ctx.reuse.get("translation_before_fence"))
        evidence["verified_before_fence_and_carried"] = sum(1 for e in report.entries
                                                            if e.note.startswith(CARRIED_NOTE))
    else:
        report = TranslationReport(ctx.old_owner, ctx.new_owner, owner_admin is not None, [])
    # From the second hand-over on, groups also sit on mirrors whose upstream is the new owner.
    returning = translate_to_upstream(topology, mirror_region=ctx.old_owner,
                                      upstream_region=ctx.new_owner, groups=groups, pairs=upstream)
    if ctx.runbook == "failback":
        evidence["kept_own_positions"] = keep_returning_positions(topology, returning,
                                                                  returning_region=ctx.new_owner)
    report.entries += returning
    evidence["translation"] = report.as_dict()
    evidence["method"] = method
    if report.untranslated:
        if not ctx.unplanned:  # inside a planned fence: a failed switch condition, nobody is asked
            raise StepFailed("refusing to switch: not translated: " + report.refusal_text()
                             + ". Nothing was applied.")
        # Unplanned: nothing is applied and nothing switches until a person chooses, per group,
        # where the refused partitions resume (gate approve-translation-resolutions, then
        # apply_translation_resolutions applies everything at once).
        refused = resolution.refused(evidence["translation"])
        evidence["refused"] = [resolution.describe(e) for e in refused]
        evidence["resolution_options"] = resolution.options(refused)
        ctx.log("translate_consumer_offsets: not translated, a choice is needed at gate "
                f"{resolution.GATE}: " + report.refusal_text())
        return evidence
    # In a failback the returning region's offsets date from before the failover; the current
    # owner's positions are the truth even where they are lower, except inside the common prefix
    # where the group's own commit there is still true (keep_returning_positions above).
    # A failover never moves a group backwards.
    force = ctx.runbook == "failback"
    evidence["force_backwards"] = force
    applied = apply_translation(topology, report, force=force)
    evidence["applied"] = [{"group": a.group, "committed": a.committed, "previous": a.previous,
                            "deleted_no_commit_on_owner": a.deleted} for a in applied]
    ctx.state["applied_offsets"] = {a.group: a.committed for a in applied}
    evidence["summary"] = resolution.summary(report.entries, len(applied))
    return evidence


# -- switch_authority -------------------------------------------------------------------------


def switch_authority(ctx: RunContext) -> dict:
    current = ctx.authority.current(ctx.domain)
    if current.owner == ctx.new_owner and current.state == State.ACTIVE and current.run_id == ctx.run_id:
        ctx.state["switched"] = True
        return {"authority": current.model_dump(mode="json"), "already": True}
    if current.state != State.FENCED or current.run_id != ctx.run_id:
        raise StepFailed(f"authority is {current.describe()}; this run did not fence it, refusing to switch")
    # Mirrors in their own topics (default naming): no replicated record can land where the new
    # owner's producers write, so the stop is only requested here and overlaps the switch;
    # reconcile waits for STOPPED as its postcondition. Identity naming: the mirror is the
    # producers' topic, so replication must have stopped before anyone may write.
    overlap = ctx.topology.replication.policy != "identity"
    pool = ThreadPoolExecutor(max_workers=1)
    stopping = ctx.state.pop(STOP_REQUEST, None) if overlap else None
    if stopping is not None:
        evidence: dict = {"replication_stop": "requested once the mirror was verified current; "
                                              "reconcile waits for STOPPED"}
    else:
        evidence = {"replication_stop": "requested with the switch; reconcile waits for STOPPED"
                    if overlap else "before the switch (identity naming: mirror = producers' topic)"}
        # Even the engine's client is made on the side: nothing before the switch waits on Connect.
        stopping = pool.submit(_stop_old_direction, ctx, wait=not overlap)
    try:
        if not overlap:
            evidence["replication_stopped"] = stopping.result().as_dict()
        started = time.monotonic()
        evidence["unfence_new_owner"] = unfence(ctx.topology, ctx.new_owner)
        unfenced = time.monotonic()
        result = change_authority(ctx.topology, current.epoch, ctx.new_owner, State.ACTIVE,
                                  run_id=ctx.run_id, changed_by=ctx.operator,
                                  reason=f"{ctx.runbook}: write authority to {ctx.new_owner}",
                                  store=ctx.authority)
    except BaseException as error:
        # Before authority moved the compensation restarts replication: the stop must have taken
        # effect first (else Connect could apply it after the restart), and a stop that did not
        # is named in the error (recover.py then checks again until it may have settled).
        pool.shutdown(wait=True)
        stop_error = stopping.exception()
        if stop_error is None and overlap:
            try:
                engine_for(ctx.topology).wait_for(ctx.old_owner, ctx.new_owner, "STOPPED", STOP_WAIT_SECONDS)
            except (ReplicationError, OSError) as e:
                stop_error = e
        named = isinstance(error, BatonError) and not isinstance(error, AuditUnwritable)
        if stop_error is not None and stop_error is not error and named:
            raise StepFailed(f"{error}; the stop of replication {ctx.old_owner} -> {ctx.new_owner} "
                             f"failed too: {stop_error}") from error
        raise
    pool.shutdown(wait=False)
    evidence["authority"] = result.as_dict()
    ctx.state["switched"] = True
    if overlap:
        ctx.state[STOP_REQUEST] = stopping  # reconcile waits for it and for STOPPED
    evidence["seconds"] = {"unfence_new_owner": round(unfenced - started, 3),
                           "authority_active": round(time.monotonic() - unfenced, 3)}
    ctx.log(f"switch_authority: {ctx.new_owner} owns {ctx.domain} at epoch {result.authority.epoch}")
    return evidence




def _stop_old_direction(ctx: RunContext, *, wait: bool):
    engine = engine_for(ctx.topology)
    if wait:
        return engine.stop(ctx.old_owner, ctx.new_owner)
    return engine.request_stop(ctx.old_owner, ctx.new_owner)


def settle_stop_request(ctx: RunContext) -> dict | None:
    """Before a compensation restarts replication old -> new: the stop this run requested (if one
    is in flight) answered and applied, else Connect could apply it after the restart. None when
    no stop was in flight; otherwise evidence, with `error` when it did not settle in time."""
    request = ctx.state.pop(STOP_REQUEST, None)
    if request is None:
        return None
    started = time.monotonic()
    try:
        request.result(timeout=STOP_WAIT_SECONDS)
        status = engine_for(ctx.topology).wait_for(ctx.old_owner, ctx.new_owner, "STOPPED", STOP_WAIT_SECONDS)
    except (ReplicationError, OSError, TimeoutError) as e:
        # Named so recover.py keeps replication pending until such a stop can no longer apply.
        return {"stop_in_flight": "unsettled", "error": f"the stop of replication {ctx.old_owner} -> "
                f"{ctx.new_owner} did not reach STOPPED: {e}"}
    return {"stop_in_flight": "settled", "status": status.as_dict(),
            "waited_seconds": round(time.monotonic() - started, 3)}


def replication_stopped(ctx: RunContext) -> dict:
    """Postcondition of the switch: replication old owner -> new owner STOPPED, waited for
    (bounded by thresholds.step_timeout_seconds, progress logged). Asked again when the
    switch's request failed or was not made in this process (a resumed run): idempotent."""
    timeout = ctx.topology.thresholds.step_timeout_seconds
    started = time.monotonic()
    evidence: dict = {}
    engine = engine_for(ctx.topology)
    request = ctx.state.pop(STOP_REQUEST, None)
    try:
        if request is not None:
            try:
                request.result(timeout=timeout)
            except (ReplicationError, OSError) as e:
                evidence["switch_request_failed"] = str(e)
                request = None
        if request is None and engine.status(ctx.old_owner, ctx.new_owner).state != "STOPPED":
            engine.request_stop(ctx.old_owner, ctx.new_owner)
            evidence["requested_again"] = True
        status = engine.wait_for(ctx.old_owner, ctx.new_owner, "STOPPED", timeout,
                                 progress=lambda message: ctx.log(f"reconcile: {message}"))
    except (ReplicationError, OSError, TimeoutError) as e:
        return evidence | {"stopped": False, "error": str(e)}
    return evidence | {"stopped": True, "status": status.as_dict(),
                       "waited_seconds": round(time.monotonic() - started, 3)}


# -- reconcile --------------------------------------------------------------------------------


def reconcile(ctx: RunContext) -> dict:
    """Postconditions of the hand-over, read back at once (each is its own round trips): authority
    and its control record on the new owner, no fence left there, replication old -> new STOPPED,
    nothing written to the old owner after its fence, the groups where they were put."""
    topology = ctx.topology
    problems: list[str] = []
    current = ctx.authority.current(ctx.domain)
    evidence: dict = {"authority": current.model_dump(mode="json")}
    if current.owner != ctx.new_owner or current.state != State.ACTIVE:
        problems.append(f"authority is {current.describe()}, expected ACTIVE on {ctx.new_owner}")
    with ThreadPoolExecutor(max_workers=4) as pool:
        stopped = pool.submit(replication_stopped, ctx)
        control = pool.submit(read_control, topology, ctx.new_owner)
        old_writes = pool.submit(_old_owner_writes_after_fence, ctx)
        new_owner = pool.submit(_new_owner_read_back, ctx)
        published, replication = control.result(), stopped.result()
        evidence["old_owner_writes_after_fence"] = written = old_writes.result()
        still_fenced, behind = new_owner.result()
    evidence["control_topic_on_new_owner"] = published.model_dump(mode="json") if published else None
    if published is None or published.epoch != current.epoch:
        problems.append(f"the control topic on {ctx.new_owner} does not show epoch {current.epoch}")
    if still_fenced:
        problems.append(f"{ctx.new_owner} still has fencing ACLs: its producers cannot write")
    evidence["replication_stopped"] = replication
    if not replication["stopped"]:
        problems.append(f"replication {ctx.old_owner} -> {ctx.new_owner} did not stop: "
                        f"{replication['error']}")
    if isinstance(written, dict) and written:
        problems.append(f"{ctx.old_owner} received writes after its fence: {written}")
    evidence["groups_behind_where_put"] = behind
    if behind:
        problems.append(f"groups sit behind the positions applied: {behind}")
    evidence["problems"] = problems
    if problems:
        raise StepFailed("reconcile found: " + "; ".join(problems))
    return evidence


def _old_owner_writes_after_fence(ctx: RunContext) -> dict | str:
    final = ctx.state.get("final_end_offsets")
    old_admin = _reachable(ctx, ctx.old_owner, timeout=UNREACHABLE_PROBE_SECONDS)
    if not final or old_admin is None:
        return "not measurable (owner unreachable or no fence offsets)"
    partitions = [(key.rsplit("[", 1)[0], int(key.rsplit("[", 1)[1][:-1])) for key in final]
    now = _end_offsets(ctx, ctx.old_owner, old_admin, partitions)
    return {k: now[k] - final[k] for k in final if now[k] != final[k]}


def _new_owner_read_back(ctx: RunContext) -> tuple[bool, dict]:
    """(fence ACLs still on the new owner, groups behind the positions applied), on one client."""
    admin = check_reachable(ctx.new_owner, ctx.topology.regions[ctx.new_owner])
    applied = ctx.state.get("applied_offsets", {})
    with ThreadPoolExecutor(max_workers=1 + len(applied)) as pool:
        fenced = pool.submit(is_fenced, ctx.topology, ctx.new_owner, admin)
        reads = {group: pool.submit(committed_offsets, admin, group, ctx.new_owner, 10) for group in applied}
        behind = {}
        for group, committed in applied.items():
            read = reads[group].result()
            for key, offset in committed.items():
                topic, partition = key.rsplit("[", 1)[0], int(key.rsplit("[", 1)[1][:-1])
                if read.get((topic, partition), -1) < offset:
                    behind[f"{group} {key}"] = (offset, read.get((topic, partition)))
        return fenced.result(), behind
