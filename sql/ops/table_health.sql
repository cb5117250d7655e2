-- `check`'s table health: bloat and autovacuum lag of the queue tables, from the
-- catalog and the cumulative statistics only (no table is read, so it costs the
-- same at 10 M rows as at 10). Binds: :schema, :tables (names in that schema),
-- :now. A partitioned table is judged by its partitions (each is vacuumed on its
-- own), so every query walks pg_inherits down to the leaves.

-- name: vacuum
-- Per leaf table: its dead rows, the autovacuum trigger (autovacuum_vacuum_threshold
-- + autovacuum_vacuum_scale_factor * reltuples, the table's own reloptions first),
-- when it was last vacuumed (by hand or by autovacuum), whether autovacuum is
-- switched off for it, and whether a VACUUM is running on it right now.
WITH RECURSIVE tree AS (
    SELECT c.oid, c.relname AS queue_table
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = :schema AND c.relname = ANY (CAST(:tables AS text[]))
    UNION ALL
    SELECT i.inhrelid, t.queue_table
    FROM tree t
    JOIN pg_inherits i ON i.inhparent = t.oid
)
SELECT t.queue_table, c.relname AS table_name,
       s.n_live_tup AS live, s.n_dead_tup AS dead,
       greatest(s.last_vacuum, s.last_autovacuum) AS last_vacuum,
       floor(coalesce(o.threshold, current_setting('autovacuum_vacuum_threshold')::float8)
             + coalesce(o.scale_factor, current_setting('autovacuum_vacuum_scale_factor')::float8)
               * greatest(c.reltuples, 0))::bigint AS vacuum_trigger,
       NOT coalesce(o.enabled, current_setting('autovacuum')::bool) AS autovacuum_off,
       EXISTS (SELECT 1 FROM pg_stat_progress_vacuum p WHERE p.relid = c.oid) AS vacuuming
FROM tree t
JOIN pg_class c ON c.oid = t.oid AND c.relkind IN ('r', 'm')
JOIN pg_stat_all_tables s ON s.relid = c.oid
CROSS JOIN LATERAL (
    SELECT max(option_value) FILTER (WHERE option_name = 'autovacuum_vacuum_threshold')::float8
               AS threshold,
           max(option_value) FILTER (WHERE option_name = 'autovacuum_vacuum_scale_factor')::float8
               AS scale_factor,
           max(option_value) FILTER (WHERE option_name = 'autovacuum_enabled')::bool AS enabled
    FROM pg_options_to_table(c.reloptions)
) o
ORDER BY t.queue_table, c.relname

-- name: table_bloat
-- Per leaf table: its size against the size its live rows would take freshly
-- written (the estimate the reindex task makes for indexes, for the heap):
--   row bytes   = 24 (tuple header) + the columns' average widths (pg_stats; the
--                 type's length, or 32, for a column never analysed), rounded up
--                 to 8, + 4 (line pointer)
--   fresh pages = ceil(reltuples * row bytes / (8192 - 24) / fillfactor)
--   ratio       = relpages / fresh pages
-- reltuples and relpages are as of the last VACUUM or ANALYZE; a table never
-- analysed (reltuples < 0) is left out. TOAST is not counted.
WITH RECURSIVE tree AS (
    SELECT c.oid, c.relname AS queue_table
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = :schema AND c.relname = ANY (CAST(:tables AS text[]))
    UNION ALL
    SELECT i.inhrelid, t.queue_table
    FROM tree t
    JOIN pg_inherits i ON i.inhparent = t.oid
)
SELECT t.queue_table, c.relname AS table_name,
       c.relpages AS pages, c.reltuples::bigint AS live,
       pg_relation_size(c.oid) AS bytes, f.pages AS fresh_pages,
       round((c.relpages / f.pages)::numeric, 2)::float8 AS ratio
FROM tree t
JOIN pg_class c ON c.oid = t.oid AND c.relkind IN ('r', 'm')
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL (
    SELECT 24 + sum(coalesce(s.avg_width, CASE WHEN a.attlen > 0 THEN a.attlen ELSE 32 END))
               AS width
    FROM pg_attribute a
    LEFT JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = c.relname
                        AND s.attname = a.attname
    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
) w
CROSS JOIN LATERAL (
    SELECT coalesce(max(option_value) FILTER (WHERE option_name = 'fillfactor'), '100')::float8
               / 100 AS fill
    FROM pg_options_to_table(c.reloptions)
) o
CROSS JOIN LATERAL (
    SELECT greatest(1, ceil(c.reltuples * (ceil(w.width / 8.0) * 8 + 4) / (8192 - 24) / o.fill))
        AS pages
) f
WHERE c.reltuples >= 0
ORDER BY c.relpages / f.pages DESC, c.relname
