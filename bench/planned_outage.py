"""Planned failover write outage with a real approval delay: the old flow against the new one.

In one process on the running lab, per size (6 and 100 partitions by default):
- old: the previous runbook order (approve-failover, fence, currency, translation,
  approve-switch INSIDE the fenced window, switch) with the fixed quiesce
  (thresholds.fence_proof=fixed-quiesce, quiesce_seconds 3 as in the drill);
- new: the shipped runbook (one decision before the fence, conditions checked inside it,
  fence proven by ACL read-back + equal end-offset reads).
Every gate is answered through the Prefect API `--delay` seconds after it paused (a person
reading the request). A guarded producer writes every 20 ms throughout; the write gap is the
longest time between two acknowledged records. Automated time = run wall time minus gate waits;
it includes the planned run's reprotect steps (find_divergent_tail .. verify_standby_current,
after reconcile), also reported alone (reprotect_s), and run_plan start -> reconcile end minus
gates (run_plan_to_reconcile_end_s), and the flow call -> reconcile end minus gates
(call_to_reconcile_end_s: the failover proper, what the issue's "automated part" measured
before reprotect became the planned run's tail).
Each failover is followed by an auto-approved failback (not timed).

    .venv/bin/python bench/planned_outage.py [--runs 2] [--sizes 6,100] [--delay 10]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.failover_steps import fail_back, seeded_domain  # noqa: E402
from tests.integration.runbook_support import paused_run, restore_lab, resume  # noqa: E402

REPROTECT_STEPS = ("find_divergent_tail", "handle_divergent_tail", "start_reverse_replication",
                   "verify_standby_current")


def old_runbook():
    from runbooks import FAILOVER
    from runbooks.model import Runbook

    steps = tuple(replace(s, when="") if s.name == "approve-switch" else s
                  for s in FAILOVER.steps if s.name != "check_switch_conditions")
    return Runbook(name="failover", title="Failover (old order)", purpose="bench baseline", steps=steps)


def old_flow():
    from prefect import flow

    from flows.runner import execute, open_run

    @flow(name="failover-old-order", retries=0)
    def failover_old_order(config: str) -> dict:
        runbook = old_runbook()
        return execute(runbook, open_run(runbook, config=config, trigger="bench"))

    return failover_old_order


class Approver(threading.Thread):
    """Answers every pause of `flow_name` for `config`, `delay` seconds after it appeared."""

    def __init__(self, flow_name: str, config: Path, delay: float):
        super().__init__(daemon=True)
        self.flow_name, self.config, self.delay = flow_name, config, delay
        self.stop, self.answered = threading.Event(), []

    def run(self):
        while not self.stop.is_set():
            try:
                run_id, key = paused_run(self.flow_name, timeout=1, config=self.config)
            except AssertionError:
                continue
            if key in self.answered:
                continue
            time.sleep(self.delay)
            resume(run_id, decision="approve", reason="bench", approver="bench-approver")
            self.answered.append(key)


class Writer(threading.Thread):
    """A guarded producer writing every 20 ms; acknowledged send times."""

    def __init__(self, topology, topic: str):
        from baton.client import GuardedProducer

        super().__init__(daemon=True)
        self.producer, self.topic = GuardedProducer(topology, poll_interval=0.1), topic
        self.stop, self.acked = threading.Event(), []

    def run(self):
        from baton.errors import WriteRefused

        while not self.stop.is_set():
            sent = time.monotonic()
            with contextlib.suppress(WriteRefused):  # refused while fenced: the gap shows it
                self.producer.produce(self.topic, value=b"b",
                                      on_delivery=lambda e, m, s=sent: None if e else self.acked.append(s))
            self.producer.poll(0)
            time.sleep(0.02)

    def gap(self, start: float, end: float) -> float:
        times = sorted(s for s in self.acked if start <= s <= end)
        return max(b - a for a, b in zip(times, times[1:], strict=False))


def keeper_for(topology):
    from baton.audit import AuditStore
    from baton.authority import authority_store, initialize_authority
    from baton.authority.keeper import LeaseKeeper

    store = authority_store(topology, AuditStore.for_topology(topology))
    initialize_authority(topology, store=store)
    keeper = LeaseKeeper(topology, store, interval=0.5)
    stop = threading.Event()
    threading.Thread(target=keeper.run, args=(stop,), daemon=True).start()
    return stop


def one_failover(variant: str, path: Path, topology, delay: float) -> dict:
    from baton.audit import AuditStore
    from flows.failover import failover

    flow_name = "failover" if variant == "new" else "failover-old-order"
    approver = Approver(flow_name, path, delay)
    approver.start()
    writer = Writer(topology, topology.domain.topics[0])
    writer.start()
    time.sleep(2)  # writes flowing on the owner before the run starts
    started, started_wall = time.monotonic(), datetime.now(UTC)
    try:
        summary = failover(config=str(path)) if variant == "new" else old_flow()(config=str(path))
    finally:
        approver.stop.set()
    ended, ended_wall = time.monotonic(), datetime.now(UTC)
    time.sleep(2)  # writes flowing on the new owner
    writer.stop.set()
    writer.join(10)
    writer.producer.close(10)
    assert summary["status"] == "succeeded", summary
    view = AuditStore.for_topology(topology).run(summary["run_id"])
    gates = sum((s.ended_at - s.started_at).total_seconds()
                for s in view.steps if s.name.startswith("approve-"))
    steps = {s.name: round((s.ended_at - s.started_at).total_seconds(), 3) for s in view.steps}
    by_name = {s.name: s for s in view.steps}
    fenced = (by_name["switch_authority"].ended_at
              - by_name["stop_primary_producers"].started_at).total_seconds()
    inside = ("stop_primary_producers", "verify_secondary_currency", "translate_consumer_offsets",
              "check_switch_conditions", "approve-switch", "switch_authority")
    # Inside the automated part (the flow's wall time): reported beside it, never subtracted.
    reprotect = sum(steps.get(name, 0) for name in REPROTECT_STEPS)
    automated = (ended - started) - gates
    plan, reconciled = by_name["run_plan"], by_name["reconcile"]
    to_reconcile_end = (reconciled.ended_at - plan.started_at).total_seconds() - gates
    # The failover proper, as the operator waits for it: the flow call until reconcile has read
    # every postcondition back (write authority moved, replication old -> new STOPPED), minus gates.
    call_to_reconcile = (_aware(reconciled.ended_at) - started_wall).total_seconds() - gates
    return {"write_gap_s": writer.gap(started - 2, ended + 2), "automated_s": automated,
            "reprotect_s": reprotect, "run_plan_to_reconcile_end_s": to_reconcile_end,
            "call_to_reconcile_end_s": call_to_reconcile,
            # Prefect's flow start, task runs and artifacts, and the runner between steps
            "flow_start_s": (_aware(view.run.started_at) - started_wall).total_seconds(),
            "after_last_step_s": (ended_wall - _aware(view.steps[-1].ended_at)).total_seconds(),
            "outside_steps_s": automated - sum(s for n, s in steps.items() if not n.startswith("approve-")),
            "fenced_s": fenced, "between_steps_s": fenced - sum(steps.get(name, 0) for name in inside),
            "gate_wait_s": gates, "gates": len(approver.answered), "steps": steps}


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def retried(call, *args, attempts: int = 3):
    """A run refused before its fence (check_lag on a just-seeded domain) or a failback refused by a
    broker still electing a new mirror's leader returns to the safe state: run it again, said aloud."""
    for attempt in range(1, attempts + 1):
        try:
            return call(*args)
        except Exception as e:  # noqa: BLE001 - the bench reports and retries any refused run
            if attempt == attempts:
                raise
            print(json.dumps({"retry": attempt, "error": str(e)[:300]}), flush=True)
            time.sleep(2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--sizes", default="6,100")
    parser.add_argument("--delay", type=float, default=10.0)
    parser.add_argument("--variants", default="old,new", help="which flows to run: old,new")
    args = parser.parse_args()

    import yaml

    from baton.lab.lab import Lab
    from baton.lab.prefect_server import start_prefect_server
    from baton.settings import load_topology

    lab = Lab(progress=lambda m: None)
    lab.up()
    lab_topology = lab.topology()[0]
    external = os.environ.get("BATON_TEST_PREFECT_URL")
    server = None if external else start_prefect_server()
    url = external or server.url
    os.environ["PREFECT_API_URL"] = url
    from prefect.settings import PREFECT_API_URL, temporary_settings

    workdir = Path(tempfile.mkdtemp(prefix="baton-bench-outage-"))
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            for size in (int(s) for s in args.sizes.split(",")):
                for variant in args.variants.split(","):
                    path = seeded_domain(lab_topology, size, workdir)
                    if variant == "old":
                        document = yaml.safe_load(path.read_text())
                        document["thresholds"] |= {"fence_proof": "fixed-quiesce", "quiesce_seconds": 3}
                        path.write_text(yaml.safe_dump(document))
                    topology = load_topology(path)
                    stop_keeper = keeper_for(topology)
                    results = []
                    try:
                        for _ in range(args.runs):
                            results.append(retried(one_failover, variant, path, topology, args.delay))
                            retried(fail_back, path)
                    finally:
                        stop_keeper.set()
                        restore_lab(topology)
                    print(json.dumps({
                        "partitions": size, "variant": variant, "approval_delay_s": args.delay,
                        "runs": len(results),
                        "write_gap_s": round(statistics.median(r["write_gap_s"] for r in results), 2),
                        "automated_s": round(statistics.median(r["automated_s"] for r in results), 2),
                        "gate_wait_s": round(statistics.median(r["gate_wait_s"] for r in results), 2),
                        "write_gaps_s": [round(r["write_gap_s"], 2) for r in results],
                        "automated_runs_s": [round(r["automated_s"], 2) for r in results],
                        "call_to_reconcile_end_s": [round(r["call_to_reconcile_end_s"], 2) for r in results],
                        "fenced_s": [round(r["fenced_s"], 2) for r in results],
                        "reprotect_s": [round(r["reprotect_s"], 2) for r in results],
                        "outside_steps_s": [round(r["outside_steps_s"], 2) for r in results],
                        "flow_start_s": [round(r["flow_start_s"], 2) for r in results],
                        "after_last_step_s": [round(r["after_last_step_s"], 2) for r in results],
                        "run_plan_to_reconcile_end_s": [round(r["run_plan_to_reconcile_end_s"], 2)
                                                        for r in results],
                        "between_steps_s": [round(r["between_steps_s"], 2) for r in results],
                        "steps_s": results[-1]["steps"]}), flush=True)
    finally:
        if server is not None:
            server.stop()
    print(json.dumps({"runs": args.runs, "cores": os.cpu_count()}))


if __name__ == "__main__":
    main()
