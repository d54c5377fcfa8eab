"""Translate positions on a mirror back to its upstream topic (the second hand-over onwards).

After a failover to west, a group consumes the tail of `east.orders.events` on west. Failing
back, its position there must become a position in east's own `orders.events`: the record
at the committed offset C of the mirror is located in the upstream topic by fingerprints,
starting from the engine's offset hint for the flow upstream -> mirror (MM2 offset syncs
map upstream u to mirror d, so the newest hint with d <= C bounds the search from below).

A group that has consumed the whole mirror resumes at the upstream topic's end: records
after the last replicated one are the divergent tail, which the failback runbook handled
by its policy (republished, quarantined or discarded), so they must not be consumed again.
"""

from __future__ import annotations

from baton.kafka.admin import check_reachable, client_config
from baton.kafka.reading import committed_offsets, read_ranges_of_both, watermarks
from baton.replication import engine_for
from baton.replication.matching import match_run
from baton.replication.translation import Translation
from baton.settings import Topology

RUN = 64  # records matched from C


def translate_to_upstream(topology: Topology, *, mirror_region: str, upstream_region: str,
                          groups: list[str], pairs: dict[str, str]) -> list[Translation]:
    """pairs: {mirror topic on mirror_region: its upstream topic on upstream_region}."""
    if not pairs:
        return []
    mirror_settings, upstream_settings = topology.regions[mirror_region], topology.regions[upstream_region]
    mirror_admin = check_reachable(mirror_region, mirror_settings)
    timeout = mirror_settings.request_timeout_seconds

    wanted: list[tuple[str, str, int, int]] = []  # group, mirror topic, partition, committed
    for group in groups:
        for (topic, partition), offset in committed_offsets(mirror_admin, group, mirror_region,
                                                            timeout).items():
            if topic in pairs and offset >= 0:
                wanted.append((group, topic, partition, offset))
    if not wanted:
        return []  # no group sits on a mirror (a first hand-over): nothing else to ask
    upstream_admin = check_reachable(upstream_region, upstream_settings)
    engine = engine_for(topology)
    hints = engine.offset_hints(upstream_region, mirror_region, topics=set(pairs.values())).items
    exclude = frozenset(getattr(engine, "replication_headers", frozenset()))
    mirror_marks = watermarks(mirror_admin, {(t, p) for _, t, p, _ in wanted}, mirror_region, timeout)
    upstream_marks = watermarks(upstream_admin, {(pairs[t], p) for _, t, p, _ in wanted},
                                upstream_region, timeout)
    entries: list[Translation] = []
    pending = []
    for group, topic, partition, offset in wanted:
        upstream = pairs[topic]
        entry = Translation(group, topic, upstream, partition, offset, None, "exact")
        entries.append(entry)
        mirror_end = mirror_marks[(topic, partition)].end
        if offset >= mirror_end:
            entry.resolve(upstream_marks[(upstream, partition)].end, "end")
            entry.note = "consumed the whole mirror: resumes after the upstream's divergent tail"
            continue
        candidates = [h for h in hints.get((upstream, partition), []) if h.downstream_offset <= offset]
        hint = candidates[-1] if candidates else None
        low = hint.upstream_offset if hint else upstream_marks[(upstream, partition)].start
        distance = offset - (hint.downstream_offset if hint else mirror_marks[(topic, partition)].start)
        high = min(low + distance + RUN, upstream_marks[(upstream, partition)].end)
        pending.append((entry, (topic, partition), (offset, min(offset + RUN, mirror_end)),
                        (upstream, partition), (low, high)))
    if pending:
        mirror_records, upstream_records = read_ranges_of_both(
            (client_config(mirror_settings), {m: [r] for _, m, r, _, _ in pending}, mirror_region),
            (client_config(upstream_settings), {u: [r] for _, _, _, u, r in pending}, upstream_region),
            exclude_headers=exclude)
        for entry, mirror_tp, (start, stop), upstream_tp, (low, high) in pending:
            run = [r for o, r in sorted(mirror_records[mirror_tp].items()) if start <= o < stop]
            window = [r for o, r in sorted(upstream_records[upstream_tp].items()) if low <= o < high]
            # The upstream may continue past the run (unreplicated records): never "complete".
            match = match_run(run, False, window, high >= upstream_marks[upstream_tp].end, False)
            if match.status == "exact":
                entry.resolve(match.offset)
            else:
                entry.refuse(match.status, f"mirror record {start} not located in "
                             f"{upstream_tp[0]}[{upstream_tp[1]}] {low}..{high} "
                             f"(candidates {match.candidates[:10]})")
    return entries


def keep_returning_positions(topology: Topology, entries: list[Translation], *,
                             returning_region: str) -> list[dict]:
    """Failback: never move a group behind what it committed on the returning region itself.

    After an unplanned failover a group's position on the mirror may lag (checkpoints), so its
    translation back can land before the offset it had committed on the returning region before
    the outage. Inside the common prefix (returning-region records that reached the mirror, so
    both logs hold them) that own commit is still true: the later of the two wins, and why is
    returned for the evidence. Beyond the prefix (the divergent tail) the translation stands.
    """
    from baton.replication.lag import measure_lag

    candidates = [e for e in entries if e.usable]
    if not candidates:
        return []
    admin = check_reachable(returning_region, topology.regions[returning_region])
    timeout = topology.regions[returning_region].request_timeout_seconds
    own = {}
    for group in {e.group for e in candidates}:
        for tp, offset in committed_offsets(admin, group, returning_region, timeout).items():
            own[(group, *tp)] = offset
    ahead = [e for e in candidates
             if own.get((e.group, e.mirror_topic, e.partition), -1) > e.translated_offset]
    if not ahead:
        return []
    lag = measure_lag(topology, owner=returning_region, topics=sorted({e.mirror_topic for e in ahead}))
    prefix = {(p.topic, p.partition): p.replicated_through for p in lag.partitions}
    kept = []
    for entry in ahead:
        position = own[(entry.group, entry.mirror_topic, entry.partition)]
        through = prefix.get((entry.mirror_topic, entry.partition))
        if through is None or position > through + 1:
            continue  # past the common prefix: the group's own commit is not on both sides
        why = (f"kept {entry.group}'s own commit {position} on {returning_region}: inside the common prefix "
               f"(both logs hold {entry.mirror_topic}[{entry.partition}] through offset {through}); the "
               f"translation {entry.translated_offset} would re-deliver {position - entry.translated_offset} "
               "records it had already committed")
        kept.append({"group": entry.group, "partition": f"{entry.mirror_topic}[{entry.partition}]",
                     "translated": entry.translated_offset, "kept": position, "why": why})
        entry.resolve(position)
        entry.duplicates_bound = 0
        entry.note = why
    return kept
