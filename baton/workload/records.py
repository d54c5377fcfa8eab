"""The drill's record format and the two event logs the checker reads.

Each drill record's value is JSON `{"producer", "key", "seq", "sent_at"}`: a producer id unique
to the drill run, a key, and the key's sequence number (0, 1, 2, ...). A record is identified by
(producer, key, seq) wherever it travels: mirrored, republished or quarantined copies keep it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

RecordId = tuple[str, str, int]  # (producer, key, seq)


def encode(producer: str, key: str, seq: int, sent_at: float) -> bytes:
    return json.dumps({"producer": producer, "key": key, "seq": seq, "sent_at": round(sent_at, 6)},
                      separators=(",", ":")).encode()


def decode(value: bytes | None) -> dict | None:
    """The drill fields of a record value, or None for anything that is not a drill record."""
    if not value or not value.startswith(b"{"):
        return None
    try:
        data = json.loads(value)
    except ValueError:
        return None
    if not isinstance(data, dict) or not {"producer", "key", "seq"} <= data.keys():
        return None
    return data


@dataclass(frozen=True)
class AckedWrite:
    """A record the broker acknowledged: where, under which epoch, and when (epoch seconds)."""

    producer: str
    key: str
    seq: int
    region: str  # the region whose broker acknowledged it
    epoch: int  # the epoch the guard accepted it under
    topic: str
    partition: int
    offset: int
    sent_at: float  # when the guard accepted it
    acked_at: float  # when the delivery report arrived

    @property
    def id(self) -> RecordId:
        return self.producer, self.key, self.seq

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Processed:
    """A record a consumer group processed, and where it read it."""

    group: str
    producer: str
    key: str
    seq: int
    region: str
    topic: str
    partition: int
    offset: int
    at: float

    @property
    def id(self) -> RecordId:
        return self.producer, self.key, self.seq

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class StoredCopy:
    """A copy of a drill record found by scanning a region's topics (the ground truth of what is where).

    `origin` is set for copies a divergent-tail policy made (header baton.origin), not the engine.
    """

    producer: str
    key: str
    seq: int
    region: str
    topic: str
    partition: int
    offset: int
    origin: str | None = None

    @property
    def id(self) -> RecordId:
        return self.producer, self.key, self.seq

    def as_dict(self) -> dict:
        return asdict(self)
