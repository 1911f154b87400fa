"""Exponential backoff: the one rule for every retry of the service (a child's restart, a write, the start's wait).

The delay doubles with each consecutive failure from ``first_s`` up to
``max_s``. With ``jitter`` it is drawn from [½, 1] of that ("equal jitter"
in AWS's "Exponential Backoff And Jitter"), so writers that failed together
do not retry together.
"""

from __future__ import annotations

import random
from typing import NamedTuple


class Backoff(NamedTuple):
    """The delays of one kind of retry; seconds."""

    first_s: float  #: the delay after the first failure
    max_s: float  #: the delay never exceeds this
    jitter: bool = False

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` consecutive failures (≥ 1); ValueError below 1."""
        if failures < 1:
            raise ValueError(f"failures = {failures}: a delay follows at least one failure")
        delay = min(self.max_s, self.first_s * 2.0 ** min(failures - 1, 64))
        return delay * random.uniform(0.5, 1.0) if self.jitter else delay
