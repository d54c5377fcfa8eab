"""Lab start-up: `baton lab up` (warm jar cache, fresh data dirs) until a record produced on
east is consumed from its mirror on west. Median of 3 runs.

    .venv/bin/python bench/lab_startup.py [--runs 3]

Runs in its own BATON_HOME and port range (BATON_LAB_PORT_BASE=22000), so a running lab
is left alone. Prints one JSON line per run and a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def first_record_round_trip(topology) -> float:
    """Produce one record on east, return when it is read from west (seconds taken)."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    started = time.monotonic()
    marker = uuid.uuid4().hex.encode()
    producer = Producer(topology.regions["east"].client_config("producer"))
    producer.produce("orders.events", value=marker, partition=0)
    producer.flush(30)
    mirror = topology.replication.remote_topic("orders.events", "east")
    consumer = Consumer(topology.regions["west"].client_config("consumer")
                        | {"group.id": "orders-bench", "enable.auto.commit": False})
    consumer.assign([TopicPartition(mirror, 0, 0)])
    try:
        while time.monotonic() - started < 120:
            message = consumer.poll(0.2)
            if message is not None and not message.error() and message.value() == marker:
                return time.monotonic() - started
    finally:
        consumer.close()
    raise RuntimeError("the record never reached west within 120 s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="baton-bench-"))
    env = os.environ | {"BATON_HOME": str(home), "BATON_LAB_PORT_BASE": "22000"}
    os.environ.update(env)
    baton = [sys.executable, "-m", "baton"]
    # Warm the jar cache once (the figure is for a warm cache, as after the first run).
    from baton.lab.jars import classpath

    classpath(home)
    from baton.lab.lab import Lab

    totals = []
    try:
        for run in range(args.runs):
            started = time.monotonic()
            subprocess.run([*baton, "lab", "up"], check=True, env=env, cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            up_seconds = time.monotonic() - started
            trip = first_record_round_trip(Lab(home=home / "lab").topology()[0])
            total = time.monotonic() - started
            totals.append(total)
            print(json.dumps({"run": run + 1, "lab_up_s": round(up_seconds, 1),
                              "first_record_s": round(trip, 1), "total_s": round(total, 1)}))
            subprocess.run([*baton, "lab", "down", "--purge"], check=True, env=env, cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        subprocess.run([*baton, "lab", "down", "--purge"], env=env, cwd=ROOT,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(json.dumps({"median_total_s": round(statistics.median(totals), 1), "runs": len(totals),
                      "cores": os.cpu_count()}))


if __name__ == "__main__":
    main()
