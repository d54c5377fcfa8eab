"""Hard fencing with Kafka ACLs: DENY the domain's producer principals WRITE in one region.

A DENY binding beats any ALLOW in Kafka's StandardAuthorizer, so fencing never has to touch
the ALLOW ACLs the applications run with, and unfencing removes exactly what fencing added.
Both are idempotent (creating an existing binding, or deleting a missing one, is a no-op) and
both read the ACLs back before they report success.
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


def fence_bindings(topology: Topology, region: str) -> list[AclBinding]:
    """The DENY bindings that fence `region`: WRITE on each domain topic for each producer
    principal, and IDEMPOTENT_WRITE on the cluster (so no new idempotent producer session starts).

    The cluster binding covers everything the principal writes in that region, which is why
    producer principals should be per domain.
    """
    settings = topology.regions.get(region)
    if settings is None:
        raise ConfigError(f"unknown region {region!r}; configured: {sorted(topology.regions)}")
    if not settings.producer_principals:
        raise ConfigError(
            f"regions.{region}.producer_principals is empty: fencing would deny nobody. List the "
            "domain's producer principals (e.g. User:orders-app) in the topology file."
        )
    deny = AclPermissionType.DENY
    bindings = []
    for principal in settings.producer_principals:
        for topic in topology.domain.topics:
            bindings.append(AclBinding(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL,
                                       principal, "*", AclOperation.WRITE, deny))
        bindings.append(AclBinding(ResourceType.BROKER, CLUSTER, ResourcePatternType.LITERAL,
                                   principal, "*", AclOperation.IDEMPOTENT_WRITE, deny))
    return bindings


def _key(binding: AclBinding) -> tuple:
    return (binding.restype, binding.name, binding.resource_pattern_type, binding.principal,
            binding.host, binding.operation, binding.permission_type)


def _text(binding: AclBinding) -> str:
    return (f"DENY {binding.operation.name} on {binding.restype.name.lower()} {binding.name} "
            f"for {binding.principal}")


def present_bindings(topology: Topology, region: str, admin=None) -> list[AclBinding]:
    """Which of the region's fence bindings exist right now (read from the brokers)."""
    wanted = {_key(b): b for b in fence_bindings(topology, region)}
    admin = admin or check_reachable(region, topology.regions[region])
    found = []
    for principal in {b.principal for b in wanted.values()}:
        query = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, principal, None,
                                 AclOperation.ANY, AclPermissionType.DENY)
        try:
            found.extend(admin.describe_acls(query, request_timeout=10).result())
        except KafkaException as e:
            raise FencingError(f"reading ACLs of {principal} in {region} failed: {e}") from e
    return [wanted[_key(b)] for b in found if _key(b) in wanted]


def is_fenced(topology: Topology, region: str) -> bool:
    return len(present_bindings(topology, region)) == len(fence_bindings(topology, region))


def _apply(topology: Topology, region: str, fencing: bool, admin=None) -> dict[str, Any]:
    bindings = fence_bindings(topology, region)
    admin = admin or check_reachable(region, topology.regions[region])  # one client for change and read-back
    before = {_key(b) for b in present_bindings(topology, region, admin)}
    try:
        if fencing:
            missing = [b for b in bindings if _key(b) not in before]
            futures = admin.create_acls(missing, request_timeout=10) if missing else {}
            for future in futures.values():
                future.result()
        else:
            # Exact filters (every field set): deletes only the bindings fencing created.
            present = [b for b in bindings if _key(b) in before]
            filters = [AclBindingFilter(b.restype, b.name, b.resource_pattern_type, b.principal, b.host,
                                        b.operation, b.permission_type) for b in present]
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
        wrong = [_text(b) for b in bindings if (_key(b) in after) != (_key(b) in expected)]
        raise FencingError(
            f"{'fence' if fencing else 'unfence'} of {region}: the read-back does not match for "
            f"{', '.join(wrong)}. Check the region's authorizer, then run it again."
        )
    changed = [b for b in bindings if (_key(b) in before) != (_key(b) in after)]
    return {
        "region": region,
        "action": "fence" if fencing else "unfence",
        "bindings": [_text(b) for b in bindings],
        "changed": len(changed),
        "unchanged": len(bindings) - len(changed),
        "verified_by_read_back": True,
    }


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
    """Deny the domain's producer principals WRITE in `region`; verified by read-back.

    With a run id the step is recorded as evidence in the audit database (and failures too).
    admin: a client of `region` the caller already holds (one fewer connection in a fence).
    """
    return _recorded(topology, region, run_id, audit, fencing=True, admin=admin)


def unfence(topology: Topology, region: str, run_id: str | None = None, *, audit=None) -> dict[str, Any]:
    """Remove exactly the bindings `fence` adds in `region`; verified by read-back."""
    return _recorded(topology, region, run_id, audit, fencing=False)
