"""Decoders (and encoders, for tests) of MirrorMaker 2's internal records.

They follow Kafka's own Struct schemas (org.apache.kafka.connect.mirror.Checkpoint,
OffsetSync, Heartbeat): big-endian integers, strings as an INT16 length then UTF-8.
A malformed record raises MalformedRecord naming its topic, partition and offset;
readers skip and count such records so one bad record never crashes a caller.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from baton.errors import ReplicationError


class MalformedRecord(ReplicationError):
    """An internal record that does not follow MM2's schema."""


@dataclass(frozen=True)
class Where:
    """Where a record was read from, for error messages."""

    topic: str = "?"
    partition: int = -1
    offset: int = -1

    def __str__(self) -> str:
        return f"{self.topic} partition {self.partition} offset {self.offset}"


@dataclass(frozen=True)
class Checkpoint:
    group: str
    topic: str  # the downstream (mirror) topic name
    partition: int
    upstream_offset: int
    downstream_offset: int
    metadata: str
    version: int = 0


@dataclass(frozen=True)
class OffsetSync:
    topic: str  # the upstream topic name
    partition: int
    upstream_offset: int
    downstream_offset: int


@dataclass(frozen=True)
class Heartbeat:
    source: str
    target: str
    timestamp_ms: int
    version: int = 0


class _Reader:
    def __init__(self, data: bytes | None, what: str, where: Where):
        if data is None:
            raise MalformedRecord(f"{where}: {what} is null; expected an MM2 {what}. "
                                  "Is this topic really an MM2 internal topic?")
        self.data, self.pos, self.what, self.where = data, 0, what, where

    def take(self, fmt: str, field: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise MalformedRecord(
                f"{self.where}: {self.what} is {len(self.data)} bytes, too short for field "
                f"{field!r} at byte {self.pos}; the record does not follow MM2's schema"
            )
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def string(self, field: str) -> str:
        length = self.take(">h", field + " length")
        if length < 0:
            raise MalformedRecord(f"{self.where}: {self.what} field {field!r} has negative length")
        raw = self.data[self.pos:self.pos + length]
        if len(raw) != length:
            raise MalformedRecord(
                f"{self.where}: {self.what} field {field!r} claims {length} bytes but only "
                f"{len(raw)} remain"
            )
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MalformedRecord(f"{self.where}: {self.what} field {field!r} is not UTF-8") from e

    def done(self) -> None:
        if self.pos != len(self.data):
            raise MalformedRecord(
                f"{self.where}: {self.what} has {len(self.data) - self.pos} unexpected trailing bytes"
            )


def decode_checkpoint(key: bytes | None, value: bytes | None, where: Where = Where()) -> Checkpoint:
    k = _Reader(key, "checkpoint key", where)
    group, topic, partition = k.string("group"), k.string("topic"), k.take(">i", "partition")
    k.done()
    v = _Reader(value, "checkpoint value", where)
    version = v.take(">h", "version")
    if version != 0:
        raise MalformedRecord(f"{where}: checkpoint value version {version} is not supported (0)")
    upstream, downstream = v.take(">q", "upstreamOffset"), v.take(">q", "offset")
    metadata = v.string("metadata")
    v.done()
    return Checkpoint(group, topic, partition, upstream, downstream, metadata, version)


def decode_offset_sync(key: bytes | None, value: bytes | None, where: Where = Where()) -> OffsetSync:
    k = _Reader(key, "offset sync key", where)
    topic, partition = k.string("topic"), k.take(">i", "partition")
    k.done()
    v = _Reader(value, "offset sync value", where)
    upstream, downstream = v.take(">q", "upstreamOffset"), v.take(">q", "offset")
    v.done()
    return OffsetSync(topic, partition, upstream, downstream)


def decode_heartbeat(key: bytes | None, value: bytes | None, where: Where = Where()) -> Heartbeat:
    k = _Reader(key, "heartbeat key", where)
    source, target = k.string("sourceClusterAlias"), k.string("targetClusterAlias")
    k.done()
    v = _Reader(value, "heartbeat value", where)
    version = v.take(">h", "version")
    if version != 0:
        raise MalformedRecord(f"{where}: heartbeat value version {version} is not supported (0)")
    timestamp = v.take(">q", "timestamp")
    v.done()
    return Heartbeat(source, target, timestamp, version)


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


def encode_checkpoint(c: Checkpoint) -> tuple[bytes, bytes]:
    key = _string(c.group) + _string(c.topic) + struct.pack(">i", c.partition)
    value = struct.pack(">hqq", c.version, c.upstream_offset, c.downstream_offset) + _string(c.metadata)
    return key, value


def encode_offset_sync(s: OffsetSync) -> tuple[bytes, bytes]:
    return (_string(s.topic) + struct.pack(">i", s.partition),
            struct.pack(">qq", s.upstream_offset, s.downstream_offset))


def encode_heartbeat(h: Heartbeat) -> tuple[bytes, bytes]:
    return _string(h.source) + _string(h.target), struct.pack(">hq", h.version, h.timestamp_ms)
