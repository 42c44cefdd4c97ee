"""Schemathesis against our own OpenAPI document, over HTTP through nginx, with a valid admin token.

FUZZ_EXAMPLES (default 5: a smoke run in `make test`) sets the examples per operation; `make fuzz` runs 300
(over 5,000 cases). Logout is left out: it would revoke the token the fuzzer is using.
Checks: no 5xx, and every response conforms to the documented schema.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import bearer
from tests.figures import FIGURES
from tests.test_gateway import stack  # noqa: F401 - the routed stack fixture

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "5"))


async def test_fuzz_the_api_through_the_gateway(stack, factory, tmp_path):  # noqa: F811
    admin = await factory.user("khora", "test123", role="admin")
    await factory.user("colleague", "test123")
    schemathesis = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    command = [
        schemathesis,
        "run",
        f"{stack.url}/webhook/openapi.json",
        "-H",
        bearer(admin, role="admin")["Authorization"].join(["Authorization: ", ""]),
        "-n",
        str(EXAMPLES),
        "--seed",
        "20261123",
        "--checks",
        "not_a_server_error,response_schema_conformance",
        "--exclude-path",
        "/webhook/auth/logout",
        "--request-timeout",
        "30",
    ]
    result = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=1800, env={**os.environ, "NO_COLOR": "1"}
    )
    output = result.stdout + result.stderr
    generated = re.search(r"(\d+) generated", output)
    assert generated, output[-3000:]
    FIGURES["fuzz_cases"] += int(generated.group(1))
    server_errors = len(re.findall(r"Server error", output))
    FIGURES["fuzz_5xx"] += server_errors
    assert result.returncode == 0, output[-5000:]
    assert server_errors == 0
    assert "Authentication failed" not in output, output[-3000:]
