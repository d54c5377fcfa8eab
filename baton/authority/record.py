"""The authority record of a domain: who may write, at which epoch, until when."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class State(StrEnum):
    ACTIVE = "ACTIVE"  # the owner accepts writes while its lease is valid
    FENCED = "FENCED"  # no region accepts writes: a hand-over is in progress


class Authority(BaseModel):
    """One epoch of write authority, as stored in the audit DB and published on the control topic."""

    model_config = ConfigDict(frozen=True)

    domain: str
    epoch: int
    owner: str
    state: State
    lease_expires_at: datetime | None = None
    run_id: str | None = None
    changed_at: datetime
    changed_by: str

    def lease_left(self, now: datetime | None = None) -> float:
        """Seconds of lease left (negative once lapsed; -inf without a lease)."""
        if self.lease_expires_at is None:
            return float("-inf")
        return (self.lease_expires_at - (now or datetime.now(UTC))).total_seconds()

    def accepts_writes_in(self, region: str, now: datetime | None = None) -> bool:
        return self.state == State.ACTIVE and self.owner == region and self.lease_left(now) > 0

    def newer_than(self, other: Authority | None) -> bool:
        """Higher epoch wins; within an epoch the later lease (a renewal) wins."""
        if other is None:
            return True
        mine = (self.epoch, self.lease_expires_at or self.changed_at)
        theirs = (other.epoch, other.lease_expires_at or other.changed_at)
        return mine > theirs

    def describe(self, now: datetime | None = None) -> str:
        text = f"epoch {self.epoch}: {self.owner} {self.state.value}"
        if self.state == State.ACTIVE and self.lease_expires_at is None:
            text += ", no lease"
        elif self.state == State.ACTIVE:
            left = self.lease_left(now)
            text += f", lease valid for {left:.1f}s" if left > 0 else f", lease lapsed {-left:.1f}s ago"
        return text
