"""`baton config`: topology files."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from baton.cli.common import ConfigError, ConfigOption, DomainOption, JsonOption, handles_errors, out
from baton.errors import RegionUnreachable

config_app = typer.Typer(no_args_is_help=True, help="Topology files.")


@config_app.command("check")
@handles_errors
def config_check(config: ConfigOption = None, domain: DomainOption = None, as_json: JsonOption = False,
                 connect: Annotated[bool, typer.Option(
                     "--connect", help="also try every configured credential against its region")] = False,
                 timeout: Annotated[float, typer.Option(help="seconds per region and credential")] = 5.0,
                 ) -> None:
    """Validate a topology file (names the file and field on error, exit 2); with --connect,
    log in to every region with every configured identity (a refused login exits 2)."""
    from baton.settings import load_topology, resolve_config_path

    topology = load_topology(config, domain)
    probes = _probe_credentials(topology, timeout) if connect else []
    if as_json:
        print(json.dumps({"topology": json.loads(topology.model_dump_json()), "connect": probes}))
    else:
        out.print(f"{resolve_config_path(config)}: valid; domain {topology.domain.name}, "
                  f"regions {', '.join(topology.regions)}, owner {topology.domain.initial_owner}")
        for probe in probes:
            colour = "green" if probe["result"] == "ok" else "red"
            out.print(f"  {probe['region']:8} {probe['identity']:11} [{colour}]{probe['result']}[/{colour}]"
                      + (f" {probe['detail']}" if probe["detail"] else ""), highlight=False)
    refused = [p for p in probes if p["result"] == "authentication failed"]
    if refused:
        raise ConfigError("; ".join(p["detail"] for p in refused))
    down = [p for p in probes if p["result"] != "ok"]
    if down:
        raise RegionUnreachable("; ".join(p["detail"] for p in down))


def _probe_credentials(topology, timeout: float) -> list[dict]:
    from baton.errors import AuthenticationFailed
    from baton.kafka.admin import check_reachable

    probes = []
    for name, region in topology.regions.items():
        for who in ("admin", "producer", "consumer", "replicator"):
            if getattr(region, who) is None:
                continue
            result, detail = "ok", ""
            try:
                check_reachable(name, region, timeout=timeout, who=who)
            except AuthenticationFailed as e:
                result, detail = "authentication failed", str(e)
            except RegionUnreachable as e:
                result, detail = "unreachable", str(e)
            probes.append({"region": name, "identity": who, "result": result, "detail": detail})
    return probes
