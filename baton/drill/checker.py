"""The drill's independent checker: ground truth from the workload's own event logs.

Inputs are what the producer saw acknowledged, what each consumer group processed, the authority
history (epochs from the audit database) and, for lost records, what a direct scan found stored
in each region. It never uses Baton's lag or translation results: it is what the runbook is
judged by.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from baton.workload.records import AckedWrite, Processed, RecordId, StoredCopy

LISTED = 20  # record ids listed per finding; the counts are exact


@dataclass(frozen=True)
class Epoch:
    """One row of the authority history."""

    epoch: int
    owner: str
    state: str  # ACTIVE | FENCED
    changed_at: float  # epoch seconds
    run_id: str | None = None


def _ids(ids) -> list[str]:
    return [f"{p}/{k}/{s}" for p, k, s in sorted(ids)[:LISTED]]


def consumer_findings(acked: list[AckedWrite], processed: list[Processed], groups: list[str],
                      excused: set[RecordId] = frozenset()) -> dict[str, dict]:
    """Per group: acknowledged but never processed (missing), processed more than once (duplicates),
    processed but never acknowledged. `excused` records (a divergent tail set aside by policy) are
    counted apart from missing."""
    acked_ids = {a.id for a in acked}
    result = {}
    for group in groups:
        counts = Counter(p.id for p in processed if p.group == group)
        never = acked_ids - counts.keys()
        missing = never - excused
        duplicates = {i: n - 1 for i, n in counts.items() if n > 1}
        unacknowledged = counts.keys() - acked_ids
        result[group] = {
            "processed": sum(counts.values()), "distinct": len(counts),
            "missing": len(missing), "missing_ids": _ids(missing),
            "set_aside_unprocessed": len(never & excused),
            "duplicates": sum(duplicates.values()), "duplicate_ids": _ids(duplicates),
            "unacknowledged_processed": len(unacknowledged), "unacknowledged_ids": _ids(unacknowledged),
        }
    return result


def second_writer_violations(acked: list[AckedWrite], epochs: list[Epoch]) -> list[dict]:
    """Acknowledgements by a region that was not the ACTIVE owner of the record's epoch, or that it
    accepted after another region had already taken authority (a guard with a stale view)."""
    by_epoch = {e.epoch: e for e in epochs}
    violations = []
    for write in acked:
        epoch = by_epoch.get(write.epoch)
        why = None
        if epoch is None:
            why = f"epoch {write.epoch} is not in the authority history"
        elif epoch.state != "ACTIVE":
            why = f"epoch {write.epoch} was {epoch.state}: no region may write"
        elif epoch.owner != write.region:
            why = f"epoch {write.epoch} belongs to {epoch.owner}"
        else:
            later = next((e for e in epochs if e.epoch > write.epoch and e.state == "ACTIVE"
                          and e.owner != write.region and e.changed_at <= write.sent_at), None)
            if later is not None:
                why = (f"accepted {write.sent_at - later.changed_at:.3f}s after {later.owner} took "
                       f"authority at epoch {later.epoch}")
        if why:
            violations.append({"record": f"{write.producer}/{write.key}/{write.seq}", "region": write.region,
                               "epoch": write.epoch, "topic": write.topic, "partition": write.partition,
                               "offset": write.offset, "why": why})
    return violations


def handovers(acked: list[AckedWrite], epochs: list[Epoch]) -> list[dict]:
    """Each move of write authority between regions and its write gap: from the last write
    acknowledged by the old owner to the first acknowledged by the new one."""
    active = [e for e in sorted(epochs, key=lambda e: e.epoch) if e.state == "ACTIVE"]
    moves = []
    for before, after in zip(active, active[1:], strict=False):
        if before.owner == after.owner:
            continue  # a compensation: authority returned to the same region
        old = [a for a in acked if a.region == before.owner and before.epoch <= a.epoch < after.epoch]
        new = [a for a in acked if a.region == after.owner and a.epoch == after.epoch]
        fenced = next((e for e in epochs
                       if before.epoch < e.epoch < after.epoch and e.state == "FENCED"), None)
        last_old = max((a.acked_at for a in old), default=None)
        first_new = min((a.acked_at for a in new), default=None)
        moves.append({
            "from": before.owner, "to": after.owner, "from_epoch": before.epoch, "to_epoch": after.epoch,
            "fenced_at": fenced.changed_at if fenced else None, "active_at": after.changed_at,
            "run_id": after.run_id, "last_ack_old_owner": last_old, "first_ack_new_owner": first_new,
            "write_gap_seconds": (round(first_new - last_old, 3)
                                  if first_new is not None and last_old is not None else None),
            "old_owner_acks_after_switch": sum(1 for a in old if a.acked_at > after.changed_at),
        })
    return moves


def lost_records(acked: list[AckedWrite], copies: list[StoredCopy], *, old_owner: str, new_owner: str,
                 before_epoch: int) -> dict:
    """Records acknowledged by `old_owner` under an epoch before `before_epoch` of which the new
    owner holds no replicated copy (copies a divergent-tail policy made carry an origin and do
    not count): the records a failover lost."""
    replicated = {c.id for c in copies if c.region == new_owner and c.origin is None}
    lost = {a.id for a in acked if a.region == old_owner and a.epoch < before_epoch} - replicated
    return {"count": len(lost), "ids": _ids(lost), "_set": lost}


def account_divergent(lost: set[RecordId], copies: list[StoredCopy], *, policy: str,
                      current_owner: str, returning: str, discarded: set[RecordId] = frozenset()) -> dict:
    """Where each lost record went under the failback's divergent-tail policy."""
    fates: dict[RecordId, str] = {}
    policy_copies = defaultdict(list)
    for copy in copies:
        if copy.origin is not None:
            policy_copies[copy.id].append(copy)
    for record in lost:
        found = policy_copies.get(record, [])
        if any(c.topic.endswith(".divergent") and c.region == returning for c in found):
            fates[record] = "quarantined"
        elif any(c.region == current_owner and not c.topic.endswith(".divergent") for c in found):
            fates[record] = "republished"
        elif record in discarded:
            fates[record] = "discarded"
        else:
            fates[record] = "unaccounted"
    by_fate = Counter(fates.values())
    expected = {"quarantine": "quarantined", "republish": "republished", "discard": "discarded"}[policy]
    return {"policy": policy, "by_fate": dict(by_fate), "accounted": by_fate.get(expected, 0),
            "unaccounted": len(lost) - by_fate.get(expected, 0),
            "unaccounted_ids": _ids([r for r, f in fates.items() if f != expected])}


def check(acked: list[AckedWrite], processed: list[Processed], epochs: list[Epoch], groups: list[str],
          excused: set[RecordId] = frozenset()) -> dict:
    """Everything the checker finds that needs no scan: consumers, violations, hand-overs."""
    violations = second_writer_violations(acked, epochs)
    return {"acked": len(acked), "acked_by_region": dict(Counter(a.region for a in acked)),
            "consumers": consumer_findings(acked, processed, groups, excused),
            "violations": violations, "handovers": handovers(acked, epochs)}
