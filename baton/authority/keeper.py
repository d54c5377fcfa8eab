"""The lease keeper: renews the owner's lease while the owner region answers.

It never moves authority on its own. If the owner cannot be reached it stops renewing, so the
lease lapses and guarded clients everywhere stop writing: an isolated owner fences itself. It
also finishes recoveries to a run's last safe state that were left pending because a region did
not answer (baton/steps/recover.py), once that region answers.
"""

from __future__ import annotations

import logging
import threading
import time
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
RECOVERY_RETRY_SECONDS = 10.0  # between attempts at one run's pending recovery


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
        self._recovery_thread: threading.Thread | None = None
        self._recovery_attempts: dict[str, float] = {}

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

    def recover_pending(self) -> list:
        """Finish recoveries left pending by an unreachable region once it answers again
        (baton/steps/recover.py; each attempt is recorded as step `recover` of its run)."""
        from baton.steps.recover import can_retry, pending_recoveries, recover_run

        done = []
        for run_id, parts in pending_recoveries(self.store.audit, self.topology.domain.name).items():
            last = self._recovery_attempts.get(run_id, float("-inf"))
            if time.monotonic() - last < RECOVERY_RETRY_SECONDS or not can_retry(self.topology, parts):
                continue
            self._recovery_attempts[run_id] = time.monotonic()
            recovery = recover_run(self.topology, self.store.audit, self.store, run_id, actor=self.changed_by,
                                   why="lease keeper: the parts left pending can be retried")
            log.warning("recovery of run %s: %s", run_id, recovery.statement())
            done.append(recovery)
        return done

    def _recover_in_background(self) -> None:
        # Recovery may wait for connectors; renewals must not wait for it.
        if self._recovery_thread is not None and self._recovery_thread.is_alive():
            return

        def attempt():
            try:
                self.recover_pending()
            except (BatonError, SQLAlchemyError, KafkaException) as e:
                log.warning("retrying pending recovery failed: %s", e)

        self._recovery_thread = threading.Thread(target=attempt, name="baton-keeper-recovery", daemon=True)
        self._recovery_thread.start()

    def run(self, stop: threading.Event, on_tick=None) -> None:
        """Tick every `interval` seconds until `stop` is set; retry pending recoveries beside it."""
        while not stop.is_set():
            self._recover_in_background()
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
