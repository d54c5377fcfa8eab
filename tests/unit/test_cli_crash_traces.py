"""A native crash of `baton` leaves the Python stack of its threads on stderr."""

from __future__ import annotations

import subprocess
import sys

CRASH = """
import ctypes
from baton.cli import app
try:
    app(["lab", "--help"], standalone_mode=False)  # the CLI's callback runs first
except SystemExit:
    pass
ctypes.string_at(0)  # a NULL read, as a client library would crash
"""


def test_a_segfault_in_the_cli_prints_the_python_stack():
    result = subprocess.run([sys.executable, "-c", CRASH], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "Fatal Python error: Segmentation fault" in result.stderr, result.stderr[-2000:]
    assert "in string_at" in result.stderr and "in <module>" in result.stderr  # where it crashed
