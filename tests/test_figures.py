"""The check that holds the README's security figures (run by conftest at the end of the whole suite) does fail
when a figure drops: exercised here on figures of its own, never the session's."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tests.figures import README_ROWS, figures_that_dropped, readme_figures

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def as_measured() -> Counter[str]:
    figures: Counter[str] = Counter()
    for label, (tried, bad) in readme_figures(README).items():
        tried_key, bad_key = README_ROWS[label]
        figures[tried_key], figures[bad_key] = tried, bad
    figures["answers_given"] = figures["answers_charged"] = 228
    return figures


def test_every_row_is_in_the_readme_and_the_measured_figures_pass():
    assert set(readme_figures(README)) == set(README_ROWS)
    assert figures_that_dropped(README, as_measured()) == []


def test_fewer_attempts_a_failure_or_an_unpaid_answer_fail_the_check():
    fewer = as_measured()
    fewer["tokens_tried"] -= 1
    assert figures_that_dropped(README, fewer) == ["forged or invalid tokens: 339 tried, the README states 340"]
    accepted = as_measured()
    accepted["tokens_accepted"] = 1
    assert figures_that_dropped(README, accepted) == ["forged or invalid tokens: 1 failed, the README states 0"]
    unpaid = as_measured()
    unpaid["answers_charged"] -= 1
    assert figures_that_dropped(README, unpaid) == ["model answers given 228, charged 227"]


def test_a_run_whose_figures_dropped_fails_with_the_reasons(tmp_path):
    """The end-of-session check is wired: forced on a run that measured nothing, it fails it and says why."""
    import os
    import subprocess
    import sys

    one_test = "tests/test_figures.py::test_every_row_is_in_the_readme_and_the_measured_figures_pass"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", one_test],
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "WIBOT_CHECK_FIGURES": "1"},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout[-2000:]
    assert "README security figures not met" in result.stdout
    assert "forged or invalid tokens: 0 tried, the README states 340" in result.stdout
