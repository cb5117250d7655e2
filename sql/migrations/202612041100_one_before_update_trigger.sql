-- One BEFORE UPDATE trigger on jobs instead of two (issue 11; README,
-- Performance): jobs_before_update() now also decides a job's retry time on an
-- update, which the trigger jobs_retry_at_update did, and one WHEN, one call of
-- jobs_update_wanted(), says whether either part has anything to do. PostgreSQL
-- reads each trigger's WHEN back from its text and prepares it for every UPDATE
-- statement, even where it is false: the retry trigger's alone was 13-16 us of a
-- worker's claim + complete, about 330 us of server time (python -m
-- tests.bench.hotpath). The tasks' bulk updates that fire both parts (mark-stale,
-- requeue, dead-letter) now make one call per row instead of two.
--
-- What is decided is unchanged. The guard still checks every change but the
-- workers' claim and completion; a failure (running -> failed), which the retry
-- trigger alone used to see, now passes the guard part too (its transition is
-- legal, its token and updated_at already as the guard would set them) before
-- its retry time is decided. The retry trigger fired only for an UPDATE naming
-- one of its columns; the part that replaces it keeps a retry time that nothing
-- it depends on has changed, so an UPDATE of other columns leaves it as it was,
-- as before (and gives one to a waiting job that somehow had none).
--
-- Who could call jobs_guard_wanted() may call jobs_update_wanted() (its grants are
-- copied before it is dropped), so a database that revokes EXECUTE from PUBLIC
-- keeps its daemon's writes working without running sql/roles.sql again first.
-- The triggers are dropped and created in one transaction: the table's ACCESS
-- EXCLUSIVE lock for a moment (migrate waits at most
-- RECONCILER_MIGRATE_LOCK_TIMEOUT for it, and retries).

CREATE FUNCTION jobs_update_wanted(
    p_old_status text, p_new_status text, p_old_attempt integer, p_new_attempt integer,
    p_new_updated_at timestamptz, p_new_token bytea, p_old_retry_at timestamptz
) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    -- pg_catalog's operators by name, and no SET search_path: as in jobs_row_valid.
    -- (x = y) IS NOT TRUE is x IS DISTINCT FROM y for the columns here, never NULL
    -- in a row that is kept; where one is NULL it only calls the trigger.
    RETURN (p_new_updated_at OPERATOR(pg_catalog.=) pg_catalog.now()) IS NOT TRUE
        OR p_new_attempt OPERATOR(pg_catalog.<) p_old_attempt
        OR (p_new_status OPERATOR(pg_catalog.<>) 'running' AND p_new_token IS NOT NULL)
        OR ((p_new_status OPERATOR(pg_catalog.=) p_old_status) IS NOT TRUE
            AND NOT (p_old_status OPERATOR(pg_catalog.=) 'queued'
                     AND p_new_status OPERATOR(pg_catalog.=) 'running')
            AND NOT (p_old_status OPERATOR(pg_catalog.=) 'running'
                     AND p_new_status OPERATOR(pg_catalog.=) 'succeeded'))
        OR p_new_status OPERATOR(pg_catalog.=) ANY (ARRAY['failed', 'stale'])
        OR p_old_retry_at IS NOT NULL;
END
$$;

DO $copy$
DECLARE
    g record;
BEGIN
    -- Every role granted EXECUTE on the old function (PUBLIC as 0), but its owner,
    -- who may anyway. An old function with no ACL had the default privileges, and
    -- the new one gets the database's default privileges of now: the same, unless
    -- someone changed them since (a hardening meant to apply is not undone here;
    -- sql/roles.sql grants the daemon by name). regrole's text is a quoted identifier.
    FOR g IN
        SELECT DISTINCT a.grantee
        FROM pg_proc p, aclexplode(p.proacl) a
        WHERE p.oid = 'jobs_guard_wanted(text, text, integer, integer, timestamptz, bytea)'::regprocedure
          AND a.privilege_type = 'EXECUTE'
          AND a.grantee <> p.proowner
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION jobs_update_wanted(text, text, integer, '
                       'integer, timestamptz, bytea, timestamptz) TO %s',
                       CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE g.grantee::regrole::text END);
    END LOOP;
END
$copy$;

CREATE OR REPLACE FUNCTION jobs_before_update() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status AND NOT EXISTS (
        SELECT 1 FROM transitions t
        WHERE t.from_status = OLD.status AND t.to_status = NEW.status
    ) THEN
        RAISE EXCEPTION 'illegal job transition % -> % (job %)', OLD.status, NEW.status, OLD.id
            USING ERRCODE = 'check_violation',
                  HINT = 'allowed transitions are listed in the transitions table';
    END IF;
    -- The fence: attempt numbers a job's claims for its whole life, so a late
    -- copy of an old attempt can never match again, whoever runs the UPDATE.
    IF NEW.attempt < OLD.attempt THEN
        RAISE EXCEPTION 'attempt of job % cannot go down (% -> %)', OLD.id, OLD.attempt, NEW.attempt
            USING ERRCODE = 'check_violation',
                  HINT = 'to give a job a fresh retry budget, set attempt_base = attempt';
    END IF;
    -- A claim's token is only good while the job runs under that claim.
    IF NEW.status <> 'running' THEN
        NEW.claim_token_hash := NULL;
    END IF;
    NEW.updated_at := now();
    IF NEW.status NOT IN ('failed', 'stale') THEN
        NEW.retry_at := NULL;
    ELSIF NEW.retry_at IS NULL
          OR NEW.status IS DISTINCT FROM OLD.status
          OR NEW.finished_at IS DISTINCT FROM OLD.finished_at
          OR NEW.attempt IS DISTINCT FROM OLD.attempt
          OR NEW.attempt_base IS DISTINCT FROM OLD.attempt_base
          OR NEW.kind IS DISTINCT FROM OLD.kind
          OR NEW.priority IS DISTINCT FROM OLD.priority THEN
        NEW.retry_at := retry_time(NEW.kind, NEW.priority, NEW.attempt - NEW.attempt_base,
                                   NEW.id, coalesce(NEW.finished_at, NEW.updated_at, now()));
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER jobs_retry_at_update ON jobs;
DROP TRIGGER jobs_before_update ON jobs;
CREATE TRIGGER jobs_before_update BEFORE UPDATE ON jobs
    FOR EACH ROW WHEN (jobs_update_wanted(OLD.status, NEW.status, OLD.attempt, NEW.attempt,
                                          NEW.updated_at, NEW.claim_token_hash, OLD.retry_at))
    EXECUTE FUNCTION jobs_before_update();

DROP FUNCTION jobs_guard_wanted(text, text, integer, integer, timestamptz, bytea);

CREATE OR REPLACE FUNCTION jobs_retry_at() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF NEW.retry_at IS NULL THEN
        NEW.retry_at := retry_time(NEW.kind, NEW.priority, NEW.attempt - NEW.attempt_base,
                                   NEW.id, coalesce(NEW.finished_at, NEW.updated_at, now()));
    END IF;
    RETURN NEW;
END
$$;
