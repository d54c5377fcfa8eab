"""Shared CLI pieces: consoles, common options, and the error-to-exit-code wrapper."""

from __future__ import annotations

import functools
from typing import Annotated

import typer
from rich.console import Console

from baton.errors import BatonError, ConfigError, UsageError  # noqa: F401 (re-exported)

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[str | None, typer.Option("--config", "-c", help="topology file")]
DomainOption = Annotated[str | None, typer.Option(
    "--domain", envvar="BATON_DOMAIN", help="the domain of a multi-domain topology file")]
JsonOption = Annotated[bool, typer.Option("--json", help="print one JSON object")]


def handles_errors(command):
    """Turn BatonError into a clear message: exit 2 for usage/config, 1 for the rest."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (ConfigError, UsageError) as e:
            err.print(f"[red]error:[/red] {e}", highlight=False)
            raise typer.Exit(2) from None
        except BatonError as e:
            err.print(f"[red]error:[/red] {e}", highlight=False)
            raise typer.Exit(1) from None

    return wrapper


def _progress(message: str) -> None:
    err.print(message, highlight=False)


