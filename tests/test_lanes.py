"""shared/lanes.py's time budget, on a clock the test moves (the extraction pool's test runs it for real)."""

from __future__ import annotations

import pytest

from shared.lanes import TRACKED_USERS, OutOfTime, TimeBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_users_time_is_checked_before_and_charged_after_with_the_wait_until_it_is_back():
    clock = Clock()
    budget = TimeBudget(30, clock=clock)  # 30 s a minute: half a second back each second
    budget.check(1)
    budget.charge(1, 20)
    budget.check(1)  # 10 s left: admitted
    budget.charge(1, 15)  # a job may overdraw (its time is known only after): -5 s
    with pytest.raises(OutOfTime) as refused:
        budget.check(1)
    assert refused.value.retry_after_s == 10
    budget.check(2)  # another user's time is their own
    clock.now += 9.9
    with pytest.raises(OutOfTime) as refused:
        budget.check(1)
    assert refused.value.retry_after_s == 1
    clock.now += 0.2
    budget.check(1)


def test_a_balance_never_grows_past_a_minutes_worth():
    clock = Clock()
    budget = TimeBudget(30, clock=clock)
    clock.now += 3600  # an hour away
    budget.charge(1, 30)  # a minute's worth at once, not an hour's
    with pytest.raises(OutOfTime):
        budget.check(1)


def test_no_budget_refuses_nothing_and_keeps_nothing():
    budget = TimeBudget(0)
    budget.charge(1, 1e6)
    budget.check(1)
    assert not budget._balances


def test_users_back_to_full_are_forgotten_past_the_tracked_count():
    clock = Clock()
    budget = TimeBudget(60, clock=clock)
    for user in range(TRACKED_USERS):
        budget.charge(user, 1)
    clock.now += 2  # all back to full
    budget.charge(-1, 1)
    assert list(budget._balances) == [-1]
