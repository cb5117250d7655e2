-- Least-privilege roles for one reconciler schema: owner, daemon, worker, read-only.
--
-- Print it for a schema with `python -m reconciler.roles --schema NAME` and
-- run it as a superuser (or a role with CREATEROLE that may grant CREATE on
-- the database):
--
--   python -m reconciler.roles --schema reconciler | psql "$ADMIN_URL" -v ON_ERROR_STOP=1
--
-- Idempotent. The four roles are group roles (NOLOGIN): grant them to the
-- login roles that migrate, run the daemon, run the workers and read the
-- dashboards, e.g. GRANT reconciler_worker TO app.
--
-- The owner owns the schema and everything in it, so the worker functions
-- (SECURITY DEFINER) run with the owner's rights, not a superuser's: run
-- `reconciler migrate` and `reconciler policies set` as a member of it
-- (e.g. RECONCILER_DATABASE_URL of a login role granted the owner role,
-- with `SET ROLE` in its defaults). Run the script before the first migrate
-- (it creates the schema for the owner) and again after it (the grants on
-- the tables need the tables).
--
-- Why a script and not a migration: roles belong to the whole cluster, not
-- to the schema; their names are the operator's choice; and the role that
-- runs migrations often may not create roles.
--
-- How names stay names. No name is ever written into this script's text as
-- is: every name reaches SQL as an identifier or a string literal quoted by
-- psycopg, and statements with names run inside DO blocks through EXECUTE
-- of such literals, under a dollar-quote tag chosen so that it occurs in no
-- name (reconciler/roles.py). A name with quotes, semicolons or $tags$ is
-- just a name.
--
-- Sections (`-- name:` headers): the script is `roles`, `owner`, then
-- `apply`, which runs each statement of `grants` (and, from PostgreSQL 17,
-- `maintain`; with a partitioned ledger, `partitions`) once the schema is
-- migrated.

-- name: roles
DO {tag}
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {owner_name}) THEN
        CREATE ROLE {owner} NOLOGIN;
    END IF;
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
{tag};

-- name: owner
-- The owner may create the schema (migrate runs CREATE SCHEMA IF NOT EXISTS),
-- owns it, and owns every table, sequence and function already in it (a
-- schema first migrated as a superuser is handed over).
DO {tag}
DECLARE
    obj record;
BEGIN
    EXECUTE format('GRANT CREATE ON DATABASE %I TO %I', current_database(), {owner_name});
    EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I AUTHORIZATION %I', {schema_name}, {owner_name});
    EXECUTE format('ALTER SCHEMA %I OWNER TO %I', {schema_name}, {owner_name});
    FOR obj IN
        SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                              WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END AS kind,
               format('%I.%I', n.nspname, c.relname) AS name
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = {schema_name} AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
          AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = {owner_name})
          -- a sequence owned by a column follows its table
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid
                          AND d.deptype IN ('a', 'i') AND c.relkind = 'S')
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO %I', obj.kind, obj.name, {owner_name});
    END LOOP;
    FOR obj IN
        SELECT p.oid::regprocedure::text AS name,
               CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END AS kind
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = {schema_name}
          AND p.proowner <> (SELECT oid FROM pg_roles WHERE rolname = {owner_name})
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO %I', obj.kind, obj.name, {owner_name});
    END LOOP;
END
{tag};

-- name: apply
DO {tag}
DECLARE
    stmt text;
BEGIN
    IF to_regclass(format('%I.jobs', {schema_name})) IS NULL THEN
        RAISE NOTICE 'schema % is not migrated yet: run reconciler migrate as a member of %, then this script again',
            {schema_name}, {owner_name};
        RETURN;
    END IF;
    FOREACH stmt IN ARRAY {grants} LOOP
        BEGIN
            EXECUTE stmt;
        EXCEPTION WHEN undefined_function THEN
            -- A schema at an older version than this script: the rest is granted.
            RAISE NOTICE 'skipped, not in schema % yet (run reconciler migrate, then this script again): %',
                {schema_name}, stmt;
        END;
    END LOOP;
    IF current_setting('server_version_num')::int >= 170000 THEN
        FOREACH stmt IN ARRAY {maintain} LOOP
            EXECUTE stmt;
        END LOOP;
    END IF;
    IF to_regprocedure(format('%I.job_events_partitions_ensure(timestamptz, text)',
                              {schema_name})) IS NOT NULL THEN
        FOREACH stmt IN ARRAY {partitions} LOOP
            EXECUTE stmt;
        END LOOP;
    END IF;
END
{tag};

-- name: grants
GRANT USAGE ON SCHEMA {schema} TO {daemon}, {worker}, {readonly};

-- The daemon: what the five tasks and the runs record touch, nothing more.
-- mark-stale, requeue, dead-letter: UPDATE jobs, INSERT job_events;
-- purge: DELETE jobs, job_events, runs; every run: INSERT/UPDATE runs.
-- The trigger reads transitions, requeue reads retry_policies, and the CLI
-- checks schema_migrations before it runs anything.
GRANT SELECT, UPDATE, DELETE ON {schema}.jobs TO {daemon};
GRANT SELECT, INSERT, DELETE ON {schema}.job_events TO {daemon};
GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.runs TO {daemon};
-- Profiles: every change to a table the reconciler does not own goes to the ledger.
-- (Grants on that table itself are its owner's to give: README, Queues you already run.)
GRANT SELECT, INSERT, DELETE ON {schema}.ledger TO {daemon};
GRANT SELECT ON {schema}.transitions, {schema}.retry_policies, {schema}.paused_queues,
    {schema}.schema_migrations TO {daemon};
-- The daemon's task leases: replicas take, renew and release a task's lease there.
GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.task_leases TO {daemon};
-- What a write to jobs calls, as the writer: the row rules (its CHECK), the
-- WHEN of its update trigger, and the retry time the triggers decide. PUBLIC
-- may run them unless the database's default privileges say otherwise; granted
-- here so the daemon's writes work either way. One statement each: on a schema
-- at an older version, one not created yet is skipped with a NOTICE (the apply
-- block above) and the others are granted.
GRANT EXECUTE ON FUNCTION
    {schema}.jobs_row_valid(bigint, text, smallint, integer, integer, integer, text,
                            timestamptz, timestamptz, timestamptz, timestamptz, timestamptz,
                            timestamptz, timestamptz)
    TO {daemon};
GRANT EXECUTE ON FUNCTION
    {schema}.jobs_update_wanted(text, text, integer, integer, timestamptz, bytea, timestamptz)
    TO {daemon};
GRANT EXECUTE ON FUNCTION
    {schema}.retry_time(text, smallint, integer, bigint, timestamptz) TO {daemon};
GRANT EXECUTE ON FUNCTION
    {schema}.backoff(integer, interval, interval, double precision, double precision, bigint)
    TO {daemon};
GRANT EXECUTE ON FUNCTION {schema}.policy_for(text, smallint) TO {daemon};

-- Workers: the worker API and nothing else. The functions run with their
-- owner's rights, so workers need no grant on any table and cannot write a
-- row except through the fence.
GRANT EXECUTE ON FUNCTION
    {schema}.enqueue(text, jsonb, text, integer, timestamptz, integer, text, text),
    {schema}.claim(text, text[], integer),
    {schema}.heartbeat(bigint, uuid),
    {schema}.complete(bigint, uuid),
    {schema}.fail(bigint, uuid, jsonb)
    TO {worker};

-- Read-only: dashboards and status commands.
GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {readonly};

-- name: maintain
-- VACUUM and ANALYZE need ownership before PostgreSQL 17; from 17 on, the
-- MAINTAIN privilege is enough. On older servers vacuum-analyze run as the
-- daemon role reports a failed run ("skipping"): run that one task as the owner.
GRANT MAINTAIN ON {schema}.jobs, {schema}.job_events, {schema}.runs TO {daemon};

-- name: partitions
-- A partitioned ledger (RECONCILER_EVENTS_PARTITIONING; `migrate` creates
-- these functions): the partitions task creates and drops job_events
-- partitions through them, with the owner's rights. Nobody else may call them.
GRANT EXECUTE ON FUNCTION
    {schema}.job_events_partitions_ensure(timestamptz, text),
    {schema}.job_events_partition_drop_oldest(timestamptz)
    TO {daemon};
