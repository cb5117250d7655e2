-- 0002_task_leases: one lease per task, so that replicas never run a task at once.
--
-- A run takes its task's lease before it starts (an INSERT ... ON CONFLICT DO
-- UPDATE that succeeds only when the lease is free or expired), renews it in
-- every batch transaction, and releases it when it records its outcome. All
-- times are the database's clock. A row lock, not a session, carries the
-- lease, so it works through PgBouncer in transaction pooling mode, where
-- session advisory locks would be held by whichever client shares the
-- server connection. See sql/leases.sql and reconciler/leases.py.

CREATE TABLE task_leases (
    task        text PRIMARY KEY,
    holder      text        NOT NULL,  -- host:pid:token of the run that holds or last held it
    run_id      bigint,                -- that run's row in runs, once recorded
    acquired_at timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL   -- free from this moment unless renewed
);
