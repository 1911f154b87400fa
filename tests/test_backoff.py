"""ingestor/backoff.py: the delay doubles per consecutive failure from the first to the cap; jitter stays in [½, 1]."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingestor.backoff import Backoff


def test_the_delay_doubles_from_the_first_to_the_cap():
    assert [Backoff(0.5, 30.0).delay(n) for n in range(1, 10)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


@given(first=st.floats(0.001, 10), cap=st.floats(0.001, 100), failures=st.integers(1, 10_000))
def test_jitter_keeps_every_delay_between_half_and_all_of_the_plain_one(first, cap, failures):
    plain = Backoff(first, cap).delay(failures)
    assert plain <= cap
    assert plain / 2 <= Backoff(first, cap, jitter=True).delay(failures) <= plain


def test_no_delay_before_a_failure():
    with pytest.raises(ValueError, match="failures = 0"):
        Backoff(1.0, 2.0).delay(0)
