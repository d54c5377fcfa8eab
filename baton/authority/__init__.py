"""Write authority: epochs (compare-and-set in the audit DB), the per-region control topic, leases.

Runbooks call `change_authority`; the lease keeper (`baton authority keep`) renews the owner's
lease; guarded clients (baton.client) read each region's control topic and write only where a
valid lease is.
"""

from __future__ import annotations

from dataclasses import dataclass

from baton.audit import AuditStore
from baton.audit.anchor import Anchor, sign_anchor
from baton.authority.control import CONTROL_TOPIC, ControlPublisher, ControlReader, publish
from baton.authority.record import Authority, State
from baton.authority.store import AuthorityStore
from baton.errors import UsageError
from baton.settings import Topology

__all__ = [
    "CONTROL_TOPIC", "Authority", "AuthorityStore", "ChangeResult", "ControlPublisher", "ControlReader",
    "State", "authority_store", "change_authority", "initialize_authority", "publish",
]


@dataclass
class ChangeResult:
    authority: Authority
    published: dict[str, str | None]  # region -> None if acknowledged, else the error

    def as_dict(self) -> dict:
        return {"authority": self.authority.model_dump(mode="json"), "published": self.published}


def authority_store(topology: Topology, audit: AuditStore | None = None) -> AuthorityStore:
    return AuthorityStore(audit or AuditStore.for_topology(topology))


def initialize_authority(topology: Topology, *, changed_by: str | None = None,
                         store: AuthorityStore | None = None) -> ChangeResult:
    """Epoch 1 with the topology's initial owner (if the domain has no record yet), published."""
    store = store or authority_store(topology)
    authority = store.initialize(topology.domain.name, topology.domain.initial_owner,
                                 lease_ttl=topology.thresholds.lease_ttl_seconds, changed_by=changed_by)
    return ChangeResult(authority, publish(topology, authority, anchor=chain_anchor(store.audit, authority)))


def chain_anchor(audit: AuditStore, authority: Authority) -> Anchor:
    """The chain's head now, signed, to publish beside this authority record."""
    head = audit.head()
    return sign_anchor(audit.chain_key, authority.domain, authority.epoch, head.seq, head.hash)


def change_authority(topology: Topology, expected_epoch: int, new_owner: str, state: State | str, *,
                     run_id: str | None = None, changed_by: str | None = None, reason: str = "",
                     store: AuthorityStore | None = None) -> ChangeResult:
    """Compare-and-set the domain's authority in the audit DB, then publish it to every region.

    A stale `expected_epoch` raises StaleEpoch and changes nothing. Regions that cannot be
    reached are listed in `published` with their error; their guarded clients stop anyway
    when the lease they last saw lapses.
    """
    if new_owner not in topology.regions:
        raise UsageError(f"unknown region {new_owner!r}; configured: {sorted(topology.regions)}")
    store = store or authority_store(topology)
    authority = store.change(topology.domain.name, expected_epoch, new_owner, state,
                             lease_ttl=topology.thresholds.lease_ttl_seconds, run_id=run_id,
                             changed_by=changed_by, reason=reason)
    return ChangeResult(authority, publish(topology, authority, anchor=chain_anchor(store.audit, authority)))
