"""The drill's consumer groups: one GuardedConsumer per group, recording every drill record processed.

Around a hand-over each consumer leaves its group while authority is FENCED (committing what it
processed), because the runbook translates offsets only for groups without members; it rejoins
on the new owner once authority is ACTIVE there and resumes from the committed, translated
offsets. Nothing here knows about the runbook: it follows the authority it can see.
"""

from __future__ import annotations

import threading
import time

from confluent_kafka import KafkaError, KafkaException

from baton.authority.control import quiet_logger
from baton.client import GuardedConsumer
from baton.settings import Topology
from baton.workload.records import Processed, decode

COMMIT_EVERY = 0.5  # seconds; what was processed since the last commit may be processed again


def subscription(topology: Topology) -> list[str]:
    """One pattern per domain topic matching it and its mirrors (`^(east\\.|west\\.)?orders\\.events$`).

    Under the default policy, after a failover new writes land in the new owner's native topic
    and the old owner's tail in its mirror there: a consumer must read both.
    """
    patterns = []
    for topic in topology.domain.topics:
        escaped = topic.replace(".", "\\.")
        if topology.replication.policy == "identity":
            patterns.append(topic)
            continue
        separator = topology.replication.separator.replace(".", "\\.")
        prefixes = "|".join(f"{region}{separator}" for region in topology.regions)
        patterns.append(f"^({prefixes})?{escaped}$")
    return patterns


class GroupWorker:
    """Consumes as one member of `group` and records each drill record of `producer_id`."""

    def __init__(self, topology: Topology, group: str, producer_id: str, *, poll_interval: float = 0.2):
        self.group = group
        self.producer_id = producer_id
        self.consumer = GuardedConsumer(
            topology, group, subscription(topology), who="consumer", poll_interval=poll_interval,
            leave_when_fenced=True,
            config={"enable.auto.commit": False, "auto.offset.reset": "earliest",
                    # find mirror topics created during the drill (reverse replication) quickly
                    "topic.metadata.refresh.interval.ms": 1000, "session.timeout.ms": 6000,
                    "enable.partition.eof": False, "logger": quiet_logger()})
        self.processed: list[Processed] = []
        self.foreign = 0  # records of other producers (earlier drills, apps): skipped
        self.commit_errors: list[str] = []
        self.regions_joined: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"drill-consumer-{group}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _commit(self) -> None:
        try:
            # asynchronous: a commit to a region that just died must not stall the worker; leaving
            # the group (GuardedConsumer.leave) commits synchronously where that region is up
            self.consumer.commit(asynchronous=True)
        except KafkaException as e:
            if e.args[0].code() != KafkaError._NO_OFFSET:
                self.commit_errors.append(str(e))

    def _run(self) -> None:
        last_commit = time.monotonic()
        region = None
        while not self._stop.is_set():
            message = self.consumer.poll(0.2)
            if self.consumer.region != region:
                region = self.consumer.region
                self.regions_joined.append((time.time(), region or "-"))
                last_commit = time.monotonic()
            if message is not None and not message.error():
                data = decode(message.value())
                if data is None or data["producer"] != self.producer_id:
                    self.foreign += 1
                else:
                    self.processed.append(Processed(
                        self.group, data["producer"], data["key"], int(data["seq"]), region,
                        message.topic(), message.partition(), message.offset(), time.time()))
            if region is not None and time.monotonic() - last_commit > COMMIT_EVERY:
                self._commit()
                last_commit = time.monotonic()
        self.consumer.leave()  # commits (synchronously) and leaves
        self.consumer.close()

    def stats(self) -> dict:
        return {"group": self.group, "processed": len(self.processed), "foreign_skipped": self.foreign,
                "commit_errors": self.commit_errors[:5],
                "regions_joined": [{"at": at, "region": r} for at, r in self.regions_joined]}
