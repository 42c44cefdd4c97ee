"""Figures the hardening suites collect and `make security` prints (see conftest's terminal summary)."""

from __future__ import annotations

from collections import Counter

FIGURES: Counter[str] = Counter()

LABELS = [
    ("tokens_tried", "forged/invalid tokens tried"),
    ("tokens_accepted", "forged/invalid tokens accepted"),
    ("revoked_variants_tried", "revoked tokens, respelt, tried"),
    ("revoked_variants_accepted", "revoked tokens, respelt, accepted"),
    ("cross_user_attempts", "cross-user attempts"),
    ("cross_user_successes", "cross-user successes"),
    ("injection_payloads", "SQL-injection payloads sent"),
    ("injection_5xx", "SQL-injection payloads answered 5xx"),
    ("faults_injected", "faults injected"),
    ("rows_lost", "rows lost or half-written"),
    ("answers_given", "model answers given"),
    ("answers_charged", "model answers charged"),
    ("gateway_rss_growth_mb", "gateway RSS growth, 200 slow 512 KiB uploads (MiB)"),
    ("fuzz_cases", "fuzz cases"),
    ("fuzz_5xx", "fuzz 5xx"),
    ("hostile_inputs", "hostile inputs (NUL, surrogates, huge ints…)"),
    ("hostile_5xx", "hostile inputs answered 5xx"),
    ("attack_requests", "round-3 attack requests"),
    ("attack_5xx", "round-3 attack requests answered 5xx"),
    ("no_quota_attempts", "spending attempts without quota"),
    ("no_quota_spent", "tokens, chunks, charges they spent"),
    ("bystander_chats", "another user's chats during the attacks"),
    ("bystander_5xx", "another user's chats answered 5xx"),
]


# README table "Security and faults": each row's figure names two counters, "tried / bad". The whole suite
# (`make test`) holds them: a tried count below the README's, or a bad count above it, fails the run.
README_ROWS = {
    "forged or invalid tokens": ("tokens_tried", "tokens_accepted"),
    "logged-out tokens": ("revoked_variants_tried", "revoked_variants_accepted"),
    "cross-user attempts": ("cross_user_attempts", "cross_user_successes"),
    "SQL-injection payloads": ("injection_payloads", "injection_5xx"),
    "hostile inputs": ("hostile_inputs", "hostile_5xx"),
    "faults injected": ("faults_injected", "rows_lost"),
    "fuzz cases": ("fuzz_cases", "fuzz_5xx"),
    "round-3 attack requests": ("attack_requests", "attack_5xx"),
    "spending attempts by a user without quota": ("no_quota_attempts", "no_quota_spent"),
    "another user's chats during the attacks": ("bystander_chats", "bystander_5xx"),
}


def readme_figures(readme: str) -> dict[str, tuple[int, int]]:
    """{row label: (tried, bad)} read from the README's table."""
    import re

    found = {}
    for label in README_ROWS:
        match = re.search(rf"^\| {re.escape(label)}[^|]*\| ([\d,]+) / ([\d,]+) \|", readme, flags=re.M)
        if match:
            found[label] = (int(match.group(1).replace(",", "")), int(match.group(2).replace(",", "")))
    return found


def figures_that_dropped(readme: str, figures: Counter[str] = FIGURES) -> list[str]:
    problems = []
    rows = readme_figures(readme)
    for label, (tried_key, bad_key) in README_ROWS.items():
        if label not in rows:
            problems.append(f"README row '{label}' not found")
            continue
        tried, bad = rows[label]
        if figures[tried_key] < tried:
            problems.append(f"{label}: {figures[tried_key]} tried, the README states {tried}")
        if figures[bad_key] > bad:
            problems.append(f"{label}: {figures[bad_key]} failed, the README states {bad}")
    if figures["answers_given"] != figures["answers_charged"] or figures["answers_given"] == 0:
        problems.append(f"model answers given {figures['answers_given']}, charged {figures['answers_charged']}")
    return problems
