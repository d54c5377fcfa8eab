"""Ground truth by scanning: every copy of a drill's records in a region's topics.

Reads the domain's topics, their mirrors and the divergent-tail quarantine topics directly,
independent of lag measurement and offset translation.
"""

from __future__ import annotations

from baton.kafka.admin import admin_client, client_config
from baton.kafka.copying import ORIGIN_HEADER, read_records
from baton.kafka.reading import watermarks
from baton.settings import Topology
from baton.workload.records import StoredCopy, decode

Offsets = dict[str, dict[str, int]]  # region -> "topic[partition]" -> offset


def related_topics(topology: Topology, existing: set[str]) -> list[str]:
    """The domain's topics, their mirrors, and `<topic>.divergent` (and mirrors) that exist."""
    names = set()
    for topic in topology.domain.topics:
        for base in (topic, f"{topic}.divergent"):
            names.add(base)
            names.update(topology.replication.remote_topic(base, region) for region in topology.regions)
    return sorted(names & existing)


def end_offsets(topology: Topology, region: str) -> dict[str, int]:
    """End offsets of every related topic partition in a region (where a drill starts reading)."""
    admin = admin_client(topology.regions[region])
    metadata = admin.list_topics(timeout=10).topics
    partitions = [(t, p) for t in related_topics(topology, set(metadata)) for p in metadata[t].partitions]
    marks = watermarks(admin, partitions, region, 10)
    return {f"{t}[{p}]": marks[(t, p)].end for t, p in partitions}


def scan(topology: Topology, region: str, producer_ids: set[str], since: dict[str, int]) -> list[StoredCopy]:
    """Every record of `producer_ids` in the region's related topics, from `since` (else the start)."""
    admin = admin_client(topology.regions[region])
    metadata = admin.list_topics(timeout=10).topics
    partitions = [(t, p) for t in related_topics(topology, set(metadata)) for p in metadata[t].partitions]
    marks = watermarks(admin, partitions, region, 10)
    ranges = {}
    for (topic, partition), mark in marks.items():
        start = max(mark.start, since.get(f"{topic}[{partition}]", 0))
        if mark.end > start:
            ranges[(topic, partition)] = [(start, mark.end)]
    copies = []
    for record in read_records(client_config(topology.regions[region]), ranges, region, timeout=120):
        data = decode(record.value)
        if data is None or data["producer"] not in producer_ids:
            continue
        origin = dict(record.headers).get(ORIGIN_HEADER)
        copies.append(StoredCopy(data["producer"], data["key"], int(data["seq"]), region, record.topic,
                                 record.partition, record.offset, origin.decode() if origin else None))
    return copies
