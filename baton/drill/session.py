"""A drill's moving parts around the runbooks: lease keeper, workload, lag sampler, lab faults,
and the evidence the checker needs when it is over. No Prefect here: flows/drill.py drives it."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from confluent_kafka import KafkaException
from sqlalchemy.exc import SQLAlchemyError

from baton.audit import AuditStore
from baton.authority import State, authority_store, initialize_authority
from baton.authority.keeper import LeaseKeeper
from baton.drill.checker import Epoch
from baton.errors import BatonError, RegionUnreachable, StepFailed
from baton.kafka.admin import check_reachable
from baton.replication.lag import measure_lag, resolve_scope
from baton.settings import Topology
from baton.workload import GroupWorker, SequencedProducer, inventory

log = logging.getLogger("baton.drill")


def keeper_running(store, domain: str, ttl: float) -> bool:
    """Whether someone renews the domain's lease: it moves within one renewal interval."""
    first = store.current(domain)
    if first is None or first.state != State.ACTIVE or first.lease_left() <= 0:
        return False
    time.sleep(ttl / 3 + 0.5)
    second = store.current(domain)
    return second is not None and second.lease_expires_at != first.lease_expires_at


class DrillSession:
    """Start the workload, take notes while the runbooks run, stop it and hand over the evidence."""

    def __init__(self, topology: Topology, *, rate: float = 50.0, lag_interval: float = 2.0,
                 log: Callable[[str], None] | None = None):
        self.topology = topology
        self.rate = rate
        self.lag_interval = lag_interval
        self.producer_id = f"drill-{uuid.uuid4().hex[:8]}"
        self.audit = AuditStore.for_topology(topology)
        self.store = authority_store(topology, self.audit)
        self.say = log or log_info
        self.events: list[dict] = []
        self.lag_samples: list[dict] = []
        self.since: dict[str, dict[str, int]] = {}
        self.scans: dict[str, list] = {}
        self.keeper_started = False
        self.watch_started = False
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._keeper: LeaseKeeper | None = None
        self.producer: SequencedProducer | None = None
        self.workers: list[GroupWorker] = []
        self.started_at = time.time()

    def note(self, kind: str, detail: str) -> None:
        self.events.append({"at": time.time(), "kind": kind, "detail": detail})
        self.say(f"drill: {detail}")

    # -- start ----------------------------------------------------------------------------------

    def start(self) -> None:
        domain = self.topology.domain.name
        current = self.store.current(domain)
        if current is None:
            current = initialize_authority(self.topology, store=self.store).authority
        if current.state != State.ACTIVE:
            raise StepFailed(f"authority is {current.describe()}: an earlier hand-over did not finish; "
                             "resolve it before drilling")
        if not keeper_running(self.store, domain, self.topology.thresholds.lease_ttl_seconds):
            self._keeper = LeaseKeeper(self.topology, self.store, changed_by="baton-drill")
            self._spawn(lambda: self._keeper.run(self._stop), "drill-lease-keeper")
            self.keeper_started = True
            self.note("keeper", "no lease keeper was renewing the lease: started one in the drill")
        if not self._watched(current.owner):
            # The unplanned failover states the watch's newest sample: a drill needs one running.
            from baton.watch.service import Watch

            watch = Watch([self.topology], alerts=False)
            self._spawn(lambda: watch.run(self._stop), "drill-watch")
            self.watch_started = True
            self.note("watch", "no watch was sampling this domain: started one in the drill")
        for region in self.topology.regions:
            self.since[region] = inventory.end_offsets(self.topology, region)
        self.workers = [GroupWorker(self.topology, g, self.producer_id)
                        for g in self.topology.domain.consumer_groups]
        if not self.workers:
            raise StepFailed(f"domain {domain!r} lists no consumer groups: the drill needs at least one "
                             "to measure missing and duplicate work")
        for worker in self.workers:
            worker.start()
        self.producer = SequencedProducer(self.topology, self.producer_id, rate=self.rate)
        self.producer.start()
        self._spawn(self._sample_lag, "drill-lag-sampler")
        self.started_at = time.time()
        groups = ", ".join(w.group for w in self.workers)
        self.note("workload", f"workload {self.producer_id} started: {self.rate:g} records/s over "
                              f"{len(self.producer.slots)} keys, groups {groups}")

    def _watched(self, owner: str) -> bool:
        """Whether a watch samples the flow owner -> secondary (its newest sample is fresh)."""
        from baton.watch.store import SampleStore

        newest = SampleStore(self.audit).newest(self.topology.domain.name, owner,
                                                self.topology.other_region(owner))
        return newest is not None and newest.age_seconds <= 3 * self.topology.watch.interval_seconds

    def wait_ready(self, owner: str, timeout: float = 120, poll: float = 0.5) -> dict:
        """Until the watch judges the secondary ready for a switch: a drill on a domain whose mirror
        MirrorMaker 2 has not created yet would only measure that. Raises naming what still fails."""
        from baton.watch.store import switch_readiness

        other = self.topology.other_region(owner)
        started = time.monotonic()
        while True:
            result = switch_readiness(self.audit, self.topology, owner, other)
            if result["ready"]:
                self.note("ready", f"{other} ready to take over after {time.monotonic() - started:.1f} s")
                return result
            if time.monotonic() - started > timeout:
                raise StepFailed(f"{other} was not ready to take over {self.topology.domain.name} within "
                                 f"{timeout:.0f} s: {result['statement']}. `baton ready` shows each check.")
            time.sleep(poll)

    def _spawn(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _sample_lag(self) -> None:
        while not self._stop.wait(self.lag_interval):
            try:
                current = self.store.current(self.topology.domain.name)
                if current is None or current.state != State.ACTIVE:
                    continue
                scope = resolve_scope(self.topology, owner=current.owner, timeout=3)
                lag = measure_lag(self.topology, scope=scope)
                self.lag_samples.append({"at": time.time(), "owner": current.owner,
                                         "records": lag.records_at_risk,
                                         "seconds": round(lag.seconds_at_risk, 3)})
            except (BatonError, KafkaException, SQLAlchemyError) as e:  # a sample, not a verdict
                self.lag_samples.append({"at": time.time(), "records": None, "error": str(e)[:200]})

    def settle(self, seconds: float) -> None:
        """Let the workload run; fail early if the producer thread died."""
        time.sleep(seconds)

    # -- unplanned: the owner dies ----------------------------------------------------------------

    def kill_owner(self, lab, owner: str, tail_seconds: float = 2.0) -> dict:
        """Cut replication, let a tail build up, measure what is at risk, kill the owner (lab only).

        The producer is held only while the prediction is measured and the broker killed, so the
        prediction covers every record the owner acknowledged.
        """
        from baton.replication import engine_for

        other = self.topology.other_region(owner)
        engine = engine_for(self.topology)
        self._wait_for_checkpoints(engine, owner, other)
        engine.stop(owner, other)
        self.note("fault", f"replication {owner} -> {other} stopped (the link fails first)")
        time.sleep(tail_seconds)
        self.producer.hold()
        try:
            lag = measure_lag(self.topology, owner=owner)
            per_topic = _lag_per_topic(lag.as_dict())
            prediction = {"records": lag.records_at_risk, "seconds": round(lag.seconds_at_risk, 3),
                          "per_topic": per_topic, "statement": lag.statement(), "measured_at": time.time()}
            self.note("prediction", f"before the kill: {lag.statement()} on {owner}")
            lab.fault("kill", owner)
            self.trigger_at = time.time()
            self.note("fault", f"{owner} broker killed (SIGKILL)")
        finally:
            self.producer.release()
        return prediction

    def _wait_for_checkpoints(self, engine, owner: str, other: str, timeout: float = 90) -> None:
        """An unplanned failover translates groups from the engine's checkpoints: a group the engine
        never checkpointed cannot be moved, so the drill kills the owner only once each has one."""
        groups = {w.group for w in self.workers}
        deadline = time.monotonic() + timeout
        while True:
            reading = engine.checkpoints(owner, other)
            have = {group for group, _topic, _partition in reading.items}
            if groups <= have:
                return
            if time.monotonic() > deadline:
                raise StepFailed(f"the engine checkpointed no offsets of {sorted(groups - have)} within "
                                 f"{timeout:g}s: an unplanned failover could not translate them")
            time.sleep(1)

    def restart(self, lab, region: str) -> None:
        lab.fault("restart", region)
        check_reachable(region, self.topology.regions[region], timeout=60)
        self.note("fault", f"{region} broker restarted with its data")

    def scan(self, name: str, region: str) -> None:
        """Record what a region holds now (ground truth for lost records)."""
        self.scans[name] = inventory.scan(self.topology, region, {self.producer_id},
                                          self.since.get(region, {}))

    # -- stop -----------------------------------------------------------------------------------

    def stop(self, drain_seconds: float = 30, quiet_seconds: float = 4) -> None:
        """Stop producing, let the groups catch up (until all processed or quiet), stop everything."""
        if self.producer is not None:
            self.producer.stop()
            self.note("workload", "producer stopped; waiting for the groups to catch up")
        acked = {a.id for a in self.producer.acked} if self.producer else set()
        deadline = time.monotonic() + drain_seconds
        last_change, last_total = time.monotonic(), -1
        while time.monotonic() < deadline:
            done = all(acked <= {p.id for p in w.processed} for w in self.workers)
            total = sum(len(w.processed) for w in self.workers)
            if total != last_total:
                last_change, last_total = time.monotonic(), total
            if done or time.monotonic() - last_change > quiet_seconds:
                break
            time.sleep(0.5)
        for worker in self.workers:
            worker.stop()
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)
        if self._keeper is not None:
            self._keeper.close()
        self.ended_at = time.time()

    def epochs(self) -> list[Epoch]:
        return [Epoch(r.epoch, r.owner, r.state, _seconds(r.changed_at), r.run_id)
                for r in self.store.history(self.topology.domain.name)]


def _seconds(moment: datetime) -> float:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _lag_per_topic(lag: dict) -> dict[str, dict]:
    topics: dict[str, dict] = {}
    for p in lag.get("partitions", []):
        entry = topics.setdefault(p["topic"], {"records": 0, "seconds": 0.0})
        entry["records"] += p.get("missing_records") or 0
        entry["seconds"] = max(entry["seconds"], p.get("oldest_missing_age_seconds") or 0.0)
    return topics


def log_info(message: str) -> None:
    log.info(message)


__all__ = ["DrillSession", "RegionUnreachable", "keeper_running"]
