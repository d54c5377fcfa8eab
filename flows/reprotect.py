"""The reprotect flow: replicate the owner towards the region that lost authority, once it answers."""

from __future__ import annotations

from typing import Literal

from prefect import flow

from flows.runner import run_runbook


@flow(name="reprotect", log_prints=True, retries=0)
def reprotect(config: str | None = None, domain: str | None = None,
              divergent_policy: Literal["republish", "quarantine", "discard"]
              = "quarantine", reason: str = "", auto_approve: bool = False, operator: str | None = None,
              resume_run_id: str | None = None) -> dict:
    """Protect the region that lost authority: its divergent tail by policy, then replication
    towards it until it is current. Authority does not move; running it again is harmless.

    Args:
        config: topology file
        domain: the domain of a multi-domain topology file (default: its default_domain)
        divergent_policy: republish to the current owner, quarantine to <topic>.divergent, or
            discard (discard has its own approval gate)
        reason: why
        auto_approve: answer every gate as the operator (lab and tests only; recorded)
        operator: who starts the run
        resume_run_id: continue a crashed run
    """
    return run_runbook("reprotect", config=config, domain=domain, divergent_policy=divergent_policy,
                       reason=reason,
                       auto_approve=auto_approve, operator=operator, resume_run_id=resume_run_id)
