"""Split ownership on the lab: `orders` owned by east, `payments` owned by west, replication both
ways, each domain with its own MM2 connectors. A domain fails over and back on its own while the
other keeps writing and replicating (measured, not assumed)."""

from __future__ import annotations

import time

import pytest

from baton.audit import AuditStore
from baton.authority import authority_store
from baton.kafka.fencing import unfence
from baton.replication import engine_for
from tests.conftest import wait_until
from tests.integration.runbook_support import (
    DomainTraffic,
    lab_domain,
    produce,
    wait_holds_acked,
    wait_mm2_steady,
)

pytestmark = pytest.mark.integration


def authority_of(t):
    return authority_store(t, AuditStore.for_topology(t)).current(t.domain.name)


def restore_payments(lab) -> None:
    """payments owned by west again, nothing fenced, replication west -> east only."""
    from flows.failover import failover

    t = lab_domain(lab, "payments")
    current = authority_of(t)
    if current is not None and current.owner != "west" and current.state.value == "ACTIVE":
        failover(config=str(lab.topology_file), domain="payments", auto_approve=True)
    for region in t.regions:
        unfence(t, region)
    engine = engine_for(t)
    engine.stop("east", "west")
    engine.start("west", "east")


@pytest.fixture
def split_lab(lab, prefect_api):
    yield lab
    restore_payments(lab)


def test_payments_fails_over_and_back_while_orders_keeps_writing_on_east(split_lab):
    from flows.failover import failover

    lab = split_lab
    payments, orders = lab_domain(lab, "payments"), lab_domain(lab, "orders")
    config = str(lab.topology_file)
    topic = payments.domain.topics[0]
    before, orders_before = authority_of(payments), authority_of(orders)
    assert (before.owner, orders_before.owner) == ("west", "east")

    wait_mm2_steady(orders)
    with DomainTraffic(orders, "east") as traffic:
        wait_until(lambda: traffic.acked, 15, "a first orders write acknowledged on east")
        started = time.monotonic()
        over = failover(config=config, domain="payments", auto_approve=True)
        # East era of payments: its app writes on east, and west (reprotected) receives it.
        east_era = produce(payments, "east", topic, 30, 3, "east-era")
        back = failover(config=config, domain="payments", auto_approve=True)
        ended = time.monotonic()

    assert (over["status"], over["owner_before"], over["owner_after"]) == ("succeeded", "west", "east")
    assert (back["status"], back["owner_before"], back["owner_after"]) == ("succeeded", "east", "west")
    after, orders_after = authority_of(payments), authority_of(orders)
    assert (after.owner, after.state.value, after.epoch) == ("west", "ACTIVE", before.epoch + 4)
    # orders never moved: same owner, same epoch, its east -> west flow RUNNING at every sample,
    # and its producer on east had every write acknowledged while payments moved twice.
    assert (orders_after.owner, orders_after.epoch) == ("east", orders_before.epoch)
    assert traffic.errors == []
    assert traffic.acked_between(started, ended) > 0
    assert traffic.states_between(started, ended) == {"RUNNING"}, \
        traffic.not_running_between(started, ended)
    assert len([at for at, _ in traffic.states if started <= at <= ended]) >= 4
    wait_holds_acked(orders, "east", traffic.acked)
    # payments' own connectors: west -> east again, the reverse flow stopped; the east-era writes
    # reached west's mirror (the planned failover to east reprotected west).
    assert engine_for(payments).status("west", "east").state == "RUNNING"
    assert engine_for(payments).status("east", "west").state == "STOPPED"
    wait_holds_acked(payments, "east", [(0.0, p, o) for p, o, _ in east_era])
