-- 006: the dedup claims of docs/PROTOCOL.md §4 as runs of consecutive seqs per scale
-- (issue 12; ingestor/claims.py), instead of one ingestor_seen row per event (~85 bytes
-- of disk per event, and as much PostgreSQL work as the COPY itself).

-- One row per scale: its head run (the one holding its greatest stored seq), NULLs
-- before its first event. The row is also the scale's lock (claims.py). Only the
-- head's seqs change, in place: no index holds them, so the UPDATEs stay HOT.
CREATE TABLE ingestor_claims (
    scale_id    integer PRIMARY KEY,
    first_seq   bigint,
    last_seq    bigint,
    CHECK ((first_seq IS NULL) = (last_seq IS NULL) AND first_seq <= last_seq)
) WITH (fillfactor = 50);

-- A scale's other runs: disjoint from each other and from the head.
CREATE TABLE ingestor_claim_runs (
    scale_id    integer NOT NULL,
    first_seq   bigint  NOT NULL,
    last_seq    bigint  NOT NULL CHECK (first_seq <= last_seq),
    PRIMARY KEY (scale_id, first_seq)
);

-- Every key of ingestor_seen becomes part of a run ("gaps and islands": within a
-- run, seq minus its rank is constant); each scale's highest run is its head.
WITH islands AS (
    SELECT scale_id, min(seq) AS first_seq, max(seq) AS last_seq
    FROM (SELECT scale_id, seq, seq - row_number() OVER (PARTITION BY scale_id ORDER BY seq) AS island
          FROM ingestor_seen) k
    GROUP BY scale_id, island
), ranked AS (
    SELECT *, row_number() OVER (PARTITION BY scale_id ORDER BY last_seq DESC) AS rank FROM islands
), heads AS (
    INSERT INTO ingestor_claims SELECT scale_id, first_seq, last_seq FROM ranked WHERE rank = 1
)
INSERT INTO ingestor_claim_runs SELECT scale_id, first_seq, last_seq FROM ranked WHERE rank > 1;

DROP TABLE ingestor_seen;

-- Takes a dropped day partition's seqs out of the claims, so dedup reaches as far
-- back as the history (as migration 004 did for ingestor_seen). Locks each scale's
-- claims row in scale_id order, as writers do, after the partition was read.
CREATE FUNCTION ingestor_unclaim(part text) RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    g     record;
    h     record;
    r     record;
    locked_scale integer;
BEGIN
    FOR g IN EXECUTE format(
        'SELECT scale_id, min(seq) AS lo, max(seq) AS hi
         FROM (SELECT scale_id, seq, seq - row_number() OVER (PARTITION BY scale_id ORDER BY seq) AS island
               FROM (SELECT DISTINCT scale_id, seq FROM %I) d) k
         GROUP BY scale_id, island ORDER BY scale_id, lo', part)
    LOOP
        IF locked_scale IS DISTINCT FROM g.scale_id THEN
            PERFORM 1 FROM ingestor_claims WHERE scale_id = g.scale_id FOR UPDATE;
            locked_scale := g.scale_id;
        END IF;
        -- stored runs losing [lo, hi]: keep the pieces outside it
        FOR r IN DELETE FROM ingestor_claim_runs
                 WHERE scale_id = g.scale_id AND first_seq <= g.hi AND last_seq >= g.lo
                 RETURNING first_seq, last_seq
        LOOP
            IF r.first_seq < g.lo THEN
                INSERT INTO ingestor_claim_runs VALUES (g.scale_id, r.first_seq, g.lo - 1);
            END IF;
            IF r.last_seq > g.hi THEN
                INSERT INTO ingestor_claim_runs VALUES (g.scale_id, g.hi + 1, r.last_seq);
            END IF;
        END LOOP;
        SELECT first_seq, last_seq INTO h FROM ingestor_claims WHERE scale_id = g.scale_id;
        CONTINUE WHEN h.last_seq IS NULL OR h.first_seq > g.hi OR h.last_seq < g.lo;
        IF h.last_seq > g.hi THEN  -- the head keeps its top
            IF h.first_seq < g.lo THEN
                INSERT INTO ingestor_claim_runs VALUES (g.scale_id, h.first_seq, g.lo - 1);
            END IF;
            UPDATE ingestor_claims SET first_seq = g.hi + 1 WHERE scale_id = g.scale_id;
        ELSIF h.first_seq < g.lo THEN  -- the head keeps its bottom
            UPDATE ingestor_claims SET last_seq = g.lo - 1 WHERE scale_id = g.scale_id;
        ELSE  -- the head is gone: the highest stored run takes its place
            DELETE FROM ingestor_claim_runs
            WHERE (scale_id, first_seq) = (SELECT scale_id, first_seq FROM ingestor_claim_runs
                                           WHERE scale_id = g.scale_id ORDER BY first_seq DESC LIMIT 1)
            RETURNING first_seq, last_seq INTO r;
            UPDATE ingestor_claims SET first_seq = r.first_seq, last_seq = r.last_seq WHERE scale_id = g.scale_id;
        END IF;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION ingestor_unclaim(text) FROM PUBLIC;

-- Retention (migration 003, 004) with the claims of 006.
CREATE OR REPLACE FUNCTION ingestor_drop_partitions_before(cutoff date) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    part    record;
    dropped integer := 0;
BEGIN
    FOR part IN
        SELECT c.relname
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'weighing_logs'::regclass
          AND c.relname ~ '^weighing_logs_p[0-9]{8}$'
          AND to_date(substring(c.relname FROM 16), 'YYYYMMDD') < cutoff
        ORDER BY c.relname
    LOOP
        EXECUTE format('ALTER TABLE weighing_logs DETACH PARTITION %I', part.relname);
        PERFORM ingestor_unclaim(part.relname);
        EXECUTE format('DROP TABLE %I', part.relname);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END
$$;
REVOKE ALL ON FUNCTION ingestor_drop_partitions_before(date) FROM PUBLIC;
