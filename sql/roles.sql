-- Least-privilege roles for one reconciler schema: daemon, worker, read-only.
--
-- Print it for a schema with `python -m reconciler.roles --schema NAME`
-- (identifiers and literals are quoted by psycopg), and run it as the
-- schema's owner or a superuser:
--
--   python -m reconciler.roles --schema reconciler | psql "$OWNER_URL" -v ON_ERROR_STOP=1
--
-- Idempotent. The three roles are group roles (NOLOGIN): grant them to the
-- login roles that run the daemon, the workers and the dashboards, e.g.
-- GRANT reconciler_worker TO app;  Migrations (`reconciler migrate`) and
-- policy changes (`reconciler policies set`) stay with the schema's owner.
--
-- Why a script and not a migration: roles belong to the whole cluster, not
-- to the schema; their names are the operator's choice; and the role that
-- runs migrations often may not create roles.

DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {daemon_name}) THEN
        CREATE ROLE {daemon} NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {worker_name}) THEN
        CREATE ROLE {worker} NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {readonly_name}) THEN
        CREATE ROLE {readonly} NOLOGIN;
    END IF;
END
$roles$;

GRANT USAGE ON SCHEMA {schema} TO {daemon}, {worker}, {readonly};

-- The daemon: what the five tasks and the runs record touch, nothing more.
-- mark-stale, requeue, dead-letter: UPDATE jobs, INSERT job_events;
-- purge: DELETE jobs, job_events, runs; every run: INSERT/UPDATE runs.
-- The trigger reads transitions, requeue reads retry_policies, and the CLI
-- checks schema_migrations before it runs anything.
GRANT SELECT, UPDATE, DELETE ON {schema}.jobs TO {daemon};
GRANT SELECT, INSERT, DELETE ON {schema}.job_events TO {daemon};
GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.runs TO {daemon};
GRANT SELECT ON {schema}.transitions, {schema}.retry_policies, {schema}.paused_queues,
    {schema}.schema_migrations TO {daemon};
-- The daemon's task leases (issue 3's migration), when the schema has them:
-- replicas take, renew and release a task's lease there.
DO $roles$
BEGIN
    IF to_regclass({leases_name}) IS NOT NULL THEN
        EXECUTE {leases};
    END IF;
END
$roles$;
-- VACUUM and ANALYZE need ownership before PostgreSQL 17; from 17 on, the
-- MAINTAIN privilege is enough. On older servers vacuum-analyze run as this
-- role reports a failed run ("skipping"): run that one task as the owner.
DO $roles$
BEGIN
    IF current_setting('server_version_num')::int >= 170000 THEN
        EXECUTE {maintain};
    END IF;
END
$roles$;

-- Workers: the worker API and nothing else. The functions run with their
-- owner's rights (migration 0201), so workers need no grant on any table and
-- cannot write a row except through the fence.
GRANT EXECUTE ON FUNCTION
    {schema}.enqueue(text, jsonb, text, integer, timestamptz, integer, text, text),
    {schema}.claim(text, text[], integer),
    {schema}.heartbeat(bigint, uuid),
    {schema}.complete(bigint, uuid),
    {schema}.fail(bigint, uuid, jsonb)
    TO {worker};

-- Read-only: dashboards and status commands.
GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {readonly};
