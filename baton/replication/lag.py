"""Lag and RPO: per replicated partition, which owner records the secondary does not have yet.

Lag here is a correctness signal, not throughput: the records at risk if the secondary
took over now. For each partition Baton finds the owner offset U of the mirror's last
record (replicated through U), so `missing = end - (U + 1)` exactly, and the age of the
oldest missing record is read from that very record. U comes from the engine's newest
offset hint (MM2: offset sync) and is *verified* by fingerprints record by record up to
the mirror's end; without a usable hint the mirror's tail is searched on the owner.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from confluent_kafka.admin import AdminClient

from baton.errors import RegionUnreachable, ReplicationError, UsageError
from baton.kafka.admin import check_reachable, client_config
from baton.kafka.fingerprint import TimestampMode
from baton.kafka.reading import (
    Partition,
    Rec,
    Watermarks,
    partition_counts,
    read_ranges,
    read_ranges_of_both,
    timestamp_types,
    watermarks,
)
from baton.replication import engine_for
from baton.replication.engine import OffsetHint, ReplicationEngine
from baton.replication.matching import common_prefix
from baton.settings import Topology

# Fallback search: the mirror's last TAIL records are looked for in the owner's last SEARCH records.
TAIL, SEARCH = 16, 20_000
# Hinted segments longer than this are not verified record by record (the search is used).
MAX_VERIFY = 50_000
# Missing spans up to this many offsets are read to count data records one by one (transaction
# markers and aborted records are not data); longer spans report the offset count as a bound.
# As large as the longest divergent tail a failback lists one by one (steps/failback.MAX_LISTED).
COUNT_LIMIT = 10_000


@dataclass
class Scope:
    """The topics in scope, their mirrors, and clients for both regions."""

    topology: Topology
    engine: ReplicationEngine
    owner: str
    secondary: str
    topics: list[str]
    mirrors: dict[str, str]
    partitions: dict[str, int]
    timestamps: dict[str, TimestampMode]  # by owner topic and by mirror name
    owner_admin: AdminClient | None
    secondary_admin: AdminClient
    timeout: float

    def config(self, region: str) -> dict:
        return client_config(self.topology.regions[region])

    def pairs(self) -> list[tuple[str, int]]:
        return [(topic, p) for topic in self.topics for p in range(self.partitions[topic])]

    def mirror_of(self, tp: Partition) -> Partition:
        return self.mirrors[tp[0]], tp[1]


def resolve_scope(topology: Topology, *, owner: str | None = None, topics: list[str] | None = None,
                  engine: ReplicationEngine | None = None, owner_required: bool = True,
                  timeout: float | None = None, owner_known_unreachable: bool = False) -> Scope:
    """Check the topics and their mirrors exist with equal partition counts; bounded in time.

    owner_known_unreachable: an earlier step of the run declared the owner dead; do not probe it.
    """
    owner = owner or topology.domain.initial_owner
    secondary = topology.other_region(owner)
    topics = list(topics or topology.domain.topics)
    engine = engine or engine_for(topology)
    wait = timeout or topology.regions[owner].request_timeout_seconds
    secondary_admin = check_reachable(secondary, topology.regions[secondary], timeout=wait)
    owner_admin = None
    try:
        if not owner_known_unreachable or owner_required:
            owner_admin = check_reachable(owner, topology.regions[owner], timeout=wait)
    except RegionUnreachable:
        if owner_required:
            raise
    mirrors = {topic: engine.remote_topic(topic, owner) for topic in topics}
    mirror_counts = partition_counts(secondary_admin, mirrors.values(), secondary, wait)
    if owner_admin is not None:
        counts = partition_counts(owner_admin, topics, owner, wait)
        unknown = [t for t in topics if counts[t] is None]
        if unknown:
            raise UsageError(f"unknown topic(s) on owner region {owner!r}: {', '.join(unknown)}; "
                             f"pass topics that exist there (domain topics: {topology.domain.topics})")
    else:
        counts = {topic: mirror_counts[mirrors[topic]] for topic in topics}
    missing = [f"{mirrors[t]} (of {t})" for t in topics if mirror_counts[mirrors[t]] is None]
    if missing:
        raise ReplicationError(
            f"mirror topic(s) missing on region {secondary!r}: {', '.join(missing)}. Is replication "
            f"{owner} -> {secondary} running and does it include these topics?"
        )
    mismatched = [f"{t} has {counts[t]} partitions but {mirrors[t]} has {mirror_counts[mirrors[t]]}"
                  for t in topics if counts[t] != mirror_counts[mirrors[t]]]
    if mismatched:
        raise ReplicationError("partition count mismatch between topic and mirror: "
                               + "; ".join(mismatched) + ". Partition-wise comparison is impossible; "
                               "let the engine sync partitions (MM2 does) or fix the mirror.")
    modes: dict[str, TimestampMode] = {}
    mirror_types = timestamp_types(secondary_admin, mirrors.values(), secondary, wait)
    owner_types = (timestamp_types(owner_admin, topics, owner, wait) if owner_admin is not None
                   else dict.fromkeys(topics, "CreateTime"))
    for topic in topics:
        # See baton.kafka.fingerprint: what of the timestamp survives the copy.
        if mirror_types[mirrors[topic]] == "LogAppendTime":
            mode: TimestampMode = "ignore"
        elif owner_types[topic] == "LogAppendTime":
            mode = "value"
        else:
            mode = "typed"
        modes[topic] = modes[mirrors[topic]] = mode
    return Scope(topology, engine, owner, secondary, topics, mirrors, dict(counts), modes,
                 owner_admin, secondary_admin, wait)


@dataclass
class PartitionLag:
    topic: str
    mirror_topic: str
    partition: int
    owner_start: int
    owner_end: int
    mirror_start: int
    mirror_end: int
    replicated_through: int | None  # owner offset of the mirror's last record; None: unknown
    missing_records: int | None
    oldest_missing_age_seconds: float | None
    method: str  # offset-sync | search | empty
    note: str = ""
    owner_stable_end: int | None = None  # last stable offset: an open transaction starts there

    @property
    def current(self) -> bool | None:
        return None if self.missing_records is None else self.missing_records == 0

    @property
    def compared_end(self) -> int:
        """The owner offset the secondary is compared against: its last stable offset."""
        return self.owner_end if self.owner_stable_end is None else self.owner_stable_end

    def missing_ranges(self) -> list[tuple[int, int]]:
        """Owner offset ranges [start, end) holding committed data not on the secondary."""
        if self.replicated_through is None:
            return [(self.owner_start, self.owner_end)] if self.owner_end > self.owner_start else []
        if self.missing_records == 0:
            return []  # what remains is transaction markers or aborted records
        start = max(self.replicated_through + 1, self.owner_start)
        return [(start, self.compared_end)] if self.compared_end > start else []


@dataclass
class Verified:
    """A partition's verified position, to continue from at the next measurement (the watch).

    The mirror's records up to `mirror_end` are copies of the owner's committed records up to
    `replicated_through`; `tail` holds the owner's committed data records after it, read up to
    owner offset `read_to` (the last stable offset then).
    """

    replicated_through: int
    mirror_end: int
    tail: list[Rec]
    read_to: int


@dataclass
class LagReport:
    owner: str
    secondary: str
    measured_at: float
    partitions: list[PartitionLag]
    heartbeat_age_seconds: float | None
    problems: list[str] = field(default_factory=list)
    hints: dict = field(default_factory=dict, repr=False)  # (topic, p) -> [OffsetHint], reused
    replication_state: str = "UNKNOWN"  # the engine's own view: RUNNING, STOPPED, DEGRADED, DOWN
    verified: dict = field(default_factory=dict, repr=False)  # (topic, p) -> Verified, for the watch

    @property
    def unknown(self) -> list[PartitionLag]:
        return [p for p in self.partitions if p.missing_records is None]

    @property
    def records_at_risk(self) -> int:
        return sum(p.missing_records or 0 for p in self.partitions)

    @property
    def seconds_at_risk(self) -> float:
        return max((p.oldest_missing_age_seconds or 0.0 for p in self.partitions), default=0.0)

    def statement(self) -> str:
        text = f"{self.records_at_risk} records / {self.seconds_at_risk:.1f} seconds at risk"
        if self.unknown:
            text += f" (+ {len(self.unknown)} partition(s) whose position could not be verified)"
        return text

    def by_partition(self) -> dict[Partition, PartitionLag]:
        return {(p.topic, p.partition): p for p in self.partitions}

    def as_dict(self) -> dict:
        return {
            "owner": self.owner, "secondary": self.secondary, "measured_at": self.measured_at,
            "records_at_risk": self.records_at_risk, "seconds_at_risk": round(self.seconds_at_risk, 3),
            "statement": self.statement(), "heartbeat_age_seconds": self.heartbeat_age_seconds,
            "replication_state": self.replication_state, "problems": self.problems,
            "partitions": [asdict(p) | {"current": p.current} for p in self.partitions],
        }


def latest_hint(hints: list[OffsetHint], *, upstream_at_most: int | None = None,
                downstream_within: tuple[int, int] | None = None) -> OffsetHint | None:
    """The newest-written hint satisfying the bounds (the newest copy wins after an engine restart)."""
    for hint in reversed(hints):
        if upstream_at_most is not None and hint.upstream_offset > upstream_at_most:
            continue
        if downstream_within and not downstream_within[0] <= hint.downstream_offset < downstream_within[1]:
            continue
        return hint
    return None


def read_hints(scope: Scope, problems: list[str]) -> dict:
    try:
        reading = scope.engine.offset_hints(scope.owner, scope.secondary, topics=scope.topics)
    except ReplicationError as e:
        problems.append(f"{e} (falling back to fingerprint search)")
        return {}
    problems.extend(reading.problems)
    return reading.items


def measure_lag(topology: Topology, *, owner: str | None = None, topics: list[str] | None = None,
                engine: ReplicationEngine | None = None, scope: Scope | None = None,
                marks: tuple[dict, dict] | None = None, engine_view: bool = True) -> LagReport:
    """Exact per-partition lag of the secondary behind the owner, and the RPO statement.

    marks: owner (with stable offsets) and mirror watermarks already read by the caller;
    engine_view=False leaves heartbeat and engine state to the caller (the watch reads them
    concurrently).
    """
    scope = scope or resolve_scope(topology, owner=owner, topics=topics, engine=engine)
    problems: list[str] = []
    pairs = scope.pairs()
    now = time.time()
    # The engine's side (offset syncs, heartbeat, connector state) is read beside the brokers'
    # offsets: independent reads, each a round trip of its own.
    with ThreadPoolExecutor(max_workers=3) as pool:
        hints_read = pool.submit(read_hints, scope, hint_problems := [])
        engine_reads = None
        if engine_view:
            engine_reads = (pool.submit(scope.engine.heartbeat_age, scope.owner, scope.secondary,
                                        int(now * 1000)),
                            pool.submit(scope.engine.status, scope.owner, scope.secondary))
        if marks is None:
            # The mirror first: then every record it holds was on the owner when the owner is read,
            # even while producers write (read the other way round, a record written and copied
            # between the two reads is on the mirror but past the owner's end: position unknown).
            mirror_marks = watermarks(scope.secondary_admin, [scope.mirror_of(tp) for tp in pairs],
                                      scope.secondary, scope.timeout)
            owner_marks = watermarks(scope.owner_admin, pairs, scope.owner, scope.timeout, stable=True)
        else:
            owner_marks, mirror_marks = marks
        hints = hints_read.result()
    problems.extend(hint_problems)
    now = time.time()  # ages of missing records count from after the reads, as before

    results: dict[Partition, PartitionLag] = {}
    hinted: dict[Partition, OffsetHint] = {}
    for tp in pairs:
        own, mir = owner_marks[tp], mirror_marks[scope.mirror_of(tp)]
        result = results[tp] = PartitionLag(tp[0], scope.mirrors[tp[0]], tp[1], own.start, own.end,
                                            mir.start, mir.end, None, None, None, "empty",
                                            owner_stable_end=own.stable)
        if own.empty:
            result.replicated_through = own.end - 1
        elif mir.end == 0:
            result.replicated_through = own.start - 1  # nothing was ever copied
        else:
            hint = latest_hint(hints.get(tp, []), downstream_within=(mir.start, mir.end))
            if (hint and own.start <= hint.upstream_offset < own.end
                    and mir.end - hint.downstream_offset <= MAX_VERIFY):
                hinted[tp] = hint

    # Verify hinted positions: owner [u, u + n] against mirror [d, end), n = records after the hint.
    owner_ranges, mirror_ranges = {}, {}
    for tp, hint in hinted.items():
        n = mirror_marks[scope.mirror_of(tp)].end - hint.downstream_offset
        # Read further on the owner: transaction markers take offsets there, not on the mirror.
        owner_ranges[tp] = [(hint.upstream_offset,
                             min(owner_marks[tp].end, hint.upstream_offset + 2 * n + TAIL + 1))]
        mirror_ranges[scope.mirror_of(tp)] = [(hint.downstream_offset, hint.downstream_offset + n)]
    owner_recs, mirror_recs = read_ranges_of_both(
        (scope.config(scope.owner), owner_ranges, scope.owner),
        (scope.config(scope.secondary), mirror_ranges, scope.secondary),
        timestamps=scope.timestamps, exclude_headers=scope.engine.replication_headers)
    oldest: dict[Partition, Rec] = {}
    for tp in hinted:
        owner_seq = _sorted(owner_recs[tp])
        mirror_seq = _sorted(mirror_recs[scope.mirror_of(tp)])
        if mirror_seq and common_prefix(owner_seq, mirror_seq) == len(mirror_seq):
            results[tp].replicated_through = owner_seq[len(mirror_seq) - 1].offset
            results[tp].method = "offset-sync"
            if len(owner_seq) > len(mirror_seq):
                oldest[tp] = owner_seq[len(mirror_seq)]
        else:
            results[tp].note = "offset hint did not verify by fingerprints; searched instead"
    _search(scope, [tp for tp, r in results.items() if r.replicated_through is None],
            owner_marks, mirror_marks, results, oldest)

    # Count the owner's committed data records after the replicated position, up to its last
    # stable offset: markers and aborted records are never replicated, so they are not missing.
    first_missing = {tp: max(r.replicated_through + 1, r.owner_start) for tp, r in results.items()
                     if r.replicated_through is not None}
    need = {}
    for tp, start in first_missing.items():
        stable = results[tp].compared_end
        if start < stable:  # past the count limit only the oldest missing record is read
            span = COUNT_LIMIT if stable - start <= COUNT_LIMIT else TAIL
            need[tp] = [(start, min(stable, start + span))]
    # Fingerprinted as for matching, so the watch can continue from these records (Verified).
    counted = read_ranges(scope.config(scope.owner), need, scope.owner, timestamps=scope.timestamps,
                          exclude_headers=scope.engine.replication_headers)
    verified = {}
    for tp, result in results.items():
        if tp not in first_missing:
            if not result.note:
                result.note = "the mirror's last records were not found on the owner"
            continue
        start, stable = first_missing[tp], result.compared_end
        records = _sorted(counted.get(tp, {}))
        if stable - start > COUNT_LIMIT:
            result.missing_records = stable - start  # a bound: offsets, not counted one by one
            result.note = "; ".join(filter(None, [
                result.note, f"at most {stable - start} records: offsets {start}..{stable - 1} were not "
                "read one by one (transaction markers would count)"]))
        else:
            verified[tp] = Verified(result.replicated_through, result.mirror_end, records, max(start, stable))
        conclude(result, start, records, oldest.get(tp) or (records[0] if records else None), now)
        if result.replicated_through + 1 < result.owner_start and result.method != "empty":
            result.note = (f"owner log start {result.owner_start} moved past the replicated position: "
                           f"offsets {result.replicated_through + 1}..{result.owner_start - 1} were deleted "
                           "by retention before they were replicated")

    heartbeat, state = None, "UNKNOWN"
    if engine_view:
        heartbeat, state = read_engine_view(scope.engine, scope.owner, scope.secondary, now, problems,
                                            engine_reads)
    return LagReport(scope.owner, scope.secondary, now, [results[tp] for tp in pairs], heartbeat, problems,
                     hints, state, verified)


def read_engine_view(engine: ReplicationEngine, owner: str, secondary: str, now: float,
                     problems: list[str], reads: tuple[Future, Future] | None = None
                     ) -> tuple[float | None, str]:
    """Heartbeat age and the engine's state (from `reads` when the caller already started them);
    what fails is added to `problems`."""
    heartbeat = None
    try:
        heartbeat = reads[0].result() if reads else engine.heartbeat_age(owner, secondary, int(now * 1000))
    except ReplicationError as e:
        problems.append(str(e))
    # The lag figures come from the brokers alone; the engine's state says whether lag will shrink.
    try:
        state = (reads[1].result() if reads else engine.status(owner, secondary)).state
    except ReplicationError as e:
        state = "DOWN"
        problems.append(str(e))
    return heartbeat, state


def conclude(result: PartitionLag, start: int, records: list[Rec], oldest: Rec | None, now: float) -> None:
    """Missing records, age and notes of a partition whose committed data after the replicated
    position, from owner offset `start` up to its last stable offset, is `records` (markers and
    aborted records are never replicated, so they are not missing). A bound set before is kept."""
    stable = result.compared_end
    notes = []
    if result.missing_records is None:
        result.missing_records = len(records)
        if start < stable and not records:
            notes.append(f"owner offsets {start}..{stable - 1} hold no committed data (transaction "
                         "markers or aborted records): nothing to replicate")
    if stable < result.owner_end:
        notes.append(f"an open transaction holds owner offsets {stable}..{result.owner_end - 1}: "
                     f"compared against the owner's last stable offset {stable}")
    if notes:
        result.note = "; ".join(filter(None, [result.note, *notes]))
    if result.missing_records and oldest is not None:
        result.oldest_missing_age_seconds = max(0.0, now - oldest.timestamp_ms / 1000)


def continuable(verified: Verified, owner: Watermarks, mirror: Watermarks) -> bool:
    """Whether a verified position can be continued by reading only what is new on both sides.

    Not when a log was truncated or recreated, retention passed the replicated position, or
    the span to count or verify is too long: those partitions are measured from scratch."""
    stable = owner.end if owner.stable is None else owner.stable
    return (mirror.end >= verified.mirror_end and (mirror.end == verified.mirror_end
                                                   or mirror.start <= verified.mirror_end)
            and mirror.end - verified.mirror_end <= MAX_VERIFY
            and owner.start <= verified.replicated_through + 1
            and stable >= verified.read_to and owner.end >= verified.read_to
            and stable - (verified.replicated_through + 1) <= COUNT_LIMIT)


def continue_lag(previous: PartitionLag, verified: Verified, owner: Watermarks, mirror: Watermarks,
                 new_mirror: list[Rec], new_owner: list[Rec], now: float
                 ) -> tuple[PartitionLag, Verified] | None:
    """The partition's exact lag from its previous verified position, or None to measure it anew.

    new_mirror: the mirror's records [verified.mirror_end, mirror.end); new_owner: the owner's
    committed records [verified.read_to, its last stable offset). The new mirror records must
    be copies of the owner's next records, one by one (else: an engine restart re-copied, a
    log was rewritten: measured anew); what follows them on the owner is missing.
    """
    tail = verified.tail + new_owner
    copied = len(new_mirror)
    if copied > len(tail) or common_prefix(tail, new_mirror) != copied:
        return None
    through = tail[copied - 1].offset if copied else verified.replicated_through
    rest = tail[copied:]
    result = PartitionLag(previous.topic, previous.mirror_topic, previous.partition, owner.start, owner.end,
                          mirror.start, mirror.end, through, None, None, previous.method,
                          owner_stable_end=owner.stable)
    conclude(result, through + 1, rest, rest[0] if rest else None, now)
    read_to = max(verified.read_to, result.compared_end)
    return result, Verified(through, mirror.end, rest, read_to)


def _sorted(records: dict[int, Rec]) -> list[Rec]:
    return [records[offset] for offset in sorted(records)]


def _search(scope: Scope, pending: list[Partition], owner_marks: dict[Partition, Watermarks],
            mirror_marks: dict[Partition, Watermarks], results: dict[Partition, PartitionLag],
            oldest: dict[Partition, Rec]) -> None:
    """No verified hint: look for the mirror's last TAIL records among the owner's last SEARCH records."""
    if not pending:
        return
    mirror_ranges = {}
    for tp in pending:
        marks = mirror_marks[scope.mirror_of(tp)]
        mirror_ranges[scope.mirror_of(tp)] = [(max(marks.start, marks.end - TAIL), marks.end)]
    owner_ranges = {}
    for tp in pending:
        marks = owner_marks[tp]
        owner_ranges[tp] = [(max(marks.start, marks.end - SEARCH), marks.end)]
    owners, tails = read_ranges_of_both(
        (scope.config(scope.owner), owner_ranges, scope.owner),
        (scope.config(scope.secondary), mirror_ranges, scope.secondary),
        timestamps=scope.timestamps, exclude_headers=scope.engine.replication_headers)
    for tp in pending:
        tail = _sorted(tails[scope.mirror_of(tp)])
        owner_seq = _sorted(owners[tp])
        if not tail:
            continue
        needle = [r.fingerprint for r in tail]
        found = [i for i in range(len(owner_seq) - len(needle) + 1)
                 if owner_seq[i].fingerprint == needle[0]
                 and [r.fingerprint for r in owner_seq[i:i + len(needle)]] == needle]
        if len(found) == 1:
            end = found[0] + len(needle)
            results[tp].replicated_through = owner_seq[end - 1].offset
            results[tp].method = "search"
            if end < len(owner_seq):
                oldest[tp] = owner_seq[end]
        elif found:
            results[tp].note = (f"the mirror's last {len(needle)} records match {len(found)} places on "
                                "the owner (identical records): replicated position is ambiguous")

