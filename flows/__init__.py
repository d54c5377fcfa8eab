"""Baton's Prefect flows (one module per runbook) and what they share."""

from __future__ import annotations

import functools

import prefect.flow_engine


def _stop_heartbeats_without_waiting() -> None:
    """A flow run's heartbeat thread (Prefect 3.9: every 180 s, for crashed-run detection) checks
    its stop flag once per second, and the end of every synchronous flow joined it: 0-1 s added to
    each run's return (bench/flow_end.py). Prefect's async engine already leaves the daemon thread
    to stop on its own; the sync engine does the same here. Heartbeats are sent as before."""
    send = getattr(prefect.flow_engine, "_send_heartbeats", None)  # absent: a Prefect that changed it
    if callable(send) and not isinstance(send, functools.partial):
        prefect.flow_engine._send_heartbeats = functools.partial(send, join_on_exit=False)


_stop_heartbeats_without_waiting()
