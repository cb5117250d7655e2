-- reindex: drop the invalid leftovers of interrupted concurrent builds, and
-- rebuild the bloated indexes of the queue tables. The DROP INDEX and REINDEX
-- statements are built in reconciler/tasks/reindex.py (an index name is an
-- identifier, quoted by the driver; neither takes bind parameters).

-- name: building
-- CREATE INDEX / REINDEX running on a table of this schema right now (a
-- migration, another reindex): while one runs, its index is invalid on
-- purpose, and this run does nothing.
SELECT p.pid, p.command, c.relname AS table_name
FROM pg_stat_progress_create_index p
JOIN pg_class c ON c.oid = p.relid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s

-- name: invalid
-- Indexes left INVALID by a CREATE INDEX CONCURRENTLY or REINDEX CONCURRENTLY
-- that failed or was cancelled (REINDEX's are named <index>_ccnew or _ccold):
-- every write still maintains them, no query can use them.
SELECT c.relname AS index_name, t.relname AS table_name,
       pg_relation_size(c.oid) AS bytes
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND NOT i.indisvalid
ORDER BY c.relname

-- name: bloat
-- The estimated bloat of each valid B-tree index of the given tables: its
-- size against the size the same entries would take freshly built. The
-- estimate (pgstattuple is not installed by default):
--   entry bytes = 8 (index tuple header) + the key columns' average widths
--                 (pg_stats; 8 for an expression or a column never analysed),
--                 rounded up to 8, + 4 (line pointer)
--   fresh pages = 1 (metapage) + ceil(reltuples * entry bytes
--                                     / (8192 - 24 (page header) - 16 (special)) / 0.9 (fillfactor))
--   ratio       = relpages / fresh pages
-- reltuples and relpages are as of the index's last VACUUM or ANALYZE, so a
-- table that autovacuum keeps up with has a current estimate; a never
-- analysed index (reltuples < 0) is left alone.
SELECT c.relname AS index_name, t.relname AS table_name,
       c.relpages AS pages, c.reltuples::bigint AS entries,
       pg_relation_size(c.oid) AS bytes,
       f.pages AS fresh_pages,
       round((c.relpages / f.pages)::numeric, 2)::float8 AS ratio
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_am am ON am.oid = c.relam AND am.amname = 'btree'
CROSS JOIN LATERAL (
    SELECT 8 + sum(coalesce(s.avg_width, 8)) AS width
    FROM unnest(i.indkey[0:i.indnkeyatts - 1]) k (attnum)
    LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum AND k.attnum > 0
    LEFT JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = t.relname
                        AND s.attname = a.attname
) w
CROSS JOIN LATERAL (
    SELECT 1 + ceil(c.reltuples * (ceil(w.width / 8.0) * 8 + 4) / (8192 - 24 - 16) / 0.9)
        AS pages
) f
WHERE n.nspname = %(schema)s
  AND t.relname = ANY (%(tables)s)
  AND i.indisvalid
  AND c.reltuples >= 0
ORDER BY c.relpages / f.pages DESC, c.relname

-- name: size
SELECT pg_relation_size(to_regclass(%(index)s)) AS bytes
