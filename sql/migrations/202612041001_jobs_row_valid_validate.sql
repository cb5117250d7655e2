-- Validate jobs_row_valid (added NOT VALID by 202612041000): a scan of jobs
-- under SHARE UPDATE EXCLUSIVE, which lets workers and the tasks read and
-- write meanwhile. Every row it reads was already checked by the seven
-- constraints it replaced, so it finds nothing.
ALTER TABLE jobs VALIDATE CONSTRAINT jobs_row_valid;
