"""The failback-only steps, shared by reprotect. `ctx.owner_now` is the region holding authority
and `ctx.standby_now` the region to protect (in a failback: the one authority returns to), whose
divergent tail - records written there that never reached the owner - must not be lost silently."""

from __future__ import annotations

import json

from sqlmodel import select

from baton.audit.models import Run
from baton.audit.models import Step as StepRow
from baton.errors import RegionUnreachable, StepFailed, UsageError
from baton.kafka.admin import check_reachable, client_config, ensure_topics, topic_partitions
from baton.kafka.copying import copy_records, read_records
from baton.kafka.fencing import fence
from baton.replication import engine_for
from baton.replication.lag import measure_lag
from baton.steps.context import DIVERGENT_POLICIES, RunContext
from baton.steps.failover import currency_measurement, replication_stopped

MAX_LISTED = 10_000  # records listed one by one in evidence; beyond that the run refuses


def _handled_before(ctx: RunContext, region: str) -> set[tuple[str, int, int]]:
    """(topic, partition, offset) of the region's records whose fate an earlier run decided (its
    handle_divergent_tail evidence): a second reprotect or the failback after one must not
    republish or quarantine them again."""
    with ctx.audit.transaction() as session:
        rows = session.exec(select(StepRow.evidence).join(Run, Run.id == StepRow.run_id)
                            .where(Run.domain == ctx.domain, StepRow.name == "handle_divergent_tail",
                                   StepRow.status == "succeeded")).all()
    handled = set()
    for row in rows:
        evidence = json.loads(row)
        if evidence.get("region") == region:
            handled |= {(r["topic"], r["partition"], r["offset"]) for r in evidence.get("records", [])}
    return handled


def find_divergent_tail(ctx: RunContext) -> dict:
    """Records on the returning region after the last one that reached the current owner, less
    those an earlier run already handled."""
    returning, current = ctx.standby_now, ctx.owner_now
    try:
        admin = check_reachable(returning, ctx.topology.regions[returning])
    except RegionUnreachable as e:
        raise StepFailed(f"{returning} does not answer, so its divergent tail cannot be handled nor "
                         f"replication towards it started: run it once {returning} answers; "
                         f"`baton ready` says when ({e})") from e
    # After an unplanned failover the returning region could not be fenced; fence it now so
    # the tail cannot grow while it is measured (idempotent: a no-op after a planned failover).
    fenced = fence(ctx.topology, returning, admin=admin)
    # Replication returning -> current was stopped at the failover; what it never copied diverged.
    # A planned failover's reprotect measured exactly this at its currency step, on the fenced
    # owner: used when every offset of both sides re-reads unchanged, else measured again.
    noted: dict = {}
    _, lag = currency_measurement(ctx, noted)
    if lag is None or lag.owner != returning:
        noted = {"lag": noted.get("lag", "measured now") if lag is None else "measured now"}
        lag = measure_lag(ctx.topology, owner=returning)
    if lag.unknown:
        raise StepFailed("the divergent tail cannot be bounded for: " + ", ".join(
            f"{p.topic}[{p.partition}] ({p.note})" for p in lag.unknown))
    ranges = {(p.topic, p.partition): p.missing_ranges() for p in lag.partitions if p.missing_records}
    if lag.records_at_risk > MAX_LISTED:
        raise StepFailed(f"{lag.records_at_risk} divergent records exceed {MAX_LISTED}; handle them "
                         "by hand (baton lag --config ... lists the ranges)")
    records = read_records(client_config(ctx.topology.regions[returning]), ranges, returning)
    if len(records) != lag.records_at_risk:
        raise StepFailed(f"expected {lag.records_at_risk} divergent records, read {len(records)}")
    handled = _handled_before(ctx, returning) if records else set()
    records = [r for r in records if (r.topic, r.partition, r.offset) not in handled]
    ctx.state["divergent_records"] = records
    ctx.log(f"find_divergent_tail: {len(records)} records on {returning} never reached {current}"
            + (f" ({lag.records_at_risk - len(records)} handled by an earlier run)" if handled else ""))
    return {"region": returning, "compared_with": current, "count": len(records), "fence": fenced,
            "lag": noted["lag"],
            "handled_earlier": lag.records_at_risk - len(records),
            "ranges": {f"{t}[{p}]": [list(r) for r in spans] for (t, p), spans in ranges.items()},
            "records": [r.describe() for r in records]}


def handle_divergent_tail(ctx: RunContext) -> dict:
    """republish to the current owner, quarantine to <topic>.divergent, or discard (gated)."""
    policy = ctx.divergent_policy
    if policy not in DIVERGENT_POLICIES:
        raise UsageError(f"divergent policy must be one of {', '.join(DIVERGENT_POLICIES)}, not {policy!r}")
    records = ctx.state.get("divergent_records")
    if records is None:  # resumed run: find them again (read-only)
        find_divergent_tail(ctx)
        records = ctx.state["divergent_records"]
    returning, current = ctx.standby_now, ctx.owner_now
    evidence: dict = {"policy": policy, "count": len(records), "region": returning}
    if not records:
        evidence["outcome"] = "nothing to handle"
        return evidence
    if policy == "republish":
        config = client_config(ctx.topology.regions[current])
        evidence["records"] = copy_records(config, records, None, returning, current)
        evidence["outcome"] = f"{len(records)} records republished to {current}"
    elif policy == "quarantine":
        config = client_config(ctx.topology.regions[returning])
        admin = check_reachable(returning, ctx.topology.regions[returning])
        partitions = topic_partitions(admin, dict.fromkeys(r.topic for r in records))
        # Same partition count as the source, so each copy keeps its partition.
        quarantine = {f"{topic}.divergent": n for topic, n in partitions.items()}
        ensure_topics(admin, quarantine)
        evidence["records"] = []
        for topic in partitions:
            batch = [r for r in records if r.topic == topic]
            evidence["records"] += copy_records(config, batch, f"{topic}.divergent", returning, returning)
        evidence["outcome"] = f"{len(records)} records quarantined to {', '.join(quarantine)} on {returning}"
    else:
        evidence["records"] = [r.describe() | {"fate": "discarded"} for r in records]
        evidence["outcome"] = f"{len(records)} records discarded after approval"
    ctx.log(f"handle_divergent_tail: {evidence['outcome']}")
    return evidence


def start_reverse_replication(ctx: RunContext) -> dict:
    """Replication owner -> standby, so the standby catches up; passes through when it runs."""
    engine = engine_for(ctx.topology)
    before = engine.status(ctx.owner_now, ctx.standby_now).state
    status = engine.start(ctx.owner_now, ctx.standby_now, wait_seconds=120)
    return {"source": ctx.owner_now, "target": ctx.standby_now, "state_before": before,
            "replication": status.as_dict()}


def restore_replication(ctx: RunContext) -> dict:
    """After the switch: replication from the owner again to the other region, once the stop the
    switch requested took effect (Connect refuses connector changes while its stop rebalances)."""
    stopped = replication_stopped(ctx)
    if not stopped["stopped"]:
        raise StepFailed(f"replication {ctx.old_owner} -> {ctx.new_owner} did not stop: {stopped['error']}")
    status = engine_for(ctx.topology).start(ctx.new_owner, ctx.old_owner, wait_seconds=120)
    return {"replication_stopped": stopped, "replication": status.as_dict()}
