"""The end of a Prefect flow run: from the flow body's return to the caller's, with Prefect's
heartbeat thread joined (Prefect 3.9's sync engine) vs left to stop on its own (flows/__init__.py).

A flow whose body returns at once, `--runs` times each way, alternating, in one process against
a temporary Prefect server (the lab's settings).

    .venv/bin/python bench/flow_end.py [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()

    from baton.lab.prefect_server import start_prefect_server

    server = start_prefect_server()
    os.environ["PREFECT_API_URL"] = server.url
    import prefect.flow_engine
    from prefect import flow

    import flows  # noqa: F401 - installs the heartbeat change

    patched = prefect.flow_engine._send_heartbeats
    joined = patched.func  # Prefect's own
    ended: list[float] = []

    @flow(name="bench-flow-end")
    def noop() -> int:
        ended.append(time.monotonic())
        return 1

    figures: dict[str, list[float]] = {"joined": [], "not_joined": []}
    try:
        noop()  # the first run imports and connects: not measured
        for _ in range(args.runs):
            for name, send in (("joined", joined), ("not_joined", patched)):
                prefect.flow_engine._send_heartbeats = send
                noop()
                figures[name].append(time.monotonic() - ended[-1])
    finally:
        prefect.flow_engine._send_heartbeats = patched
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)  # the runs' logs, before their server goes
        server.stop()
    medians = {name: statistics.median(values) for name, values in figures.items()}
    print(json.dumps({"runs": args.runs, "cores": os.cpu_count(),
                      **{f"{name}_median_s": round(m, 3) for name, m in medians.items()},
                      **{f"{name}_max_s": round(max(figures[name]), 3) for name in figures},
                      "joined_over_not_joined": round(medians["joined"] / medians["not_joined"], 2)}))


if __name__ == "__main__":
    main()
