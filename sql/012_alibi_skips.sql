-- 012: record numbers never given twice, even after a restore (issue 28; ingestor/commits.py,
-- ingestor/chains.py, docs/alibi.md#after-a-restore).
-- A receipt names a weighing by its scale and record number. A database restored to an
-- earlier point (or an asynchronous failover) has lost the last records, and its chains'
-- heads are back where the backup left them: numbered on from there, new weighings would
-- get numbers that receipts already name. The service reserves record numbers on its own
-- disk before its writers use them; when it finds committed events missing at start it
-- records a skip here and every chain continues past the reserved numbers, at floor + 1,
-- its next record linked to its last one as always (a chain begun after the skip starts
-- at floor + 1 from its genesis). The verifier accepts a jump to floor + 1 only where a
-- skip with that floor is recorded and the link holds across it.
CREATE TABLE ingestor_alibi_skips (
    floor      bigint      PRIMARY KEY,  -- no record number up to this is given after the skip
    skipped_at timestamptz NOT NULL DEFAULT now(),
    instance   text        NOT NULL,     -- the service that found the loss
    lost       bigint      NOT NULL      -- committed events it found missing (at least, after a crash)
);
