"""Readiness: can the secondary safely take over right now? Named checks, each with evidence.

Every check reads the real thing: the engine's state, the brokers' offsets (through the
sample), topic configs in both regions, the ACLs on the secondary (describe_acls), the
connector config. `ready` means no check fails; a warning names something to look at.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ConfigResource,
    ResourcePatternType,
    ResourceType,
)

from baton.authority.record import State
from baton.errors import BatonError, ConfigError
from baton.kafka.admin import topic_partitions
from baton.kafka.fencing import fence_bindings
from baton.settings import Topology
from baton.watch.sampler import Sample

PASS, WARN, FAIL = "pass", "warn", "fail"
ORDER = {PASS: 0, WARN: 1, FAIL: 2}
PARITY_CONFIGS = ("cleanup.policy", "retention.ms", "max.message.bytes", "min.insync.replicas")
CHECKS = ("replication_running", "heartbeat_fresh", "lag_within_thresholds", "checkpoints_fresh",
          "offset_syncs_fresh", "topic_parity", "producers_can_write", "consumers_can_read",
          "transactions_read_committed", "lease_renewing")


@dataclass
class Check:
    name: str
    status: str  # pass | warn | fail
    evidence: str

    def as_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "evidence": self.evidence}


@dataclass
class Readiness:
    domain: str
    owner: str
    secondary: str
    taken_at: float
    checks: list[Check] = field(default_factory=list)

    @property
    def status(self) -> str:
        return max((c.status for c in self.checks), key=ORDER.get, default=PASS)

    @property
    def ready(self) -> bool:
        return self.status != FAIL

    def failing(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    def summary(self) -> str:
        """One line: the gate evidence and the alert header use it."""
        head = f"{self.secondary} {'READY' if self.ready else 'NOT READY'} to take over {self.domain}"
        bad = [f"{c.name} {c.status.upper()}: {c.evidence}" for c in self.checks if c.status != PASS]
        return head + ("; " + "; ".join(bad) if bad else f" ({len(self.checks)} checks pass)")

    def as_dict(self) -> dict:
        return {"domain": self.domain, "owner": self.owner, "secondary": self.secondary,
                "taken_at": self.taken_at, "ready": self.ready, "status": self.status,
                "summary": self.summary(), "checks": [c.as_dict() for c in self.checks]}


def _names(items: list[str], limit: int = 10) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


# -- checks from the sample alone ----------------------------------------------------------------


def check_replication(sample: Sample) -> Check:
    flow = f"{sample.owner} -> {sample.secondary}"
    if sample.replication_state == "RUNNING":
        return Check("replication_running", PASS, f"replication {flow} RUNNING")
    # With an owner ACTIVE (e.g. after an unplanned failover) this is what reprotect is for.
    hint = (f": `baton reprotect` starts it once {sample.secondary} answers"
            if sample.authority is not None and sample.authority.state == State.ACTIVE else "")
    return Check("replication_running", FAIL, f"replication {flow} is {sample.replication_state}{hint}")


def check_heartbeat(topology: Topology, sample: Sample) -> Check:
    limit = topology.watch.heartbeat_max_age_seconds
    age = sample.heartbeat_age_seconds
    if age is None:
        return Check("heartbeat_fresh", FAIL, f"no heartbeat from {sample.owner} seen on {sample.secondary}")
    status = PASS if age <= limit else FAIL
    return Check("heartbeat_fresh", status, f"newest heartbeat {age:.1f} s old (limit {limit:g} s)")


def check_lag(topology: Topology, sample: Sample) -> Check:
    thresholds = topology.thresholds
    if sample.records_at_risk is None:
        return Check("lag_within_thresholds", FAIL, sample.statement())
    over = []
    if sample.records_at_risk > thresholds.max_lag_records:
        over.append(f"{sample.records_at_risk} records > max_lag_records {thresholds.max_lag_records}")
    if (sample.seconds_at_risk or 0) > thresholds.max_lag_seconds:
        over.append(f"{sample.seconds_at_risk:.1f} s > max_lag_seconds {thresholds.max_lag_seconds:g}")
    if over:
        return Check("lag_within_thresholds", FAIL, "; ".join(over))
    status = WARN if sample.unknown_partitions else PASS
    return Check("lag_within_thresholds", status, sample.statement())


def check_checkpoints(topology: Topology, sample: Sample) -> Check:
    if not topology.domain.consumer_groups:
        return Check("checkpoints_fresh", PASS, "the domain lists no consumer groups")
    if sample.records_at_risk is None:
        return Check("checkpoints_fresh", FAIL, f"not measured: {sample.error}")
    problems, positions = [], 0
    for group in sample.checkpoints:
        positions += group.positions
        if group.missing:
            problems.append(f"{group.group}: no checkpoint for {_names(group.missing)}")
        if group.stale:
            problems.append(f"{group.group}: checkpoint behind the group's position for more than "
                            f"{topology.watch.checkpoint_max_age_seconds:g} s on {_names(group.stale)}")
    unread = [g for g in topology.domain.consumer_groups if g not in {c.group for c in sample.checkpoints}]
    if unread:
        problems.append(f"checkpoints not read for {_names(unread)}")
    if problems:
        return Check("checkpoints_fresh", FAIL, "; ".join(problems))
    return Check("checkpoints_fresh", PASS, f"{len(sample.checkpoints)} group(s), {positions} position(s) "
                                            "each with a checkpoint at or near it")


def check_offset_syncs(topology: Topology, sample: Sample) -> Check:
    if sample.records_at_risk is None:
        return Check("offset_syncs_fresh", FAIL, f"not measured: {sample.error}")
    absent = [name for name, gap in sample.offset_sync_gaps.items() if gap is None]
    limit = topology.replication.offset_lag_max
    behind = [f"{name} ({gap} records)" for name, gap in sample.offset_sync_gaps.items()
              if gap is not None and gap > limit]
    if absent:
        return Check("offset_syncs_fresh", FAIL, f"no offset sync for {_names(absent)}")
    if behind:
        return Check("offset_syncs_fresh", WARN, f"newest offset sync more than offset_lag_max {limit} "
                                                 f"records behind the mirror: {_names(behind)}")
    return Check("offset_syncs_fresh", PASS,
                 f"{len(sample.offset_sync_gaps)} replicated partition(s) with an offset sync within "
                 f"{limit} records")


def check_lease(sample: Sample) -> Check:
    authority = sample.authority
    if authority is None:
        return Check("lease_renewing", FAIL, "no authority record for the domain (or the audit database "
                                             "did not answer): run `baton authority init` and the keeper")
    if authority.state == State.FENCED:
        return Check("lease_renewing", WARN, f"{authority.describe()}: a hand-over is in progress")
    left = authority.lease_left()
    status = PASS if left > 0 else FAIL
    hint = "" if left > 0 else ": is the lease keeper (`baton authority keep`) running?"
    return Check("lease_renewing", status, authority.describe() + hint)


# -- checks that read the brokers and the engine -----------------------------------------------


def _topic_configs(admin: AdminClient, topics: list[str], timeout: float) -> dict[str, dict[str, str]]:
    if not topics:
        return {}
    resources = [ConfigResource(ResourceType.TOPIC, t) for t in topics]
    configs = {}
    for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
        entries = future.result()
        configs[resource.name] = {k: entries[k].value for k in PARITY_CONFIGS if k in entries}
    return configs


def check_parity(topology: Topology, sample: Sample, owner_admin: AdminClient | None,
                 secondary_admin: AdminClient, mirrors: dict[str, str], timeout: float) -> Check:
    if owner_admin is None:
        return Check("topic_parity", WARN, f"owner {sample.owner} unreachable: parity not checked")
    topics = list(mirrors)
    try:
        counts = topic_partitions(owner_admin, topics, timeout)
        mirror_counts = topic_partitions(secondary_admin, list(mirrors.values()), timeout)
        configs = _topic_configs(owner_admin, [t for t in topics if counts[t] is not None], timeout)
        mirror_configs = _topic_configs(
            secondary_admin, [m for m in mirrors.values() if mirror_counts[m] is not None], timeout)
    except KafkaException as e:
        return Check("topic_parity", FAIL, f"topic configs not read: {e.args[0]}")
    differences = []
    for topic, mirror in mirrors.items():
        if mirror_counts[mirror] is None:
            differences.append(f"{mirror} (mirror of {topic}) does not exist on {sample.secondary}")
            continue
        if counts[topic] != mirror_counts[mirror]:
            differences.append(f"partitions: {topic} {counts[topic]} vs {mirror} {mirror_counts[mirror]}")
        for key in PARITY_CONFIGS:
            here, there = configs.get(topic, {}).get(key), mirror_configs.get(mirror, {}).get(key)
            if here != there:
                differences.append(f"{key}: {topic} {here} vs {mirror} {there}")
    if differences:
        return Check("topic_parity", FAIL, "; ".join(differences))
    return Check("topic_parity", PASS, f"{len(mirrors)} topic(s): partitions and "
                                       f"{', '.join(PARITY_CONFIGS)} equal on the mirror")


def acl_key(binding) -> tuple:
    return (binding.restype, binding.name, binding.resource_pattern_type, binding.principal,
            binding.host, binding.operation, binding.permission_type)


def principal_acls(admin: AdminClient, principal: str, timeout: float) -> list:
    query = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, principal, None,
                             AclOperation.ANY, AclPermissionType.ANY)
    return list(admin.describe_acls(query, request_timeout=timeout).result())


def allows(bindings: list, restype: ResourceType, name: str, operation: AclOperation,
           ignore: frozenset = frozenset()) -> bool:
    """Kafka's rule for one principal: some ALLOW matches and no DENY does (ignoring `ignore`)."""
    def matches(b) -> bool:
        if b.restype != restype or b.operation not in (operation, AclOperation.ALL):
            return False
        if b.resource_pattern_type == ResourcePatternType.PREFIXED:
            return name.startswith(b.name)
        return b.name in (name, "*")

    relevant = [b for b in bindings if matches(b) and acl_key(b) not in ignore]
    if any(b.permission_type == AclPermissionType.DENY for b in relevant):
        return False
    return any(b.permission_type == AclPermissionType.ALLOW for b in relevant)


def check_producers(topology: Topology, sample: Sample, admin: AdminClient, timeout: float) -> Check:
    region = sample.secondary
    try:
        # "Once unfenced": Baton's own fence bindings are what unfence removes; they do not count.
        fenced = frozenset(acl_key(b) for b in fence_bindings(topology, region))
    except ConfigError as e:
        return Check("producers_can_write", FAIL, str(e))
    refused = []
    try:
        for principal in topology.regions[region].producer_principals:
            bindings = principal_acls(admin, principal, timeout)
            refused += [f"{principal} WRITE {topic}" for topic in topology.domain.topics
                        if not allows(bindings, ResourceType.TOPIC, topic, AclOperation.WRITE, fenced)]
    except KafkaException as e:
        return Check("producers_can_write", FAIL, f"ACLs on {region} not read: {e.args[0]}")
    if refused:
        return Check("producers_can_write", FAIL, f"the ACLs on {region} refuse {_names(refused)}")
    return Check("producers_can_write", PASS,
                 f"{', '.join(topology.regions[region].producer_principals)} may write "
                 f"{', '.join(topology.domain.topics)} on {region} once unfenced (ACLs read back)")


def check_consumers(topology: Topology, sample: Sample, admin: AdminClient, mirrors: dict[str, str],
                    timeout: float) -> Check:
    region = sample.secondary
    credentials = topology.regions[region].consumer
    if credentials is None:
        return Check("consumers_can_read", WARN, f"regions.{region}.consumer is not configured: "
                                                 "no consumer principal to check")
    principal = f"User:{credentials.username}"
    needed = [(ResourceType.TOPIC, name) for name in [*mirrors.values(), *topology.domain.topics]]
    needed += [(ResourceType.GROUP, group) for group in topology.domain.consumer_groups]
    try:
        bindings = principal_acls(admin, principal, timeout)
    except KafkaException as e:
        return Check("consumers_can_read", FAIL, f"ACLs on {region} not read: {e.args[0]}")
    refused = [f"READ {restype.name.lower()} {name}" for restype, name in needed
               if not allows(bindings, restype, name, AclOperation.READ)]
    if refused:
        return Check("consumers_can_read", FAIL, f"the ACLs on {region} refuse {principal} {_names(refused)}")
    return Check("consumers_can_read", PASS, f"{principal} may read {len(mirrors)} mirror(s) and commit "
                                             f"{len(topology.domain.consumer_groups)} group(s) on {region}")


def isolation_level(engine, owner: str, secondary: str) -> str | None:
    """The replication consumer's isolation level (MM2: the source connector's config)."""
    connect = getattr(engine, "connect", None)
    if connect is None:
        return None
    config = connect.config(engine.connector_names(owner, secondary)[0]) or {}
    return (config.get("consumer.isolation.level") or config.get("source.consumer.isolation.level")
            or "read_uncommitted")


def check_transactions(topology: Topology, sample: Sample, engine) -> Check:
    """Declared transactional topics (watch.transactional_topics) and those the watch saw written
    in transactions must be mirrored read_committed."""
    seen = {t: why for t, why in sample.transactions_seen.items() if t in topology.domain.topics}
    transactional = sorted(set(topology.watch.transactional_topics) & set(topology.domain.topics) | set(seen))
    try:
        level = isolation_level(engine, sample.owner, sample.secondary)
    except BatonError as e:
        return Check("transactions_read_committed", FAIL if transactional else WARN,
                     f"connector config not read: {e}")
    if level is None:
        return Check("transactions_read_committed", WARN, f"engine {engine.name} does not expose its "
                                                          "isolation level")
    if not transactional:
        return Check("transactions_read_committed", PASS,
                     "no transactional topics declared (watch.transactional_topics); "
                     f"replication reads {level}")
    status = PASS if level == "read_committed" else FAIL
    detected = "; ".join(f"{t}: {why}" for t, why in sorted(seen.items()))
    return Check("transactions_read_committed", status,
                 f"{_names(transactional)} transactional"
                 + (f" (seen by the watch: {detected})" if detected else "")
                 + f"; replication consumer reads {level}"
                 + ("" if status == PASS else ": aborted records would be mirrored "
                    "(set consumer.isolation.level=read_committed on the source connector)"))


def assess(topology: Topology, sample: Sample, *, engine, owner_admin: AdminClient | None,
           secondary_admin: AdminClient | None) -> Readiness:
    """Every readiness check for the flow the sample measured."""
    readiness = Readiness(sample.domain, sample.owner, sample.secondary, sample.taken_at)
    checks = readiness.checks
    checks += [check_replication(sample), check_heartbeat(topology, sample), check_lag(topology, sample),
               check_checkpoints(topology, sample), check_offset_syncs(topology, sample)]
    timeout = topology.regions[sample.secondary].request_timeout_seconds
    mirrors = {t: engine.remote_topic(t, sample.owner) for t in topology.domain.topics}
    if secondary_admin is None:
        unreachable = f"secondary {sample.secondary} unreachable"
        checks += [Check(name, FAIL, unreachable) for name in
                   ("topic_parity", "producers_can_write", "consumers_can_read")]
    else:
        checks += [check_parity(topology, sample, owner_admin, secondary_admin, mirrors, timeout),
                   check_producers(topology, sample, secondary_admin, timeout),
                   check_consumers(topology, sample, secondary_admin, mirrors, timeout)]
    checks += [check_transactions(topology, sample, engine), check_lease(sample)]
    return readiness
