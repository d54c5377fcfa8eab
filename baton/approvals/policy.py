"""Approval policy comes from the topology, never from the caller.

Auto-approval (`--yes`, a deployment's `auto_approve`) may answer a gate only on the lab, or
where the topology names the gate in `approvals.auto_approve_gates`. Who started a run is
verified only when it comes from something the caller cannot type; a deployment run on a
Prefect server without authentication records its starter as `unverified: <claimed name>`,
and such a run needs a Slack-verified approval at every gate.
"""

from __future__ import annotations

from baton.settings import Topology

UNVERIFIED = "unverified: "


def is_lab(topology: Topology) -> bool:
    from baton.lab.lab import is_lab_topology

    return is_lab_topology(topology)


def may_auto_approve(topology: Topology, gate: str, *, lab: bool | None = None) -> bool:
    """Whether auto-approval may answer this gate on this topology."""
    if gate in topology.approvals.auto_approve_gates:
        return True
    return is_lab(topology) if lab is None else lab


def auto_approve_refusal(topology: Topology, gates: list[str]) -> str | None:
    """Why auto-approval is refused for a run asking these gates, or None when allowed."""
    lab = is_lab(topology)
    refused = [gate for gate in gates if not may_auto_approve(topology, gate, lab=lab)]
    if not refused:
        return None
    return (f"auto-approve is refused for {', '.join(refused)}: this topology is not the lab and "
            "approvals.auto_approve_gates does not name them. Nothing was started: run without "
            "--yes / auto_approve so the approvers decide, or name the gates in the topology")


def unverified(name: str | None) -> str:
    """A claimed starter name, marked as such (idempotent)."""
    name = (name or "unknown").strip() or "unknown"
    return name if name.startswith(UNVERIFIED) else f"{UNVERIFIED}{name}"[:200]


def is_unverified(started_by: str) -> bool:
    return started_by.startswith(UNVERIFIED)


def claimed_name(started_by: str) -> str:
    """The name a starter gave, without the unverified marker."""
    return started_by[len(UNVERIFIED):] if is_unverified(started_by) else started_by
