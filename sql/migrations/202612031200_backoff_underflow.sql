-- backoff(): a retry policy's jitter so small (5e-324, say) that its product with the
-- spread underflows made every requeue batch fail with "value out of range:
-- underflow". A jitter under 1e-12 now counts as none: it could not move a backoff
-- by a microsecond anyway. Same signature, so every caller keeps working.

CREATE OR REPLACE FUNCTION backoff(
    p_attempt integer, p_initial interval, p_max interval,
    p_multiplier double precision, p_jitter double precision, p_job_id bigint
) RETURNS interval
LANGUAGE sql IMMUTABLE SET search_path FROM CURRENT AS $$
    SELECT make_interval(secs => b.base_s * (1 + j.jitter * (
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
    -- A jitter under 1e-12 cannot move a backoff (at most 1000 days) by a microsecond,
    -- and one as small as 5e-324 would underflow the product (an error in PostgreSQL).
    CROSS JOIN (SELECT CASE WHEN p_jitter < 1e-12 THEN 0 ELSE p_jitter END AS jitter) j
$$;
