-- Retention (--retention-days): detaches and drops the UTC-day partitions of
-- weighing_logs whose whole day lies before `cutoff`; returns how many. The
-- default partition is never touched. SECURITY DEFINER like the partition
-- creation (migration 002), so a least-privilege role can run it.
CREATE FUNCTION ingestor_drop_partitions_before(cutoff date) RETURNS integer
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
        EXECUTE format('DROP TABLE %I', part.relname);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END
$$;
REVOKE ALL ON FUNCTION ingestor_drop_partitions_before(date) FROM PUBLIC;
