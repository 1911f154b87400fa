"""The supervisor's scheduler: each task runs once its interval has passed, never before, and only while allowed."""

from __future__ import annotations

import time

import pytest

from ingestor.scheduler import Scheduler


def test_a_task_runs_once_per_interval_and_a_first_run_can_be_immediate():
    ran: list[str] = []
    tasks = Scheduler()
    tasks.every("now", 0.2, lambda: ran.append("now"), first_s=0)
    tasks.every("later", 0.2, lambda: ran.append("later"))
    tasks.run_due()
    tasks.run_due()
    assert ran == ["now"]
    time.sleep(0.25)
    tasks.run_due()
    assert ran == ["now", "now", "later"]


def test_a_task_waits_while_not_allowed_and_runs_at_the_first_turn_it_is():
    allowed, ran = [False], []
    tasks = Scheduler()
    tasks.every("seal", 60, lambda: ran.append(1), first_s=0, when=lambda: allowed[0])
    tasks.run_due()
    assert ran == []
    allowed[0] = True
    tasks.run_due()
    tasks.run_due()
    assert ran == [1]


def test_wake_runs_at_the_next_turn_and_postpone_starts_the_interval_again():
    ran: list[int] = []
    tasks = Scheduler()
    task = tasks.every("commits", 0.2, lambda: ran.append(1))
    task.wake()
    tasks.run_due()
    assert ran == [1]
    time.sleep(0.15)
    task.postpone()  # run outside the schedule: the next is 0.2 s from now, not from the last run
    time.sleep(0.1)
    tasks.run_due()
    assert ran == [1]


def test_a_name_is_scheduled_once():
    tasks = Scheduler()
    tasks.every("seal", 1, lambda: None)
    with pytest.raises(ValueError, match="'seal' is already scheduled"):
        tasks.every("seal", 1, lambda: None)
