"""The Connect worker's memory and CPU with several domains' MM2 connectors (one set per domain).

On the running lab (orders east -> west and payments west -> east: 6 connectors), measure the
Connect worker's RSS (/proc VmRSS) and CPU over a quiet window; then add `--extra` throwaway
domains (`bench<N>.events`, 6 partitions, owned by east, their own three connectors east -> west),
wait until they are RUNNING, measure again with `--records` records written to every domain
topic during the window, and delete the extra connectors. `tasks.max` and the worker heap
(baton/lab/config.py CONNECT_HEAP) are the lab's.

    .venv/bin/python bench/connect_domains.py [--extra 2] [--window 20] [--records 600]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.runbook_support import produce  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def window(pid: int, seconds: float, write=None) -> dict:
    """RSS every second and CPU used over `seconds` (while `write` runs, if given)."""
    samples, cpu0, start = [], cpu_seconds(pid), time.monotonic()
    if write:
        write()
    while time.monotonic() - start < seconds:
        samples.append(rss_mb(pid))
        time.sleep(1)
    cpu = cpu_seconds(pid) - cpu0
    return {"rss_median_mb": round(statistics.median(samples), 1), "rss_max_mb": round(max(samples), 1),
            "cpu_percent": round(100 * cpu / (time.monotonic() - start), 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--extra", type=int, default=2)
    parser.add_argument("--window", type=float, default=20)
    parser.add_argument("--records", type=int, default=600)
    args = parser.parse_args()

    from baton.kafka.admin import admin_client, ensure_topics
    from baton.lab.lab import Lab
    from baton.replication.mm2.engine import MirrorMakerEngine

    lab = Lab()
    pid = lab.processes["connect"].pid()
    orders, payments = lab.topologies()
    engine = MirrorMakerEngine(orders)
    result = {"connectors_before": len(engine.connect.connectors()),
              "quiet_lab_domains": window(pid, args.window)}

    extra = []
    for _ in range(args.extra):
        name = f"bench{uuid.uuid4().hex[:6]}"
        topic = f"{name}.events"
        for region in orders.regions.values():
            ensure_topics(admin_client(region), {topic: 6})
        extra.append(payments.model_copy(update={
            "domain": orders.domain.model_copy(update={"name": name, "topics": [topic],
                                                       "consumer_groups": []}),
            "replication": payments.replication.model_copy(update={"groups_pattern": None})}))
    try:
        started = time.monotonic()
        for t in extra:
            MirrorMakerEngine(t).start("east", "west", wait_seconds=120)
        result["extra_domains_running_seconds"] = round(time.monotonic() - started, 1)
        result["connectors_with_extra"] = len(engine.connect.connectors())
        result["quiet_with_extra"] = window(pid, args.window)

        def write_all():
            for t in [orders, *extra]:
                produce(t, "east", t.domain.topics[0], args.records, 6, "bench", who="admin")
            produce(payments, "west", payments.domain.topics[0], args.records, 3, "bench", who="admin")

        result["busy_with_extra"] = window(pid, args.window, write_all)
    finally:
        for t in extra:
            for name in MirrorMakerEngine(t).connector_names("east", "west"):
                engine.connect.delete(name)
    result["connectors_after"] = len(engine.connect.connectors())
    result["heap"] = __import__("baton.lab.config", fromlist=["CONNECT_HEAP"]).CONNECT_HEAP
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
