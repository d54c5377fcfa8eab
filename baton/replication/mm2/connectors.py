"""MirrorMaker 2 connector configurations for one domain's flow (source region -> target region).

Each domain has its own three connectors per direction (names carry the domain), filtered to
the domain's topics and groups. MM2's shared bookkeeping stays shared and is read filtered:
`heartbeats` (every source connector carries it), `<source>.checkpoints.internal` (keyed by
group) and `mm2-offset-syncs.<alias>.internal` (keyed by topic partition).

Every connector's producer is overridden to point at the cluster it must write to,
so the flows work whichever cluster the Connect worker itself uses:
- source and checkpoint connectors write to the target region;
- the heartbeat connector writes into the *source* region's `heartbeats` topic, which
  the source connector then carries to the target (`east.heartbeats` on west). The age
  of the newest replicated heartbeat is therefore an end-to-end liveness signal.
"""

from __future__ import annotations

import re

from baton.settings import RegionSettings, Topology

MIRROR = "org.apache.kafka.connect.mirror."
POLICIES = {
    "default": MIRROR + "DefaultReplicationPolicy",
    "identity": MIRROR + "IdentityReplicationPolicy",
}
KINDS = ("source", "checkpoint", "heartbeat")


def _jaas(mechanism: str, username: str, password: str) -> str:
    module = (
        "org.apache.kafka.common.security.plain.PlainLoginModule"
        if mechanism == "PLAIN"
        else "org.apache.kafka.common.security.scram.ScramLoginModule"
    )
    return f'{module} required username="{username}" password="{password}";'


def client_settings(region: RegionSettings, prefix: str) -> dict[str, str]:
    """Java client settings for the replicator principal in a region, under a prefix."""
    settings = {
        f"{prefix}bootstrap.servers": region.bootstrap_servers,
        f"{prefix}security.protocol": region.security_protocol,
    }
    creds = region.replicator or region.admin
    if region.security_protocol.startswith("SASL") and creds is not None:
        settings |= {
            f"{prefix}sasl.mechanism": region.sasl_mechanism,
            f"{prefix}sasl.jaas.config": _jaas(
                region.sasl_mechanism, creds.username, creds.password.get_secret_value()
            ),
        }
    return settings


def connector_name(topology: Topology, kind: str, source: str, target: str) -> str:
    template = getattr(topology.replication.connectors, kind)
    return template.format(source=source, target=target, domain=topology.domain.name)


def _exact(names: list[str], prefixes: list[str] = ()) -> str:
    return "|".join([*(re.escape(name) for name in names), *(re.escape(p) + ".*" for p in prefixes)])


def topics_filter(topology: Topology) -> str:
    """The topics the domain's connectors mirror: its topics and topic prefixes, or the override."""
    domain = topology.domain
    return topology.replication.topics_pattern or _exact(domain.topics, domain.topic_prefixes)


def groups_filter(topology: Topology) -> str:
    """The groups the domain's checkpoint connector translates (`-` matches no group name)."""
    return topology.replication.groups_pattern or _exact(topology.domain.consumer_groups or ["-"])


def connector_config(topology: Topology, kind: str, source: str, target: str) -> dict[str, str]:
    """The full config of one MM2 connector for the flow source -> target."""
    replication = topology.replication
    src, dst = topology.regions[source], topology.regions[target]
    config = {
        "connector.class": MIRROR
        + {"source": "MirrorSourceConnector", "checkpoint": "MirrorCheckpointConnector",
           "heartbeat": "MirrorHeartbeatConnector"}[kind],
        "source.cluster.alias": source,
        "target.cluster.alias": target,
        "replication.policy.class": POLICIES[replication.policy],
        "replication.policy.separator": replication.separator,
        "key.converter": "org.apache.kafka.connect.converters.ByteArrayConverter",
        "value.converter": "org.apache.kafka.connect.converters.ByteArrayConverter",
        "header.converter": "org.apache.kafka.connect.converters.ByteArrayConverter",
        "tasks.max": str(replication.tasks_max),
        "topics": topics_filter(topology),
        "groups": groups_filter(topology),
        # Fencing ACLs must never be copied to the other region.
        "sync.topic.acls.enabled": "false",
        "offset.lag.max": str(replication.offset_lag_max),
        "emit.checkpoints.interval.seconds": str(replication.emit_checkpoints_interval_seconds),
        "sync.group.offsets.enabled": str(replication.sync_group_offsets).lower(),
    }
    config |= client_settings(src, "source.cluster.")
    config |= client_settings(dst, "target.cluster.")
    if kind == "source":
        # Aborted records must never reach the mirror: a read_committed consumer after a
        # failover would process them as real data. Markers are skipped too (MM2 then writes an
        # offset sync at each gap, see OffsetSyncWriter.PartitionState).
        config["consumer.isolation.level"] = "read_committed"
    if kind == "heartbeat":
        # Emit into the source region so the heartbeat travels the flow (module docstring).
        config |= client_settings(src, "target.cluster.")
        config |= client_settings(src, "producer.override.")
    else:
        config |= client_settings(dst, "producer.override.")
    config |= replication.extra_connector_config
    return config
