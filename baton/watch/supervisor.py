"""Keep the watch running through a crash of its own process.

A native crash inside librdkafka cannot be caught in Python: on the lab a watch died of a SIGSEGV
in librdkafka's main thread right after a broker restart, silently, and the RPO record stopped.
So `baton watch` runs the sampler in a worker process and starts it again when it dies.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable

RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)  # seconds, growing while the worker keeps dying
HEALTHY_AFTER = 60.0  # a worker that ran this long resets the back-off
CLEAN_EXITS = (0, 2)  # done, or a usage error (bad config, busy port): starting again cannot help


def describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def supervise(command: list[str], stop: threading.Event, say: Callable[[str], None],
              delays: tuple[float, ...] = RESTART_DELAYS) -> int:
    """Run `command` until `stop` is set or it exits cleanly (0 or 2: its code is returned); start it
    again, after a growing delay, whenever it dies otherwise. `stop` ends the worker with SIGTERM."""
    failures = 0
    while True:
        started = time.monotonic()
        worker = subprocess.Popen(command)
        while worker.poll() is None:
            if stop.wait(0.5):
                worker.terminate()
                try:
                    worker.wait(30)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
                return 0
        if worker.returncode in CLEAN_EXITS:
            return worker.returncode
        failures = 0 if time.monotonic() - started > HEALTHY_AFTER else failures + 1
        delay = delays[min(failures, len(delays)) - 1] if failures else delays[0]
        say(f"watch worker (pid {worker.pid}) died: {describe(worker.returncode)}; "
            f"starting it again in {delay:g} s")
        if stop.wait(delay):
            return 0
