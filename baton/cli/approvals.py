"""`baton approvals serve`: the approval service (Slack interactivity, or Socket Mode)."""

from __future__ import annotations

from typing import Annotated

import typer

from baton.cli.common import ConfigError, ConfigOption, DomainOption, err, handles_errors

approvals_app = typer.Typer(no_args_is_help=True, help="Approvals in Slack: the approval service.")


@approvals_app.command("serve")
@handles_errors
def approvals_serve(config: ConfigOption = None, domain: DomainOption = None,
                    host: Annotated[str, typer.Option(help="listen address")] = "127.0.0.1",
                    port: Annotated[int, typer.Option(min=1, max=65535, help="listen port")] = 3000,
                    socket_mode: Annotated[bool, typer.Option(
                        "--socket-mode", help="connect to Slack with the app-level token instead of "
                                              "receiving requests (health endpoint still served)")] = False,
                    ) -> None:
    """Verify Slack clicks, record them, and resume the paused flow run."""
    import threading

    import uvicorn

    from baton.approvals.app import INTERACTIONS_PATH, create_app, run_socket_mode
    from baton.approvals.service import ApprovalService, configure_logging
    from baton.settings import load_topology

    topology = load_topology(config, domain)
    missing = topology.approvals.missing_for_slack(socket_mode=socket_mode)
    if missing:
        raise ConfigError("the approval service needs approvals." + ", approvals.".join(missing)
                          + " (in the topology file or BATON_APPROVALS__<FIELD>)")
    configure_logging()
    service = ApprovalService(topology)
    if socket_mode:
        threading.Thread(target=run_socket_mode, args=(service,), name="socket-mode", daemon=True).start()
    else:
        err.print(f"Slack interactivity request URL: http://{host}:{port}{INTERACTIONS_PATH} "
                  "(behind your HTTPS endpoint)", highlight=False)
    uvicorn.run(create_app(service), host=host, port=port, log_config=None)
