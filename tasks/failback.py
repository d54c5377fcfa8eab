"""Prefect tasks for the failback-only steps (logic in baton/steps/failback.py)."""

from baton.steps import failback as steps
from tasks.evidence import evidence_task

find_divergent_tail = evidence_task(steps.find_divergent_tail)
handle_divergent_tail = evidence_task(steps.handle_divergent_tail)
start_reverse_replication = evidence_task(steps.start_reverse_replication)
restore_replication = evidence_task(steps.restore_replication)

TASKS = {t.name: t for t in (find_divergent_tail, handle_divergent_tail, start_reverse_replication,
                             restore_replication)}
