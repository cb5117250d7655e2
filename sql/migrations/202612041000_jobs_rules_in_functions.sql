-- The rules of a job row, and the guard's WHEN, as one function call each
-- (issue 11; README, Performance). PostgreSQL keeps a CHECK constraint and a
-- trigger's WHEN as the text of their expression tree and reads that text back
-- (stringToNode) on every UPDATE statement: for the seven CHECKs of jobs and the
-- guard's WHEN, about 11 KB of it on each claim and each completion. perf put
-- the parsing at about a seventh of a worker's claim + complete, where every
-- statement touches one row. A call of a plpgsql function reads back in a
-- fraction of that, and the function, compiled once per session, applies the
-- same rules: the same rows are refused (tests/integration/test_row_rules.py),
-- now with one line naming the rule and the job.
--
-- The constraint is added NOT VALID (nothing scanned under the lock; every row
-- written from now on is checked) and the seven it replaces are dropped in the
-- same transaction, so no row is unchecked at any moment; the next migration
-- validates it without blocking writers. The trigger is dropped and created
-- again in one transaction, as in 202612040200.

CREATE FUNCTION jobs_row_valid(
    p_id bigint, p_status text, p_priority smallint, p_attempt integer, p_attempt_base integer,
    p_max_attempts integer, p_locked_by text, p_run_at timestamptz, p_created_at timestamptz,
    p_updated_at timestamptz, p_locked_at timestamptz, p_heartbeat_at timestamptz,
    p_started_at timestamptz, p_finished_at timestamptz
) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    times timestamptz[];
    names text[];
BEGIN
    -- The decision, in one expression (NULL passes, as in a CHECK: only a rule that
    -- is false refuses the row). Its operators and functions are pg_catalog's by
    -- name, so no search_path can change what it decides; and so the function
    -- needs no SET search_path, whose save and restore on every call made a bulk
    -- UPDATE of jobs 10-25 % slower.
    IF (p_status OPERATOR(pg_catalog.=) ANY (ARRAY['queued', 'running', 'succeeded', 'failed',
                                                    'stale', 'dead', 'cancelled'])
        AND p_priority OPERATOR(pg_catalog.>=) 0 AND p_priority OPERATOR(pg_catalog.<=) 4
        AND p_attempt OPERATOR(pg_catalog.>=) 0
        AND p_attempt_base OPERATOR(pg_catalog.>=) 0
        AND p_attempt_base OPERATOR(pg_catalog.<=) p_attempt
        AND p_max_attempts OPERATOR(pg_catalog.>=) 1
        AND p_max_attempts OPERATOR(pg_catalog.<=) 1000
        AND (p_status OPERATOR(pg_catalog.=) 'running')
            OPERATOR(pg_catalog.=) (p_locked_by IS NOT NULL)
        AND pg_catalog.isfinite(p_run_at) AND pg_catalog.isfinite(p_created_at)
        AND pg_catalog.isfinite(p_updated_at) AND pg_catalog.isfinite(p_locked_at)
        AND pg_catalog.isfinite(p_heartbeat_at) AND pg_catalog.isfinite(p_started_at)
        AND pg_catalog.isfinite(p_finished_at)) IS NOT FALSE THEN
        RETURN true;
    END IF;
    -- A row that breaks a rule: which one, for the message.
    IF p_status NOT IN ('queued', 'running', 'succeeded', 'failed', 'stale', 'dead', 'cancelled') THEN
        RAISE EXCEPTION 'job %: status % is not a job status', p_id, p_status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_row_valid', TABLE = 'jobs',
                  HINT = 'use queued, running, succeeded, failed, stale, dead or cancelled';
    END IF;
    IF p_priority NOT BETWEEN 0 AND 4 THEN
        RAISE EXCEPTION 'job %: priority % is out of range', p_id, p_priority
            USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_row_valid', TABLE = 'jobs',
                  HINT = 'use 0 (critical), 1 (high), 2 (default), 3 (low) or 4 (bulk)';
    END IF;
    IF p_attempt < 0 OR p_attempt_base NOT BETWEEN 0 AND p_attempt THEN
        RAISE EXCEPTION 'job %: attempt % and attempt_base % are not 0 <= attempt_base <= attempt',
                        p_id, p_attempt, p_attempt_base
            USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_row_valid', TABLE = 'jobs',
                  HINT = 'to give a job a fresh retry budget, set attempt_base = attempt';
    END IF;
    IF p_max_attempts NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'job %: max_attempts % is out of range', p_id, p_max_attempts
            USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_row_valid', TABLE = 'jobs',
                  HINT = 'use 1 (never retried) to 1000';
    END IF;
    IF (p_status = 'running') <> (p_locked_by IS NOT NULL) THEN
        RAISE EXCEPTION 'job %: a % job % locked_by', p_id, p_status,
                        CASE WHEN p_status = 'running' THEN 'needs' ELSE 'cannot have' END
            USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_row_valid', TABLE = 'jobs',
                  HINT = 'a running job has an owner (locked_by); a job that is not running has none';
    END IF;
    -- Infinity is a valid timestamptz but no moment: it would never come due, or
    -- always be due, and breaks every tool that reads it. (NULL passes, as in a CHECK.)
    IF NOT (isfinite(p_run_at) AND isfinite(p_created_at) AND isfinite(p_updated_at)
            AND isfinite(p_locked_at) AND isfinite(p_heartbeat_at)
            AND isfinite(p_started_at) AND isfinite(p_finished_at)) THEN
        times := ARRAY[p_run_at, p_created_at, p_updated_at, p_locked_at, p_heartbeat_at,
                       p_started_at, p_finished_at];
        names := ARRAY['run_at', 'created_at', 'updated_at', 'locked_at', 'heartbeat_at',
                       'started_at', 'finished_at'];
        FOR i IN 1 .. 7 LOOP
            IF NOT isfinite(times[i]) THEN
                RAISE EXCEPTION 'job %: % % is not a moment in time', p_id, names[i], times[i]
                    USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_row_valid',
                          TABLE = 'jobs', HINT = 'write a finite timestamp';
            END IF;
        END LOOP;
    END IF;
    RETURN false;  -- refused by the decision above, whatever the messages found
END
$$;

ALTER TABLE jobs ADD CONSTRAINT jobs_row_valid CHECK (jobs_row_valid(
        id, status, priority, attempt, attempt_base, max_attempts, locked_by, run_at, created_at,
        updated_at, locked_at, heartbeat_at, started_at, finished_at)) NOT VALID,
    DROP CONSTRAINT jobs_status_check,
    DROP CONSTRAINT jobs_priority_check,
    DROP CONSTRAINT jobs_attempt_check,
    DROP CONSTRAINT jobs_max_attempts_check,
    DROP CONSTRAINT jobs_check,
    DROP CONSTRAINT jobs_check1,
    DROP CONSTRAINT jobs_check2;

-- Whether an UPDATE of a job needs the guard: what the WHEN of 202612040200 decided,
-- with pg_catalog's operators by name (see the comment inside).
CREATE FUNCTION jobs_guard_wanted(
    p_old_status text, p_new_status text, p_old_attempt integer, p_new_attempt integer,
    p_new_updated_at timestamptz, p_new_token bytea
) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    -- pg_catalog's operators by name, and no SET search_path: as in jobs_row_valid.
    -- (x = y) IS NOT TRUE is x IS DISTINCT FROM y for the columns here, never NULL
    -- in a row that is kept; where one is NULL it only calls the guard.
    RETURN (p_new_updated_at OPERATOR(pg_catalog.=) pg_catalog.now()) IS NOT TRUE
        OR p_new_attempt OPERATOR(pg_catalog.<) p_old_attempt
        OR (p_new_status OPERATOR(pg_catalog.<>) 'running' AND p_new_token IS NOT NULL)
        OR ((p_new_status OPERATOR(pg_catalog.=) p_old_status) IS NOT TRUE
            AND NOT (p_old_status OPERATOR(pg_catalog.=) 'queued'
                     AND p_new_status OPERATOR(pg_catalog.=) 'running')
            AND NOT (p_old_status OPERATOR(pg_catalog.=) 'running'
                     AND p_new_status OPERATOR(pg_catalog.=) ANY (ARRAY['succeeded', 'failed'])));
END
$$;

DROP TRIGGER jobs_before_update ON jobs;
CREATE TRIGGER jobs_before_update BEFORE UPDATE ON jobs
    FOR EACH ROW WHEN (jobs_guard_wanted(OLD.status, NEW.status, OLD.attempt, NEW.attempt,
                                         NEW.updated_at, NEW.claim_token_hash))
    EXECUTE FUNCTION jobs_before_update();
