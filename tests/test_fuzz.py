"""Schemathesis against our own OpenAPI document, over HTTP through nginx, with a valid admin token.

FUZZ_EXAMPLES (default 5: a smoke run in `make test`) sets the examples per operation; `make fuzz` runs 800
(over 5,000 cases). Logout is left out: it would revoke the token the fuzzer is using. The admin operations
that can demote, deactivate or delete the fuzzer's own user run in a second pass, after the others, so that
they cannot turn the rest of the run into a wall of 401s. Checks: no 5xx, responses conform to the schema.
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


SELF_HARMING = ["put_webhook_wibot_admin_users", "delete_webhook_wibot_admin_users"]


async def run_schemathesis(url: str, token: str, *selection: str) -> str:
    schemathesis = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    command = [
        schemathesis,
        "run",
        f"{url}/webhook/openapi.json",
        "-H",
        f"Authorization: {token}",
        "-n",
        str(EXAMPLES),
        "--seed",
        "20261123",
        "--request-timeout",
        "30",
        "--checks",
        "not_a_server_error,response_schema_conformance",
        *selection,
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
    return output


async def test_fuzz_the_api_through_the_gateway(stack, factory):  # noqa: F811
    admin = await factory.user("khora", "test123", role="admin")
    await factory.user("colleague", "test123")
    token = bearer(admin, role="admin")["Authorization"]
    excluded = ["--exclude-path", "/webhook/auth/logout"]
    for operation_id in SELF_HARMING:
        excluded += ["--exclude-operation-id", operation_id]
    output = await run_schemathesis(stack.url, token, *excluded)
    assert "Authentication failed" not in output, output[-3000:]  # the token stayed valid all along
    included = [arg for operation_id in SELF_HARMING for arg in ("--include-operation-id", operation_id)]
    await run_schemathesis(stack.url, token, *included)
