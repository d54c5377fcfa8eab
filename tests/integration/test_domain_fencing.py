"""Domain-scoped fencing on the real lab brokers: a fence on an `orders` domain refuses its
principal's idempotent and transactional producers on its topics, names nothing outside the
domain (read back from the brokers), and never stops another domain's idempotent producer."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from baton.kafka.admin import admin_client, end_offsets, ensure_topics
from baton.kafka.fencing import _text, fence, is_fenced, present_bindings, unfence
from baton.lab import config as lab
from baton.lab.lab import Lab
from baton.steps.recover import _acl_part

pytestmark = pytest.mark.integration


def _deny_acls(admin) -> set[tuple]:
    query = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                             AclOperation.ANY, AclPermissionType.DENY)
    return {(b.restype, b.name, b.resource_pattern_type, b.principal, b.operation)
            for b in admin.describe_acls(query, request_timeout=10).result()}


def _producer(topology, user: str, **extra) -> Producer:
    config = topology.regions["east"].client_config("producer")
    return Producer(config | {"sasl.username": user, "sasl.password": lab.USERS[user],
                              "enable.idempotence": True, "message.timeout.ms": 10000} | extra)


def _write(producer: Producer, topic: str, count: int) -> tuple[int, set]:
    """Produce `count` records; return (delivery reports that succeeded, error codes of the rest)."""
    delivered, errors = [0], set()

    def report(error, _message):
        if error is None:
            delivered[0] += 1
        else:
            errors.add(error.code())

    for n in range(count):
        producer.produce(topic, value=f"r{n}".encode(), on_delivery=report)
    assert producer.flush(20) == 0
    return delivered[0], errors


def _transaction(producer: Producer, topic: str) -> None:
    producer.begin_transaction()
    producer.produce(topic, value=b"in a transaction")
    producer.commit_transaction(15)


def test_a_domain_fence_names_only_the_domain_and_leaves_another_domains_producer_writing(
        domain_topology, new_topic):
    # Tests run on a lab with nothing fenced (restore_lab). A run of the lab's payments domain
    # (owned by west) leaves its standby east fenced on `payments.`: lift that first, since this
    # test writes a payments topic on east to show that only the orders fence applies.
    unfence(next(t for t in Lab().topologies() if t.domain.name == "payments"), "east")
    suffix = uuid.uuid4().hex[:8]
    base = domain_topology()
    orders_topic = base.domain.topics[0]
    # A topic of the domain that its topology does not list: covered by the declared prefix.
    # The transactional ids are inside the lab's `orders-` grant to orders-app.
    late_topic = f"{orders_topic}.late"
    topology = base.model_copy(update={"domain": base.domain.model_copy(update={
        "transactional_id_prefixes": [f"orders-{suffix}-"], "topic_prefixes": [f"{orders_topic}."]})})
    payments_topic = new_topic(partitions=1, prefix="payments.t")
    admin = admin_client(topology.regions["east"])
    ensure_topics(admin, {late_topic: 1})
    transactional = {"transactional.id": f"orders-{suffix}-1", "transaction.timeout.ms": 10000}

    # A transaction opened before the fence, with a record already in the log.
    open_txn = _producer(topology, lab.PRODUCER_USER, **transactional)
    open_txn.init_transactions(15)
    open_txn.begin_transaction()
    open_txn.produce(orders_topic, value=b"before the fence")
    assert open_txn.flush(15) == 0

    before = _deny_acls(admin)
    evidence = fence(topology, "east")
    try:
        added = _deny_acls(admin) - before
        # Read back from the brokers: exactly the domain's topic and transactional-id prefix, for the
        # domain's principal; nothing cluster-wide, nothing for another principal.
        assert added == {
            (ResourceType.TOPIC, orders_topic, ResourcePatternType.LITERAL, "User:orders-app",
             AclOperation.WRITE),
            (ResourceType.TOPIC, f"{orders_topic}.", ResourcePatternType.PREFIXED,
             "User:orders-app", AclOperation.WRITE),
            (ResourceType.TRANSACTIONAL_ID, f"orders-{suffix}-", ResourcePatternType.PREFIXED,
             "User:orders-app", AclOperation.WRITE)}
        assert evidence["changed"] == 3 and is_fenced(topology, "east")

        # The other domain's idempotent producer keeps writing its own topic: every report succeeds.
        payments = _producer(topology, lab.PAYMENTS_PRODUCER_USER)
        assert _write(payments, payments_topic, 50) == (50, set())

        # The fenced principal: an idempotent producer is refused on the domain's topic ...
        refused_writer = _producer(topology, lab.PRODUCER_USER)
        for topic in (orders_topic, late_topic):
            assert _write(refused_writer, topic, 5) == (0, {KafkaError.TOPIC_AUTHORIZATION_FAILED})
        # ... the transaction opened before the fence cannot commit ...
        with pytest.raises(KafkaException) as refused:
            open_txn.commit_transaction(15)
        assert refused.value.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
        # ... a new transactional producer cannot start ...
        with pytest.raises(KafkaException) as refused:
            _producer(topology, lab.PRODUCER_USER, **transactional).init_transactions(15)
        assert refused.value.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
        # ... and one whose id the fence does not name still cannot write the domain's topic.
        other = _producer(topology, lab.PRODUCER_USER, **{"transactional.id": f"orders-x{suffix}"})
        other.init_transactions(15)
        with pytest.raises(KafkaException) as refused:
            _transaction(other, orders_topic)
        assert refused.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    finally:
        unfenced = unfence(topology, "east")  # also when an assertion failed: leave no fence
    assert unfenced["changed"] == 3
    assert present_bindings(topology, "east") == [] and _deny_acls(admin) == before
    writer = _producer(topology, lab.PRODUCER_USER)
    assert [_write(writer, topic, 5) for topic in (orders_topic, late_topic)] == [(5, set())] * 2
    resumed = _producer(topology, lab.PRODUCER_USER, **transactional)
    resumed.init_transactions(15)  # takes over the id: the open transaction is aborted
    _transaction(resumed, orders_topic)
    assert _write(payments, payments_topic, 10) == (10, set())
    assert end_offsets(topology.regions["east"].client_config(), payments_topic, 1) == [60]


def test_a_legacy_cluster_wide_fence_binding_is_found_and_removed(domain_topology):
    topology = domain_topology()
    admin = admin_client(topology.regions["east"])
    # What an earlier Baton version's fence left behind, beside today's fence.
    legacy = AclBinding(ResourceType.BROKER, "kafka-cluster", ResourcePatternType.LITERAL,
                        "User:orders-app", "*", AclOperation.IDEMPOTENT_WRITE, AclPermissionType.DENY)
    for future in admin.create_acls([legacy], request_timeout=10).values():
        future.result()
    assert [b.restype for b in present_bindings(topology, "east")] == [ResourceType.BROKER]
    assert not is_fenced(topology, "east")

    fenced = fence(topology, "east")  # upgrades: today's bindings in, the leftover out
    assert fenced["legacy_removed"] == [
        "DENY IDEMPOTENT_WRITE on broker kafka-cluster for User:orders-app"]
    assert is_fenced(topology, "east")
    assert ResourceType.BROKER not in {b.restype for b in present_bindings(topology, "east")}

    for future in admin.create_acls([legacy], request_timeout=10).values():
        future.result()
    # Compensation's ACL part (recover, unlock, the keeper's retries) removes all three.
    part = _acl_part(topology, "east", lambda _message: None)
    assert (part.status, part.detail) == ("fixed", "removed 3 DENY ACL(s), read back")
    assert present_bindings(topology, "east") == []

    for future in admin.create_acls([legacy], request_timeout=10).values():
        future.result()
    removed = unfence(topology, "east")  # a leftover alone: unfence removes it too
    assert (removed["changed"], removed["legacy_removed"]) == (1, [_text(legacy)])
    assert present_bindings(topology, "east") == []
