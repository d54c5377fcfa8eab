"""AuthorityStore: the current authority per domain, changed only by compare-and-set on the epoch.

The `authority` row is the compare-and-set target; every epoch is also appended to the
chained `authority_epochs` history in the same transaction. Lease renewals move only the
deadline of the current epoch (they are not history: a keeper renews every few seconds).
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from baton.audit import chain
from baton.audit.models import AuthorityEpoch, AuthorityRecord
from baton.audit.store import AuditStore, default_actor, utcnow
from baton.authority.record import Authority, State
from baton.errors import StaleEpoch, UsageError


def _authority(row: AuthorityRecord | AuthorityEpoch) -> Authority:
    return Authority(domain=row.domain, epoch=row.epoch, owner=row.owner, state=State(row.state),
                     lease_expires_at=row.lease_expires_at, run_id=row.run_id,
                     changed_at=row.changed_at, changed_by=row.changed_by)


class AuthorityStore:
    def __init__(self, audit: AuditStore):
        self.audit = audit

    def current(self, domain: str) -> Authority | None:
        with self.audit.transaction() as session:
            row = session.get(AuthorityRecord, domain)
            return _authority(row) if row else None

    def initialize(self, domain: str, owner: str, *, lease_ttl: float, changed_by: str | None = None,
                   run_id: str | None = None) -> Authority:
        """Epoch 1, owner ACTIVE with a fresh lease, unless the domain already has a record."""
        existing = self.current(domain)
        if existing is not None:
            return existing
        now = utcnow()
        record = AuthorityRecord(domain=domain, epoch=1, owner=owner, state=State.ACTIVE.value,
                                 lease_expires_at=now + timedelta(seconds=lease_ttl), run_id=run_id,
                                 changed_at=now, changed_by=changed_by or default_actor())
        try:
            with self.audit.transaction() as session:
                session.add(record)
                session.flush()
                chain.append(session, self._history_row(record, "initial owner"), now)
        except IntegrityError:  # initialized concurrently by someone else: theirs stands
            pass
        return self.current(domain)

    def change(self, domain: str, expected_epoch: int, new_owner: str, state: State | str, *,
               lease_ttl: float | None = None, run_id: str | None = None,
               changed_by: str | None = None, reason: str = "") -> Authority:
        """Move to epoch expected_epoch + 1 if the current epoch is still `expected_epoch`.

        ACTIVE needs `lease_ttl` (the new owner's first lease). A stale `expected_epoch`
        raises StaleEpoch naming the current epoch; nothing is changed.
        """
        state = self._state(state)
        if state == State.ACTIVE and lease_ttl is None:
            raise UsageError("an ACTIVE authority needs a lease: pass lease_ttl")
        now = utcnow()
        lease = now + timedelta(seconds=lease_ttl) if state == State.ACTIVE else None
        values = dict(epoch=expected_epoch + 1, owner=new_owner, state=state.value,
                      lease_expires_at=lease, run_id=run_id, changed_at=now,
                      changed_by=changed_by or default_actor())
        with self.audit.transaction() as session:
            # The compare-and-set: PostgreSQL's row lock (or SQLite's write lock) makes a
            # concurrent writer re-check the WHERE clause after the winner commits, and miss.
            result = session.execute(
                update(AuthorityRecord)
                .where(AuthorityRecord.domain == domain, AuthorityRecord.epoch == expected_epoch)
                .values(**values))
            if result.rowcount == 1:
                record = AuthorityRecord(domain=domain, **values)
                chain.append(session, self._history_row(record, reason), now)
                return _authority(record)
        raise self._stale(domain, expected_epoch, f"change to {new_owner} {state.value}")

    def renew(self, domain: str, epoch: int, owner: str, lease_ttl: float) -> Authority:
        """Extend the lease of the current epoch; StaleEpoch if authority moved on meanwhile."""
        lease = utcnow() + timedelta(seconds=lease_ttl)
        with self.audit.transaction() as session:
            result = session.execute(
                update(AuthorityRecord)
                .where(AuthorityRecord.domain == domain, AuthorityRecord.epoch == epoch,
                       AuthorityRecord.owner == owner, AuthorityRecord.state == State.ACTIVE.value)
                .values(lease_expires_at=lease))
            if result.rowcount == 1:
                return _authority(session.get(AuthorityRecord, domain))
        raise self._stale(domain, epoch, f"lease renewal for {owner}")

    def history(self, domain: str) -> list[AuthorityEpoch]:
        with self.audit.transaction() as session:
            query = select(AuthorityEpoch).where(AuthorityEpoch.domain == domain)
            return list(session.exec(query.order_by(AuthorityEpoch.epoch)))

    def _stale(self, domain: str, epoch: int, what: str) -> Exception:
        current = self.current(domain)
        if current is None:
            return UsageError(f"domain {domain!r} has no authority record yet; initialize it first "
                              "(`baton authority init` or the lease keeper); nothing was changed")
        return StaleEpoch(
            f"{what} of domain {domain!r} was based on epoch {epoch}, but the current epoch is "
            f"{current.epoch} ({current.owner} {current.state.value}, changed by {current.changed_by} "
            f"at {current.changed_at:%H:%M:%S} UTC{f' in run {current.run_id}' if current.run_id else ''})"
            ". Nothing was changed: re-read the authority (`baton authority show`) and decide again."
        )

    @staticmethod
    def _state(state: State | str) -> State:
        try:
            return State(state)
        except ValueError:
            raise UsageError(f"authority state must be ACTIVE or FENCED, not {state!r}") from None

    @staticmethod
    def _history_row(record: AuthorityRecord, reason: str) -> AuthorityEpoch:
        return AuthorityEpoch(domain=record.domain, epoch=record.epoch, owner=record.owner,
                              state=record.state, lease_expires_at=record.lease_expires_at,
                              run_id=record.run_id, changed_at=record.changed_at,
                              changed_by=record.changed_by, reason=reason)
