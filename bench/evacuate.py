"""Region evacuation vs one domain's failover, in the same run on the running lab.

`--domains` throwaway domains owned by east (`--partitions` partitions each, their own topics,
groups and MM2 connectors east -> west; tests/integration/test_evacuation.py builds them), each
seeded with records and two groups' commits. Then, `--runs` times: one domain's planned failover
(the flow, gate auto-approved, reprotect included) and its return; then the evacuation of east
(every domain at once, one batch approval) and the return of all of them as a second evacuation.
Figures: wall time of each (flow call to return), the evacuation over the single failover, the
slowest domain's own run inside the evacuation, and the CPU seconds every process of the run
spent meanwhile (this process, the Prefect server, both brokers, the Connect worker): the
machine's cores bound how fast ten domains' work can go at once. Before the runs, the same
processes' CPU over `--rest-seconds` with nothing asked of them (the lab's connectors copying and
polling); from it, `evacuation_cpu_floor_s`: the shortest an evacuation could take on these cores
if its own CPU work (its CPU seconds less the rest load over its wall time) kept every core busy
beside the rest load, with no wait at all. Connectors and ACLs are removed at the end.

    .venv/bin/python bench/evacuate.py [--domains 10] [--partitions 12] [--runs 2]
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

from tests.integration.runbook_support import commit, produce, wait_mirrored  # noqa: E402
from tests.integration.test_evacuation import east_domains_file, remove_domains  # noqa: E402


def seed(t, partitions: int) -> None:
    topic = t.domain.topics[0]
    produce(t, "east", topic, 5 * partitions, partitions, "bench")
    for group in t.domain.consumer_groups:
        commit(t, "east", group, topic, dict.fromkeys(range(partitions), 2))
    wait_mirrored(t, topic, 5 * partitions, timeout=120)


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds so far of each named process (all its threads)."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for name, pid in pids.items():
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        seconds[name] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return seconds


def timed(call, pids: dict[str, int], cpu: list, **parameters) -> tuple[float, dict]:
    before, started = cpu_seconds(pids), time.monotonic()
    result = call(**parameters)
    seconds = time.monotonic() - started
    after = cpu_seconds(pids)
    spent = {name: round(after[name] - before[name], 1) for name in pids}
    cpu.append(spent | {"total": round(sum(spent.values()), 1),
                        "cores_busy": round(sum(spent.values()) / seconds, 2)})
    return seconds, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--domains", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--rest-seconds", type=float, default=10.0)
    args = parser.parse_args()

    from baton.lab.lab import Lab
    from baton.lab.prefect_server import start_prefect_server

    lab = Lab(progress=lambda m: None)
    lab.up()
    server = start_prefect_server()
    os.environ["PREFECT_API_URL"] = server.url
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.evacuate import evacuate
    from flows.failover import failover

    pids = {"bench": os.getpid(), "prefect": server.process.pid} | {
        name: lab.processes[name].pid() for name in ("east", "west", "connect")}
    workdir = Path(tempfile.mkdtemp(prefix="baton-bench-evacuate-"))
    domains, prefixes = [], []
    single, batch, slowest = [], [], []
    single_cpu, batch_cpu = [], []
    try:
        started = time.monotonic()
        path, domains, prefix = east_domains_file(lab, workdir, args.domains, args.partitions, tag="bench")
        prefixes.append(prefix)
        for t in domains:
            seed(t, args.partitions)
        print(json.dumps({"setup_s": round(time.monotonic() - started, 1)}), flush=True)
        rest_cpu: list = []
        timed(lambda: time.sleep(args.rest_seconds), pids, rest_cpu)
        rest_cores = rest_cpu[0]["cores_busy"]
        print(json.dumps({"rest_cpu_s": rest_cpu[0]}), flush=True)
        names = [t.domain.name for t in domains]
        with temporary_settings(updates={PREFECT_API_URL: server.url}):
            for _ in range(args.runs):
                seconds, summary = timed(failover, pids, single_cpu, config=path, domain=names[0],
                                         auto_approve=True)
                assert summary["status"] == "succeeded", summary
                single.append(seconds)
                failover(config=path, domain=names[0], auto_approve=True)  # back to east
                seconds, outcome = timed(evacuate, pids, batch_cpu, from_region="east", config=path,
                                         auto_approve=True)
                assert outcome["all_moved"], outcome
                batch.append(seconds)
                slowest.append(max(d["wall_seconds"] for d in outcome["domains"]))
                evacuate(from_region="west", config=path, auto_approve=True, domains=names)
                print(json.dumps({"single_s": round(single[-1], 2), "evacuation_s": round(batch[-1], 2),
                                  "slowest_domain_run_s": slowest[-1], "single_cpu_s": single_cpu[-1],
                                  "evacuation_cpu_s": batch_cpu[-1]}), flush=True)
    finally:
        remove_domains(domains, prefixes)
        server.stop()
    result = {"domains": args.domains, "partitions": args.partitions, "runs": args.runs,
              "single_failover_s": round(statistics.median(single), 2),
              "evacuation_s": round(statistics.median(batch), 2),
              "evacuation_over_single": round(statistics.median(batch) / statistics.median(single), 2),
              "slowest_domain_run_in_evacuation_s": round(statistics.median(slowest), 2),
              "cores": os.cpu_count(),
              "single_cpu_s": round(statistics.median(c["total"] for c in single_cpu), 1),
              "evacuation_cpu_s": round(statistics.median(c["total"] for c in batch_cpu), 1),
              "rest_cores_busy": rest_cores}
    # The evacuation's own CPU work: what its processes spent less what they spend at rest.
    work = statistics.median(c["total"] - rest_cores * s for c, s in zip(batch_cpu, batch, strict=True))
    result |= {"evacuation_work_cpu_s": round(work, 1),
               "evacuation_cpu_floor_s": round(work / (os.cpu_count() - rest_cores), 2),
               "target_s": round(2 * statistics.median(single), 2)}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
