"""A lab region's restart: after a clean stop, and after SIGKILL (as the unplanned tests and
`baton lab fault kill` do), with the lab's broker session settings and with Kafka's defaults
(broker.heartbeat.interval.ms 2000, broker.session.timeout.ms 9000), in the same process.

    .venv/bin/python bench/lab_restart.py [--rounds 3]

Runs in its own BATON_HOME and port range (BATON_LAB_PORT_BASE=23000), so a running lab is left
alone. Each figure is `Lab.fault("restart", "west")` from call to the region answering metadata.
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

SESSION_KEYS = ("broker.heartbeat.interval.ms", "broker.session.timeout.ms")


def timed_restart(lab, kill: bool) -> float:
    if kill:
        lab.fault("kill", "west")
    started = time.monotonic()
    lab.fault("restart", "west")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="baton-bench-"))
    os.environ.update({"BATON_HOME": str(home), "BATON_LAB_PORT_BASE": "23000"})
    from baton.lab import config
    from baton.lab.lab import Lab

    lab_settings = {key: config.BROKER_SETTINGS[key] for key in SESSION_KEYS}
    lab = Lab(home=home / "lab", progress=lambda m: None)
    results = {}
    try:
        lab.up()
        for name, settings in (("lab settings", lab_settings), ("Kafka defaults", {})):
            for key in SESSION_KEYS:  # a restart writes the broker's properties anew
                config.BROKER_SETTINGS.pop(key, None)
            config.BROKER_SETTINGS.update(settings)
            timed_restart(lab, kill=False)  # the broker now runs with these settings
            for kill in (False, True):
                runs = [round(timed_restart(lab, kill), 2) for _ in range(args.rounds)]
                results[f"{name}, after {'SIGKILL' if kill else 'a clean stop'}"] = runs
                print(json.dumps({"settings": name, "kill": kill, "runs_s": runs}), flush=True)
    finally:
        lab.down(purge=True)
    print(json.dumps({"median_s": {k: statistics.median(v) for k, v in results.items()},
                      "lab_settings": lab_settings, "cores": os.cpu_count()}))


if __name__ == "__main__":
    main()
