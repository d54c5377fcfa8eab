"""Hard fencing with Kafka ACLs: DENY the domain's producer principals WRITE in one region.

A DENY binding beats any ALLOW in Kafka's StandardAuthorizer, so fencing never has to touch
the ALLOW ACLs the applications run with, and unfencing removes exactly what fencing added.
Both are idempotent (creating an existing binding, or deleting a missing one, is a no-op) and
both read the ACLs back before they report success.

What the brokers check (Kafka >= 3.0, KafkaApis): a produce request needs WRITE on every topic
it writes, whether plain, idempotent or transactional; transactional records also need WRITE on
their transactional id, as do InitProducerId, AddOffsetsToTxn, TxnOffsetCommit and EndTxn of a
transactional producer. An idempotent producer needs no cluster permission since KIP-679 (its
InitProducerId is allowed by WRITE on any topic), so a cluster-wide DENY IDEMPOTENT_WRITE stops
nothing the topic deny does not, and would reach the principal's writes outside the domain.
The fence therefore names only the domain: WRITE on each of its topics (LITERAL) and topic
prefixes (PREFIXED), which refuses every produce request to them, and WRITE on its
transactional-id prefixes (PREFIXED), so a transaction opened before the fence can neither
commit (no markers, no consumer offsets moved after the fence) nor a new transactional session
start. Another domain's principal is never named.
"""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from baton.errors import ConfigError, FencingError
from baton.kafka.admin import check_reachable
from baton.settings import Topology

CLUSTER = "kafka-cluster"
READ_BACK_SECONDS = 10.0


def _principals(topology: Topology, region: str) -> list[str]:
    settings = topology.regions.get(region)
    if settings is None:
        raise ConfigError(f"unknown region {region!r}; configured: {sorted(topology.regions)}")
    if not settings.producer_principals:
        raise ConfigError(
            f"regions.{region}.producer_principals is empty: fencing would deny nobody. List the "
            "domain's producer principals (e.g. User:orders-app) in the topology file."
        )
    return settings.producer_principals


def fence_bindings(topology: Topology, region: str) -> list[AclBinding]:
    """The DENY bindings that fence `region`, for each of the domain's producer principals:
    WRITE on each domain topic (LITERAL), each domain topic prefix and each transactional-id
    prefix (PREFIXED).

    Nothing outside the domain is named, so another domain's producers (other principals)
    keep writing, idempotent or transactional.
    """
    deny, write = AclPermissionType.DENY, AclOperation.WRITE
    bindings = []
    for principal in _principals(topology, region):
        for topic in topology.domain.topics:
            bindings.append(AclBinding(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL,
                                       principal, "*", write, deny))
        for prefix in topology.domain.topic_prefixes:
            bindings.append(AclBinding(ResourceType.TOPIC, prefix, ResourcePatternType.PREFIXED,
                                       principal, "*", write, deny))
        for prefix in topology.domain.fenced_transactional_id_prefixes():
            bindings.append(AclBinding(ResourceType.TRANSACTIONAL_ID, prefix,
                                       ResourcePatternType.PREFIXED, principal, "*", write, deny))
    return bindings


def legacy_bindings(topology: Topology, region: str) -> list[AclBinding]:
    """The cluster-wide DENY IDEMPOTENT_WRITE that earlier Baton versions added to a fence: no
    fence adds it any more, but unfence, recover and a new fence find and remove a leftover."""
    return [AclBinding(ResourceType.BROKER, CLUSTER, ResourcePatternType.LITERAL, principal, "*",
                       AclOperation.IDEMPOTENT_WRITE, AclPermissionType.DENY)
            for principal in _principals(topology, region)]


def _key(binding: AclBinding) -> tuple:
    return (binding.restype, binding.name, binding.resource_pattern_type, binding.principal,
            binding.host, binding.operation, binding.permission_type)


def _text(binding: AclBinding) -> str:
    prefix = "prefix " if binding.resource_pattern_type == ResourcePatternType.PREFIXED else ""
    return (f"DENY {binding.operation.name} on {binding.restype.name.lower()} {prefix}{binding.name} "
            f"for {binding.principal}")


def present_bindings(topology: Topology, region: str, admin=None) -> list[AclBinding]:
    """Which of the region's fence bindings, and leftover legacy ones, exist right now (read
    from the brokers)."""
    wanted = {_key(b): b for b in fence_bindings(topology, region) + legacy_bindings(topology, region)}
    # `is None`, not `or`: a client's truth is its queue length (len()), 0 when it is idle.
    admin = admin if admin is not None else check_reachable(region, topology.regions[region])
    found = []
    for principal in {b.principal for b in wanted.values()}:
        query = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, principal, None,
                                 AclOperation.ANY, AclPermissionType.DENY)
        try:
            found.extend(admin.describe_acls(query, request_timeout=10).result())
        except KafkaException as e:
            raise FencingError(f"reading ACLs of {principal} in {region} failed: {e}") from e
    return [wanted[_key(b)] for b in found if _key(b) in wanted]


def is_fenced(topology: Topology, region: str, admin=None) -> bool:
    """Every binding of today's fence is present in `region` (a legacy leftover alone is not a fence).
    admin: a client of `region` the caller already holds."""
    present = {_key(b) for b in present_bindings(topology, region, admin)}
    return all(_key(b) in present for b in fence_bindings(topology, region))


def _apply(topology: Topology, region: str, fencing: bool, admin=None) -> dict[str, Any]:
    bindings = fence_bindings(topology, region)
    legacy = legacy_bindings(topology, region)
    if admin is None:  # one client for change and read-back
        admin = check_reachable(region, topology.regions[region])
    before = {_key(b) for b in present_bindings(topology, region, admin)}
    # Fencing adds today's bindings; both directions remove a legacy cluster-wide leftover.
    to_create = [b for b in bindings if _key(b) not in before] if fencing else []
    to_delete = [b for b in (legacy if fencing else bindings + legacy) if _key(b) in before]
    try:
        futures = admin.create_acls(to_create, request_timeout=10) if to_create else {}
        for future in futures.values():
            future.result()
        # Exact filters (every field set): deletes only bindings a fence created.
        filters = [AclBindingFilter(b.restype, b.name, b.resource_pattern_type, b.principal, b.host,
                                    b.operation, b.permission_type) for b in to_delete]
        futures = admin.delete_acls(filters, request_timeout=10) if filters else {}
        for future in futures.values():
            future.result()
    except KafkaException as e:
        action = "fencing" if fencing else "unfencing"
        raise FencingError(f"{action} {region} failed while changing ACLs: {e}. Run it again "
                           "(it is idempotent) once the region answers.") from e
    expected = {_key(b) for b in bindings} if fencing else set()
    # A broker that has just (re)started serves ACLs from a metadata image that can trail the
    # controller by a moment: read back until it shows the change, within a bound.
    deadline = time.monotonic() + READ_BACK_SECONDS
    while (after := {_key(b) for b in present_bindings(topology, region, admin)}) != expected \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    if after != expected:
        wrong = [_text(b) for b in bindings + legacy if (_key(b) in after) != (_key(b) in expected)]
        raise FencingError(
            f"{'fence' if fencing else 'unfence'} of {region}: the read-back does not match for "
            f"{', '.join(wrong)}. Check the region's authorizer, then run it again."
        )
    changed = [b for b in bindings if (_key(b) in before) != (_key(b) in after)]
    removed_legacy = [_text(b) for b in legacy if _key(b) in before]
    evidence = {
        "region": region,
        "action": "fence" if fencing else "unfence",
        "bindings": [_text(b) for b in bindings],
        "changed": len(changed) + len(removed_legacy),
        "unchanged": len(bindings) - len(changed),
        "verified_by_read_back": True,
    }
    if removed_legacy:
        evidence["legacy_removed"] = removed_legacy
    return evidence


def _recorded(topology, region, run_id, audit, fencing: bool, admin=None) -> dict[str, Any]:
    if run_id is None:
        return _apply(topology, region, fencing, admin)
    if audit is None:
        from baton.audit import AuditStore

        audit = AuditStore.for_topology(topology)
    with audit.step(run_id, "fence_region" if fencing else "unfence_region", region=region) as step:
        step.evidence = _apply(topology, region, fencing, admin)
    return step.evidence


def fence(topology: Topology, region: str, run_id: str | None = None, *, audit=None,
          admin=None) -> dict[str, Any]:
    """Deny the domain's producer principals WRITE on the domain's topics and transactional ids
    in `region`; verified by read-back.

    With a run id the step is recorded as evidence in the audit database (and failures too).
    admin: a client of `region` the caller already holds (one fewer connection in a fence).
    """
    return _recorded(topology, region, run_id, audit, fencing=True, admin=admin)


def unfence(topology: Topology, region: str, run_id: str | None = None, *, audit=None) -> dict[str, Any]:
    """Remove exactly the bindings `fence` adds in `region` (and a legacy cluster-wide leftover);
    verified by read-back."""
    return _recorded(topology, region, run_id, audit, fencing=False)
