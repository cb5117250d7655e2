-- The reconciler's record of its own runs (table runs): one row per task run,
-- opened when the run starts and closed with its outcome.

-- name: start
INSERT INTO runs (task, started_at, host, pid, actor, profile)
VALUES (:task, statement_timestamp(), :host, :pid, :actor, :profile)
RETURNING id

-- name: finish
UPDATE runs
SET finished_at = statement_timestamp(),
    status = :status,
    transitions = CAST(:transitions AS jsonb),
    batches = :batches,
    details = CAST(:details AS jsonb),
    error = :error
WHERE id = :id
  AND status = 'running'  -- a run closed as interrupted by the lease's next holder stays so
