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
from runbooks.reprotect import (
    APPROVE_DISCARD,
    FIND_DIVERGENT_TAIL,
    HANDLE_DIVERGENT_TAIL,
    START_REVERSE_REPLICATION,
    VERIFY_STANDBY_CURRENT,
)

APPROVE_FAILBACK = Step(
    "approve-failback", Kind.GATE,
    "Approval with the divergent tail's outcome and the reverse lag.",
)
RESTORE_REPLICATION = Step(
    "restore_replication", Kind.CHANGE,
    "Restart replication in the original direction (new owner -> the other region), once the "
    "stop of the other direction that `switch_authority` requested reads STOPPED (Connect "
    "refuses connector changes while that stop rebalances).",
    changes="replication new owner -> other region RUNNING",
)

FAILBACK = Runbook(
    name="failback",
    title="Failback",
    purpose="Return write authority to the region that held it before a failover, once it is "
    "reachable again: handle its divergent tail, replicate back until the returning region is "
    "current (a lag measured while the reverse flow is still copying the backlog would refuse or "
    "mislead), then fail over in reverse.",
    steps=(FIND_DIVERGENT_TAIL, APPROVE_DISCARD, HANDLE_DIVERGENT_TAIL, START_REVERSE_REPLICATION,
           VERIFY_STANDBY_CURRENT, CHECK_LAG, APPROVE_FAILBACK, STOP_PRIMARY_PRODUCERS,
           VERIFY_SECONDARY_CURRENCY, TRANSLATE_CONSUMER_OFFSETS, CHECK_SWITCH_CONDITIONS,
           APPROVE_SWITCH, SWITCH_AUTHORITY, RESTORE_REPLICATION, RECONCILE),
)
