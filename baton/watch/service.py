"""The watch service: every interval, per domain, sample -> readiness -> store -> metrics -> alerts.

It keeps working through a broker or database hiccup: a failed measurement is a sample with
its error; a sample the database refuses is kept (bounded) and written when it answers again;
both are logged. Several watches on one database are safe: a flow's sample slot is stored once.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from confluent_kafka import KafkaException
from sqlalchemy.exc import SQLAlchemyError

from baton.audit import AuditStore
from baton.audit.models import WatchSample
from baton.errors import BatonError, RegionUnreachable
from baton.kafka.admin import check_reachable
from baton.settings import Topology
from baton.watch.alerts import Alerts, StoredAlerts, slack_poster
from baton.watch.metrics import WatchMetrics
from baton.watch.readiness import Readiness, assess
from baton.watch.sampler import Sample, Sampler
from baton.watch.store import SampleStore, insert_ignoring_duplicates, row_of

log = logging.getLogger("baton.watch")

PENDING_MAX = 2000  # samples kept while the database is away (~2.8 h at 5 s)
PRUNE_EVERY_SECONDS = 300.0


def _reach(topology: Topology, region: str):
    try:
        return check_reachable(region, topology.regions[region],
                               timeout=max(2.0, topology.watch.interval_seconds))
    except RegionUnreachable:
        return None


def readiness_of(sampler: Sampler, sample: Sample) -> Readiness:
    """The readiness checks for a sample, reusing the sampler's clients where it has them."""
    scope, topology = sampler.current_scope, sampler.topology
    owner_admin = scope.owner_admin if scope else _reach(topology, sample.owner)
    secondary_admin = scope.secondary_admin if scope else _reach(topology, sample.secondary)
    return assess(topology, sample, engine=sampler.engine, owner_admin=owner_admin,
                  secondary_admin=secondary_admin)


def check_now(topology: Topology) -> tuple[Sample, Readiness]:
    """One sample and its readiness (`baton ready`); stores nothing."""
    sampler = Sampler(topology)
    sample = sampler.sample()
    return sample, readiness_of(sampler, sample)


@dataclass
class DomainWatch:
    topology: Topology
    sampler: Sampler
    alerts: Alerts | None
    pending: list[WatchSample] = field(default_factory=list)
    store: SampleStore | None = None
    pruned_at: float = 0.0
    last: tuple[Sample, Readiness | None] | None = None


class Watch:
    def __init__(self, topologies: list[Topology], *, metrics: WatchMetrics | None = None,
                 alerts: bool = True):
        self.metrics = metrics
        self.domains = []
        for topology in topologies:
            post = slack_poster(topology) if alerts else None
            self.domains.append(DomainWatch(
                topology, Sampler(topology),
                Alerts(post, lag_samples=topology.watch.alert_after_samples,
                       stored=StoredAlerts(lambda t=topology: AuditStore.for_topology(t))) if post else None))
        self.interval = min(t.watch.interval_seconds for t in topologies)

    def run(self, stop: threading.Event, on_sample=None) -> None:
        """Sample every interval until `stop` is set (a slow sample shortens the next wait)."""
        while not stop.is_set():
            started = time.monotonic()
            for domain in self.domains:
                try:
                    self.run_once(domain)
                except Exception:  # noqa: BLE001 - one bad sample must not end the service
                    log.exception("%s: sample failed unexpectedly; next sample in %g s",
                                  domain.topology.domain.name, self.interval)
                    domain.sampler.drop_clients()
                    continue
                if on_sample:
                    on_sample(domain)
            stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def run_once(self, domain: DomainWatch) -> tuple[Sample, Readiness | None]:
        sample = domain.sampler.sample()
        readiness = None
        try:
            readiness = readiness_of(domain.sampler, sample)
        except (BatonError, KafkaException) as e:
            log.warning("%s: readiness not assessed: %s", sample.domain, e)
        domain.last = (sample, readiness)
        if sample.error:
            log.warning("%s %s->%s: %s", sample.domain, sample.owner, sample.secondary, sample.statement())
        else:
            beat = sample.heartbeat_age_seconds
            log.info("%s %s->%s: %s; replication %s; heartbeat %s; %s [%.2f s]", sample.domain,
                     sample.owner, sample.secondary, sample.statement(), sample.replication_state,
                     "none" if beat is None else f"{beat:.1f} s",
                     readiness.summary() if readiness else "readiness unknown", sample.duration_seconds)
        self._store(domain, sample, readiness)
        if self.metrics is not None:
            self.metrics.update(sample, readiness)
            self._last_run(domain)
        if domain.alerts is not None and readiness is not None:
            domain.alerts.observe(readiness)
        return sample, readiness

    def _store(self, domain: DomainWatch, sample: Sample, readiness: Readiness | None) -> None:
        domain.pending.append(row_of(sample, readiness))
        del domain.pending[:-PENDING_MAX]
        try:
            if domain.store is None:
                domain.store = SampleStore(AuditStore.for_topology(domain.topology))
            with domain.store.audit.transaction() as session:
                insert_ignoring_duplicates(session, domain.pending)
            if len(domain.pending) > 1:
                log.warning("%s: audit database back: wrote %d sample(s) kept while it was away",
                            sample.domain, len(domain.pending))
            domain.pending.clear()
            if time.monotonic() - domain.pruned_at > PRUNE_EVERY_SECONDS:
                settings = domain.topology.watch
                result = domain.store.prune(raw_hours=settings.raw_retention_hours,
                                            downsampled_days=settings.downsampled_retention_days)
                domain.pruned_at = time.monotonic()
                if result["raw_folded"] or result["minutes_dropped"]:
                    log.info("%s: retention: %s", sample.domain, result)
        except (BatonError, SQLAlchemyError) as e:
            if self.metrics is not None:
                self.metrics.store_errors.labels(sample.domain).inc()
            log.warning("%s: audit database unavailable, %d sample(s) kept until it answers: %s",
                        sample.domain, len(domain.pending), str(e).splitlines()[0][:300])

    def _last_run(self, domain: DomainWatch) -> None:
        if domain.store is None:
            return
        try:
            runs = domain.store.audit.runs(domain.topology.domain.name, limit=1)
            if runs:
                view = domain.store.audit.run(runs[0].id)
                self.metrics.update_last_run(domain.topology.domain.name, runs[0].runbook, view.status)
        except (BatonError, SQLAlchemyError) as e:
            log.debug("last run not read: %s", e)
