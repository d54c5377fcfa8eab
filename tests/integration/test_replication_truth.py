"""Lag, currency and exact offset translation against the real lab (Kafka + MirrorMaker 2).

Correctness is measured: consume the mirror from the translated position and compare
with what the group had not yet processed on the owner (0 duplicates, 0 gaps).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import pytest
from confluent_kafka import (
    OFFSET_END,
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    Producer,
    TopicPartition,
)

from baton.errors import ReplicationError, StepFailed
from baton.kafka.admin import admin_client, ensure_topics
from baton.replication import engine_for
from baton.replication.currency import verify_currency
from baton.replication.lag import measure_lag
from baton.replication.mm2 import internal
from baton.replication.mm2.records import decode_checkpoint
from baton.replication.translation import apply_translation, translate_offsets
from tests.conftest import wait_until

pytestmark = pytest.mark.integration


def produce(topology, topic, rows, region="east"):
    """rows: (partition, value[, key[, timestamp_ms]])."""
    producer = Producer(topology.regions[region].client_config("producer") | {"linger.ms": 5})
    for row in rows:
        partition, value, *rest = row
        key = rest[0] if rest else None
        kwargs = {"timestamp": rest[1]} if len(rest) > 1 else {}
        producer.produce(topic, value=value, key=key, partition=partition, **kwargs)
    assert producer.flush(30) == 0


def read(topology, region, topic, partition, start, stop=None):
    """Values of [start, stop or end) of one partition, read as the admin."""
    consumer = Consumer(topology.regions[region].client_config("admin") | {
        "group.id": "baton-test-reader", "enable.auto.commit": False})
    try:
        end = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
        stop = end if stop is None else stop
        consumer.assign([TopicPartition(topic, partition, start)])
        values, deadline = [], time.monotonic() + 30
        while start + len(values) < stop and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and not message.error() and message.offset() < stop:
                values.append(message.value())
        return values
    finally:
        consumer.close()


def commit(topology, region, group, offsets):
    admin = admin_client(topology.regions[region])
    partitions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
    request = [ConsumerGroupTopicPartitions(group, partitions)]
    admin.alter_consumer_group_offsets(request)[group].result()


def wait_mirrored(topology, topic, timeout=60):
    def current():
        try:
            return verify_currency(topology, topics=[topic]).current
        except Exception:  # the mirror may not exist yet
            return False
    wait_until(current, timeout, f"{topic} to be mirrored and current")


def assert_exact(topology, report, topic):
    """Consume the mirror from each translated position: exactly the owner's unprocessed records."""
    checked = 0
    for entry in report.entries:
        assert entry.status == "ok", entry
        owner_rest = read(topology, "east", topic, entry.partition, entry.owner_offset)
        mirror_rest = read(topology, "west", entry.mirror_topic, entry.partition, entry.translated_offset)
        duplicates = len(mirror_rest) - len(owner_rest)
        assert mirror_rest == owner_rest, f"{entry}: duplicates={duplicates}"
        checked += 1
    return checked


def test_decoders_read_real_mm2_records(topology, new_topic, new_group):
    topic, group = new_topic(1), new_group()
    produce(topology, topic, [(0, f"v{i}".encode()) for i in range(30)])
    commit(topology, "east", group, {(topic, 0): 20})
    wait_mirrored(topology, topic)
    engine = engine_for(topology)
    hints = engine.offset_hints("east", "west")
    assert not hints.problems
    syncs = hints.items[(topic, 0)]
    assert syncs[0].upstream_offset == 0 and syncs[0].downstream_offset == 0
    assert all(0 <= s.upstream_offset < 30 for s in syncs)
    # A caller naming its topics gets exactly their syncs, and only theirs.
    named = engine.offset_hints("east", "west", topics=[topic])
    every = engine.offset_hints("east", "west").items  # read after: may hold newer syncs
    assert set(named.items) == {(topic, 0)}
    assert every[(topic, 0)][:len(named.items[(topic, 0)])] == named.items[(topic, 0)]
    assert len(every) > 1  # the lab's other topics have syncs too
    checkpoint = wait_until(lambda: engine.checkpoints("east", "west").items.get(
        (group, f"east.{topic}", 0)), 30, "MM2 to checkpoint the group")
    assert checkpoint.upstream_offset == 20 and 0 < checkpoint.downstream_offset <= 20
    age = engine.heartbeat_age("east", "west", int(time.time() * 1000))
    assert age is not None and age < 30


def test_malformed_internal_record_is_reported_and_skipped(topology, new_topic):
    scratch = new_topic(1, prefix="scratch.t")
    good = engine_for(topology)  # only for its config
    key, value = b"\x00\x01g\x00\x01t\x00\x00\x00\x00", b"\x00\x00" + (7).to_bytes(8, "big") * 2 + b"\x00\x00"
    producer = Producer(good._config("east"))
    producer.produce(scratch, key=key, value=value)
    producer.produce(scratch, key=b"\x00\x09broken", value=b"\x01")
    producer.produce(scratch, key=key, value=value)
    producer.flush(10)
    latest, problems = internal.checkpoints(good._config("east"), scratch, "east")
    assert latest[("g", "t", 0)][0].downstream_offset == 7
    assert len(problems) == 1 and f"{scratch} partition 0 offset 1" in problems[0]
    with pytest.raises(Exception, match="mm2-offset-syncs.nowhere.internal"):
        internal.offset_syncs(good._config("east"), "mm2-offset-syncs.nowhere.internal", "east")
    assert decode_checkpoint(key, value).group == "g"


def test_lag_and_currency_are_exact_while_replication_is_stopped(topology, new_topic, new_group):
    topic = new_topic(2)
    produce(topology, topic, [(p, f"{p}-{i}".encode()) for p in range(2) for i in range(40)])
    wait_mirrored(topology, topic)
    engine = engine_for(topology)
    engine.stop("east", "west")
    try:
        before = time.time()
        produce(topology, topic, [(0, f"late-{i}".encode()) for i in range(25)])
        time.sleep(1.0)
        report = measure_lag(topology, topics=[topic])
        by_partition = {p.partition: p for p in report.partitions}
        assert by_partition[0].missing_records == 25 and by_partition[0].replicated_through == 39
        assert by_partition[1].missing_records == 0
        assert 1.0 <= by_partition[0].oldest_missing_age_seconds <= time.time() - before + 1
        assert report.records_at_risk == 25 and report.statement().startswith("25 records / ")
        currency = verify_currency(topology, lag=report)
        assert not currency.current
        assert [p.missing_ranges for p in currency.partitions] == [[(40, 65)], []]
        # Groups whose next record is not on the mirror resume at its end, with honest counts.
        caught_up, midway = new_group(), new_group()
        commit(topology, "east", caught_up, {(topic, 0): 65})
        commit(topology, "east", midway, {(topic, 0): 50})
        entries = {e.group: e for e in translate_offsets(topology, groups=[caught_up, midway],
                                                         topics=[topic]).entries}
        assert (entries[caught_up].method, entries[caught_up].translated_offset) == ("end", 40)
        assert (entries[caught_up].duplicates_bound, entries[caught_up].missing) == (25, 0)
        assert (entries[midway].method, entries[midway].translated_offset) == ("end", 40)
        assert (entries[midway].duplicates_bound, entries[midway].missing) == (10, 15)
    finally:
        engine.start("east", "west")
    wait_mirrored(topology, topic)
    entry = translate_offsets(topology, groups=[midway], topics=[topic]).entries[0]
    assert (entry.method, entry.translated_offset, entry.missing) == ("exact", 50, 0)
    assert read(topology, "west", entry.mirror_topic, 0, 50) == read(topology, "east", topic, 0, 50)


def test_exact_translation_no_duplicates_no_gaps_and_apply(topology, new_topic, new_group):
    topic, group = new_topic(3), new_group()
    produce(topology, topic, [(p, f"{p}:{i}".encode()) for i in range(200) for p in range(3)])
    commit(topology, "east", group, {(topic, 0): 0, (topic, 1): 137, (topic, 2): 200})
    wait_mirrored(topology, topic)
    report = translate_offsets(topology, groups=[group], topics=[topic])
    methods = {e.partition: e.method for e in report.entries}
    assert methods == {0: "exact", 1: "exact", 2: "end"}
    assert assert_exact(topology, report, topic) == 3
    searched = translate_offsets(topology, groups=[group], topics=[topic], hint="timestamp")
    assert [e.translated_offset for e in searched.entries] == [e.translated_offset for e in report.entries]

    # A member on the secondary blocks apply, and nothing is written.
    member = Consumer(topology.regions["west"].client_config("consumer") | {
        "group.id": group, "client.id": "blocking-member", "auto.offset.reset": "latest"})
    member.subscribe([f"east.{topic}"])
    wait_until(lambda: member.poll(0.2) is None and member.assignment(), 30, "member to join")
    with pytest.raises(StepFailed, match=f"{group}.*blocking-member") as refused:
        apply_translation(topology, report)
    assert "nothing was written" in str(refused.value)
    member.close()
    applied = apply_translation(topology, report)
    wanted = {f"east.{topic}[{e.partition}]": e.translated_offset for e in report.entries}
    assert applied[0].committed == wanted

    # The group resumes on west and processes exactly what it had not processed on east.
    consumer = Consumer(topology.regions["west"].client_config("consumer") | {
        "group.id": group, "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.subscribe([f"east.{topic}"])
    seen, deadline = [], time.monotonic() + 30
    while len(seen) < 263 and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and not message.error():
            seen.append(message.value().decode())
    consumer.close()
    expected = [f"0:{i}" for i in range(200)] + [f"1:{i}" for i in range(137, 200)]
    assert sorted(seen) == sorted(expected) and len(seen) == len(set(seen))

    # Never backwards unless forced.
    commit(topology, "east", group, {(topic, 1): 10})
    with pytest.raises(StepFailed, match="backwards"):
        apply_translation(topology, translate_offsets(topology, groups=[group], topics=[topic]))


def test_identical_payloads_around_the_committed_offset(topology, new_topic, new_group):
    topic, group = new_topic(1), new_group()
    stamp = int(time.time() * 1000)
    rows = [(0, f"u{i}".encode(), b"k", stamp) for i in range(10)]
    rows += [(0, b"same", b"k", stamp)] * 30 + [(0, f"w{i}".encode(), b"k", stamp) for i in range(5)]
    rows += [(0, b"same", b"k", stamp)] * 12  # the tail is identical too
    produce(topology, topic, rows)
    wait_mirrored(topology, topic)
    for offset in (25, 40, 53):
        commit(topology, "east", group, {(topic, 0): offset})
        for hint in ("offset-sync", "timestamp"):
            report = translate_offsets(topology, groups=[group], topics=[topic], hint=hint)
            assert report.entries[0].translated_offset == offset, (hint, report.entries[0])
            assert assert_exact(topology, report, topic) == 1


def test_log_append_time_topic_and_retention_deleted_head(topology, new_topic, new_group):
    topic, group = new_topic(1, config={"message.timestamp.type": "LogAppendTime"}), new_group()
    produce(topology, topic, [(0, f"r{i}".encode(), None, 1000) for i in range(80)])
    wait_mirrored(topology, topic)
    owner_ts = read_timestamps(topology, "east", topic)
    assert owner_ts[0] > 10_000  # the broker replaced the producer's timestamp
    admin = admin_client(topology.regions["east"])
    admin.delete_records([TopicPartition(topic, 0, 30)])[TopicPartition(topic, 0, 30)].result()
    for committed in (12, 55):
        commit(topology, "east", group, {(topic, 0): committed})
        report = translate_offsets(topology, groups=[group], topics=[topic])
        entry = report.entries[0]
        assert entry.method == "exact" and entry.translated_offset == max(committed, 30)
        assert read(topology, "west", entry.mirror_topic, 0, entry.translated_offset) == \
            read(topology, "east", topic, 0, max(committed, 30))
    lag = measure_lag(topology, topics=[topic]).partitions[0]
    assert (lag.owner_start, lag.missing_records, lag.current) == (30, 0, True)


def read_timestamps(topology, region, topic):
    consumer = Consumer(topology.regions[region].client_config("admin") | {"group.id": "baton-test-ts"})
    consumer.assign([TopicPartition(topic, 0, 0)])
    message = None
    while message is None or message.error():
        message = consumer.poll(1)
    consumer.close()
    return [message.timestamp()[1]]


def test_checkpoint_duplicates_beside_exact(topology, new_topic, new_group):
    topic, group = new_topic(1), new_group()
    produce(topology, topic, [(0, f"c{i}".encode()) for i in range(300)])
    commit(topology, "east", group, {(topic, 0): 250})
    wait_mirrored(topology, topic)
    engine = engine_for(topology)
    wait_until(lambda: engine.checkpoints("east", "west").items.get((group, f"east.{topic}", 0)),
               30, "a checkpoint of the group")
    report = translate_offsets(topology, groups=[group], topics=[topic], method="checkpoint")
    entry = report.entries[0]
    redelivered = read(topology, "west", entry.mirror_topic, 0, entry.translated_offset)
    processed = {f"c{i}".encode() for i in range(250)}
    measured = sum(1 for value in redelivered if value in processed)
    assert measured == entry.duplicates_bound and measured > 0  # MM2 translates conservatively
    exact = translate_offsets(topology, groups=[group], topics=[topic]).entries[0]
    assert exact.duplicates_bound == 0
    assert not {v for v in read(topology, "west", exact.mirror_topic, 0, exact.translated_offset)} & processed


class ConnectOffsets:
    """The MM2 source offset Connect last committed for one upstream partition (west's
    baton-connect-offsets), tailed from a start time so the topic's history is not read."""

    def __init__(self, topology, topic, partition, since_ms):
        self.consumer = Consumer(topology.regions["west"].client_config("admin") | {
            "group.id": "baton-test-reader", "enable.auto.commit": False,
            "enable.partition.eof": True})
        name = "baton-connect-offsets"
        parts = self.consumer.list_topics(name, timeout=10).topics[name].partitions
        starts = self.consumer.offsets_for_times(
            [TopicPartition(name, p, since_ms) for p in parts], timeout=10)
        # A partition with nothing newer than since_ms answers -1: read from its end.
        self.consumer.assign([TopicPartition(name, s.partition, s.offset if s.offset >= 0 else
                                             OFFSET_END) for s in starts])
        self.wanted = {"cluster": "east", "topic": topic, "partition": partition}
        self.offset = -1

    def committed(self) -> int:
        """The newest committed upstream offset (-1 before any), read to the topic's end."""
        while (message := self.consumer.poll(0.2)) is not None and (
                not message.error() or message.error().code() == KafkaError._PARTITION_EOF):
            if message.error() or message.value() is None:
                continue
            key = json.loads(message.key())
            if key[1] == self.wanted:
                self.offset = max(self.offset, json.loads(message.value())["offset"])
        return self.offset

    def close(self):
        self.consumer.close()


def test_translation_through_mm2_restart_duplicates(topology, lab, new_topic, new_group):
    topic, group = new_topic(1), new_group()
    since_ms = int(time.time() * 1000) - 1000
    produce(topology, topic, [(0, f"a{i}".encode()) for i in range(100)])
    wait_mirrored(topology, topic)
    stop = threading.Event()

    def keep_producing():
        producer = Producer(topology.regions["east"].client_config("producer"))
        i = 0
        while not stop.is_set():
            producer.produce(topic, value=f"b{i}".encode(), partition=0)
            producer.poll(0)
            i += 1
            time.sleep(0.002)
        producer.flush(10)

    # MM2 copies again, after a worker dies, what it copied after Connect's last offset commit
    # (every 2 s in the lab). Kill only while the mirror holds records past that commit: a kill
    # right after a commit, or while the task was restarting, copies nothing twice (seen once).
    offsets = ConnectOffsets(topology, topic, 0, since_ms)
    consumer = Consumer(topology.regions["west"].client_config("admin") | {
        "group.id": "baton-test-reader"})
    mirror_partition = TopicPartition(f"east.{topic}", 0)
    writer = threading.Thread(target=keep_producing)
    writer.start()
    try:
        def copied_past_commit():
            committed = offsets.committed()
            copied = consumer.get_watermark_offsets(mirror_partition, timeout=10)[1]  # 1:1 before a replay
            return committed >= 100 and copied - 1 > committed + 20

        wait_until(copied_past_commit, 60, "MM2 to copy records past Connect's offset commit",
                   interval=0.05)
        os.kill(lab.processes["connect"].pid(), signal.SIGKILL)  # our own lab's Connect worker only
        wait_until(lambda: lab.processes["connect"].pid() is None, 10, "Connect to exit")
    finally:
        stop.set()
        writer.join()
        offsets.close()
        consumer.close()
    try:
        produce(topology, topic, [(0, f"c{i}".encode()) for i in range(10)])  # Connect is down
        # With Connect down, lag still comes from the brokers; the report says replication is down.
        down = measure_lag(topology, topics=[topic])
        assert down.replication_state == "DOWN" and any("Kafka Connect" in p for p in down.problems)
        assert down.partitions[0].missing_records == down.partitions[0].owner_end - \
            (down.partitions[0].replicated_through + 1) > 0
    finally:
        lab.up()  # the next tests share this lab
    wait_mirrored(topology, topic, timeout=90)
    owner = read(topology, "east", topic, 0, 0)
    mirror = read(topology, "west", f"east.{topic}", 0, 0)
    duplicated = len(mirror) - len(owner)
    assert duplicated > 0, "the worker kill should have made MM2 copy some records twice"
    first_dup = next(i for i, v in enumerate(mirror) if mirror.index(v) != i)
    replay_from = owner.index(mirror[first_dup])
    for committed in (50, replay_from, replay_from + duplicated // 2, len(owner) - 3):
        commit(topology, "east", group, {(topic, 0): committed})
        for hint in ("offset-sync", "timestamp"):
            entry = translate_offsets(topology, groups=[group], topics=[topic], hint=hint).entries[0]
            assert entry.status == "ok" and entry.method == "exact", entry
            resumed = mirror[entry.translated_offset:]
            # 0 re-delivered: nothing the group processed on east; 0 gaps: everything it did not.
            assert not set(resumed) & set(owner[:committed]), (hint, committed, entry)
            assert set(resumed) == set(owner[committed:]), (hint, committed, entry)


def test_owner_unreachable_falls_back_to_checkpoints_and_cli(topology, lab, new_topic, new_group):
    topic, group = new_topic(1), new_group()
    produce(topology, topic, [(0, f"o{i}".encode()) for i in range(150)])
    commit(topology, "east", group, {(topic, 0): 140})
    wait_mirrored(topology, topic)
    engine = engine_for(topology)
    wait_until(lambda: engine.checkpoints("east", "west").items.get((group, f"east.{topic}", 0)),
               30, "a checkpoint of the group")
    config = str(lab.topology_file)
    env = os.environ | {"BATON_CONFIG": config}
    baton = [os.path.join(os.path.dirname(os.sys.executable), "baton")]
    run = subprocess.run(baton + ["offsets", "translate", "-g", group, "-t", topic, "--json"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    entry = json.loads(run.stdout)["entries"][0]
    assert set(entry) >= {"owner_offset", "translated_offset", "method", "duplicates_bound", "missing"}
    assert (entry["owner_offset"], entry["translated_offset"], entry["method"]) == (140, 140, "exact")
    for args in (["lag", "-t", "orders.nope"], ["offsets", "translate", "-g", "orders-nope", "-t", topic]):
        bad = subprocess.run(baton + args, capture_output=True, text=True, env=env, timeout=60)
        assert bad.returncode == 2 and "nope" in bad.stderr
    lab.fault("hang", "east")
    try:
        started = time.monotonic()
        report = translate_offsets(topology, groups=[group], topics=[topic])
        assert not report.owner_reachable and "'east' is unreachable" in report.problems[0]
        entry = report.entries[0]
        assert entry.method in ("checkpoint", "exact-syncs") and entry.owner_offset == 140
        if entry.method == "exact-syncs":  # offset syncs proved the segment (test_translation_hard_cases)
            assert entry.translated_offset == 140
        else:
            assert entry.translated_offset <= 140
        # the group may have consumed past its checkpoint: at most the mirror's records after it
        assert entry.duplicates_bound == 150 - entry.translated_offset
        lag = subprocess.run(baton + ["lag", "-t", topic], capture_output=True, text=True, env=env,
                             timeout=120)
        assert lag.returncode == 1 and "'east'" in lag.stderr and "metadata request" in lag.stderr
        assert time.monotonic() - started < 60
    finally:
        lab.fault("resume", "east")


def test_partition_count_mismatch_and_missing_offset_syncs(topology, new_topic):
    name = f"orders.t-{os.urandom(4).hex()}"
    ensure_topics(admin_client(topology.regions["west"]), {f"east.{name}": 3})
    ensure_topics(admin_client(topology.regions["east"]), {name: 2})
    with pytest.raises(ReplicationError, match=f"{name} has 2 partitions but east.{name} has 3"):
        measure_lag(topology, topics=[name])

    topic = new_topic(1)
    produce(topology, topic, [(0, f"s{i}".encode()) for i in range(20)])
    wait_mirrored(topology, topic)
    # Pretend MM2 keeps offset syncs somewhere else (where there are none): Baton searches instead.
    from baton.replication.mm2.engine import MirrorMakerEngine

    class Elsewhere(MirrorMakerEngine):
        def internal_topics(self, source, target):
            found = super().internal_topics(source, target)
            return found | {"offset-syncs": (found["offset-syncs"][0], "mm2-offset-syncs.nowhere.internal")}

    report = measure_lag(topology, topics=[topic], engine=Elsewhere(topology))
    assert "mm2-offset-syncs.nowhere.internal" in report.problems[0] and "missing" in report.problems[0]
    assert (report.partitions[0].method, report.partitions[0].replicated_through) == ("search", 19)


def test_reverse_direction_starts_and_stops(topology):
    engine = engine_for(topology)
    try:
        status = engine.start("west", "east", wait_seconds=90)
        assert status.state == "RUNNING" and status.source == "west"
        assert {c.name for c in status.components} == set(engine.connector_names("west", "east"))
    finally:
        assert engine.stop("west", "east", wait_seconds=90).state == "STOPPED"
    # Connect rebalances its tasks when a connector stops: the forward flow may show a task
    # UNASSIGNED for a moment, and must settle RUNNING without anyone touching it.
    wait_until(lambda: engine.status("east", "west").state == "RUNNING", 60, "east -> west RUNNING")
