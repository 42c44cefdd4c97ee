"""Run in an extraction worker by tests/test_extraction_pool.py: what a worker was born with."""

from __future__ import annotations

import os
import resource
import sys
import time
from typing import Any


def birth(modules: list[str]) -> dict[str, Any]:
    """The worker's niceness and its parent's (the forkserver), the CPU it spent before this job, and which of
    `modules` it had imported before being asked anything."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open(f"/proc/{os.getppid()}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return {
        "niceness": os.getpriority(os.PRIO_PROCESS, 0),
        "parent_niceness": int(fields[16]),  # proc(5): field 19, after pid and comm
        "cpu_ms": (usage.ru_utime + usage.ru_stime) * 1000,
        "loaded": [module for module in modules if module in sys.modules],
    }


def hold(seconds: float) -> None:
    time.sleep(seconds)
