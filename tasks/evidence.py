"""Turn a step function of baton/steps into a Prefect task that records its evidence."""

from __future__ import annotations

from collections.abc import Callable

from prefect import task
from prefect.cache_policies import NO_CACHE

from baton.steps.context import RunContext


def run_name(name: str) -> Callable[[dict], str]:
    """Task run names carry the domain: an evacuation runs every domain's steps in one flow run."""

    def named(parameters: dict) -> str:
        return f"{name} [{parameters['ctx'].domain}]"

    return named


def evidence_task(step: Callable[[RunContext], dict]):
    """A task named like the step: evidence row before/after (audit DB), result in ctx.state."""
    name = step.__name__

    @task(name=name, task_run_name=run_name(name), cache_policy=NO_CACHE, retries=0)
    def run(ctx: RunContext) -> dict:
        authority = ctx.authority.current(ctx.domain)
        with ctx.audit.step(ctx.run_id, name, region=ctx.new_owner,
                            epoch=authority.epoch if authority else None) as record:
            record.evidence = step(ctx)  # on failure the wrapper records the error, then re-raises
        ctx.state[name] = record.evidence
        return record.evidence

    run.__doc__ = step.__doc__
    return run
