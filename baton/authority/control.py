"""The control topic `baton.authority.internal`: each region's own copy of the authority record.

Compacted, one partition, key = domain, value = the Authority as JSON. MirrorMaker 2 never
mirrors `*.internal` topics, so what a region's copy says is exactly what was published to
that region: a region cut off from Baton keeps its last record, whose lease then lapses.
Readers keep the newest record per domain by epoch (then lease), not the last offset, so a
late-delivered stale record can never win.

Beside each authority record goes the evidence chain's signed head at that epoch (key
`<domain>#chain`, baton/audit/anchor.py): a copy of the chain's state that lives outside the
audit database, in every region.
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from pydantic import ValidationError

from baton.audit.anchor import Anchor
from baton.authority.record import Authority
from baton.errors import RegionUnreachable
from baton.kafka.admin import _quiet_logger, check_reachable, client_config, ensure_topics
from baton.settings import RegionSettings, Topology

CONTROL_TOPIC = "baton.authority.internal"
ANCHOR_SUFFIX = "#chain"
CONTROL_TOPIC_CONFIG = {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}


def quiet_logger():
    # librdkafka logs every refused connection and retry; Baton reports outcomes itself.
    return _quiet_logger()


def ensure_control_topic(topology: Topology, region: str, timeout: float = 5) -> bool:
    """Create the control topic in a region if missing; True if it was created."""
    admin = check_reachable(region, topology.regions[region], timeout=timeout)
    return bool(ensure_topics(admin, {CONTROL_TOPIC: 1}, CONTROL_TOPIC_CONFIG))


class ControlPublisher:
    """Publishes authority records to every region's control topic; keeps one producer per region."""

    def __init__(self, topology: Topology, timeout: float = 5):
        self.topology = topology
        self.timeout = timeout
        self._producers: dict[str, Producer] = {}
        self._topic_ready: set[str] = set()

    def _producer(self, region: str) -> Producer:
        if region not in self._producers:
            # A record that cannot be delivered within the timeout is dropped rather than
            # delivered late (a late record is harmless to readers, but pointless). No
            # idempotence: one record per publish, readers keep the newest, and acquiring a
            # producer id would add ~0.5 s to every hand-over.
            config = client_config(self.topology.regions[region]) | {
                "acks": "all", "enable.idempotence": False,
                "message.timeout.ms": int(self.timeout * 1000), "linger.ms": 0,
                "logger": quiet_logger()}
            self._producers[region] = Producer(config)
        return self._producers[region]

    def publish(self, authority: Authority, regions: list[str] | None = None,
                anchor: Anchor | None = None) -> dict[str, str | None]:
        """Publish to each region (with the chain anchor, if given); region -> None if
        acknowledged, else the error. Never raises."""
        def one(region: str) -> str | None:
            try:
                return self._publish_one(region, authority, anchor)
            except (RegionUnreachable, KafkaException) as e:
                return str(e)

        # In parallel: an unreachable region must not delay the others by its timeout. Each in
        # a copy of this context: the run's kept admin clients (kafka.admin.kept_admin_clients).
        targets = regions or list(self.topology.regions)
        with ThreadPoolExecutor(max_workers=len(targets)) as pool:
            futures = [pool.submit(copy_context().run, one, region) for region in targets]
            return {region: future.result() for region, future in zip(targets, futures, strict=True)}

    def _publish_one(self, region: str, authority: Authority, anchor: Anchor | None = None) -> str | None:
        if region not in self._topic_ready:
            ensure_control_topic(self.topology, region, timeout=self.timeout)
            self._topic_ready.add(region)
        outcome: dict[str, str | None] = {}

        def delivered(error, _message):
            outcome["error"] = None if error is None else str(error)

        producer = self._producer(region)
        producer.produce(CONTROL_TOPIC, key=authority.domain.encode(),
                         value=authority.model_dump_json().encode(), on_delivery=delivered)
        if anchor is not None:
            anchored: dict[str, str | None] = {}
            producer.produce(CONTROL_TOPIC, key=(anchor.domain + ANCHOR_SUFFIX).encode(),
                             value=json.dumps(anchor.as_dict()).encode(),
                             on_delivery=lambda error, _m: anchored.update(error=error and str(error)))
        producer.flush(self.timeout + 1)
        if "error" not in outcome:
            return f"not acknowledged by {region} within {self.timeout:g}s"
        if anchor is not None and anchored.get("error", "unacknowledged") is not None:
            return outcome["error"] or f"chain anchor not acknowledged by {region}: {anchored.get('error')}"
        return outcome["error"]

    def close(self) -> None:
        for producer in self._producers.values():
            producer.flush(0)
        self._producers.clear()


def publish(topology: Topology, authority: Authority, timeout: float = 5,
            anchor: Anchor | None = None) -> dict[str, str | None]:
    """Publish one authority record (and the chain anchor) to every region's control topic."""
    publisher = ControlPublisher(topology, timeout)
    try:
        return publisher.publish(authority, anchor=anchor)
    finally:
        publisher.close()


class ControlReader:
    """Follows one region's control topic; `latest[domain]` is the newest record seen there."""

    def __init__(self, region: RegionSettings, who: str = "admin", *, to_end: bool = False,
                 start: int = OFFSET_BEGINNING):
        # assign(), not subscribe(): no group membership, nothing committed; the group id is
        # only there because the client requires one (lab ACLs allow `baton-` groups).
        config = client_config(region, who) | {
            "group.id": f"baton-authority-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "topic.metadata.refresh.interval.ms": 5000,
            "enable.partition.eof": True, "logger": quiet_logger()}
        if to_end:
            # A read up to a known end offset: a fetch at the end would wait librdkafka's 500 ms
            # for records that are not coming (reconcile's read of the control topic took 0.78 s).
            config["fetch.wait.max.ms"] = 10
        self.consumer = Consumer(config)
        self.consumer.assign([TopicPartition(CONTROL_TOPIC, 0, start)])
        self.latest: dict[str, Authority] = {}
        self.anchors: dict[str, Anchor] = {}  # domain -> the newest chain anchor (by epoch, seq)
        self.last_error: str | None = None
        # Once the end of the topic was reached: before that, `latest` holds whatever old record
        # the read has got to (an owner several epochs ago, whose clients would follow it).
        self.caught_up = False

    def poll(self, timeout: float) -> int:
        """Read what arrived within `timeout`; return how many records were read."""
        read = 0
        for message in self.consumer.consume(num_messages=500, timeout=timeout):
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    self.caught_up = True
                else:
                    self.last_error = str(message.error())
                continue
            read += 1
            key = (message.key() or b"").decode(errors="replace")
            if key.endswith(ANCHOR_SUFFIX):
                self._anchor(message.value())
                continue
            try:
                record = Authority.model_validate_json(message.value())
            except (ValidationError, TypeError):
                continue  # not ours (or a tombstone): ignore rather than trust it
            if record.newer_than(self.latest.get(record.domain)):
                self.latest[record.domain] = record
        return read

    def _anchor(self, value: bytes | None) -> None:
        try:
            anchor = Anchor.from_dict(json.loads(value or b""))
        except (ValueError, KeyError, TypeError):
            return
        known = self.anchors.get(anchor.domain)
        if known is None or (anchor.epoch, anchor.seq) > (known.epoch, known.seq):
            self.anchors[anchor.domain] = anchor

    def close(self) -> None:
        self.consumer.close()


def read(topology: Topology, region: str, who: str = "admin", timeout: float = 5) -> Authority | None:
    """The newest authority record of the topology's domain in one region's control topic."""
    return read_with_anchor(topology, region, who, timeout)[0]


def read_with_anchor(topology: Topology, region: str, who: str = "admin",
                     timeout: float = 5) -> tuple[Authority | None, Anchor | None]:
    """The newest authority record and chain anchor of the domain in one region's control topic."""
    admin = check_reachable(region, topology.regions[region], timeout=timeout)
    metadata = admin.list_topics(CONTROL_TOPIC, timeout=timeout).topics[CONTROL_TOPIC]
    if metadata.error is not None:
        return None, None  # no control topic there yet
    start, end = _watermarks(topology.regions[region], who, timeout)
    # From a concrete offset: librdkafka resolves OFFSET_BEGINNING with a query that took 0.5 s.
    reader = ControlReader(topology.regions[region], who, to_end=True, start=start)
    deadline = time.monotonic() + timeout
    try:
        position = start
        while position < end:
            if time.monotonic() > deadline:
                raise RegionUnreachable(
                    f"region {region!r} did not deliver its control topic up to offset {end} within "
                    f"{timeout:g}s (read up to {position}); check that its brokers are healthy")
            # A batch read returns at its timeout unless 500 records came: short, and asked again.
            reader.poll(0.02)
            position = max(0, reader.consumer.position([TopicPartition(CONTROL_TOPIC, 0)])[0].offset)
        domain = topology.domain.name
        return reader.latest.get(domain), reader.anchors.get(domain)
    finally:
        reader.close()


def _watermarks(region: RegionSettings, who: str, timeout: float) -> tuple[int, int]:
    consumer = Consumer(client_config(region, who) | {"group.id": "baton-authority-probe",
                                                      "logger": quiet_logger()})
    try:
        return consumer.get_watermark_offsets(TopicPartition(CONTROL_TOPIC, 0), timeout=timeout)
    finally:
        consumer.close()


def anchor_problems(topology: Topology, audit, timeout: float = 5) -> tuple[list[str], list[str]]:
    """(problems, notes): where the audit database disagrees with what the control topics of
    every region know (a later epoch, a chain anchor the database does not hold)."""
    from baton.audit.anchor import anchor_signed
    from baton.audit.models import AuthorityRecord

    domain = topology.domain.name
    with audit.transaction() as session:
        row = session.get(AuthorityRecord, domain)
        db_epoch = row.epoch if row else None
    head = audit.head()
    problems, notes = [], []
    for region in topology.regions:
        try:
            authority, anchor = read_with_anchor(topology, region, timeout=timeout)
        except (RegionUnreachable, KafkaException) as e:
            notes.append(f"could not read {region}'s control topic ({e}); not compared")
            continue
        held = "no authority record" if db_epoch is None else f"epoch {db_epoch}"
        if authority is not None and (db_epoch is None or authority.epoch > db_epoch):
            problems.append(f"{region}'s control topic knows epoch {authority.epoch} of {domain!r} but the "
                            f"audit database has {held}: it was truncated, replaced or restored from an "
                            "older copy")
        if anchor is None:
            continue
        if audit.chain_key and not anchor_signed(audit.chain_key, anchor):
            problems.append(f"the chain anchor in {region}'s control topic (seq {anchor.seq}) is not "
                            "signed with the chain key: forged, or the key changed")
            continue
        anchored = audit.chain_row(anchor.seq)
        if anchored is None:
            problems.append(f"{region}'s control topic anchored the chain at seq {anchor.seq} (epoch "
                            f"{anchor.epoch}) but the audit database has no row at seq {anchor.seq} (its "
                            f"head is seq {head.seq}): it was truncated or replaced")
        elif anchored.hash != anchor.hash:
            problems.append(f"{anchored.__tablename__} row {anchored.id} (seq {anchor.seq}) has hash "
                            f"{anchored.hash[:12]}... but {region}'s control topic anchored "
                            f"{anchor.hash[:12]}...: the chain was rewritten")
        else:
            notes.append(f"{region}: anchor at seq {anchor.seq} (epoch {anchor.epoch}) matches")
    return problems, notes
