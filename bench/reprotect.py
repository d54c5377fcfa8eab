"""Reprotect after a planned failover: how long the old owner is unprotected, per run.

On the running lab, a seeded domain (bench/failover_steps.py, 6 partitions), `--runs` times:
planned failover (the flow, gates auto-approved), whose last steps reprotect east; then
`--records` records written to west right after the flow returns, and the time until east's
mirror `west.<topic>` holds all of them (read from east's end offsets every 0.1 s); then a
failback, whose start_reverse_replication should pass straight through. Figures: the reprotect
steps' durations from the audit DB, the exposure window (switch_authority end ->
verify_standby_current end: east receives nothing), the catch-up time and the failback's
start_reverse_replication.

    .venv/bin/python bench/reprotect.py [--runs 3] [--records 500]
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

from bench.failover_steps import seeded_domain  # noqa: E402
from tests.integration.runbook_support import produce, restore_lab, wait_mirrored  # noqa: E402

REPROTECT_STEPS = ("find_divergent_tail", "handle_divergent_tail", "start_reverse_replication",
                   "verify_standby_current")


def one_round(path: Path, records: int, written: int) -> dict:
    from baton.audit import AuditStore
    from baton.settings import load_topology
    from flows.failback import failback
    from flows.failover import failover

    t = load_topology(path)
    audit = AuditStore.for_topology(t)
    summary = failover(config=str(path), auto_approve=True)
    assert summary["status"] == "succeeded", summary
    steps = {s.name: s for s in audit.run(summary["run_id"]).steps}
    topic = t.domain.topics[0]
    produce(t, "west", topic, records, 6, "bench")  # seeded_domain(..., 6, ...): 6 partitions
    started = time.monotonic()
    wait_mirrored(t, topic, written + records, timeout=120, source="west")
    catch_up = time.monotonic() - started
    back = failback(config=str(path), auto_approve=True)
    assert back["status"] == "succeeded", back
    reverse = next(s for s in audit.run(back["run_id"]).steps if s.name == "start_reverse_replication")
    return {
        "steps_s": {n: (steps[n].ended_at - steps[n].started_at).total_seconds() for n in REPROTECT_STEPS},
        "exposure_s": (steps["verify_standby_current"].ended_at - steps["switch_authority"].ended_at)
        .total_seconds(),
        "catch_up_s": catch_up,
        "failback_reverse_s": (reverse.ended_at - reverse.started_at).total_seconds(),
        "failback_reverse_state_before": json.loads(reverse.evidence)["state_before"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--records", type=int, default=500)
    args = parser.parse_args()

    from baton.lab.lab import Lab
    from baton.lab.prefect_server import start_prefect_server
    from baton.settings import load_topology

    lab = Lab(progress=lambda m: None)
    lab.up()
    server = start_prefect_server()
    os.environ["PREFECT_API_URL"] = server.url
    from prefect.settings import PREFECT_API_URL, temporary_settings

    workdir = Path(tempfile.mkdtemp(prefix="baton-bench-reprotect-"))
    rounds = []
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.url}):
            path = seeded_domain(lab.topology()[0], 6, workdir)
            for n in range(args.runs):
                rounds.append(one_round(path, args.records, n * args.records))
                print(json.dumps(rounds[-1]), flush=True)
            restore_lab(load_topology(path))
    finally:
        server.stop()
    median = {
        "reprotect_steps_s": {n: round(statistics.median(r["steps_s"][n] for r in rounds), 2)
                              for n in REPROTECT_STEPS},
        "exposure_s": round(statistics.median(r["exposure_s"] for r in rounds), 2),
        "catch_up_s": round(statistics.median(r["catch_up_s"] for r in rounds), 2),
        "failback_reverse_s": round(statistics.median(r["failback_reverse_s"] for r in rounds), 2),
        "failback_reverse_state_before": sorted({r["failback_reverse_state_before"] for r in rounds}),
    }
    print(json.dumps({"median": median, "runs": args.runs, "records": args.records,
                      "cores": os.cpu_count()}))


if __name__ == "__main__":
    main()
