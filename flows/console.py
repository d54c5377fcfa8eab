"""The operator's terminal: Baton's refusals are one `error:` line, not Prefect's tracebacks.

Prefect logs a failing task or flow at ERROR with the full traceback on its console handler
and on its API handler. For Baton's own errors (BatonError: a named refusal with what to do)
the console copy only buries that line, so it is filtered from console handlers; the API
handler is untouched, and the Prefect logs keep the full detail.
"""

from __future__ import annotations

import logging

from baton.errors import BatonError


def _baton_error_names() -> set[str]:
    names, pending = set(), [BatonError]
    while pending:
        cls = pending.pop()
        names.add(cls.__name__)
        pending.extend(cls.__subclasses__())
    return names


class BatonRefusalFilter(logging.Filter):
    """Drops ERROR records about a BatonError (with its traceback) and their "Failed" echoes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], BatonError):
            return False
        if record.levelno < logging.INFO:
            return True
        message = record.getMessage()
        if "Failed(" in message or "failed with exception" in message:
            return not any(f"exception {n}" in message or f"exception: {n}" in message
                           or f"exception {n}(" in message or f": {n}(" in message
                           for n in _baton_error_names())
        return True


def quiet_baton_refusals() -> None:
    """Install the filter on every console (stream) handler that is not Prefect's API handler."""
    from prefect.logging.handlers import APILogHandler

    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, APILogHandler) \
                    and not any(isinstance(f, BatonRefusalFilter) for f in handler.filters):
                handler.addFilter(BatonRefusalFilter())
