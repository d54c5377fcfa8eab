"""`baton authority`: who may write, fencing by ACL, the lease keeper, and run locks."""

from __future__ import annotations

import json
import signal
import threading
from typing import Annotated

import typer

from baton.cli.common import ConfigOption, DomainOption, JsonOption, UsageError, err, handles_errors, out

authority_app = typer.Typer(no_args_is_help=True, help="Write authority: epochs, leases, fencing.")

RunOption = Annotated[str | None, typer.Option(
    "--run", help="record as a step of this run (default: a new run of its own)")]
ReasonOption = Annotated[str, typer.Option("--reason", help="why (recorded)")]


def _load(config: str | None, domain: str | None = None):
    from baton.audit import AuditStore
    from baton.authority import authority_store
    from baton.settings import load_topology

    topology = load_topology(config, domain)
    audit = AuditStore.for_topology(topology)
    return topology, audit, authority_store(topology, audit)


def _region(topology, region: str) -> str:
    if region not in topology.regions:
        raise UsageError(f"unknown region {region!r}; configured: {', '.join(sorted(topology.regions))}")
    return region


@authority_app.command("show")
@handles_errors
def authority_show(config: ConfigOption = None, domain: DomainOption = None,
                   as_json: JsonOption = False) -> None:
    """The authority in the audit DB and what each region's control topic says."""
    from baton.authority import control
    from baton.errors import BatonError, RegionUnreachable
    from baton.kafka.fencing import present_bindings
    from baton.steps.recover import pending_recoveries

    topology, audit, store = _load(config, domain)
    current = store.current(topology.domain.name)
    regions: dict[str, dict] = {}
    for region in topology.regions:
        try:
            seen = control.read(topology, region, timeout=3)
            # What the brokers enforce, read back: a DENY ACL refuses writes whatever the record says.
            principals = topology.regions[region].producer_principals
            deny = len(present_bindings(topology, region)) if principals else 0
            regions[region] = {"control_topic": seen.model_dump(mode="json") if seen else None,
                               "deny_acls": deny,
                               "accepts_writes": bool(seen and seen.accepts_writes_in(region)) and not deny}
        except (RegionUnreachable, BatonError) as e:
            regions[region] = {"error": str(e)}
    pending = pending_recoveries(audit, topology.domain.name)
    if as_json:
        print(json.dumps({"domain": topology.domain.name,
                          "authority": current.model_dump(mode="json") if current else None,
                          "regions": regions, "pending_recoveries": pending}, indent=2))
        return
    if current is None:
        out.print(f"domain {topology.domain.name}: no authority recorded yet (`baton authority init` "
                  f"or `baton authority keep` records epoch 1 with owner {topology.domain.initial_owner})")
    else:
        out.print(f"domain {topology.domain.name}: {current.describe()} (changed by {current.changed_by} "
                  f"at {current.changed_at:%Y-%m-%d %H:%M:%S} UTC"
                  + (f", run {current.run_id})" if current.run_id else ")"), highlight=False)
    for region, view in regions.items():
        if "error" in view:
            out.print(f"  {region}: [red]unreachable[/red] {view['error']}", highlight=False)
        elif view["control_topic"] is None:
            out.print(f"  {region}: no record on the control topic", highlight=False)
        else:
            seen = control.Authority.model_validate(view["control_topic"])
            mark = "accepts writes" if view["accepts_writes"] else "refuses writes"
            acls = f"; {view['deny_acls']} fence ACL(s) in force" if view["deny_acls"] else ""
            out.print(f"  {region}: control topic says {seen.describe()}{acls} -> {mark}", highlight=False)
    for run_id, parts in pending.items():
        out.print(f"  recovery of run {run_id} pending: "
                  + "; ".join(f"{p['part']}: {p['detail']}" for p in parts)
                  + f" -> `baton recover --run {run_id}`", highlight=False)


@authority_app.command("history")
@handles_errors
def authority_history(config: ConfigOption = None, domain: DomainOption = None,
                      as_json: JsonOption = False) -> None:
    """Every epoch of the domain, oldest first."""
    topology, _audit, store = _load(config, domain)
    rows = store.history(topology.domain.name)
    if as_json:
        print(json.dumps([r.model_dump(mode="json", exclude={"prev_hash"}) for r in rows], indent=2))
        return
    for row in rows:
        out.print(f"epoch {row.epoch:4} {row.owner:6} {row.state:7} {row.changed_at:%Y-%m-%d %H:%M:%S} "
                  f"by {row.changed_by}" + (f" run {row.run_id}" if row.run_id else "")
                  + (f": {row.reason}" if row.reason else ""), highlight=False)


@authority_app.command("init")
@handles_errors
def authority_init(config: ConfigOption = None, domain: DomainOption = None,
                   as_json: JsonOption = False) -> None:
    """Record epoch 1 (the topology's initial owner, ACTIVE) if the domain has none; publish it."""
    from baton.authority import initialize_authority

    topology, _audit, store = _load(config, domain)
    result = initialize_authority(topology, store=store)
    _print_change(result, as_json)


def _print_change(result, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
        return
    out.print(f"authority {result.authority.describe()}", highlight=False)
    for region, error in result.published.items():
        out.print(f"  published to {region}: " + ("ok" if error is None else f"[red]failed[/red] {error}"),
                  highlight=False)


def _run(audit, topology, run_id: str | None, runbook: str, reason: str):
    """The run a manual command records under: the given one, or a new one (taking the lock)."""
    if run_id is not None:
        audit.run(run_id)  # UsageError if unknown
        return run_id, False
    return audit.start_run(topology.domain.name, runbook, trigger="cli", reason=reason).id, True


def _fence_command(region: str, config, domain, run_id, reason, as_json, fencing: bool) -> None:
    from baton.authority import State, change_authority
    from baton.kafka.fencing import fence, fence_bindings, unfence

    topology, audit, store = _load(config, domain)
    region = _region(topology, region)
    fence_bindings(topology, region)  # bad configuration fails here, before a run is recorded
    run_id, own_run = _run(audit, topology, run_id, "fence" if fencing else "unfence", reason)
    result: dict = {"run_id": run_id}
    try:
        result["acls"] = (fence if fencing else unfence)(topology, region, run_id, audit=audit)
        current = store.current(topology.domain.name)
        # The authority follows the ACLs when it concerns the owner: fencing the ACTIVE owner
        # makes the domain FENCED; unfencing the owner of a FENCED domain makes it ACTIVE again.
        wanted = State.FENCED if fencing else State.ACTIVE
        if current is not None and current.owner == region and current.state != wanted:
            with audit.step(run_id, "record_authority", region=region, epoch=current.epoch + 1) as step:
                change = change_authority(topology, current.epoch, region, wanted, run_id=run_id,
                                          store=store, reason=reason or f"baton authority "
                                          f"{'fence' if fencing else 'unfence'} {region}")
                step.evidence = change.as_dict()
            result["authority"] = change.as_dict()
    except BaseException:
        if own_run:
            audit.finish_run(run_id, "failed")
        raise
    if own_run:
        audit.finish_run(run_id, "succeeded")
    if as_json:
        print(json.dumps(result, indent=2))
        return
    acls = result["acls"]
    out.print(f"{acls['action']} {region}: {len(acls['bindings'])} DENY bindings "
              f"({acls['changed']} changed, {acls['unchanged']} already so), verified by read-back; "
              f"run {run_id}", highlight=False)
    if "authority" in result:
        out.print(f"authority now epoch {result['authority']['authority']['epoch']} "
                  f"{result['authority']['authority']['state']}", highlight=False)


@authority_app.command("fence")
@handles_errors
def authority_fence(region: Annotated[str, typer.Argument(help="the region to fence")],
                    config: ConfigOption = None, domain: DomainOption = None,
                    run_id: RunOption = None, reason: ReasonOption = "",
                    as_json: JsonOption = False) -> None:
    """DENY the producer principals WRITE on the domain's topics in REGION (idempotent, read back)."""
    _fence_command(region, config, domain, run_id, reason, as_json, fencing=True)


@authority_app.command("unfence")
@handles_errors
def authority_unfence(region: Annotated[str, typer.Argument(help="the region to unfence")],
                      config: ConfigOption = None, domain: DomainOption = None,
                      run_id: RunOption = None, reason: ReasonOption = "",
                      as_json: JsonOption = False) -> None:
    """Remove exactly the DENY bindings `fence` adds in REGION (idempotent, read back)."""
    _fence_command(region, config, domain, run_id, reason, as_json, fencing=False)


@authority_app.command("unlock")
@handles_errors
def authority_unlock(run_id: Annotated[str, typer.Option("--run", help="the run holding the lock")],
                     config: ConfigOption = None, domain: DomainOption = None,
                     reason: ReasonOption = "") -> None:
    """Release the domain lock a crashed run left behind (recorded), then return the domain to
    that run's last safe state (`baton recover`), so authority is never left FENCED."""
    from baton.cli.recover import recover_and_report

    topology, audit, store = _load(config, domain)
    event = audit.unlock(run_id, reason=reason)
    out.print(f"released the lock of run {run_id} (recorded as event seq {event.seq})", highlight=False)
    if any(s.name == "run_plan" for s in audit.run(run_id).steps):
        recover_and_report(topology, audit, store, run_id, why=reason or "baton authority unlock")


@authority_app.command("keep")
@handles_errors
def authority_keep(config: ConfigOption = None, domain: DomainOption = None,
                   all_domains: Annotated[bool, typer.Option(
                       "--all-domains", help="keep the lease of every domain in the file")] = False,
                   interval: Annotated[float | None, typer.Option(
                       min=0.1, help="seconds between renewals (default: lease TTL / 3)")] = None,
                   once: Annotated[bool, typer.Option("--once", help="renew once and exit")] = False,
                   as_json: JsonOption = False) -> None:
    """The lease keeper: renew the owner's lease while the owner answers (a long-running service)."""
    from baton.audit import AuditStore
    from baton.authority import authority_store
    from baton.authority.keeper import LeaseKeeper
    from baton.settings import load_topologies

    if all_domains and domain:
        raise UsageError("--all-domains keeps every domain of the file: drop --domain")
    topologies = load_topologies(config) if all_domains else [_load(config, domain)[0]]
    keepers = [LeaseKeeper(t, authority_store(t, AuditStore.for_topology(t)), interval=interval)
               for t in topologies]

    def report(tick) -> None:
        if as_json:
            print(json.dumps({"action": tick.action, "authority": tick.authority.model_dump(mode="json"),
                              "published": tick.published, "detail": tick.detail}), flush=True)
        else:
            failed = {r: e for r, e in tick.published.items() if e}
            err.print(f"{tick.action}: {tick.authority.describe()}"
                      + (f"; not published to {failed}" if failed else "")
                      + (f" ({tick.detail})" if tick.detail else ""), highlight=False)

    try:
        if once:
            for keeper in keepers:
                report(keeper.tick())
            return
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        for keeper in keepers:
            err.print(f"keeping the lease of domain {keeper.topology.domain.name}: TTL "
                      f"{keeper.ttl:g}s, renewing every {keeper.interval:g}s")
        # One thread per domain: a slow renewal of one domain never delays another's.
        threads = [threading.Thread(target=keeper.run, args=(stop,), kwargs={"on_tick": report},
                                    name=f"keeper-{keeper.topology.domain.name}", daemon=True)
                   for keeper in keepers[1:]]
        for thread in threads:
            thread.start()
        keepers[0].run(stop, on_tick=report)
        for thread in threads:
            thread.join()
    finally:
        for keeper in keepers:
            keeper.close()
