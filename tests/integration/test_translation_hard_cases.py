"""Translation hard cases on the real lab: every answer is an offset that is right, or a named refusal.

The offset-syncs conditions are built on the real MM2 topic: compaction is reproduced by
deleting every sync and writing back only the newest one per partition (what log compaction
of the offset-syncs topic, keyed by topic-partition, leaves).
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from baton.errors import RegionUnreachable
from baton.kafka.admin import admin_client
from baton.kafka.reading import committed_offsets, watermarks
from baton.replication import engine_for
from baton.replication.currency import verify_currency
from baton.replication.lag import measure_lag
from baton.replication.mm2.records import OffsetSync, encode_offset_sync
from baton.replication.translation import translate_offsets
from tests.conftest import wait_until

pytestmark = pytest.mark.integration


def produce(topology, topic, rows, region="east"):
    """rows: (partition, value[, key[, timestamp_ms]]); batched so 150k records take seconds."""
    producer = Producer(topology.regions[region].client_config("producer") | {
        "linger.ms": 50, "batch.num.messages": 10000, "queue.buffering.max.messages": 500000,
        "compression.type": "lz4"})
    for row in rows:
        partition, value, *rest = row
        key = rest[0] if rest else None
        kwargs = {"timestamp": rest[1]} if len(rest) > 1 else {}
        while True:
            try:
                producer.produce(topic, value=value, key=key, partition=partition, **kwargs)
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(60) == 0


def commit(topology, region, group, offsets):
    admin = admin_client(topology.regions[region])
    partitions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
    admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, partitions)])[group].result()


def value_at(topology, region, topic, partition, offset):
    """The value of the first data record at or after `offset`."""
    consumer = Consumer(topology.regions[region].client_config("admin") | {
        "group.id": "baton-test-reader", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                return message.offset(), message.value()
        raise AssertionError(f"no record at {topic}[{partition}] {offset} on {region}")
    finally:
        consumer.close()


def wait_mirrored(topology, topic, timeout=180):
    def current():
        try:
            return verify_currency(topology, topics=[topic]).current
        except Exception:  # the mirror may not exist yet
            return False
    wait_until(current, timeout, f"{topic} to be mirrored and current", interval=2)


def compact_offset_syncs(topology):
    """Leave only the newest offset sync of every partition, as log compaction of the topic would."""
    engine = engine_for(topology)
    region, syncs_topic = engine.internal_topics("east", "west")["offset-syncs"]
    admin = admin_client(topology.regions[region])
    newest = {tp: found[-1] for tp, found in engine.offset_hints("east", "west").items.items()}

    def policy(value):
        resource = ConfigResource(ResourceType.TOPIC, syncs_topic, incremental_configs=[
            ConfigEntry("cleanup.policy", value, incremental_operation=AlterConfigOpType.SET)])
        for future in admin.incremental_alter_configs([resource]).values():
            future.result()

    consumer = Consumer(topology.regions[region].client_config("admin") | {"group.id": "baton-test-reader"})
    try:
        end = consumer.get_watermark_offsets(TopicPartition(syncs_topic, 0), timeout=10)[1]
    finally:
        consumer.close()
    policy("compact,delete")  # DeleteRecords needs the delete policy

    def deleted() -> bool:
        # The broker applies a topic's new config to its log after acknowledging it: a DeleteRecords
        # sent at once was refused with POLICY_VIOLATION, even once DescribeConfigs showed it.
        try:
            for future in admin.delete_records([TopicPartition(syncs_topic, 0, end)]).values():
                future.result()
        except KafkaException as e:
            if e.args[0].code() != KafkaError.POLICY_VIOLATION:
                raise
            return False
        return True

    try:
        wait_until(deleted, 30, f"DeleteRecords on {syncs_topic} allowed by cleanup.policy=compact,delete",
                   interval=0.2)
    finally:
        policy("compact")
    producer = Producer(topology.regions[region].client_config("admin"))
    for hint in newest.values():
        key, value = encode_offset_sync(OffsetSync(hint.topic, hint.partition, hint.upstream_offset,
                                                   hint.downstream_offset))
        producer.produce(syncs_topic, key=key, value=value, partition=0)
    assert producer.flush(30) == 0


def baton_cli(lab, *args):
    env = os.environ | {"BATON_CONFIG": str(lab.topology_file)}
    baton = os.path.join(os.path.dirname(os.sys.executable), "baton")
    return subprocess.run([baton, *args], capture_output=True, text=True, env=env, timeout=180)


def test_large_partition_with_compacted_offset_syncs_never_answers_null_ok(topology, lab, new_topic,
                                                                          new_group):
    """Issue item 1: 150k records, only the newest sync left; every entry is right or refused."""
    topic = new_topic(2)
    size, same_time = 150_000, int(time.time() * 1000) - 3_600_000
    produce(topology, topic, [(0, b"r-%d" % i) for i in range(size)]
            + [(1, b"same", b"k", same_time)] * 6000)  # identical, longer than the longest run
    wait_mirrored(topology, topic)
    engine = engine_for(topology)
    # MM2 writes the last record's sync at its next offset commit (a "delayed" sync).
    wait_until(lambda: engine.offset_hints("east", "west").items[(topic, 0)][-1].upstream_offset == size - 1,
               60, "MM2's sync of the last record")
    compact_offset_syncs(topology)
    hints = engine.offset_hints("east", "west").items
    assert [h.upstream_offset for h in hints.get((topic, 0), [])] == [size - 1]  # measured precondition

    positions = [10, 19_999, 25_000, 75_000, 102_514, 120_001, 149_995]
    groups = {}
    for offset in positions:
        groups[offset] = new_group()
        commit(topology, "east", groups[offset], {(topic, 0): offset})
    stuck = new_group()
    commit(topology, "east", stuck, {(topic, 1): 100})

    report = translate_offsets(topology, groups=[*groups.values(), stuck], topics=[topic])
    by_group = {(e.group, e.partition): e for e in report.entries}
    assert len(report.entries) == len(positions) + 1  # one entry per requested group-partition
    for offset, group in groups.items():
        entry = by_group[(group, 0)]
        assert entry.status == "ok" and entry.translated_offset is not None, entry
        assert value_at(topology, "west", entry.mirror_topic, 0, entry.translated_offset)[1] == \
            value_at(topology, "east", topic, 0, offset)[1]
    refused = by_group[(stuck, 1)]
    assert refused.translated_offset is None and refused.status == "ambiguous", refused
    assert "matches mirror offsets" in refused.note
    assert report.as_dict()["untranslated"] == [refused.where()]

    good = baton_cli(lab, "offsets", "translate", "-g", groups[75_000], "-t", topic, "--json")
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["entries"][0]["translated_offset"] is not None
    bad = baton_cli(lab, "offsets", "translate", "-g", stuck, "-t", topic, "--json")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    entry = json.loads(bad.stdout)["entries"][0]
    assert (entry["status"], entry["translated_offset"]) == ("ambiguous", None)
    apply = baton_cli(lab, "offsets", "translate", "-g", stuck, "-t", topic, "--apply")
    assert apply.returncode == 1
    message = " ".join(apply.stderr.split())
    assert f"east.{topic}[1] ambiguous" in message and "(ok)" not in message, message
    west = admin_client(topology.regions["west"])
    assert committed_offsets(west, stuck, "west") == {}  # nothing was written


def _answered(read):
    """(value,) once the read succeeds; None while a just-resumed region does not answer."""
    try:
        return (read(),)
    except RegionUnreachable:
        return None


def remaining_duplicates(topology, entry):
    """Records the group would see again from the translated position: mirror rest - owner rest."""
    owner_tp, mirror_tp = (entry.topic, entry.partition), (entry.mirror_topic, entry.partition)
    owner_end = watermarks(admin_client(topology.regions["east"]), [owner_tp], "east")[owner_tp].end
    mirror_end = watermarks(admin_client(topology.regions["west"]), [mirror_tp], "west")[mirror_tp].end
    return (mirror_end - entry.translated_offset) - (owner_end - entry.owner_offset)


def test_republished_identical_records_are_never_matched_to_the_first_copy(topology, new_topic, new_group):
    """Issue item 6: 100 records, 25,000 filler, the same 100 again; group 10 into the second copy."""
    topic, group = new_topic(1), new_group()
    old = int(time.time() * 1000) - 2 * 86_400_000  # a re-publish job keeps the event timestamps
    batch = [(0, b"v-%d" % i, b"k-%d" % i, old + i) for i in range(100)]
    filler = [(0, b"f-%d" % i) for i in range(25_000)]
    produce(topology, topic, batch + filler + batch + [(0, b"tail-%d" % i) for i in range(50)])
    second_copy = 100 + 25_000
    committed = second_copy + 10
    wait_mirrored(topology, topic)
    owner = admin_client(topology.regions["east"])
    # retention moved the owner's log start to the group's position
    for future in owner.delete_records([TopicPartition(topic, 0, committed)]).values():
        future.result()
    commit(topology, "east", group, {(topic, 0): committed})
    hints = engine_for(topology).offset_hints("east", "west").items[(topic, 0)]
    assert max(h.upstream_offset for h in hints if h.upstream_offset <= committed) < committed

    entry = translate_offsets(topology, groups=[group], topics=[topic]).entries[0]
    assert entry.status == "ok", entry
    assert remaining_duplicates(topology, entry) == 0, entry

    compact_offset_syncs(topology)  # now the newest sync at or below the commit is gone as well
    left = engine_for(topology).offset_hints("east", "west").items[(topic, 0)]
    assert all(h.upstream_offset > committed for h in left)
    entry = translate_offsets(topology, groups=[group], topics=[topic]).entries[0]
    assert entry.usable or entry.status == "ambiguous", entry
    if entry.usable:
        assert remaining_duplicates(topology, entry) == 0, entry


def read_values(topology, region, topic, partition, committed_only=True):
    """Every value of a partition, as a read_committed (or read_uncommitted) consumer sees it."""
    consumer = Consumer(topology.regions[region].client_config("admin") | {
        "group.id": "baton-test-reader", "enable.auto.commit": False, "enable.partition.eof": True,
        "isolation.level": "read_committed" if committed_only else "read_uncommitted"})
    try:
        consumer.assign([TopicPartition(topic, partition, 0)])
        values, deadline = [], time.monotonic() + 30
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                break  # partition EOF
            values.append(message.value())
        return values
    finally:
        consumer.close()


def test_transactions_markers_aborted_and_open(topology, new_topic, new_group):
    """Issue items 2-3: currency ignores markers, aborted records are not mirrored, translation
    at a marker or inside an aborted transaction lands on the next committed record."""
    engine_for(topology).start("east", "west")  # the connectors as this code configures them
    topic = new_topic(1)
    producer = Producer(topology.regions["east"].client_config("admin") | {"transactional.id": f"tx-{topic}"})
    producer.init_transactions(30)

    def transaction(prefix, count, commit_it=True):
        producer.begin_transaction()
        for i in range(count):
            producer.produce(topic, value=b"%s-%d" % (prefix, i), partition=0)
        producer.flush(30)
        if commit_it:
            producer.commit_transaction(30)
        elif commit_it is False:
            producer.abort_transaction(30)

    transaction(b"c1", 10)  # offsets 0..9, commit marker 10
    transaction(b"a1", 10, False)  # 11..20 aborted, abort marker 21
    transaction(b"c2", 5)  # 22..26, commit marker 27 (the owner's last offset)
    wait_mirrored(topology, topic, timeout=60)
    mirror = f"east.{topic}"
    assert read_values(topology, "west", mirror, 0, committed_only=False) == \
        read_values(topology, "east", topic, 0)  # no aborted record reached the mirror
    lag = measure_lag(topology, topics=[topic]).partitions[0]
    assert (lag.missing_records, lag.owner_end) == (0, 28) and "markers" in lag.note, lag

    groups = {offset: new_group() for offset in (10, 15, 21, 27)}
    for offset, group in groups.items():
        commit(topology, "east", group, {(topic, 0): offset})
    report = translate_offsets(topology, groups=list(groups.values()), topics=[topic])
    assert not report.untranslated, report.refusal_text()
    mirror_end = lag.mirror_end
    for entry in report.entries:
        if entry.owner_offset == 27:  # nothing left to consume on the owner
            assert entry.translated_offset == mirror_end
            continue
        assert value_at(topology, "west", mirror, 0, entry.translated_offset)[1] == \
            value_at(topology, "east", topic, 0, entry.owner_offset)[1], entry

    transaction(b"open", 5, None)  # offsets 28..32 stay in an open transaction
    try:
        inside = new_group()
        commit(topology, "east", inside, {(topic, 0): 30})
        started = time.monotonic()
        lag = measure_lag(topology, topics=[topic]).partitions[0]
        assert lag.current and lag.owner_stable_end == 28 and "open transaction" in lag.note, lag
        report = translate_offsets(topology, groups=[groups[15], inside], topics=[topic])
        assert time.monotonic() - started < 30
        by_group = {e.group: e for e in report.entries}
        assert by_group[groups[15]].usable
        assert by_group[inside].status == "open-transaction" and "28..32" in by_group[inside].note
    finally:
        producer.abort_transaction(30)


def test_apply_deletes_a_stale_commit_where_the_owner_has_none(topology, lab, new_topic, new_group):
    """Issue item 4: no commit on the owner for a partition -> no commit on the secondary after --apply."""
    topic, group = new_topic(2), new_group()
    produce(topology, topic, [(p, b"v-%d-%d" % (p, i)) for p in (0, 1) for i in range(20)])
    wait_mirrored(topology, topic)
    commit(topology, "east", group, {(topic, 0): 12})
    mirror = f"east.{topic}"
    commit(topology, "west", group, {(mirror, 0): 3, (mirror, 1): 7})  # an older, stale position

    run = baton_cli(lab, "offsets", "translate", "-g", group, "-t", topic, "--apply", "--json")
    assert run.returncode == 0, run.stderr
    applied = json.loads(run.stdout)["applied"][0]
    assert applied["deleted"] == {f"{mirror}[1]": 7}
    west = committed_offsets(admin_client(topology.regions["west"]), group, "west")
    assert west == {(mirror, 0): 12}
    # on the secondary it now starts partition 1 by its reset policy, exactly as on the owner
    assert (mirror, 1) not in west and (topic, 1) not in committed_offsets(
        admin_client(topology.regions["east"]), group, "east")


def test_failback_keeps_the_returning_regions_own_position_in_the_common_prefix(topology, new_topic,
                                                                                new_group):
    """Issue item 5: committed 10 on east before the outage, 1 on west (a lagging checkpoint):
    failing back must not move it to 1 on east, re-delivering 9 records per partition."""
    from baton.replication.upstream import keep_returning_positions, translate_to_upstream

    topic, group = new_topic(2), new_group()
    produce(topology, topic, [(p, b"v-%d-%d" % (p, i)) for p in (0, 1) for i in range(30)])
    wait_mirrored(topology, topic)
    mirror = f"east.{topic}"
    commit(topology, "east", group, {(topic, 0): 10, (topic, 1): 10})
    commit(topology, "west", group, {(mirror, 0): 1, (mirror, 1): 20})  # p1 consumed further on west
    entries = translate_to_upstream(topology, mirror_region="west", upstream_region="east",
                                    groups=[group], pairs={mirror: topic})
    by_partition = {e.partition: e for e in entries}
    assert (by_partition[0].translated_offset, by_partition[1].translated_offset) == (1, 20)
    kept = keep_returning_positions(topology, entries, returning_region="east")
    assert [(k["partition"], k["translated"], k["kept"]) for k in kept] == [(f"{topic}[0]", 1, 10)]
    assert "common prefix" in kept[0]["why"]
    assert by_partition[0].usable and by_partition[0].translated_offset == 10  # the later of the two
    assert by_partition[1].translated_offset == 20
    # what the group would consume on east from there equals what it had not processed there
    assert value_at(topology, "east", topic, 0, by_partition[0].translated_offset)[1] == b"v-0-10"


def test_owner_unreachable_translates_exactly_where_offset_syncs_prove_it(topology, lab, new_topic,
                                                                         new_group):
    """Issue item 6: with the owner dead, consecutive syncs with equal deltas prove the position."""
    topic, group = new_topic(1), new_group()
    produce(topology, topic, [(0, b"v-%d" % i) for i in range(1000)])
    wait_mirrored(topology, topic)
    committed = 537
    commit(topology, "east", group, {(topic, 0): committed})
    engine = engine_for(topology)
    mirror = f"east.{topic}"
    checkpoint = wait_until(lambda: (c := engine.checkpoints("east", "west").items.get((group, mirror, 0)))
                            and c.upstream_offset == committed and c, 60, "MM2's checkpoint of the group")
    lab.fault("hang", "east")
    try:
        report = translate_offsets(topology, groups=[group], topics=[topic])
    finally:
        lab.fault("resume", "east")
    assert not report.owner_reachable
    entry = report.entries[0]
    assert entry.method == "exact-syncs" and entry.usable, entry
    assert value_at(topology, "west", mirror, 0, entry.translated_offset)[1] == \
        value_at(topology, "east", topic, 0, committed)[1]
    # east was just resumed: its partitions may have no leader for a moment on a busy machine
    duplicates = wait_until(lambda: _answered(lambda: remaining_duplicates(topology, entry)), 120,
                            "east to answer after it was resumed")
    assert duplicates == (0,)
    # the engine's own answer would re-deliver what the syncs proved was already processed
    assert checkpoint.downstream_offset <= entry.translated_offset
