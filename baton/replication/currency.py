"""Currency: does the secondary hold every record the owner has, partition by partition?

"Current" only when the mirror's verified last record is the owner's last record, so every
record up to the owner's end offset is present (MM2 copies in order, at least once; the
segment since the newest offset hint is checked record by record by fingerprints).
"""

from __future__ import annotations

from dataclasses import dataclass

from baton.replication.lag import LagReport, measure_lag
from baton.settings import Topology


@dataclass
class PartitionCurrency:
    topic: str
    mirror_topic: str
    partition: int
    current: bool | None  # None: could not be verified
    missing_ranges: list[tuple[int, int]]  # owner offsets [start, end) absent on the secondary
    note: str = ""


@dataclass
class CurrencyReport:
    owner: str
    secondary: str
    partitions: list[PartitionCurrency]
    lag: LagReport

    @property
    def current(self) -> bool:
        return all(p.current for p in self.partitions)

    def as_dict(self) -> dict:
        return {
            "owner": self.owner, "secondary": self.secondary, "current": self.current,
            "statement": self.lag.statement(),
            "partitions": [
                {"topic": p.topic, "mirror_topic": p.mirror_topic, "partition": p.partition,
                 "current": p.current, "missing_ranges": [list(r) for r in p.missing_ranges],
                 "note": p.note}
                for p in self.partitions
            ],
        }


def verify_currency(topology: Topology, *, lag: LagReport | None = None, **scope) -> CurrencyReport:
    """Per partition: current or not, with the owner's missing offset ranges."""
    lag = lag or measure_lag(topology, **scope)
    partitions = [
        PartitionCurrency(p.topic, p.mirror_topic, p.partition, p.current,
                          p.missing_ranges() if p.current is not None else [], p.note)
        for p in lag.partitions
    ]
    return CurrencyReport(lag.owner, lag.secondary, partitions, lag)
