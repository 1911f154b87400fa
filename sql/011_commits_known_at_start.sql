-- 011: a loss detected at start (issue 28; ingestor/commits.py).
-- A stopped service cannot see a failover or a restore that takes commits away; at its
-- next start it compares the last commits it recorded on its own disk with these.

-- Every event a lane's writers committed over all runs of the instance. `persisted` counts
-- this run's only (it restarts at 0 with each ring); `lifetime` goes on across runs, so a
-- database restored to before the last run started still tells exactly what it lacks.
-- Kept by a trigger, so both write paths (the COPY transaction and
-- ingestor_write_small_batch) keep it without a change.
ALTER TABLE ingestor_checkpoints ADD COLUMN lifetime bigint NOT NULL DEFAULT 0;
UPDATE ingestor_checkpoints SET lifetime = persisted;

CREATE FUNCTION ingestor_checkpoint_lifetime() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- INSERT ... ON CONFLICT DO UPDATE fires the INSERT trigger on the proposed row,
    -- then the UPDATE trigger on the existing one: OLD is what the lane had.
    IF TG_OP = 'INSERT' THEN
        NEW.lifetime := NEW.persisted;
    ELSE
        NEW.lifetime := OLD.lifetime + NEW.persisted
            - CASE WHEN OLD.ring_id = NEW.ring_id THEN OLD.persisted ELSE 0 END;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER ingestor_checkpoint_lifetime BEFORE INSERT OR UPDATE ON ingestor_checkpoints
    FOR EACH ROW EXECUTE FUNCTION ingestor_checkpoint_lifetime();

-- Which database this is: made once, copied by every physical copy (a standby, a base
-- backup, a restore), so a record of another database (a new, empty one) is never
-- compared with this one's checkpoints.
CREATE TABLE ingestor_database (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO ingestor_database DEFAULT VALUES;
