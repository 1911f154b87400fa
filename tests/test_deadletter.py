"""The dead-letter store's failure policy: a letter the disk refuses is logged and counted, never raised."""

from __future__ import annotations

import logging

import numpy as np

from ingestor import failpoints
from ingestor.deadletter import DeadLetterWriter, read
from ingestor.protocol import Rejected
from ingestor.stats import FRONT_DTYPE


def letter(n: int) -> Rejected:
    return Rejected("invalid", f"reason {n}", n, b'{"scale_id": %d}' % n, None)


def test_counts_survive_a_restarted_process_and_a_refused_letter_is_logged_not_raised(tmp_path, caplog):
    counters = np.zeros((), FRONT_DTYPE)  # the shared block outlives the process that writes it
    first = DeadLetterWriter(tmp_path, "front")
    failpoints.arm("deadletter.write", "1*eio")
    try:
        with caplog.at_level(logging.ERROR):
            assert first.write([letter(1)]) == 0
        assert first.write([letter(2)]) == 1
    finally:
        failpoints.disarm_all()
    first.count_into(counters)
    restarted = DeadLetterWriter(tmp_path, "front")  # a new front process: its own totals start at 0
    failpoints.arm("deadletter.write", "1*enospc")
    try:
        restarted.write([letter(3)])
    finally:
        failpoints.disarm_all()
    restarted.count_into(counters)
    restarted.count_into(counters)  # idempotent between writes
    assert int(counters["dead_letter_errors"]) == 2
    assert [d.scale_id for _, d in read(tmp_path)] == [2]
    assert "reason 1" in caplog.text and "Input/output error" in caplog.text
