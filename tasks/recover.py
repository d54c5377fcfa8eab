"""The reconciler to the last safe state as a Prefect task (logic in baton/steps/recover.py)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from baton.steps.context import RunContext
from baton.steps.recover import Recovery, compensate
from tasks.evidence import run_name


@task(name="compensate", task_run_name=run_name("compensate"), cache_policy=NO_CACHE, retries=0)
def recover_task(ctx: RunContext, why: str) -> Recovery:
    """Converge to the run's last safe state; recorded as step `compensate` (pending parts named)."""
    return compensate(ctx, why)
