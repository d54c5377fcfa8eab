"""Baton's flows leave Prefect's heartbeat thread to stop on its own instead of joining it."""

from __future__ import annotations

import functools
import threading
import time

import prefect.flow_engine

import flows


def test_the_sync_engine_does_not_join_the_heartbeat_thread():
    send = prefect.flow_engine._send_heartbeats
    assert isinstance(send, functools.partial), "Prefect's _send_heartbeats is not wrapped: flows/__init__.py"
    assert send.keywords == {"join_on_exit": False}
    assert send.func.__name__ == "_send_heartbeats" and send.func.__module__ == "prefect.flow_engine"
    flows._stop_heartbeats_without_waiting()  # importing twice does not wrap twice
    assert prefect.flow_engine._send_heartbeats is send


class _Engine:
    """What _send_heartbeats reads of a flow run engine."""

    heartbeat_seconds = 30
    flow_run = None
    logger = prefect.flow_engine.get_logger("test")

    def __init__(self):
        self.beats = 0

    def _build_heartbeat_event_template(self):
        return {}, []

    def _emit_flow_run_heartbeat(self, resource, related):
        self.beats += 1


def test_the_heartbeat_is_still_sent_and_its_thread_still_stops():
    engine = _Engine()
    before = set(threading.enumerate())
    with prefect.flow_engine._send_heartbeats(engine):
        deadline = time.monotonic() + 10
        while engine.beats == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        leaving = time.monotonic()
    left = time.monotonic() - leaving
    assert engine.beats == 1  # sent when the run starts, as Prefect does
    assert left < 0.5  # not joined: Prefect's own join waits out the thread's 1 s sleep
    heartbeat = [t for t in threading.enumerate() if t not in before]
    for thread in heartbeat:  # it stops by itself within its one-second sleep
        thread.join(timeout=5)
        assert not thread.is_alive()
