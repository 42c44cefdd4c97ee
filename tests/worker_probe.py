"""Run in an extraction worker by tests/test_extraction_pool.py: what a worker was born with."""

from __future__ import annotations

import gc
import os
import resource
import sys
import time
from typing import Any


def birth(modules: list[str]) -> dict[str, Any]:
    """The worker's niceness and its parent's (the forkserver), the CPU it spent before this job, and which of
    `modules` it had imported before being asked anything, and its garbage collector's young threshold."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "niceness": os.getpriority(os.PRIO_PROCESS, 0),
        "parent_niceness": os.getpriority(os.PRIO_PROCESS, os.getppid()),
        "cpu_ms": (usage.ru_utime + usage.ru_stime) * 1000,
        "loaded": [module for module in modules if module in sys.modules],
        "gc_young": gc.get_threshold()[0],
    }


def hold(seconds: float) -> None:
    time.sleep(seconds)
