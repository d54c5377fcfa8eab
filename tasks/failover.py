"""Prefect tasks for the failover steps (logic in baton/steps/failover.py)."""

from baton.steps import failover as steps
from tasks.evidence import evidence_task

check_lag = evidence_task(steps.check_lag)
stop_primary_producers = evidence_task(steps.stop_primary_producers)
verify_secondary_currency = evidence_task(steps.verify_secondary_currency)
translate_consumer_offsets = evidence_task(steps.translate_consumer_offsets)
switch_authority = evidence_task(steps.switch_authority)
reconcile = evidence_task(steps.reconcile)

TASKS = {t.name: t for t in (check_lag, stop_primary_producers, verify_secondary_currency,
                             translate_consumer_offsets, switch_authority, reconcile)}
