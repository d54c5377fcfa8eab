"""The failover flow: launched from the Prefect UI (deployment `failover`) or `baton failover`."""

from __future__ import annotations

from prefect import flow

from flows.runner import run_runbook


@flow(name="failover", log_prints=True, retries=0)
def failover(config: str | None = None, domain: str | None = None, unplanned: bool = False,
             reason: str = "", override_lag: str = "", auto_approve: bool = False,
             operator: str | None = None,
             resume_run_id: str | None = None) -> dict:
    """Move write authority to the other region.

    Args:
        config: topology file (default: $BATON_CONFIG, ./baton.yaml or the lab's)
        domain: the domain of a multi-domain topology file (default: its default_domain)
        unplanned: the owner is unreachable (needs a reason)
        reason: why this failover runs (required when unplanned)
        override_lag: proceed despite lag above the thresholds, for this reason
        auto_approve: answer every gate as the operator (lab and tests only; recorded)
        operator: who starts the run (default: the OS user)
        resume_run_id: continue a run that crashed, from its last completed step
    """
    return run_runbook("failover", config=config, domain=domain, unplanned=unplanned, reason=reason,
                       lag_override_reason=override_lag, auto_approve=auto_approve,
                       operator=operator, resume_run_id=resume_run_id)
