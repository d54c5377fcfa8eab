"""Unplanned drill on the lab, N times: write gap, duplicates per group, and with the owner dead
how many records exact-from-offset-syncs saved against MM2's checkpoints (same run, same groups).

    BATON_HOME=... BATON_LAB_PORT_BASE=... python bench/unplanned_translation.py [--runs 5]

Starts its own Prefect server (baton.lab.prefect_server). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from baton.audit.store import AuditStore
from baton.lab.lab import Lab
from baton.lab.prefect_server import start_prefect_server


def translation_of(store: AuditStore, run_id: str) -> dict:
    """Methods and checkpoint-vs-exact distance from the failover's translate step evidence."""
    step = next(s for s in store.run(run_id).steps if s.name == "translate_consumer_offsets")
    evidence = json.loads(step.evidence)
    entries = evidence.get("translation", {}).get("entries", [])
    return {
        "methods": sorted({e["method"] for e in entries}),
        "entries": len(entries),
        "exact_syncs": sum(e["method"] == "exact-syncs" for e in entries),
        "checkpoint": sum(e["method"] == "checkpoint" for e in entries),
        # records MM2's checkpoint would have re-delivered where the syncs proved the position
        "checkpoint_extra_duplicates": sum(e["translated_offset"] - e["checkpoint_offset"] for e in entries
                                           if e.get("checkpoint_offset") is not None),
        "owner_declared_unreachable": bool(evidence.get("owner_declared_unreachable")),
        "stated_duplicates_bound": evidence.get("summary", {}).get("duplicates_bound_by_group"),
        "step_seconds": {s.name: round((s.ended_at - s.started_at).total_seconds(), 2)
                         for s in store.run(run_id).steps if s.ended_at},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--settle", type=float, default=2)
    args = parser.parse_args()
    lab = Lab()
    lab.up()
    server = start_prefect_server()
    os.environ["PREFECT_API_URL"] = server.url
    from flows.drill import drill

    store = AuditStore.for_topology(lab.topology()[0])
    runs = []
    try:
        for _ in range(args.runs):
            started = time.monotonic()
            card = drill(config=str(lab.topology_file), unplanned=True, auto_approve=True, rate=args.rate,
                         settle_seconds=args.settle)
            runs.append({
                "run_id": card["runs"]["failover"], "passed": card["passed"], "outcome": card["outcome"],
                "wall_seconds": round(time.monotonic() - started, 1),
                "write_gap_seconds": card["failover"]["write_gap_seconds"],
                "rto_seconds": card["failover"]["rto_seconds"],
                "duplicates": {g: f["duplicates"] for g, f in card["consumers"].items()},
                "failover_duplicates": {g: f["duplicates"]
                                        for g, f in (card["failover"] or {}).get("consumers", {}).items()},
                "missing": {g: f["missing"] for g, f in card["consumers"].items()},
                "translation": translation_of(store, card["runs"]["failover"]),
            })
            print(json.dumps(runs[-1]), flush=True)
    finally:
        server.stop()
    gaps = [r["write_gap_seconds"] for r in runs if r["write_gap_seconds"] is not None]
    total_dups = [sum(r["duplicates"].values()) for r in runs]
    print(json.dumps({
        "nproc": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "runs": len(runs),
        "passed": sum(r["passed"] for r in runs),
        "write_gap_median": statistics.median(gaps) if gaps else None,
        "duplicates_median": statistics.median(total_dups),
        "checkpoint_extra_duplicates_median": statistics.median(
            r["translation"]["checkpoint_extra_duplicates"] for r in runs),
        "runs_detail": runs}, indent=2))


if __name__ == "__main__":
    main()
