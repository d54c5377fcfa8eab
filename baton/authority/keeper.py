"""The lease keeper: renews the owner's lease while the owner region answers.

It never moves authority. If the owner cannot be reached it stops renewing, so the lease
lapses and guarded clients everywhere stop writing: an isolated owner fences itself.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from confluent_kafka import KafkaException
from sqlalchemy.exc import SQLAlchemyError

from baton.authority.control import ControlPublisher
from baton.authority.record import Authority, State
from baton.authority.store import AuthorityStore
from baton.errors import BatonError, RegionUnreachable, StaleEpoch
from baton.kafka.admin import check_reachable
from baton.settings import Topology

log = logging.getLogger("baton.keeper")


@dataclass
class Tick:
    authority: Authority
    action: str  # renewed | not_renewed | published
    published: dict[str, str | None]
    detail: str = ""


class LeaseKeeper:
    def __init__(self, topology: Topology, store: AuthorityStore, *, interval: float | None = None,
                 changed_by: str = "baton-keeper"):
        self.topology = topology
        self.store = store
        self.ttl = topology.thresholds.lease_ttl_seconds
        # Three renewals per lease: one lost renewal does not let a healthy owner's lease lapse.
        self.interval = interval if interval is not None else self.ttl / 3
        self.changed_by = changed_by
        self.publisher = ControlPublisher(topology, timeout=max(1.0, min(5.0, self.interval)))

    def tick(self) -> Tick:
        """Renew once (initializing the domain if it has no authority yet) and publish."""
        domain = self.topology.domain.name
        authority = self.store.current(domain) or self.store.initialize(
            domain, self.topology.domain.initial_owner, lease_ttl=self.ttl, changed_by=self.changed_by)
        if authority.state != State.ACTIVE:
            return Tick(authority, "published", self.publisher.publish(authority), "FENCED: no lease")
        try:
            check_reachable(authority.owner, self.topology.regions[authority.owner],
                            timeout=max(1.0, self.interval))
        except RegionUnreachable as e:
            return Tick(authority, "not_renewed", {}, f"owner unreachable, lease left to lapse: {e}")
        try:
            authority = self.store.renew(domain, authority.epoch, authority.owner, self.ttl)
        except StaleEpoch as e:  # authority moved between our read and the renewal: next tick
            return Tick(authority, "not_renewed", {}, str(e))
        return Tick(authority, "renewed", self.publisher.publish(authority))

    def run(self, stop: threading.Event, on_tick=None) -> None:
        """Tick every `interval` seconds until `stop` is set."""
        while not stop.is_set():
            try:
                tick = self.tick()
            except (BatonError, SQLAlchemyError, KafkaException) as e:
                # A service keeps running through a database or broker hiccup; the next tick retries.
                log.warning("lease keeper tick failed: %s", e)
            else:
                if on_tick:
                    on_tick(tick)
            stop.wait(self.interval)

    def close(self) -> None:
        self.publisher.close()
