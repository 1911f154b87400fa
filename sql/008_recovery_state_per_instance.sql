-- 008: recovery state keyed by (instance, lane) (issue 13; --instance, ingestor/writer.py).
-- Lane 0 of two ingestors writing one database shared one checkpoint row and
-- overwrote each other's: a writer restarted after a crash then found the other
-- instance's ring there, released nothing, and wrote its committed batch again
-- (the dedup kept the rows right; the counters and acked replies went wrong).
-- Rows from before this migration belong to no instance (''): their ring ids
-- match no running ring, so nobody reads them again.
ALTER TABLE ingestor_checkpoints ADD COLUMN instance text NOT NULL DEFAULT '';
ALTER TABLE ingestor_checkpoints ALTER COLUMN instance DROP DEFAULT;
ALTER TABLE ingestor_checkpoints DROP CONSTRAINT ingestor_checkpoints_pkey;
ALTER TABLE ingestor_checkpoints ADD PRIMARY KEY (instance, lane);

-- 007's function, writing the checkpoint of (p_instance, p_lane).
DROP FUNCTION ingestor_write_small_batch(integer, text, bigint, bigint, bigint, bigint, integer[], integer[],
    bigint[], bigint[], integer[], bigint[], bigint[], bigint, text[], text[], text[], text[], text[]);
CREATE FUNCTION ingestor_write_small_batch(
    p_instance text, p_lane integer, p_ring_id text, p_position bigint, p_persisted bigint, p_duplicates bigint, p_failed bigint,
    p_new_scales integer[], p_run_scale integer[], p_run_lo bigint[], p_run_hi bigint[],
    p_scale integer[], p_seq bigint[], p_measured_us bigint[], p_created_us bigint,
    p_d1 text[], p_d2 text[], p_d3 text[], p_d4 text[], p_d5 text[]) RETURNS boolean
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    continuing integer;
BEGIN
    IF p_new_scales IS NOT NULL THEN
        INSERT INTO ingestor_claims (scale_id) SELECT s FROM unnest(p_new_scales) s ORDER BY s ON CONFLICT DO NOTHING;
    END IF;
    -- the scales' locks, in scale_id order like every claim (claims.py)
    SELECT count(*) INTO continuing
    FROM (SELECT scale_id, last_seq FROM ingestor_claims WHERE scale_id = ANY(p_run_scale)
          ORDER BY scale_id FOR UPDATE) c
    JOIN unnest(p_run_scale, p_run_lo) AS r(scale_id, lo) USING (scale_id)
    WHERE c.last_seq IS NULL OR c.last_seq + 1 = r.lo;
    IF continuing <> cardinality(p_run_scale) THEN
        RETURN false;
    END IF;
    UPDATE ingestor_claims c SET first_seq = coalesce(c.first_seq, r.lo), last_seq = r.hi
    FROM unnest(p_run_scale, p_run_lo, p_run_hi) AS r(scale_id, lo, hi)
    WHERE c.scale_id = r.scale_id;

    INSERT INTO weighing_logs (scale_id, seq, measured_at, created_at, data_1, data_2, data_3, data_4, data_5)
    SELECT e.scale_id, e.seq, timestamptz 'epoch' + e.us * interval '1 microsecond',
           timestamptz 'epoch' + p_created_us * interval '1 microsecond',
           CASE WHEN e.d1 IS NULL THEN NULL ELSE jsonb_build_object('val', e.d1) END,
           CASE WHEN e.d2 IS NULL THEN NULL ELSE jsonb_build_object('val', e.d2) END,
           CASE WHEN e.d3 IS NULL THEN NULL ELSE jsonb_build_object('val', e.d3) END,
           CASE WHEN e.d4 IS NULL THEN NULL ELSE jsonb_build_object('val', e.d4) END,
           CASE WHEN e.d5 IS NULL THEN NULL ELSE jsonb_build_object('val', e.d5) END
    FROM unnest(p_scale, p_seq, p_measured_us, p_d1, p_d2, p_d3, p_d4, p_d5) AS e(scale_id, seq, us, d1, d2, d3, d4, d5);

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
    bigint[], bigint[], integer[], bigint[], bigint[], bigint, text[], text[], text[], text[], text[]) FROM PUBLIC;
