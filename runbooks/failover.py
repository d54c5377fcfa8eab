"""Failover: move write authority from the owner to the other region."""

from runbooks.model import Kind, Role, Runbook, Step

CHECK_LAG = Step(
    "check_lag", Kind.MEASURE,
    "Measure lag and RPO per partition (records and seconds at risk), replication health, "
    "and the consumer groups in scope. Refuse when replication is down or lag exceeds "
    "thresholds.max_lag_records / max_lag_seconds, unless overridden with a reason.",
    unplanned="The owner is unreachable: record the last lag that can still be measured from "
    "the secondary (mirror end offsets, newest replicated heartbeat) as data at risk.",
)
APPROVE_FAILOVER = Step(
    "approve-failover", Kind.GATE,
    "Approval with the measured plan: lag, records at risk, groups, the authority change.",
)
STOP_PRIMARY_PRODUCERS = Step(
    "stop_primary_producers", Kind.IRREVERSIBLE,
    "Authority to FENCED at a new epoch (no region accepts writes), DENY WRITE ACLs for the "
    "producer principals on the owner, then wait until the owner's end offsets stand still "
    "for thresholds.quiesce_seconds (bounded); record every partition's final end offset.",
    changes="authority FENCED (epoch + 1); DENY WRITE + IDEMPOTENT_WRITE ACLs on the owner",
    unplanned="Authority to FENCED; the ACL fence is attempted and its failure recorded; no "
    "quiesce: wait out the lease TTL so isolated guarded producers have fenced themselves.",
    roles=frozenset({Role.FENCE}),
)
VERIFY_SECONDARY_CURRENCY = Step(
    "verify_secondary_currency", Kind.MEASURE,
    "Wait (bounded) until the secondary holds every record up to the owner's final end "
    "offsets; record the result and any missing offset ranges per partition.",
    unplanned="Cannot be verified without the owner: record the last known lag as data at risk.",
    roles=frozenset({Role.CURRENCY}),
)
TRANSLATE_CONSUMER_OFFSETS = Step(
    "translate_consumer_offsets", Kind.CHANGE,
    "Require the groups to be stopped on the owner (no active members), translate each "
    "group's position exactly (record fingerprints), apply to the secondary, read back.",
    changes="committed offsets of the domain's groups on the secondary",
    unplanned="Translate from MirrorMaker 2 checkpoints (never skips data) and record the "
    "duplicates bound per partition.",
    roles=frozenset({Role.TRANSLATION}),
)
APPROVE_SWITCH = Step(
    "approve-switch", Kind.GATE,
    "Approval with currency, translations and data at risk (0 for a planned failover).",
)
SWITCH_AUTHORITY = Step(
    "switch_authority", Kind.IRREVERSIBLE,
    "Stop replication from the old owner for the domain, lift any fence on the new owner, "
    "authority ACTIVE on the new owner (epoch + 1), published to every reachable region.",
    changes="replication old -> new STOPPED; authority ACTIVE on the new owner (epoch + 1)",
    roles=frozenset({Role.SWITCH}),
)
RECONCILE = Step(
    "reconcile", Kind.MEASURE,
    "Post-checks: the new owner accepts the producer principal's writes, nothing was written "
    "to the old owner after its fence, the groups sit where they were put.",
    roles=frozenset({Role.RECONCILE}),
)

FAILOVER = Runbook(
    name="failover",
    title="Failover",
    purpose="Move write authority for a domain from its owner region to the other region. "
    "Planned when the owner is reachable; unplanned (`--unplanned --reason`) when it is not.",
    steps=(CHECK_LAG, APPROVE_FAILOVER, STOP_PRIMARY_PRODUCERS, VERIFY_SECONDARY_CURRENCY,
           TRANSLATE_CONSUMER_OFFSETS, APPROVE_SWITCH, SWITCH_AUTHORITY, RECONCILE),
)
