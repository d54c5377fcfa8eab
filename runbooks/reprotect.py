"""Reprotect: replicate towards the region that lost authority, so a second failure loses nothing."""

from dataclasses import replace

from runbooks.model import Kind, Role, Runbook, Step

# Shared with failback, which runs them before handing authority back.
FIND_DIVERGENT_TAIL = Step(
    "find_divergent_tail", Kind.CHANGE,
    "Fence the region to protect, the one that lost authority (it could not be fenced if the "
    "failover was unplanned; refused, naming it, while it does not answer), then list every "
    "record on it written after the last record that reached the current owner (partition, "
    "offset, key, timestamp), less records an earlier run already handled: the divergent tail.",
    changes="DENY WRITE ACLs on the region to protect, if not already there",
)
APPROVE_DISCARD = Step(
    "approve-discard", Kind.GATE,
    "Only with policy `discard`: approval to drop the divergent tail, with every record listed.",
    when="divergent_policy=discard",
)
HANDLE_DIVERGENT_TAIL = Step(
    "handle_divergent_tail", Kind.CHANGE,
    "Apply the divergent-tail policy: `republish` to the current owner, `quarantine` to "
    "`<topic>.divergent`, or `discard` (after its own gate). Each record's fate is recorded, "
    "so no later run handles it again.",
    changes="records appended to the current owner or to <topic>.divergent",
    roles=frozenset({Role.TAIL}),
)
START_REVERSE_REPLICATION = Step(
    "start_reverse_replication", Kind.CHANGE,
    "Start replication from the current owner to the region to protect and wait until it runs; "
    "passes straight through when it already runs.",
    changes="replication current owner -> region to protect RUNNING",
    roles=frozenset({Role.PROTECT}),
)
VERIFY_STANDBY_CURRENT = Step(
    "verify_standby_current", Kind.MEASURE,
    "Wait (bounded by thresholds.step_timeout_seconds, progress logged) until the standby's "
    "mirror holds every record the owner had when the step began; record the lag per partition "
    "and the time it took. The owner keeps accepting writes throughout.",
    roles=frozenset({Role.RECONCILE}),
)

REPROTECT = Runbook(
    name="reprotect",
    title="Reprotect",
    purpose="With the current owner ACTIVE after a failover, protect the region that lost "
    "authority: handle its divergent tail (policy as in failback), replicate the owner to it, "
    "and wait until it is current. Authority does not move and nothing is fenced on the owner; "
    "running it again is harmless. A planned failover ends with these steps; after an unplanned "
    "one run `baton reprotect` once the old owner answers (`baton ready` says when).",
    steps=(FIND_DIVERGENT_TAIL, APPROVE_DISCARD, HANDLE_DIVERGENT_TAIL, START_REVERSE_REPLICATION,
           VERIFY_STANDBY_CURRENT),
)

# The steps a planned failover runs after its reconcile, towards the old owner it just fenced.
# Its divergent tail is empty (fenced, then verified current), so no discard gate is needed.
PLANNED_FAILOVER_REPROTECT = tuple(
    replace(step, when="unplanned=False")
    for step in (FIND_DIVERGENT_TAIL, HANDLE_DIVERGENT_TAIL, START_REVERSE_REPLICATION,
                 VERIFY_STANDBY_CURRENT))
