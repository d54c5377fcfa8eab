"""The failover drill: a planned failover and then a failback, on a schedule (monthly)."""

from __future__ import annotations

from typing import Literal

from prefect import flow

from flows.failback import failback
from flows.failover import failover


@flow(name="drill", log_prints=True, retries=0)
def drill(config: str | None = None, auto_approve: bool = False, operator: str | None = None,
          divergent_policy: Literal["republish", "quarantine", "discard"] = "quarantine") -> dict:
    """Fail over, then fail back, through the same gates as a real hand-over.

    Args:
        config: topology file (the lab's by default)
        auto_approve: answer every gate as the operator (recorded; for the lab)
        operator: who runs the drill (default: the OS user)
        divergent_policy: how the failback handles a divergent tail
    """
    over = failover(config=config, auto_approve=auto_approve, operator=operator,
                    reason="scheduled failover drill")
    back = failback(config=config, auto_approve=auto_approve, operator=operator,
                    divergent_policy=divergent_policy, reason="scheduled failover drill")
    return {"failover": over, "failback": back,
            "status": "succeeded" if over["status"] == back["status"] == "succeeded" else "failed"}
