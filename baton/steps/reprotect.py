"""Reprotect: the standby (the region that just lost authority) is current again.

Replication owner -> standby was started by start_reverse_replication (baton/steps/failback.py).
The owner keeps accepting writes meanwhile, so "current" is measured against the owner's end
offsets when this step begins: every record the owner had then is on the standby's mirror.
"""

from __future__ import annotations

import time

from baton.errors import BatonError, StepFailed
from baton.replication.lag import PartitionLag, measure_lag
from baton.steps.context import RunContext

PROGRESS_EVERY = 5.0
# Polled from 50 ms, doubling to 0.5 s: MM2 usually copies the owner's tail within a poll or two.
FIRST_POLL_SECONDS, MAX_POLL_SECONDS = 0.05, 0.5


def _caught_up(partition: PartitionLag, target: int) -> bool:
    """The mirror holds every record up to `target` (or everything the owner has now)."""
    if partition.current:
        return True
    return partition.replicated_through is not None and partition.replicated_through + 1 >= target


def verify_standby_current(ctx: RunContext) -> dict:
    """Wait (bounded by thresholds.step_timeout_seconds, with progress) until the standby's
    mirror holds every record the owner had when the step began; record lag per partition."""
    owner, standby = ctx.owner_now, ctx.standby_now
    timeout = ctx.topology.thresholds.step_timeout_seconds
    started = last_note = time.monotonic()
    target: dict[tuple[str, int], int] | None = None
    pause = FIRST_POLL_SECONDS
    while True:
        try:
            lag = measure_lag(ctx.topology, owner=owner)
            why = ""
        except BatonError as e:  # e.g. the mirror topic is not created yet by the new connectors
            lag, why = None, str(e)
        if lag is not None:
            if target is None:
                target = {(p.topic, p.partition): p.compared_end for p in lag.partitions}
            behind = [p for p in lag.partitions if not _caught_up(p, target[(p.topic, p.partition)])]
            if not behind:
                break
            why = f"{len(behind)} partition(s) behind: {lag.statement()}"
        elapsed = time.monotonic() - started
        if elapsed > timeout:
            raise StepFailed(f"{standby} is not current against {owner} after {timeout:.0f} s: {why}. "
                             f"`baton lag --owner {owner}` shows where; run `baton reprotect` again "
                             "once replication moves")
        if time.monotonic() - last_note > PROGRESS_EVERY:
            ctx.log(f"verify_standby_current: {why} ({elapsed:.0f} s)")
            last_note = time.monotonic()
        time.sleep(pause)
        pause = min(pause * 2, MAX_POLL_SECONDS)
    waited = round(time.monotonic() - started, 2)
    partitions = [{"partition": f"{p.topic}[{p.partition}]", "mirror": f"{p.mirror_topic}[{p.partition}]",
                   "owner_end_at_start": target[(p.topic, p.partition)],
                   "replicated_through": p.replicated_through,
                   "caught_up": _caught_up(p, target[(p.topic, p.partition)]),
                   "lag_records_now": p.missing_records, "method": p.method}
                  for p in lag.partitions]
    ctx.log(f"verify_standby_current: {standby} holds every record {owner} had at the start "
            f"({waited} s; now {lag.statement()})")
    return {"owner": owner, "standby": standby, "current": True, "waited_seconds": waited,
            "statement": lag.statement(), "replication_state": lag.replication_state,
            "partitions": partitions}
