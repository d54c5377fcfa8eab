"""A small flow that runs one real gate (flows/gates.request_approval with the Slack notifier)
and nothing else: for approval tests that do not need a whole failover, and for the bench.

    python -m tests.integration.gate_probe CONFIG [--gate approve-failover] [--operator NAME]
        [--poll 2] [--rounds 1]

Each round is a new flow run and audit run. Prints one line per gate answered, on stderr,
`GATE-PROBE {json}`: {"run_id", "decision", "resumed_at": epoch seconds}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from prefect import flow

from baton.approvals.slack import SlackNotifier
from baton.audit import AuditStore
from baton.authority import authority_store
from baton.errors import ApprovalRejected
from baton.settings import load_topology
from baton.steps.context import RunContext
from flows.gates import GATE_POLL_SECONDS, request_approval
from runbooks import FAILOVER


@flow(name="gate-probe", log_prints=True, retries=0)
def gate_probe(config: str, gate: str = "approve-failover", operator: str = "probe-operator",
               poll_seconds: float = GATE_POLL_SECONDS) -> dict:
    """Open a run, ask `gate` once, finish the run."""
    from prefect.runtime import flow_run

    topology = load_topology(config)
    audit = AuditStore.for_topology(topology)
    notifier = SlackNotifier.for_topology(topology, flow_run_id=flow_run.id)
    run = audit.start_run(topology.domain.name, "failover", trigger="probe", started_by=operator)
    ctx = RunContext(topology=topology, runbook="failover", run_id=run.id, old_owner="east",
                     new_owner="west", audit=audit, authority=authority_store(topology, audit),
                     operator=operator, log=print)
    summary = {"runbook": "failover", "domain": topology.domain.name, "gate": gate,
               "started_by": operator, "planned_change": "east -> west (probe)"}
    try:
        answer = request_approval(ctx, FAILOVER.step(gate), summary, auto_approve=False,
                                  poll_seconds=poll_seconds, notifier=notifier)
        status = "succeeded"
    except ApprovalRejected as e:
        answer, status = {"decision": "rejected", "error": str(e)}, "failed"
    resumed_at = time.time()
    audit.finish_run(run.id, status, actor=operator)
    result = {"run_id": run.id, "resumed_at": resumed_at} | answer
    sys.stderr.write("GATE-PROBE " + json.dumps(result) + "\n")  # not print: log_prints takes it
    sys.stderr.flush()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--gate", default="approve-failover")
    parser.add_argument("--operator", default="probe-operator")
    parser.add_argument("--poll", type=float, default=GATE_POLL_SECONDS)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    for _ in range(args.rounds):  # a new flow run each round
        gate_probe(config=args.config, gate=args.gate, operator=args.operator, poll_seconds=args.poll)


if __name__ == "__main__":
    main()
