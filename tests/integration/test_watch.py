"""The watch on the real lab: samples, the unplanned at-risk statement, readiness, metrics, alerts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from baton.audit import AuditStore
from baton.replication import engine_for
from baton.settings import load_topology
from baton.watch.store import SampleStore
from tests.conftest import wait_until
from tests.integration.runbook_support import commit, make_domain, produce, restore_lab, wait_mirrored

pytestmark = pytest.mark.integration

BATON = str(Path(sys.executable).with_name("baton"))


def with_watch_settings(path: Path, **watch) -> Path:
    document = yaml.safe_load(path.read_text())
    document["watch"] = document.get("watch", {}) | watch
    path.write_text(yaml.safe_dump(document))
    return path


@contextmanager
def watch_process(*configs: Path, extra: tuple[str, ...] = (), log: Path | None = None):
    """`baton watch` as its own process (as in production); stopped by its pid."""
    arguments = [BATON, "watch", *[a for c in configs for a in ("--config", str(c))], *extra]
    output = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    process = subprocess.Popen(arguments, stdout=output, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        if log:
            output.close()


def samples_after(store: SampleStore, domain: str, after: float) -> list:
    from sqlmodel import select

    from baton.audit.models import WatchSample

    with store.audit.transaction() as session:
        rows = session.exec(select(WatchSample).where(WatchSample.domain == domain)
                            .order_by(WatchSample.taken_at)).all()
    return [r for r in rows if r.taken_at.timestamp() > after and r.records_at_risk is not None]


def test_unplanned_check_lag_states_the_newest_watch_sample_of_the_flow(lab, topology, tmp_path, prefect_api):
    from flows.failover import failover

    path = with_watch_settings(make_domain(topology, tmp_path), interval_seconds=2)
    t = load_topology(path)
    topic = t.domain.topics[0]
    store = SampleStore(AuditStore.for_topology(t))
    watch_log = tmp_path / "watch.log"
    try:
        produce(t, "east", topic, 30, 3, "base")
        for group in t.domain.consumer_groups:
            commit(t, "east", group, topic, {0: 5, 1: 5, 2: 5})
        wait_mirrored(t, topic, 30)
        engine = engine_for(t)
        wait_until(lambda: len([k for k in engine.checkpoints("east", "west").items
                                if k[0] in t.domain.consumer_groups]) == 6, 60, "MM2 checkpoints")
        with watch_process(path, extra=("--no-alerts",), log=watch_log):
            lab.fault("stop", "replication")
            at_risk = produce(t, "east", topic, 47, 3, "risk", who="producer")
            produced_at = time.time()
            # Two samples taken after the last record was acknowledged, both measuring all of them.
            wait_until(lambda: [s.records_at_risk for s in samples_after(store, t.domain.name, produced_at)]
                       [-2:] == [len(at_risk)] * 2, 60, "two watch samples counting the records at risk")
            lab.fault("kill", "east")
            summary = failover(config=str(path), unplanned=True, reason="east killed by the watch test",
                               auto_approve=True)
        assert summary["status"] == "succeeded" and summary["owner_after"] == "west"
        steps = {s.name: json.loads(s.evidence) for s in store.audit.run(summary["run_id"]).steps}
        stated = steps["check_lag"]["data_at_risk"]
        assert stated["records"] == len(at_risk) == 47
        assert stated["flow"] == "east -> west" and stated["source"] == "watch"
        assert f"{len(at_risk)} records / " in stated["statement"]
        assert f"(sample age {stated['sample_age_seconds']:.1f} s)" in stated["statement"]
        assert stated["sample_age_seconds"] >= 0
        # The statement matches the sample as stored (not an earlier run's check_lag).
        newest = store.newest(t.domain.name, "east", "west", measured=True)
        assert newest.row.taken_at.isoformat() == stated["as_of"]
    finally:
        if lab.status()["regions"]["east"]["process"] != "running":
            lab.fault("restart", "east")
        restore_lab(t)
        wait_until(lambda: lab.status()["replication"]["state"] == "RUNNING", 90, "replication RUNNING")


def test_unplanned_check_lag_says_plainly_when_no_sample_exists(lab, topology, tmp_path, prefect_api):
    """Without a watch there is no statement to make: the evidence says so (no reverse-flow guess)."""
    from baton.watch.store import data_at_risk

    t = load_topology(make_domain(topology, tmp_path))
    stated = data_at_risk(AuditStore.for_topology(t), t, "east", "west")
    assert stated["records"] is None and stated["fresh"] is False
    assert "no watch sample of east -> west" in stated["statement"]
