-- reconciler: no-transaction
-- Backfill: the failed and stale jobs with attempts left that entered that
-- state before 202612031000_retry_at get their retry time, 1,000 at a time,
-- each batch its own transaction (this runs in autocommit), walking
-- jobs_requeue_idx in finish order so no batch reads the whole table. The
-- value is retry_time() from the row as it was (the same rule as the trigger
-- jobs_retry_at and the old requeue: from finished_at, else updated_at), and
-- the trigger keeps a value set with nothing else changed. Rows that failed
-- after the previous migration already have theirs and are skipped.
DO $$
DECLARE
    v_from_at timestamptz := '-infinity';
    v_from_id bigint := 0;
    v_to_at timestamptz;
    v_to_id bigint;
BEGIN
    LOOP
        SELECT b.finished_at, b.id INTO v_to_at, v_to_id
        FROM (
            SELECT j.finished_at, j.id FROM jobs j
            WHERE j.status IN ('failed', 'stale') AND j.attempt - j.attempt_base < j.max_attempts
              AND (j.finished_at, j.id) > (v_from_at, v_from_id)
            ORDER BY j.finished_at, j.id
            LIMIT 1000
        ) b
        ORDER BY b.finished_at DESC, b.id DESC
        LIMIT 1;
        EXIT WHEN v_to_id IS NULL;
        UPDATE jobs j SET retry_at = retry_time(
            j.kind, j.priority, j.attempt - j.attempt_base, j.id, coalesce(j.finished_at, j.updated_at))
        WHERE j.status IN ('failed', 'stale') AND j.attempt - j.attempt_base < j.max_attempts
          AND (j.finished_at, j.id) > (v_from_at, v_from_id)
          AND (j.finished_at, j.id) <= (v_to_at, v_to_id)
          AND j.retry_at IS NULL;
        COMMIT;
        v_from_at := v_to_at;
        v_from_id := v_to_id;
        v_to_id := NULL;
    END LOOP;
    -- Rows without a finish time (written by hand) are not in finish order.
    UPDATE jobs j SET retry_at = retry_time(
            j.kind, j.priority, j.attempt - j.attempt_base, j.id, coalesce(j.finished_at, j.updated_at))
    WHERE j.status IN ('failed', 'stale') AND j.attempt - j.attempt_base < j.max_attempts
      AND j.finished_at IS NULL AND j.retry_at IS NULL;
END
$$;
