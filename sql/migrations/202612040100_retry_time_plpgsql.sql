-- backoff() and retry_time() are plpgsql, with the same results (issue 11; README,
-- Scaling). As SQL functions with a pinned search_path they could not be inlined,
-- and every call of retry_time() started its query afresh, which parsed and
-- planned policy_for() and backoff() again inside it: about 0.3 ms per job. The
-- jobs_retry_at trigger calls it for every job that fails or goes stale, so
-- mark-stale moved about 2,000 rows/s whatever the batch (a plain UPDATE to stale
-- too), fail() paid it on the workers' path, and a profile's mark-stale per row.
-- In plpgsql the expressions are evaluated directly and policy_for()'s plan is
-- kept: 0.28 ms -> 0.05 ms a call, measured with 1,000 calls in psql.
--
-- Same signatures, volatility and formula, written as the same expressions in
-- the same order (tests/integration/test_retry_at.py compares both versions over
-- a grid of policies, attempts and edge values: NULLs, attempts of 2^31 - 1, a
-- maximum under the initial delay, a jitter of 5e-324).

CREATE OR REPLACE FUNCTION backoff(
    p_attempt integer, p_initial interval, p_max interval,
    p_multiplier double precision, p_jitter double precision, p_job_id bigint
) RETURNS interval
LANGUAGE plpgsql IMMUTABLE SET search_path FROM CURRENT AS $$
DECLARE
    initial_s double precision := extract(epoch FROM p_initial)::double precision;
    max_s double precision := extract(epoch FROM p_max)::double precision;
    steps integer := greatest(p_attempt, 1) - 1;
    -- A jitter under 1e-12 cannot move a backoff (at most 1000 days) by a microsecond,
    -- and one as small as 5e-324 would underflow the product (an error in PostgreSQL).
    jitter double precision := CASE WHEN p_jitter < 1e-12 THEN 0 ELSE p_jitter END;
    base_s double precision;
BEGIN
    base_s := CASE
        WHEN initial_s <= 0 THEN 0
        WHEN steps = 0 OR p_multiplier <= 1 THEN least(initial_s, max_s)
        WHEN steps * ln(p_multiplier) >= ln(max_s / initial_s) THEN max_s
        ELSE initial_s * power(p_multiplier, steps)
    END;
    RETURN make_interval(secs => base_s * (1 + jitter * (
        2 * ((abs(hashtext(p_job_id::text || ':' || p_attempt::text)::bigint) % 10000) / 10000.0) - 1
    )));
END
$$;

CREATE OR REPLACE FUNCTION retry_time(
    p_kind text, p_priority smallint, p_used integer, p_job_id bigint, p_from timestamptz
) RETURNS timestamptz
LANGUAGE plpgsql STABLE SET search_path FROM CURRENT AS $$
DECLARE
    p retry_policies := policy_for(p_kind, p_priority);  -- all NULL: no policy at all
BEGIN
    RETURN p_from + coalesce(
        backoff(p_used, p.initial_delay, p.max_delay, p.multiplier, p.jitter, p_job_id),
        interval '0');
END
$$;
