-- vacuum-analyze: VACUUM (ANALYZE) of the reconciler's tables, with dead row
-- counts before and after. The VACUUM statement itself is built in
-- reconciler/tasks/vacuum_analyze.py, because the table name is an identifier
-- (quoted by the driver) and VACUUM takes no bind parameters.

-- name: table_stats
SELECT c.relname AS table_name,
       coalesce(s.n_live_tup, 0) AS live_rows,
       coalesce(s.n_dead_tup, 0) AS dead_rows,
       pg_total_relation_size(c.oid) AS total_bytes
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid
WHERE n.nspname = %(schema)s
  AND c.relname = ANY (%(tables)s)
ORDER BY c.relname

-- name: xmin_holders
-- Backends whose snapshot keeps VACUUM from removing dead rows: the oldest
-- transaction first (the one to look at, or to end). Not its query text: that
-- could carry a secret (ALTER ROLE ... PASSWORD) into logs.
SELECT a.pid, a.usename AS user_name, a.application_name, a.state,
       a.backend_xmin::text AS xmin,
       round(extract(epoch FROM statement_timestamp() - a.xact_start)::numeric, 1)::float8 AS xact_age_s
FROM pg_stat_activity a
WHERE a.backend_xmin IS NOT NULL
  AND a.pid <> pg_backend_pid()
  -- Snapshots in other databases do not hold back this database's tables
  -- (a walsender, with no database, does).
  AND (a.datname = current_database() OR a.datname IS NULL)
ORDER BY age(a.backend_xmin) DESC
LIMIT 3
