"""Prefect tasks for the failover steps (logic in baton/steps/failover.py)."""

from baton.steps import failover as steps
from baton.steps import resolution
from baton.steps.switch_conditions import (
    RECORDS_AT_RISK,
    TRANSLATED_EXACTLY,
    check_switch_conditions,
    under_condition,
)
from tasks.evidence import evidence_task

check_lag = evidence_task(steps.check_lag)
stop_primary_producers = evidence_task(steps.stop_primary_producers)
# Inside a planned fence their refusals are failed switch conditions (named, no pause).
verify_secondary_currency = evidence_task(under_condition(steps.verify_secondary_currency,
                                                          RECORDS_AT_RISK))
translate_consumer_offsets = evidence_task(under_condition(steps.translate_consumer_offsets,
                                                           TRANSLATED_EXACTLY))
apply_translation_resolutions = evidence_task(resolution.apply_translation_resolutions)
check_switch_conditions = evidence_task(check_switch_conditions)
switch_authority = evidence_task(steps.switch_authority)
reconcile = evidence_task(steps.reconcile)

TASKS = {t.name: t for t in (check_lag, stop_primary_producers, verify_secondary_currency,
                             translate_consumer_offsets, apply_translation_resolutions,
                             check_switch_conditions, switch_authority, reconcile)}
