-- The backup rule: a dead job counts as backed up while a durable export
-- (a file, fsynced and in place before the export was recorded; never stdout)
-- holds it as it still is (the updated_at it had when exported). One rule for
-- `dead-letter purge`, `purge --status dead` and their previews;
-- reconciler/backups.py splices it in place of /*backed_up*/ in a query over
-- jobs aliased j, so the check runs in the deleting statement itself, under
-- the same row locks as the delete.

-- name: backed_up
EXISTS (SELECT 1 FROM ops_exported_jobs x
        JOIN ops_exports o ON o.id = x.export_id
        WHERE x.job_id = j.id AND x.job_updated_at = j.updated_at AND o.durable)
