-- The reconciler's schema as it stands: what every migration in
-- sql/migrations/, applied in order, builds. Read this file to know the
-- schema; read the migrations to know how it got here. A change to the schema
-- is a new migration AND the same change here, in one commit;
-- tests/integration/test_schema_snapshot.py builds one schema from this file
-- and one by running the migrations, and compares their catalogs.
--
-- Like the migrations it runs with search_path set to the reconciler's schema,
-- then pg_temp, so every name is unqualified.

-- The lifecycle. A status change not listed here is rejected by a trigger,
-- whoever attempts it (our code, a worker, or SQL typed into psql).
CREATE TABLE transitions (
    from_status text NOT NULL,
    to_status   text NOT NULL,
    meaning     text NOT NULL,
    PRIMARY KEY (from_status, to_status)
);

INSERT INTO transitions (from_status, to_status, meaning) VALUES
    ('queued',    'running',   'claim(): a worker took the job'),
    ('queued',    'cancelled', 'an operator cancelled the job before it ran'),
    ('running',   'succeeded', 'complete(): the worker finished the job (or an operator marked it succeeded; the worker is fenced out)'),
    ('running',   'failed',    'fail(): the worker reported an error'),
    ('running',   'stale',     'mark-stale: no heartbeat within the timeout'),
    ('running',   'cancelled', 'an operator cancelled a running job (the worker is fenced out)'),
    ('failed',    'queued',    'requeue: backoff elapsed, attempts left (or an operator retried it)'),
    ('failed',    'dead',      'dead-letter: no attempts left'),
    ('failed',    'cancelled', 'an operator cancelled a failed job'),
    ('stale',     'queued',    'requeue: backoff elapsed, attempts left (or an operator retried it)'),
    ('stale',     'dead',      'dead-letter: no attempts left'),
    ('stale',     'cancelled', 'an operator cancelled a stale job'),
    ('dead',      'queued',    'an operator replayed a dead job'),
    ('cancelled', 'queued',    'an operator requeued a cancelled job'),
    ('succeeded', 'queued',    'an operator replayed a succeeded job as a new attempt'),
    ('queued',    'succeeded', 'an operator marked the job succeeded by hand, with a reason'),
    ('failed',    'succeeded', 'an operator marked the job succeeded by hand, with a reason'),
    ('stale',     'succeeded', 'an operator marked the job succeeded by hand, with a reason'),
    ('dead',      'succeeded', 'an operator marked the job succeeded by hand, with a reason');

-- Retry policies: the one source of truth for max_attempts (used by
-- enqueue()) and for backoff (used by the requeue task). A row is either for
-- a priority or for a kind; a kind's row wins over its priority's.
-- Defaults come from the Village Storefront runbook (priorities CRITICAL..BULK).
CREATE TABLE retry_policies (
    priority      smallint UNIQUE CHECK (priority BETWEEN 0 AND 4),
    kind          text UNIQUE,
    -- At most 1000, as enqueue() takes: more would be a retry loop, not a policy.
    max_attempts  integer  NOT NULL CHECK (max_attempts BETWEEN 1 AND 1000),
    initial_delay interval NOT NULL CHECK (initial_delay >= interval '0'),
    max_delay     interval NOT NULL CHECK (max_delay >= initial_delay),
    -- NaN compares greater than every number in PostgreSQL, so >= 1 alone admits it.
    multiplier    double precision NOT NULL CHECK (multiplier >= 1 AND multiplier < 'Infinity'),
    jitter        double precision NOT NULL DEFAULT 0 CHECK (jitter >= 0 AND jitter < 1),
    CHECK ((priority IS NULL) <> (kind IS NULL))
);

INSERT INTO retry_policies (priority, max_attempts, initial_delay, max_delay, multiplier) VALUES
    (0, 5, interval '500 milliseconds', interval '30 seconds', 1.5),  -- critical
    (1, 3, interval '1 second',         interval '5 minutes',  2.0),  -- high
    (2, 3, interval '1 second',         interval '5 minutes',  2.0),  -- default
    (3, 3, interval '1 second',         interval '5 minutes',  2.0),  -- low
    (4, 1, interval '1 second',         interval '5 minutes',  2.0);  -- bulk: never retried

-- The rules every row of jobs keeps, whoever writes it, as one function that a
-- single CHECK constraint calls (jobs_row_valid). Not seven CHECKs: PostgreSQL
-- reads each CHECK's stored expression back from its text on every UPDATE
-- statement, and on the workers' path, where every statement changes one row,
-- that parsing was about a seventh of a claim + complete (migration
-- 202612041000). A broken rule raises check_violation with one line naming the
-- job and the rule.
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

CREATE TABLE jobs (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue           text        NOT NULL DEFAULT 'default',
    kind            text        NOT NULL,
    tenant_id       text,
    priority        smallint    NOT NULL DEFAULT 2,             -- 0 (critical) .. 4 (bulk)
    payload         jsonb       NOT NULL DEFAULT '{}',
    -- queued, running, succeeded, failed, stale, dead or cancelled (jobs_row_valid)
    status          text        NOT NULL DEFAULT 'queued',
    -- Claims over the job's whole life: never lowered, so (job, attempt) never repeats.
    attempt         integer     NOT NULL DEFAULT 0,
    -- The attempt count when an operator last gave the job a fresh retry budget
    -- (jobs requeue, dead-letter replay): attempts used = attempt - attempt_base.
    attempt_base    integer     NOT NULL DEFAULT 0,             -- 0 .. attempt
    max_attempts    integer     NOT NULL,                       -- 1 .. 1000
    run_at          timestamptz NOT NULL DEFAULT now(),
    locked_by       text,
    locked_at       timestamptz,
    heartbeat_at    timestamptz,
    started_at      timestamptz,
    finished_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    last_error      jsonb,
    idempotency_key text,
    -- sha256 of the claim token that claim() handed to the worker running this
    -- attempt; heartbeat/complete/fail must present the token. Only the hash is
    -- kept, so a role that can read this table cannot act as the worker.
    claim_token_hash bytea,
    -- When a failed or stale job may be retried (its policy's backoff after the
    -- attempt ended), decided as it enters that state (jobs_before_update);
    -- NULL in every other status. The requeue task compares it with its now.
    retry_at        timestamptz,
    -- Every rule of a row (jobs_row_valid above): a known status and priority,
    -- 0 <= attempt_base <= attempt, 1 <= max_attempts <= 1000, an owner exactly
    -- while running, finite times.
    CONSTRAINT jobs_row_valid CHECK (jobs_row_valid(
        id, status, priority, attempt, attempt_base, max_attempts, locked_by, run_at, created_at,
        updated_at, locked_at, heartbeat_at, started_at, finished_at))
)
-- Room on each page for the new version of a row a heartbeat writes, so that
-- heartbeats are HOT updates (no index touched) rather than a new tuple on
-- another page and a new entry in every index.
WITH (fillfactor = 90);

-- The next queued job by priority, then run_at (jobs_queue_claim_idx serves claim()).
CREATE INDEX jobs_claim_idx ON jobs (priority, run_at, id) WHERE status = 'queued';
-- claim(): one lane per queue and priority, due jobs in run_at order; and the
-- list of queues with queued jobs, by a skip scan (see claim()).
CREATE INDEX jobs_queue_claim_idx ON jobs (queue, priority, run_at, id) WHERE status = 'queued';
-- mark-stale: running jobs by claim time. Not by the last sign of life: an
-- index on heartbeat_at would change on every heartbeat and make each one
-- write to it (no HOT update). A job's claim is never after its last sign of
-- life, so "claimed before the horizon" narrows the scan to the running jobs
-- older than the shortest timeout; a row written by hand without locked_at is
-- always looked at (-infinity).
CREATE INDEX jobs_running_since_idx ON jobs ((coalesce(locked_at, '-infinity'::timestamptz)), id)
    WHERE status = 'running';
-- purge: finished jobs by finish time, then id: its ORDER BY and keyset, so a batch
-- never sorts the jobs that share one finished_at (a bulk cancel stamps one clock).
-- The finished statuses only, so a claim or a failure writes no entry into it;
-- queue and priority ride along, so stats counts finished jobs from it alone.
CREATE INDEX jobs_finished_idx ON jobs (status, finished_at, id) INCLUDE (queue, priority)
    WHERE status IN ('succeeded', 'cancelled', 'dead');
-- requeue and dead-letter: failed/stale jobs in finish order, one index per
-- side of "attempts used < max_attempts". A batch reads its rows in order and
-- stops at its LIMIT; without them every batch reads the whole failed/stale
-- backlog and sorts it (requeue computing each row's backoff), so batches grow
-- with it.
CREATE INDEX jobs_requeue_idx ON jobs (finished_at, id)
    WHERE status IN ('failed', 'stale') AND attempt - attempt_base < max_attempts;
CREATE INDEX jobs_dead_letter_idx ON jobs (finished_at, id)
    WHERE status IN ('failed', 'stale') AND attempt - attempt_base >= max_attempts;
-- requeue: failed/stale jobs with attempts left by retry time, so a batch reads
-- the due rows and stops: its cost is the jobs due, not the backlog in backoff.
-- (jobs_requeue_idx stays for `reconciler policies set`, which walks the
-- waiting jobs in finish order to recompute their retry time.)
CREATE INDEX jobs_retry_due_idx ON jobs (retry_at, id)
    WHERE status IN ('failed', 'stale') AND attempt - attempt_base < max_attempts;
-- Operators' changes by queue (`jobs cancel --queue`, ...): the live jobs of a
-- queue in id order, the order their batches take, so a batch reads its rows
-- and stops instead of reading the whole table for one queue's jobs.
CREATE INDEX jobs_live_queue_idx ON jobs (queue, id)
    WHERE status IN ('queued', 'running', 'failed', 'stale');
-- An idempotency key is unique per kind and tenant (NULL tenant: one scope of
-- its own): the same key sent by another tenant, or for another kind of job,
-- is another job.
CREATE UNIQUE INDEX jobs_idempotency_key_idx ON jobs (kind, tenant_id, idempotency_key)
    NULLS NOT DISTINCT WHERE idempotency_key IS NOT NULL;

-- One row per status change, written in the same statement as the change.
CREATE TABLE job_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id      bigint      NOT NULL,
    from_status text,                       -- NULL for the enqueue that created the job
    to_status   text        NOT NULL,
    at          timestamptz NOT NULL,
    actor       text        NOT NULL,       -- reconciler:mark-stale, worker:w1, cli:alice, sql:app
    reason      jsonb       NOT NULL DEFAULT '{}',
    run_id      bigint                      -- the reconciler run that made it, if any
);
CREATE INDEX job_events_job_idx ON job_events (job_id, id);
CREATE INDEX job_events_at_idx ON job_events (at);

-- One row per task run, written by the reconciler.
CREATE TABLE runs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task        text        NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz,
    status      text        NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'ok', 'failed', 'interrupted')),
    transitions jsonb       NOT NULL DEFAULT '{}',   -- {"running->stale": 3}
    batches     integer     NOT NULL DEFAULT 0,
    details     jsonb       NOT NULL DEFAULT '{}',
    error       text,
    host        text        NOT NULL,
    pid         integer     NOT NULL,
    actor       text        NOT NULL,
    profile     text        NOT NULL DEFAULT 'native'   -- the profile the run was for
);
CREATE INDEX runs_task_started_idx ON runs (task, started_at DESC);

-- Every change the reconciler makes to a queue table it does not own (a
-- profile's table, reconciler/profiles/), written in the statement that makes
-- it: what job_events is for the reconciler's own jobs.
CREATE TABLE ledger (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    profile     text        NOT NULL,   -- the profile's name (procrastinate, ai-course-jobs, ...)
    table_name  text        NOT NULL,   -- schema.table, as the profile names it
    job_id      text        NOT NULL,   -- the job's id as text (bigint, uuid, ...)
    from_status text        NOT NULL,
    to_status   text        NOT NULL,   -- a status, or 'purged' for a deleted job
    at          timestamptz NOT NULL,
    actor       text        NOT NULL,   -- reconciler:mark-stale, cli:alice, ...
    reason      jsonb       NOT NULL DEFAULT '{}',
    run_id      bigint                  -- the reconciler run that made it
);
CREATE INDEX ledger_job_idx ON ledger (profile, job_id, id);
CREATE INDEX ledger_at_idx ON ledger (at);

-- Queues an operator paused: claim() hands out none of their jobs.
CREATE TABLE paused_queues (
    queue     text PRIMARY KEY,           -- a queue, or * for every queue (pause --all)
    paused_at timestamptz NOT NULL DEFAULT now(),
    paused_by text        NOT NULL,
    reason    text
);

-- One row per pause and resume, written in the same statement as the change
-- to paused_queues (sql/ops/pause.sql); reconciler pause --history lists them.
CREATE TABLE queue_pause_events (
    id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue  text        NOT NULL,       -- '*' for every queue
    action text        NOT NULL CHECK (action IN ('pause', 'resume')),
    at     timestamptz NOT NULL,
    actor  text        NOT NULL,       -- cli:alice, or --actor
    reason text
);

-- One lease per task, so that replicas never run a task at once. A run takes
-- its task's lease before it starts (an INSERT ... ON CONFLICT DO UPDATE that
-- succeeds only when the lease is free or expired), renews it in every batch
-- transaction, and releases it when it records its outcome. All times are the
-- database's clock. A row, not a session, carries the lease, so it works
-- through PgBouncer in transaction pooling mode, where session advisory locks
-- would be held by whichever client shares the server connection. See
-- sql/leases.sql and reconciler/leases.py.
CREATE TABLE task_leases (
    task        text PRIMARY KEY,
    holder      text        NOT NULL,  -- host:pid:token of the run that holds or last held it
    run_id      bigint,                -- that run's row in runs, once recorded
    acquired_at timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL   -- free from this moment unless renewed
);

-- A record of every dead-letter export, so that `reconciler dead-letter purge`
-- can refuse to delete a job nobody backed up. An export is one row in
-- ops_exports (who, when, where to, with which filter) and one row per
-- exported job in ops_exported_jobs, holding the job's updated_at as it was
-- exported: a job counts as backed up only while that is still its
-- updated_at (a job that changed since, say replayed and dead again with a
-- new error, needs a new export). The rows go with the job, whoever deletes it.
CREATE TABLE ops_exports (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    exported_at timestamptz NOT NULL,
    actor       text        NOT NULL,
    destination text        NOT NULL,   -- a file path, or '-' for stdout
    filter      jsonb       NOT NULL,   -- the filter of the exported set, as given
    job_count   integer     NOT NULL,
    -- true: a file, written, fsynced and renamed into place (its folder fsynced
    -- too) before this row was recorded; only such an export is a backup.
    -- false: stdout, kept for the record; nobody can tell the bytes were kept.
    durable     boolean     NOT NULL
);

CREATE TABLE ops_exported_jobs (
    export_id      bigint      NOT NULL REFERENCES ops_exports (id) ON DELETE CASCADE,
    job_id         bigint      NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    job_updated_at timestamptz NOT NULL,
    PRIMARY KEY (job_id, export_id)
);

-- Guard: every status change must be a listed transition, attempt never goes
-- down, a token hash only while running; updated_at follows. Then the retry
-- time: retry_at is decided when a job enters failed or stale, whoever puts it
-- there (fail(), mark-stale, an operator, SQL typed into psql), and again when
-- what it depends on changes (the attempt's end, the attempts used, the kind or
-- priority that picks the policy), or when it is set to NULL; it is NULL in
-- every other status. A value set explicitly with nothing else changed is kept
-- (`reconciler policies set` recomputes waiting jobs that way). The requeue
-- task only compares it with its now, through jobs_retry_due_idx. One trigger
-- for both, not two: each trigger's WHEN is read back from its text and
-- prepared for every UPDATE statement (migration 202612041100).
CREATE FUNCTION jobs_before_update() RETURNS trigger
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

-- Whether an UPDATE of a job needs jobs_before_update(): not where it would
-- change nothing, that is for a writer that sets updated_at to now() itself,
-- lowers no attempt, leaves no token on a job that is not running, makes no
-- status change but a claim (queued -> running) or a completion (running ->
-- succeeded), both in transitions (a test pins it), and leaves a job neither
-- failed nor stale nor with a retry time to clear. The workers' claim(),
-- heartbeat() and complete() are such writers; any other change is checked
-- against the table, and a failure gets its retry time. A function, not the
-- expression itself in WHEN, for the reason given at jobs_row_valid.
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

CREATE TRIGGER jobs_before_update BEFORE UPDATE ON jobs
    FOR EACH ROW WHEN (jobs_update_wanted(OLD.status, NEW.status, OLD.attempt, NEW.attempt,
                                          NEW.updated_at, NEW.claim_token_hash, OLD.retry_at))
    EXECUTE FUNCTION jobs_before_update();

-- The retry policy that applies to a job: its kind's row, else its priority's.
CREATE FUNCTION policy_for(p_kind text, p_priority smallint) RETURNS retry_policies
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT rp.* FROM retry_policies rp
    WHERE rp.kind = p_kind OR (rp.priority = p_priority AND rp.kind IS NULL)
    ORDER BY rp.kind IS NULL
    LIMIT 1
$$;

-- Backoff before attempt number p_attempt + 1, after p_attempt attempts:
-- min(max_delay, initial_delay * multiplier^(attempt-1)), then spread by
-- +/- jitter with a factor that is fixed per (job, attempt), so every run of
-- the requeue task agrees on when a job becomes due. Everything is absolute
-- seconds: the exponent is compared in logarithms before anything is raised
-- (2^99 s does not fit in an interval, 2^1999 not even in a double, and an
-- error would fail every batch of the requeue task), and the result has no
-- day field (timestamptz + '1 day' is 23 or 25 hours across a DST change).
CREATE FUNCTION backoff(
    p_attempt integer, p_initial interval, p_max interval,
    p_multiplier double precision, p_jitter double precision, p_job_id bigint
) RETURNS interval
LANGUAGE plpgsql IMMUTABLE SET search_path FROM CURRENT AS $$
DECLARE
    initial_s double precision := extract(epoch FROM p_initial)::double precision;
    max_s double precision := extract(epoch FROM p_max)::double precision;
    steps integer := greatest(p_attempt, 1) - 1;
    -- A jitter under 1e-12 cannot move a backoff (at most 1000 days) by a microsecond,
    -- and one as small as 5e-324 would underflow the product (an error in PostgreSQL).
    jitter double precision := CASE WHEN p_jitter < 1e-12 THEN 0 ELSE p_jitter END;
    base_s double precision;
BEGIN
    base_s := CASE
        WHEN initial_s <= 0 THEN 0
        WHEN steps = 0 OR p_multiplier <= 1 THEN least(initial_s, max_s)
        WHEN steps * ln(p_multiplier) >= ln(max_s / initial_s) THEN max_s
        ELSE initial_s * power(p_multiplier, steps)
    END;
    RETURN make_interval(secs => base_s * (1 + jitter * (
        2 * ((abs(hashtext(p_job_id::text || ':' || p_attempt::text)::bigint) % 10000) / 10000.0) - 1
    )));
END
$$;

-- When a failed or stale job may be retried: the end of its attempt (finished_at,
-- else the moment of the change) plus the backoff of its retry policy for the
-- attempts used of its current budget (backoff() above). A job with no policy
-- at all may be retried at once rather than left behind.
CREATE FUNCTION retry_time(
    p_kind text, p_priority smallint, p_used integer, p_job_id bigint, p_from timestamptz
) RETURNS timestamptz
LANGUAGE plpgsql STABLE SET search_path FROM CURRENT AS $$
DECLARE
    p retry_policies := policy_for(p_kind, p_priority);  -- all NULL: no policy at all
BEGIN
    RETURN p_from + coalesce(
        backoff(p_used, p.initial_delay, p.max_delay, p.multiplier, p.jitter, p_job_id),
        interval '0');
END
$$;

-- A job written failed or stale gets its retry time from its policy (on an
-- update, jobs_before_update() decides it), unless the row is written whole with
-- one (a restore), which it keeps.
CREATE FUNCTION jobs_retry_at() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF NEW.retry_at IS NULL THEN
        NEW.retry_at := retry_time(NEW.kind, NEW.priority, NEW.attempt - NEW.attempt_base,
                                   NEW.id, coalesce(NEW.finished_at, NEW.updated_at, now()));
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER jobs_retry_at_insert BEFORE INSERT ON jobs
    FOR EACH ROW WHEN (NEW.status IN ('failed', 'stale'))
    EXECUTE FUNCTION jobs_retry_at();

-- enqueue(): add a job and return its id. A repeated idempotency key (for the
-- same kind and tenant) returns the existing job's id and adds nothing.
-- The event's actor is the session's user (sql:NAME), or what the caller's
-- transaction set in reconciler.actor (`reconciler enqueue` sets cli:NAME and
-- reconciler.run_id): a label for the audit trail, not an authentication.
CREATE FUNCTION enqueue(
    kind            text,
    payload         jsonb       DEFAULT '{}',
    queue           text        DEFAULT 'default',
    priority        integer     DEFAULT 2,  -- integer, so `priority => 1` needs no cast
    run_at          timestamptz DEFAULT NULL,
    max_attempts    integer     DEFAULT NULL,
    idempotency_key text        DEFAULT NULL,
    tenant_id       text        DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
#variable_conflict use_column
DECLARE
    v_id bigint;
    v_priority integer := coalesce(enqueue.priority, 2);
    v_max integer := enqueue.max_attempts;
    v_actor text := coalesce(nullif(current_setting('reconciler.actor', true), ''),
                             'sql:' || session_user);
    v_run_id text := nullif(current_setting('reconciler.run_id', true), '');
BEGIN
    IF coalesce(enqueue.kind, '') = '' THEN
        RAISE EXCEPTION 'enqueue() needs a kind'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'pass kind => ''send_email'', the name workers know the job by';
    END IF;
    IF v_priority NOT BETWEEN 0 AND 4 THEN
        RAISE EXCEPTION 'priority % is out of range', v_priority
            USING ERRCODE = 'check_violation',
                  HINT = 'use 0 (critical), 1 (high), 2 (default), 3 (low) or 4 (bulk)';
    END IF;
    IF NOT isfinite(enqueue.run_at) THEN
        RAISE EXCEPTION 'run_at % is not a moment in time', enqueue.run_at
            USING ERRCODE = 'invalid_datetime_format',
                  HINT = 'pass a finite timestamp, or leave run_at out to run it now';
    END IF;
    IF v_max IS NOT NULL AND v_max NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'max_attempts % is out of range', v_max
            USING ERRCODE = 'check_violation',
                  HINT = 'use 1 (never retried) to 1000, or leave it out for the retry policy''s';
    END IF;
    IF v_run_id !~ '^[0-9]{1,18}$' THEN
        v_run_id := NULL;
    END IF;
    IF v_max IS NULL THEN
        v_max := (policy_for(enqueue.kind, v_priority::smallint)).max_attempts;
    END IF;
    WITH inserted AS (
        INSERT INTO jobs AS j (queue, kind, tenant_id, priority, payload, run_at,
                               max_attempts, idempotency_key)
        VALUES (coalesce(enqueue.queue, 'default'), enqueue.kind, enqueue.tenant_id,
                v_priority, coalesce(enqueue.payload, '{}'),
                coalesce(enqueue.run_at, now()), coalesce(v_max, 3), enqueue.idempotency_key)
        ON CONFLICT (kind, tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL
        DO NOTHING
        RETURNING j.id
    ), event AS (
        INSERT INTO job_events (job_id, from_status, to_status, at, actor, run_id)
        SELECT i.id, NULL, 'queued', now(), v_actor, CAST(v_run_id AS bigint) FROM inserted i
    )
    SELECT i.id INTO v_id FROM inserted i;
    IF v_id IS NULL THEN
        SELECT j.id INTO v_id FROM jobs j
        WHERE j.idempotency_key = enqueue.idempotency_key
          AND j.kind = enqueue.kind
          AND j.tenant_id IS NOT DISTINCT FROM enqueue.tenant_id;
    END IF;
    RETURN v_id;
END
$$;

-- claim_lanes(): claim()'s query for any n (claim() calls it when n is not 1),
-- as it was: the lanes of the caller's queues (or of every queue with queued
-- jobs, found by a skip scan of jobs_queue_claim_idx) less the paused ones, each
-- lane up to n due rows in run_at order locked FOR UPDATE SKIP LOCKED, merged by
-- priority, run_at, id. Planned with the caller's n and queues and the actual
-- list of paused queues (force_custom_plan): planned without them, PostgreSQL
-- may read and sort every due job to hand out a few
-- (tests/integration/test_indexes.py). Not a door of its own: it runs with the
-- caller's rights, and only claim() (as the schema's owner) may call it.
CREATE FUNCTION claim_lanes(worker text, queues text[], n integer, paused text[])
RETURNS TABLE (
    id bigint, queue text, kind text, tenant_id text, priority smallint, payload jsonb,
    attempt integer, max_attempts integer, run_at timestamptz, created_at timestamptz,
    idempotency_key text, claim_token uuid
)
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET plan_cache_mode = force_custom_plan
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH RECURSIVE every_queue AS (
        (SELECT j.queue FROM jobs j WHERE j.status = 'queued'
         ORDER BY j.queue, j.priority, j.run_at, j.id LIMIT 1)
        UNION ALL
        SELECT (SELECT j.queue FROM jobs j WHERE j.status = 'queued' AND j.queue > e.queue
                ORDER BY j.queue, j.priority, j.run_at, j.id LIMIT 1)
        FROM every_queue e WHERE e.queue IS NOT NULL
    ), lanes AS (
        SELECT DISTINCT q.queue FROM unnest(claim_lanes.queues) q (queue)
        WHERE claim_lanes.queues IS NOT NULL
        UNION
        SELECT e.queue FROM every_queue e WHERE claim_lanes.queues IS NULL AND e.queue IS NOT NULL
    ), picked AS (
        SELECT c.id, gen_random_uuid() AS token
        FROM lanes l
        CROSS JOIN generate_series(0, 4) p (priority)
        CROSS JOIN LATERAL (
            SELECT j.id, j.priority, j.run_at FROM jobs j
            WHERE j.status = 'queued' AND j.queue = l.queue AND j.priority = p.priority
              AND j.run_at <= now()
            ORDER BY j.run_at, j.id
            LIMIT claim_lanes.n
            FOR UPDATE SKIP LOCKED
        ) c
        WHERE l.queue <> ALL (claim_lanes.paused)
        ORDER BY c.priority, c.run_at, c.id
        LIMIT claim_lanes.n
    ), claimed AS (
        UPDATE jobs j
        SET status = 'running', attempt = j.attempt + 1, locked_by = claim_lanes.worker,
            locked_at = now(), heartbeat_at = now(), updated_at = now(), started_at = now(), finished_at = NULL,
            claim_token_hash = sha256(uuid_send(p.token))
        FROM picked p
        WHERE j.id = p.id AND j.status = 'queued'
        RETURNING j.id, j.queue, j.kind, j.tenant_id, j.priority, j.payload, j.attempt,
                  j.max_attempts, j.run_at, j.created_at, j.idempotency_key, p.token
    ), event AS (
        INSERT INTO job_events (job_id, from_status, to_status, at, actor, reason)
        SELECT c.id, 'queued', 'running', now(), 'worker:' || claim_lanes.worker,
               jsonb_build_object('attempt', c.attempt)
        FROM claimed c
    )
    SELECT c.id, c.queue, c.kind, c.tenant_id, c.priority, c.payload, c.attempt,
           c.max_attempts, c.run_at, c.created_at, c.idempotency_key, c.token
    FROM claimed c ORDER BY c.priority, c.run_at, c.id;
END
$$;

REVOKE EXECUTE ON FUNCTION claim_lanes(text, text[], integer, text[]) FROM PUBLIC;

-- claim(): take up to n (at most 1000) due jobs, highest priority first, never
-- waiting on a row another worker holds, skipping paused queues (all of them
-- while paused_queues has the row '*', reconciler pause --all). Each job comes
-- with a fresh random claim_token: the worker passes it to heartbeat, complete
-- and fail; only its hash is stored.
--
-- Its cost depends on n and on the number of queues, never on the jobs of
-- other queues, of paused queues, or scheduled in the future: it walks
-- jobs_queue_claim_idx (queue, priority, run_at, id) in one lane per (queue,
-- priority) it may serve, each lane up to n due rows in run_at order, and
-- merges the lanes by priority, run_at, id. The queues are the caller's, or
-- (queues NULL) every queue that has queued jobs, found by a skip scan of the
-- same index (one probe per queue; ordered by its whole key so that no other
-- index of jobs, holding running or failed jobs too, serves it); paused queues
-- get no lane. A lane locks its rows FOR UPDATE SKIP LOCKED before the merge,
-- so a claim may hold up to n rows of each other lane until it commits (other
-- workers skip them and take the next); with one queue and one priority in
-- use, that is none.
--
-- n => 1, what a worker asks for, runs the query below: its LIMIT is a
-- constant, so its plan is made once per session and kept (a generic plan
-- walks each lane in index order and stops at its first row), and the lanes
-- come in as an array read just before. Any other n goes to claim_lanes(),
-- planned with the caller's values on every call.
--
-- Reading paused_queues takes its ACCESS SHARE lock until the claim commits;
-- `reconciler pause` takes ACCESS EXCLUSIVE before it adds its row, so a pause
-- waits for claims under way, and no claim commits after it that missed it.
CREATE FUNCTION claim(worker text, queues text[] DEFAULT NULL, n integer DEFAULT 1)
RETURNS TABLE (
    id bigint, queue text, kind text, tenant_id text, priority smallint, payload jsonb,
    attempt integer, max_attempts integer, run_at timestamptz, created_at timestamptz,
    idempotency_key text, claim_token uuid
)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
#variable_conflict use_column
DECLARE
    paused text[] := ARRAY(SELECT p.queue FROM paused_queues p);
    lanes text[];
BEGIN
    IF coalesce(claim.worker, '') = '' THEN
        RAISE EXCEPTION 'claim() needs a worker name'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'pass worker => ''host:pid'' or any name unique to the worker';
    END IF;
    IF claim.n NOT BETWEEN 0 AND 1000 THEN
        RAISE EXCEPTION 'claim() takes 0 to 1000 jobs at a time, not %', claim.n
            USING ERRCODE = 'check_violation',
                  HINT = 'claim more often rather than more at once';
    END IF;
    IF '*' = ANY (paused) THEN
        RETURN;  -- every queue is paused (reconciler pause --all)
    END IF;
    IF claim.n <> 1 THEN  -- n NULL is 1
        RETURN QUERY SELECT * FROM claim_lanes(claim.worker, claim.queues, claim.n, paused);
        RETURN;
    END IF;
    IF claim.queues IS NULL THEN
        lanes := ARRAY(
            WITH RECURSIVE every_queue AS (
                (SELECT j.queue FROM jobs j WHERE j.status = 'queued'
                 ORDER BY j.queue, j.priority, j.run_at, j.id LIMIT 1)
                UNION ALL
                SELECT (SELECT j.queue FROM jobs j WHERE j.status = 'queued' AND j.queue > e.queue
                        ORDER BY j.queue, j.priority, j.run_at, j.id LIMIT 1)
                FROM every_queue e WHERE e.queue IS NOT NULL
            )
            SELECT e.queue FROM every_queue e
            WHERE e.queue IS NOT NULL AND e.queue <> ALL (paused));
    ELSE
        lanes := ARRAY(SELECT DISTINCT q.queue FROM unnest(claim.queues) q (queue)
                       WHERE q.queue <> ALL (paused));
    END IF;
    RETURN QUERY
    WITH picked AS (
        SELECT c.id, gen_random_uuid() AS token
        FROM unnest(lanes) l (queue)
        CROSS JOIN generate_series(0, 4) p (priority)
        CROSS JOIN LATERAL (
            SELECT j.id, j.priority, j.run_at FROM jobs j
            WHERE j.status = 'queued' AND j.queue = l.queue AND j.priority = p.priority
              AND j.run_at <= now()
            ORDER BY j.run_at, j.id
            LIMIT 1
            FOR UPDATE SKIP LOCKED
        ) c
        ORDER BY c.priority, c.run_at, c.id
        LIMIT 1
    ), claimed AS (
        UPDATE jobs j
        SET status = 'running', attempt = j.attempt + 1, locked_by = claim.worker,
            locked_at = now(), heartbeat_at = now(), updated_at = now(), started_at = now(), finished_at = NULL,
            claim_token_hash = sha256(uuid_send(p.token))
        FROM picked p
        WHERE j.id = p.id AND j.status = 'queued'
        RETURNING j.id, j.queue, j.kind, j.tenant_id, j.priority, j.payload, j.attempt,
                  j.max_attempts, j.run_at, j.created_at, j.idempotency_key, p.token
    ), event AS (
        INSERT INTO job_events (job_id, from_status, to_status, at, actor, reason)
        SELECT c.id, 'queued', 'running', now(), 'worker:' || claim.worker,
               jsonb_build_object('attempt', c.attempt)
        FROM claimed c
    )
    SELECT c.id, c.queue, c.kind, c.tenant_id, c.priority, c.payload, c.attempt,
           c.max_attempts, c.run_at, c.created_at, c.idempotency_key, c.token
    FROM claimed c;
END
$$;

-- heartbeat(), complete() and fail() find the job by its primary key alone:
-- "status IS NOT DISTINCT FROM 'running'" (status is never NULL, so it means
-- "= 'running'") is a test no index can serve, so the planner cannot walk
-- jobs_running_since_idx or jobs_live_queue_idx over every running job instead.
-- The fence is the same: nothing changes, and false comes back, unless the job
-- is still running under the claim that handed out this token. An UPDATE
-- re-checks its WHERE against the newest committed row before it writes, so a
-- job marked stale (or reclaimed, with a new token) meanwhile is left alone.
-- The event names the worker of the row as the statement found it (h): a
-- token's hash is set only by the claim that made the token, with the worker's
-- name, so every version of the row that still carries it has that name.

-- heartbeat(): true while the job is still running under this claim.
CREATE FUNCTION heartbeat(job_id bigint, claim_token uuid) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
#variable_conflict use_column
BEGIN
    UPDATE jobs j SET heartbeat_at = now(), updated_at = now()
    WHERE j.id = heartbeat.job_id AND j.status IS NOT DISTINCT FROM 'running'
      AND j.claim_token_hash = sha256(uuid_send(heartbeat.claim_token));
    RETURN FOUND;
END
$$;

-- complete(): running -> succeeded, only for the claim that holds the job.
CREATE FUNCTION complete(job_id bigint, claim_token uuid) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
#variable_conflict use_column
BEGIN
    WITH done AS (
        UPDATE jobs j
        SET status = 'succeeded', finished_at = now(), updated_at = now(), locked_by = NULL, locked_at = NULL,
            claim_token_hash = NULL
        FROM jobs h
        WHERE j.id = complete.job_id AND h.id = complete.job_id
          AND j.status IS NOT DISTINCT FROM 'running'
          AND j.claim_token_hash = sha256(uuid_send(complete.claim_token))
        RETURNING j.id, h.locked_by, j.attempt
    )
    INSERT INTO job_events (job_id, from_status, to_status, at, actor, reason)
    SELECT d.id, 'running', 'succeeded', now(), 'worker:' || d.locked_by,
           jsonb_build_object('attempt', d.attempt)
    FROM done d;
    RETURN FOUND;
END
$$;

-- fail(): running -> failed with the error, only for the claim that holds the
-- job. The requeue or dead-letter task takes it from there. The error is kept
-- as a JSON object (a bare value becomes {"message": value}); one over 64 kB
-- is cut to {"message": its first 8192 characters, "truncated": true}.
CREATE FUNCTION fail(job_id bigint, claim_token uuid, error jsonb DEFAULT '{}')
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
#variable_conflict use_column
BEGIN
    WITH given AS (
        SELECT CASE
            WHEN fail.error IS NULL THEN jsonb '{}'
            WHEN jsonb_typeof(fail.error) = 'object' THEN fail.error
            ELSE jsonb_build_object('message', fail.error)
        END AS error
    ), kept AS (
        SELECT CASE
            WHEN octet_length(g.error::text) <= 65536 THEN g.error
            ELSE jsonb_build_object(
                'message', left(coalesce(g.error ->> 'message', g.error::text), 8192),
                'truncated', true)
        END AS error
        FROM given g
    ), failed AS (
        UPDATE jobs j
        SET status = 'failed', finished_at = now(), updated_at = now(), locked_by = NULL, locked_at = NULL,
            claim_token_hash = NULL, last_error = k.error
        FROM jobs h, kept k
        WHERE j.id = fail.job_id AND h.id = fail.job_id
          AND j.status IS NOT DISTINCT FROM 'running'
          AND j.claim_token_hash = sha256(uuid_send(fail.claim_token))
        RETURNING j.id, h.locked_by, j.attempt, k.error
    )
    INSERT INTO job_events (job_id, from_status, to_status, at, actor, reason)
    SELECT f.id, 'running', 'failed', now(), 'worker:' || f.locked_by,
           jsonb_build_object('attempt', f.attempt, 'error', f.error)
    FROM failed f;
    RETURN FOUND;
END
$$;

-- The worker API is the only door to the jobs: its functions run with their
-- owner's rights (SECURITY DEFINER above), so a worker role needs nothing but
-- EXECUTE on them (sql/roles.sql), and the fence and the event are the only
-- way in. What makes that safe: every value is a bound argument (no dynamic
-- SQL), and search_path is pinned to this schema with pg_temp last. Who may
-- call them is granted explicitly.
REVOKE EXECUTE ON FUNCTION enqueue(text, jsonb, text, integer, timestamptz, integer, text, text),
    claim(text, text[], integer), heartbeat(bigint, uuid), complete(bigint, uuid),
    fail(bigint, uuid, jsonb)
    FROM PUBLIC;
