"""The per-address window of failed API-key attempts (api/rate_limit.py), on a fake clock."""

from __future__ import annotations

from api.rate_limit import FailureLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_is_refused_after_the_limit_until_its_oldest_failure_leaves_the_window() -> None:
    clock = Clock()
    limiter = FailureLimiter(3, window_s=60, clock=clock)
    for _ in range(3):
        assert limiter.admit("10.0.0.1") is None
        clock.now += 10
    assert limiter.admit("10.0.0.1") == 30  # the first failure leaves the window 30 s from now
    assert limiter.admit("10.0.0.2") is None, "other addresses are not affected"
    clock.now += 30
    assert limiter.admit("10.0.0.1") is None


def test_a_successful_attempt_does_not_count_and_the_block_is_announced_once() -> None:
    clock = Clock()
    limiter = FailureLimiter(2, clock=clock)
    for _ in range(5):
        assert limiter.admit("a") is None
        limiter.forgive("a")  # each attempt succeeded
    assert limiter.admit("a") is None and limiter.admit("a") is None
    assert limiter.admit("a") is not None
    assert limiter.first_refusal("a") is True and limiter.first_refusal("a") is False
