"""Translation entries always carry a definite outcome; search bounds come from offset syncs."""

from __future__ import annotations

import pytest

from baton.replication.engine import OffsetHint
from baton.replication.translation import Translation, plausible_bounds


def entry(**kwargs) -> Translation:
    return Translation("g", "t", "east.t", 0, 10, kwargs.pop("translated_offset", None), "exact", **kwargs)


def test_ok_without_offset_cannot_exist():
    with pytest.raises(ValueError, match="ok needs an offset"):
        entry(status="ok")
    pending = entry()
    assert pending.status == "pending" and not pending.usable
    with pytest.raises(ValueError):
        pending.status = "ok"
    done = entry(translated_offset=12, status="ok")
    with pytest.raises(ValueError):
        done.translated_offset = None
    with pytest.raises(ValueError, match="unknown translation status"):
        done.status = "fine"


def test_resolve_and_refuse():
    e = entry()
    e.resolve(42)
    assert e.usable and (e.status, e.translated_offset) == ("ok", 42)
    e.refuse("ambiguous", "matches mirror offsets [1, 2]")
    assert not e.usable and e.translated_offset is None and e.duplicates_bound is None
    assert e.note == "matches mirror offsets [1, 2]"
    with pytest.raises(ValueError):
        e.refuse("ok", "no")


def hint(u, d):
    return OffsetHint("t", 0, u, d)


def test_bounds_from_syncs_on_both_sides():
    hints = [hint(0, 0), hint(25_048, 25_048), hint(25_200, 25_200)]
    found = plausible_bounds(hints, 25_110, 0, 25_300)
    assert (found.low, found.high) == (25_048, 25_201)  # the first copy at 0..99 is out of bounds


def test_bounds_only_newest_sync_left():
    assert (plausible_bounds([hint(149_999, 149_999)], 75_000, 0, 150_000).low,
            plausible_bounds([hint(149_999, 149_999)], 75_000, 0, 150_000).high) == (0, 150_000)
    # the newest sync below the record: no upper bound from syncs, the mirror's end is one
    found = plausible_bounds([hint(10, 10)], 75_000, 0, 150_000)
    assert (found.low, found.high) == (10, 150_000)


def test_bounds_after_a_replay():
    # lifetime 1 copied 0..1000 to 0..1000; lifetime 2 replayed from 500 (sync 500->1001)
    hints = [hint(0, 0), hint(900, 900), hint(500, 1001), hint(1000, 1501)]
    found = plausible_bounds(hints, 600, 0, 1502)
    assert (found.low, found.high) == (1001, 1502)  # the newest copy, never the replayed-over one


def test_proven_segment_needs_equal_deltas_and_the_newest_lifetime():
    from baton.replication.translation import proven_segment

    plain = [hint(0, 0), hint(101, 101), hint(202, 202)]
    assert proven_segment(plain, 150, 203, 100) == (plain[1], 202)
    assert proven_segment(plain, 202, 203, 100) == (plain[2], 202)  # the last copied record
    assert proven_segment(plain, 203, 203, 100) == (plain[2], 202)  # consumed it: the mirror's end
    assert proven_segment(plain, 230, 230, 100) == (plain[2], 229)  # a tail shorter than lag max
    assert proven_segment(plain, 240, 230, 100) == (plain[2], 229)  # past it: resumes at the end
    assert proven_segment(plain, 250, 400, 100) is None  # a tail that long would have had a sync
    skipped = [hint(0, 0), hint(103, 101)]  # a marker or aborted records upstream
    assert proven_segment(skipped, 50, 102, 100) is None
    # a later lifetime replayed from 50: the older pair no longer holds the newest copy
    replayed = [hint(0, 0), hint(101, 101), hint(50, 150)]
    assert proven_segment(replayed, 70, 151, 100) is None  # 70..149 are only in the older copies
    assert proven_segment([hint(0, 0), hint(101, 101), hint(120, 150)], 130, 160, 100) is None
    assert proven_segment([hint(0, 0)], 5, 10, 100) is None  # one sync (compacted) proves nothing
    # a replay long before: the old lifetime reached owner offset 149 at most, the group is past it
    long_ago = [hint(0, 0), hint(101, 101), hint(120, 150), hint(221, 251), hint(322, 352)]
    assert proven_segment(long_ago, 300, 353, 100) == (long_ago[3], 352)
    assert proven_segment([hint(10, 10), hint(20, 20)], 5, 21, 100) is None


def partition(owner_start=0, mirror_start=0, mirror_end=100):
    from baton.replication.lag import PartitionLag

    return PartitionLag("t", "east.t", 0, owner_start, 100, mirror_start, mirror_end, 99, 0, None,
                        "offset-sync")


def test_a_translation_verified_before_the_fence_is_carried_only_while_still_true():
    from baton.replication.translation import CARRIED_NOTE, still_verified

    prior = entry(translated_offset=13, status="ok", verified_from_sync=(5, 8))
    syncs = [hint(0, 3), hint(5, 8), hint(60, 63)]  # a newer sync above the offset: normal copying
    carried = entry()
    assert still_verified(carried, prior, partition(), syncs)
    assert (carried.translated_offset, carried.verified_from_sync) == (13, (5, 8))
    assert carried.note.startswith(CARRIED_NOTE)
    refused = [
        (entry(), prior, partition(mirror_end=120), syncs + [hint(7, 101)]),  # copied again since
        (entry(), prior, partition(), [hint(0, 3)]),  # the sync it was verified from is gone
        (Translation("g", "t", "east.t", 0, 11, None, "exact"), prior, partition(), syncs),  # group moved
        (entry(), prior, partition(owner_start=11), syncs),  # retention on the owner
        (entry(), prior, partition(mirror_start=14, mirror_end=120), syncs),  # retention on the mirror
        (entry(), entry(translated_offset=13, status="ok"), partition(), syncs),  # found by search
        (entry(), None, partition(), syncs),  # not translated before the fence
    ]
    for fresh, before, part, hints in refused:
        assert not still_verified(fresh, before, part, hints)
        assert fresh.status == "pending" and fresh.translated_offset is None
