"""Prometheus metrics of the watch (prometheus_client), served on --metrics-port.

Names follow Prometheus conventions: the unit last (`_seconds`, `_records`), counters end in
`_total`, state as a label set to 1 (`baton_readiness_check_status{check,status}`).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from baton.watch.readiness import ORDER, Readiness
from baton.watch.sampler import Sample

FLOW = ("domain", "owner", "secondary")


class WatchMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.at_risk_records = Gauge("baton_at_risk_records", "Records on the owner not on the secondary",
                                     FLOW, registry=r)
        self.at_risk_seconds = Gauge("baton_at_risk_seconds", "Age of the oldest record not on the secondary",
                                     FLOW, registry=r)
        self.partition_records = Gauge("baton_partition_at_risk_records", "Records at risk per partition",
                                       ("domain", "topic", "partition"), registry=r)
        self.partition_seconds = Gauge("baton_partition_at_risk_seconds",
                                       "Age of the oldest record at risk per partition",
                                       ("domain", "topic", "partition"), registry=r)
        self.unknown_partitions = Gauge("baton_at_risk_unknown_partitions",
                                        "Partitions whose replicated position could not be verified",
                                        FLOW, registry=r)
        self.replication_up = Gauge("baton_replication_up", "1 when the replication flow is RUNNING",
                                    FLOW, registry=r)
        self.heartbeat_age = Gauge("baton_heartbeat_age_seconds", "Age of the newest replicated heartbeat",
                                   FLOW, registry=r)
        self.ready = Gauge("baton_ready", "1 when no readiness check fails", FLOW, registry=r)
        self.check_status = Gauge("baton_readiness_check_status", "1 for the check's current status",
                                  ("domain", "check", "status"), registry=r)
        self.epoch = Gauge("baton_authority_epoch", "Current authority epoch", ("domain",), registry=r)
        self.owner = Gauge("baton_authority_owner_info", "1 for the current owner and state",
                           ("domain", "owner", "state"), registry=r)
        self.lease = Gauge("baton_lease_remaining_seconds", "Seconds of lease left (negative: lapsed)",
                           ("domain",), registry=r)
        self.last_run = Gauge("baton_last_run_info", "1 for the domain's newest runbook run and outcome",
                              ("domain", "runbook", "status"), registry=r)
        self.samples = Counter("baton_watch_samples_total", "Watch samples taken, by outcome",
                               ("domain", "outcome"), registry=r)
        self.store_errors = Counter("baton_watch_store_errors_total",
                                    "Samples the audit database did not accept at first", ("domain",),
                                    registry=r)
        self.duration = Gauge("baton_watch_sample_duration_seconds", "Wall time of the newest sample",
                              ("domain",), registry=r)
        self.last_sample = Gauge("baton_watch_last_sample_timestamp_seconds",
                                 "Unix time of the newest sample", ("domain",), registry=r)
        self._partitions: dict[str, set[tuple[str, str]]] = {}
        self._owner_labels: dict[str, tuple[str, str]] = {}
        self._run_labels: dict[str, tuple[str, str]] = {}

    def serve(self, port: int, address: str = "127.0.0.1"):
        """Serve /metrics over HTTP in a daemon thread."""
        return start_http_server(port, addr=address, registry=self.registry)

    def update(self, sample: Sample, readiness: Readiness | None) -> None:
        domain, flow = sample.domain, (sample.domain, sample.owner, sample.secondary)
        self.samples.labels(domain, "measured" if sample.records_at_risk is not None else "error").inc()
        self.duration.labels(domain).set(sample.duration_seconds)
        self.last_sample.labels(domain).set(sample.taken_at)
        self.replication_up.labels(*flow).set(1 if sample.replication_state == "RUNNING" else 0)
        if sample.heartbeat_age_seconds is not None:
            self.heartbeat_age.labels(*flow).set(sample.heartbeat_age_seconds)
        if sample.records_at_risk is not None:
            self.at_risk_records.labels(*flow).set(sample.records_at_risk)
            self.at_risk_seconds.labels(*flow).set(sample.seconds_at_risk or 0.0)
            self.unknown_partitions.labels(*flow).set(sample.unknown_partitions)
            self._update_partitions(sample)
        if sample.authority is not None:
            authority = sample.authority
            self.epoch.labels(domain).set(authority.epoch)
            labels = (authority.owner, authority.state.value)
            previous = self._owner_labels.get(domain)
            if previous and previous != labels:
                self.owner.remove(domain, *previous)
            self.owner.labels(domain, *labels).set(1)
            self._owner_labels[domain] = labels
            if sample.lease_seconds_left is not None:
                self.lease.labels(domain).set(sample.lease_seconds_left)
        if readiness is not None:
            self.ready.labels(*flow).set(1 if readiness.ready else 0)
            for check in readiness.checks:
                for status in ORDER:
                    value = 1 if check.status == status else 0
                    self.check_status.labels(domain, check.name, status).set(value)

    def _update_partitions(self, sample: Sample) -> None:
        """Every measured partition (zeros too), so a partition that caught up reads 0, not stale."""
        seen = set()
        lag = sample.lag
        for p in lag.partitions if lag else []:
            key = (p.topic, str(p.partition))
            seen.add(key)
            self.partition_records.labels(sample.domain, *key).set(
                p.missing_records if p.missing_records is not None else float("nan"))
            self.partition_seconds.labels(sample.domain, *key).set(p.oldest_missing_age_seconds or 0.0)
        for key in self._partitions.get(sample.domain, set()) - seen:
            self.partition_records.remove(sample.domain, *key)
            self.partition_seconds.remove(sample.domain, *key)
        self._partitions[sample.domain] = seen

    def update_last_run(self, domain: str, runbook: str, status: str) -> None:
        previous = self._run_labels.get(domain)
        if previous and previous != (runbook, status):
            self.last_run.remove(domain, *previous)
        self.last_run.labels(domain, runbook, status).set(1)
        self._run_labels[domain] = (runbook, status)
