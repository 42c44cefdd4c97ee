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
]
