"""Coalesced reads: callers share a read, never one that started before they asked."""

import threading

import pytest

from baton.coalesce import Coalescer


def test_callers_arriving_during_a_read_share_the_next_read_not_the_running_one():
    coalescer: Coalescer[int] = Coalescer()
    started, release = threading.Event(), threading.Event()
    calls = []

    def read():
        calls.append(len(calls) + 1)
        if len(calls) == 1:  # the first read is under way while the others ask
            started.set()
            assert release.wait(10)
        return calls[-1]

    results: dict[str, int] = {}

    def ask(name):
        results[name] = coalescer.read("syncs", read)

    first = threading.Thread(target=ask, args=("first",))
    first.start()
    assert started.wait(10)
    later = [threading.Thread(target=ask, args=(f"later-{i}",)) for i in range(5)]
    for t in later:
        t.start()
    # wait until all five joined the pending flight before the first read ends
    for _ in range(1000):
        with coalescer._lock:
            pending = coalescer._pending.get("syncs")
            if pending is not None and pending.callers == 5:
                break
        threading.Event().wait(0.01)
    release.set()
    for t in [first, *later]:
        t.join(10)
    assert results["first"] == 1
    assert {results[f"later-{i}"] for i in range(5)} == {2}  # one read, started after they asked
    assert coalescer.reads == 2 and calls == [1, 2]


def test_a_failed_read_fails_every_caller_of_it_and_the_next_read_runs_again():
    coalescer: Coalescer[int] = Coalescer()

    def broken():
        raise RuntimeError("region unreachable")

    with pytest.raises(RuntimeError, match="region unreachable"):
        coalescer.read("syncs", broken)
    assert coalescer.read("syncs", lambda: 7) == 7
    assert coalescer.read("other", lambda: 8) == 8
    assert coalescer.reads == 3
