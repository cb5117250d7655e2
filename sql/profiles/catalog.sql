-- What reconciler/profiles/live.py asks the catalog about a profile's tables.

-- name: columns
-- Every column of :schema.:table the session can see: its information_schema type
-- (USER-DEFINED for an enum) and its type's name for a cast: format_type() for a built-in
-- type, schema-qualified for any other (an enum is found whatever the search_path).
SELECT a.attname AS name,
       c.data_type,
       CASE WHEN tn.nspname = 'pg_catalog' THEN format_type(a.atttypid, a.atttypmod)
            ELSE quote_ident(tn.nspname) || '.' || quote_ident(ty.typname) END AS type_name
FROM pg_attribute a
JOIN pg_class t ON t.oid = a.attrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
JOIN pg_type ty ON ty.oid = a.atttypid
JOIN pg_namespace tn ON tn.oid = ty.typnamespace
JOIN information_schema.columns c
  ON c.table_schema = n.nspname AND c.table_name = t.relname AND c.column_name = a.attname
WHERE n.nspname = :schema AND t.relname = :table
  AND a.attnum > 0 AND NOT a.attisdropped

-- name: enum_labels
SELECT e.enumlabel
FROM pg_attribute a
JOIN pg_class t ON t.oid = a.attrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
JOIN pg_enum e ON e.enumtypid = a.atttypid
WHERE n.nspname = :schema AND t.relname = :table AND a.attname = :column
ORDER BY e.enumsortorder

-- name: function_exists
SELECT EXISTS (
    SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname = :schema AND p.proname = :name
)

-- name: partial_indexes
-- The partial indexes on :schema's :tables: a scan of one without an index condition
-- still reads only the rows its predicate names.
SELECT i.relname
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = :schema AND t.relname = ANY (CAST(:tables AS text[])) AND x.indpred IS NOT NULL

-- name: unique_column
-- Whether a unique index (or primary key) without a predicate covers :column alone:
-- each statement changes the rows whose id it chose, so an id must name one row.
SELECT EXISTS (
    SELECT 1
    FROM pg_index x
    JOIN pg_class t ON t.oid = x.indrelid
    JOIN pg_namespace n ON n.oid = t.relnamespace
    JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = x.indkey[0]
    WHERE n.nspname = :schema AND t.relname = :table AND a.attname = :column
      AND x.indisunique AND x.indnkeyatts = 1 AND x.indpred IS NULL
)
