"""`baton config`: topology files."""

from __future__ import annotations

import typer

from baton.cli.common import ConfigOption, JsonOption, handles_errors, out

config_app = typer.Typer(no_args_is_help=True, help="Topology files.")


@config_app.command("check")
@handles_errors
def config_check(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Validate a topology file (names the file and field on error, exit 2)."""
    from baton.settings import load_topology, resolve_config_path

    topology = load_topology(config)
    if as_json:
        print(topology.model_dump_json())
    else:
        out.print(f"{resolve_config_path(config)}: valid; domain {topology.domain.name}, "
                  f"regions {', '.join(topology.regions)}, owner {topology.domain.initial_owner}")


