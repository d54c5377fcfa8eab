"""The conditions a planned switch is approved under, and their check inside the fenced window.

A planned hand-over asks a person once, before the fence, to approve the whole switch under
stated conditions. Inside the fenced window nobody is waited for: if a condition does not hold,
the step raises SwitchConditionFailed naming it, and the runner's compensation returns to the
last safe state (old owner unfenced, authority ACTIVE on it again).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import UTC, datetime

from baton.authority import State
from baton.errors import StepFailed, SwitchConditionFailed
from baton.settings import Topology
from baton.steps.context import RunContext

RECORDS_AT_RISK = "0 records at risk once fenced"
TRANSLATED_EXACTLY = "every group translated exactly"
READINESS = "readiness passing"
FENCED_WINDOW = "fenced window within thresholds.max_fenced_seconds"


def stated(topology: Topology) -> list[str]:
    """The conditions as the approver reads them at the gate before the fence."""
    return [RECORDS_AT_RISK, TRANSLATED_EXACTLY, f"{READINESS} (where readiness is measured)",
            f"fenced window <= {topology.thresholds.max_fenced_seconds:g} s "
            "(thresholds.max_fenced_seconds)"]


def under_condition(step: Callable[[RunContext], dict], condition: str):
    """In a planned run after the fence, a step's refusal is the failure of `condition`."""

    @functools.wraps(step)
    def run(ctx: RunContext) -> dict:
        try:
            return step(ctx)
        except SwitchConditionFailed:
            raise
        except StepFailed as e:
            if ctx.unplanned or not ctx.state.get("fenced"):
                raise
            raise SwitchConditionFailed(condition, str(e)) from e

    return run


def fenced_seconds(ctx: RunContext) -> float | None:
    """How long this run's fence has held (from the authority record), None if not fenced."""
    current = ctx.authority.current(ctx.domain)
    if current is None or current.state != State.FENCED or current.run_id != ctx.run_id:
        return None
    return (datetime.now(UTC) - current.changed_at).total_seconds()


def fenced_window_left(ctx: RunContext) -> float | None:
    """Seconds left of thresholds.max_fenced_seconds in a planned run's fence, else None."""
    elapsed = None if ctx.unplanned else fenced_seconds(ctx)
    return None if elapsed is None else ctx.topology.thresholds.max_fenced_seconds - elapsed


def readiness(ctx: RunContext) -> dict:
    """The watch's newest fresh readiness of the new owner for a planned switch (None: not measured)."""
    from baton.watch.store import switch_readiness

    if ctx.runbook != "failover":
        # A failback starts the reverse replication itself moments before its fence, so the
        # watch has no settled sample of that flow; its own currency check stands instead.
        return {"available": False, "passing": None,
                "statement": f"readiness: not used by {ctx.runbook} (it verifies currency itself)"}
    result = switch_readiness(ctx.audit, ctx.topology, ctx.old_owner, ctx.new_owner)
    return {"available": result["ready"] is not None, "passing": result["ready"],
            "statement": result["statement"], "failing": result["failing"]}


def readiness_before_fence(ctx: RunContext, poll: float = 0.5) -> dict:
    """Planned failover: the watch's readiness of the new owner, judged before anything irreversible.

    A failing sample taken before this step may predate the fix of what it saw (a mirror topic
    MirrorMaker 2 created a moment later), so the step waits up to three watch intervals for a
    sample taken since it began; only a failure that is still measured then refuses the run."""
    from baton.watch.store import switch_readiness

    if ctx.runbook != "failover":
        return readiness(ctx)
    began = datetime.now(UTC)
    deadline = time.monotonic() + 3 * ctx.topology.watch.interval_seconds
    said = False
    while True:
        result = switch_readiness(ctx.audit, ctx.topology, ctx.old_owner, ctx.new_owner)
        settled = result["ready"] is not False or result["taken_at"] >= began
        if settled or time.monotonic() > deadline:
            return {"available": result["ready"] is not None, "passing": result["ready"],
                    "statement": result["statement"], "failing": result["failing"],
                    "sample_taken_after_asking": result["taken_at"] is not None
                    and result["taken_at"] >= began}
        if not said:
            ctx.log(f"readiness: the newest watch sample fails {result['failing']}, taken before this "
                    f"run asked; waiting up to {deadline - time.monotonic():.0f} s for a newer one")
            said = True
        time.sleep(poll)


def _translation_not_exact(ctx: RunContext) -> list[str]:
    entries = ctx.state.get("translate_consumer_offsets", {}).get("translation", {}).get("entries", [])
    return [f"{e.get('group')} {e.get('topic')}[{e.get('partition')}]: method {e.get('method')}, "
            f"missing {e.get('missing')}, duplicates bound {e.get('duplicates_bound')}"
            for e in entries
            if e.get("translated_offset") is None or e.get("missing") or e.get("duplicates_bound")]


def check_switch_conditions(ctx: RunContext) -> dict:
    """Every condition the switch was approved under, measured; raise naming the first failure."""
    currency = ctx.state.get("verify_secondary_currency", {})
    ready = readiness(ctx)
    if ready.get("passing") is False and set(ready.get("failing") or []) <= {"replication_running"}:
        # Inside the fence this run stops replication old -> new itself once currency holds, and a
        # watch sample taken between that request and this check shows the stop (it would fail the run).
        # Currency, read on the fenced owner, is the stronger statement of the same thing.
        ready = ready | {"passing": True, "not_counted": "replication_running: this run stops "
                         "replication once the mirror is verified current (condition 1 measures it)"}
    elapsed = fenced_seconds(ctx)
    limit = ctx.topology.thresholds.max_fenced_seconds
    not_exact = _translation_not_exact(ctx)
    checks = [
        {"condition": RECORDS_AT_RISK, "holds": currency.get("current") is True,
         "evidence": currency.get("statement") or currency.get("why") or "currency not verified"},
        {"condition": TRANSLATED_EXACTLY, "holds": not not_exact,
         "evidence": "; ".join(not_exact) or "every entry exact: 0 missing, 0 duplicates"},
        {"condition": READINESS, "holds": ready["passing"] is not False, "evidence": ready},
        {"condition": FENCED_WINDOW, "holds": elapsed is not None and elapsed <= limit,
         "evidence": (f"fenced for {elapsed:.2f} s of at most {limit:g} s" if elapsed is not None
                      else "authority is not FENCED by this run")},
    ]
    evidence = {"conditions": checks, "failed": [c["condition"] for c in checks if not c["holds"]]}
    ctx.state["switch_conditions"] = evidence
    if evidence["failed"]:
        first = next(c for c in checks if not c["holds"])
        raise SwitchConditionFailed(first["condition"], str(first["evidence"]))
    ctx.log("check_switch_conditions: every approved condition holds; switching without a pause")
    return evidence
