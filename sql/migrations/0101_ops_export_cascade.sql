-- 0101_ops_export_cascade: an export record of a job goes with the job.
--
-- ops_exported_jobs (0100) says which jobs an export backed up. Without a
-- foreign key, a job deleted by the purge task (retention) left its rows
-- behind for ever. With ON DELETE CASCADE they go with the job, whoever
-- deletes it. Rows whose job is already gone are removed first.

DELETE FROM ops_exported_jobs x
WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = x.job_id);

ALTER TABLE ops_exported_jobs
    ADD CONSTRAINT ops_exported_jobs_job_id_fkey
    FOREIGN KEY (job_id) REFERENCES jobs (id) ON DELETE CASCADE;
