"""Region evacuation: fail over every domain a region owns, as one approved batch."""

from dataclasses import replace

from runbooks.failover import APPROVE_FAILOVER, FAILOVER, SWITCH_AUTHORITY
from runbooks.model import Kind, Runbook, Step

APPROVE_EVACUATION = replace(
    APPROVE_FAILOVER,
    summary="One approval for the whole batch, asked once every domain has measured its plan: "
    "the request lists every domain's evidence (lag, records at risk, readiness, groups, the "
    "authority change) and the domains that already failed. The one decision is recorded on every "
    "domain's run as a batch approval of this evacuation (who, via which channel). Planned: as "
    "for one domain, the person approves each hand-over under stated conditions, so nobody is "
    "waited for while producers are refused. With all-or-nothing, a domain that failed before the "
    "gate returns every domain to safety without asking anyone.",
)
HOLD_FOR_BATCH = Step(
    "hold_for_batch", Kind.MEASURE,
    "All-or-nothing only (else it passes straight through): wait until every other domain of "
    "the batch reached its switch too (each checked its own switch conditions already). If any "
    "domain failed before its switch, this domain does not switch either: it returns to its last "
    "safe state with the failed domains named. Waiting here lengthens this domain's fenced window "
    "up to the slowest domain's; thresholds.max_fenced_seconds was checked before.",
)

_STEPS = []
for _step in FAILOVER.steps:
    if _step.name == SWITCH_AUTHORITY.name:
        _STEPS.append(HOLD_FOR_BATCH)
    _STEPS.append(APPROVE_EVACUATION if _step.name == APPROVE_FAILOVER.name else _step)

EVACUATE = Runbook(
    name="evacuate",
    title="Region evacuation",
    purpose="Fail over every domain a region owns (its recorded authority, ACTIVE) to the other "
    "region: one failover run per domain, all running at once, with the domain's own lock, "
    "evidence and compensation; one approval per gate for the whole batch. A domain that fails "
    "is returned to its last safe state without stopping the others, unless the operator chose "
    "all-or-nothing (`--all-or-nothing`): then no domain switches unless every domain reached "
    "its switch. Each domain ends `moved` or `returned to safety` with why; a planned evacuation "
    "reprotects each old owner as a planned failover does. Unplanned (`--unplanned --reason`, the "
    "region is unreachable): approve-failover and approve-switch are batch gates, the latter "
    "listing each domain's data at risk, currency and translations; translation resolutions are "
    "asked per domain (each has its own groups), one after the other.",
    steps=tuple(_STEPS),
)
