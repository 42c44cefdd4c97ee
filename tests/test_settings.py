"""Settings from the environment; a service refuses to start with a weak or missing JWT_SECRET."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared import Settings

ROOT = Path(__file__).resolve().parent.parent
GOOD_SECRET = "d-ULpSPyH-EDe3AIVNp6Qk1rX0bY7sTzWc4uJ"


def run_service(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # From an empty directory: a developer's .env in the checkout must not supply the secret.
    clean = {k: v for k, v in os.environ.items() if k not in {"JWT_SECRET", "DATABASE_URL"}}
    return subprocess.run(
        [sys.executable, "-m", "services.auth", "--port", "0"],
        env={**clean, **env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
    )


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        ("x" * 31, "at least 32 bytes"),
        ("change-me-to-at-least-32-random-bytes-please", "placeholder of .env.example"),
        ("x" * 64, "too predictable"),
        ("azerty" * 6, "too predictable"),
    ],
    ids=["short", "placeholder", "one-character", "repeated-word"],
)
def test_weak_secrets_are_refused(secret, why):
    with pytest.raises(ValidationError, match=why):
        Settings(_env_file=None, jwt_secret=secret)  # type: ignore[call-arg]


def test_random_secrets_are_accepted():
    import secrets

    drawn = [secrets.token_hex(16) for _ in range(1000)] + [secrets.token_urlsafe(32) for _ in range(100)]
    for secret in (GOOD_SECRET, *drawn):  # many draws: a rule that refuses some random secrets shows here
        assert Settings(_env_file=None, jwt_secret=secret).jwt_secret.get_secret_value() == secret  # type: ignore[call-arg]


def test_the_env_example_secret_is_refused_by_a_starting_service(tmp_path):
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    placeholder = next(line.split("=", 1)[1] for line in example.splitlines() if line.startswith("JWT_SECRET="))
    result = run_service({"JWT_SECRET": placeholder}, tmp_path)
    assert result.returncode == 2, result.stderr
    assert "placeholder" in result.stderr and placeholder not in result.stderr


@pytest.mark.parametrize("env", [{"JWT_SECRET": "too-short"}, {}])
def test_service_refuses_to_start_and_says_why(env, tmp_path):
    result = run_service(env, tmp_path)
    assert result.returncode == 2, result.stderr
    assert "JWT_SECRET" in result.stderr
    assert "refuse de démarrer" in result.stderr


def test_postgres_variables_build_the_dsn_and_database_url_wins(monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)  # the test run's own server (tests/conftest.py)
    for key, value in {
        "POSTGRES_HOST": "db.internal",
        "POSTGRES_PORT": "6543",
        "POSTGRES_DB": "wibot",
        "POSTGRES_USER": "widip",
        "POSTGRES_PASSWORD": "p@ss:word",
    }.items():
        monkeypatch.setenv(key, value)
    settings = Settings(_env_file=None, jwt_secret=GOOD_SECRET)  # type: ignore[call-arg]
    assert settings.dsn == "postgresql://widip:p%40ss%3Aword@db.internal:6543/wibot"
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/d")
    assert Settings(_env_file=None, jwt_secret=GOOD_SECRET).dsn == "postgresql://u@h/d"  # type: ignore[call-arg]


def test_limits_are_settings(monkeypatch):
    monkeypatch.setenv("CHAT_MESSAGE_MAX_CHARS", "123")
    monkeypatch.setenv("MAX_BODY_BYTES", "4096")
    monkeypatch.setenv("MISTRAL_MODEL_CODE", "codestral-latest")
    settings = Settings(_env_file=None, jwt_secret=GOOD_SECRET)  # type: ignore[call-arg]
    assert (settings.chat_message_max_chars, settings.max_body_bytes) == (123, 4096)
    assert settings.model_for_mode("code") == "codestral-latest"
    assert settings.model_for_mode("flash") == settings.mistral_model == "mistral-large-latest"


def test_every_documented_default_is_the_real_one():
    """The README's configuration table states each setting's default: it must be the one Settings applies."""
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([A-Z0-9_]+)` \| `([^`]*)` \|", readme, flags=re.M))
    checked = 0
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, bool) or not isinstance(default, int | float | str) or name.upper() not in rows:
            continue
        documented = rows[name.upper()]
        assert float(documented) == float(default) if isinstance(default, int | float) else documented == default, (
            name,
            documented,
            default,
        )
        checked += 1
    assert checked >= 25, checked  # the table covers the limits, not just a few of them
