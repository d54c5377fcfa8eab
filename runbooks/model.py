"""Runbooks as ordered step lists, and the validator that keeps them data-safe.

A runbook is data: flows execute it, `--plan` prints it, and its Markdown is rendered from
it, so the documentation cannot drift from what runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from baton.steps.context import clauses


class Kind(StrEnum):
    MEASURE = "measure"  # reads only
    GATE = "gate"  # pauses for an approval
    CHANGE = "change"  # changes state that the runbook can restore (compensation)
    IRREVERSIBLE = "irreversible"  # cannot be undone without another runbook


class Role(StrEnum):
    """What a step means for the safety invariants."""

    FENCE = "fence"  # the old owner stops accepting writes
    CURRENCY = "currency"  # the new owner is verified to have every record
    TRANSLATION = "translation"  # consumer positions are moved to the new owner
    SWITCH = "switch"  # write authority moves
    RECONCILE = "reconcile"  # post-checks
    # Checks, inside the fenced window, the conditions a gate before the fence approved the
    # switch under; any failure returns to the last safe state without asking anyone.
    CONDITIONS = "conditions"
    TAIL = "tail"  # the region to protect has no unhandled divergent tail any more
    PROTECT = "protect"  # replication towards the region to protect starts


# A step's `when` naming the path: the planned path never runs `unplanned=True` steps, and so on.
PATHS = {"planned": "unplanned=False", "unplanned": "unplanned=True"}


@dataclass(frozen=True)
class Step:
    name: str
    kind: Kind
    summary: str
    changes: str = ""  # what it changes, for --plan and the Markdown
    unplanned: str = ""  # how it behaves when the owner is unreachable, if differently
    roles: frozenset[Role] = frozenset()
    # A condition on the run's options or findings, e.g. "divergent_policy=discard", or several
    # joined by " and "; empty: always.
    when: str = ""

    @property
    def irreversible(self) -> bool:
        return self.kind is Kind.IRREVERSIBLE


@dataclass(frozen=True)
class Runbook:
    name: str
    title: str
    purpose: str
    steps: tuple[Step, ...] = field(default_factory=tuple)

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"runbook {self.name} has no step {name!r}")

    @property
    def gates(self) -> list[Step]:
        return [s for s in self.steps if s.kind is Kind.GATE]

    def gates_asked(self, **known: object) -> list[str]:
        """The gates a run with these options may ask: a `when` clause naming a known option must
        match it; a clause about what the run finds later (e.g. translations=refused) may hold."""
        def possible(step: Step) -> bool:
            for clause in clauses(step.when):
                name, _, value = clause.partition("=")
                if name in known and str(known[name]) != value:
                    return False
            return True
        return [s.name for s in self.gates if possible(s)]


class RunbookInvalid(ValueError):
    """A runbook breaks a safety invariant; the message lists every violation."""


def violations(runbook: Runbook) -> list[str]:
    """Every broken invariant, on the planned and on the unplanned path: fence before switch,
    currency before translation, a gate before every irreversible step (a switch is also covered
    by a conditions step approved at a gate before its fence), no gate inside a planned fenced
    window, replication towards a region only after its divergent tail is handled, reconcile
    last on each path, unique step names."""
    problems: list[str] = []
    names = [s.name for s in runbook.steps]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"step names must be unique: {', '.join(duplicates)}")
    if not runbook.steps:
        return problems + ["a runbook needs steps"]
    for path, own in PATHS.items():
        other = PATHS["unplanned" if path == "planned" else "planned"]
        steps = [s for s in runbook.steps if other not in clauses(s.when)]
        last = [f"the last step must reconcile, not {steps[-1].name!r}"] \
            if Role.RECONCILE not in steps[-1].roles else []
        for problem in _path_violations(steps, planned=path == "planned", own=own) + last:
            if problem not in problems:
                problems.append(problem if path == "planned" else f"{problem} (unplanned path)")
    return problems


def _path_violations(steps: list[Step], *, planned: bool, own: str) -> list[str]:
    problems: list[str] = []
    fenced = current = gated = window_approved = tail_handled = False
    for position, step in enumerate(steps, start=1):
        where = f"step {position} {step.name!r}"
        if step.kind is Kind.GATE:
            if planned and fenced:
                problems.append(f"{where} is a human gate inside the fenced window of a planned "
                                "run: producers would be refused while it waits; decide before the "
                                "fence and check conditions instead")
            if not step.when or step.when == own:  # a conditional gate may not run
                gated = True
        if Role.CONDITIONS in step.roles:
            if not (fenced and window_approved):
                problems.append(f"{where} checks switch conditions that no gate before the fence "
                                "approved")
            else:
                gated = True
        if Role.SWITCH in step.roles and not fenced:
            problems.append(f"{where} switches authority before any step fences the old owner")
        if Role.TRANSLATION in step.roles and not current:
            problems.append(f"{where} translates offsets before currency is verified")
        if Role.FENCE in step.roles:
            window_approved = gated
        if step.irreversible:
            if not gated:
                problems.append(f"{where} is irreversible and no gate precedes it "
                                "(since the previous irreversible step)")
            gated = False
        if Role.PROTECT in step.roles and not tail_handled:
            problems.append(f"{where} starts replication towards a region before its divergent tail "
                            "is handled: the mirror would hide records that only that region has")
        if Role.TAIL in step.roles:
            tail_handled = True
        if Role.FENCE in step.roles:
            fenced = True
        if Role.CURRENCY in step.roles:
            current = True
        if Role.SWITCH in step.roles:  # a second hand-over needs its own fence and currency
            fenced = current = window_approved = tail_handled = False
    return problems


def validate(runbook: Runbook) -> Runbook:
    problems = violations(runbook)
    if problems:
        raise RunbookInvalid(f"runbook {runbook.name!r} is unsafe:\n  " + "\n  ".join(problems))
    return runbook
