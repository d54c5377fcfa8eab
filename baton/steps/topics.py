"""Which topic on one region holds the same records as a topic on the other.

Under MM2's default policy a region holds the domain's native topic (`orders.events`,
written while it owns the domain) and the mirror of the other region's native topic
(`west.orders.events` on east). Handing authority from region A to region B maps:
- A's native topic  -> its mirror on B (`orders.events` on east -> `east.orders.events` on west);
- A's mirror of B   -> B's native topic, its upstream (`west.orders.events` on east ->
  `orders.events` on west), which matters from the second hand-over (failback) on.
Under the identity policy both are the same name.
"""

from __future__ import annotations

from confluent_kafka.admin import AdminClient

from baton.kafka.admin import admin_client, topic_partitions
from baton.settings import Topology


def stream_pairs(topology: Topology, source: str, target: str,
                 admin: AdminClient | None = None) -> dict[str, str]:
    """{topic on source: topic with the same records on target}, for topics that exist on source
    (`admin`: a client of source)."""
    replication = topology.replication
    names = [name for topic in topology.domain.topics
             for name in (topic, replication.remote_topic(topic, target))]
    counts = topic_partitions(admin if admin is not None else admin_client(topology.regions[source]), names)
    existing = {name for name, count in counts.items() if count is not None}
    pairs: dict[str, str] = {}
    for topic in topology.domain.topics:
        if topic in existing:
            pairs[topic] = replication.remote_topic(topic, source)
        mirror_of_target = replication.remote_topic(topic, target)
        if mirror_of_target != topic and mirror_of_target in existing:
            pairs[mirror_of_target] = topic
    return pairs
