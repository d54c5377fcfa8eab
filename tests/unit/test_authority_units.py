"""Authority records and the guarded clients' choice of region, as plain data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from baton.authority.record import Authority, State
from baton.client import choose_writable
from baton.errors import WriteRefused

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


def authority(epoch: int, owner: str, state: State = State.ACTIVE, lease: float | None = 5) -> Authority:
    expires = NOW + timedelta(seconds=lease) if lease is not None else None
    return Authority(domain="orders", epoch=epoch, owner=owner, state=state, lease_expires_at=expires,
                     changed_at=NOW - timedelta(seconds=60), changed_by="test")


def test_the_owner_with_a_valid_lease_is_writable():
    seen = {"east": authority(4, "east"), "west": authority(4, "east")}
    assert choose_writable("orders", seen, NOW) == ("east", seen["east"])


def test_a_lapsed_lease_refuses_and_says_so():
    seen = {"east": authority(4, "east", lease=-1.5)}
    with pytest.raises(WriteRefused, match=r"east says epoch 4: east ACTIVE, lease lapsed 1\.5s ago"):
        choose_writable("orders", seen, NOW)


def test_fenced_refuses_everywhere():
    seen = {"east": authority(5, "east", State.FENCED, lease=None),
            "west": authority(5, "east", State.FENCED)}
    with pytest.raises(WriteRefused, match="east says epoch 5: east FENCED; west says epoch 5: east FENCED"):
        choose_writable("orders", seen, NOW)


def test_a_stale_epoch_never_wins_even_with_a_valid_lease():
    # East was cut off at epoch 4 and still holds a lease; west already owns epoch 6.
    seen = {"east": authority(4, "east"), "west": authority(6, "west")}
    assert choose_writable("orders", seen, NOW)[0] == "west"
    # West's copy ahead of its own hand-over (epoch 6 FENCED): east's epoch 4 is still stale.
    seen = {"east": authority(4, "east"), "west": authority(6, "east", State.FENCED, lease=None)}
    with pytest.raises(WriteRefused):
        choose_writable("orders", seen, NOW)


def test_a_region_only_trusts_its_own_copy():
    # West has heard east is the owner; that does not make west writable, and east is unknown.
    with pytest.raises(WriteRefused, match="west says epoch 3: east ACTIVE"):
        choose_writable("orders", {"west": authority(3, "east")}, NOW)


def test_newer_than_orders_by_epoch_then_lease():
    old, renewed = authority(3, "east", lease=5), authority(3, "east", lease=9)
    fenced = authority(4, "east", State.FENCED, lease=None)
    assert renewed.newer_than(old) and not old.newer_than(renewed)
    assert fenced.newer_than(renewed) and not renewed.newer_than(fenced)
    assert old.newer_than(None)


def test_authority_round_trips_through_the_control_topic_format():
    record = authority(7, "west")
    assert Authority.model_validate_json(record.model_dump_json()) == record
