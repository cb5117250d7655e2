-- 0200_backoff_in_seconds: backoff() computed in seconds, clamped before it can overflow.
--
-- Two faults of backoff() as first written, both found by the tests:
--
-- 1. It multiplied intervals: p_initial * multiplier^(attempt-1). With many
--    attempts (max_attempts 100, multiplier 2) that overflows ("interval out
--    of range", or "value out of range: overflow" from power()), and the
--    error aborts the whole requeue batch: one such job stopped every retry
--    of every job. (0001, unreleased, was corrected in place for this one.)
-- 2. An interval written in days ('1 day') keeps its day field, and
--    timestamptz + '1 day' means "the same wall-clock time tomorrow" in the
--    session's TimeZone: across a DST change that is 23 or 25 hours, so the
--    decision moved by an hour depending on the TimeZone of the connection.
--
-- Now everything is absolute seconds (extract(epoch ...)): the exponent is
-- compared in logarithms before anything is raised, the result is
-- make_interval(secs => ...), which has no day or month field, and the
-- jitter hash is taken as bigint (abs() of the smallest integer overflows).
-- Same signature, same values for every input that did not fail before.

CREATE OR REPLACE FUNCTION backoff(
    p_attempt integer, p_initial interval, p_max interval,
    p_multiplier double precision, p_jitter double precision, p_job_id bigint
) RETURNS interval
LANGUAGE sql IMMUTABLE SET search_path FROM CURRENT AS $$
    SELECT make_interval(secs => b.base_s * (1 + p_jitter * (
        2 * ((abs(hashtext(p_job_id::text || ':' || p_attempt::text)::bigint) % 10000) / 10000.0) - 1
    )))
    FROM (
        SELECT CASE
            WHEN s.initial_s <= 0 THEN 0
            WHEN s.steps = 0 OR p_multiplier <= 1 THEN least(s.initial_s, s.max_s)
            WHEN s.steps * ln(p_multiplier) >= ln(s.max_s / s.initial_s) THEN s.max_s
            ELSE s.initial_s * power(p_multiplier, s.steps)
        END AS base_s
        FROM (
            SELECT extract(epoch FROM p_initial)::double precision AS initial_s,
                   extract(epoch FROM p_max)::double precision AS max_s,
                   greatest(p_attempt, 1) - 1 AS steps
        ) s
    ) b
$$;
