"""`baton recover --run RUN`: return a run's domain to its last safe state (baton/steps/recover.py)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from baton.cli.common import ConfigOption, DomainOption, JsonOption, err, handles_errors, out
from baton.errors import StepFailed


def recover_and_report(topology, audit, store, run_id: str, *, why: str, as_json: bool = False):
    """Reconcile (recorded as step `recover`), finish the run if it still holds the lock, print the
    outcome; StepFailed (exit 1) while parts are pending or when authority already moved."""
    from baton.audit.store import default_actor
    from baton.steps.recover import recover_run

    view = audit.run(run_id)  # UsageError naming an unknown run
    recovery = recover_run(topology, audit, store, run_id, actor=default_actor(), why=why,
                           log=lambda message: err.print(message, highlight=False))
    if recovery.moved and view.status == "running":
        raise StepFailed(f"{recovery.statement()}. This run can continue: "
                         f"`baton {recovery.runbook} --resume {run_id}`")
    if view.status == "running":  # the operator gave the run up: it must not hold the lock any longer
        audit.finish_run(run_id, "aborted", detail=f"recovered by `baton recover`: {recovery.statement()}")
    if as_json:
        print(json.dumps(recovery.as_dict(), indent=2))
    else:
        for part in recovery.parts:
            colour = {"ok": "green", "fixed": "yellow"}.get(part.status, "red")
            out.print(f"  {part.name:32} [{colour}]{part.status:8}[/{colour}] {part.detail}", highlight=False)
        out.print(recovery.statement(), highlight=False)
    if not recovery.converged:
        raise StepFailed(recovery.statement())
    return recovery


def recover(run_id: Annotated[str, typer.Option("--run", help="the run whose last safe state to restore")],
            config: ConfigOption = None, domain: DomainOption = None,
            reason: Annotated[str, typer.Option("--reason", help="why (recorded)")] = "",
            as_json: JsonOption = False) -> None:
    """Return the domain to the run's last safe state: old owner ACTIVE and unfenced, replication RUNNING.

    Idempotent; reads every part back (authority, ACLs, connector states). Parts that cannot be
    done now are recorded as pending (exit 1); run it again, or let the lease keeper finish them."""
    from baton.cli.authority import _load

    topology, audit, store = _load(config, domain)
    recover_and_report(topology, audit, store, run_id, why=reason or "baton recover", as_json=as_json)


def register(app: typer.Typer) -> None:
    app.command("recover")(handles_errors(recover))
