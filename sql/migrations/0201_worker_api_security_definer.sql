-- 0201_worker_api_security_definer: the worker API is the only door to the jobs.
--
-- Until now enqueue/claim/heartbeat/complete/fail ran with the caller's
-- rights, so a worker's role needed UPDATE on jobs and INSERT on job_events,
-- and with those it could write any row it liked: skip the fence (worker +
-- attempt), skip the event. Now they run with their owner's rights (SECURITY
-- DEFINER) and a worker role needs nothing but EXECUTE on them (see
-- sql/roles.sql). The fence and the event are then the only way in.
--
-- What makes SECURITY DEFINER safe here: every value is a bound argument (no
-- dynamic SQL), and search_path is pinned to this schema with pg_temp last,
-- so neither the caller's search_path nor a temporary table named "jobs"
-- can redirect a name. EXECUTE is revoked from PUBLIC: who may call them is
-- granted explicitly (the schema's owner still can).

-- pg_temp last, unless the migration runner already put it there; note
-- whether this file added it, to take it away again at the end.
DO $$
BEGIN
    IF current_setting('search_path') !~ '(^|, )pg_temp$' THEN
        PERFORM set_config('search_path', current_setting('search_path') || ', pg_temp', true);
        PERFORM set_config('reconciler.m0201_added_pg_temp', 'yes', true);
    END IF;
END
$$;

ALTER FUNCTION enqueue(text, jsonb, text, integer, timestamptz, integer, text, text)
    SECURITY DEFINER SET search_path FROM CURRENT;
ALTER FUNCTION claim(text, text[], integer) SECURITY DEFINER SET search_path FROM CURRENT;
ALTER FUNCTION heartbeat(bigint, text, integer) SECURITY DEFINER SET search_path FROM CURRENT;
ALTER FUNCTION complete(bigint, text, integer) SECURITY DEFINER SET search_path FROM CURRENT;
ALTER FUNCTION fail(bigint, text, integer, jsonb) SECURITY DEFINER SET search_path FROM CURRENT;

REVOKE EXECUTE ON FUNCTION enqueue(text, jsonb, text, integer, timestamptz, integer, text, text),
    claim(text, text[], integer), heartbeat(bigint, text, integer),
    complete(bigint, text, integer), fail(bigint, text, integer, jsonb)
    FROM PUBLIC;

DO $$
BEGIN
    IF current_setting('reconciler.m0201_added_pg_temp', true) = 'yes' THEN
        PERFORM set_config('search_path',
                           regexp_replace(current_setting('search_path'), ', pg_temp$', ''), true);
        PERFORM set_config('reconciler.m0201_added_pg_temp', '', true);
    END IF;
END
$$;
