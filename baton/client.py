"""Guarded clients: write only where write authority is, follow it when it moves.

`GuardedProducer` wraps confluent-kafka's Producer. A background thread follows the control
topic (`baton.authority.internal`) of each region it can reach; a record is accepted only for
the region whose *own* copy says "owner = me, ACTIVE, lease valid" at the highest epoch seen
anywhere. So:
- an owner cut off from Baton stops renewing its copy; when the lease lapses, its clients
  refuse records (the isolated old owner fences itself);
- when authority moves, the new owner's copy shows the new epoch and clients write there,
  without a restart;
- during a hand-over (FENCED) no region qualifies, and records are refused.

Every record carries headers `baton-epoch` and `baton-region`: the epoch and region under
which it was accepted, so a checker can prove there was never a second writer in one epoch.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NamedTuple

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from baton.authority.control import ControlReader
from baton.authority.record import Authority, State
from baton.errors import ConfigError, WriteRefused
from baton.kafka.admin import client_config
from baton.settings import Topology

EPOCH_HEADER = "baton-epoch"
REGION_HEADER = "baton-region"


class Grant(NamedTuple):
    """Where a record was accepted, under which epoch, and until when that lease ran."""

    region: str
    epoch: int
    lease_expires_at: datetime


def choose_writable(domain: str, seen: dict[str, Authority],
                    now: datetime | None = None) -> tuple[str, Authority]:
    """The region whose own control topic says it owns the highest epoch seen anywhere, ACTIVE,
    with a valid lease; else WriteRefused naming what each region says."""
    now = now or datetime.now(UTC)
    top = max(a.epoch for a in seen.values())
    for region, authority in seen.items():
        if authority.epoch == top and authority.accepts_writes_in(region, now):
            return region, authority
    views = "; ".join(f"{region} says {a.describe(now)}" for region, a in sorted(seen.items()))
    newest = [a for a in seen.values() if a.epoch == top]
    if any(a.state == State.FENCED for a in newest):
        reason = "fenced"
    elif any(a.state == State.ACTIVE and a.lease_left(now) <= 0 for a in newest):
        reason = "lease lapsed"
    else:
        reason = "no authority"
    raise WriteRefused(f"no region holds write authority for domain {domain!r} with a valid "
                       f"lease ({views}); records are refused until one does", reason)


class AuthorityView:
    """What each region's control topic says about one domain, kept fresh by a thread."""

    def __init__(self, topology: Topology, regions: list[str] | None, who: str, poll_interval: float):
        self.topology = topology
        self.domain = topology.domain.name
        self.regions = list(regions or topology.regions)
        unknown = [r for r in self.regions if r not in topology.regions]
        if unknown:
            raise ConfigError(f"unknown region(s) {unknown}; configured: {sorted(topology.regions)}")
        self.poll_interval = poll_interval
        self._readers = {r: ControlReader(topology.regions[r], who) for r in self.regions}
        self._lock = threading.Lock()
        self._seen: dict[str, Authority] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="baton-authority-view", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._stop.is_set():
            for region, reader in self._readers.items():
                reader.poll(self.poll_interval / len(self._readers))
                record = reader.latest.get(self.domain)
                # Only a region read to its end says who owns the domain now: a consumer that
                # followed an older record first was seen re-processing what it then read again
                # in the real owner (drill: 1 duplicate per group).
                if record is not None and reader.caught_up:
                    with self._lock:
                        self._seen[region] = record

    def seen(self) -> dict[str, Authority]:
        with self._lock:
            return dict(self._seen)

    def writable(self, now: datetime | None = None) -> tuple[str, Authority]:
        """(region, authority) where a record may be written now, or WriteRefused saying why."""
        seen = self.seen()
        if not seen:
            raise WriteRefused(
                f"no authority record for domain {self.domain!r} seen yet on the control topic of "
                f"{', '.join(self.regions)}; is the lease keeper (`baton authority keep`) running?")
        return choose_writable(self.domain, seen, now)

    def wait_writable(self, block_seconds: float) -> tuple[str, Authority]:
        deadline = time.monotonic() + block_seconds
        while True:
            try:
                return self.writable()
            except WriteRefused:
                if time.monotonic() >= deadline:
                    raise
            time.sleep(min(0.05, self.poll_interval))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for reader in self._readers.values():
            reader.close()


_AUTHORIZATION_CODES = frozenset({KafkaError.TOPIC_AUTHORIZATION_FAILED,
                                  KafkaError.CLUSTER_AUTHORIZATION_FAILED,
                                  KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED})


def _authorization_failure(error: KafkaException) -> bool:
    """The brokers deny the principal (a DENY ACL), directly or as the cause of a fatal error."""
    kafka_error = error.args[0] if error.args and isinstance(error.args[0], KafkaError) else None
    if kafka_error is None:
        return False
    return kafka_error.code() in _AUTHORIZATION_CODES or (
        kafka_error.fatal() and "authorization" in kafka_error.str().lower())


class GuardedProducer:
    """A Producer that writes only to the region holding write authority with a valid lease.

    `regions` limits which regions this app can reach (an app deployed in one region);
    `block_seconds` > 0 makes `produce` wait that long for authority instead of refusing at once.
    """

    def __init__(self, topology: Topology, *, regions: list[str] | None = None, who: str = "producer",
                 poll_interval: float = 0.5, block_seconds: float = 0.0, config: dict | None = None):
        self.topology = topology
        self.who = who
        self.block_seconds = block_seconds
        # A record accepted under a lease must not reach the broker long after the lease:
        # librdkafka drops what it cannot deliver within one lease.
        self._config = {"enable.idempotence": True, "linger.ms": 5,
                        "message.timeout.ms": int(topology.thresholds.lease_ttl_seconds * 1000)
                        } | (config or {})
        self.view = AuthorityView(topology, regions, who, poll_interval)
        self._producers: dict[str, Producer] = {}
        for region in self.view.regions:
            # Connect (and get an idempotent producer id) now, not in the middle of a hand-over.
            self._producer(region)

    def _producer(self, region: str) -> Producer:
        if region not in self._producers:
            self._producers[region] = Producer(
                client_config(self.topology.regions[region], self.who) | self._config)
        return self._producers[region]

    def produce(self, topic: str, value: bytes | str | None = None, key: bytes | str | None = None, *,
                headers: dict[str, bytes] | None = None, on_delivery: Callable | None = None,
                partition: int | None = None) -> Grant:
        """Queue a record in the authoritative region; returns the Grant it was accepted under.

        Raises WriteRefused (after `block_seconds`) when no region holds a valid lease, and
        (reason "acl denied") when the region's brokers deny the principal.
        """
        region, authority = self.view.wait_writable(self.block_seconds)
        record_headers = dict(headers or {}) | {EPOCH_HEADER: str(authority.epoch).encode(),
                                               REGION_HEADER: region.encode()}
        arguments = {"key": key, "value": value, "headers": record_headers}
        if on_delivery is not None:
            arguments["on_delivery"] = on_delivery
        if partition is not None:
            arguments["partition"] = partition
        producer = self._producer(region)
        try:
            producer.produce(topic, **arguments)
            producer.poll(0)
        except KafkaException as e:
            if not _authorization_failure(e):
                raise
            if e.args[0].fatal():  # an idempotent producer in a fatal state never recovers: replace it
                self._producers.pop(region, None)
            raise WriteRefused(
                f"{region} refused the record for {topic}: its brokers deny {self.who}'s principal "
                f"({e.args[0].str()}); the region is fenced by ACL although its authority record says "
                f"{authority.describe()} (`baton authority show` compares both)", "acl denied") from e
        return Grant(region, authority.epoch, authority.lease_expires_at)

    def poll(self, timeout: float = 0) -> int:
        return sum(p.poll(timeout) for p in self._producers.values())

    def flush(self, timeout: float = 10) -> int:
        """Wait for delivery in every region used; returns how many records are still queued."""
        return sum(p.flush(timeout) for p in self._producers.values())

    def close(self, timeout: float = 10) -> None:
        self.flush(timeout)
        self.view.close()


class GuardedConsumer:
    """A Consumer that reads from the owner region of the highest epoch seen, and follows it.

    Positions in the new owner come from the group's committed offsets there (the runbook
    translates them before it hands authority over). Messages come back as usual; `region`
    says where the last one came from.
    """

    def __init__(self, topology: Topology, group_id: str, topics: list[str], *,
                 regions: list[str] | None = None, who: str = "consumer", poll_interval: float = 0.5,
                 config: dict | None = None, leave_when_fenced: bool = False):
        self.topology = topology
        self.group_id = group_id
        self.topics = topics
        self.who = who
        # A runbook translates a group's offsets only once it has no members: with this set, the
        # consumer commits what it returned and leaves while authority is FENCED, and rejoins in
        # the new owner from the (translated) committed offsets once authority is ACTIVE there.
        self.leave_when_fenced = leave_when_fenced
        self._config = {"auto.offset.reset": "earliest"} | (config or {})
        self.view = AuthorityView(topology, regions, who, poll_interval)
        self.region: str | None = None
        self.last_leave_error: str | None = None
        self._consumer: Consumer | None = None

    def _owner(self) -> str | None:
        seen = self.view.seen()
        if not seen:
            return None
        top = max(seen.values(), key=lambda a: a.epoch)
        if top.state == State.FENCED:
            if self.leave_when_fenced:
                return None
            # While FENCED the old owner drains: keep reading where we are.
            return self.region or top.owner
        return top.owner

    def poll(self, timeout: float = 1.0) -> Message | None:
        owner = self._owner()
        if owner is None:
            if self._consumer is not None and self.leave_when_fenced:
                self.leave()
            time.sleep(timeout)
            return None
        if owner != self.region:
            self._switch(owner)
        return self._consumer.poll(timeout)

    def leave(self) -> None:
        """Commit the positions of what poll returned (processed by the caller before polling
        again) and leave the group; the next poll rejoins wherever authority is."""
        if self._consumer is None:
            return
        consumer, self._consumer, self.region = self._consumer, None, None
        if self.leave_when_fenced:
            try:
                # A synchronous commit to a region that died blocks until it comes back: ask its
                # brokers first (bounded); an unreachable owner's groups are translated from the
                # engine's checkpoints anyway.
                consumer.list_topics(timeout=3)
                consumer.commit(asynchronous=False)
            except KafkaException as e:  # nothing consumed yet (_NO_OFFSET) or the region is down
                self.last_leave_error = str(e)
        consumer.close()

    def _switch(self, region: str) -> None:
        if self._consumer is not None:
            if self.leave_when_fenced:
                self.leave()
            else:
                self._consumer.close()  # commits what was consumed (auto commit), leaves the group
        config = client_config(self.topology.regions[region], self.who) | self._config | {
            "group.id": self.group_id, "client.id": f"baton-guarded-{uuid.uuid4().hex[:6]}"}
        self._consumer = Consumer(config)
        self._consumer.subscribe(self.topics)
        self.region = region

    def commit(self, message: Message | None = None, asynchronous: bool = False) -> None:
        """Commit in the region being read (up to `message` if given); synchronously by default."""
        if self._consumer is None:
            return
        if message is not None:
            self._consumer.commit(message=message, asynchronous=asynchronous)
        else:
            self._consumer.commit(asynchronous=asynchronous)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
        self.view.close()
