-- Task leases (table task_leases): at most one run of a task at a time,
-- across every process that shares the database. Binds: :task, :holder,
-- :ttl_s (seconds). Times are clock_timestamp(): a lease is about how much
-- real time has passed, even inside a longer statement or transaction.

-- name: acquire
-- Succeeds (returns a row) only when no lease exists, the existing one has
-- expired, or it is the caller's own (a daemon, which runs a task once at a
-- time by itself, taking back a lease it could not release because the
-- database went away mid-run). Two processes racing for it serialise on the
-- row: the second re-checks the WHERE clause against the first one's
-- committed lease, and gets nothing back.
INSERT INTO task_leases AS l (task, holder, run_id, acquired_at, expires_at)
VALUES (:task, :holder, NULL, clock_timestamp(),
        clock_timestamp() + make_interval(secs => CAST(:ttl_s AS double precision)))
ON CONFLICT (task) DO UPDATE
SET holder = EXCLUDED.holder,
    run_id = NULL,
    acquired_at = EXCLUDED.acquired_at,
    expires_at = EXCLUDED.expires_at
WHERE l.expires_at <= clock_timestamp() OR l.holder = EXCLUDED.holder
RETURNING expires_at

-- name: current
SELECT holder, run_id, expires_at FROM task_leases WHERE task = :task

-- name: close_abandoned
-- Runs of this task still marked running while we hold its lease were cut
-- off (their process died or lost the lease): close them as interrupted, at
-- the moment this was noticed, so the record never shows two runs at once.
UPDATE runs
SET status = 'interrupted',
    finished_at = clock_timestamp(),
    error = 'abandoned: its lease expired before the run was recorded; closed by ' || :holder
WHERE task = :task AND status = 'running'
RETURNING id

-- name: attach_run
UPDATE task_leases SET run_id = :run_id WHERE task = :task AND holder = :holder

-- name: renew
-- In every batch transaction, after the batch's statement: nothing comes back
-- when the lease has expired or passed to another holder, and the caller then
-- rolls the batch back (fencing). The row lock taken here also makes a
-- concurrent acquire wait until this batch has committed.
UPDATE task_leases
SET expires_at = clock_timestamp() + make_interval(secs => CAST(:ttl_s AS double precision))
WHERE task = :task AND holder = :holder AND expires_at > clock_timestamp()
RETURNING expires_at

-- name: release
-- The row stays (status shows who ran the task last); it is free from now on.
UPDATE task_leases
SET expires_at = clock_timestamp(), run_id = NULL
WHERE task = :task AND holder = :holder
