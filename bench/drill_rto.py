"""Drill RTO on the lab: planned and unplanned (median of N), per-step breakdown, and the planned
drill with MM2 checkpoint translation instead of Baton's exact translation (duplicates per group).

    BATON_HOME=... BATON_LAB_PORT_BASE=... python bench/drill_rto.py [--runs 3] [--rate 50]

The checkpoint variant replaces the translation method the failover step passes (exact) with
`checkpoint` for the duration of that drill only; everything else runs as shipped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import defaultdict

from baton.lab.lab import Lab


def run(unplanned: bool, rate: float, settle: float, method: str = "exact") -> dict:
    from baton.replication import translation
    from baton.steps import failover as steps
    from flows.drill import drill

    original = steps.translate_offsets
    if method == "checkpoint":
        def checkpoint(*args, **kwargs):
            return translation.translate_offsets(*args, **(kwargs | {"method": "checkpoint"}))
        steps.translate_offsets = checkpoint
    try:
        config = str(Lab().topology_file)
        return drill(config=config, unplanned=unplanned, auto_approve=True, rate=rate, settle_seconds=settle)
    finally:
        steps.translate_offsets = original


def breakdown(cards: list[dict], leg: str) -> dict[str, float]:
    steps = defaultdict(list)
    for card in cards:
        for step in card[leg]["steps"]:
            steps[step["name"]].append(step["seconds"])
    return {name: round(statistics.median(values), 2) for name, values in steps.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--settle", type=float, default=2)
    parser.add_argument("--checkpoint-runs", type=int, default=1)
    args = parser.parse_args()
    Lab().up()
    results = {"nproc": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "rate": args.rate}
    for variant, unplanned in (("planned", False), ("unplanned", True)):
        cards = [run(unplanned, args.rate, args.settle) for _ in range(args.runs)]
        results[variant] = {
            leg: {"rto_seconds": [c[leg]["rto_seconds"] for c in cards],
                  "rto_median": statistics.median(c[leg]["rto_seconds"] for c in cards),
                  "write_gap_median": statistics.median(c[leg]["write_gap_seconds"] for c in cards),
                  "steps_median": breakdown(cards, leg)}
            for leg in ("failover", "failback")}
        results[variant]["outcomes"] = [c["outcome"] for c in cards]
        results[variant]["consumers"] = [
            {g: {"missing": f["missing"], "duplicates": f["duplicates"]} for g, f in c["consumers"].items()}
            for c in cards]
        if unplanned:
            results[variant]["predicted_vs_lost"] = [
                (c["prediction"]["records"], c["divergent"]["lost"]["count"]) for c in cards]
    cards = [run(False, args.rate, args.settle, "checkpoint") for _ in range(args.checkpoint_runs)]
    results["planned_checkpoint"] = {
        "consumers": [{g: {leg: c[leg]["consumers"][g]["duplicates"] for leg in ("failover", "failback")}
                       for g in c["consumers"]} for c in cards],
        "outcomes": [c["outcome"] for c in cards]}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
