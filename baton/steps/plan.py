"""Plan mode: the runbook's steps with today's measurements and what each would change.

Reads only: authority, ACLs, offsets and replication are the same before and after.
"""

from __future__ import annotations

from baton.audit import AuditStore
from baton.authority import authority_store
from baton.errors import BatonError
from baton.kafka.fencing import is_fenced
from baton.replication import engine_for
from baton.replication.lag import measure_lag
from baton.replication.translation import translate_offsets
from baton.settings import Topology


def plan(topology: Topology, runbook, *, unplanned: bool = False) -> dict:
    """Measure without changing anything and describe each step."""
    store = authority_store(topology, AuditStore.for_topology(topology))
    current = store.current(topology.domain.name)
    owner = current.owner if current else topology.domain.initial_owner
    target = topology.other_region(owner)
    measured: dict = {"authority": current.describe() if current else f"not recorded yet ({owner} initial)",
                      "from": owner, "to": target}

    def attempt(name: str, measure):
        try:
            measured[name] = measure()
        except BatonError as e:
            measured[name] = {"error": str(e)}

    engine = engine_for(topology)
    attempt("replication", lambda: engine.status(owner, target).state)
    attempt("fenced", lambda: {region: is_fenced(topology, region) for region in topology.regions})
    if runbook.name in ("failback", "reprotect"):
        if runbook.name == "reprotect":  # authority stays: `to` is the region it protects
            measured["to"] = f"{target} (protected; authority stays on {owner})"
        attempt("divergent_tail", lambda: measure_lag(topology, owner=target).statement())
        attempt("reverse_lag", lambda: measure_lag(topology, owner=owner).statement())
    elif not unplanned:
        attempt("lag", lambda: measure_lag(topology, owner=owner).statement())
        if topology.domain.consumer_groups:
            def translation():
                report = translate_offsets(topology, owner=owner)
                return {"partitions": len(report.entries),
                        "usable": sum(e.usable for e in report.entries),
                        "methods": sorted({e.method for e in report.entries})}
            attempt("translation_dry_run", translation)
    steps = [{"step": s.name, "kind": s.kind.value, "would_change": s.changes or "nothing (reads only)",
              "when": s.when or "always"} for s in runbook.steps]
    return {"runbook": runbook.name, "unplanned": unplanned, "measured": measured, "steps": steps}
