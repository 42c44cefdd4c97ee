"""`python -m bench.compare LABEL=results.json ...`: one table of several `bench.run` reports, side by side.

Each report's throughputs are given as its own ratio to its own ceiling (measured in the same run), so runs
made at different moments of a shared machine can be compared; p50s are printed as measured.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROWS = [
    ("ceiling (SELECT 1)", 1, "p50"),
    ("chat, 0 ms model", 1, "p50"),
    ("chat, 0 ms model", 16, "ratio"),
    ("list, 10,000 conversations", 16, "ratio"),
    ("list, 10 conversations", 16, "ratio"),
    ("messages (50)", 16, "ratio"),
    ("user tokens", 16, "ratio"),
    ("jwt + revocation check", 16, "ratio"),
    ("jwt + session copy", 16, "ratio"),
    ("list during login storm", 16, "p99"),
    ("list, 10 conversations", 16, "p99"),
    ("login", 16, "rps"),
]


def cell(report: dict[str, Any], scenario: str, concurrency: int, figure: str) -> str:
    for result in report["results"]:
        if result["scenario"] == scenario and result["concurrency"] == concurrency:
            if figure == "ratio":
                return f"{result['ratio_to_ceiling']:.3f}" if result["ratio_to_ceiling"] is not None else "–"
            if figure == "rps":
                return f"{result['rps']:.1f}"
            return f"{result[f'{figure}_ms']:.2f} ms"
    return "–"


def table(reports: dict[str, dict[str, Any]]) -> str:
    labels = list(reports)
    lines = [
        "| Scenario | c | figure | " + " | ".join(labels) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in labels) + " |",
    ]
    for scenario, concurrency, figure in ROWS:
        cells = [cell(reports[label], scenario, concurrency, figure) for label in labels]
        lines.append(f"| {scenario} | {concurrency} | {figure} | " + " | ".join(cells) + " |")
    rss = [", ".join(f"{k} {v}" for k, v in reports[label]["peak_rss_mb"].items()) for label in labels]
    lines.append("| peak RSS (MB) | | | " + " | ".join(rss) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", metavar="LABEL=results.json")
    args = parser.parse_args()
    reports = {}
    for item in args.reports:
        label, _, path = item.partition("=")
        reports[label] = json.loads(Path(path).read_text(encoding="utf-8"))
    print(table(reports))


if __name__ == "__main__":
    main()
