"""`baton lag`, `baton currency`, `baton offsets translate`: replication truth for the domain."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from baton.cli.common import ConfigOption, DomainOption, JsonOption, handles_errors, out

replication_app = typer.Typer(help="Replication truth: lag, currency, offset translation.")
offsets_app = typer.Typer(no_args_is_help=True, help="Consumer-group offsets across regions.")
replication_app.add_typer(offsets_app, name="offsets")

TopicOption = Annotated[
    list[str] | None, typer.Option("--topic", "-t", help="topic (repeat); default: domain")
]
OwnerOption = Annotated[str | None, typer.Option(
    "--owner", help="owner region; default: the domain's owner now (authority), else its initial owner")]


def owner_now(topology, owner: str | None) -> str | None:
    """The region asked for, else the one holding authority now: after a failover (and its
    reprotect) `baton lag` measures the new owner -> the new standby, not the stopped old flow."""
    if owner:
        return owner
    from baton.audit import AuditStore
    from baton.authority import authority_store
    from baton.cli.common import err

    try:
        current = authority_store(topology, AuditStore.for_topology(topology)).current(topology.domain.name)
    except Exception as e:  # noqa: BLE001 - lag is measured from the brokers; it must work without the DB
        err.print(f"warning: authority not read ({str(e).splitlines()[0][:200]}); measuring from the "
                  f"initial owner {topology.domain.initial_owner} (pass --owner)", highlight=False)
        return None
    return current.owner if current is not None else None


@replication_app.command("lag")
@handles_errors
def lag(config: ConfigOption = None, domain: DomainOption = None,
        topic: TopicOption = None, owner: OwnerOption = None,
        as_json: JsonOption = False) -> None:
    """Records on the owner not yet on the secondary, per partition, and the RPO statement."""
    from baton.replication.lag import measure_lag
    from baton.settings import load_topology

    topology = load_topology(config, domain)
    report = measure_lag(topology, owner=owner_now(topology, owner), topics=topic)
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
        return
    for p in report.partitions:
        missing = "?" if p.missing_records is None else p.missing_records
        age = "" if p.oldest_missing_age_seconds is None else f" oldest {p.oldest_missing_age_seconds:.1f}s"
        out.print(f"{p.topic}[{p.partition}] -> {p.mirror_topic}: {missing} missing{age} "
                  f"(owner end {p.owner_end}, replicated through {p.replicated_through}, {p.method})"
                  + (f" {p.note}" if p.note else ""), highlight=False)
    beat = report.heartbeat_age_seconds
    out.print(f"heartbeat: {'none seen' if beat is None else f'{beat:.1f}s old'}; "
              f"replication {report.replication_state}")
    for problem in report.problems:
        out.print(f"[yellow]warning:[/yellow] {problem}", highlight=False)
    out.print(report.statement())


@replication_app.command("currency")
@handles_errors
def currency(config: ConfigOption = None, domain: DomainOption = None,
             topic: TopicOption = None, owner: OwnerOption = None,
             as_json: JsonOption = False) -> None:
    """Per partition: is every owner record on the secondary? Exit 1 when not current."""
    from baton.replication.currency import verify_currency
    from baton.settings import load_topology

    topology = load_topology(config, domain)
    report = verify_currency(topology, owner=owner_now(topology, owner), topics=topic)
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        for p in report.partitions:
            state = {True: "current", False: "NOT current", None: "UNVERIFIED"}[p.current]
            ranges = ", ".join(f"{a}..{b - 1}" for a, b in p.missing_ranges)
            out.print(f"{p.topic}[{p.partition}]: {state}" + (f", missing {ranges}" if ranges else "")
                      + (f" ({p.note})" if p.note else ""), highlight=False)
        out.print(("current: " if report.current else "NOT current: ") + report.lag.statement())
    if not report.current:
        raise typer.Exit(1)


@offsets_app.command("translate")
@handles_errors
def translate(
    config: ConfigOption = None, domain: DomainOption = None,
    group: Annotated[list[str] | None, typer.Option("--group", "-g", help="group (repeat)")] = None,
    topic: TopicOption = None,
    owner: OwnerOption = None,
    method: Annotated[str, typer.Option(help="exact | checkpoint")] = "exact",
    apply: Annotated[bool, typer.Option("--apply", help="commit to the secondary's groups")] = False,
    force: Annotated[bool, typer.Option(help="with --apply: allow moving a group backwards")] = False,
    as_json: JsonOption = False,
) -> None:
    """Where each group resumes on the secondary, per partition (exact | checkpoint | end).

    Exit 1 when any group-partition is not translated (a refusal: ambiguous, not-found, ...).
    """
    from baton.replication.translation import apply_translation, translate_offsets
    from baton.settings import load_topology

    topology = load_topology(config, domain)
    report = translate_offsets(topology, groups=group, topics=topic, owner=owner, method=method)
    applied = apply_translation(topology, report, force=force) if apply else None
    if as_json:
        document = report.as_dict()
        if applied is not None:
            document["applied"] = [a.__dict__ for a in applied]
        print(json.dumps(document, indent=2))
    else:
        _print_translation(report, applied)
    if report.untranslated:
        # A refusal is an answer, but not a position: scripts must not treat it as success.
        raise typer.Exit(1)


def _print_translation(report, applied) -> None:
    for problem in report.problems:
        out.print(f"[yellow]warning:[/yellow] {problem}", highlight=False)
    for e in report.entries:
        out.print(f"{e.group} {e.topic}[{e.partition}] {e.owner_offset} -> {e.mirror_topic} "
                  f"{e.translated_offset} {e.method} {e.status} dup<={e.duplicates_bound} "
                  f"missing={e.missing}" + (f" ({e.note})" if e.note else ""), highlight=False)
    for a in applied or []:
        out.print(f"applied {a.group} on {report.secondary}: {a.committed} (read back)"
                  + (f"; deleted {a.deleted} (no commit on the owner)" if a.deleted else ""), highlight=False)
    if report.untranslated:
        out.print(f"NOT translated: {', '.join(e.where() for e in report.untranslated)}", highlight=False)
