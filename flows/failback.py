"""The failback flow: return write authority once the old owner is reachable again."""

from __future__ import annotations

from typing import Literal

from prefect import flow

from flows.runner import run_runbook


@flow(name="failback", log_prints=True, retries=0)
def failback(config: str | None = None, domain: str | None = None,
             divergent_policy: Literal["republish", "quarantine", "discard"]
             = "quarantine", reason: str = "", override_lag: str = "", auto_approve: bool = False,
             operator: str | None = None, resume_run_id: str | None = None) -> dict:
    """Hand write authority back, handling the divergent tail by policy.

    Args:
        config: topology file
        domain: the domain of a multi-domain topology file (default: its default_domain)
        divergent_policy: republish to the current owner, quarantine to <topic>.divergent, or
            discard (discard has its own approval gate)
        reason: why
        override_lag: proceed despite reverse lag above the thresholds, for this reason
        auto_approve: answer every gate as the operator (lab and tests only; recorded)
        operator: who starts the run
        resume_run_id: continue a crashed run
    """
    return run_runbook("failback", config=config, domain=domain, divergent_policy=divergent_policy,
                       reason=reason,
                       lag_override_reason=override_lag, auto_approve=auto_approve,
                       operator=operator, resume_run_id=resume_run_id)
