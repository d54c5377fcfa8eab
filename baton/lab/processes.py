"""The lab's JVM processes: started detached, found again by pid file, stopped by pid only.

Each JVM carries `-Dbaton.lab.process=<its directory>` on its command line, so a pid
file is trusted only when that pid still runs this very process (stale pid files and
recycled pids are detected, and nothing else is ever signalled).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from baton.errors import LabError

LOG4J = Path(__file__).with_name("log4j2.properties")


def java() -> str:
    home = os.environ.get("JAVA_HOME")
    candidate = Path(home) / "bin" / "java" if home else shutil.which("java")
    if not candidate or not Path(candidate).exists():
        raise LabError("java was not found (set JAVA_HOME or put Java 17+ on PATH)")
    return str(candidate)


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class LabProcess:
    name: str
    directory: Path

    @property
    def pid_file(self) -> Path:
        return self.directory / "pid"

    @property
    def log_file(self) -> Path:
        return self.directory / "process.log"

    @property
    def marker(self) -> str:
        return f"-Dbaton.lab.process={self.directory}"

    @property
    def python_marker(self) -> str:
        """The same mark for a Python process: `python -X baton.lab.process=<dir>` (ignored by Python)."""
        return self.marker.removeprefix("-D")

    def _proc_state(self, pid: int) -> str | None:
        """The kernel's state letter for pid if it runs this lab process, else None."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        # A process that has just been started shows an empty cmdline for a moment (measured: a
        # few ms after Popen returns, longer on a busy machine); it is ours, not a stale pid.
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        starting = not any(cmdline) and ppid != "2"  # kernel threads (children of kthreadd) have none
        marked = self.marker.encode() in cmdline or self.python_marker.encode() in cmdline
        if not (starting or marked):
            return None
        if state == "Z":
            with contextlib.suppress(ChildProcessError):  # our own child that died: reap it
                os.waitpid(pid, os.WNOHANG)
            return None
        return state

    def pid(self) -> int | None:
        """The live pid of this process, or None (a stale pid file is removed)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if self._proc_state(pid) is None:
            self.pid_file.unlink(missing_ok=True)
            return None
        return pid

    def state(self) -> str:
        """running | hung (stopped by SIGSTOP) | down"""
        pid = self.pid()
        if pid is None:
            return "down"
        return "hung" if self._proc_state(pid) in ("T", "t") else "running"

    def start(self, classpath: str, main: str, args: list[str], heap: str) -> int:
        if self.pid() is not None:
            raise LabError(f"{self.name} is already running (pid {self.pid()})")
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            java(), *heap.split(), "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true", self.marker,
            f"-Dlog4j2.configurationFile={LOG4J}", "-cp", classpath, main, *args,
        ]
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.directory, start_new_session=True,
            )
        self.pid_file.write_text(str(process.pid))
        return process.pid

    def start_python(self, args: list[str], env: dict[str, str] | None = None) -> int:
        """A Python service of the lab (`python -m ...`), marked and detached like the JVMs."""
        if self.pid() is not None:
            raise LabError(f"{self.name} is already running (pid {self.pid()})")
        self.directory.mkdir(parents=True, exist_ok=True)
        # faulthandler: a native crash (librdkafka) leaves its traceback in process.log.
        command = [sys.executable, "-X", self.python_marker, "-X", "faulthandler", *args]
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.directory, start_new_session=True, env=env,
            )
        self.pid_file.write_text(str(process.pid))
        return process.pid

    def signal(self, sig: signal.Signals) -> int:
        pid = self.pid()
        if pid is None:
            raise LabError(f"{self.name} is not running")
        os.kill(pid, sig)
        return pid

    def stop(self, timeout: float = 30) -> bool:
        """SIGTERM, then SIGKILL after timeout. Returns False if it was not running."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGCONT)  # a hung process cannot handle SIGTERM
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.pid() is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.pid() is not None:
            os.kill(pid, signal.SIGKILL)
            while self.pid() is not None:
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        return True

    def tail(self, lines: int = 20, max_bytes: int = 64 * 1024) -> str:
        """The log's last lines, read from its last `max_bytes` only (a long-lived lab's JVM
        logs reached 2 GB)."""
        try:
            with self.log_file.open("rb") as log:
                start = max(0, log.seek(0, 2) - max_bytes)
                log.seek(start)
                text = log.read().decode(errors="replace").splitlines()
        except OSError:
            return ""
        if start > 0:
            text = text[1:]  # the first line read may be the end of a longer one
        return "\n".join(text[-lines:])
