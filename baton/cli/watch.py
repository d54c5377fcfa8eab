"""`baton watch` (the continuous sampler service) and `baton ready` (readiness now)."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from typing import Annotated

import typer

from baton.cli.common import DomainOption, JsonOption, UsageError, err, handles_errors, out

ConfigsOption = Annotated[list[str] | None, typer.Option(
    "--config", "-c", help="topology file (repeat to watch several domains in one process)")]


def register(app: typer.Typer) -> None:
    app.command("watch")(watch)
    app.command("ready")(ready)


@handles_errors
def watch(
    config: ConfigsOption = None,
    domain: Annotated[list[str] | None, typer.Option(
        "--domain", help="watch only these domains (repeat; default: every domain of each file)")] = None,
    metrics_port: Annotated[int | None, typer.Option(
        "--metrics-port", min=0, max=65535, help="serve Prometheus metrics on this port (/metrics)")] = None,
    metrics_address: Annotated[str, typer.Option(help="address the metrics server binds")] = "127.0.0.1",
    interval: Annotated[float | None, typer.Option(
        min=0.5, help="seconds between samples (default: watch.interval_seconds)")] = None,
    once: Annotated[bool, typer.Option("--once", help="sample once, store it and exit")] = False,
    alerts: Annotated[bool, typer.Option(help="post readiness alerts to the approvals channel")] = True,
    worker: Annotated[bool, typer.Option(
        "--worker", hidden=True, help="sample in this process (the supervisor's child)")] = False,
) -> None:
    """Sample lag, replication, checkpoints and the lease of each domain every interval (a service)."""
    from baton.settings import load_topologies, only_domains
    from baton.watch.metrics import WatchMetrics
    from baton.watch.service import Watch

    topologies = [t for path in (config or [None]) for t in load_topologies(path)]
    topologies = only_domains(topologies, domain)
    if interval is not None:
        topologies = [t.model_copy(update={"watch": t.watch.model_copy(
            update={"interval_seconds": interval})}) for t in topologies]
    names = [t.domain.name for t in topologies]
    if len(set(names)) != len(names):
        raise UsageError(f"domain listed twice: {names}; pass each topology file once")
    if not once and not worker:
        return _supervised()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("httpx", "alembic"):  # one line per Connect REST call or migration check otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    metrics = WatchMetrics()
    service = Watch(topologies, metrics=metrics, alerts=alerts)
    if metrics_port is not None:
        try:
            metrics.serve(metrics_port, metrics_address)
        except OSError as e:
            raise UsageError(f"--metrics-port {metrics_port}: cannot listen on {metrics_address}: {e}; "
                             "pick a free port") from e
        err.print(f"metrics on http://{metrics_address}:{metrics_port}/metrics", highlight=False)
    if once:
        for domain in service.domains:
            sample, readiness = service.run_once(domain)
            out.print(f"{sample.domain}: {sample.statement()}; "
                      f"{readiness.summary() if readiness else 'readiness unknown'}", highlight=False)
        return
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    err.print(f"watching {', '.join(names)} every {service.interval:g}s", highlight=False)
    service.run(stop)


def _supervised() -> None:
    """`baton watch` as a service: the same command with --worker in a child process, started again
    whenever it dies (a native librdkafka crash cannot be caught in-process)."""
    from baton.watch.supervisor import supervise

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    xoptions = [f"-X{k}" if v is True else f"-X{k}={v}" for k, v in sys._xoptions.items()]
    command = [sys.executable, *xoptions, "-X", "faulthandler", "-m", "baton", *sys.argv[1:], "--worker"]
    code = supervise(command, stop, lambda line: err.print(line, highlight=False))
    if code:
        raise typer.Exit(code)


@handles_errors
def ready(config: Annotated[str | None, typer.Option("--config", "-c", help="topology file")] = None,
          domain: DomainOption = None, as_json: JsonOption = False) -> None:
    """Can the secondary safely take over right now? Exit 0 ready, 1 not ready, 2 usage."""
    from baton.settings import load_topology
    from baton.watch.service import check_now

    sample, readiness = check_now(load_topology(config, domain))
    if as_json:
        print(json.dumps(readiness.as_dict() | {"sample": sample.as_dict()}, indent=2, default=str))
    else:
        colour = {"pass": "green", "warn": "yellow", "fail": "red"}
        for check in readiness.checks:
            out.print(f"[{colour[check.status]}]{check.status.upper():4}[/] {check.name}: {check.evidence}",
                      highlight=False)
        out.print(f"{readiness.secondary} {'READY' if readiness.ready else 'NOT READY'} to take over "
                  f"{readiness.domain} from {readiness.owner}", highlight=False)
    if not readiness.ready:
        raise typer.Exit(1)
