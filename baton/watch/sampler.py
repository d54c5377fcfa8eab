"""One watch sample: the flow owner -> secondary of a domain, measured now.

The at-risk figures are the exact lag of `baton lag` (baton.replication.lag.measure_lag); the
sample adds the engine's state, the heartbeat age, checkpoint freshness per group and the
authority with its lease. A sampler keeps its clients between samples (resolving the scope
costs more than measuring at 1000 partitions) and drops them on any error, so a restarted
broker or a changed partition count is picked up at the next sample.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace

from confluent_kafka import KafkaException
from sqlalchemy.exc import SQLAlchemyError

from baton.audit import AuditStore
from baton.authority.record import Authority
from baton.authority.store import AuthorityStore
from baton.errors import BatonError
from baton.kafka.reading import committed_offsets, watermarks
from baton.replication import engine_for
from baton.replication.lag import LagReport, Scope, measure_lag, resolve_scope
from baton.settings import Topology

# The scope (topics, mirrors, partition counts, clients) is re-resolved at least this often.
SCOPE_MAX_AGE_SECONDS = 60.0


@dataclass
class GroupCheckpoints:
    """Checkpoint freshness of one consumer group: partitions the group has a position on."""

    group: str
    positions: int = 0  # partitions with a committed offset > 0 on the owner
    missing: list[str] = field(default_factory=list)  # no checkpoint at all
    stale: list[str] = field(default_factory=list)  # behind the position for too long
    oldest_age_seconds: float | None = None  # of the checkpoints behind the group's position

    def as_dict(self) -> dict:
        return {"group": self.group, "positions": self.positions, "missing": self.missing,
                "stale": self.stale, "oldest_age_seconds": self.oldest_age_seconds}


@dataclass
class Sample:
    domain: str
    owner: str
    secondary: str
    taken_at: float  # unix seconds
    interval_seconds: float
    replication_state: str = "UNKNOWN"
    heartbeat_age_seconds: float | None = None
    records_at_risk: int | None = None  # None: lag could not be measured (see error)
    seconds_at_risk: float | None = None
    unknown_partitions: int = 0
    partitions: int = 0
    at_risk: list[list] = field(default_factory=list)  # [topic, partition, missing|None, age|None]
    offset_sync_gaps: dict[str, int | None] = field(default_factory=dict)  # "topic[p]" -> records
    checkpoints: list[GroupCheckpoints] = field(default_factory=list)
    authority: Authority | None = None
    problems: list[str] = field(default_factory=list)
    error: str | None = None
    duration_seconds: float = 0.0
    cpu_seconds: float = 0.0  # of this process (the watch's own cost; bench/)
    lag: LagReport | None = field(default=None, repr=False)

    @property
    def lease_seconds_left(self) -> float | None:
        if self.authority is None or self.authority.lease_expires_at is None:
            return None
        return self.authority.lease_left()

    def statement(self) -> str:
        if self.records_at_risk is None:
            return f"lag unknown: {self.error}"
        text = f"{self.records_at_risk} records / {self.seconds_at_risk:.1f} seconds at risk"
        if self.unknown_partitions:
            text += f" (+ {self.unknown_partitions} partition(s) whose position could not be verified)"
        return text

    def detail(self) -> dict:
        """What is stored beside the aggregate columns: compact, only partitions at risk."""
        detail = {"partitions": self.partitions, "duration_seconds": round(self.duration_seconds, 3),
                  "at_risk": self.at_risk,
                  "offset_sync_gaps": {k: v for k, v in self.offset_sync_gaps.items() if v},
                  "checkpoints": [c.as_dict() for c in self.checkpoints if c.missing or c.stale],
                  "problems": self.problems[:20], "error": self.error}
        # A healthy sample stores ~60 bytes of detail: empty entries are left out.
        return {k: v for k, v in detail.items() if v or k in ("partitions", "duration_seconds")}

    def as_dict(self) -> dict:
        authority = self.authority
        return {"domain": self.domain, "owner": self.owner, "secondary": self.secondary,
                "taken_at": self.taken_at, "statement": self.statement(),
                "records_at_risk": self.records_at_risk, "seconds_at_risk": self.seconds_at_risk,
                "unknown_partitions": self.unknown_partitions,
                "replication_state": self.replication_state,
                "heartbeat_age_seconds": self.heartbeat_age_seconds,
                "authority": authority.model_dump(mode="json") if authority else None,
                "lease_seconds_left": self.lease_seconds_left} | self.detail()


class Sampler:
    """Samples one domain's flow owner -> secondary; the owner is the current authority's."""

    def __init__(self, topology: Topology, audit: AuditStore | None = None):
        self.topology = topology
        self.engine = engine_for(topology)
        self._audit = audit
        self._scope: Scope | None = None
        self._scope_at = 0.0
        self._cache: dict = {}  # (topic, partition) -> (offsets key, PartitionLag, hints, measured at)
        self._cache_scope: Scope | None = None
        self.last_owner = topology.domain.initial_owner
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="baton-watch-read")

    @property
    def audit(self) -> AuditStore:
        if self._audit is None:  # opened lazily: a database that is down at start-up is a hiccup
            self._audit = AuditStore.for_topology(self.topology)
        return self._audit

    def _authority(self, sample_problems: list[str]) -> Authority | None:
        try:
            return AuthorityStore(self.audit).current(self.topology.domain.name)
        except (BatonError, SQLAlchemyError) as e:
            sample_problems.append(f"authority not read from the audit database: {_short(e)}")
            return None

    def scope(self, owner: str) -> Scope:
        stale = time.monotonic() - self._scope_at > SCOPE_MAX_AGE_SECONDS
        if self._scope is None or self._scope.owner != owner or stale:
            wait = min(self.topology.regions[owner].request_timeout_seconds,
                       max(2.0, self.topology.watch.interval_seconds))
            self._scope = resolve_scope(self.topology, owner=owner, engine=self.engine, timeout=wait)
            self._scope_at = time.monotonic()
        return self._scope

    @property
    def current_scope(self) -> Scope | None:
        """The scope (and its admin clients) of the newest successful sample, if any."""
        return self._scope

    def drop_clients(self) -> None:
        self._scope = None

    def forget_measurements(self) -> None:
        """Re-verify every partition at the next sample."""
        self._cache_scope = None

    def sample(self) -> Sample:
        """Measure now. Never raises for a broker, engine or database failure: it is in the sample."""
        started, cpu = time.monotonic(), time.process_time()
        problems: list[str] = []
        authority = self._authority(problems)
        owner = authority.owner if authority else self.last_owner
        self.last_owner = owner
        secondary = self.topology.other_region(owner)
        sample = Sample(self.topology.domain.name, owner, secondary, time.time(),
                        self.topology.watch.interval_seconds, authority=authority, problems=problems)
        # The checkpoints are read while the lag is measured: both wait on brokers, not on CPU.
        checkpoints = (self._pool.submit(self.engine.checkpoints, owner, secondary)
                       if self.topology.domain.consumer_groups else None)
        try:
            scope = self.scope(owner)
            lag = self._measure(scope)
        except (BatonError, KafkaException) as e:
            self.drop_clients()
            sample.error = _short(e)
            self._engine_only(sample)
        else:
            self._from_lag(sample, lag)
            self._checkpoints(sample, scope, checkpoints)
        sample.duration_seconds = time.monotonic() - started
        sample.cpu_seconds = time.process_time() - cpu
        return sample

    def _measure(self, scope: Scope) -> LagReport:
        """The exact lag of `baton lag`, re-verified only where something moved.

        A partition whose owner and mirror start and end offsets are the ones of the previous
        sample has the same records missing (its oldest missing record only aged), so it keeps
        its measurement; the rest go through measure_lag. Everything is re-verified whenever
        the scope is re-resolved (at least every SCOPE_MAX_AGE_SECONDS).
        """
        pairs = scope.pairs()
        owner_marks = watermarks(scope.owner_admin, pairs, scope.owner, scope.timeout)
        mirror_marks = watermarks(scope.secondary_admin, [scope.mirror_of(tp) for tp in pairs],
                                  scope.secondary, scope.timeout)
        keys = {tp: (owner_marks[tp].start, owner_marks[tp].end, mirror_marks[scope.mirror_of(tp)].start,
                     mirror_marks[scope.mirror_of(tp)].end) for tp in pairs}
        if self._cache_scope is not scope:
            self._cache, self._cache_scope = {}, scope
        changed = [tp for tp in pairs if tp not in self._cache or self._cache[tp][0] != keys[tp]
                   or self._cache[tp][1].missing_records is None]
        if changed:
            measured = measure_lag(self.topology, scope=_Subset.of(scope, changed))
        else:  # nothing moved: the engine's view alone (no offset-sync read)
            measured = LagReport(scope.owner, scope.secondary, time.time(), [], None)
            self._engine_view(measured)
        now = measured.measured_at
        fresh = measured.by_partition()
        partitions, hints = [], {}
        for tp in pairs:
            if tp in fresh:
                self._cache[tp] = (keys[tp], fresh[tp], measured.hints.get(tp, []), now)
                partitions.append(fresh[tp])
                hints[tp] = measured.hints.get(tp, [])
                continue
            _key, kept, kept_hints, at = self._cache[tp]
            age = kept.oldest_missing_age_seconds
            aged = None if age is None else age + now - at
            partitions.append(replace(kept, oldest_missing_age_seconds=aged))
            hints[tp] = kept_hints
        return LagReport(measured.owner, measured.secondary, now, partitions, measured.heartbeat_age_seconds,
                         measured.problems, hints, measured.replication_state)

    def _engine_view(self, report: LagReport) -> None:
        """Heartbeat age and engine state, as measure_lag reports them."""
        try:
            report.heartbeat_age_seconds = self.engine.heartbeat_age(report.owner, report.secondary,
                                                                     int(report.measured_at * 1000))
        except BatonError as e:
            report.problems.append(_short(e))
        try:
            report.replication_state = self.engine.status(report.owner, report.secondary).state
        except BatonError as e:
            report.replication_state = "DOWN"
            report.problems.append(_short(e))

    def _engine_only(self, sample: Sample) -> None:
        """The owner or the mirror cannot be measured: what the engine alone still says."""
        view = LagReport(sample.owner, sample.secondary, time.time(), [], None)
        self._engine_view(view)
        sample.replication_state = view.replication_state
        sample.heartbeat_age_seconds = view.heartbeat_age_seconds
        sample.problems.extend(view.problems)

    def _from_lag(self, sample: Sample, lag: LagReport) -> None:
        sample.lag = lag
        sample.replication_state = lag.replication_state
        sample.heartbeat_age_seconds = lag.heartbeat_age_seconds
        sample.records_at_risk = lag.records_at_risk
        sample.seconds_at_risk = round(lag.seconds_at_risk, 3)
        sample.unknown_partitions = len(lag.unknown)
        sample.partitions = len(lag.partitions)
        sample.problems.extend(lag.problems)
        for p in lag.partitions:
            if p.missing_records != 0:
                age = None if p.oldest_missing_age_seconds is None else round(p.oldest_missing_age_seconds, 1)
                sample.at_risk.append([p.topic, p.partition, p.missing_records, age])
            if p.replicated_through is not None and p.replicated_through >= p.owner_start and p.mirror_end:
                # How far the newest offset sync is behind what the mirror holds (None: no sync at all).
                hints = lag.hints.get((p.topic, p.partition), [])
                newest = max((h.upstream_offset for h in hints), default=None)
                sample.offset_sync_gaps[f"{p.topic}[{p.partition}]"] = (
                    None if newest is None else max(0, p.replicated_through - newest))

    def _checkpoints(self, sample: Sample, scope: Scope, pending: Future | None) -> None:
        groups = self.topology.domain.consumer_groups
        if not groups or pending is None:
            return
        try:
            reading = pending.result()
        except (BatonError, KafkaException) as e:
            sample.problems.append(f"checkpoints not read: {_short(e)}")
            return
        now_ms = time.time() * 1000
        max_age = self.topology.watch.checkpoint_max_age_seconds
        for group in groups:
            freshness = GroupCheckpoints(group)
            sample.checkpoints.append(freshness)
            try:
                positions = committed_offsets(scope.owner_admin, group, sample.owner, scope.timeout)
            except (BatonError, KafkaException) as e:
                sample.problems.append(f"offsets of group {group} not read: {_short(e)}")
                continue
            for (topic, partition), offset in sorted(positions.items()):
                if topic not in scope.mirrors or offset <= 0:
                    continue  # a group at offset 0 resumes at 0: nothing to translate
                freshness.positions += 1
                name = f"{topic}[{partition}]"
                checkpoint = reading.items.get((group, scope.mirrors[topic], partition))
                if checkpoint is None:
                    freshness.missing.append(name)
                    continue
                if checkpoint.upstream_offset == offset:
                    continue  # the checkpoint is at the group's position: current
                age = max(0.0, (now_ms - checkpoint.timestamp_ms) / 1000)
                freshness.oldest_age_seconds = max(age, freshness.oldest_age_seconds or 0.0)
                if age > max_age:
                    freshness.stale.append(name)


@dataclass
class _Subset(Scope):
    """The scope, narrowed to some of its partitions (measure_lag measures scope.pairs())."""

    only: list = field(default_factory=list)

    @classmethod
    def of(cls, scope: Scope, only: list) -> _Subset:
        return cls(**{f.name: getattr(scope, f.name) for f in fields(Scope)}, only=list(only))

    def pairs(self) -> list:
        return self.only


def _short(error: Exception, limit: int = 300) -> str:
    text = str(error)
    return text if len(text) <= limit else text[:limit] + "..."
