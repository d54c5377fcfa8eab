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
from baton.drill.scorecard import stated_duplicates_bound
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
        # after an operator's resolution the applied positions' bounds are the statement
        "stated_duplicates_bound": stated_duplicates_bound(
            {s.name: json.loads(s.evidence) for s in store.run(run_id).steps}),
        "step_seconds": {s.name: round((s.ended_at - s.started_at).total_seconds(), 2)
                         for s in store.run(run_id).steps if s.ended_at},
    }


def lagging_groups(lab: Lab, groups: int = 6, records: int = 3000) -> dict:
    """Owner dead, groups that lag: duplicates from MM2's checkpoints vs exact-from-syncs, measured.

    Each group commits at a random offset of a fresh 3-partition topic; once MM2 checkpointed it the
    owner is hung (SIGSTOP), translation runs, the owner resumes and each answer is checked by
    counting what the group would consume on each side from its position.
    """
    import random
    import uuid

    from confluent_kafka import ConsumerGroupTopicPartitions, Producer, TopicPartition

    from baton.errors import BatonError
    from baton.kafka.admin import admin_client, ensure_topics
    from baton.kafka.reading import watermarks
    from baton.replication import engine_for
    from baton.replication.currency import verify_currency
    from baton.replication.translation import translate_offsets

    topology = lab.topology()[0]
    topic = f"orders.bench-{uuid.uuid4().hex[:8]}"
    east = admin_client(topology.regions["east"])
    ensure_topics(east, {topic: 3})
    producer = Producer(topology.regions["east"].client_config("producer") | {"linger.ms": 20})
    for p in range(3):
        for i in range(records):
            producer.produce(topic, value=b"%d-%d" % (p, i), partition=p)
    producer.flush(60)
    deadline = time.monotonic() + 120

    def current():
        try:
            return verify_currency(topology, topics=[topic]).current
        except BatonError:  # the mirror may not exist yet
            return False
    while not current() and time.monotonic() < deadline:
        time.sleep(1)
    wanted = {f"orders-bench-{uuid.uuid4().hex[:6]}": {p: random.randrange(1, records) for p in range(3)}
              for _ in range(groups)}
    for group, offsets in wanted.items():
        partitions = [TopicPartition(topic, p, o) for p, o in offsets.items()]
        request = [ConsumerGroupTopicPartitions(group, partitions)]
        east.alter_consumer_group_offsets(request)[group].result()
    engine, mirror = engine_for(topology), f"east.{topic}"

    def checkpointed():
        items = engine.checkpoints("east", "west").items
        return all(items.get((g, mirror, p)) and items[(g, mirror, p)].upstream_offset == o
                   for g, offsets in wanted.items() for p, o in offsets.items())
    while not checkpointed() and time.monotonic() < deadline + 60:
        time.sleep(1)
    lab.fault("hang", "east")
    try:
        started = time.monotonic()
        report = translate_offsets(topology, groups=list(wanted), topics=[topic])
        seconds = time.monotonic() - started
    finally:
        lab.fault("resume", "east")
    owner_ends = watermarks(east, [(topic, p) for p in range(3)], "east")
    mirror_ends = watermarks(admin_client(topology.regions["west"]), [(mirror, p) for p in range(3)], "west")
    exact_dups = checkpoint_dups = 0
    methods = {}
    for e in report.entries:
        methods[e.method] = methods.get(e.method, 0) + 1
        owner_rest = owner_ends[(topic, e.partition)].end - e.owner_offset
        exact_dups += (mirror_ends[(mirror, e.partition)].end - e.translated_offset) - owner_rest
        checkpoint = e.checkpoint_offset if e.checkpoint_offset is not None else e.translated_offset
        checkpoint_dups += (mirror_ends[(mirror, e.partition)].end - checkpoint) - owner_rest
    return {"entries": len(report.entries), "methods": methods, "translate_seconds": round(seconds, 2),
            "baton_duplicates": exact_dups, "checkpoint_duplicates": checkpoint_dups}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--settle", type=float, default=2)
    parser.add_argument("--lagging-only", action="store_true", help="only the lagging-groups comparison")
    args = parser.parse_args()
    if args.lagging_only:
        lab = Lab()
        lab.up()
        print(json.dumps(lagging_groups(lab), indent=2))
        return
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
