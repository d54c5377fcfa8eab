"""Exact consumer-offset translation owner -> secondary, and applying it to the secondary's groups.

The record at a group's committed offset C on the owner is the next record it would consume.
Baton finds that very record in the mirror:
1. hint: the newest-written offset hint with upstream <= C (after an engine restart that is the
   restart's own hint, so the *newest* copy of C is found, past any replayed duplicates);
2. verify: the owner's records from the hint to C (and a few after) equal the mirror's,
   record by record by fingerprint; C's copy is then the answer (`exact`);
3. otherwise search: match a run of consecutive records over every mirror offset where the
   record's newest copy could be (bounded by offset syncs and log starts, never by a time
   window), which separates identical payloads and replayed duplicates; a match is exact only
   when it is the one place in those bounds; several places -> `ambiguous`.
Every entry ends with one outcome: an offset and its method, or a named refusal (REFUSALS).
A group whose next record is not (yet) on the mirror maps to the mirror's end (`end`), with
the duplicates that would arrive if replication caught up. When the owner is unreachable the
engine's own checkpoints are used (`checkpoint`): they never skip data, but may re-deliver.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition

from baton.errors import RegionUnreachable, ReplicationError, StepFailed, UsageError
from baton.kafka.reading import (
    Partition,
    Rec,
    committed_offsets,
    read_ranges,
    read_ranges_of_both,
    watermarks,
)
from baton.replication.engine import ReplicationEngine
from baton.replication.lag import LagReport, Scope, latest_hint, measure_lag, resolve_scope
from baton.replication.matching import common_prefix, match_run
from baton.settings import Topology

# Records checked after C (hint path) and the run matched from C (search path).
RUN_AFTER, RUNS = 16, (64, 512, 4096)
MAX_VERIFY = 50_000
# Mirror records searched at most for one record, between its plausible bounds.
MAX_SEARCH = 400_000


# The note of an entry verified before a fence and carried into it by still_verified.
CARRIED_NOTE = "verified record by record before the fence"

# Every entry ends with exactly one outcome: "ok" (an offset and its method) or one refusal.
REFUSALS = (
    "not-found",  # the record the group resumes at is not where the mirror could hold it
    "ambiguous",  # it matches several places the group's position could be: not guessing
    "behind-log-start",  # its copy was deleted by the mirror's retention
    "compacted",  # no data record left at or after the committed offset (compaction)
    "aborted-only",  # only aborted records / markers after the committed offset
    "open-transaction",  # the next record is inside a transaction still open on the owner
    "no-checkpoint",  # the engine never checkpointed this group and partition
    "unknown-position",  # the mirror's replicated position could not be established
)


@dataclass
class Translation:
    """One (group, partition): an offset with its method, or a refusal status with its reason.

    "ok" without an offset cannot be constructed or assigned (ValueError): a failover must
    never apply an entry that says ok and carries nothing.
    """

    group: str
    topic: str
    mirror_topic: str
    partition: int
    owner_offset: int | None  # the group's committed offset on the owner
    translated_offset: int | None  # where it resumes on the secondary
    method: str  # exact | checkpoint | exact-syncs (owner down, proven by offset syncs) | end
    status: str = "pending"  # ok | pending (not decided yet) | one of REFUSALS
    duplicates_bound: int | None = 0  # records the group may see again from there
    missing: int | None = 0  # records the group has not processed that the secondary lacks
    note: str = ""
    checkpoint_offset: int | None = None  # the engine's checkpoint beside an exact-syncs answer
    # (upstream, downstream) of the offset sync the answer was verified from, record by record
    verified_from_sync: tuple[int, int] | None = None

    def __setattr__(self, name: str, value) -> None:
        if name in ("status", "translated_offset") and "translated_offset" in self.__dict__:
            status = value if name == "status" else self.__dict__.get("status")
            offset = value if name == "translated_offset" else self.translated_offset
            if status == "ok" and offset is None:
                raise ValueError(f"{self.group} {self.topic}[{self.partition}]: status ok needs an offset")
            if status not in (None, "ok", "pending", *REFUSALS):
                raise ValueError(f"unknown translation status {status!r}")
        object.__setattr__(self, name, value)

    def resolve(self, offset: int, method: str | None = None) -> None:
        """A definite position on the secondary."""
        self.translated_offset = offset
        if method:
            self.method = method
        self.status = "ok"

    def refuse(self, status: str, reason: str) -> None:
        """A definite refusal naming its cause; nothing will be applied for this entry."""
        if status not in REFUSALS:
            raise ValueError(f"{status!r} is not a refusal status")
        self.status = status
        self.translated_offset = None
        self.duplicates_bound = None
        self.note = reason

    @property
    def usable(self) -> bool:
        return self.status == "ok" and self.translated_offset is not None

    def where(self) -> str:
        return f"{self.group} {self.mirror_topic}[{self.partition}]"


@dataclass
class TranslationReport:
    owner: str
    secondary: str
    owner_reachable: bool
    entries: list[Translation]
    problems: list[str] = field(default_factory=list)
    lag: LagReport | None = None
    # group -> mirror partitions where the owner holds no commit (the secondary must hold none)
    no_commit_on_owner: dict[str, list[Partition]] = field(default_factory=dict)

    @property
    def untranslated(self) -> list[Translation]:
        """Entries with a refusal instead of an offset: nothing may be applied for them."""
        return [e for e in self.entries if not e.usable]

    def refusal_text(self) -> str:
        """The untranslated group-partitions, each with its status and reason."""
        return "; ".join(f"{e.where()} (owner offset {e.owner_offset}) {e.status}: {e.note}"
                         for e in self.untranslated)

    def as_dict(self) -> dict:
        return {
            "owner": self.owner, "secondary": self.secondary, "owner_reachable": self.owner_reachable,
            "currency": self.lag.statement() if self.lag else None, "problems": self.problems,
            "translated": not self.untranslated,
            "no_commit_on_owner": {group: [f"{t}[{p}]" for t, p in partitions]
                                   for group, partitions in self.no_commit_on_owner.items()},
            "untranslated": [e.where() for e in self.untranslated],
            "entries": [asdict(e) for e in self.entries],
        }


def translate_offsets(topology: Topology, *, groups: list[str] | None = None,
                      topics: list[str] | None = None, owner: str | None = None, method: str = "exact",
                      hint: str = "offset-sync", engine: ReplicationEngine | None = None,
                      scope: Scope | None = None, lag: LagReport | None = None,
                      prior: list[Translation] | None = None) -> TranslationReport:
    """Translate each group's committed offsets on the owner to positions on the secondary.

    lag: a measurement of this scope the caller already holds (the currency step's, on a fenced
    owner whose end offsets and the mirror's were re-read unchanged since); else measured here.
    prior: an earlier translation (before the fence); an entry of it is carried only where
    `still_verified` says it is still the answer, every other entry is verified here.
    """
    if method not in ("exact", "checkpoint"):
        raise UsageError(f"--method must be exact or checkpoint, not {method!r}")
    if hint not in ("offset-sync", "timestamp"):
        raise UsageError(f"hint must be offset-sync or timestamp, not {hint!r}")
    groups = list(groups or topology.domain.consumer_groups)
    if not groups:
        raise UsageError("no consumer groups: pass --group G or list domain.consumer_groups")
    scope = scope or resolve_scope(topology, owner=owner, topics=topics, engine=engine,
                                   owner_required=False)
    problems: list[str] = []
    if scope.owner_admin is None:
        servers = topology.regions[scope.owner].bootstrap_servers
        problems.append(f"owner region {scope.owner!r} is unreachable ({servers}): fell back to "
                        f"MM2 checkpoints read from {scope.secondary!r}")
        entries = _by_checkpoints(scope, groups, None, problems)
        _exact_from_syncs(scope, entries, problems)
        return TranslationReport(scope.owner, scope.secondary, False, entries, problems)
    lag = lag or measure_lag(topology, scope=scope)
    problems.extend(lag.problems)
    exact = _exact(scope, groups, lag, hint,
                   {(e.group, e.topic, e.partition): e for e in prior or []})
    entries = _by_checkpoints(scope, groups, exact, problems) if method == "checkpoint" else exact
    translated = {(e.group, e.topic, e.partition) for e in exact}
    absent = {g: [scope.mirror_of(tp) for tp in scope.pairs() if (g, *tp) not in translated] for g in groups}
    return TranslationReport(scope.owner, scope.secondary, True, entries, problems, lag,
                             {g: tps for g, tps in absent.items() if tps})


def _committed(scope: Scope, groups: list[str]) -> dict[str, dict[Partition, int]]:
    in_scope = set(scope.pairs())
    found = {}
    for group in groups:
        offsets = committed_offsets(scope.owner_admin, group, scope.owner, scope.timeout)
        found[group] = {tp: o for tp, o in offsets.items() if tp in in_scope}
        if not found[group]:
            raise UsageError(f"unknown group {group!r}: it has no committed offsets for "
                             f"{', '.join(scope.topics)} on owner region {scope.owner!r}; "
                             "pass a group that consumes these topics (--group)")
    return found


def _sorted(records: dict[int, Rec]) -> list[Rec]:
    return [records[offset] for offset in sorted(records)]


def still_verified(entry: Translation, prior: Translation | None, part, hints: list) -> bool:
    """Carry a translation verified earlier (before the fence) when it is still the answer.

    It was verified record by record from offset sync S. Records never change at an offset, so
    with the same committed offset, that offset still in the owner's log and its copy in the
    mirror's, and S still the newest-written sync at or below it, verifying again here would
    pick S and compare the same records: the same answer. A later engine lifetime copying the
    record again writes a newer sync at or below it (see plausible_bounds), which changes the
    pick and sends the entry to verification again.
    """
    if prior is None or not prior.usable or prior.verified_from_sync is None \
            or prior.owner_offset != entry.owner_offset or entry.owner_offset < part.owner_start \
            or not part.mirror_start <= prior.translated_offset < part.mirror_end:
        return False
    hint = latest_hint(hints, upstream_at_most=entry.owner_offset,
                       downstream_within=(part.mirror_start, part.mirror_end))
    if hint is None or (hint.upstream_offset, hint.downstream_offset) != prior.verified_from_sync:
        return False
    entry.resolve(prior.translated_offset)
    entry.verified_from_sync = prior.verified_from_sync
    entry.note = (f"{CARRIED_NOTE} from offset sync "
                  f"{hint.upstream_offset}->{hint.downstream_offset}; unchanged in the fence: same "
                  "committed offset, same newest sync at or below it (no copy since)")
    return True


def _exact(scope: Scope, groups: list[str], lag: LagReport, hint_kind: str,
           prior: dict | None = None) -> list[Translation]:
    committed = _committed(scope, groups)
    positions = lag.by_partition()
    prior = prior or {}
    entries: list[Translation] = []
    pending: list[tuple[Translation, Partition]] = []
    for group in groups:
        for tp in scope.pairs():
            if tp not in committed[group]:
                continue
            part = positions[tp]
            offset = committed[group][tp]
            entry = Translation(group, tp[0], scope.mirrors[tp[0]], tp[1], offset, None, "exact")
            entries.append(entry)
            if part.replicated_through is None:
                entry.refuse("unknown-position", "replicated position unknown: " + part.note)
                entry.missing = None
                continue
            if offset > part.compared_end:
                entry.refuse("open-transaction", f"committed offset {offset} is inside a transaction still "
                             f"open on the owner (offsets {part.compared_end}..{part.owner_end - 1}); its "
                             "records may yet abort: translate after it commits or aborts")
                continue
            next_offset = max(offset, part.owner_start)
            if next_offset > offset:
                entry.note = (f"committed offset {offset} is below the owner's log start {part.owner_start}"
                              " (deleted by retention): the group resumes at the log start")
            first_missing = max(part.replicated_through + 1, part.owner_start)
            entry.missing = max(0, part.owner_end - max(next_offset, first_missing))
            if next_offset >= first_missing:
                # Its next record is not on the mirror (yet): resume at the mirror's end.
                entry.resolve(part.mirror_end, "end")
                entry.duplicates_bound = max(0, min(next_offset, part.owner_end) - first_missing)
                if entry.duplicates_bound:
                    entry.note = (f"mirror is not current: {entry.duplicates_bound} records this group "
                                  "already processed would arrive after this position")
                continue
            if not still_verified(entry, prior.get((group, *tp)), part, lag.hints.get(tp, [])):
                pending.append((entry, tp))

    unresolved = _verify_hinted(scope, pending, lag, hint_kind)
    _search(scope, unresolved, lag)
    for entry in entries:
        if entry.status == "pending":  # never leave an entry without an outcome
            entry.refuse("not-found", "no step could place this record on the mirror")
    return entries


def _verify_hinted(scope: Scope, pending: list[tuple[Translation, Partition]], lag: LagReport,
                   hint_kind: str) -> list[tuple[Translation, Partition]]:
    """Resolve entries whose newest hint verifies record by record; return the rest."""
    positions = lag.by_partition()
    plan = []
    for entry, tp in pending:
        part = positions[tp]
        next_offset = max(entry.owner_offset, part.owner_start)
        hint = None
        if hint_kind == "offset-sync":
            hint = latest_hint(lag.hints.get(tp, []), upstream_at_most=next_offset,
                               downstream_within=(part.mirror_start, part.mirror_end))
        if hint is None or hint.upstream_offset < part.owner_start or \
                next_offset - hint.upstream_offset > MAX_VERIFY:
            continue
        plan.append((entry, tp, hint, next_offset))
    owner_ranges: dict[Partition, list] = {}
    mirror_ranges: dict[Partition, list] = {}
    for _, tp, hint, next_offset in plan:
        part = positions[tp]
        owner_ranges.setdefault(tp, []).append(
            (hint.upstream_offset, min(part.owner_end, next_offset + RUN_AFTER)))
        mirror_ranges.setdefault(scope.mirror_of(tp), []).append(
            (hint.downstream_offset,
             min(part.mirror_end, hint.downstream_offset + next_offset - hint.upstream_offset + RUN_AFTER)))
    owner_recs, mirror_recs = read_ranges_of_both(
        (scope.config(scope.owner), owner_ranges, scope.owner),
        (scope.config(scope.secondary), mirror_ranges, scope.secondary),
        timestamps=scope.timestamps, exclude_headers=scope.engine.replication_headers)
    resolved = set()
    for entry, tp, hint, next_offset in plan:
        owner_seq = [r for r in _sorted(owner_recs[tp]) if hint.upstream_offset <= r.offset]
        mirror_seq = [r for r in _sorted(mirror_recs[scope.mirror_of(tp)])
                      if hint.downstream_offset <= r.offset]
        index = next((i for i, r in enumerate(owner_seq) if r.offset >= next_offset), None)
        if index is None:
            continue
        common = common_prefix(owner_seq, mirror_seq)
        # C's copy must verify, and so must every record read after it on both sides.
        if common > index and common == min(len(owner_seq), len(mirror_seq)):
            entry.resolve(mirror_seq[index].offset)
            entry.verified_from_sync = (hint.upstream_offset, hint.downstream_offset)
            resolved.add(id(entry))
    return [(entry, tp) for entry, tp in pending if id(entry) not in resolved]


@dataclass
class Bounds:
    """Mirror offsets [low, high) where the newest copy of an owner record can start, and why."""

    low: int
    high: int
    why: str


def plausible_bounds(hints: list, upstream: int, mirror_start: int, mirror_end: int) -> Bounds:
    """Where the newest copy of owner record `upstream` can be, from MM2's offset syncs alone.

    MM2 (OffsetSyncWriter) copies in order within a task's lifetime and writes a sync for the
    first record of every lifetime, so: the newest-written sync with upstream <= u bounds the
    newest copy of u from below (a later lifetime replaying u wrote its own, newer sync), and
    the newest-written sync of all, if its upstream >= u, bounds every copy of u from above
    (a lifetime copying u again later would have written a newer sync). Compaction of the
    syncs topic only removes syncs, which widens the bounds but never makes them wrong, because
    it always keeps the newest sync of a partition.
    """
    low, high = mirror_start, mirror_end
    why_low, why_high = f"mirror log start {mirror_start}", f"mirror end {mirror_end}"
    below = next((h for h in reversed(hints) if h.upstream_offset <= upstream), None)
    if below is not None and below.downstream_offset > low:
        low = below.downstream_offset
        why_low = f"offset sync {below.upstream_offset}->{below.downstream_offset}"
    if hints and hints[-1].upstream_offset >= upstream and hints[-1].downstream_offset + 1 < high:
        high = hints[-1].downstream_offset + 1
        why_high = f"newest offset sync {hints[-1].upstream_offset}->{hints[-1].downstream_offset}"
    return Bounds(low, max(low, high), f"{why_low} .. {why_high}")


def _search(scope: Scope, pending: list[tuple[Translation, Partition]], lag: LagReport) -> None:
    """Match a run of consecutive records from C over every place its copy could be; longer runs
    while ambiguous. An answer is exact only when one place in those bounds matches.

    A longer run reaches past identical payloads and past a replayed stretch (an earlier copy
    is followed by the replay's jump back, the newest copy is not).
    """
    for number, run_length in enumerate(RUNS):
        pending = _search_once(scope, pending, lag, run_length, last=number == len(RUNS) - 1)
        if not pending:
            return


def _search_once(scope: Scope, pending: list[tuple[Translation, Partition]], lag: LagReport,
                 run_length: int, last: bool) -> list[tuple[Translation, Partition]]:
    """One search pass; returns the entries to try again with a longer run."""
    if not pending:
        return []
    retry = []
    positions = lag.by_partition()
    owner_ranges: dict[Partition, list] = {}
    for entry, tp in pending:
        start = max(entry.owner_offset, positions[tp].owner_start)
        owner_ranges.setdefault(tp, []).append((start, min(positions[tp].owner_end, start + run_length)))
    owner_recs = read_ranges(scope.config(scope.owner), owner_ranges, scope.owner,
                             timestamps=scope.timestamps, exclude_headers=scope.engine.replication_headers)
    runs, bounds = {}, {}
    mirror_ranges: dict[Partition, list] = {}
    for entry, tp in pending:
        part = positions[tp]
        start = max(entry.owner_offset, part.owner_start)
        stop = min(part.owner_end, start + run_length)
        run = [r for r in _sorted(owner_recs[tp]) if start <= r.offset < stop]
        runs[id(entry)] = run
        if not run:
            if stop < part.owner_end and not last:
                retry.append((entry, tp))  # look further for the next data record
            else:
                entry.refuse("compacted", f"no data record at owner offsets {start}..{stop - 1} "
                             "(compacted away, or only transaction markers / aborted records)")
            continue
        found = plausible_bounds(lag.hints.get(tp, []), run[0].offset, part.mirror_start, part.mirror_end)
        if found.high <= part.mirror_start or found.high - found.low > MAX_SEARCH:
            entry.refuse("behind-log-start" if found.high <= part.mirror_start else "not-found",
                         f"owner record {run[0].offset} could only be at mirror offsets "
                         f"{found.low}..{found.high - 1} ({found.why})"
                         + ("" if found.high > part.mirror_start else
                            f", below the mirror's log start {part.mirror_start}: deleted by retention")
                         + ("" if found.high - found.low <= MAX_SEARCH else
                            f": more than {MAX_SEARCH} records to search, no offset sync nearby"))
            continue
        bounds[id(entry)] = found
        mirror_ranges.setdefault(scope.mirror_of(tp), []).append(
            (found.low, min(part.mirror_end, found.high + run_length)))
    mirror_recs = read_ranges(scope.config(scope.secondary), mirror_ranges, scope.secondary,
                              timestamps=scope.timestamps, exclude_headers=scope.engine.replication_headers)
    for entry, tp in pending:
        if id(entry) not in bounds:
            continue
        part = positions[tp]
        run, found = runs[id(entry)], bounds[id(entry)]
        window = [r for r in _sorted(mirror_recs[scope.mirror_of(tp)])
                  if found.low <= r.offset < found.high + run_length]
        match = match_run(run, run[-1].offset >= part.owner_end - 1, window,
                          found.high + run_length >= part.mirror_end, bool(part.current),
                          starts_before=found.high)
        where = f"{entry.mirror_topic}[{entry.partition}] {found.low}..{found.high - 1} ({found.why})"
        if match.status == "exact":
            entry.resolve(match.offset)
            entry.duplicates_bound = 0
            entry.note = (entry.note + " " if entry.note else "") + (
                f"located by fingerprint search: the only match in {where}")
        elif match.status == "ambiguous" and len(run) == run_length and not last:
            retry.append((entry, tp))
        elif match.status == "ambiguous":
            entry.refuse("ambiguous", f"the run of {len(run)} records from owner offset {run[0].offset} "
                         f"matches mirror offsets {match.candidates[:10]} in {where}; not guessing")
        else:
            start_note = f"; the mirror's log start is {part.mirror_start}" if part.mirror_start else ""
            entry.refuse("not-found", f"the owner's records from offset {run[0].offset} are nowhere "
                         f"in {where}{start_note}")
    return retry


def _by_checkpoints(scope: Scope, groups: list[str], exact: list[Translation] | None,
                    problems: list[str]) -> list[Translation]:
    """The engine's own translation. Beside an exact result, the duplicates it would cause are measured."""
    reading = scope.engine.checkpoints(scope.owner, scope.secondary)
    problems.extend(reading.problems)
    bound = scope.engine.checkpoint_duplicates_bound()
    by_key = {(e.group, e.topic, e.partition): e for e in exact or []}
    entries = []
    for group in groups:
        rows = []
        for topic, p in scope.pairs():
            mirror = scope.mirrors[topic]
            checkpoint = reading.items.get((group, mirror, p))
            reference = by_key.get((group, topic, p))
            if exact is not None and reference is None:
                continue  # no commit on the owner for this partition
            entry = Translation(group, topic, mirror, p, reference.owner_offset if reference else None,
                                None, "checkpoint", duplicates_bound=bound, missing=None)
            if checkpoint is None:
                if reference is None and exact is not None:
                    continue
                # With the owner down every partition in scope gets an entry: the group's commit
                # there cannot be read, so the gap is named (and resolvable) instead of skipped.
                entry.refuse("no-checkpoint", "MM2 emitted no checkpoint for this group and partition "
                             "(lagging or idle group)" if reference is not None else
                             f"MM2 emitted no checkpoint for this group and partition, and the owner "
                             f"{scope.owner!r} is unreachable, so its commit there (if any) cannot be "
                             "read: the group never committed there, lags, or is idle")
            else:
                entry.resolve(checkpoint.downstream_offset)
                if entry.owner_offset is None:
                    entry.owner_offset = checkpoint.upstream_offset
                entry.note = (f"checkpoint of upstream offset {checkpoint.upstream_offset} written at "
                              f"{checkpoint.timestamp_ms} ms; bound {bound} is the engine's, plus anything "
                              "the group consumed after the checkpoint")
                if reference is not None and reference.usable:
                    entry.missing = reference.missing
                    gap = reference.translated_offset - checkpoint.downstream_offset
                    entry.duplicates_bound = max(0, gap)
                    entry.note = (f"measured against exact offset {reference.translated_offset}: "
                                  f"{entry.duplicates_bound} duplicates")
            rows.append(entry)
        entries.extend(rows)
    return entries


def proven_segment(hints: list, upstream: int, mirror_end: int, lag_max: int):
    """(sync, last mirror offset) of a segment proven one-to-one around owner offset `upstream`.

    MM2 writes a sync whenever the upstream skips an offset (a marker, an aborted or compacted
    record), at the first record of every task lifetime, and at least every offset.lag.max
    records (OffsetSyncWriter.PartitionState.update). So, from the newest-written sync at or
    below `upstream` (a newer one would belong to a later lifetime that copied it again):
    - to the next sync: equal upstream and downstream deltas mean every offset was copied once;
    - past the newest sync of all: the mirror's tail, shorter than offset.lag.max, was copied
      without a skip (a skip would have written a sync). A group past that tail consumed
      everything the mirror holds: it resumes at the mirror's end.
    The copy of `upstream` is then at sync.downstream + (upstream - sync.upstream), at most the
    mirror's end. None: unproven.
    """
    # A replay (a restarted task copying records again) shows as more mirror offsets than owner
    # offsets between two syncs. The earlier lifetime copied owner offsets up to at most
    # a.upstream + (b.downstream - 1 - a.downstream); if that reaches `upstream`, copies of the
    # group's next records may sit before the newest ones: unproven.
    for a, b in zip(hints, hints[1:], strict=False):
        if b.downstream_offset - a.downstream_offset > b.upstream_offset - a.upstream_offset and \
                a.upstream_offset + b.downstream_offset - 1 - a.downstream_offset >= upstream:
            return None
    index = next((i for i in range(len(hints) - 1, -1, -1) if hints[i].upstream_offset <= upstream), None)
    if index is None or len(hints) < 2:
        return None
    first = hints[index]
    if index + 1 < len(hints):
        second = hints[index + 1]
        if second.upstream_offset < upstream or (second.upstream_offset - first.upstream_offset
                                                 != second.downstream_offset - first.downstream_offset):
            return None
        return first, second.downstream_offset
    if mirror_end - first.downstream_offset - 1 >= lag_max:
        return None
    return first, mirror_end - 1


def _exact_from_syncs(scope: Scope, entries: list[Translation], problems: list[str]) -> None:
    """Owner unreachable: replace a checkpoint by the exact copy where offset syncs prove it.

    The mirror segment between the two syncs must read back whole (no missing offset) and with
    no record repeated (a replay would repeat fingerprints), else the checkpoint stands.
    """
    checkpointed = [e for e in entries
                    if e.usable and e.method == "checkpoint" and e.owner_offset is not None]
    ends = watermarks(scope.secondary_admin, {(e.mirror_topic, e.partition) for e in checkpointed},
                      scope.secondary, scope.timeout)
    for entry in checkpointed:
        # The group may have consumed past its last checkpoint on the dead owner: at most every
        # record the mirror holds after the position. That, not the engine's lag max, is the bound.
        mirror_end = ends[(entry.mirror_topic, entry.partition)].end
        entry.duplicates_bound = max(0, mirror_end - entry.translated_offset)
    try:
        hints = scope.engine.offset_hints(scope.owner, scope.secondary,
                                           topics={e.topic for e in checkpointed}).items
    except (ReplicationError, RegionUnreachable) as e:
        problems.append(f"offset syncs unreadable ({e}); with the owner down they must live on the "
                        "secondary (MM2 offset-syncs.topic.location=target): kept the checkpoints")
        return
    lag_max = scope.topology.replication.offset_lag_max
    plan = []
    for entry in checkpointed:
        pair = proven_segment(hints.get((entry.topic, entry.partition), []), entry.owner_offset,
                              ends[(entry.mirror_topic, entry.partition)].end, lag_max)
        if pair is None:
            entry.note += "; offset syncs do not prove a one-to-one segment here: checkpoint kept"
            continue
        plan.append((entry, pair))
    ranges: dict[Partition, list] = {}
    for entry, (first, last) in plan:
        ranges.setdefault((entry.mirror_topic, entry.partition), []).append(
            (first.downstream_offset, last + 1))
    records = read_ranges(scope.config(scope.secondary), ranges, scope.secondary,
                          timestamps=scope.timestamps, exclude_headers=scope.engine.replication_headers)
    for entry, (first, last) in plan:
        found = records[(entry.mirror_topic, entry.partition)]
        segment = [found.get(o) for o in range(first.downstream_offset, last + 1)]
        if None in segment or len({r.fingerprint for r in segment}) != len(segment):
            entry.note += (f"; mirror offsets {first.downstream_offset}..{last} do not read back whole "
                           "and distinct: checkpoint kept")
            continue
        entry.checkpoint_offset = entry.translated_offset
        entry.resolve(min(first.downstream_offset + entry.owner_offset - first.upstream_offset, last + 1),
                      "exact-syncs")
        mirror_end = ends[(entry.mirror_topic, entry.partition)].end
        entry.duplicates_bound = max(0, mirror_end - entry.translated_offset)
        entry.note = (f"owner unreachable: exact from offset sync {first.upstream_offset}->"
                      f"{first.downstream_offset}, one-to-one through mirror offset {last} (proven by the "
                      "syncs, mirror read back whole) for the checkpointed owner offset "
                      f"{entry.owner_offset}; the checkpoint said {entry.checkpoint_offset}. Records the "
                      "group consumed after that checkpoint are re-delivered: at most "
                      f"{entry.duplicates_bound}, the mirror's records after this position")


@dataclass
class Applied:
    group: str
    committed: dict[str, int]  # "topic[partition]" -> offset read back
    previous: dict[str, int]
    # "topic[partition]" -> the offset deleted: no commit on the owner, so none on the secondary
    deleted: dict[str, int] = field(default_factory=dict)


def apply_translation(topology: Topology, report: TranslationReport, *, force: bool = False,
                      groups: list[str] | None = None) -> list[Applied]:
    """Commit translated offsets to the secondary's groups; all checks pass before anything is written."""
    from baton.kafka.admin import check_reachable

    region = report.secondary
    admin = check_reachable(region, topology.regions[region])
    timeout = topology.regions[region].request_timeout_seconds
    by_group: dict[str, list[Translation]] = {}
    for entry in report.entries:
        if groups is None or entry.group in groups:
            by_group.setdefault(entry.group, []).append(entry)
    refusals = []
    plans: dict[str, dict[Partition, int]] = {}
    previous: dict[str, dict[Partition, int]] = {}
    if not by_group:  # no group has a position to carry (librdkafka refuses to describe none)
        return []
    described = admin.describe_consumer_groups(list(by_group), request_timeout=timeout)
    for group, entries in by_group.items():
        unusable = [f"{e.mirror_topic}[{e.partition}] {e.status}: {e.note}" for e in entries if not e.usable]
        if unusable:
            refusals.append(f"group {group!r} not translated: {'; '.join(unusable)}")
            continue
        try:
            description = described[group].result()
        except KafkaException as e:
            raise ReplicationError(f"describing group {group!r} on region {region!r} failed: {e}") from e
        if description.members:
            members = ", ".join(f"{m.member_id} (client {m.client_id} on {m.host})"
                                for m in description.members)
            refusals.append(f"group {group!r} has active members on region {region!r}: {members}; "
                            "stop these consumers first")
            continue
        plans[group] = {(e.mirror_topic, e.partition): e.translated_offset for e in entries}
        previous[group] = committed_offsets(admin, group, region, timeout)
        backwards = [f"{t}[{p}] {previous[group][(t, p)]} -> {o}" for (t, p), o in plans[group].items()
                     if (t, p) in previous[group] and o < previous[group][(t, p)]]
        if backwards and not force:
            refusals.append(f"group {group!r} would move backwards on region {region!r}: "
                            f"{', '.join(backwards)}; pass --force to re-deliver on purpose")
    if refusals:
        raise StepFailed("nothing was written: " + "; ".join(refusals))
    results = []
    for group, plan in plans.items():
        stale = {tp: previous[group][tp] for tp in report.no_commit_on_owner.get(group, [])
                 if tp in previous[group]}
        wanted = dict(plan)
        if stale:
            # The Python client cannot delete single offsets (no DeleteConsumerGroupOffsets):
            # delete the (empty, checked above) group and commit everything it keeps at once.
            wanted = {tp: o for tp, o in previous[group].items() if tp not in stale} | plan
            _delete_group(admin, group, region, timeout)
        _commit(admin, group, region, wanted, timeout)
        read_back = committed_offsets(admin, group, region, timeout)
        wrong = [f"{t}[{p}] wanted {o} read {read_back.get((t, p))}" for (t, p), o in wanted.items()
                 if read_back.get((t, p)) != o]
        wrong += [f"{t}[{p}] wanted no commit, read {read_back[(t, p)]}" for t, p in stale
                  if (t, p) in read_back]
        if wrong:
            raise StepFailed(f"group {group!r} on region {region!r}: read-back differs: {', '.join(wrong)}")
        results.append(Applied(group, {f"{t}[{p}]": o for (t, p), o in plan.items()},
                               {f"{t}[{p}]": o for (t, p), o in previous[group].items()},
                               {f"{t}[{p}]": o for (t, p), o in stale.items()}))
    return results


def _commit(admin, group: str, region: str, offsets: dict[Partition, int], timeout: float) -> None:
    partitions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
    request = [ConsumerGroupTopicPartitions(group, partitions)]
    try:
        answer = admin.alter_consumer_group_offsets(request, request_timeout=timeout)[group].result()
    except KafkaException as e:
        raise StepFailed(f"committing offsets of group {group!r} on region {region!r} failed: {e}") from e
    failed = [f"{tp.topic}[{tp.partition}]: {tp.error}" for tp in answer.topic_partitions if tp.error]
    if failed:
        raise StepFailed(f"group {group!r} on region {region!r}: {', '.join(failed)}")


def _delete_group(admin, group: str, region: str, timeout: float) -> None:
    """Delete an empty group's commits; its previous offsets are in the evidence already."""
    try:
        admin.delete_consumer_groups([group], request_timeout=timeout)[group].result()
    except KafkaException as e:
        raise StepFailed(f"deleting the offsets of group {group!r} on region {region!r} failed: {e}; "
                         "nothing else was changed") from e
