"""Render a runbook as the Markdown an operator reads (runbooks/<name>.md).

    python -m runbooks.render     # rewrites runbooks/*.md; a test fails when they drift
"""

from __future__ import annotations

from pathlib import Path

from runbooks import RUNBOOKS
from runbooks.model import Kind, Runbook

HERE = Path(__file__).parent
BADGE = {Kind.MEASURE: "measures", Kind.GATE: "approval gate", Kind.CHANGE: "changes (compensable)",
         Kind.IRREVERSIBLE: "**irreversible**"}


def markdown(runbook: Runbook) -> str:
    lines = [f"# Runbook: {runbook.title}", "",
             f"<!-- Rendered from runbooks/{runbook.name}.py by `python -m runbooks.render`. -->", "",
             runbook.purpose, "",
             "Every step records its evidence (inputs, measurements, outcome, timings, epoch) in "
             "the audit database. A rejected or timed-out gate returns the system to the last "
             "safe state (old owner unfenced, replication restarted, authority unchanged at a new "
             "epoch) and records that compensation.", "", "## Steps", ""]
    for number, step in enumerate(runbook.steps, start=1):
        title = f"{number}. `{step.name}` — {BADGE[step.kind]}"
        if step.when:
            title += f" (only when {step.when})"
        lines += [f"### {title}", "", step.summary, ""]
        if step.changes:
            lines += [f"- Changes: {step.changes}", ""]
        if step.unplanned:
            lines += [f"- Unplanned (owner unreachable): {step.unplanned}", ""]
    return "\n".join(lines).rstrip() + "\n"


def write() -> list[Path]:
    written = []
    for runbook in RUNBOOKS.values():
        path = HERE / f"{runbook.name}.md"
        path.write_text(markdown(runbook))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write():
        print(f"wrote {path}")
