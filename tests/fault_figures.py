"""What other users saw during each dependency fault, as the fault suites measure it (tests/test_fault_matrix.py,
tests/test_directory_faults.py): statuses, and the p99 of their requests during the fault against the same
requests idle, in one run. Written to $WIBOT_FAULT_FIGURES at the end of a run when it is set (conftest); no test
asserts a duration (the machine is shared): bench/faults.json holds one run's figures."""

from __future__ import annotations

from typing import Any

FIGURES: dict[str, dict[str, Any]] = {}

Timed = tuple[int, float]  # (status, seconds)


def p99(seconds: list[float]) -> float:
    ordered = sorted(seconds)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def record(fault: str, *, idle: list[Timed], others: list[Timed], affected: list[Timed]) -> None:
    def summary(answers: list[Timed]) -> dict[str, Any] | None:
        if not answers:
            return None
        return {
            "requests": len(answers),
            "statuses": sorted({status for status, _ in answers}),
            "p99_ms": round(p99([seconds for _, seconds in answers]) * 1000, 1),
        }

    idle_summary, others_summary = summary(idle), summary(others)
    ratio = None
    if idle_summary and others_summary and idle_summary["p99_ms"]:
        ratio = round(others_summary["p99_ms"] / idle_summary["p99_ms"], 2)
    FIGURES[fault] = {
        "others_idle": idle_summary,
        "others_during_fault": others_summary,
        "others_p99_ratio": ratio,
        "affected": summary(affected),
    }
