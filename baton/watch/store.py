"""Watch samples in the audit database: idempotent writes, the newest sample, retention.

Retention: raw samples for `watch.raw_retention_hours` (default 24 h), then one row per
minute holding that minute's maxima, for `watch.downsampled_retention_days` (default 30).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete
from sqlmodel import select

from baton.audit import AuditStore
from baton.audit.models import WatchSample
from baton.watch.readiness import Readiness
from baton.watch.sampler import Sample

RAW, MINUTE = "raw", "1m"
INSERT_CHUNK = 500  # rows per INSERT: 16 bound values each, below SQLite's variable limit


def row_of(sample: Sample, readiness: Readiness | None) -> WatchSample:
    detail = sample.detail()
    if readiness is not None:
        failing = {c.name: c.status for c in readiness.checks if c.status != "pass"}
        if failing:  # the status column says "pass" when every check passed
            detail["readiness"] = failing
            detail["readiness_summary"] = readiness.summary()[:1500]
    authority = sample.authority
    return WatchSample(
        domain=sample.domain, owner=sample.owner, secondary=sample.secondary, resolution=RAW,
        slot=int(sample.taken_at // sample.interval_seconds),
        taken_at=datetime.fromtimestamp(sample.taken_at, UTC),
        records_at_risk=sample.records_at_risk, seconds_at_risk=sample.seconds_at_risk,
        unknown_partitions=sample.unknown_partitions, replication_state=sample.replication_state,
        heartbeat_age_seconds=sample.heartbeat_age_seconds,
        epoch=authority.epoch if authority else None,
        authority_state=authority.state.value if authority else "",
        lease_seconds_left=sample.lease_seconds_left,
        readiness=readiness.status if readiness else "",
        detail=json.dumps(detail, separators=(",", ":"), default=str),
    )


def insert_ignoring_duplicates(session, rows: list[WatchSample]) -> int:
    """Insert rows; a row whose slot is already stored (another watch's sample) is skipped."""
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    inserted = 0
    for start in range(0, len(rows), INSERT_CHUNK):
        values = [r.model_dump(exclude={"id"}) for r in rows[start:start + INSERT_CHUNK]]
        inserted += session.execute(insert(WatchSample).values(values).on_conflict_do_nothing()).rowcount or 0
    return inserted


@dataclass
class StoredSample:
    """A stored sample as the runbooks read it back."""

    row: WatchSample

    @property
    def age_seconds(self) -> float:
        return (datetime.now(UTC) - self.row.taken_at).total_seconds()

    def statement(self) -> str:
        row = self.row
        return (f"{row.records_at_risk} records / {row.seconds_at_risk:.1f} seconds at risk as of "
                f"{row.taken_at.isoformat(timespec='seconds')} (sample age {self.age_seconds:.1f} s)")


class SampleStore:
    def __init__(self, audit: AuditStore):
        self.audit = audit

    def record(self, sample: Sample, readiness: Readiness | None = None) -> bool:
        """Store one sample; False when this flow's slot was already stored (by another watch)."""
        with self.audit.transaction() as session:
            return insert_ignoring_duplicates(session, [row_of(sample, readiness)]) == 1

    def newest(self, domain: str, owner: str, secondary: str, *,
               measured: bool = False) -> StoredSample | None:
        """The newest raw sample of the flow owner -> secondary (with an at-risk figure if `measured`)."""
        with self.audit.transaction() as session:
            query = (select(WatchSample)
                     .where(WatchSample.domain == domain, WatchSample.owner == owner,
                            WatchSample.secondary == secondary, WatchSample.resolution == RAW)
                     .order_by(WatchSample.taken_at.desc()).limit(1))
            if measured:
                query = query.where(WatchSample.records_at_risk.is_not(None))
            row = session.exec(query).first()
        return StoredSample(row) if row else None

    def count(self, domain: str | None = None, resolution: str | None = None) -> int:
        from sqlalchemy import func

        with self.audit.transaction() as session:
            query = select(func.count()).select_from(WatchSample)
            if domain:
                query = query.where(WatchSample.domain == domain)
            if resolution:
                query = query.where(WatchSample.resolution == resolution)
            return session.exec(query).one()

    def prune(self, *, raw_hours: float, downsampled_days: float, now: datetime | None = None,
              batch: int = 20_000) -> dict:
        """Fold raw samples older than `raw_hours` into per-minute maxima; drop old minutes."""
        now = now or datetime.now(UTC)
        raw_cutoff = now - timedelta(hours=raw_hours)
        minute_cutoff = now - timedelta(days=downsampled_days)
        with self.audit.transaction() as session:
            old = list(session.exec(select(WatchSample)
                                    .where(WatchSample.resolution == RAW, WatchSample.taken_at < raw_cutoff)
                                    .order_by(WatchSample.taken_at).limit(batch)))
            minutes = fold_minutes(old)
            folded = insert_ignoring_duplicates(session, minutes)
            if old:
                session.execute(delete(WatchSample).where(WatchSample.id.in_([r.id for r in old])))
            dropped = session.execute(delete(WatchSample).where(
                WatchSample.resolution == MINUTE, WatchSample.taken_at < minute_cutoff)).rowcount
        return {"raw_folded": len(old), "minutes_written": folded, "minutes_dropped": dropped or 0}


def fold_minutes(rows: list[WatchSample]) -> list[WatchSample]:
    """One row per flow and minute: the worst figures of that minute (maxima; lease: minimum)."""
    groups: dict[tuple, list[WatchSample]] = {}
    for row in rows:
        minute = int(row.taken_at.timestamp() // 60)
        groups.setdefault((row.domain, row.owner, row.secondary, minute), []).append(row)
    folded = []
    order = {"": 0, "pass": 1, "warn": 2, "fail": 3}
    for (domain, owner, secondary, minute), members in groups.items():
        worst = max(members, key=lambda r: (r.records_at_risk or 0, r.seconds_at_risk or 0))
        folded.append(WatchSample(
            domain=domain, owner=owner, secondary=secondary, resolution=MINUTE, slot=minute,
            taken_at=datetime.fromtimestamp(minute * 60, UTC),
            records_at_risk=_max(r.records_at_risk for r in members),
            seconds_at_risk=_max(r.seconds_at_risk for r in members),
            unknown_partitions=max(r.unknown_partitions for r in members),
            replication_state=worst.replication_state if all(
                r.replication_state == members[0].replication_state for r in members) else "MIXED",
            heartbeat_age_seconds=_max(r.heartbeat_age_seconds for r in members),
            epoch=_max(r.epoch for r in members),
            authority_state=members[-1].authority_state,
            lease_seconds_left=_min(r.lease_seconds_left for r in members),
            readiness=max((r.readiness for r in members), key=order.get),
            detail=worst.detail,
        ))
    return folded


def _max(values):
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _min(values):
    present = [v for v in values if v is not None]
    return min(present) if present else None


def data_at_risk(audit: AuditStore, topology, owner: str, secondary: str) -> dict:
    """What an unplanned failover can say about the data at risk: the watch's newest sample of
    this very flow (owner -> secondary), with its age; stated plainly when none is fresh."""
    interval = topology.watch.interval_seconds
    flow = f"{owner} -> {secondary}"
    try:
        newest = SampleStore(audit).newest(topology.domain.name, owner, secondary, measured=True)
    except Exception as e:  # noqa: BLE001 - the statement must be made even without the table
        newest, why = None, f" (samples not read: {str(e).splitlines()[0][:200]})"
    else:
        why = ""
    if newest is None:
        return {"records": None, "seconds": None, "source": "watch", "fresh": False,
                "statement": f"unknown: no watch sample of {flow} for domain {topology.domain.name}"
                             f"{why}; is `baton watch` running?"}
    row, age = newest.row, newest.age_seconds
    fresh = age <= 3 * interval
    statement = newest.statement()
    if not fresh:
        statement = (f"NO FRESH WATCH SAMPLE of {flow} (newest {age:.1f} s old, more than 3 intervals of "
                     f"{interval:g} s): {statement}, plus whatever was written since")
    return {"records": row.records_at_risk, "seconds": row.seconds_at_risk, "source": "watch",
            "flow": flow, "as_of": row.taken_at.isoformat(), "sample_age_seconds": round(age, 1),
            "fresh": fresh, "unknown_partitions": row.unknown_partitions,
            "replication_state": row.replication_state, "statement": statement}


def readiness_line(audit: AuditStore, topology, owner: str, secondary: str) -> str:
    """The readiness the watch last judged for the flow owner -> secondary, for a gate's evidence."""
    try:
        newest = SampleStore(audit).newest(topology.domain.name, owner, secondary)
    except Exception as e:  # noqa: BLE001 - a gate must still show something
        return f"unknown: watch samples not read ({str(e).splitlines()[0][:200]})"
    if newest is None or not newest.row.readiness:
        return f"unknown: no watch sample of {owner} -> {secondary} (is `baton watch` running?)"
    detail = json.loads(newest.row.detail)
    summary = detail.get("readiness_summary") or (
        f"{secondary} READY to take over {topology.domain.name}" if newest.row.readiness == "pass"
        else newest.row.readiness)
    stale = newest.age_seconds > 3 * topology.watch.interval_seconds
    return (f"{summary} (watch sample {newest.age_seconds:.0f} s old"
            + (", NOT FRESH)" if stale else ")"))


# What a planned switch needs from the secondary now. Checkpoint and offset-sync freshness, the
# heartbeat and the lease matter when the owner is lost (unplanned); a planned switch measures its
# own currency and translates exactly inside the fence, so they are shown but do not block it.
SWITCH_CHECKS = ("replication_running", "topic_parity", "producers_can_write", "consumers_can_read",
                 "transactions_read_committed")


def switch_readiness(audit: AuditStore, topology, owner: str, secondary: str) -> dict:
    """The watch's newest fresh readiness for a planned switch owner -> secondary.

    `ready` is None when there is no fresh sample (the condition is then not measured), False when
    a check the switch depends on failed."""
    statement = readiness_line(audit, topology, owner, secondary)
    try:
        newest = SampleStore(audit).newest(topology.domain.name, owner, secondary)
    except Exception:  # noqa: BLE001 - the statement above already says why
        newest = None
    if newest is None or not newest.row.readiness or \
            newest.age_seconds > 3 * topology.watch.interval_seconds:
        return {"ready": None, "statement": statement, "failing": [], "taken_at": None}
    failing = sorted(name for name, status in json.loads(newest.row.detail).get("readiness", {}).items()
                     if status == "fail" and name in SWITCH_CHECKS)
    return {"ready": not failing, "statement": statement, "failing": failing,
            "taken_at": newest.row.taken_at}
