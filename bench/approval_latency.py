"""Approval latency on the lab: time from a signed Slack click received by the approval service
to the flow run leaving Paused, and to the flow's code continuing after the gate.

A real Prefect server (started here on a free port, or $BATON_TEST_PREFECT_URL), the approval
service (`baton approvals serve`, subprocess), a local Slack stand-in, and the gate-probe flow
(tests/integration/gate_probe.py: one real gate from flows/gates.py per flow run, with the
Slack notifier), on a fresh domain of the running lab's topology.

    BATON_HOME=... BATON_LAB_PORT_BASE=... .venv/bin/python bench/approval_latency.py [--rounds 20] [--poll 1]

Measures per round, from the moment the signed POST is sent (loopback, so ~received):
  leave_paused  the flow run's new (Running) state timestamp in Prefect - POST sent
  continued     the flow's clock right after request_approval returned - POST sent
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
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import yaml  # noqa: E402

from baton.approvals.requests import ActionId  # noqa: E402
from baton.lab.prefect_server import PrefectServer, free_port, start_prefect_server  # noqa: E402
from flows.gates import GATE_POLL_SECONDS  # noqa: E402
from tests.integration.runbook_support import make_domain  # noqa: E402
from tests.slack_standin import (  # noqa: E402
    BOT_TOKEN,
    CHANNEL,
    SIGNING_SECRET,
    SlackStandIn,
    click_payload,
    signed_request,
)


def start_prefect() -> tuple[str, PrefectServer | None]:
    if os.environ.get("BATON_TEST_PREFECT_URL"):
        return os.environ["BATON_TEST_PREFECT_URL"], None
    server = start_prefect_server()
    return server.url, server


def wait(predicate, timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    raise SystemExit(f"timed out waiting for {what}")


def paused_run(api: str, seen: set[str]) -> str | None:
    runs = httpx.post(f"{api}/flow_runs/filter", json={"limit": 5, "sort": "EXPECTED_START_TIME_DESC"},
                      timeout=5).json()
    for run in runs:
        if run["id"] not in seen and (run.get("state") or {}).get("type") == "PAUSED":
            return run["id"]
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--poll", type=float, default=GATE_POLL_SECONDS,
                        help="the gate's Prefect poll interval (s); default: the product's")
    args = parser.parse_args()
    from baton.lab.lab import Lab

    lab = Lab(progress=lambda m: None)
    lab.up()
    topology = lab.topology()[0]
    home = Path(tempfile.mkdtemp(prefix="baton-bench-approvals-"))
    api, prefect = start_prefect()
    os.environ["PREFECT_API_URL"] = api
    slack = SlackStandIn().start()
    path = make_domain(topology, home, gate_timeout_seconds=300)
    document = yaml.safe_load(path.read_text())
    document["approvals"] = {"slack_channel": CHANNEL, "slack_bot_token": BOT_TOKEN,
                             "slack_signing_secret": SIGNING_SECRET, "slack_api_url": slack.api_url,
                             "approvers": ["U0ALICE"], "operators": {"U0ALICE": "alice"},
                             "prefect_api_url": api}
    path.write_text(yaml.safe_dump(document))
    port = free_port()
    service = subprocess.Popen([sys.executable, "-m", "baton", "approvals", "serve", "--config", str(path),
                                "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    probe = subprocess.Popen([sys.executable, "-m", "tests.integration.gate_probe", str(path), "--operator",
                              "carol", "--poll", str(args.poll), "--rounds", str(args.rounds)],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    results, seen = [], set()
    try:
        wait(lambda: httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()["status"] == "ok",
             30, "approval service")
        for number in range(args.rounds):
            flow_run = wait(lambda: paused_run(api, seen), 60, "a paused gate-probe run")
            seen.add(flow_run)
            request = wait(lambda: slack.requests()[number:], 20, "the request")[0]  # noqa: B023
            time.sleep(0.2)  # let the pause settle, as a human would
            body, headers = signed_request(click_payload(request, ActionId.APPROVE, "U0ALICE", "alice"))
            sent = time.time()
            status = httpx.post(f"http://127.0.0.1:{port}/slack/interactions", content=body, headers=headers,
                                timeout=30).status_code
            answered = time.time()
            state = httpx.get(f"{api}/flow_runs/{flow_run}", timeout=5).json()["state"]
            left = datetime.fromisoformat(state["timestamp"].replace("Z", "+00:00")).timestamp()
            line = next(x for x in iter(probe.stderr.readline, "") if x.startswith("GATE-PROBE"))
            continued = json.loads(line[len("GATE-PROBE "):])["resumed_at"]
            row = {"round": number + 1, "http": status, "state_after": state["type"],
                   "leave_paused_s": round(left - sent, 3), "post_answered_s": round(answered - sent, 3),
                   "continued_s": round(continued - sent, 3)}
            print(json.dumps(row), flush=True)
            results.append(row)
    finally:
        probe.kill()
        service.terminate()
        slack.stop()
        if prefect is not None:
            prefect.stop()
    for key in ("leave_paused_s", "post_answered_s", "continued_s"):
        values = [r[key] for r in results]
        print(f"{key}: median {statistics.median(values):.3f} s, max {max(values):.3f} s "
              f"(n={len(values)}, poll {args.poll} s, nproc {os.cpu_count()})")


if __name__ == "__main__":
    main()
