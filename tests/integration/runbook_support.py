"""Helpers for runbook tests: a private domain on the lab, records, offsets, flow-run control."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path

import httpx
import yaml
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaError, Producer, TopicPartition
from pydantic import SecretStr

from baton.kafka.admin import admin_client, ensure_topics
from baton.kafka.fencing import unfence
from baton.kafka.reading import committed_offsets
from baton.replication import engine_for
from baton.settings import Topology, load_topology


def plain(value):
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def make_domain(lab_topology: Topology, tmp_path: Path, partitions: int = 3, **thresholds) -> Path:
    """A fresh domain (own topic in both regions, two groups, private audit DB); its topology file."""
    suffix = uuid.uuid4().hex[:8]
    topic = f"orders.rb-{suffix}"
    for region in lab_topology.regions.values():
        ensure_topics(admin_client(region), {topic: partitions})
    document = plain(lab_topology.model_dump(mode="python"))
    document["domain"] = {"name": f"rb-{suffix}", "topics": [topic],
                          "consumer_groups": [f"orders-t-{suffix}-a", f"orders-t-{suffix}-b"],
                          "initial_owner": "east"}
    document["thresholds"] |= {"quiesce_seconds": 1, "lease_ttl_seconds": 3, "step_timeout_seconds": 90,
                               "gate_timeout_seconds": 120} | thresholds
    document["audit"] = {"database_url": f"sqlite:///{tmp_path / f'audit-{suffix}.db'}"}
    path = tmp_path / f"topology-{suffix}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def restore_lab(topology: Topology) -> None:
    """Leave the shared lab as tests expect it: nothing fenced, replication east -> west only."""
    for region in topology.regions:
        unfence(topology, region)
    engine = engine_for(topology)
    engine.stop("west", "east")
    engine.start("east", "west")


def produce(topology: Topology, region: str, topic: str, count: int, partitions: int, tag: str,
            who: str = "producer") -> list[tuple[int, int, bytes]]:
    """count records round-robin over partitions; returns (partition, offset, value) as acknowledged."""
    acked: list[tuple[int, int, bytes]] = []
    errors: list = []
    producer = Producer(topology.regions[region].client_config(who) | {"message.timeout.ms": 15000})

    def done(error, message):
        if error:
            errors.append(error)
        else:
            acked.append((message.partition(), message.offset(), message.value()))

    for i in range(count):
        producer.produce(topic, key=f"{tag}-k{i % 7}".encode(), value=f"{tag}-{i}".encode(),
                         partition=i % partitions, on_delivery=done)
    producer.flush(20)
    if errors:
        raise AssertionError(f"produce to {region}/{topic} failed: {errors[0]}")
    return acked


def produce_error(topology: Topology, region: str, topic: str) -> KafkaError | None:
    """The error an unguarded producer gets writing one record as the domain principal."""
    result: list = []
    producer = Producer(topology.regions[region].client_config("producer") | {"message.timeout.ms": 10000})
    producer.produce(topic, value=b"probe", on_delivery=lambda e, m: result.append(e))
    producer.flush(15)
    return result[0] if result else KafkaError(KafkaError._MSG_TIMED_OUT)


def commit(topology: Topology, region: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    admin = admin_client(topology.regions[region])
    request = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p, o) for p, o in offsets.items()])]
    for future in admin.alter_consumer_group_offsets(request).values():
        future.result()


def committed(topology: Topology, region: str, group: str) -> dict[tuple[str, int], int]:
    return committed_offsets(admin_client(topology.regions[region]), group, region, 10)


def read_from(topology: Topology, region: str, topic: str, starts: dict[int, int],
              timeout: float = 30) -> dict[int, list[bytes]]:
    """Values from each partition's start offset to its current end, in order."""
    consumer = Consumer(topology.regions[region].client_config("admin")
                        | {"group.id": "baton-t-reader", "enable.auto.commit": False,
                           "enable.partition.eof": True})
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in starts}
    values: dict[int, list[bytes]] = {p: [] for p in starts}
    pending = {p for p in starts if starts[p] < ends[p]}
    consumer.assign([TopicPartition(topic, p, starts[p]) for p in pending])
    deadline = time.monotonic() + timeout
    try:
        while pending and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            p = message.partition()
            if message.offset() < ends[p]:
                values[p].append(message.value())
            if message.offset() >= ends[p] - 1:
                pending.discard(p)
    finally:
        consumer.close()
    assert not pending, f"could not read {topic} partitions {pending} to their end"
    return values


def wait_mirrored(topology: Topology, topic: str, total: int, timeout: float = 60,
                  source: str = "east") -> None:
    """Until the mirror of `topic` from `source` in the other region holds `total` records."""
    from baton.kafka.admin import end_offsets

    target = topology.other_region(source)
    mirror = topology.replication.remote_topic(topic, source)
    config = topology.regions[target].client_config("admin")
    partitions = len(admin_client(topology.regions[source]).list_topics(topic).topics[topic].partitions)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if sum(end_offsets(config, mirror, partitions)) >= total:
                return
        except Exception:  # the mirror topic may not exist yet
            pass
        time.sleep(0.5)
    raise AssertionError(f"{mirror} on {target} did not reach {total} records in {timeout:.0f}s")


# -- Prefect flow-run control (through the real API) -------------------------------------------


def paused_run(flow_name: str, timeout: float = 60, config: Path | str | None = None,
               process=None) -> tuple[str, str]:
    """(flow run id, pause key) of the newest paused run of a flow (of this topology file, if
    given: a run left paused by an earlier test must never be mistaken for this test's)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter
    from prefect.client.schemas.sorting import FlowRunSort

    async def find():
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                flow_run_filter=FlowRunFilter(), sort=FlowRunSort.START_TIME_DESC, limit=5)
            for run in runs:
                if config is not None and run.parameters.get("config") != str(config):
                    continue
                if run.state and run.state.is_paused():
                    return str(run.id), run.state.state_details.pause_key
            return None

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = asyncio.run(find())
        if found:
            return found
        _fail_if_exited(process, flow_name)
        time.sleep(0.5)
    raise AssertionError(f"no paused run of flow {flow_name!r} within {timeout:.0f}s")


def _fail_if_exited(process, flow_name: str) -> None:
    """A CLI run that ended will never pause: fail now, with what it printed, instead of at the timeout."""
    if process is None or process.poll() is None:
        return
    stdout, stderr = process.communicate()
    raise AssertionError(f"the {flow_name} CLI exited ({process.returncode}) instead of pausing:\n"
                         f"{(stderr or '')[-3000:]}\n{(stdout or '')[-1000:]}")


def wait_paused_at(flow_name: str, gate: str, timeout: float = 90, config: Path | str | None = None,
                   process=None) -> str:
    """The flow run paused at `gate`; with `process` (the CLI running it), fail as soon as it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run_id, key = paused_run(flow_name, timeout=deadline - time.monotonic(), config=config,
                                 process=process)
        if key and key.startswith(gate):
            return run_id
        _fail_if_exited(process, flow_name)
        time.sleep(0.5)
    raise AssertionError(f"flow {flow_name!r} never paused at {gate}")


def resume(flow_run_id: str, **run_input) -> str:
    from prefect.client.orchestration import get_client

    async def go():
        async with get_client() as client:
            result = await client.resume_flow_run(flow_run_id, run_input=run_input)
            return str(result.status)

    return asyncio.run(go())


def lab_topology_from(path: Path) -> Topology:
    return load_topology(path)


def wait_checkpointed(topology: Topology, partitions: int = 3, timeout: float = 120) -> None:
    """Every domain group has an MM2 checkpoint for every partition on the secondary: an unplanned
    run translates from them, and a group MM2 has not checkpointed yet is refused, not guessed."""
    engine = engine_for(topology)

    def done() -> bool:
        keys = [k[0] for k in engine.checkpoints("east", "west").items]
        return all(keys.count(g) >= partitions for g in topology.domain.consumer_groups)

    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            groups = topology.domain.consumer_groups
            raise AssertionError(f"MM2 did not checkpoint {groups} within {timeout:.0f}s")
        time.sleep(0.5)


# -- another domain's traffic while one domain is switched ------------------------------------

def wait_mm2_steady(topology: Topology, steady: float = 2.5, timeout: float = 60) -> None:
    """Wait until no Connect connector or task config has changed for `steady` seconds and every
    running connector's tasks run. A group deleted by the previous test's cleanup restarts the
    checkpoint task assigned it up to one refresh (1 s in the lab) later; a test measuring that
    replication stays RUNNING starts after that, not during it."""
    def snapshot(http: httpx.Client):
        seen = {}
        for name, entry in http.get("/connectors?expand=status").raise_for_status().json().items():
            tasks = http.get(f"/connectors/{name}/tasks").raise_for_status().json()
            states = tuple(task["state"] for task in entry["status"]["tasks"])
            running = entry["status"]["connector"]["state"] == "RUNNING"
            if running and any(state != "RUNNING" for state in states):
                return None
            seen[name] = (entry["status"]["connector"]["state"], states, str(tasks))
        return seen

    deadline, last, since = time.monotonic() + timeout, None, time.monotonic()
    with httpx.Client(base_url=topology.replication.connect_url, timeout=10) as http:
        while time.monotonic() < deadline:
            try:
                now = snapshot(http)
            except (httpx.HTTPError, KeyError, TypeError):
                now = None  # Connect rebalancing
            if now is None or now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= steady:
                return
            time.sleep(0.25)
    raise AssertionError(f"MM2's connectors did not hold still for {steady} s within {timeout} s")


class DomainTraffic:
    """While open: an idempotent producer writes the domain's topic on `region` as the domain's
    principal (acknowledged writes and errors counted, with times), and the domain's flow
    `region` -> other is read from Connect every interval (state and time)."""

    def __init__(self, topology: Topology, region: str, interval: float = 0.25):
        self.topology, self.region, self.interval = topology, region, interval
        self.topic = topology.domain.topics[0]
        self.acked: list[tuple[float, int, int]] = []  # (monotonic time, partition, offset)
        self.errors: list[str] = []
        self.states: list[tuple[float, str]] = []
        self.not_running: list[tuple[float, list]] = []  # (time, every component that did not run)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _write(self) -> None:
        producer = Producer(self.topology.regions[self.region].client_config("producer")
                            | {"enable.idempotence": True, "linger.ms": 5, "message.timeout.ms": 15000})

        def done(error, message):
            if error:
                self.errors.append(str(error))
            else:
                self.acked.append((time.monotonic(), message.partition(), message.offset()))

        n = 0
        while not self._stop.is_set():
            producer.produce(self.topic, value=f"traffic-{n}".encode(), on_delivery=done)
            n += 1
            producer.poll(0.02)
        if producer.flush(20):
            self.errors.append("records left unacknowledged after 20 s")

    def _sample(self) -> None:
        engine = engine_for(self.topology)
        target = self.topology.other_region(self.region)
        while not self._stop.is_set():
            status, at = engine.status(self.region, target), time.monotonic()
            self.states.append((at, status.state))
            if status.state != "RUNNING":
                self.not_running.append((at, [c for c in status.components if not c.running]))
            self._stop.wait(self.interval)

    def __enter__(self) -> DomainTraffic:
        self._threads = [threading.Thread(target=f, daemon=True) for f in (self._write, self._sample)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def acked_between(self, start: float, end: float) -> int:
        return sum(1 for at, _, _ in self.acked if start <= at <= end)

    def states_between(self, start: float, end: float) -> set[str]:
        return {state for at, state in self.states if start <= at <= end}

    def not_running_between(self, start: float, end: float) -> list:
        """The samples that did not read RUNNING, seconds after `start`, with their components."""
        return [(round(at - start, 2), parts) for at, parts in self.not_running if start <= at <= end]


def lab_domain(lab, name: str) -> Topology:
    """One of the lab's domains (orders owned by east, payments by west)."""
    return next(t for t in lab.topologies() if t.domain.name == name)


def wait_holds_acked(topology: Topology, source: str, acked: list[tuple[float, int, int]],
                     timeout: float = 30) -> None:
    """Until the mirror of the domain's topic in the other region holds every acknowledged offset."""
    from baton.kafka.admin import end_offsets

    topic = topology.domain.topics[0]
    target = topology.other_region(source)
    mirror = topology.replication.remote_topic(topic, source)
    wanted: dict[int, int] = {}
    for _, partition, offset in acked:
        wanted[partition] = max(wanted.get(partition, 0), offset + 1)
    config = topology.regions[target].client_config("admin")

    def holds() -> bool:
        try:
            ends = end_offsets(config, mirror, max(wanted) + 1)
        except Exception:  # the mirror may not exist yet
            return False
        # MM2 copied the topic from its first record: a mirror that holds a write ends after it.
        return all(ends[p] >= n for p, n in wanted.items())

    from tests.conftest import wait_until

    wait_until(holds, timeout, f"{mirror} on {target} holds every acknowledged write")
