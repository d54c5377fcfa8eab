"""The audit database's tables (SQLModel). Schema changes go through Alembic (baton/audit/migrations).

Two kinds of table:
- chained, append-only evidence (runs, run_events, steps, approvals, approval_attempts,
  authority_epochs, drill_reports): every row carries `seq` (one sequence across all of them),
  the previous row's hash and its own hash, so an edit, a deletion or an out-of-order insert is detectable;
- small mutable state (authority, run_locks, chain_head) that exists for compare-and-set and
  locking. Every change to it is also written as chained evidence.

Timestamps are timezone-aware UTC (SQLModel's UTCDateTime): they read back identically from
SQLite and PostgreSQL, which keeps the row hashes reproducible.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


class Chained(SQLModel):
    """Columns every evidence row carries (see baton/audit/chain.py)."""

    seq: int = Field(unique=True, index=True, description="position in the one evidence chain")
    recorded_at: datetime
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class Run(Chained, table=True):
    """A runbook run as started. Its end (and manual unlocks) are RunEvents."""

    __tablename__ = "runs"

    id: str = Field(primary_key=True, max_length=80)
    domain: str = Field(index=True, max_length=200)
    runbook: str = Field(max_length=80)
    trigger: str = Field(max_length=80, description="cli, schedule, incident, ...")
    reason: str = Field(default="", sa_column=Column(Text, nullable=False))
    started_by: str = Field(max_length=200)
    planned: bool = True
    started_at: datetime


class RunEvent(Chained, table=True):
    """Something that happened to a run as a whole: finished, lock released by hand."""

    __tablename__ = "run_events"

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True, max_length=80)
    kind: str = Field(max_length=40)
    status: str = Field(max_length=40)
    actor: str = Field(max_length=200)
    detail: str = Field(default="", sa_column=Column(Text, nullable=False))
    at: datetime


class Step(Chained, table=True):
    """One executed runbook step: what it measured and decided (evidence) and how it ended."""

    __tablename__ = "steps"

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True, max_length=80)
    position: int = Field(description="1-based order of the step within its run")
    name: str = Field(max_length=200)
    status: str = Field(max_length=40)
    started_at: datetime
    ended_at: datetime
    region: str | None = Field(default=None, max_length=80)
    epoch: int | None = None
    evidence: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class Approval(Chained, table=True):
    """A decision at a gate."""

    __tablename__ = "approvals"

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True, max_length=80)
    gate: str = Field(max_length=200)
    decision: str = Field(max_length=40)
    approver: str = Field(max_length=200)
    channel: str = Field(max_length=80)
    identity_verified: bool = False
    comment: str = Field(default="", sa_column=Column(Text, nullable=False))
    decided_at: datetime


class ApprovalAttempt(Chained, table=True):
    """One click on an approval request (Slack), accepted or refused, with who sent it and
    whether Slack vouched for that identity (request signature, or the Socket Mode connection).

    Refused attempts may name a run or user that does not exist: they record what was claimed.
    """

    __tablename__ = "approval_attempts"

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(default="", index=True, max_length=80)
    gate: str = Field(default="", max_length=200)
    flow_run_id: str = Field(default="", max_length=80)
    action: str = Field(max_length=80, description="approve, reject, ...")
    outcome: str = Field(max_length=20, description="accepted or refused")
    reason: str = Field(default="", sa_column=Column(Text, nullable=False))
    slack_user_id: str = Field(default="", max_length=80)
    slack_user_name: str = Field(default="", max_length=200)
    slack_team_id: str = Field(default="", max_length=80)
    slack_channel_id: str = Field(default="", max_length=80)
    message_ts: str = Field(default="", max_length=40)
    identity_verified: bool = False
    verified_by: str = Field(default="", max_length=40, description="signature, socket-mode or empty")
    approval_id: int | None = Field(default=None, description="the approvals row an accepted attempt made")
    attempted_at: datetime


class AuthorityEpoch(Chained, table=True):
    """The history of write authority: one row per epoch of a domain."""

    __tablename__ = "authority_epochs"
    __table_args__ = (UniqueConstraint("domain", "epoch", name="uq_authority_epochs_domain_epoch"),)

    id: int | None = Field(default=None, primary_key=True)
    domain: str = Field(index=True, max_length=200)
    epoch: int
    owner: str = Field(max_length=80)
    state: str = Field(max_length=20)
    lease_expires_at: datetime | None = None
    run_id: str | None = Field(default=None, max_length=80)
    changed_at: datetime
    changed_by: str = Field(max_length=200)
    reason: str = Field(default="", sa_column=Column(Text, nullable=False))


class DrillReport(Chained, table=True):
    """The checker's verdict on a drill."""

    __tablename__ = "drill_reports"

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True, max_length=80)
    outcome: str = Field(max_length=40)
    report: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    created_at: datetime


class AuthorityRecord(SQLModel, table=True):
    """The current authority of each domain: the row compare-and-set works on."""

    __tablename__ = "authority"

    domain: str = Field(primary_key=True, max_length=200)
    epoch: int
    owner: str = Field(max_length=80)
    state: str = Field(max_length=20)
    lease_expires_at: datetime | None = None
    run_id: str | None = Field(default=None, max_length=80)
    changed_at: datetime
    changed_by: str = Field(max_length=200)


class RunLock(SQLModel, table=True):
    """One run at a time per domain: the primary key is the lock."""

    __tablename__ = "run_locks"

    domain: str = Field(primary_key=True, max_length=200)
    run_id: str = Field(max_length=80)
    acquired_at: datetime
    acquired_by: str = Field(max_length=200)


class ChainHead(SQLModel, table=True):
    """The last seq and hash of the evidence chain (one row): catches a deleted tail row.
    `signature` is an HMAC of both with a key the database does not hold (chain.sign)."""

    __tablename__ = "chain_head"

    id: int = Field(default=1, primary_key=True)
    seq: int = 0
    hash: str = Field(default="", max_length=64)
    signature: str = Field(default="", max_length=64)


class GateDecisionSlot(SQLModel, table=True):
    """One per run and gate: which flow run asks it, and the one decision it took. The
    approval service claims `approval_id` by compare-and-set, so any number of service
    replicas count one click. Opening and deciding are also chained evidence (attempts)."""

    __tablename__ = "gate_decisions"

    run_id: str = Field(primary_key=True, max_length=80)
    gate: str = Field(primary_key=True, max_length=200)
    flow_run_id: str = Field(max_length=80)
    opened_at: datetime
    approval_id: int | None = None


CHAINED: tuple[type[Chained], ...] = (Run, RunEvent, Step, Approval, AuthorityEpoch, DrillReport,
                                      ApprovalAttempt)


class WatchSample(SQLModel, table=True):
    """One watch measurement of a replication flow (owner -> secondary) of a domain.

    Not chained: samples are telemetry, pruned and downsampled (raw, then 1-minute maxima).
    `slot` (the sample's time divided by its interval, or the minute) makes writes idempotent:
    two watches sampling the same flow in the same slot store one row.
    """

    __tablename__ = "watch_samples"
    __table_args__ = (UniqueConstraint("domain", "owner", "secondary", "resolution", "slot",
                                       name="uq_watch_samples_slot"),)

    id: int | None = Field(default=None, primary_key=True)
    domain: str = Field(index=True, max_length=200)
    owner: str = Field(max_length=80)
    secondary: str = Field(max_length=80)
    resolution: str = Field(max_length=8, description="raw | 1m")
    slot: int = Field(sa_column=Column(BigInteger, nullable=False))
    taken_at: datetime = Field(index=True)
    records_at_risk: int | None = None
    seconds_at_risk: float | None = None
    unknown_partitions: int = 0
    replication_state: str = Field(max_length=20)
    heartbeat_age_seconds: float | None = None
    epoch: int | None = None
    authority_state: str = Field(default="", max_length=20)
    lease_seconds_left: float | None = None
    readiness: str = Field(default="", max_length=8, description="pass | warn | fail, worst check")
    detail: str = Field(default="{}", sa_column=Column(Text, nullable=False))


class WatchAlert(SQLModel, table=True):
    """An alert the watch posted whose recovery is not posted yet (one per domain and cause).

    Mutable state, not evidence: it lets a restarted watch (or a second watch on the same
    database) know what is already open, so a still-failing cause is not alerted again and a
    cleared one gets exactly one recovery message. The row is claimed before the post.
    """

    __tablename__ = "watch_alerts"

    domain: str = Field(primary_key=True, max_length=200)
    cause: str = Field(primary_key=True, max_length=80)
    opened_at: datetime
    evidence: str = Field(default="", sa_column=Column(Text, nullable=False))
