-- Room on each page for heartbeats' HOT updates (sql/schema.sql). Takes SHARE
-- UPDATE EXCLUSIVE (no worker waits) and applies to pages written from now on.
ALTER TABLE jobs SET (fillfactor = 90);
