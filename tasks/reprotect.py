"""Prefect task for the reprotect-only step (logic in baton/steps/reprotect.py); the others are
failback's tasks (tasks/failback.py)."""

from baton.steps import reprotect as steps
from tasks.evidence import evidence_task

verify_standby_current = evidence_task(steps.verify_standby_current)

TASKS = {t.name: t for t in (verify_standby_current,)}
