"""Pseudonymisation (#30): precision and recall per kind on the generated labelled corpus (tests/personal_data.py),
and what it costs a chat, in µs per KB of text.

    .venv/bin/python -m bench.privacy [--samples 20000] [--out bench/privacy.json] [--against REV]

Recall and precision: a labelled identifier counts as found only when the same kind covers exactly its
characters; anything else flagged is a false positive. Names are measured with the option on (off by default).
Overhead: `Pseudonyms.mask` over texts of 1, 8 and 64 KB: tickets from the corpus, joined (identifiers in every
line), and technicians' lines without any identifier (IP addresses, ticket numbers, serials: the common case);
best of 5 runs each; µs per KB = time / size. `--against REV`: the detectors of git revision REV and today's,
timed in turns over the same tickets in this run (their ratio is the figure to quote; the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from services.chat.privacy import Pseudonyms
from services.chat.privacy.detect import find_identifiers
from tests import personal_data


def accuracy(samples: list[personal_data.Sample]) -> dict[str, dict[str, float | int]]:
    scores = personal_data.score(samples, lambda t: [(f.kind, f.start, f.end) for f in find_identifiers(t, names=True)])
    return {
        kind: {
            "labelled": s.found + s.missed,
            "found": s.found,
            "missed": s.missed,
            "false_positives": s.false,
            "recall": round(s.recall, 4),
            "precision": round(s.precision, 4),
        }
        for kind, s in scores.items()
    }


def microseconds_per_kb(text: str, *, names: bool, runs: int = 5) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        Pseudonyms(names=names).mask(text)
        best = min(best, time.perf_counter() - started)
    return round(best * 1e6 / (len(text.encode()) / 1024), 1)


def overhead(samples: list[personal_data.Sample]) -> dict[str, dict[str, float]]:
    rng = random.Random(30)
    tickets = "\n".join(sample.text for sample in samples)
    # What technicians write without any identifier: addresses, ticket numbers, serials (every lookalike).
    plain = "\n".join(
        f"Incident sur {lookalike(rng)} depuis {lookalike(rng)}, aucun impact, voir la procédure VPN."
        for lookalike in personal_data.LOOKALIKES[:-3]  # the wrong-checksum ones look like identifiers on purpose
        for _ in range(200)
    )
    figures = {}
    for size_kb in (1, 8, 64):
        size = size_kb * 1024
        figures[f"{size_kb}KB"] = {
            "tickets_us_per_kb": microseconds_per_kb(tickets[:size], names=False),
            "tickets_with_names_us_per_kb": microseconds_per_kb(tickets[:size], names=True),
            "no_identifier_us_per_kb": microseconds_per_kb(plain[:size], names=False),
        }
    return figures


def against(revision: str, samples: list[personal_data.Sample], rounds: int = 3) -> dict[str, float | str]:
    """find_identifiers of `revision` and of this tree, in turns, over the same 64 KB of tickets."""
    import importlib.util
    import subprocess
    import tempfile

    source = subprocess.run(
        ["git", "show", f"{revision}:services/chat/privacy/detect.py"], capture_output=True, text=True, check=True
    ).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as module:
        module.write(source)
    spec = importlib.util.spec_from_file_location("detect_then", module.name)
    assert spec is not None and spec.loader is not None
    then = importlib.util.module_from_spec(spec)
    sys.modules["detect_then"] = then  # dataclasses look their module up while the class is made
    spec.loader.exec_module(then)
    text = "\n".join(sample.text for sample in samples)[: 64 * 1024]
    kb = len(text.encode()) / 1024

    def best(find: object) -> float:
        fastest = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            find(text)  # type: ignore[operator]
            fastest = min(fastest, time.perf_counter() - started)
        return fastest * 1e6 / kb

    pairs = [(best(then.find_identifiers), best(find_identifiers)) for _ in range(rounds)]
    before, now = min(p[0] for p in pairs), min(p[1] for p in pairs)
    return {"revision": revision, "before_us_per_kb": round(before, 1), "now_us_per_kb": round(now, 1),
            "ratio": round(now / before, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--against", metavar="REV", help="also time the detectors of this git revision, in turns")
    args = parser.parse_args()
    samples = personal_data.corpus(args.samples)
    result = {"samples": args.samples, "accuracy": accuracy(samples), "overhead": overhead(samples)}
    if args.against:
        result["against"] = against(args.against, samples)
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
