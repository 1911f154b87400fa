-- Retention takes the dedup keys of the rows it drops along with them, so
-- ingestor_seen (~85 bytes per event) stays as bounded as weighing_logs.
-- Dedup then reaches back as far as the history does: an event re-sent after
-- its day was dropped is stored again (under its new created_at), as the
-- history no longer holds it. Rows in weighing_logs_default keep their keys.
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
        EXECUTE format('DELETE FROM ingestor_seen s USING %I p WHERE s.scale_id = p.scale_id AND s.seq = p.seq',
                       part.relname);
        EXECUTE format('DROP TABLE %I', part.relname);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END
$$;
REVOKE ALL ON FUNCTION ingestor_drop_partitions_before(date) FROM PUBLIC;
