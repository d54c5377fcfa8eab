"""The watch's supervisor starts its worker again after a crash, and stops on a clean exit."""

from __future__ import annotations

import sys
import threading

from baton.watch.supervisor import describe, supervise

# A worker that dies of SIGSEGV on its first two starts (as librdkafka's crash did), then exits 0.
WORKER = """
import os, signal, sys
from pathlib import Path
runs = Path(sys.argv[1])
count = int(runs.read_text() or 0) + 1 if runs.exists() else 1
runs.write_text(str(count))
if count < 3:
    os.kill(os.getpid(), signal.SIGSEGV)
sys.exit(0)
"""


def test_a_crashed_worker_is_started_again_until_it_exits_cleanly(tmp_path):
    runs = tmp_path / "runs"
    said: list[str] = []
    code = supervise([sys.executable, "-c", WORKER, str(runs)], threading.Event(), said.append,
                     delays=(0.01,))
    assert code == 0 and runs.read_text() == "3"
    assert len(said) == 2
    assert all("killed by SIGSEGV" in line and "starting it again" in line for line in said)


def test_a_usage_error_is_not_retried_and_stop_ends_a_running_worker(tmp_path):
    said: list[str] = []
    assert supervise([sys.executable, "-c", "import sys; sys.exit(2)"], threading.Event(), said.append) == 2
    assert said == []
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    assert supervise([sys.executable, "-c", "import time; time.sleep(60)"], stop, said.append) == 0
    assert said == [] and describe(-15) == "killed by SIGTERM" and describe(1) == "exit code 1"
