"""Failback: bring write authority home after a failover, without losing the divergent tail."""

from runbooks.failover import (
    APPROVE_SWITCH,
    CHECK_LAG,
    CHECK_SWITCH_CONDITIONS,
    RECONCILE,
    STOP_PRIMARY_PRODUCERS,
    SWITCH_AUTHORITY,
    TRANSLATE_CONSUMER_OFFSETS,
    VERIFY_SECONDARY_CURRENCY,
)
from runbooks.model import Kind, Runbook, Step

FIND_DIVERGENT_TAIL = Step(
    "find_divergent_tail", Kind.CHANGE,
    "Fence the returning region (it could not be fenced if the failover was unplanned), then "
    "list every record on it written after the last record that reached the current owner "
    "(partition, offset, key, timestamp): the divergent tail.",
    changes="DENY WRITE ACLs on the returning region, if not already there",
)
APPROVE_DISCARD = Step(
    "approve-discard", Kind.GATE,
    "Only with policy `discard`: approval to drop the divergent tail, with every record listed.",
    when="divergent_policy=discard",
)
HANDLE_DIVERGENT_TAIL = Step(
    "handle_divergent_tail", Kind.CHANGE,
    "Apply the divergent-tail policy: `republish` to the current owner, `quarantine` to "
    "`<topic>.divergent`, or `discard` (after its own gate). Each record's fate is recorded.",
    changes="records appended to the current owner or to <topic>.divergent",
)
START_REVERSE_REPLICATION = Step(
    "start_reverse_replication", Kind.CHANGE,
    "Start replication from the current owner back to the old owner and wait until it runs.",
    changes="replication current -> old owner RUNNING",
)
APPROVE_FAILBACK = Step(
    "approve-failback", Kind.GATE,
    "Approval with the divergent tail's outcome and the reverse lag.",
)
RESTORE_REPLICATION = Step(
    "restore_replication", Kind.CHANGE,
    "Restart replication in the original direction (new owner -> the other region).",
    changes="replication new owner -> other region RUNNING",
)

FAILBACK = Runbook(
    name="failback",
    title="Failback",
    purpose="Return write authority to the region that held it before a failover, once it is "
    "reachable again: handle its divergent tail, replicate back, then fail over in reverse.",
    steps=(FIND_DIVERGENT_TAIL, APPROVE_DISCARD, HANDLE_DIVERGENT_TAIL, START_REVERSE_REPLICATION,
           CHECK_LAG, APPROVE_FAILBACK, STOP_PRIMARY_PRODUCERS, VERIFY_SECONDARY_CURRENCY,
           TRANSLATE_CONSUMER_OFFSETS, CHECK_SWITCH_CONDITIONS, APPROVE_SWITCH, SWITCH_AUTHORITY,
           RESTORE_REPLICATION, RECONCILE),
)
