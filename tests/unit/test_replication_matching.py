"""Fingerprints and run matching on plain sequences: identical payloads, replayed duplicates."""

from baton.kafka.fingerprint import CREATE_TIME, LOG_APPEND_TIME, fingerprint
from baton.kafka.reading import Rec
from baton.replication.matching import match_run


def recs(values, start=0):
    return [Rec(start + i, fingerprint(None, v.encode(), None, 1000, CREATE_TIME), 1000, CREATE_TIME)
            for i, v in enumerate(values)]


def test_fingerprint_covers_key_value_headers_timestamp_and_type():
    base = fingerprint(b"k", b"v", [("h", b"1")], 5, CREATE_TIME)
    assert base == fingerprint(b"k", b"v", [("h", b"1")], 5, CREATE_TIME)
    others = [
        fingerprint(None, b"v", [("h", b"1")], 5, CREATE_TIME),
        fingerprint(b"", b"v", [("h", b"1")], 5, CREATE_TIME),
        fingerprint(b"k", b"w", [("h", b"1")], 5, CREATE_TIME),
        fingerprint(b"k", b"v", [("h", b"2")], 5, CREATE_TIME),
        fingerprint(b"k", b"v", [("h", b"1")], 6, CREATE_TIME),
        fingerprint(b"k", b"v", [("h", b"1")], 5, LOG_APPEND_TIME),
        fingerprint(b"kv", b"", [("h", b"1")], 5, CREATE_TIME),  # no field-boundary collisions
    ]
    assert base not in others and len(set(others)) == len(others)
    # Replication-added headers and (for LogAppendTime mirrors) the type can be left out.
    assert base == fingerprint(b"k", b"v", [("h", b"1"), ("__rep", b"x")], 5, CREATE_TIME,
                               exclude_headers=frozenset({"__rep"}))
    assert fingerprint(b"k", b"v", None, 5, CREATE_TIME, timestamps="value") == \
        fingerprint(b"k", b"v", None, 5, LOG_APPEND_TIME, timestamps="value")


def test_identical_payloads_resolve_by_the_run_after_them():
    owner = recs(["a"] * 20 + ["b", "c", "d"])
    mirror = recs(["a"] * 20 + ["b", "c", "d"], start=100)
    found = match_run(owner[12:], True, mirror, True, True)
    assert (found.status, found.offset) == ("exact", 112)


def test_replayed_duplicates_resolve_to_the_newest_copy():
    owner = recs([str(i) for i in range(10)])
    # MM2 restarted after copying 0..6 and replayed from 4.
    mirror = recs([str(i) for i in range(7)] + [str(i) for i in range(4, 10)])
    found = match_run(owner[5:], True, mirror, True, True)
    assert (found.status, found.offset) == ("exact", 8)
    consumed = [r.fingerprint for r in mirror[found.offset:]]
    assert consumed == [r.fingerprint for r in owner[5:]]


def test_identical_tail_of_a_lagging_mirror_is_ambiguous_not_guessed():
    owner = recs(["x"] + ["a"] * 10)
    mirror = recs(["x"] + ["a"] * 8)  # lagging: two of the identical records are not copied yet
    found = match_run(owner[5:], True, mirror, True, False)
    assert found.status == "ambiguous" and len(found.candidates) > 1


def test_a_current_mirror_pins_the_identical_tail():
    owner = recs(["x"] + ["a"] * 10)
    found = match_run(owner[5:], True, recs(["x"] + ["a"] * 10), True, True)
    assert (found.status, found.offset) == ("exact", 5)


def test_record_absent_from_mirror_is_not_found():
    found = match_run(recs(["q", "r"]), True, recs(["a", "b"]), True, True)
    assert found.status == "not-found" and found.offset is None
