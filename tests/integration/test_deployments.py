"""Deployments on a real Prefect server with a real process worker: the drill runs end to end,
its gates answered through the Prefect API, its evidence in the audit database."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from baton.audit import AuditStore
from baton.settings import load_topology
from tests.integration.runbook_support import (
    commit,
    make_domain,
    produce,
    restore_lab,
    resume,
    wait_paused_at,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def read(coroutine_factory):
    from prefect.client.orchestration import get_client

    async def go():
        async with get_client() as client:
            return await coroutine_factory(client)

    return asyncio.run(go())


def test_drill_deployment_runs_on_a_worker_and_gates_are_answered_through_the_api(
        topology, tmp_path, prefect_api):
    from prefect.deployments import run_deployment

    from flows.deploy import deploy

    registered = {row["deployment"]: row for row in deploy()}
    assert set(registered) == {"failover", "failback", "reprotect", "evacuate", "drill"}
    assert registered["drill"]["cron"] == "0 9 1 * *"
    drill = read(lambda c: c.read_deployment_by_name("drill/drill"))
    assert {"config", "auto_approve", "divergent_policy"} <= set(drill.parameter_openapi_schema["properties"])
    assert [(s.schedule.cron, s.schedule.timezone) for s in drill.schedules] == [("0 9 1 * *", "UTC")]
    failover = read(lambda c: c.read_deployment_by_name("failover/failover"))
    assert {"unplanned", "reason", "override_lag"} <= set(failover.parameter_openapi_schema["properties"])
    reprotect = read(lambda c: c.read_deployment_by_name("reprotect/reprotect"))
    assert {"divergent_policy", "reason"} <= set(reprotect.parameter_openapi_schema["properties"])

    path = make_domain(topology, tmp_path)
    t = load_topology(path)
    topic = t.domain.topics[0]
    produce(t, "east", topic, 90, 3, "east")
    for group in t.domain.consumer_groups:
        commit(t, "east", group, topic, {0: 5, 1: 5, 2: 5})

    worker = subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "baton", "--type", "process"],
        cwd=ROOT, env=os.environ | {"PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_API_URL": prefect_api},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        run = run_deployment("drill/drill", parameters={"config": str(path), "operator": "drill-bot",
                                                          "settle_seconds": 2},
                             timeout=0)
        # A planned hand-over asks once, before its fence.
        for flow_name, gate, approver in [("failover", "approve-failover", "alice"),
                                          ("failback", "approve-failback", "bob")]:
            paused = wait_paused_at(flow_name, gate, timeout=180, config=path)
            assert resume(paused, decision="approve", approver=approver) == "SetStateStatus.ACCEPT"
        deadline = time.monotonic() + 180
        while True:
            state = read(lambda c: c.read_flow_run(run.id)).state
            if state.is_final() or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert state.is_completed(), state
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(5)
        except subprocess.TimeoutExpired:  # the worker's shutdown is not under test: after a flow
            os.killpg(worker.pid, signal.SIGKILL)  # run it outlived SIGTERM by 60 s in CI
            worker.wait(30)
        restore_lab(t)

    store = AuditStore.for_topology(t)
    runs = store.runs(t.domain.name)
    assert sorted(r.runbook for r in runs) == ["failback", "failover"]
    for summary in runs:
        view = store.run(summary.id)
        assert view.status == "succeeded" and view.run.trigger == "deployment"
        assert view.run.started_by == "unverified: drill-bot"  # typed in a deployment form
        approver = {"failover": "alice", "failback": "bob"}[view.run.runbook]
        assert {(a.approver, a.channel) for a in view.approvals} == {(approver, "prefect-ui")}
        last = {"failover": "verify_standby_current", "failback": "reconcile"}[view.run.runbook]
        assert view.steps[-1].name == last and view.steps[-1].status == "succeeded"
    assert store.verify().ok


def test_every_task_run_reaches_the_server_with_the_recorder_batching(prefect_api):
    """The servers Baton starts record task-run events in batches (baton/lab/config.py): none may
    be lost or left behind, whether a batch fills or the 1 s flush sends it."""
    from prefect import flow, task
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    @task
    def step(i: int) -> int:
        return i

    @flow
    def many_steps() -> str:
        for i in range(7):
            step(i)
        from prefect.runtime import flow_run
        return flow_run.id

    run_id = many_steps()
    deadline = time.monotonic() + 60
    while True:
        runs = read(lambda c: c.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))))
        if len(runs) == 7 and all(r.state is not None and r.state.is_completed() for r in runs):
            break
        assert time.monotonic() < deadline, f"task runs on the server after 60 s: {runs}"
        time.sleep(0.2)
