"""The supervisor's periodic work: named tasks, each run by the loop when its interval has passed.

psycopg_pool runs its upkeep as scheduled ``MaintenanceTask`` objects
instead of timestamps kept beside the pool; the supervisor does the same
for its rate line, its record of commits, partition upkeep, seals and the
systemd watchdog. The loop calls :meth:`Scheduler.run_due` once per turn
(at least every ``LOOP_WAKE_S``), so a task runs at most one loop turn
late; nothing here sleeps or uses a thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Task:
    """``action`` every ``interval_s`` seconds (monotonic clock), while ``when()`` allows.

    ``first_s``: seconds from creation to the first run (default: one
    interval; 0 runs it at the first loop turn ``when()`` allows).
    """

    def __init__(self, name: str, interval_s: float, action: Callable[[], object], *,
                 first_s: float | None = None, when: Callable[[], bool] = lambda: True) -> None:
        self.name = name
        self.interval_s = interval_s
        self.action = action
        self.when = when
        self.next_at = time.monotonic() + (interval_s if first_s is None else first_s)

    def due(self, now: float) -> bool:
        return now >= self.next_at and self.when()

    def postpone(self) -> None:
        """Start the interval again from now: the action just ran outside the schedule."""
        self.next_at = time.monotonic() + self.interval_s

    def wake(self) -> None:
        """Run at the next loop turn ``when()`` allows."""
        self.next_at = float("-inf")

    def run(self) -> None:
        self.postpone()  # before the action, which may postpone it itself
        self.action()


class Scheduler:
    """The loop's tasks, run in the order they were added."""

    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}

    def every(self, name: str, interval_s: float, action: Callable[[], object], *, first_s: float | None = None,
              when: Callable[[], bool] = lambda: True) -> Task:
        """Add a task (see :class:`Task`) and return it; ValueError for a name already taken."""
        if name in self.tasks:
            raise ValueError(f"a task named {name!r} is already scheduled")
        task = self.tasks[name] = Task(name, interval_s, action, first_s=first_s, when=when)
        return task

    def __getitem__(self, name: str) -> Task:
        return self.tasks[name]

    def run_due(self) -> None:
        """Run every task whose interval has passed (and whose ``when()`` allows)."""
        now = time.monotonic()
        for task in list(self.tasks.values()):
            if task.due(now):
                task.run()
