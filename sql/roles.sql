-- A least-privilege role for `ingestor run` (docs/operations.md#a-least-privilege-role).
--
-- Run once per database, after `ingestor migrate`, as a superuser (or as
-- the owner of the ingestor's tables when it also has CREATEROLE: creating
-- roles needs that, granting on the tables needs ownership), with
-- search_path set to the ingestor's schema:
--
--   PGOPTIONS='-c search_path=public' psql "$ADMIN_DSN" -v ON_ERROR_STOP=1 -f sql/roles.sql
--   psql "$ADMIN_DSN" -c "CREATE ROLE ingestor LOGIN PASSWORD '...' IN ROLE ingestor_writer"
--
-- ingestor_writer may write measurements and the ingestor's own state, read
-- them back, and create the day partitions through the migrated SECURITY
-- DEFINER function; nothing else (no DELETE, TRUNCATE, DDL or other tables).
-- `ingestor run` connected as such a role finds every migration applied and
-- changes no schema.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ingestor_writer') THEN
        CREATE ROLE ingestor_writer NOLOGIN;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO ingestor_writer', current_schema());
END
$$;

GRANT SELECT, INSERT ON weighing_logs TO ingestor_writer;                 -- COPY of the history
GRANT SELECT, INSERT, UPDATE ON scale_current_states TO ingestor_writer;  -- UPSERT of the latest state
GRANT SELECT, INSERT, UPDATE ON ingestor_claims TO ingestor_writer;       -- dedup claims: heads
GRANT SELECT, INSERT ON ingestor_claim_runs TO ingestor_writer;           -- dedup claims: runs behind gaps
GRANT SELECT, INSERT, UPDATE ON ingestor_checkpoints TO ingestor_writer;  -- lane checkpoints
GRANT SELECT ON ingestor_schema_migrations TO ingestor_writer;            -- "is the schema up to date?"
GRANT SELECT, INSERT, UPDATE ON ingestor_archives TO ingestor_writer;     -- the archive's record (009)
GRANT EXECUTE ON FUNCTION ingestor_ensure_partitions(integer) TO ingestor_writer;
GRANT EXECUTE ON FUNCTION ingestor_drop_partitions_before(date) TO ingestor_writer;
GRANT EXECUTE ON FUNCTION ingestor_drop_archived_partition(text) TO ingestor_writer;  -- retention with an archive (009)
GRANT SELECT, INSERT ON ingestor_seals TO ingestor_writer;               -- signed seals of the alibi chains (010)
GRANT SELECT ON ingestor_alibi_starts TO ingestor_writer;                 -- where chains continue after retention (010)
GRANT SELECT ON ingestor_database TO ingestor_writer;                     -- which database this is (011)
GRANT SELECT, INSERT ON ingestor_alibi_skips TO ingestor_writer;          -- record numbers skipped after a restore (012)
GRANT EXECUTE ON FUNCTION ingestor_write_small_batch(text, integer, text, bigint, bigint, bigint, bigint, integer[], integer[],
    bigint[], bigint[], bigint[], bigint[], bytea[], integer[], bigint[], bigint[], bigint, text[], text[], text[], text[],
    text[], bigint[], bytea[]) TO ingestor_writer;                         -- a small batch in one statement (007, 008, 010)
