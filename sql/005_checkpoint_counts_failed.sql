-- 005: the lane checkpoint carries the failed count too (issue 10, found by bench/chaos.py).
-- A writer killed after moving the checkpoint past a rejected row, before counting it,
-- left that event counted nowhere; its successor restores failed from here, as it
-- restores persisted and duplicates.
ALTER TABLE ingestor_checkpoints ADD COLUMN failed bigint NOT NULL DEFAULT 0;
