-- 010: the alibi chain (issue 15; ingestor/alibi.py, ingestor/chains.py, ingestor/seals.py).
-- Each stored event gets its scale's next record number and a SHA-256 link over
-- the previous link and the event as received; the seed's columns stay as they
-- are. Both columns are NULL for rows written with the chain off (--alibi off),
-- and for rows from before this migration. Adding nullable columns without a
-- default rewrites nothing (PostgreSQL docs, ALTER TABLE, Notes).
ALTER TABLE weighing_logs ADD COLUMN record_no bigint, ADD COLUMN link bytea;

-- Each scale's chain head (its last record number and link) lives in its claims
-- row: written in the batch's transaction under the lock every writer takes in
-- scale_id order, so a writer killed anywhere, a restart, or another writer count
-- leaves head and rows in agreement, and a duplicate (refused by the claim) never
-- enters a chain. NULL: no chained record yet.
ALTER TABLE ingestor_claims ADD COLUMN record_no bigint, ADD COLUMN link bytea;

-- Where each scale's chain continues after retention dropped its oldest days: the
-- last dropped record (its number and link), kept so the verifier checks the
-- first record still held against it.
CREATE TABLE ingestor_alibi_starts (
    scale_id  integer PRIMARY KEY,
    record_no bigint  NOT NULL,
    link      bytea   NOT NULL
);

-- Signed seals of every scale's head (ingestor/seals.py): the seal's JSON line
-- exactly as signed and appended to the local seal file.
CREATE TABLE ingestor_seals (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance  text        NOT NULL,
    sealed_at timestamptz NOT NULL,
    key_id    text        NOT NULL,
    seal      text        NOT NULL
);

-- Retention's unclaim of a dropped day also records where its chains continue.
ALTER FUNCTION ingestor_unclaim(text) RENAME TO ingestor_unclaim_seqs;
CREATE FUNCTION ingestor_unclaim(part text) RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    EXECUTE format(
        'INSERT INTO ingestor_alibi_starts AS s (scale_id, record_no, link)
         SELECT DISTINCT ON (scale_id) scale_id, record_no, link FROM %I
         WHERE record_no IS NOT NULL ORDER BY scale_id, record_no DESC
         ON CONFLICT (scale_id) DO UPDATE SET record_no = EXCLUDED.record_no, link = EXCLUDED.link
         WHERE EXCLUDED.record_no > s.record_no', part);
    PERFORM ingestor_unclaim_seqs(part);
END
$$;
REVOKE ALL ON FUNCTION ingestor_unclaim(text) FROM PUBLIC;

-- 008's function, chaining too. p_prev_no: per run scale, the record number the
-- caller believes is the scale's head (0: none), or NULL with the chain off; when
-- a scale's head moved on (another writer chained it), the function returns false
-- having written nothing, like a gap in the keys. p_head_no, p_head_link: each run
-- scale's new head; p_record_no, p_link: each event's (NULL arrays: chain off).
DROP FUNCTION ingestor_write_small_batch(text, integer, text, bigint, bigint, bigint, bigint, integer[], integer[],
    bigint[], bigint[], integer[], bigint[], bigint[], bigint, text[], text[], text[], text[], text[]);
CREATE FUNCTION ingestor_write_small_batch(
    p_instance text, p_lane integer, p_ring_id text, p_position bigint, p_persisted bigint, p_duplicates bigint, p_failed bigint,
    p_new_scales integer[], p_run_scale integer[], p_run_lo bigint[], p_run_hi bigint[],
    p_prev_no bigint[], p_head_no bigint[], p_head_link bytea[],
    p_scale integer[], p_seq bigint[], p_measured_us bigint[], p_created_us bigint,
    p_d1 text[], p_d2 text[], p_d3 text[], p_d4 text[], p_d5 text[],
    p_record_no bigint[], p_link bytea[]) RETURNS boolean
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    continuing integer;
BEGIN
    IF p_new_scales IS NOT NULL THEN
        INSERT INTO ingestor_claims (scale_id) SELECT s FROM unnest(p_new_scales) s ORDER BY s ON CONFLICT DO NOTHING;
    END IF;
    -- the scales' locks, in scale_id order like every claim (claims.py)
    SELECT count(*) INTO continuing
    FROM (SELECT scale_id, last_seq, record_no FROM ingestor_claims WHERE scale_id = ANY(p_run_scale)
          ORDER BY scale_id FOR UPDATE) c
    JOIN unnest(p_run_scale, p_run_lo, p_prev_no) AS r(scale_id, lo, prev_no) USING (scale_id)
    WHERE (c.last_seq IS NULL OR c.last_seq + 1 = r.lo)
      AND (p_prev_no IS NULL OR coalesce(c.record_no, 0) = r.prev_no);
    IF continuing <> cardinality(p_run_scale) THEN
        RETURN false;
    END IF;
    UPDATE ingestor_claims c SET first_seq = coalesce(c.first_seq, r.lo), last_seq = r.hi,
        record_no = coalesce(r.head_no, c.record_no), link = coalesce(r.head_link, c.link)
    FROM unnest(p_run_scale, p_run_lo, p_run_hi, p_head_no, p_head_link) AS r(scale_id, lo, hi, head_no, head_link)
    WHERE c.scale_id = r.scale_id;

    INSERT INTO weighing_logs (scale_id, seq, measured_at, created_at, data_1, data_2, data_3, data_4, data_5,
                               record_no, link)
    SELECT e.scale_id, e.seq, timestamptz 'epoch' + e.us * interval '1 microsecond',
           timestamptz 'epoch' + p_created_us * interval '1 microsecond',
           CASE WHEN e.d1 IS NULL THEN NULL ELSE jsonb_build_object('val', e.d1) END,
           CASE WHEN e.d2 IS NULL THEN NULL ELSE jsonb_build_object('val', e.d2) END,
           CASE WHEN e.d3 IS NULL THEN NULL ELSE jsonb_build_object('val', e.d3) END,
           CASE WHEN e.d4 IS NULL THEN NULL ELSE jsonb_build_object('val', e.d4) END,
           CASE WHEN e.d5 IS NULL THEN NULL ELSE jsonb_build_object('val', e.d5) END,
           e.record_no, e.link
    FROM unnest(p_scale, p_seq, p_measured_us, p_d1, p_d2, p_d3, p_d4, p_d5, p_record_no, p_link)
         AS e(scale_id, seq, us, d1, d2, d3, d4, d5, record_no, link);

    -- each scale's greatest (measured_at, seq), as writer.latest_per_scale picks it
    INSERT INTO scale_current_states AS s (scale_id, seq, measured_at, data_1, data_2, data_3, data_4, data_5, updated_at)
    SELECT DISTINCT ON (e.scale_id) e.scale_id, e.seq, timestamptz 'epoch' + e.us * interval '1 microsecond',
           CASE WHEN e.d1 IS NULL THEN NULL ELSE jsonb_build_object('val', e.d1) END,
           CASE WHEN e.d2 IS NULL THEN NULL ELSE jsonb_build_object('val', e.d2) END,
           CASE WHEN e.d3 IS NULL THEN NULL ELSE jsonb_build_object('val', e.d3) END,
           CASE WHEN e.d4 IS NULL THEN NULL ELSE jsonb_build_object('val', e.d4) END,
           CASE WHEN e.d5 IS NULL THEN NULL ELSE jsonb_build_object('val', e.d5) END,
           now()
    FROM unnest(p_scale, p_seq, p_measured_us, p_d1, p_d2, p_d3, p_d4, p_d5) AS e(scale_id, seq, us, d1, d2, d3, d4, d5)
    ORDER BY e.scale_id, e.us DESC, e.seq DESC
    ON CONFLICT (scale_id) DO UPDATE SET
        seq = EXCLUDED.seq, measured_at = EXCLUDED.measured_at,
        data_1 = EXCLUDED.data_1, data_2 = EXCLUDED.data_2, data_3 = EXCLUDED.data_3,
        data_4 = EXCLUDED.data_4, data_5 = EXCLUDED.data_5, updated_at = EXCLUDED.updated_at
    WHERE (EXCLUDED.measured_at, EXCLUDED.seq) > (s.measured_at, s.seq);

    INSERT INTO ingestor_checkpoints (instance, lane, ring_id, position, persisted, duplicates, failed, updated_at)
    VALUES (p_instance, p_lane, p_ring_id, p_position, p_persisted, p_duplicates, p_failed, now())
    ON CONFLICT (instance, lane) DO UPDATE SET ring_id = EXCLUDED.ring_id, position = EXCLUDED.position,
        persisted = EXCLUDED.persisted, duplicates = EXCLUDED.duplicates, failed = EXCLUDED.failed,
        updated_at = EXCLUDED.updated_at;
    RETURN true;
END
$$;
REVOKE ALL ON FUNCTION ingestor_write_small_batch(text, integer, text, bigint, bigint, bigint, bigint, integer[], integer[],
    bigint[], bigint[], bigint[], bigint[], bytea[], integer[], bigint[], bigint[], bigint, text[], text[], text[], text[],
    text[], bigint[], bytea[]) FROM PUBLIC;
