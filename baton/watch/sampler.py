"""One watch sample: the flow owner -> secondary of a domain, measured now.

The at-risk figures are the exact lag of `baton lag` (baton.replication.lag.measure_lag); the
sample adds the engine's state, the heartbeat age, checkpoint freshness per group and the
authority with its lease. A sampler keeps its clients between samples (resolving the scope
costs more than measuring at 1000 partitions) and drops them on any error, so a restarted
broker or a changed partition count is picked up at the next sample.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, fields, replace

from confluent_kafka import KafkaException
from sqlalchemy.exc import SQLAlchemyError

from baton.audit import AuditStore
from baton.authority.record import Authority
from baton.authority.store import AuthorityStore
from baton.errors import BatonError
from baton.kafka.reading import committed_offsets, read_ranges, reader, watermarks
from baton.replication import engine_for
from baton.replication.engine import EngineReading
from baton.replication.lag import (
    LagReport,
    PartitionLag,
    Scope,
    Verified,
    continuable,
    continue_lag,
    measure_lag,
    read_engine_view,
    resolve_scope,
)
from baton.settings import Topology

log = logging.getLogger("baton.watch")

# The scope (topics, mirrors, partition counts, clients) is re-resolved at least this often;
# measurements survive a re-resolution that finds the same topics and partition counts.
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
    # Topics this watch has seen written in transactions (topic -> evidence): an open transaction
    # (last stable offset below the end) or offsets without committed data among new records.
    transactions_seen: dict[str, str] = field(default_factory=dict)
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
        self._cache: dict = {}  # (topic, partition) -> _Measured
        self._cache_scope: tuple | None = None
        self._readers: dict = {}  # region -> consumer for read_ranges
        self._checkpoint_cache: tuple = (None, {}, None)  # flow, newest checkpoint per partition, position
        self._syncs: dict = {}  # (topic, partition) -> newest offset sync's upstream offset
        self._syncs_at: dict | None = None  # where the offset-syncs topic was read to
        self.breakdown: dict = {}  # partitions kept / continued / measured anew by the newest sample
        self.transactions_seen: dict[str, str] = {}  # topic -> evidence, since the watch started
        self.last_owner = topology.domain.initial_owner
        # Checkpoints, engine view, offset syncs, owner offsets and owner reads run beside the
        # secondary's: they wait on brokers and Connect, not on CPU.
        self._pool = ThreadPoolExecutor(max_workers=6, thread_name_prefix="baton-watch-read")

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
        readers, self._readers = self._readers, {}
        for consumer in readers.values():
            try:
                consumer.close()
            except (KafkaException, RuntimeError) as e:
                log.debug("reader not closed: %s", e)

    def _reader(self, scope: Scope, region: str):
        """A consumer per region kept between samples (a new one per read costs its connection)."""
        if region not in self._readers:
            self._readers[region] = reader(scope.config(region))
        return self._readers[region]

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
        checkpoints = (self._pool.submit(self._read_checkpoints, owner, secondary)
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
        """The exact lag of `baton lag`, reading only what is new since the previous sample.

        Per partition: unchanged start, end and stable offsets on both sides keep the previous
        measurement (its oldest missing record only aged); otherwise the new mirror records are
        matched one by one against the owner records after the previous verified position,
        and the owner's committed records after the last copied one are the missing ones
        (lag.continue_lag). Only partitions without a verified position, or whose logs were
        truncated, rewritten or re-copied, go through measure_lag (offset syncs and
        fingerprint verification). Heartbeat and engine state are read meanwhile.
        """
        problems: list[str] = []
        view = self._pool.submit(read_engine_view, scope.engine, scope.owner, scope.secondary, time.time(),
                                 problems)
        signature = _signature(scope)
        if self._cache_scope != signature:
            self._cache, self._cache_scope, self._syncs, self._syncs_at = {}, signature, {}, None
        syncs = self._pool.submit(self._read_syncs, scope, problems)
        pairs = scope.pairs()
        owner_pending = self._pool.submit(watermarks, scope.owner_admin, pairs, scope.owner, scope.timeout,
                                          stable=True)
        mirror_marks = watermarks(scope.secondary_admin, [scope.mirror_of(tp) for tp in pairs],
                                  scope.secondary, scope.timeout)
        owner_marks = owner_pending.result()
        now = time.time()
        kept, continuing, anew, keys = {}, {}, [], {}
        for tp in pairs:
            own, mir = owner_marks[tp], mirror_marks[scope.mirror_of(tp)]
            keys[tp] = (own.start, own.end, own.stable, mir.start, mir.end)
            if own.stable is not None and own.stable < own.end:  # only a transaction holds it back
                self.transactions_seen[tp[0]] = (f"open transaction from offset {own.stable} of "
                                                 f"partition {tp[1]}")
            cached = self._cache.get(tp)
            if cached is not None and cached.key == keys[tp] and cached.lag.missing_records is not None:
                kept[tp] = cached
            elif cached is not None and cached.verified and continuable(cached.verified, own, mir):
                continuing[tp] = cached
            else:
                anew.append(tp)
        results = self._continue(scope, continuing, owner_marks, mirror_marks, now, anew)
        if anew:
            measured = measure_lag(self.topology, scope=_Subset.of(scope, anew),
                                   marks=(owner_marks, mirror_marks), engine_view=False)
            problems.extend(measured.problems)
            for tp, lag in measured.by_partition().items():
                results[tp] = (lag, measured.verified.get(tp))
        self.breakdown = {"kept": len(kept), "continued": len(results) - len(anew), "measured": len(anew)}
        partitions = []
        for tp in pairs:
            if tp in kept:
                entry = kept[tp]
                age = entry.lag.oldest_missing_age_seconds
                partitions.append(replace(entry.lag, oldest_missing_age_seconds=(
                    None if age is None else age + now - entry.measured_at)))
                continue
            lag, verified = results[tp]
            self._cache[tp] = _Measured(keys[tp], lag, verified, now)
            partitions.append(lag)
        heartbeat, state = view.result()
        syncs.result()
        return LagReport(scope.owner, scope.secondary, now, partitions, heartbeat, problems,
                         replication_state=state)

    def _read_checkpoints(self, owner: str, secondary: str) -> EngineReading:
        """The newest checkpoints of the flow, reading only those written since the last sample."""
        flow = (owner, secondary)
        if self._checkpoint_cache[0] != flow:
            self._checkpoint_cache = (flow, {}, None)
        _, items, position = self._checkpoint_cache
        reading = self.engine.checkpoints(owner, secondary, after=position)
        items = items | reading.items
        self._checkpoint_cache = (flow, items, reading.position)
        return EngineReading(items, reading.problems, reading.position)

    def _read_syncs(self, scope: Scope, problems: list[str]) -> None:
        """The newest offset sync per partition, reading only the syncs written since the last sample."""
        try:
            reading = scope.engine.offset_hints(scope.owner, scope.secondary, after=self._syncs_at,
                                                 topics=scope.topics)
        except BatonError as e:
            problems.append(f"offset syncs not read: {_short(e)}")
            return
        problems.extend(reading.problems)
        for tp, hints in reading.items.items():
            newest = max(h.upstream_offset for h in hints)
            self._syncs[tp] = max(newest, self._syncs.get(tp, newest))
        self._syncs_at = reading.position

    def _continue(self, scope: Scope, continuing: dict, owner_marks: dict, mirror_marks: dict, now: float,
                  anew: list) -> dict:
        """Continue verified positions: one read of the new records per region, both at once.

        A partition whose new records do not continue its verified position is appended to `anew`.
        """
        if not continuing:
            return {}
        mirror_ranges, owner_ranges = {}, {}
        for tp, cached in continuing.items():
            own, mir = owner_marks[tp], mirror_marks[scope.mirror_of(tp)]
            stable = own.end if own.stable is None else own.stable
            mirror_ranges[scope.mirror_of(tp)] = [(cached.verified.mirror_end, mir.end)]
            owner_ranges[tp] = [(cached.verified.read_to, stable)]
        options = {"timestamps": scope.timestamps, "exclude_headers": scope.engine.replication_headers}
        owner_read = self._pool.submit(read_ranges, scope.config(scope.owner), owner_ranges, scope.owner,
                                       consumer=self._reader(scope, scope.owner), **options)
        try:
            mirror_recs = read_ranges(scope.config(scope.secondary), mirror_ranges, scope.secondary,
                                      consumer=self._reader(scope, scope.secondary), **options)
        finally:  # the owner's reader must be idle before an error drops (closes) it
            wait([owner_read])
        owner_recs = owner_read.result()
        results = {}
        for tp, cached in continuing.items():
            (start, stop), = owner_ranges[tp]
            if len(owner_recs[tp]) < stop - start:
                # Records written since the previous sample (the active segment: not compacted)
                # with offsets holding no committed data: transaction markers or aborted records.
                self.transactions_seen[tp[0]] = (f"{stop - start - len(owner_recs[tp])} of offsets {start}.."
                                                 f"{stop - 1} of partition {tp[1]} hold no committed data")
            mirror_tp = scope.mirror_of(tp)
            continued = continue_lag(cached.lag, cached.verified, owner_marks[tp], mirror_marks[mirror_tp],
                                     _in_order(mirror_recs[mirror_tp]), _in_order(owner_recs[tp]), now)
            if continued is None:
                anew.append(tp)
            else:
                results[tp] = continued
        return results

    def _engine_only(self, sample: Sample) -> None:
        """The owner or the mirror cannot be measured: what the engine alone still says."""
        sample.heartbeat_age_seconds, sample.replication_state = read_engine_view(
            self.engine, sample.owner, sample.secondary, time.time(), sample.problems)

    def _from_lag(self, sample: Sample, lag: LagReport) -> None:
        sample.lag = lag
        sample.transactions_seen = dict(self.transactions_seen)
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
                newest = self._syncs.get((p.topic, p.partition))
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
class _Measured:
    """A partition's newest measurement: the offsets it was taken at and where to continue from."""

    key: tuple  # owner start, end, stable; mirror start, end
    lag: PartitionLag
    verified: Verified | None
    measured_at: float


def _signature(scope: Scope) -> tuple:
    """What measurements depend on: a scope re-resolved to the same keeps them."""
    return (scope.owner, scope.secondary, tuple(scope.topics), tuple(sorted(scope.mirrors.items())),
            tuple(sorted(scope.partitions.items())), tuple(sorted(scope.timestamps.items())))


def _in_order(records: dict) -> list:
    return [records[offset] for offset in sorted(records)]


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
