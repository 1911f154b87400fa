-- 009: the Parquet archive of day partitions (issue 14; ingestor/archive.py).

-- One row per day partition whose archive was written, read back and verified:
-- where the file is, what it holds, and the checksum it was verified against.
-- Retention with an archive target (--archive-to) drops only partitions listed here.
CREATE TABLE ingestor_archives (
    partition    text        PRIMARY KEY,
    day          date        NOT NULL,
    location     text        NOT NULL,  -- the Parquet file's URI (a path, or s3://bucket/key)
    rows         bigint      NOT NULL,
    checksum     numeric     NOT NULL,  -- ingestor/archive.py: CHECKSUM_SQL, summed over the rows
    file_bytes   bigint      NOT NULL,
    table_bytes  bigint      NOT NULL,  -- the partition with its indexes in PostgreSQL, when archived
    verified_at  timestamptz NOT NULL DEFAULT now()
);

-- Retention of one archived partition: refused (SQLSTATE 55000, object not in
-- prerequisite state) unless its verified archive is recorded above and the
-- partition still holds exactly the rows archived; then detached, its claims
-- taken back (migration 006) and dropped. SECURITY DEFINER like migration 003.
CREATE FUNCTION ingestor_drop_archived_partition(part text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    archived bigint;
    now_rows bigint;
    rel      regclass;
BEGIN
    SELECT i.inhrelid::regclass INTO rel FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'weighing_logs'::regclass AND c.relname = part AND part ~ '^weighing_logs_p[0-9]{8}$';
    IF rel IS NULL THEN
        RAISE EXCEPTION 'no day partition % of weighing_logs', part USING ERRCODE = '42P01';
    END IF;
    SELECT a.rows INTO archived FROM ingestor_archives a WHERE a.partition = part;
    IF archived IS NULL THEN
        RAISE EXCEPTION 'partition % has no verified archive: not dropped', part USING ERRCODE = '55000';
    END IF;
    -- SHARE blocks writes into this partition only, until the detach takes it over
    EXECUTE format('LOCK TABLE %s IN SHARE MODE', rel);
    EXECUTE format('SELECT count(*) FROM %s', rel) INTO now_rows;
    IF now_rows <> archived THEN
        RAISE EXCEPTION 'partition % holds % rows, its archive %: not dropped (archive it again)',
            part, now_rows, archived USING ERRCODE = '55000';
    END IF;
    EXECUTE format('ALTER TABLE weighing_logs DETACH PARTITION %s', rel);
    PERFORM ingestor_unclaim(part);
    EXECUTE format('DROP TABLE %s', rel);
    RETURN now_rows;
END
$$;
REVOKE ALL ON FUNCTION ingestor_drop_archived_partition(text) FROM PUBLIC;
