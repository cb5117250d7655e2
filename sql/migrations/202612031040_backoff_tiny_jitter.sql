-- backoff(): a jitter under 1e-6 counts as none. 5e-324 (a policy's jitter
-- can be any double in [0, 1)) times the per-job factor underflows, which
-- PostgreSQL reports as an error; since retry_at (202612031000) backoff() runs
-- in the trigger on every fail() and mark-stale, so such a policy would make
-- them fail. Same signature: CREATE OR REPLACE keeps its grants.

CREATE OR REPLACE FUNCTION backoff(
    p_attempt integer, p_initial interval, p_max interval,
    p_multiplier double precision, p_jitter double precision, p_job_id bigint
) RETURNS interval
LANGUAGE sql IMMUTABLE SET search_path FROM CURRENT AS $$
    SELECT make_interval(secs => b.base_s * (1 + CASE WHEN p_jitter < 1e-6 THEN 0 ELSE p_jitter * (
        2 * ((abs(hashtext(p_job_id::text || ':' || p_attempt::text)::bigint) % 10000) / 10000.0) - 1
    ) END))
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
