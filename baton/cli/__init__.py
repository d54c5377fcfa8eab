"""`baton`: parse, call, print. One sub-app per command family, one module each."""

from __future__ import annotations

import contextlib
import faulthandler
import io
import os
import sys

import typer

# Before Prefect is imported: a temporary server the CLI starts in-process (no PREFECT_API_URL)
# must not try to send telemetry (offline machines log "Failed to send telemetry").
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from baton.cli.approvals import approvals_app
from baton.cli.audit import audit_app
from baton.cli.authority import authority_app
from baton.cli.config import config_app
from baton.cli.drill import register as register_drill
from baton.cli.lab import lab_app
from baton.cli.recover import register as register_recover
from baton.cli.replication import replication_app
from baton.cli.runbook import register as register_runbooks
from baton.cli.watch import register as register_watch

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Kafka failover runbooks.")
app.add_typer(lab_app, name="lab")
app.add_typer(config_app, name="config")
app.add_typer(audit_app, name="audit")
app.add_typer(authority_app, name="authority")
app.add_typer(replication_app)  # top level: lag, currency, offsets
register_runbooks(app)  # top level: failover, failback, reprotect, runs, report
register_drill(app)  # top level: drill
register_recover(app)  # top level: recover
app.add_typer(approvals_app, name="approvals")
register_watch(app)  # top level: watch, ready
# Further command families register here, one line each.


@app.callback()
def _crash_traces() -> None:
    # A native crash (SIGSEGV in a Kafka client, say) in the middle of a hand-over leaves at least
    # every thread's Python stack on stderr, next to the run the operator resumes.
    with contextlib.suppress(AttributeError, ValueError, io.UnsupportedOperation):  # stderr with no file
        faulthandler.enable(file=sys.stderr, all_threads=True)
