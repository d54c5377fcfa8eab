"""AuditStore: runs, steps (with the evidence wrapper), approvals, drill reports, run locks.

Every write appends to the evidence chain (baton/audit/chain.py) inside the same transaction
as the state it records, so the record and the change cannot disagree.
"""

from __future__ import annotations

import getpass
import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import Session, select

from baton.audit import chain
from baton.audit.db import get_engine, session_scope
from baton.audit.models import (
    Approval,
    ApprovalAttempt,
    AuthorityEpoch,
    AuthorityRecord,
    ChainHead,
    DrillReport,
    GateDecisionSlot,
    Run,
    RunEvent,
    RunLock,
    Step,
)
from baton.errors import AlreadyDecided, AuditUnwritable, RunLocked, UsageError

RUN_STATUSES = ("succeeded", "failed", "aborted")
MAX_TEXT = 2000  # characters kept of a free-text field that came from outside (reason, comment)
DECISIONS = ("approved", "rejected", "timed_out", "refused")
ATTEMPT_OUTCOMES = ("accepted", "refused")


def utcnow() -> datetime:
    return datetime.now(UTC)


def default_actor() -> str:
    try:
        return getpass.getuser()
    except OSError:  # no login name in some containers
        return "unknown"


def new_run_id(runbook: str) -> str:
    return f"{runbook}-{utcnow():%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def bounded(value: object, limit: int) -> str:
    """`value` as text of at most `limit` characters, saying how much was cut."""
    text = "" if value is None else str(value)
    if len(text) <= limit:
        return text
    note = f"...[{len(text) - limit} more chars]"
    return text[: max(0, limit - len(note))] + note if limit > len(note) else text[:limit]


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@dataclass
class StepRecorder:
    """What the body of `AuditStore.step` fills in: evidence (JSON-able), region, epoch."""

    evidence: dict[str, Any] = field(default_factory=dict)
    region: str | None = None
    epoch: int | None = None


@dataclass
class RunView:
    """A run with everything recorded about it, for `baton audit show`."""

    run: Run
    status: str
    ended_at: datetime | None
    events: list[RunEvent]
    steps: list[Step]
    approvals: list[Approval]
    drill_reports: list[DrillReport]
    approval_attempts: list[ApprovalAttempt] = field(default_factory=list)

    def as_dict(self) -> dict:
        def plain(row, drop=("prev_hash",)) -> dict:
            data = row.model_dump(mode="json", exclude=set(drop))
            for key in ("evidence", "report"):
                if key in data:
                    data[key] = json.loads(data[key])
            return data

        return {
            "run": plain(self.run) | {"status": self.status,
                                      "ended_at": self.ended_at.isoformat() if self.ended_at else None},
            "steps": [plain(s) for s in self.steps],
            "approvals": [plain(a) for a in self.approvals],
            "events": [plain(e) for e in self.events],
            "drill_reports": [plain(d) for d in self.drill_reports],
            "approval_attempts": [plain(a) for a in self.approval_attempts],
        }


class AuditStore:
    """The audit database behind one URL (SQLite or PostgreSQL); migrated on first use."""

    def __init__(self, database_url: str, chain_key: bytes | None = None):
        self.engine = get_engine(database_url)
        self.chain_key = chain_key  # signs the chain head (baton/audit/anchor.py); never stored
        # What identifies the database this store writes to: a SQLite file's inode, and the chain
        # head after this store's last write. Either changing under a run means its evidence is gone.
        database = self.engine.url.database if self.engine.url.get_backend_name() == "sqlite" else None
        self._file = Path(database) if database and database != ":memory:" else None
        self._inode = self._file_identity()
        self._head: tuple[int, str] | None = None

    @classmethod
    def for_topology(cls, topology) -> AuditStore:
        from baton.audit.anchor import chain_key

        return cls(topology.audit.database_url, chain_key(topology))

    def _file_identity(self) -> tuple[int, int] | None:
        if self._file is None:
            return None
        try:
            stat = self._file.stat()
        except OSError:
            return None
        return stat.st_dev, stat.st_ino

    def _check_same_database(self, session: Session) -> None:
        where = self.engine.url.render_as_string(hide_password=True)
        if self._file is not None and self._file_identity() != self._inode:
            raise AuditUnwritable(f"the audit database {where} disappeared or was replaced while in use: "
                                  "evidence written now would not be where the run's evidence is")
        if self._head is not None:
            head = session.get(ChainHead, 1)
            seq, digest = (head.seq, head.hash) if head else (0, "")
            if seq < self._head[0] or (seq == self._head[0] and digest != self._head[1]):
                raise AuditUnwritable(
                    f"the audit database {where} no longer holds what this process wrote: its chain head "
                    f"is seq {seq}, this process wrote up to seq {self._head[0]} (replaced or restored "
                    "from a backup?)")

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A transaction; a database that refuses it, or is not the one this store wrote to,
        raises AuditUnwritable (the run stops where it is: nothing unrecorded is changed)."""
        try:
            with session_scope(self.engine) as session:
                session.info["chain_key"] = self.chain_key
                self._check_same_database(session)
                yield session
                if session.new or session.dirty or session.deleted:
                    session.flush()
                    head = session.get(ChainHead, 1)
                    if head is not None:
                        self._head = (head.seq, head.hash)
        except IntegrityError:
            raise
        except DBAPIError as e:
            where = self.engine.url.render_as_string(hide_password=True)
            raise AuditUnwritable(f"the audit database is not writable: {e.orig} ({where})") from e

    # -- runs and the one-run-per-domain lock -------------------------------------------------

    def start_run(self, domain: str, runbook: str, *, trigger: str = "cli", reason: str = "",
                  started_by: str | None = None, planned: bool = True,
                  run_id: str | None = None) -> Run:
        """Record a new run and take the domain's lock; RunLocked names the run holding it."""
        run_id = run_id or new_run_id(runbook)
        started_by = started_by or default_actor()
        now = utcnow()
        try:
            with self.transaction() as session:
                session.add(RunLock(domain=domain, run_id=run_id, acquired_at=now, acquired_by=started_by))
                session.flush()
                run = Run(id=run_id, domain=domain, runbook=runbook, trigger=trigger, reason=reason,
                          started_by=started_by, planned=planned, started_at=now)
                return chain.append(session, run, now)
        except IntegrityError:
            refusal = self.lock_refusal(domain)
            if refusal is None:  # released between our insert and this read: a true race, retry once
                return self.start_run(domain, runbook, trigger=trigger, reason=reason,
                                      started_by=started_by, planned=planned, run_id=run_id)
            raise RunLocked(refusal) from None

    def lock_holder(self, domain: str) -> RunLock | None:
        with self.transaction() as session:
            return session.get(RunLock, domain)

    def lock_refusal(self, domain: str) -> str | None:
        """Why a new run of `domain` would be refused now (the run holding its lock and the way
        out), or None when no run holds it."""
        holder = self.lock_holder(domain)
        if holder is None:
            return None
        holder_runbook = self.run(holder.run_id).run.runbook
        way_out = (f"continue it with `baton {holder_runbook} --resume {holder.run_id}`"
                   if holder_runbook in ("failover", "failback", "reprotect") else
                   f"release it with `baton authority unlock --run {holder.run_id}`")
        return (f"domain {domain!r} is locked by run {holder.run_id} (started by {holder.acquired_by} "
                f"at {holder.acquired_at:%Y-%m-%d %H:%M:%S} UTC). Wait for it to finish, or if that "
                f"run crashed, {way_out}.")

    def finish_run(self, run_id: str, status: str, *, actor: str | None = None, detail: str = "") -> RunEvent:
        """Record how a run ended and release its lock (if it still holds it)."""
        if status not in RUN_STATUSES:
            raise UsageError(f"run status must be one of {', '.join(RUN_STATUSES)}, not {status!r}")
        with self.transaction() as session:
            run = self._run(session, run_id)
            lock = session.get(RunLock, run.domain)
            if lock is not None and lock.run_id == run_id:
                session.delete(lock)
            now = utcnow()
            event = RunEvent(run_id=run_id, kind="finished", status=status,
                             actor=actor or default_actor(), detail=detail, at=now)
            return chain.append(session, event, now)

    def unlock(self, run_id: str, *, actor: str | None = None, reason: str = "") -> RunEvent:
        """Release the lock a crashed run left behind, recorded as such."""
        with self.transaction() as session:
            run = self._run(session, run_id)
            lock = session.get(RunLock, run.domain)
            if lock is None or lock.run_id != run_id:
                holder = f"run {lock.run_id} holds it" if lock else "no run holds it"
                raise UsageError(f"run {run_id} does not hold the lock on domain {run.domain!r} "
                                 f"({holder}); nothing was changed")
            session.delete(lock)
            now = utcnow()
            event = RunEvent(run_id=run_id, kind="lock_released", status="aborted",
                             actor=actor or default_actor(),
                             detail=reason or "lock released by hand (run presumed crashed)", at=now)
            return chain.append(session, event, now)

    def _run(self, session: Session, run_id: str) -> Run:
        run = session.get(Run, run_id)
        if run is None:
            raise UsageError(f"no run {run_id!r} in the audit database; `baton audit runs` lists them")
        return run

    # -- steps: the evidence wrapper ----------------------------------------------------------

    @contextmanager
    def step(self, run_id: str, name: str, *, region: str | None = None,
             epoch: int | None = None) -> Iterator[StepRecorder]:
        """Record a step's start, end, status, evidence and error; errors are recorded then re-raised.

            with audit.step(run_id, "fence_old_owner", region="east") as step:
                step.evidence["acls"] = fence(...)
        """
        recorder = StepRecorder(region=region, epoch=epoch)
        started = utcnow()
        try:
            yield recorder
        except BaseException as e:  # the one broad catch: record, then re-raise unchanged
            self.record_step(run_id, name, "failed", started, utcnow(), recorder.evidence,
                             error=f"{type(e).__name__}: {e}", region=recorder.region,
                             epoch=recorder.epoch)
            raise
        self.record_step(run_id, name, "succeeded", started, utcnow(), recorder.evidence,
                         region=recorder.region, epoch=recorder.epoch)

    def record_step(self, run_id: str, name: str, status: str, started_at: datetime,
                    ended_at: datetime, evidence: dict, *, error: str | None = None,
                    region: str | None = None, epoch: int | None = None) -> Step:
        with self.transaction() as session:
            self._run(session, run_id)
            chain.lock(session)  # before counting: two concurrent steps must not share a position
            position = session.exec(
                select(func.count()).select_from(Step).where(Step.run_id == run_id)).one() + 1
            row = Step(run_id=run_id, position=position, name=name, status=status,
                       started_at=started_at, ended_at=ended_at, region=region, epoch=epoch,
                       evidence=_json(evidence), error=error)
            return chain.append(session, row, utcnow())

    # -- approvals and drill reports ----------------------------------------------------------

    def record_approval(self, run_id: str, gate: str, decision: str, approver: str, *,
                        channel: str = "cli", identity_verified: bool = False,
                        comment: str = "") -> Approval:
        if decision not in DECISIONS:
            raise UsageError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
        with self.transaction() as session:
            self._run(session, run_id)
            now = utcnow()
            row = Approval(run_id=run_id, gate=gate, decision=decision, approver=approver,
                           channel=channel, identity_verified=identity_verified, comment=comment,
                           decided_at=now)
            return chain.append(session, row, now)

    def record_approval_attempt(self, *, action: str, outcome: str, reason: str = "",
                                run_id: str = "", gate: str = "", flow_run_id: str = "",
                                slack_user_id: str = "", slack_user_name: str = "",
                                slack_team_id: str = "", slack_channel_id: str = "",
                                message_ts: str = "", identity_verified: bool = False,
                                verified_by: str = "", decision: str | None = None,
                                approver: str = "", comment: str = "",
                                approval_id: int | None = None) -> ApprovalAttempt:
        """Record one click on an approval request. An accepted attempt with a `decision` also
        records the approval (channel slack) in the same transaction and links the two; a
        refused attempt may name the approval it voids (`approval_id`: it never reached the run)."""
        if outcome not in ATTEMPT_OUTCOMES:
            raise UsageError(f"attempt outcome must be one of {', '.join(ATTEMPT_OUTCOMES)}, not {outcome!r}")
        # What a click claims is untrusted: every field is cut to its column (the chain is
        # append-only, so an oversized row could never be shed).
        action, run_id, gate, flow_run_id = (bounded(action, 80), bounded(run_id, 80), bounded(gate, 200),
                                             bounded(flow_run_id, 80))
        slack_user_id, slack_user_name = bounded(slack_user_id, 80), bounded(slack_user_name, 200)
        slack_team_id, slack_channel_id = bounded(slack_team_id, 80), bounded(slack_channel_id, 80)
        message_ts, verified_by = bounded(message_ts, 40), bounded(verified_by, 40)
        reason, comment = bounded(reason, MAX_TEXT), bounded(comment, MAX_TEXT)
        approver = bounded(approver, 200)
        with self.transaction() as session:
            now = utcnow()
            if decision is not None:
                if outcome != "accepted" or decision not in ("approved", "rejected"):
                    raise UsageError("only an accepted attempt records a decision (approved or rejected)")
                self._run(session, run_id)
                approval = chain.append(session, Approval(
                    run_id=run_id, gate=gate, decision=decision, approver=approver, channel="slack",
                    identity_verified=identity_verified, comment=comment, decided_at=now), now)
                approval_id = approval.id
                # The compare-and-set: one decision per run and gate, whichever replica asks.
                claimed = session.execute(
                    update(GateDecisionSlot)
                    .where(GateDecisionSlot.run_id == run_id, GateDecisionSlot.gate == gate,
                           GateDecisionSlot.flow_run_id == flow_run_id,
                           GateDecisionSlot.approval_id.is_(None))
                    .values(approval_id=approval_id))
                if claimed.rowcount != 1:
                    raise AlreadyDecided(f"{gate} of run {run_id} was already decided")
            elif approval_id is not None:  # the decision never reached the run: free the gate
                session.execute(update(GateDecisionSlot)
                                .where(GateDecisionSlot.approval_id == approval_id)
                                .values(approval_id=None))
            row = ApprovalAttempt(run_id=run_id, gate=gate, flow_run_id=flow_run_id, action=action,
                                  outcome=outcome, reason=reason, slack_user_id=slack_user_id,
                                  slack_user_name=slack_user_name, slack_team_id=slack_team_id,
                                  slack_channel_id=slack_channel_id, message_ts=message_ts,
                                  identity_verified=identity_verified, verified_by=verified_by,
                                  approval_id=approval_id, attempted_at=now)
            return chain.append(session, row, now)

    def open_gate(self, run_id: str, gate: str, flow_run_id: str) -> None:
        """Record the flow run that asks this gate (a resumed run asks it from a new one)."""
        with self.transaction() as session:
            slot = session.get(GateDecisionSlot, (run_id, gate))
            if slot is None:
                slot = GateDecisionSlot(run_id=run_id, gate=gate, flow_run_id=flow_run_id, opened_at=utcnow())
            else:
                slot.flow_run_id, slot.opened_at, slot.approval_id = flow_run_id, utcnow(), None
            session.add(slot)

    def gate_slot(self, run_id: str, gate: str) -> GateDecisionSlot | None:
        with self.transaction() as session:
            return session.get(GateDecisionSlot, (run_id, gate))

    def approval_attempts(self, run_id: str | None = None) -> list[ApprovalAttempt]:
        """Every recorded click (of one run, or all), oldest first."""
        with self.transaction() as session:
            query = select(ApprovalAttempt).order_by(ApprovalAttempt.seq)
            if run_id is not None:
                query = query.where(ApprovalAttempt.run_id == run_id)
            return list(session.exec(query))

    def record_drill_report(self, run_id: str, outcome: str, report: dict) -> DrillReport:
        with self.transaction() as session:
            self._run(session, run_id)
            now = utcnow()
            row = DrillReport(run_id=run_id, outcome=outcome, report=_json(report), created_at=now)
            return chain.append(session, row, now)

    # -- reading ------------------------------------------------------------------------------

    def run(self, run_id: str) -> RunView:
        with self.transaction() as session:
            run = self._run(session, run_id)
            events = rows_of(session, RunEvent, run_id)
            lock = session.get(RunLock, run.domain)
            steps = rows_of(session, Step, run_id)
            approvals = rows_of(session, Approval, run_id)
            reports = rows_of(session, DrillReport, run_id)
            attempts = rows_of(session, ApprovalAttempt, run_id)
        finished = [e for e in events if e.kind in ("finished", "lock_released")]
        if finished:
            status, ended_at = finished[-1].status, finished[-1].at
        else:
            holds_lock = lock is not None and lock.run_id == run_id
            status, ended_at = ("running" if holds_lock else "unknown"), None
        return RunView(run, status, ended_at, events, steps, approvals, reports, attempts)

    def runs(self, domain: str | None = None, limit: int = 50) -> list[Run]:
        with self.transaction() as session:
            query = select(Run).order_by(Run.seq.desc()).limit(limit)
            if domain:
                query = query.where(Run.domain == domain)
            return list(session.exec(query))

    def verify(self) -> chain.Verdict:
        """Check the whole evidence chain (see baton/audit/chain.py), its signed head, and that
        each domain's `authority` row is the last epoch of its chained history."""
        with self.transaction() as session:
            verdict = chain.verify(session)
            if verdict.ok:
                verdict.first_break = (_authority_disagreement(session) or _lock_disagreement(session)
                                       or _decision_disagreement(session))
            return verdict

    def head(self) -> ChainHead:
        """The chain's head (seq 0 and no hash when empty)."""
        with self.transaction() as session:
            return session.get(ChainHead, 1) or ChainHead(id=1, seq=0, hash=chain.GENESIS)

    def last_epoch(self, domain: str) -> AuthorityEpoch | None:
        with self.transaction() as session:
            return session.exec(select(AuthorityEpoch).where(AuthorityEpoch.domain == domain)
                                .order_by(AuthorityEpoch.epoch.desc()).limit(1)).first()

    def chain_row(self, seq: int):
        """The chained row at `seq`, or None."""
        from baton.audit.models import CHAINED

        with self.transaction() as session:
            for table in CHAINED:
                row = session.exec(select(table).where(table.seq == seq)).first()
                if row is not None:
                    return row
        return None


def _lock_disagreement(session: Session) -> chain.Break | None:
    """The first run lock that the chained runs and their end events contradict: a run that
    never ended holds its domain's lock until it ends or is unlocked (both chained events)."""
    ended = {e.run_id for e in session.exec(select(RunEvent))
             if e.kind in ("finished", "lock_released")}
    runs = {r.id: r for r in session.exec(select(Run))}
    locks = {lock.domain: lock for lock in session.exec(select(RunLock))}
    for domain, lock in sorted(locks.items()):
        if lock.run_id not in runs or lock.run_id in ended:
            why = "is not in the chain" if lock.run_id not in runs else "has ended"
            return chain.Break("run_locks", domain, 0,
                               f"the lock on {domain!r} is held by run {lock.run_id}, which {why}")
    for run in sorted(runs.values(), key=lambda r: r.seq):
        lock = locks.get(run.domain)
        if run.id not in ended and (lock is None or lock.run_id != run.id):
            return chain.Break("run_locks", run.domain, run.seq,
                               f"run {run.id} has not ended but does not hold the lock on {run.domain!r}: "
                               "run_locks was edited")
    return None


def _decision_disagreement(session: Session) -> chain.Break | None:
    """The first gate decision that does not point at a Slack approval of that run and gate."""
    for slot in session.exec(select(GateDecisionSlot).where(GateDecisionSlot.approval_id.is_not(None))):
        approval = session.get(Approval, slot.approval_id)
        if approval is None or (approval.run_id, approval.gate, approval.channel) != (slot.run_id, slot.gate,
                                                                                       "slack"):
            return chain.Break("gate_decisions", f"{slot.run_id}/{slot.gate}", 0,
                               f"the decision of {slot.gate} in run {slot.run_id} names approval "
                               f"{slot.approval_id}, which is not a Slack decision of that gate")
    return None


AUTHORITY_COLUMNS = ("epoch", "owner", "state", "run_id", "changed_by")


def _authority_disagreement(session: Session) -> chain.Break | None:
    """The first domain whose `authority` row is not its last `authority_epochs` row."""
    current = {r.domain: r for r in session.exec(select(AuthorityRecord))}
    last: dict[str, AuthorityEpoch] = {}
    for row in session.exec(select(AuthorityEpoch).order_by(AuthorityEpoch.epoch)):
        last[row.domain] = row
    for domain in sorted(set(current) | set(last)):
        row, history = current.get(domain), last.get(domain)
        if history is None:
            return chain.Break("authority", domain, 0, f"domain {domain!r} has an authority row "
                               f"(epoch {row.epoch}) but no authority_epochs history")
        if row is None:
            return chain.Break("authority", domain, history.seq, f"domain {domain!r} has no authority "
                               f"row, but authority_epochs ends at epoch {history.epoch}")
        differ = [f"{c} {getattr(row, c)!r} vs {getattr(history, c)!r}" for c in AUTHORITY_COLUMNS
                  if getattr(row, c) != getattr(history, c)]
        if differ:
            return chain.Break("authority", domain, history.seq,
                               f"the authority row of {domain!r} disagrees with the last authority_epochs "
                               f"row (seq {history.seq}): {'; '.join(differ)}")
    return None


def rows_of(session: Session, table, run_id: str) -> list:
    return list(session.exec(select(table).where(table.run_id == run_id).order_by(table.seq)))
