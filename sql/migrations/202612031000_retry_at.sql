-- Retries due by index (issue 11): each failed or stale job carries its retry
-- time, decided as it enters that state, so requeue selects the jobs due
-- through an index instead of computing every waiting job's backoff on every
-- run. Adding a nullable column without a default changes only the catalog.
-- The jobs already waiting get theirs in 202612031001_retry_at_backfill.sql,
-- the index in 202612031002_retry_at_index.sql.

ALTER TABLE jobs ADD COLUMN retry_at timestamptz;

-- When a failed or stale job may be retried: the end of its attempt (finished_at,
-- else the moment of the change) plus the backoff of its retry policy for the
-- attempts used of its current budget (backoff() above). A job with no policy
-- at all may be retried at once rather than left behind.
CREATE FUNCTION retry_time(
    p_kind text, p_priority smallint, p_used integer, p_job_id bigint, p_from timestamptz
) RETURNS timestamptz
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT p_from + coalesce(
        (SELECT backoff(p_used, p.initial_delay, p.max_delay, p.multiplier, p.jitter, p_job_id)
         FROM policy_for(p_kind, p_priority) p),
        interval '0')
$$;

-- retry_at is decided when a job enters failed or stale, whoever puts it
-- there (fail(), mark-stale, an operator, SQL typed into psql), and again when
-- what it depends on changes (the attempt's end, the attempts used, the kind or
-- priority that picks the policy), or when it is set to NULL; it is NULL in
-- every other status. A value set explicitly with nothing else changed is kept
-- (`reconciler policies set` recomputes waiting jobs that way). The requeue
-- task only compares it with its now, through jobs_retry_due_idx.
CREATE FUNCTION jobs_retry_at() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF NEW.status NOT IN ('failed', 'stale') THEN
        NEW.retry_at := NULL;
    ELSIF TG_OP = 'INSERT' OR NEW.retry_at IS NULL
          OR NEW.status IS DISTINCT FROM OLD.status
          OR NEW.finished_at IS DISTINCT FROM OLD.finished_at
          OR NEW.attempt IS DISTINCT FROM OLD.attempt
          OR NEW.attempt_base IS DISTINCT FROM OLD.attempt_base
          OR NEW.kind IS DISTINCT FROM OLD.kind
          OR NEW.priority IS DISTINCT FROM OLD.priority THEN
        IF TG_OP = 'INSERT' AND NEW.retry_at IS NOT NULL THEN
            RETURN NEW;  -- a row written whole (a restore) keeps its retry time
        END IF;
        NEW.retry_at := retry_time(NEW.kind, NEW.priority, NEW.attempt - NEW.attempt_base,
                                   NEW.id, coalesce(NEW.finished_at, NEW.updated_at, now()));
    END IF;
    RETURN NEW;
END
$$;

-- Only rows that are, or were, waiting for a retry call the function: a
-- claim, a heartbeat or a completion never does.
CREATE TRIGGER jobs_retry_at_insert BEFORE INSERT ON jobs
    FOR EACH ROW WHEN (NEW.status IN ('failed', 'stale'))
    EXECUTE FUNCTION jobs_retry_at();
CREATE TRIGGER jobs_retry_at_update
    BEFORE UPDATE OF status, finished_at, attempt, attempt_base, kind, priority, retry_at ON jobs
    FOR EACH ROW WHEN (NEW.status IN ('failed', 'stale') OR OLD.retry_at IS NOT NULL)
    EXECUTE FUNCTION jobs_retry_at();
