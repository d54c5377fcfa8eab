"""`baton lab`: the embedded two-region lab, and faults to inject into it."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from baton.cli.common import JsonOption, UsageError, _progress, handles_errors, out

lab_app = typer.Typer(no_args_is_help=True, help="The embedded two-region lab (no Docker).")
fault_app = typer.Typer(no_args_is_help=True, help="Inject faults into the lab.")
lab_app.add_typer(fault_app, name="fault")


@lab_app.command("up")
@handles_errors
def lab_up(
    policy: Annotated[str, typer.Option(help="MM2 replication policy: default|identity")] = "default",
    as_json: JsonOption = False,
) -> None:
    """Start (or reuse) two KRaft regions and MirrorMaker 2 east -> west."""
    from baton.lab.lab import Lab

    if policy not in ("default", "identity"):
        raise UsageError(f"--policy must be default or identity, not {policy!r}")
    status = Lab(progress=_progress, policy=policy).up()
    _print_status(status, as_json)


@lab_app.command("down")
@handles_errors
def lab_down(purge: Annotated[bool, typer.Option(help="delete the lab's data too")] = False) -> None:
    """Stop the lab's own processes (by pid)."""
    from baton.lab.lab import Lab

    stopped = Lab(progress=_progress).down(purge=purge)
    out.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@lab_app.command("status")
@handles_errors
def lab_status(as_json: JsonOption = False) -> None:
    """Regions, replication state and the topology file of the lab."""
    from baton.lab.lab import Lab

    _print_status(Lab().status(), as_json)


def _print_status(status: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(status, indent=2))
        return
    for name, region in status["regions"].items():
        mark = "[green]up[/green]" if region["up"] else f"[red]{region['process']}[/red]"
        out.print(f"region {name:5} {region['bootstrap']:22} {mark}")
    replication = status["replication"]
    colour = "green" if replication["state"] == "RUNNING" else "red"
    out.print(f"replication {replication['engine']} {replication['flow']} "
              f"[{colour}]{replication['state']}[/{colour}] (policy {replication['policy']}, "
              f"Connect {replication['connect']['url']})")
    for name, flow in replication.get("domains", {}).items():
        colour = "green" if flow["state"] == "RUNNING" else "red"
        out.print(f"  domain {name:9} {flow['flow']} [{colour}]{flow['state']}[/{colour}]")
    for name, service in status.get("services", {}).items():
        where = {"prefect": f"UI {service.get('ui')}",
                 "watch": f"metrics {service.get('metrics')}"}.get(name, "")
        out.print(f"{name:11} {service['process']:8} {where}".rstrip(), highlight=False)
    out.print(f"config {status['config']}")


@fault_app.command("kill")
@handles_errors
def fault_kill(region: str) -> None:
    """SIGKILL a region's broker."""
    _fault("kill", region)


@fault_app.command("hang")
@handles_errors
def fault_hang(region: str) -> None:
    """SIGSTOP a region's broker."""
    _fault("hang", region)


@fault_app.command("resume")
@handles_errors
def fault_resume(region: str) -> None:
    """SIGCONT a hung broker."""
    _fault("resume", region)


@fault_app.command("restart")
@handles_errors
def fault_restart(region: str) -> None:
    """Start a region's broker again with its data."""
    _fault("restart", region)


@fault_app.command("replication")
@handles_errors
def fault_replication(action: Annotated[str, typer.Argument(help="stop|start")]) -> None:
    """Stop or start MirrorMaker 2 east -> west."""
    _fault(action, "replication")


def _fault(action: str, target: str) -> None:
    from baton.errors import LabError
    from baton.lab.lab import Lab

    try:
        out.print(Lab(progress=_progress).fault(action, target))
    except LabError as e:
        if "unknown" in str(e) or "faults are" in str(e):
            raise UsageError(str(e)) from e
        raise


