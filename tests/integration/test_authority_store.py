"""Authority compare-and-set on real SQLite and a real PostgreSQL server (no Kafka needed)."""

from __future__ import annotations

import threading

import pytest

from baton.audit import AuditStore
from baton.authority import AuthorityStore, State
from baton.errors import StaleEpoch, UsageError

pytestmark = pytest.mark.integration


def test_concurrent_changes_from_the_same_epoch_exactly_one_wins(audit_url):
    store = AuthorityStore(AuditStore(audit_url))
    assert store.initialize("orders", "east", lease_ttl=30, changed_by="test").epoch == 1
    writers = 8
    start = threading.Barrier(writers)
    outcomes: list[tuple[str, object]] = []

    def change(i: int) -> None:
        # Each writer has its own store (own connections), as separate runbook workers would.
        mine = AuthorityStore(AuditStore(audit_url))
        start.wait()
        try:
            won = mine.change("orders", 1, "west" if i % 2 else "east", State.FENCED,
                              changed_by=f"writer-{i}", run_id=f"run-{i}")
            outcomes.append(("won", won))
        except StaleEpoch as e:
            outcomes.append(("lost", str(e)))

    threads = [threading.Thread(target=change, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    winners = [o for kind, o in outcomes if kind == "won"]
    losers = [o for kind, o in outcomes if kind == "lost"]
    assert len(winners) == 1 and len(losers) == writers - 1
    winner = winners[0]
    assert winner.epoch == 2
    for message in losers:
        assert "was based on epoch 1, but the current epoch is 2" in message
        assert f"changed by {winner.changed_by}" in message and "Nothing was changed" in message
    current = store.current("orders")
    assert (current.epoch, current.owner, current.changed_by) == (2, winner.owner, winner.changed_by)
    assert [(h.epoch, h.changed_by) for h in store.history("orders")] == [(1, "test"), (2, winner.changed_by)]
    assert store.audit.verify().ok


def test_a_stale_writer_loses_and_changes_nothing(audit_url):
    store = AuthorityStore(AuditStore(audit_url))
    store.initialize("orders", "east", lease_ttl=30)
    fenced = store.change("orders", 1, "east", "FENCED", run_id="failover-1", changed_by="alice")
    moved = store.change("orders", 2, "west", State.ACTIVE, lease_ttl=30, run_id="failover-1")
    assert (fenced.epoch, fenced.state, fenced.lease_expires_at) == (2, State.FENCED, None)
    assert (moved.epoch, moved.owner, moved.state) == (3, "west", State.ACTIVE)
    assert moved.lease_left() > 0

    with pytest.raises(StaleEpoch, match="based on epoch 1, but the current epoch is 3 .west ACTIVE"):
        store.change("orders", 1, "east", State.ACTIVE, lease_ttl=30)
    with pytest.raises(StaleEpoch, match="based on epoch 9, but the current epoch is 3"):
        store.change("orders", 9, "east", State.FENCED)
    with pytest.raises(StaleEpoch, match="lease renewal for east .* based on epoch 1"):
        store.renew("orders", 1, "east", 30)
    with pytest.raises(UsageError, match="ACTIVE or FENCED, not 'OPEN'"):
        store.change("orders", 3, "east", "OPEN")
    with pytest.raises(UsageError, match="needs a lease"):
        store.change("orders", 3, "east", State.ACTIVE)
    with pytest.raises(UsageError, match="no authority record yet"):
        store.change("payments", 1, "east", State.FENCED)

    assert store.current("orders") == moved
    assert [h.epoch for h in store.history("orders")] == [1, 2, 3]
    renewed = store.renew("orders", 3, "west", 60)
    assert renewed.epoch == 3 and renewed.lease_expires_at > moved.lease_expires_at
    assert [h.epoch for h in store.history("orders")] == [1, 2, 3]  # renewals are not epochs
    assert store.audit.verify().ok


def test_initialize_is_idempotent(audit_url):
    store = AuthorityStore(AuditStore(audit_url))
    first = store.initialize("orders", "east", lease_ttl=30, changed_by="a")
    again = store.initialize("orders", "west", lease_ttl=30, changed_by="b")
    assert again == first and again.owner == "east"
    assert len(store.history("orders")) == 1
