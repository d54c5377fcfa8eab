"""Operator resolution of refused translations (unplanned runs): gate `approve-translation-resolutions`.

An unplanned failover cannot switch while a (group, partition) is not translated (a refusal
such as `no-checkpoint`). Nobody's position is guessed: a person chooses per group where its
refused partitions resume on the new owner, and the step `apply_translation_resolutions`
applies that choice together with every translated entry, reads it back, and records each
entry with `method = operator-resolution:<choice>` and who chose.

- `checkpoint`: the engine's checkpoint (offered only where one exists for every refused
  partition of the group); re-delivers at most the mirror's records after it.
- `earliest`: the mirror's log start; re-delivers up to everything the mirror holds.
- `latest`: the mirror's end; re-delivers nothing but skips what the group had not processed.
"""

from __future__ import annotations

import re
from dataclasses import asdict

from baton.errors import StepFailed
from baton.kafka.admin import check_reachable
from baton.kafka.reading import watermarks
from baton.replication.translation import Translation, TranslationReport, apply_translation
from baton.steps.context import RunContext

GATE = "approve-translation-resolutions"
CHOICES = ("checkpoint", "earliest", "latest")
TRANSLATE_STEP = "translate_consumer_offsets"
CHOICE = re.compile(r"([^\s=,;]+)\s*=\s*([A-Za-z]+)")


def refused(translation: dict) -> list[dict]:
    """The entries of a translation report (as recorded) that carry no offset."""
    return [e for e in translation.get("entries", [])
            if e.get("status") != "ok" or e.get("translated_offset") is None]


def options(entries: list[dict]) -> dict[str, list[str]]:
    """Per group with a refused entry, the choices that exist for it (checkpoint only where every
    refused partition of the group has one)."""
    groups: dict[str, list[dict]] = {}
    for entry in entries:
        groups.setdefault(entry["group"], []).append(entry)
    return {group: [c for c in CHOICES if c != "checkpoint"
                    or all(e.get("checkpoint_offset") is not None for e in rows)]
            for group, rows in sorted(groups.items())}


def describe(entry: dict) -> str:
    return (f"{entry['group']} {entry['mirror_topic']}[{entry['partition']}] {entry['status']}: "
            f"{entry.get('note') or 'no reason recorded'}")


def parse_choices(text: str, offered: dict[str, list[str]]) -> tuple[dict[str, str], list[str]]:
    """`group=choice` pairs (separated by spaces, commas or semicolons) -> (choices, problems).

    Every group in `offered` needs exactly one offered choice; anything else is a problem named
    with what to write instead."""
    choices: dict[str, str] = {}
    problems: list[str] = []
    for group, choice in CHOICE.findall(text or ""):
        choice = choice.lower()
        if group not in offered:
            problems.append(f"{group!r} has no refused translation (groups to resolve: "
                            f"{', '.join(offered)})")
        elif choice not in offered[group]:
            problems.append(f"{group}={choice} is not offered (options: {', '.join(offered[group])})")
        elif choices.get(group, choice) != choice:
            problems.append(f"{group} is given two choices ({choices[group]}, {choice})")
        else:
            choices[group] = choice
    missing = [g for g in offered if g not in choices]
    if missing:
        problems.append("no choice for " + ", ".join(f"{g} (options: {', '.join(offered[g])})"
                                                     for g in missing))
    return choices, problems


def auto_choices(offered: dict[str, list[str]]) -> dict[str, str]:
    """What auto-approval (lab, --yes) picks: the checkpoint where one exists, else earliest."""
    return {group: "checkpoint" if "checkpoint" in choices else "earliest"
            for group, choices in offered.items()}


def resolve_entry(entry: Translation, choice: str, low: int, high: int, chosen_by: str) -> None:
    """Give a refused entry the chosen position on a mirror partition holding offsets [low, high)."""
    if choice == "checkpoint":
        if entry.checkpoint_offset is None:
            raise StepFailed(f"{entry.where()}: no checkpoint exists to resume from")
        offset = min(max(entry.checkpoint_offset, low), high)
    else:
        offset = low if choice == "earliest" else high
    was = f"{entry.status}: {entry.note}"
    entry.resolve(offset, f"operator-resolution:{choice}")
    # What may be seen again is at most what the mirror holds after the position; `latest`
    # may also skip what the group had not processed, which nobody can count with the owner down.
    entry.duplicates_bound = high - offset
    entry.missing = 0 if choice != "latest" else None
    entry.note = f"chosen by {chosen_by} at gate {GATE} ({choice}, mirror offsets {low}..{high}); was {was}"


def apply_translation_resolutions(ctx: RunContext) -> dict:
    """Apply the translated entries and the operator's per-group choices for the refused ones."""
    recorded = ctx.state[TRANSLATE_STEP]["translation"]
    gate = ctx.state.get(GATE, {})
    choices, chosen_by = gate.get("choices") or {}, gate.get("chosen_by") or gate.get("approver", "?")
    entries = [Translation(**e) for e in recorded["entries"]]
    offered = options(refused(recorded))
    left = [g for g in offered if g not in choices]
    if left:
        raise StepFailed(f"no resolution was chosen for {', '.join(left)} at gate {GATE}; "
                         "nothing was applied")
    admin = check_reachable(ctx.new_owner, ctx.topology.regions[ctx.new_owner])
    unresolved = [e for e in entries if not e.usable]
    marks = watermarks(admin, {(e.mirror_topic, e.partition) for e in unresolved}, ctx.new_owner,
                       ctx.topology.regions[ctx.new_owner].request_timeout_seconds)
    for entry in unresolved:
        mark = marks[(entry.mirror_topic, entry.partition)]
        resolve_entry(entry, choices[entry.group], mark.start, mark.end, chosen_by)
    report = TranslationReport(recorded["owner"], recorded["secondary"], recorded["owner_reachable"],
                               entries)
    # The chosen positions are applied as chosen even where they move a group back (`earliest`
    # re-delivers on purpose; the previous offset is recorded); translated groups never move back.
    translated = sorted({e.group for e in entries} - set(choices))
    applied = []
    for groups, force in ((translated, False), (sorted(choices), True)):
        if groups:
            applied += apply_translation(ctx.topology, report, force=force, groups=groups)
    ctx.state["applied_offsets"] = {a.group: a.committed for a in applied}
    resolved = [e for e in entries if e.method.startswith("operator-resolution:")]
    ctx.log(f"{GATE}: applied " + "; ".join(f"{e.where()} -> {e.translated_offset} ({e.method})"
                                            for e in resolved))
    return {"choices": choices, "chosen_by": chosen_by,
            "resolved": [asdict(e) | {"chosen_by": chosen_by} for e in resolved],
            "entries": [asdict(e) for e in entries],
            "applied": [{"group": a.group, "committed": a.committed, "previous": a.previous}
                        for a in applied],
            "summary": summary(entries, len(applied))}


def summary(entries: list[Translation], groups: int) -> dict:
    """What the approver of the switch and the drill's scorecard read about the translations."""
    return {
        "groups": groups, "partitions": len(entries),
        "methods": sorted({e.method for e in entries}),
        "duplicates_bound": sum(e.duplicates_bound or 0 for e in entries),
        # what this run states it may re-deliver per group (unplanned: after the last checkpoint)
        "duplicates_bound_by_group": {g: sum(e.duplicates_bound or 0 for e in entries if e.group == g)
                                      for g in sorted({e.group for e in entries})},
        "missing": sum(e.missing or 0 for e in entries),
    }
