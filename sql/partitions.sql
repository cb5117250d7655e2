-- The partitioned ledger (RECONCILER_EVENTS_PARTITIONING = day | month): what
-- `migrate` runs to turn the plain job_events into a table range-partitioned
-- by `at`, and the two functions the daemon's partitions task calls.
--
-- Not a migration: the plain layout stays the default and sql/schema.sql
-- describes it. These statements run only when the setting asks, after every
-- migration, and each of them does nothing when its work is already done.
--
-- The conversion (reconciler/partitions.py runs the steps in this order):
--   1. functions: create the functions below (the owner's; no table lock).
--   2. bound: CHECK (at < cutover) NOT VALID on job_events, cutover being the
--      first day/month boundary at least a day ahead. NOT VALID: a brief
--      ACCESS EXCLUSIVE, no scan; new rows are checked from then on, and all
--      of them are before the cutover, which is a day away.
--   3. validate: VALIDATE CONSTRAINT scans the table under SHARE UPDATE
--      EXCLUSIVE, which lets workers insert and update meanwhile.
--   4. unique: CREATE UNIQUE INDEX CONCURRENTLY (id, at): the primary key a
--      partition needs (it must include the partition key), built without
--      blocking writes.
--   5. swap: one short transaction under ACCESS EXCLUSIVE on the old table:
--      rename it job_events_history, make (id, at) its primary key (the index
--      exists), create the partitioned job_events with the same columns,
--      identity continuing after the old one, ATTACH the old table as the
--      partition FROM (MINVALUE) TO (cutover) (the validated CHECK proves the
--      bound, so ATTACH does not scan), copy the grants. Catalog work only.
--   6. ensure: the partitions ahead, in a transaction of their own (ATTACH
--      takes SHARE UPDATE EXCLUSIVE: workers keep inserting).
-- Until the cutover, new events still go to job_events_history (its range
-- ends there); from the cutover on, into the day's or month's partition.

-- name: functions
-- The upper bound of a partition of job_events (NULL for none): read back from
-- its bound expression, which renders and parses in the same session's style.
CREATE OR REPLACE FUNCTION job_events_partition_upper(part oid)
RETURNS timestamptz
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $fn$
    SELECT CAST(substring(pg_get_expr(c.relpartbound, c.oid) FROM $re$TO \('([^']*)'\)$re$)
                AS timestamptz)
    FROM pg_class c WHERE c.oid = part
$fn$;

-- Partitions of job_events from the last one's upper bound up to `upto`, one
-- per `unit` (day or month, in UTC), named job_events_pYYYYMMDD after their
-- lower bound. Each is created standalone, bounded by a CHECK, then ATTACHed:
-- ATTACH takes SHARE UPDATE EXCLUSIVE on job_events, which workers' inserts
-- do not wait for, where CREATE TABLE ... PARTITION OF would take ACCESS
-- EXCLUSIVE (measured on PostgreSQL 15). All in the caller's transaction, so
-- a crash leaves either an attached partition or nothing; two callers at
-- once queue on an advisory lock and the second finds the work done.
CREATE OR REPLACE FUNCTION job_events_partitions_ensure(upto timestamptz, unit text)
RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
DECLARE
    lo   timestamptz;
    hi   timestamptz;
    part text;
BEGIN
    IF unit IS NULL OR unit NOT IN ('day', 'month') THEN
        RAISE EXCEPTION 'partition unit must be day or month, not %', unit;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('reconciler.partitions:' || current_schema(), 0));
    SELECT max(job_events_partition_upper(i.inhrelid)) INTO lo
    FROM pg_inherits i WHERE i.inhparent = 'job_events'::regclass;
    IF lo IS NULL THEN
        RAISE EXCEPTION 'job_events is not partitioned, or has no partition';
    END IF;
    WHILE lo < upto LOOP
        hi := (date_trunc(unit, lo AT TIME ZONE 'UTC') + CAST('1 ' || unit AS interval))
              AT TIME ZONE 'UTC';
        part := 'job_events_p' || to_char(lo AT TIME ZONE 'UTC', 'YYYYMMDD');
        EXECUTE format('CREATE TABLE %I (LIKE job_events INCLUDING DEFAULTS)', part);
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (at >= %L AND at < %L)',
                       part, part || '_bound', lo, hi);
        EXECUTE format('ALTER TABLE job_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       part, lo, hi);
        -- The partition's bound says the same from now on.
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', part, part || '_bound');
        RETURN NEXT part;
        lo := hi;
    END LOOP;
END
$fn$;

-- Drop the oldest partition of job_events if its every event is older than
-- `horizon` (its upper bound is at or before it); its name, upper bound and
-- estimated rows, or no row. One partition per call, so each drop is its own
-- short transaction. DROP takes ACCESS EXCLUSIVE on job_events (measured on
-- PostgreSQL 15; DETACH too, and DETACH CONCURRENTLY cannot run in a
-- function): catalog work only, and the caller's lock_timeout bounds its wait.
-- Never the last partition: there is always one to insert into.
CREATE OR REPLACE FUNCTION job_events_partition_drop_oldest(horizon timestamptz)
RETURNS TABLE (name text, upper_bound timestamptz, estimated_rows bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
DECLARE
    part oid;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('reconciler.partitions:' || current_schema(), 0));
    SELECT i.inhrelid, job_events_partition_upper(i.inhrelid) INTO part, upper_bound
    FROM pg_inherits i WHERE i.inhparent = 'job_events'::regclass
    ORDER BY 2 LIMIT 1;
    IF part IS NULL OR upper_bound > horizon
       OR (SELECT count(*) FROM pg_inherits i WHERE i.inhparent = 'job_events'::regclass) < 2 THEN
        RETURN;
    END IF;
    SELECT c.relname, greatest(c.reltuples, 0)::bigint INTO name, estimated_rows
    FROM pg_class c WHERE c.oid = part;
    EXECUTE format('DROP TABLE %I', name);
    RETURN NEXT;
END
$fn$;

-- Step 2 of the conversion: the cutover as the CHECK's literal (DDL takes no
-- bind parameters; format('%L') quotes the value).
CREATE OR REPLACE FUNCTION job_events_history_bound(cutover timestamptz)
RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT AS $fn$
BEGIN
    EXECUTE format('ALTER TABLE job_events ADD CONSTRAINT job_events_history_bound'
                   ' CHECK (at < %L) NOT VALID', cutover);
END
$fn$;

-- Step 5 of the conversion, in the migrator's transaction; nothing when done.
CREATE OR REPLACE FUNCTION job_events_partitioned_swap(cutover timestamptz)
RETURNS boolean
LANGUAGE plpgsql SET search_path FROM CURRENT AS $fn$
DECLARE
    seq     text;
    next_id bigint;
    g       record;
BEGIN
    IF (SELECT c.relkind FROM pg_class c WHERE c.oid = 'job_events'::regclass) = 'p' THEN
        RETURN false;
    END IF;
    LOCK TABLE job_events IN ACCESS EXCLUSIVE MODE;
    seq := pg_get_serial_sequence('job_events', 'id');
    EXECUTE format('SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END FROM %s', seq)
        INTO next_id;
    ALTER TABLE job_events RENAME TO job_events_history;
    ALTER TABLE job_events_history DROP CONSTRAINT job_events_pkey;
    ALTER TABLE job_events_history
        ADD CONSTRAINT job_events_history_pkey PRIMARY KEY USING INDEX job_events_history_pkey;
    ALTER TABLE job_events_history ALTER COLUMN id DROP IDENTITY;
    ALTER INDEX job_events_job_idx RENAME TO job_events_history_job_idx;
    ALTER INDEX job_events_at_idx RENAME TO job_events_history_at_idx;

    CREATE TABLE job_events (
        LIKE job_events_history INCLUDING DEFAULTS INCLUDING COMMENTS,
        PRIMARY KEY (id, at)
    ) PARTITION BY RANGE (at);
    EXECUTE format('ALTER TABLE job_events ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY'
                   ' (START WITH %s)', next_id);
    CREATE INDEX job_events_job_idx ON job_events (job_id, id);
    CREATE INDEX job_events_at_idx ON job_events (at);
    EXECUTE format('ALTER TABLE job_events ATTACH PARTITION job_events_history'
                   ' FOR VALUES FROM (MINVALUE) TO (%L)', cutover);
    ALTER TABLE job_events_history DROP CONSTRAINT job_events_history_bound;

    -- The same grants as before; whoever may delete events may also drop and
    -- create their partitions (the daemon role of sql/roles.sql).
    REVOKE ALL ON FUNCTION job_events_partitions_ensure(timestamptz, text) FROM PUBLIC;
    REVOKE ALL ON FUNCTION job_events_partition_drop_oldest(timestamptz) FROM PUBLIC;
    FOR g IN
        SELECT a.grantee, a.privilege_type
        FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.oid = 'job_events_history'::regclass AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('GRANT %s ON job_events TO %s', g.privilege_type,
                       CASE WHEN g.grantee = 0 THEN 'PUBLIC'
                            ELSE quote_ident(pg_get_userbyid(g.grantee)) END);
        IF g.privilege_type = 'DELETE' AND g.grantee <> 0 THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION job_events_partitions_ensure(timestamptz, text),'
                           ' job_events_partition_drop_oldest(timestamptz) TO %I',
                           pg_get_userbyid(g.grantee));
        END IF;
    END LOOP;
    RETURN true;
END
$fn$;
REVOKE ALL ON FUNCTION job_events_partitions_ensure(timestamptz, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION job_events_partition_drop_oldest(timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION job_events_partitioned_swap(timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION job_events_history_bound(timestamptz) FROM PUBLIC;

-- name: layout
-- 'p' when job_events is partitioned, 'r' when plain; with the cutover of a
-- conversion under way (its CHECK), if any.
SELECT c.relkind AS kind,
       (SELECT CAST(substring(pg_get_constraintdef(k.oid) FROM $re$'([^']*)'$re$) AS timestamptz)
        FROM pg_constraint k
        WHERE k.conrelid = c.oid AND k.conname = 'job_events_history_bound') AS cutover
FROM pg_class c WHERE c.oid = to_regclass('job_events')

-- name: cutover
-- The first `unit` boundary (UTC) at least a day after the database's now:
-- the conversion's CHECK refuses events from there on until the swap, so the
-- steps between have a day; a later one changes nothing but when the first
-- new partition starts.
SELECT (date_trunc(CAST(:unit AS text), (statement_timestamp() + interval '1 day') AT TIME ZONE 'UTC')
        + CAST('1 ' || CAST(:unit AS text) AS interval)) AT TIME ZONE 'UTC' AS cutover,
       statement_timestamp() AS now

-- name: bound
-- Step 2. The bound is a literal of the constraint; it comes from the
-- database's own clock (`cutover` above) and is formatted by format('%L').
SELECT job_events_history_bound(CAST(:cutover AS timestamptz))

-- name: unbound
-- Undo step 2 when a later step failed: a CHECK left behind would refuse
-- every event once its cutover passes.
ALTER TABLE job_events DROP CONSTRAINT IF EXISTS job_events_history_bound

-- name: validate
ALTER TABLE job_events VALIDATE CONSTRAINT job_events_history_bound

-- name: drop_invalid_unique
DROP INDEX CONCURRENTLY IF EXISTS job_events_history_pkey

-- name: unique
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS job_events_history_pkey ON job_events (id, at)

-- name: unique_valid
SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass('job_events_history_pkey')

-- name: swap
SELECT job_events_partitioned_swap(CAST(:cutover AS timestamptz)) AS swapped

-- name: ensure
SELECT name FROM job_events_partitions_ensure(CAST(:upto AS timestamptz), CAST(:unit AS text)) AS name
