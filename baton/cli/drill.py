"""`baton drill`: a measured failover + failback under a controlled workload, with its scorecard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from baton.cli.common import (
    ConfigOption,
    DomainOption,
    JsonOption,
    UsageError,
    _progress,
    err,
    handles_errors,
    out,
)


def print_scorecard(card: dict) -> None:
    from baton.drill.report import headline, objective_rows, summary_rows

    colour = "green" if card["passed"] else "red"
    out.print(f"[{colour}]{headline(card)}[/{colour}]", highlight=False)
    table = Table("measure", "failover", "failback", title="scorecard")
    for row in summary_rows(card):
        table.add_row(*row)
    out.print(table)
    objectives = Table("objective", "target", "actual", "result", title="objectives")
    for name, target, actual, result in objective_rows(card):
        objectives.add_row(name, target, actual, f"[{'green' if result == 'pass' else 'red'}]{result}[/]")
    out.print(objectives)


def drill(config: ConfigOption = None, domain: DomainOption = None,
          lab: Annotated[bool, typer.Option("--lab", help="drill the embedded lab (started if needed); "
                                            "gates are answered by the drill, recorded")] = False,
          unplanned: Annotated[bool, typer.Option(help="kill the owner region (lab only)")] = False,
          policy: Annotated[str, typer.Option(help="divergent tail: republish|quarantine|discard")]
          = "quarantine",
          rate: Annotated[float, typer.Option(help="workload records per second")] = 50.0,
          settle: Annotated[float, typer.Option(help="workload seconds before, between and after")] = 5.0,
          report_dir: Annotated[Path, typer.Option("--report-dir", help="where the HTML report goes")]
          = Path("drill-reports"),
          evacuate: Annotated[bool, typer.Option(
              "--evacuate", help="evacuate a region (every domain it owns) and return, a workload and "
                                 "checker per domain")] = False,
          from_region: Annotated[str, typer.Option("--from", help="with --evacuate: the region")] = "east",
          as_json: JsonOption = False) -> None:
    """Run a failover drill (failover, then failback) and print its scorecard."""
    from baton.steps.context import DIVERGENT_POLICIES

    if policy not in DIVERGENT_POLICIES:
        raise UsageError(f"--policy must be one of {', '.join(DIVERGENT_POLICIES)}, not {policy!r}")
    if rate <= 0 or settle < 0:
        raise UsageError("--rate must be > 0 and --settle >= 0")
    if unplanned and not lab:
        raise UsageError("--unplanned kills the owner region: use it with --lab")
    if evacuate and unplanned:
        raise UsageError("--evacuate drills a planned evacuation; an unplanned one is not supported yet")
    if lab:
        if config:
            raise UsageError("--lab drills the lab's own topology; drop --config")
        from baton.lab.lab import Lab

        the_lab = Lab(progress=_progress)
        the_lab.up()
        config = str(the_lab.topology_file)
    elif evacuate:
        from baton.evacuation import recorded_authority, select_domains
        from baton.settings import load_topologies

        select_domains(load_topologies(config), from_region, recorded_authority)  # exit 2 first
    else:
        from baton.settings import load_topology

        load_topology(config, domain)  # a bad file fails here, before Prefect starts
    from baton.cli.runbook import use_lab_prefect

    use_lab_prefect()
    from flows.console import quiet_baton_refusals
    from flows.drill import drill as flow

    quiet_baton_refusals()  # Baton's refusals: one `error:` line; tracebacks stay in Prefect's logs
    if evacuate:
        _evacuation_drill(config, from_region, lab, rate, settle, report_dir, as_json)
        return
    err.print("starting the drill flow (Prefect)...")
    card = flow(config=config, domain=domain, unplanned=unplanned, auto_approve=lab,
                divergent_policy=policy, rate=rate,
                settle_seconds=settle, report_dir=str(report_dir))
    if as_json:
        print(json.dumps(card, indent=2, default=str))
    else:
        print_scorecard(card)
        err.print(f"HTML report: {card.get('report_path')}   (baton report {card['runs']['failover']} "
                  "--format html)")
    if not card["passed"]:
        raise typer.Exit(1)


def _evacuation_drill(config, from_region: str, lab: bool, rate: float, settle: float, report_dir: Path,
                      as_json: bool) -> None:
    from baton.drill.report import EVACUATION_HEADERS, evacuation_rows
    from flows.drill import evacuation_drill

    err.print(f"starting the evacuation drill of {from_region} (Prefect)...")
    card = evacuation_drill(config=config, from_region=from_region, auto_approve=lab, rate=rate,
                            settle_seconds=settle, report_dir=str(report_dir))
    if as_json:
        print(json.dumps(card, indent=2, default=str))
    else:
        colour = "green" if card["passed"] else "red"
        out.print(f"[{colour}]evacuation drill of {from_region}: {card['outcome'].upper()}[/{colour}]"
                  + (f" ({card['error']})" if card.get("error") else ""), highlight=False)
        table = Table(*EVACUATION_HEADERS, title="per domain")
        for row in evacuation_rows(card):
            table.add_row(*row)
        out.print(table)
        err.print(f"HTML report: {card.get('report_path')}")
    if not card["passed"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("drill")(handles_errors(drill))
