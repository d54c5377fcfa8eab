"""A record's fingerprint: a stable digest of what a replicator copies.

Digest (BLAKE2b, 16 bytes) over, each length-prefixed so no two field layouts collide:
key (null distinct from empty), value (likewise), headers in order minus the ones the
replication engine adds, the timestamp and the timestamp type.

Limits, on purpose:
- Records with the same key, value, headers and timestamp have the same fingerprint.
  Callers match *runs* of consecutive records, never a single fingerprint.
- MM2 copies the timestamp value but the mirror topic is CreateTime: a LogAppendTime
  topic's mirror records carry the owner's append time as CreateTime. Cross-region
  matching therefore uses `timestamps="value"` (type ignored) for such topics, and
  `timestamps="ignore"` if the mirror itself is LogAppendTime (the broker rewrote it).
- Offsets, partition and topic name are not part of it: they differ between regions.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from typing import Literal

TimestampMode = Literal["typed", "value", "ignore"]

CREATE_TIME, LOG_APPEND_TIME = 1, 2


def _field(digest, data: bytes | None) -> None:
    if data is None:
        digest.update(b"\xff\xff\xff\xff")
    else:
        digest.update(struct.pack(">I", len(data)))
        digest.update(data)


def fingerprint(
    key: bytes | None,
    value: bytes | None,
    headers: Iterable[tuple[str, bytes | None]] | None,
    timestamp_ms: int,
    timestamp_type: int,
    *,
    timestamps: TimestampMode = "typed",
    exclude_headers: frozenset[str] = frozenset(),
) -> bytes:
    """The 16-byte digest of one record (see the module docstring for what it covers)."""
    digest = hashlib.blake2b(digest_size=16)
    _field(digest, key)
    _field(digest, value)
    kept = [(name, data) for name, data in (headers or ()) if name not in exclude_headers]
    digest.update(struct.pack(">I", len(kept)))
    for name, data in kept:
        _field(digest, name.encode())
        _field(digest, data)
    if timestamps == "typed":
        digest.update(struct.pack(">qb", timestamp_ms, timestamp_type))
    elif timestamps == "value":
        digest.update(struct.pack(">q", timestamp_ms))
    return digest.digest()


def message_fingerprint(message, *, timestamps: TimestampMode = "typed",
                        exclude_headers: frozenset[str] = frozenset()) -> bytes:
    """Fingerprint of a confluent_kafka Message."""
    timestamp_type, timestamp_ms = message.timestamp()
    return fingerprint(message.key(), message.value(), message.headers(), timestamp_ms,
                       timestamp_type, timestamps=timestamps, exclude_headers=exclude_headers)
