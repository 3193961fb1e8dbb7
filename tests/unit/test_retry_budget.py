"""The retry budget on its own, on a clock the test moves."""

from upstream.retry_budget import RetryBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_retries_stay_within_a_tenth_of_the_first_tries():
    budget = RetryBudget(ratio=0.1, minimum=3, window=10, clock=Clock())
    for _ in range(200):
        budget.first_try()
    granted = sum(budget.try_retry() for _ in range(100))
    assert granted == 20
    for _ in range(5):
        budget.first_try()
    assert not budget.try_retry(), "a share of a retry is not a retry: 20.5 allows 20"


def test_a_lone_failure_on_a_quiet_caller_is_still_retried():
    budget = RetryBudget(ratio=0.1, minimum=3, window=10, clock=Clock())
    budget.first_try()
    assert budget.try_retry()
    assert [budget.try_retry() for _ in range(3)] == [True, True, False]


def test_the_budget_comes_back_once_the_retries_leave_the_window():
    clock = Clock()
    budget = RetryBudget(ratio=0.1, minimum=3, window=10, clock=clock)
    budget.first_try()
    assert sum(budget.try_retry() for _ in range(5)) == 3
    clock.now += 5
    assert not budget.try_retry(), "five seconds later the retries are still in the window"
    clock.now += 6
    assert budget.try_retry()
    assert budget.status() == {"first_tries": 0, "retries": 1}
