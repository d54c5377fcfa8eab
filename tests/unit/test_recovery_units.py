"""Plain-data checks of the recovery outcome and of guarded write refusals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from baton.authority.record import Authority, State
from baton.client import choose_writable
from baton.errors import WriteRefused
from baton.steps.recover import Part, Recovery

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def authority(epoch: int, owner: str, state: State, lease: float | None = 5) -> Authority:
    return Authority(domain="d", epoch=epoch, owner=owner, state=state, changed_at=NOW, changed_by="t",
                     lease_expires_at=None if lease is None else NOW + timedelta(seconds=lease))


@pytest.mark.parametrize(("seen", "reason"), [
    ({"east": authority(4, "east", State.FENCED, None)}, "fenced"),
    ({"east": authority(4, "east", State.ACTIVE, -1.5)}, "lease lapsed"),
    ({"west": authority(3, "east", State.ACTIVE)}, "no authority"),
])
def test_write_refused_names_its_reason(seen, reason):
    with pytest.raises(WriteRefused) as refused:
        choose_writable("d", seen, NOW)
    assert refused.value.reason == reason


def test_a_recovery_with_pending_parts_is_not_success_and_names_the_command():
    recovery = Recovery("run-1", "failover", "east", "west", [
        Part("acls on east", "pending", "east did not answer", where="east"),
        Part("replication east -> west", "fixed", "restarted"),
        Part("authority", "pending", "stays FENCED")], authority="epoch 2: east FENCED")
    assert not recovery.converged
    assert [p["part"] for p in recovery.as_dict()["pending"]] == ["acls on east", "authority"]
    text = recovery.statement()
    assert text.startswith("NOT yet in the last safe state (authority epoch 2: east FENCED)")
    assert "`baton recover --run run-1`" in text


def test_a_converged_recovery_lists_only_what_it_changed():
    recovery = Recovery("run-1", "failover", "east", "west", [
        Part("acls on east", "ok", "none"),
        Part("replication east -> west", "fixed", "was STOPPED", action="restarted replication east -> west"),
        Part("authority", "ok", "ACTIVE")], authority="epoch 3: east ACTIVE")
    assert recovery.converged and recovery.as_dict()["actions"] == ["restarted replication east -> west"]
    assert recovery.statement().startswith("back in the last safe state")


def test_malformed_json_section_variable_exits_2_naming_it():
    import os
    import subprocess
    import sys

    env = os.environ | {"BATON_THRESHOLDS": '{"quiesce_seconds": 3'}
    result = subprocess.run([sys.executable, "-m", "baton", "config", "check", "--config",
                             "deployments/example-topology.yaml"], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "environment variable BATON_THRESHOLDS could not be parsed" in result.stderr
