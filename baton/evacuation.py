"""Region evacuation as plain data: which domains move, the batch barrier, each domain's result.

An evacuation fails over every domain a region owns (its *recorded* authority, not the file's
`initial_owner`), one failover run per domain, concurrently. The domains meet at a barrier at
each gate (one decision for the whole batch) and, with all-or-nothing, before the switch. This
module knows nothing of Prefect: flows/evacuate.py runs the domains and asks the approvals.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from baton.authority.record import Authority, State
from baton.errors import ApprovalRejected, StepFailed, UsageError
from baton.settings import Topology, only_domains

MOVED = "moved"
MOVED_UNPROTECTED = "moved, a step after the switch failed"
RETURNED = "returned to safety"
UNSAFE = "NOT SAFE"


@dataclass
class Selection:
    """The domains an evacuation moves, and the region's domains it leaves (with why)."""

    region: str
    members: list[Topology]
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [t.domain.name for t in self.members]


def select_domains(topologies: list[Topology], region: str,
                   recorded: Callable[[Topology], Authority | None],
                   only: list[str] | None = None) -> Selection:
    """Every domain whose recorded authority is ACTIVE on `region` (of `only`, if named). A
    domain with no authority recorded yet counts as owned by its initial_owner (what a failover
    would start from). UsageError (nothing changed) for an unknown region or domain, or a region
    that owns no domain."""
    topologies = only_domains(topologies, only)
    regions = sorted({r for t in topologies for r in t.regions})
    if region not in regions:
        raise UsageError(f"--from {region!r} is not a region of this topology; its regions: "
                         f"{', '.join(regions)}. Nothing was changed")
    members, skipped, owners = [], {}, []
    for topology in topologies:
        name = topology.domain.name
        current = recorded(topology)
        owner = current.owner if current else topology.domain.initial_owner
        state = current.state if current else State.ACTIVE
        owners.append(f"{name}: " + (current.describe() if current
                                     else f"{owner} (initial_owner, nothing recorded)"))
        if owner != region:
            continue
        if region not in topology.regions:
            continue
        if state != State.ACTIVE:
            skipped[name] = (f"authority is {current.describe()}, not ACTIVE: finish or recover that "
                             "hand-over first (`baton authority show --domain " + name + "`)")
            continue
        members.append(topology)
    if not members:
        why = "".join(f"; {name} skipped: {reason}" for name, reason in skipped.items())
        raise UsageError(f"no domain is owned (ACTIVE) by {region}: nothing to evacuate, nothing was "
                         f"changed. Domains and their recorded authority: {'; '.join(owners)}{why}")
    return Selection(region, members, skipped)


def recorded_authority(topology: Topology) -> Authority | None:
    """The domain's authority as the audit database records it."""
    from baton.audit import AuditStore
    from baton.authority import authority_store

    return authority_store(topology, AuditStore.for_topology(topology)).current(topology.domain.name)


def new_evacuation_id(region: str, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"evacuation-{region}-{now:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def domain_result(domain: str, *, target: str, source: str, authority: Authority | None,
                  run_id: str | None, error: str | None = None, compensation: str | None = None) -> dict:
    """What happened to one domain, read from its authority after the run (not from flags)."""
    if authority is not None and authority.state == State.ACTIVE and authority.owner == target:
        # the switch stands even when a step after it failed (e.g. the reprotect): say so
        outcome, why = (MOVED, None) if error is None else (MOVED_UNPROTECTED, error)
    elif authority is not None and authority.state == State.ACTIVE and authority.owner == source:
        outcome, why = RETURNED, error or "the run did not finish"
    else:
        outcome = UNSAFE
        why = (f"authority is {authority.describe() if authority else 'not recorded'}; "
               f"run `baton recover --run {run_id}`" + (f" ({error})" if error else ""))
    return {"domain": domain, "run_id": run_id, "outcome": outcome,
            "authority": authority.describe() if authority else None, "why": why,
            "compensation": compensation}


def result_line(result: dict) -> str:
    line = f"{result['domain']}: {result['outcome']} ({result['authority']}; run {result['run_id']})"
    return line + (f": {result['why']}" if result.get("why") else "")


def all_or_nothing_refusal(failed: dict[str, str], point: str) -> str | None:
    """Why, under all-or-nothing, no domain may pass `point` (None: every domain is still in)."""
    if not failed:
        return None
    names = "; ".join(f"{domain} ({why})" for domain, why in sorted(failed.items()))
    return (f"all-or-nothing: {len(failed)} domain(s) failed before {point}: {names}; every domain "
            "returns to its last safe state")


class PerMember(dict):
    """A decision that differs per member (member -> answer, or the error that member raises)."""


class BatchBroken(StepFailed):
    """The evacuation's coordinator stopped: no member may go on alone."""


def _for(member: str, answer: tuple[bool, Any]) -> tuple[bool, Any]:
    ok, value = answer
    if ok and isinstance(value, PerMember):
        own = value.get(member)
        return (False, own) if isinstance(own, Exception) else (True, own)
    return answer


class Batch:
    """The barrier the member runs meet at: a point is decided once every member still running
    waits there (a failed or finished member leaves). `serve` runs in the coordinating thread
    and calls `decide(point, payloads, failed)` there; its answer (or its ApprovalRejected /
    StepFailed) goes to every member waiting at the point."""

    def __init__(self, members: list[str], decide: Callable[[str, dict[str, Any], dict[str, str]], Any],
                 order: list[str] | None = None):
        self._cond = threading.Condition()
        self._live = set(members)
        self._waiting: dict[str, tuple[str, Any]] = {}
        self._answers: dict[str, tuple[bool, Any]] = {}
        self._broken: BaseException | None = None
        self.failed: dict[str, str] = {}
        self.decided: list[tuple[str, list[str]]] = []  # (point, members it was decided for)
        self._decide = decide
        # Points in runbook order: members at different points (a conditional gate only some
        # reach) are decided earliest first, so nobody passes a later point before the others.
        self._order = {point: i for i, point in enumerate(order or [])}

    def arrive(self, member: str, point: str, payload: Any = None) -> Any:
        """Wait at `point` until the batch decided it; its answer, or its error raised here."""
        with self._cond:
            if self._broken is not None:
                raise BatchBroken(f"the evacuation stopped coordinating: {self._broken}")
            self._waiting[member] = (point, payload)
            self._cond.notify_all()
            while member not in self._answers and self._broken is None:
                self._cond.wait()
            if member not in self._answers:
                del self._waiting[member]
                raise BatchBroken(f"the evacuation stopped coordinating: {self._broken}")
            ok, value = self._answers.pop(member)
        if ok:
            return value
        try:  # a fresh exception per member thread
            fresh = type(value)(*value.args)
        except TypeError:
            fresh = StepFailed(str(value))
        raise fresh

    def leave(self, member: str, failure: str | None = None) -> None:
        """A member finished (failure None) or failed: the others stop waiting for it."""
        with self._cond:
            self._live.discard(member)
            if failure is not None:
                self.failed[member] = failure
            self._cond.notify_all()

    def _ready_point(self) -> tuple[str, dict[str, Any]] | None:
        if not self._live or set(self._waiting) != self._live:
            return None
        point = min((p for p, _ in self._waiting.values()),
                    key=lambda p: (self._order.get(p, len(self._order)), p))
        return point, {m: payload for m, (p, payload) in self._waiting.items() if p == point}

    def serve(self) -> None:
        """Decide points until no member runs any more."""
        try:
            while True:
                with self._cond:
                    while self._live and (ready := self._ready_point()) is None:
                        self._cond.wait()
                    if not self._live:
                        return
                    point, payloads = ready
                    failed = dict(self.failed)
                try:
                    answer = (True, self._decide(point, payloads, failed))
                except (ApprovalRejected, StepFailed) as e:
                    answer = (False, e)
                with self._cond:
                    for member in payloads:
                        del self._waiting[member]
                        self._answers[member] = _for(member, answer)
                    self.decided.append((point, sorted(payloads)))
                    self._cond.notify_all()
        except BaseException as e:  # never leave a member waiting for a coordinator that is gone
            with self._cond:
                self._broken = e
                self._cond.notify_all()
            raise
