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
    ('running',   'succeeded', 'complete(): the worker finished the job'),
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
    ('cancelled', 'queued',    'an operator requeued a cancelled job');

-- Retry policies: the one source of truth for max_attempts (used by
-- enqueue()) and for backoff (used by the requeue task). A row is either for
-- a priority or for a kind; a kind's row wins over its priority's.
-- Defaults come from the Village Storefront runbook (priorities CRITICAL..BULK).
CREATE TABLE retry_policies (
    priority      smallint UNIQUE CHECK (priority BETWEEN 0 AND 4),
    kind          text UNIQUE,
    max_attempts  integer  NOT NULL CHECK (max_attempts >= 1),
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

CREATE TABLE jobs (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue           text        NOT NULL DEFAULT 'default',
    kind            text        NOT NULL,
    tenant_id       text,
    priority        smallint    NOT NULL DEFAULT 2 CHECK (priority BETWEEN 0 AND 4),
    payload         jsonb       NOT NULL DEFAULT '{}',
    status          text        NOT NULL DEFAULT 'queued' CHECK (status IN
                        ('queued', 'running', 'succeeded', 'failed', 'stale', 'dead', 'cancelled')),
    attempt         integer     NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts    integer     NOT NULL CHECK (max_attempts >= 1),
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
    -- A job that is running has an owner; one that is not has none.
    CHECK ((status = 'running') = (locked_by IS NOT NULL))
);

-- claim(): the next job by priority, then run_at, among queued ones.
CREATE INDEX jobs_claim_idx ON jobs (priority, run_at, id) WHERE status = 'queued';
-- mark-stale: running jobs by their last sign of life.
CREATE INDEX jobs_running_idx ON jobs ((coalesce(heartbeat_at, locked_at, updated_at)))
    WHERE status = 'running';
-- purge: terminal jobs by finish time.
CREATE INDEX jobs_status_finished_idx ON jobs (status, finished_at);
-- requeue and dead-letter: failed/stale jobs in finish order, one index per
-- side of attempt < max_attempts. A batch reads its rows in order and stops at
-- its LIMIT; without them every batch reads the whole failed/stale backlog and
-- sorts it (requeue computing each row's backoff), so batches grow with it.
CREATE INDEX jobs_requeue_idx ON jobs (finished_at, id)
    WHERE status IN ('failed', 'stale') AND attempt < max_attempts;
CREATE INDEX jobs_dead_letter_idx ON jobs (finished_at, id)
    WHERE status IN ('failed', 'stale') AND attempt >= max_attempts;
CREATE UNIQUE INDEX jobs_idempotency_key_idx ON jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

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
    actor       text        NOT NULL
);
CREATE INDEX runs_task_started_idx ON runs (task, started_at DESC);

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
    job_count   integer     NOT NULL
);

CREATE TABLE ops_exported_jobs (
    export_id      bigint      NOT NULL REFERENCES ops_exports (id) ON DELETE CASCADE,
    job_id         bigint      NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    job_updated_at timestamptz NOT NULL,
    PRIMARY KEY (job_id, export_id)
);

-- Guard: every status change must be a listed transition; updated_at follows.
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
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER jobs_before_update BEFORE UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobs_before_update();

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
LANGUAGE sql IMMUTABLE SET search_path FROM CURRENT AS $$
    SELECT make_interval(secs => b.base_s * (1 + p_jitter * (
        2 * ((abs(hashtext(p_job_id::text || ':' || p_attempt::text)::bigint) % 10000) / 10000.0) - 1
    )))
    FROM (
        SELECT CASE
            WHEN s.initial_s <= 0 THEN 0
            WHEN s.steps = 0 OR p_multiplier <= 1 THEN least(s.initial_s, s.max_s)
            WHEN s.steps * ln(p_multiplier) >= ln(s.max_s / s.initial_s) THEN s.max_s
            ELSE s.initial_s * power(p_multiplier, s.steps)
        END AS base_s
        FROM (
            SELECT extract(epoch FROM p_initial)::double precision AS initial_s,
                   extract(epoch FROM p_max)::double precision AS max_s,
                   greatest(p_attempt, 1) - 1 AS steps
        ) s
    ) b
$$;

-- enqueue(): add a job; a repeated idempotency key returns the existing id.
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
    v_max integer := enqueue.max_attempts;
BEGIN
    IF enqueue.priority IS NOT NULL AND enqueue.priority NOT BETWEEN 0 AND 4 THEN
        RAISE EXCEPTION 'priority % is out of range', enqueue.priority
            USING ERRCODE = 'check_violation',
                  HINT = 'use 0 (critical), 1 (high), 2 (default), 3 (low) or 4 (bulk)';
    END IF;
    IF v_max IS NULL THEN
        v_max := (policy_for(enqueue.kind, enqueue.priority::smallint)).max_attempts;
    END IF;
    WITH inserted AS (
        INSERT INTO jobs AS j (queue, kind, tenant_id, priority, payload, run_at,
                               max_attempts, idempotency_key)
        VALUES (coalesce(enqueue.queue, 'default'), enqueue.kind, enqueue.tenant_id,
                coalesce(enqueue.priority, 2), coalesce(enqueue.payload, '{}'),
                coalesce(enqueue.run_at, now()), coalesce(v_max, 3), enqueue.idempotency_key)
        ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING j.id
    ), event AS (
        INSERT INTO job_events (job_id, from_status, to_status, at, actor)
        SELECT i.id, NULL, 'queued', now(), 'sql:' || session_user FROM inserted i
    )
    SELECT i.id INTO v_id FROM inserted i;
    IF v_id IS NULL THEN
        SELECT j.id INTO v_id FROM jobs j WHERE j.idempotency_key = enqueue.idempotency_key;
    END IF;
    RETURN v_id;
END
$$;

-- claim(): take up to n due jobs, highest priority first, never waiting on a
-- row another worker holds, skipping paused queues (all of them while
-- paused_queues has the row '*', reconciler pause --all).
--
-- plpgsql with plan_cache_mode = force_custom_plan, and the paused queues read
-- first into a constant: the query is planned with the caller's n and queues
-- and the actual list of paused queues. Planned without them (a SQL
-- function's body, a generic plan, or a NOT EXISTS against a small table the
-- planner has no statistics for), PostgreSQL reads and sorts every due job to
-- hand out one; with them, it walks jobs_claim_idx in order and stops after n
-- rows, whatever the backlog (tests/integration/test_indexes.py).
CREATE FUNCTION claim(worker text, queues text[] DEFAULT NULL, n integer DEFAULT 1)
RETURNS SETOF jobs
LANGUAGE plpgsql SECURITY DEFINER
SET search_path FROM CURRENT
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    paused text[] := ARRAY(SELECT p.queue FROM paused_queues p);
BEGIN
    IF coalesce(claim.worker, '') = '' THEN
        RAISE EXCEPTION 'claim() needs a worker name'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'pass worker => ''host:pid'' or any name unique to the worker';
    END IF;
    IF '*' = ANY (paused) THEN
        RETURN;  -- every queue is paused (reconciler pause --all)
    END IF;
    RETURN QUERY
    WITH picked AS (
        SELECT j.id FROM jobs j
        WHERE j.status = 'queued'
          AND j.run_at <= now()
          AND (claim.queues IS NULL OR j.queue = ANY (claim.queues))
          AND j.queue <> ALL (paused)
        ORDER BY j.priority, j.run_at, j.id
        LIMIT greatest(coalesce(claim.n, 1), 0)
        FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE jobs j
        SET status = 'running', attempt = j.attempt + 1, locked_by = claim.worker,
            locked_at = now(), heartbeat_at = now(), started_at = now(), finished_at = NULL
        FROM picked
        WHERE j.id = picked.id AND j.status = 'queued'
        RETURNING j.*
    ), event AS (
        INSERT INTO job_events (job_id, from_status, to_status, at, actor, reason)
        SELECT c.id, 'queued', 'running', now(), 'worker:' || claim.worker,
               jsonb_build_object('attempt', c.attempt)
        FROM claimed c
    )
    SELECT * FROM claimed c ORDER BY c.priority, c.run_at, c.id;
END
$$;

-- heartbeat(): true while the job is still this worker's, this attempt.
CREATE FUNCTION heartbeat(job_id bigint, worker text, attempt integer) RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    WITH beat AS (
        UPDATE jobs j SET heartbeat_at = now()
        WHERE j.id = heartbeat.job_id AND j.status = 'running'
          AND j.locked_by = heartbeat.worker AND j.attempt = heartbeat.attempt
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM beat)
$$;

-- complete(): running -> succeeded, only for the worker and attempt that hold it.
CREATE FUNCTION complete(job_id bigint, worker text, attempt integer) RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    WITH done AS (
        UPDATE jobs j
        SET status = 'succeeded', finished_at = now(), locked_by = NULL, locked_at = NULL
        WHERE j.id = complete.job_id AND j.status = 'running'
          AND j.locked_by = complete.worker AND j.attempt = complete.attempt
        RETURNING j.id, j.attempt
    ), event AS (
        INSERT INTO job_events (job_id, from_status, to_status, at, actor, reason)
        SELECT d.id, 'running', 'succeeded', now(), 'worker:' || complete.worker,
               jsonb_build_object('attempt', d.attempt)
        FROM done d
    )
    SELECT EXISTS (SELECT 1 FROM done)
$$;

-- fail(): running -> failed with the error, only for the holder. The requeue
-- or dead-letter task takes it from there.
CREATE FUNCTION fail(job_id bigint, worker text, attempt integer, error jsonb DEFAULT '{}')
RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    WITH failed AS (
        UPDATE jobs j
        SET status = 'failed', finished_at = now(), locked_by = NULL, locked_at = NULL,
            last_error = coalesce(fail.error, '{}')
        WHERE j.id = fail.job_id AND j.status = 'running'
          AND j.locked_by = fail.worker AND j.attempt = fail.attempt
        RETURNING j.id, j.attempt
    ), event AS (
        INSERT INTO job_events (job_id, from_status, to_status, at, actor, reason)
        SELECT f.id, 'running', 'failed', now(), 'worker:' || fail.worker,
               jsonb_build_object('attempt', f.attempt, 'error', coalesce(fail.error, '{}'))
        FROM failed f
    )
    SELECT EXISTS (SELECT 1 FROM failed)
$$;

-- The worker API is the only door to the jobs: its functions run with their
-- owner's rights (SECURITY DEFINER above), so a worker role needs nothing but
-- EXECUTE on them (sql/roles.sql), and the fence and the event are the only
-- way in. What makes that safe: every value is a bound argument (no dynamic
-- SQL), and search_path is pinned to this schema with pg_temp last. Who may
-- call them is granted explicitly.
REVOKE EXECUTE ON FUNCTION enqueue(text, jsonb, text, integer, timestamptz, integer, text, text),
    claim(text, text[], integer), heartbeat(bigint, text, integer),
    complete(bigint, text, integer), fail(bigint, text, integer, jsonb)
    FROM PUBLIC;
