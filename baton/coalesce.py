"""Concurrent identical reads share one read that started after each caller asked.

An evacuation runs ten domains' steps in threads of one process, and each step reads MM2's whole
offset-sync topic (every domain's syncs) in Python: ten concurrent reads of the same records.
Sharing a read already under way would hand a caller data older than its call; a caller instead
joins the next read, which starts once the running one ends, so every answer is at least as
fresh as a read of its own (what was written before the call is in it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class _Flight(Generic[T]):
    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: T | None = None
        self.error: BaseException | None = None
        self.callers = 1


class Coalescer(Generic[T]):
    """`read(key, fn)` returns fn()'s result from a call that started after this one asked."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[Hashable, _Flight[T]] = {}  # not started yet: anyone may join
        self._running: dict[Hashable, threading.Lock] = {}
        self.reads = 0  # fn() calls made, for tests and benchmarks

    def read(self, key: Hashable, fn: Callable[[], T]) -> T:
        with self._lock:
            flight = self._pending.get(key)
            if flight is not None:
                flight.callers += 1
                leader = False
            else:
                flight = self._pending[key] = _Flight()
                leader = True
            running = self._running.setdefault(key, threading.Lock())
        if leader:
            with running:  # callers arriving meanwhile join this flight
                with self._lock:
                    del self._pending[key]
                    self.reads += 1
                try:
                    flight.result = fn()
                except BaseException as e:  # noqa: BLE001 - every caller of the flight gets it
                    flight.error = e
                finally:
                    flight.done.set()
        else:
            flight.done.wait()
        if flight.error is not None:
            raise flight.error
        return flight.result  # type: ignore[return-value]
