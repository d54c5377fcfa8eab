"""The evidence hash: what it covers, as plain data (the database tests cover the chain)."""

from __future__ import annotations

from datetime import UTC, datetime

from baton.audit.chain import content, row_hash
from baton.audit.models import Approval, Step

AT = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def step(**changes) -> Step:
    values = dict(id=3, run_id="drill-1", position=2, name="check_lag", status="succeeded",
                  started_at=AT, ended_at=AT, region="west", epoch=4, evidence='{"lag": 0}', error=None,
                  seq=7, recorded_at=AT, prev_hash="a" * 64, hash="")
    return Step(**(values | changes))


def test_the_hash_covers_every_column_but_itself_and_names_the_table():
    covered = content(step())
    assert "hash" not in covered and covered["_table"] == "steps"
    assert set(covered) - {"_table"} == {c.name for c in Step.__table__.columns} - {"hash"}


def test_any_change_changes_the_hash():
    original = row_hash(step())
    assert row_hash(step(hash="ignored")) == original  # the stored hash is not part of it
    for change in ({"evidence": '{"lag": 1}'}, {"seq": 8}, {"prev_hash": "b" * 64}, {"id": 4},
                   {"status": "failed"}, {"epoch": None}, {"recorded_at": AT.replace(second=1)}):
        assert row_hash(step(**change)) != original, change


def test_same_values_in_another_table_hash_differently():
    approval = Approval(id=3, run_id="drill-1", gate="g", decision="approved", approver="u", channel="cli",
                        identity_verified=False, comment="", decided_at=AT, seq=7, recorded_at=AT,
                        prev_hash="a" * 64, hash="")
    assert content(approval)["_table"] == "approvals"
    assert row_hash(approval) != row_hash(step())
