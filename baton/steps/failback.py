"""The failback-only steps. In a failback run `old_owner` is the region holding authority now
(the failover target) and `new_owner` the region it returns to, whose divergent tail -
records written there that never reached the current owner - must not be lost silently."""

from __future__ import annotations

from baton.errors import StepFailed, UsageError
from baton.kafka.admin import check_reachable, client_config, ensure_topics
from baton.kafka.copying import copy_records, read_records
from baton.kafka.fencing import fence
from baton.replication import engine_for
from baton.replication.lag import measure_lag
from baton.steps.context import DIVERGENT_POLICIES, RunContext

MAX_LISTED = 10_000  # records listed one by one in evidence; beyond that the run refuses


def find_divergent_tail(ctx: RunContext) -> dict:
    """Records on the returning region after the last one that reached the current owner."""
    returning, current = ctx.new_owner, ctx.old_owner
    check_reachable(returning, ctx.topology.regions[returning])
    # After an unplanned failover the returning region could not be fenced; fence it now so
    # the tail cannot grow while it is measured (idempotent: a no-op after a planned failover).
    fenced = fence(ctx.topology, returning)
    # Replication returning -> current was stopped at the failover; what it never copied diverged.
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
    ctx.state["divergent_records"] = records
    ctx.log(f"find_divergent_tail: {len(records)} records on {returning} never reached {current}")
    return {"region": returning, "compared_with": current, "count": len(records), "fence": fenced,
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
    evidence: dict = {"policy": policy, "count": len(records)}
    if not records:
        evidence["outcome"] = "nothing to handle"
        return evidence
    returning, current = ctx.new_owner, ctx.old_owner
    if policy == "republish":
        config = client_config(ctx.topology.regions[current])
        evidence["records"] = copy_records(config, records, None, returning, current)
        evidence["outcome"] = f"{len(records)} records republished to {current}"
    elif policy == "quarantine":
        config = client_config(ctx.topology.regions[returning])
        admin = check_reachable(returning, ctx.topology.regions[returning])
        metadata = admin.list_topics(timeout=10).topics
        partitions = {r.topic: len(metadata[r.topic].partitions) for r in records}
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
    """Replication current owner -> returning region, so the returning region catches up."""
    status = engine_for(ctx.topology).start(ctx.old_owner, ctx.new_owner, wait_seconds=120)
    return {"replication": status.as_dict()}


def restore_replication(ctx: RunContext) -> dict:
    """After the switch: replication from the owner again to the other region."""
    status = engine_for(ctx.topology).start(ctx.new_owner, ctx.old_owner, wait_seconds=120)
    return {"replication": status.as_dict()}
