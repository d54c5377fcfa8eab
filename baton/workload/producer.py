"""The drill's sequenced producer: a GuardedProducer writing (producer id, key, seq) records at a
steady rate across every partition of the domain's topics, recording every acknowledgement."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from baton.authority.control import quiet_logger
from baton.client import GuardedProducer
from baton.errors import BatonError, WriteRefused
from baton.kafka.admin import admin_client
from baton.settings import Topology
from baton.workload.records import AckedWrite, encode

log = logging.getLogger("baton.workload")


def partition_counts(topology: Topology) -> dict[str, int]:
    """Partitions of each domain topic, from the first region that answers."""
    problems = []
    for name, region in topology.regions.items():
        try:
            metadata = admin_client(region).list_topics(timeout=5).topics
        except Exception as e:  # noqa: BLE001 - try the next region, report all below
            problems.append(f"{name}: {e}")
            continue
        missing = [t for t in topology.domain.topics if t not in metadata]
        if missing:
            problems.append(f"{name}: no topic {', '.join(missing)}")
            continue
        return {t: len(metadata[t].partitions) for t in topology.domain.topics}
    raise BatonError("cannot read the domain's topics from any region: " + "; ".join(problems))


class SequencedProducer:
    """Writes `rate` records per second, round-robin over (topic, partition), two keys per partition.

    Each key has its own sequence 0, 1, 2, ...; a sequence number is used only when the guard
    accepts the record, so a refusal (no authority, e.g. while FENCED) leaves no gap. Runs in a
    thread between `start()` and `stop()`; `hold()`/`release()` pause it (the unplanned drill
    holds it while it measures the records at risk and kills the owner).
    """

    def __init__(self, topology: Topology, producer_id: str, *, rate: float = 50.0,
                 keys_per_partition: int = 2, poll_interval: float = 0.2):
        if rate <= 0:
            raise BatonError(f"the workload rate must be > 0 records/s, not {rate}")
        self.topology = topology
        self.producer_id = producer_id
        self.rate = rate
        counts = partition_counts(topology)
        self.slots = [(topic, p, f"k{p}-{k}") for topic, n in counts.items()
                      for k in range(keys_per_partition) for p in range(n)]
        self.guard = GuardedProducer(topology, who="producer", poll_interval=poll_interval,
                                     config={"logger": quiet_logger()})
        self.acked: list[AckedWrite] = []
        self.failed: list[dict] = []  # delivery errors: never acknowledged
        self.refused = 0  # guard refusals (no authority): nothing was sent
        self.refused_at: list[float] = []
        self._next_seq: Counter[str] = Counter()
        self._stop = threading.Event()
        self._hold = threading.Event()
        self._holding = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drill-producer", daemon=True)

    def start(self, wait_seconds: float = 30) -> None:
        """Start writing once the guard sees a region with write authority (bounded wait)."""
        self.guard.view.wait_writable(wait_seconds)
        self._thread.start()

    def hold(self, timeout: float = 10) -> None:
        """Stop sending new records and wait until everything sent was acknowledged or failed."""
        self._hold.set()
        if not self._holding.wait(timeout):
            raise BatonError(f"the drill producer did not pause within {timeout:g}s")

    def release(self) -> None:
        self._holding.clear()
        self._hold.clear()

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _delivered(self, key: str, seq: int, sent_at: float, grant: dict):
        # Delivery reports carry no headers: the Grant the guard returned says region and epoch.
        # guard.produce polls, so a report can arrive before that Grant is known: keep it until then.
        def callback(error, message) -> None:
            if "region" not in grant:
                grant["early"] = (error, message)
                return
            self._record(key, seq, sent_at, grant, error, message)
        return callback

    def _record(self, key: str, seq: int, sent_at: float, grant: dict, error, message) -> None:
        region, epoch = grant["region"], grant["epoch"]
        if error is not None:
            self.failed.append({"producer": self.producer_id, "key": key, "seq": seq, "region": region,
                                "epoch": epoch, "error": str(error), "at": time.time()})
            return
        self.acked.append(AckedWrite(self.producer_id, key, seq, region, epoch, message.topic(),
                                     message.partition(), message.offset(), sent_at, time.time()))

    def _run(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        index = 0
        while not self._stop.is_set():
            if self._hold.is_set():
                self.guard.flush(self.topology.thresholds.lease_ttl_seconds + 5)
                self._holding.set()
                time.sleep(0.05)
                next_at = time.monotonic()
                continue
            topic, partition, key = self.slots[index % len(self.slots)]
            seq = self._next_seq[key]
            sent_at = time.time()
            grant: dict = {}
            try:
                accepted = self.guard.produce(topic, value=encode(self.producer_id, key, seq, sent_at),
                                              key=key.encode(), partition=partition,
                                              on_delivery=self._delivered(key, seq, sent_at, grant))
                grant |= {"region": accepted.region, "epoch": accepted.epoch}
                if "early" in grant:
                    self._record(key, seq, sent_at, grant, *grant.pop("early"))
            except WriteRefused:
                self.refused += 1
                self.refused_at.append(sent_at)
            except BufferError:  # librdkafka's queue is full (a region is down): back off
                self.guard.poll(0.1)
            else:
                self._next_seq[key] += 1
                index += 1
            self.guard.poll(0)
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1:  # fell behind (a region hung): do not burst to catch up
                next_at = time.monotonic()
        self.guard.close(timeout=self.topology.thresholds.lease_ttl_seconds + 5)

    def stats(self) -> dict:
        by_region = Counter(a.region for a in self.acked)
        return {"producer_id": self.producer_id, "rate": self.rate, "acked": len(self.acked),
                "acked_by_region": dict(by_region), "failed": len(self.failed), "refused": self.refused,
                "keys": len(self.slots)}
