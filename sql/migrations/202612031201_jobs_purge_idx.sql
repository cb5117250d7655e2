-- reconciler: no-transaction
-- purge: terminal jobs in (finished_at, id) order, its ORDER BY and keyset, so a
-- batch reads its rows in index order however many jobs share one finished_at (a
-- bulk cancel stamps them all with one clock). With (status, finished_at) alone,
-- every batch sorted the whole tie group: 150 ms for 285,000 jobs of one timestamp.
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_purge_idx ON jobs (status, finished_at, id);
