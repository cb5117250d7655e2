-- Retry policies (table retry_policies): read and change them.

-- name: list
SELECT priority, kind, max_attempts,
       extract(epoch FROM initial_delay)::double precision AS initial_delay_s,
       extract(epoch FROM max_delay)::double precision AS max_delay_s,
       multiplier, jitter
FROM retry_policies
ORDER BY kind NULLS FIRST, priority

-- name: set_priority
-- Only the values given change; a priority's row always exists (seeded).
UPDATE retry_policies
SET max_attempts  = coalesce(:max_attempts, max_attempts),
    initial_delay = coalesce(make_interval(secs => CAST(:initial_delay_s AS double precision)),
                             initial_delay),
    max_delay     = coalesce(make_interval(secs => CAST(:max_delay_s AS double precision)), max_delay),
    multiplier    = coalesce(CAST(:multiplier AS double precision), multiplier),
    jitter        = coalesce(CAST(:jitter AS double precision), jitter)
WHERE priority = :priority AND kind IS NULL
RETURNING priority

-- name: set_kind
-- A kind's row starts from the default priority's values for anything not given.
INSERT INTO retry_policies AS rp (kind, max_attempts, initial_delay, max_delay, multiplier, jitter)
SELECT :kind,
       coalesce(:max_attempts, d.max_attempts),
       coalesce(make_interval(secs => CAST(:initial_delay_s AS double precision)), d.initial_delay),
       coalesce(make_interval(secs => CAST(:max_delay_s AS double precision)), d.max_delay),
       coalesce(CAST(:multiplier AS double precision), d.multiplier),
       coalesce(CAST(:jitter AS double precision), d.jitter)
FROM retry_policies d WHERE d.priority = 2 AND d.kind IS NULL
ON CONFLICT (kind) DO UPDATE
SET max_attempts  = coalesce(:max_attempts, rp.max_attempts),
    initial_delay = coalesce(make_interval(secs => CAST(:initial_delay_s AS double precision)),
                             rp.initial_delay),
    max_delay     = coalesce(make_interval(secs => CAST(:max_delay_s AS double precision)),
                             rp.max_delay),
    multiplier    = coalesce(CAST(:multiplier AS double precision), rp.multiplier),
    jitter        = coalesce(CAST(:jitter AS double precision), rp.jitter)
RETURNING kind

-- name: delete_kind
DELETE FROM retry_policies WHERE kind = :kind RETURNING kind
