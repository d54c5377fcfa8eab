"""The automated part of a planned failover, per step, at 6 and 100 partitions.

For each size, in one process on the running lab:
- baseline: the runbook's step functions called directly (no Prefect), gates auto-approved;
- Prefect: the `failover` flow with the same steps as Prefect tasks, gates auto-approved.
Each failover is followed by a failback (not timed) so the next run starts from east.
Automated time = wall time minus gate waits (auto-approved gates wait ~0 s; their
recording time is counted). Prefect overhead per step = (Prefect wall - baseline wall) / steps.

    .venv/bin/python bench/failover_steps.py [--runs 3] [--sizes 6,100]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.runbook_support import commit, make_domain, produce, restore_lab, wait_mirrored  # noqa: E402


def seeded_domain(lab_topology, size: int, workdir: Path) -> Path:
    from baton.settings import load_topology

    path = make_domain(lab_topology, workdir, partitions=size, quiesce_seconds=1)
    t = load_topology(path)
    topic = t.domain.topics[0]
    produce(t, "east", topic, 20 * size, size, "bench")
    for group in t.domain.consumer_groups:
        commit(t, "east", group, topic, {p: 5 for p in range(size)})
    wait_mirrored(t, topic, 20 * size, timeout=120)
    return path


def baseline_failover(path: Path) -> dict:
    """The same steps without Prefect: open the run, call each step, record evidence."""
    from baton.steps import failback, reprotect, switch_conditions
    from baton.steps import failover as steps
    from flows.gates import request_approval
    from flows.runner import open_run
    from runbooks import FAILOVER
    from runbooks.model import Kind

    timings: dict[str, float] = {}
    started = time.monotonic()
    ctx = open_run(FAILOVER, config=str(path), trigger="bench")
    for step in FAILOVER.steps:
        if not ctx.option(step.when):
            continue
        t0 = time.monotonic()
        if step.kind is Kind.GATE:
            request_approval(ctx, step, {}, auto_approve=True)
        else:
            with ctx.audit.step(ctx.run_id, step.name) as record:
                # the planned failover's reprotect steps live in failback.py and reprotect.py
                module = next(m for m in (steps, switch_conditions, failback, reprotect)
                              if hasattr(m, step.name))
                record.evidence = getattr(module, step.name)(ctx)
            ctx.state[step.name] = record.evidence
        timings[step.name] = time.monotonic() - t0
    ctx.audit.finish_run(ctx.run_id, "succeeded")
    return {"wall": time.monotonic() - started, "steps": timings}


def prefect_failover(path: Path) -> dict:
    from baton.audit import AuditStore
    from baton.settings import load_topology
    from flows.failover import failover

    started = time.monotonic()
    summary = failover(config=str(path), auto_approve=True)
    wall = time.monotonic() - started
    assert summary["status"] == "succeeded", summary
    view = AuditStore.for_topology(load_topology(path)).run(summary["run_id"])
    steps = {s.name: (s.ended_at - s.started_at).total_seconds() for s in view.steps if s.name != "run_plan"}
    return {"wall": wall, "steps": steps}


def fail_back(path: Path) -> None:
    from flows.failback import failback

    assert failback(config=str(path), auto_approve=True)["status"] == "succeeded"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="6,100")
    args = parser.parse_args()

    from baton.lab.lab import Lab
    from baton.lab.prefect_server import start_prefect_server
    from baton.settings import load_topology

    lab = Lab(progress=lambda m: None)
    lab.up()
    lab_topology = lab.topology()[0]
    server = start_prefect_server()
    os.environ["PREFECT_API_URL"] = server.url
    from prefect.settings import PREFECT_API_URL, temporary_settings

    results = {}
    workdir = Path(tempfile.mkdtemp(prefix="baton-bench-failover-"))
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.url}):
            for size in (int(s) for s in args.sizes.split(",")):
                path = seeded_domain(lab_topology, size, workdir)
                base, flow = [], []
                for _ in range(args.runs):
                    base.append(baseline_failover(path))
                    fail_back(path)
                    flow.append(prefect_failover(path))
                    fail_back(path)
                restore_lab(load_topology(path))
                names = list(flow[0]["steps"])
                gates = [n for n in names if n.startswith("approve-")]
                automated = [f["wall"] - sum(f["steps"][g] for g in gates) for f in flow]
                base_walls = [b["wall"] for b in base]
                per_step = {n: round(statistics.median(f["steps"][n] for f in flow), 3) for n in names}
                flow_wall = statistics.median(f["wall"] for f in flow)
                overhead = (flow_wall - statistics.median(base_walls)) / len(names)
                results[size] = {
                    "automated_s": round(statistics.median(automated), 2),
                    "baseline_wall_s": round(statistics.median(base_walls), 2),
                    "prefect_wall_s": round(statistics.median(f["wall"] for f in flow), 2),
                    "prefect_over_baseline": round(statistics.median(f["wall"] for f in flow)
                                                   / statistics.median(base_walls), 2),
                    "prefect_overhead_per_step_s": round(overhead, 3),
                    "steps_s": per_step,
                }
                print(json.dumps({"partitions": size} | results[size]), flush=True)
    finally:
        server.stop()
    print(json.dumps({"runs": args.runs, "cores": os.cpu_count()}))


if __name__ == "__main__":
    main()
