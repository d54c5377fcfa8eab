"""MM2 internal-record decoders on hand-made bytes (real MM2 records: tests/integration)."""

import struct

import pytest

from baton.replication.mm2.records import (
    Checkpoint,
    Heartbeat,
    MalformedRecord,
    OffsetSync,
    Where,
    decode_checkpoint,
    decode_heartbeat,
    decode_offset_sync,
    encode_checkpoint,
    encode_heartbeat,
    encode_offset_sync,
)


def test_checkpoint_bytes_follow_kafkas_struct_layout():
    key, value = encode_checkpoint(Checkpoint("orders-billing", "east.orders.events", 3, 120, 117, ""))
    assert key == b"\x00\x0eorders-billing\x00\x12east.orders.events\x00\x00\x00\x03"
    assert value == struct.pack(">hqq", 0, 120, 117) + b"\x00\x00"
    decoded = decode_checkpoint(key, value)
    assert (decoded.group, decoded.topic, decoded.partition) == ("orders-billing", "east.orders.events", 3)
    assert (decoded.upstream_offset, decoded.downstream_offset, decoded.metadata) == (120, 117, "")


def test_offset_sync_and_heartbeat_round_trip():
    sync = OffsetSync("orders.events", 5, 2**40, 7)
    assert decode_offset_sync(*encode_offset_sync(sync)) == sync
    beat = Heartbeat("east", "west", 1_795_651_936_289)
    assert encode_heartbeat(beat)[0] == b"\x00\x04east\x00\x04west"
    assert decode_heartbeat(*encode_heartbeat(beat)) == beat


@pytest.mark.parametrize("key, value, expected", [
    (b"\x00\x05ab", struct.pack(">qq", 1, 1), "claims 5 bytes"),
    (b"\x00\x02ab\x00\x00\x00\x01", struct.pack(">q", 1), "too short for field 'offset'"),
    (b"\x00\x02ab\x00\x00\x00\x01", struct.pack(">qq", 1, 1) + b"x", "trailing bytes"),
    (None, struct.pack(">qq", 1, 1), "is null"),
    (b"\x00\x02\xff\xfe\x00\x00\x00\x01", struct.pack(">qq", 1, 1), "not UTF-8"),
])
def test_malformed_offset_sync_names_topic_partition_offset(key, value, expected):
    where = Where("mm2-offset-syncs.west.internal", 0, 42)
    with pytest.raises(MalformedRecord) as caught:
        decode_offset_sync(key, value, where)
    assert "mm2-offset-syncs.west.internal partition 0 offset 42" in str(caught.value)
    assert expected in str(caught.value)


def test_unknown_checkpoint_version_is_rejected_not_misread():
    key, value = encode_checkpoint(Checkpoint("g", "t", 0, 1, 1, ""))
    with pytest.raises(MalformedRecord, match="version 3"):
        decode_checkpoint(key, struct.pack(">h", 3) + value[2:], Where("east.checkpoints.internal", 0, 9))


def test_a_kept_sync_log_extends_without_changing_what_earlier_readers_hold():
    from baton.replication.mm2.internal import Decoded, SyncLog
    from baton.replication.mm2.records import OffsetSync

    def sync(topic, partition, upstream):
        return OffsetSync(topic, partition, upstream, upstream + 1), 0

    first = Decoded("syncs", [sync("a", 0, 0), sync("b", 0, 0), sync("a", 0, 5)], ["bad at 3"],
                    read_to={0: 3}, low={0: 0}, start={0: 0})
    kept = SyncLog.of(first)
    assert [s.upstream_offset for s in kept.index[("a", 0)]] == [0, 5] and kept.count == 3
    newer = Decoded("syncs", [sync("a", 0, 9), sync("a", 1, 2)], [], read_to={0: 5}, low={0: 0},
                    start={0: 3})
    grown = kept.extended(newer)
    assert [s.upstream_offset for s in grown.index[("a", 0)]] == [0, 5, 9]
    assert [s.upstream_offset for s in grown.index[("a", 1)]] == [2]
    assert grown.count == 5 and grown.read_to == {0: 5} and grown.start == {0: 0}
    assert grown.problems == ["bad at 3"]
    # The earlier log is untouched: a reader that holds it sees what it read.
    assert [s.upstream_offset for s in kept.index[("a", 0)]] == [0, 5] and ("a", 1) not in kept.index
