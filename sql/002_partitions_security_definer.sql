-- Partitions are created by the role that owns weighing_logs, whoever calls
-- the function: `ingestor run` may then connect as a least-privilege role
-- (sql/roles.sql) that can insert rows but not create tables. search_path is
-- pinned to the ingestor's schema (current while migrating), as a SECURITY
-- DEFINER function must (PostgreSQL docs, "CREATE FUNCTION", "Writing
-- SECURITY DEFINER Functions Safely").
ALTER FUNCTION ingestor_ensure_partitions(integer) SECURITY DEFINER SET search_path FROM CURRENT;
REVOKE ALL ON FUNCTION ingestor_ensure_partitions(integer) FROM PUBLIC;
