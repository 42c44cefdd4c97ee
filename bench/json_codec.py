"""`python -m bench.json_codec`: what orjson changes, in-process, against the json module it replaced.

The three places the services (de)serialize JSON themselves (the contract models already go through pydantic's
own serializer): a request body read (`shared.bodies.read_json_object`), an error envelope written, a streamed
event written (`services/chat/writer.py`). Each is timed both ways in the same run, best of 5 rounds;
the figure to read is the ratio.
"""

from __future__ import annotations

import argparse
import base64
import json
import timeit
import uuid
from collections.abc import Callable
from typing import Any

import orjson

CHAT_BODY = json.dumps(
    {"conversation_id": str(uuid.uuid4()), "message": "Comment réinitialiser le VPN d'un poste ? " * 5, "mode": "flash"}
).encode()
ATTACHMENT_BODY = json.dumps(
    {
        "conversation_id": str(uuid.uuid4()),
        "message": "Résume ce fichier",
        "files": [{"name": "note.txt", "type": "text/plain", "content": base64.b64encode(b"x" * 300_000).decode()}],
    }
).encode()
ENVELOPE = {"success": False, "error": "Quota mensuel de tokens dépassé", "code": "QUOTA_EXCEEDED"}
DELTA = {"content": "Voici la procédure à suivre pour réinitialiser"}


def best_us(function: Callable[[], Any], number: int) -> float:
    return min(timeit.repeat(function, number=number, repeat=5)) / number * 1e6


def cases() -> list[tuple[str, Callable[[], Any], Callable[[], Any], int]]:
    return [
        (
            "chat body read (0.3 KB)",
            lambda: json.loads(CHAT_BODY.decode("utf-8")),
            lambda: orjson.loads(CHAT_BODY),
            20_000,
        ),
        (
            "body with a 400 KB attachment read",
            lambda: json.loads(ATTACHMENT_BODY.decode("utf-8")),
            lambda: orjson.loads(ATTACHMENT_BODY),
            200,
        ),
        ("error envelope written", lambda: json.dumps(ENVELOPE).encode(), lambda: orjson.dumps(ENVELOPE), 50_000),
        (
            "streamed event written",
            lambda: f"event: delta\ndata: {json.dumps(DELTA, ensure_ascii=False)}\n\n".encode(),
            lambda: b"event: delta\ndata: " + orjson.dumps(DELTA) + b"\n\n",
            50_000,
        ),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.json_codec", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the figures there as JSON")
    args = parser.parse_args()
    rows = []
    for name, with_json, with_orjson, number in cases():
        before, after = best_us(with_json, number), best_us(with_orjson, number)
        rows.append({"case": name, "json_us": round(before, 2), "orjson_us": round(after, 2),
                     "speedup": round(before / after, 1)})  # fmt: skip
        print(f"{name:<36} json {before:9.2f} µs   orjson {after:9.2f} µs   {before / after:5.1f}×", flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as out:
            json.dump(rows, out, indent=2, ensure_ascii=False)
            out.write("\n")


if __name__ == "__main__":
    main()
